"""Target features for draft-head training: self-distillation text and hidden-state extraction.

The feature at position i is the target's LAST hidden state AFTER the final norm (``model.model(...)
.last_hidden_state`` in HF, the same tensor the LM head reads; EAGLE's choice). Features are stored in
chunks on disk as safetensors: ``tokens`` int32 [N], ``hidden`` float16 [N, H], ``offsets`` int64
[S + 1] (sequence boundaries) and ``gen_mask`` uint8 [N] (1 on tokens the target generated itself).
A ``manifest.json`` records how many source sequences are done, so an interrupted run resumes.

Example:
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> import tempfile
    >>> cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
    ...                   num_attention_heads=4, num_key_value_heads=2)
    >>> model = LlamaForCausalLM(cfg).eval()
    >>> d = tempfile.mkdtemp()
    >>> n = extract_features(model, [(list(range(10)), 6)], d, show_progress=False)
    >>> list(FeatureStore(d).iter_sequences())[0][1].shape
    torch.Size([10, 32])
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator
from collections.abc import Sequence as Seq
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

__all__ = ["FeatureStore", "extract_features", "generate_self_distill", "read_generations", "target_hidden",
           "texts_to_sequences"]

Sequence = tuple[list[int], int]  # (token ids, index where the target's own generation starts)


@torch.inference_mode()
def target_hidden(model, ids: torch.Tensor) -> torch.Tensor:
    """Last hidden states after the final norm, [T, H] float32, for a 1-D tensor of ids."""
    base = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    out = base(input_ids=ids[None], use_cache=False)
    return out.last_hidden_state[0].float()


def _windows(n: int, max_len: int) -> list[tuple[int, int]]:
    if n <= max_len:
        return [(0, n)]
    starts = list(range(0, n - max_len, max_len)) + [n - max_len]
    return [(s, s + max_len) for s in starts]


def extract_features(
    model,
    sequences: Iterable[Sequence],
    out_dir: str | os.PathLike,
    max_len: int = 1024,
    chunk_tokens: int = 16384,
    deadline: float | None = None,
    show_progress: bool = True,
    desc: str = "features",
) -> int:
    """Run the target over ``sequences`` and store its features in chunks under ``out_dir``.

    Resumable: sequences already recorded in ``manifest.json`` are skipped. Stops (cleanly, after
    writing the current chunk) once ``time.time() > deadline``. Returns the number of tokens stored.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    man_path = out / "manifest.json"
    manifest = json.loads(man_path.read_text()) if man_path.exists() else {"done": 0, "chunks": [], "tokens": 0}
    buf_tok: list[torch.Tensor] = []
    buf_hid: list[torch.Tensor] = []
    buf_gen: list[torch.Tensor] = []
    n_buf = 0
    done = manifest["done"]

    def flush() -> None:
        nonlocal buf_tok, buf_hid, buf_gen, n_buf
        if not buf_tok:
            manifest["done"] = done
            man_path.write_text(json.dumps(manifest, indent=1))
            return
        name = f"chunk_{len(manifest['chunks']):05d}.safetensors"
        lens = torch.tensor([0] + [len(t) for t in buf_tok]).cumsum(0)
        save_file(
            {
                "tokens": torch.cat(buf_tok).to(torch.int32),
                "hidden": torch.cat(buf_hid).to(torch.float16),
                "offsets": lens.to(torch.int64),
                "gen_mask": torch.cat(buf_gen).to(torch.uint8),
            },
            str(out / name),
        )
        manifest["chunks"].append(name)
        manifest["tokens"] += int(lens[-1])
        manifest["done"] = done
        tmp = man_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=1))
        tmp.replace(man_path)
        buf_tok, buf_hid, buf_gen, n_buf = [], [], [], 0

    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(desc=desc, unit="tok", initial=manifest["tokens"], mininterval=10)
    for i, (ids, gen_start) in enumerate(sequences):
        if i < done:
            continue
        if deadline is not None and time.time() > deadline:
            break
        ids_t = torch.as_tensor(ids, dtype=torch.long)
        gen = torch.zeros(len(ids), dtype=torch.uint8)
        gen[gen_start:] = 1
        for s, e in _windows(len(ids), max_len):
            if e - s < 8:
                continue
            h = target_hidden(model, ids_t[s:e])
            buf_tok.append(ids_t[s:e])
            buf_hid.append(h.half())
            buf_gen.append(gen[s:e])
            n_buf += e - s
            if bar is not None:
                bar.update(e - s)
        done = i + 1
        if n_buf >= chunk_tokens:
            flush()
    flush()
    if bar is not None:
        bar.close()
    return manifest["tokens"]


