"""The ``sft`` phase's data: RAG rows in the engine's layout, with the UNADAPTED decoder's full-text answers as
targets (self-distillation: the compressed model learns to answer as plain RAG does), made once and cached.

With QA data (``qa_examples``, :mod:`.qa_rows`) each training question with its retrieved passages, else the
Spec-Bench training split's passages + question. :class:`SftData` is a mixin of
:class:`~refrag_rasd_core.training.refrag.trainer.RefragTrainer`.

Example:
    >>> from refrag_rasd_core.training.refrag.trainer import RefragTrainer
    >>> issubclass(RefragTrainer, SftData)
    True
"""

from __future__ import annotations

import json
from dataclasses import replace

import torch

from ...errors import InvalidInputError
from ..seeds import step_rng
from .batches import Batch, Row, expansion_sample
from .corpus import record_passages
from .qa_rows import rag_row

__all__ = ["SftData"]


class SftData:
    """The sft rows, their teacher answers and the per-step sft batch (see the module docstring)."""

    def sft_rows(self) -> list[tuple[Row, torch.Tensor]]:
        """RAG rows in the engine's layout (QA examples, else the Spec-Bench training records), with their
        chunk vectors; the targets are the unadapted decoder's full-text answers (made once, cached)."""
        if self._sft_rows is not None:
            return self._sft_rows
        k = self.cfg.k
        todo: list[tuple[str, str, list[list[int]], torch.Tensor]] = []
        for ex in self.qa_examples:
            todo.append((ex.qid, ex.question, ex.passages, ex.vectors))
        if not self.qa_examples:
            recs = []
            for rec in self.sft_records:
                got = record_passages(rec)
                if got is not None:
                    ids = self.tokenizer(got[0], add_special_tokens=False)["input_ids"]
                    if ids:
                        recs.append((str(rec.get("question_id")), got[1] or "Summarize the text above.", [ids]))
            vecs = self.encoder.encode_passages([r[2][0] for r in recs]) if recs else []
            todo = [(q, qu, p, torch.from_numpy(v.astype("float32"))) for (q, qu, p), v in zip(recs, vecs, strict=True)]
        answers = self.teacher_answers([(qid, rag_row(self.tokenizer, q, p, k, []).prompt_ids(k))
                                        for qid, q, p, _ in todo])
        eos = self.tokenizer.eos_token_id
        rows = []
        for qid, q, p, v in todo:
            ans, ended = answers[qid]
            rows.append((rag_row(self.tokenizer, q, p, k, list(ans) + ([eos] if ended and eos is not None else [])), v))
        self._sft_rows = rows
        return rows

    def teacher_answers(self, prompts: list[tuple[str, list[int]]], batch: int = 8
                        ) -> dict[str, tuple[list[int], bool]]:
        """The unadapted decoder's greedy answers (and whether they ended with EOS) to full-text prompts,
        cached in ``out_dir/sft_answers.jsonl`` (appended as they come, so an interrupted run keeps them)."""
        cache = self.out / "sft_answers.jsonl"
        got: dict[str, tuple[list[int], bool]] = {}
        if cache.exists():
            for line in cache.read_text().splitlines():
                if line.strip():
                    r = json.loads(line)
                    got[str(r["id"])] = (r["answer"], bool(r.get("ended", True)))
        missing = [(i, p) for i, p in prompts if i not in got]
        if missing:
            self.log(f"sft: the unadapted decoder answers {len(missing)} prompts with the full text (teacher)")
            bar = None
            if self.progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=len(missing), desc="teacher answers", unit="q", mininterval=10.0)
            missing.sort(key=lambda x: len(x[1]))  # similar lengths per batch: little padding
            with cache.open("a", encoding="utf-8") as fh:
                for s in range(0, len(missing), batch):
                    part = missing[s:s + batch]
                    for (qid, _), ans in zip(part, self._greedy_answers([p for _, p in part]), strict=True):
                        got[qid] = ans
                        fh.write(json.dumps({"id": qid, "answer": ans[0], "ended": ans[1]}) + "\n")
                    fh.flush()
                    if bar:
                        bar.update(len(part))
            if bar:
                bar.close()
        return got

    @torch.no_grad()
    def _greedy_answers(self, prompts: list[list[int]]) -> list[tuple[list[int], bool]]:
        """Greedy answers of the unadapted decoder to a batch of prompts (left-padded)."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), int(pad), dtype=torch.long)
        mask = torch.zeros(len(prompts), width, dtype=torch.long)
        for b, p in enumerate(prompts):
            ids[b, width - len(p):] = torch.tensor(p)
            mask[b, width - len(p):] = 1
        ctx = self.decoder.disable_adapter() if self.lora_params else _null()
        with ctx:
            out = self.lm.generate(ids.to(self.device), attention_mask=mask.to(self.device),
                                   max_new_tokens=self.cfg.sft_answer_tokens, do_sample=False, pad_token_id=int(pad))
        eos = self.tokenizer.eos_token_id
        res = []
        for b in range(len(prompts)):
            ans = out[b, width:].tolist()
            ended = eos in ans
            res.append((ans[:ans.index(eos)] if ended else ans, ended))
        return res

    def sft_batch(self, step: int) -> Batch:
        rng = step_rng(self.cfg.seed, "sft", step)
        data = self.sft_rows()
        if not data:
            raise InvalidInputError("the sft phase needs RAG training data (--qa-data or the Spec-Bench records)")
        picks = [data[rng.randrange(len(data))] for _ in range(self.cfg.sft_batch)]
        rows = []
        for r, _ in picks:
            frac = rng.choice(list(self.cfg.sft_fractions)) if self.qa_examples else self.cfg.mixed_fraction
            e = expansion_sample(r.n_chunks, frac, rng)
            rows.append(replace(r, expanded=sorted(rng.sample(range(r.n_chunks), e)) if e else []))
        return Batch(rows=rows, vectors=torch.cat([v for _, v in picks], 0))


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: object) -> None:
        return None
