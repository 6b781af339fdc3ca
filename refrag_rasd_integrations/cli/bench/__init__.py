"""The benchmark harness behind ``refrag-rasd bench`` (Spec-Bench style: every method behind one function,
timed interleaved in one process against the same vanilla baseline, with an equality check of outputs)."""