class FeatureStore:
    """Read the chunks written by :func:`extract_features` (chunk files listed in its manifest)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def chunk_files(self) -> list[Path]:
        man = self.path / "manifest.json"
        if not man.exists():
            return []
        return [self.path / c for c in json.loads(man.read_text())["chunks"]]

    def iter_sequences(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yield ``(tokens [T] long, hidden [T, H] float16, gen_mask [T] bool)`` per stored sequence."""
        for f in self.chunk_files():
            d = load_file(str(f))
            off = d["offsets"].tolist()
            for a, b in zip(off[:-1], off[1:], strict=True):
                yield d["tokens"][a:b].long(), d["hidden"][a:b], d["gen_mask"][a:b].bool()


def texts_to_sequences(texts: Iterable[str], tokenizer) -> Iterator[Sequence]:
    """Tokenize plain documents (no generated part: ``gen_start`` = length)."""
    for t in texts:
        ids = tokenizer(t, add_special_tokens=False)["input_ids"]
        yield ids, len(ids)


def read_generations(path: str | os.PathLike) -> Iterator[Sequence]:
    """Read a self-distillation jsonl written by :func:`generate_self_distill` as sequences (none when no
    answer was made yet, e.g. a zero ``--generate-minutes``)."""
    if not Path(path).exists():
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            yield rec["prompt_ids"] + rec["answer_ids"], len(rec["prompt_ids"])


@torch.inference_mode()
def generate_self_distill(
    model,
    tokenizer,
    prompts: Seq[str | Seq[int]],
    out_path: str | os.PathLike,
    max_new_tokens: int = 160,
    batch_size: int = 8,
    max_prompt_tokens: int = 1024,
    deadline: float | None = None,
) -> int:
    """Greedy-generate the target's own answers to ``prompts`` (chat-formatted strings, or token ids laid out
    already, e.g. :func:`~refrag_rasd_core.training.eagle.rag_prompts.rag_training_prompts`), batched.

    Appends one json line per prompt (``prompt_ids``, ``answer_ids``) to ``out_path``; resumes after
    the lines already there. Returns the number of prompts done.
    """
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = len(out.read_text(encoding="utf-8").splitlines()) if out.exists() else 0
    enc = [(tokenizer(p, add_special_tokens=False)["input_ids"] if isinstance(p, str) else list(p))[-max_prompt_tokens:]
           for p in prompts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    i = done
    while i < len(enc):
        if deadline is not None and time.time() > deadline:
            break
        batch = enc[i : i + batch_size]
        L = max(len(b) for b in batch)
        ids = torch.tensor([[pad] * (L - len(b)) + b for b in batch])
        att = torch.tensor([[0] * (L - len(b)) + [1] * len(b) for b in batch])
        gen = model.generate(
            input_ids=ids, attention_mask=att, max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=pad,
        )[:, L:]
        with open(out, "a", encoding="utf-8") as f:
            for b, g in zip(batch, gen.tolist(), strict=True):
                if eos in g:
                    g = g[: g.index(eos) + 1]
                while g and g[-1] == pad and pad != eos:
                    g.pop()
                f.write(json.dumps({"prompt_ids": b, "answer_ids": g}) + "\n")
        i += len(batch)
    return i
