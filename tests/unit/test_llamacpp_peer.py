"""The llama.cpp benchmark peers: a clear skip / error without llama-cpp-python (the default install), the
plain-RAG prompt they read equal to the engine's own, and (only where llama-cpp-python is installed) real
greedy decoding on the default model's GGUF with and without its prompt-lookup draft."""

from __future__ import annotations

import pytest

from refrag_rasd_core.engine import Engine
from refrag_rasd_core.errors import InvalidInputError
from refrag_rasd_integrations.cli.bench import llamacpp


@pytest.fixture(scope="module")
def engine():
    from tiny import tiny_loaded

    return Engine(tiny_loaded(0), drafter=None, refrag=None)


def test_missing_llama_cpp_is_a_clear_error_and_a_skip(monkeypatch, engine, capsys):
    from refrag_rasd_integrations.cli.bench.decode import make_method
    from refrag_rasd_integrations.cli.bench_command import _without_missing_llamacpp

    monkeypatch.setattr(llamacpp, "llama_cpp_available", lambda: False)
    with pytest.raises(InvalidInputError, match=r"pip install -e \"\.\[llamacpp\]\""):
        llamacpp.LlamaCppPeer()
    with pytest.raises(InvalidInputError, match="llama-cpp-python"):
        make_method("llamacpp-pld", engine, 8)
    assert _without_missing_llamacpp(["vanilla", "llamacpp", "pld", "llamacpp-pld"]) == ["vanilla", "pld"]
    assert "llamacpp, llamacpp-pld skipped: llama.cpp peers need llama-cpp-python" in capsys.readouterr().err


def test_peers_refuse_sampling(monkeypatch, engine):
    from refrag_rasd_integrations.cli.bench.decode import make_method

    with pytest.raises(InvalidInputError, match="greedy"):
        make_method("llamacpp", engine, 8, temperature=0.7)


def test_plain_rag_ids_are_the_engines_plain_rag_prompt(engine):
    question = "Which city is the capital of France?"
    passages = ["Paris is the capital of France.", "Berlin is the capital of Germany."]
    ids = llamacpp.plain_rag_ids(engine, question, passages)
    ref = engine.generate(question, passages=passages, context="text", method="vanilla", max_new_tokens=6)
    assert len(ids) == ref.stats.prompt_tokens
    assert engine.generate_ids(ids, method="vanilla", max_new_tokens=6).token_ids == ref.token_ids
    assert llamacpp.plain_rag_ids(engine, question, []) == engine.encode_prompt([{"role": "user",
                                                                                   "content": question}])


@pytest.mark.integration
def test_llama_cpp_decodes_the_default_gguf(real_engine):
    if not llamacpp.llama_cpp_available():
        pytest.skip(llamacpp.INSTALL_HINT)
    ids = real_engine.encode_prompt([{"role": "user", "content": "List the numbers from 1 to 20, comma-separated."}])
    plain = llamacpp.LlamaCppPeer(pld=False, n_ctx=512)
    toks, seconds, ttft = plain.generate(ids, 24)
    assert 1 <= len(toks) <= 24 and 0 < ttft <= seconds
    assert any(ch.isdigit() for ch in real_engine.tokenizer.decode(toks))
    pld = llamacpp.LlamaCppPeer(pld=True, n_ctx=512)
    assert pld.generate(ids, 24)[0] == toks  # its prompt-lookup draft is verified: the same greedy tokens
    with pytest.raises(InvalidInputError, match="do not fit"):
        plain.generate(ids, 600)
