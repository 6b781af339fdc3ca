"""The decoder input of a RAG prompt: instruction, passages, question, with passages raw or compressed.

:func:`layout_prompt` renders the prompt around a context block (through the chat template when the
tokenizer has one) and returns its token segments: ``prefix``, the passages (each after ``separator``)
and ``suffix`` (the question and the assistant turn). ``context="text"`` (plain RAG) reads every segment
as tokens; ``context="compressed"`` (REFRAG, :func:`build_compressed_input`) replaces each k-token chunk
of a passage by ONE projected chunk vector, except the chunks chosen for expansion, which stay as their
k token embeddings IN PLACE (order preserved). Position ids run 0..L-1 over the mixed sequence, one per
vector or token, so decoding continues from position L as after any prefill.

Example:
    >>> lay = layout_prompt(engine.tokenizer, "Who?", [[10, 11, 12]])     # doctest: +REAL_MODEL
    >>> lay.full_ids()[:len(lay.prefix)] == lay.prefix                    # doctest: +REAL_MODEL
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import InvalidInputError
from .chunking import chunk_token_ids

CONTEXT_MODES = ("none", "text", "compressed")
CONTEXT_INSTRUCTION = "Answer the question using the context below.\n\nContext:\n"
QUESTION_HEADER = "\n\nQuestion: "
PASSAGE_SEPARATOR = "\n\n"
_SENTINEL = "@@REFRAG_RASD_CONTEXT@@"

__all__ = ["CONTEXT_MODES", "ContextLayout", "CompressedInput", "layout_prompt", "build_compressed_input",
           "question_text"]


@dataclass
class ContextLayout:
    """Token segments of a RAG prompt: ``prefix + block_0 + between_0 + block_1 + ... + suffix``, where a
    block is passages joined by ``separator``. There is one block per user message that carries passages (the
    question's, and in a conversation the earlier turns' laid out as they were then, so a turn's prompt starts
    with the previous turn's); ``block_sizes`` says how many of ``passages`` each block holds (default: one
    block of all of them)."""

    prefix: list[int]
    passages: list[list[int]]
    separator: list[int]
    suffix: list[int]
    between: list[list[int]] = field(default_factory=list)
    block_sizes: list[int] = field(default_factory=list)
    block_queries: list[list[int]] = field(default_factory=list)
    """Per block, the tokens that followed it in its own turn (the question and the generation prompt: what
    an expansion policy reads); the last block's are ``suffix``. Empty: one block, ``suffix``."""
    block_questions: list[str] = field(default_factory=list)
    """Per block, its question's text (what a question-aware policy encodes)."""

    def __post_init__(self) -> None:
        if not self.block_sizes:
            self.block_sizes = [len(self.passages)]
        if sum(self.block_sizes) != len(self.passages) or len(self.between) != len(self.block_sizes) - 1:
            raise InvalidInputError("a context layout's blocks do not match its passages")

    def pieces(self) -> list[tuple[str, Any]]:
        """The prompt in order: ``("tokens", ids)`` segments and ``("passage", index)`` places."""
        out: list[tuple[str, Any]] = [("tokens", self.prefix)]
        i = 0
        for b, size in enumerate(self.block_sizes):
            for j in range(size):
                if j:
                    out.append(("tokens", self.separator))
                out.append(("passage", i))
                i += 1
            out.append(("tokens", self.between[b] if b < len(self.between) else self.suffix))
        return out

    def full_ids(self) -> list[int]:
        """The whole prompt as tokens (plain RAG, ``context="text"``)."""
        ids: list[int] = []
        for kind, value in self.pieces():
            ids.extend(value if kind == "tokens" else self.passages[value])
        return ids

    @property
    def context_tokens(self) -> int:
        return sum(len(p) for p in self.passages)


@dataclass
class CompressedInput:
    """A mixed prefill: ``inputs_embeds`` ``[1, L, H]``; ``token_ids`` the token at each raw position
    (``None`` at a compressed one); the chunks (global index order) and which of them were expanded."""

    inputs_embeds: torch.Tensor
    token_ids: list[int | None]
    n_chunks: int
    expanded: list[int] = field(default_factory=list)
    full_length: int = 0

    @property
    def length(self) -> int:
        return len(self.token_ids)


def _question_and_messages(prompt: str | Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    if not users:
        raise InvalidInputError("a RAG prompt needs a user message (the question)")
    q = users[-1]
    if not str(messages[q].get("content", "")).strip():
        raise InvalidInputError("the question is empty")
    return messages, q


def question_text(prompt: str | Sequence[dict[str, Any]]) -> str:
    """The question of a prompt: the string itself, or the last user message's content."""
    messages, q = _question_and_messages(prompt)
    return str(messages[q]["content"])


def layout_prompt(tokenizer: Any, prompt: str | Sequence[dict[str, Any]],
                  passages: Sequence[Sequence[int]]) -> ContextLayout:
    """Segment a question (or chat messages whose last user message is the question) around passages.

    ``passages`` (token ids) go with the question. In a conversation, an earlier user message may carry its
    own passages (token ids) under ``"passages"``: they are laid out in that message exactly as the question's
    are, so the prompt of each turn begins with the prompt of the turn before."""
    messages, q = _question_and_messages(prompt)
    blocks: list[list[list[int]]] = []
    questions: list[str] = []
    for i, m in enumerate(messages):
        own = [[int(t) for t in p] for p in (m.pop("passages", None) or []) if len(p)]
        if i == q:
            own += [[int(t) for t in p] for p in passages if len(p)]
        if m.get("role") == "user" and (own or i == q):
            questions.append(str(m.get("content", "")))
            m["content"] = CONTEXT_INSTRUCTION + _SENTINEL + QUESTION_HEADER + questions[-1]
            blocks.append(own)
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        specials = False  # the template writes its own special tokens as text
    else:
        text = "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"
        specials = True
    parts = text.split(_SENTINEL)
    if len(parts) != len(blocks) + 1:
        raise InvalidInputError("the chat template altered the question; cannot place the context")
    segments = [tokenizer(parts[0], add_special_tokens=specials)["input_ids"]]
    segments += [tokenizer(part, add_special_tokens=False)["input_ids"] for part in parts[1:]]
    sep = tokenizer(PASSAGE_SEPARATOR, add_special_tokens=False)["input_ids"]
    tail = parts[-1][len(QUESTION_HEADER + questions[-1]):]  # the generation prompt after the question
    queries = [tokenizer(QUESTION_HEADER + qb + tail, add_special_tokens=False)["input_ids"] for qb in questions[:-1]]
    return ContextLayout(prefix=list(segments[0]), passages=[p for b in blocks for p in b], separator=list(sep),
                         suffix=list(segments[-1]), between=[list(x) for x in segments[1:-1]],
                         block_sizes=[len(b) for b in blocks], block_queries=[*queries, list(segments[-1])],
                         block_questions=questions)


def build_compressed_input(layout: ContextLayout, embed_tokens: Any, chunk_embeds: Sequence[torch.Tensor],
                           k: int, expanded: Sequence[int] = ()) -> CompressedInput:
    """Assemble the mixed decoder input.

    ``chunk_embeds[i]``: the PROJECTED vectors ``[n_chunks_i, H]`` of passage ``i`` (decoder space);
    ``expanded``: global chunk indices (over all passages, in order) that stay raw tokens.
    """
    if len(chunk_embeds) != len(layout.passages):
        raise InvalidInputError(f"{len(chunk_embeds)} chunk-vector sets for {len(layout.passages)} passages")
    weight = embed_tokens.weight
    device, dtype = weight.device, weight.dtype
    expand = set(int(i) for i in expanded)
    pieces: list[torch.Tensor] = []
    tokens: list[int | None] = []
    pending: list[int] = []  # raw tokens not embedded yet (batched into one lookup)

    def flush() -> None:
        if pending:
            pieces.append(embed_tokens(torch.tensor(pending, device=device)))
            tokens.extend(pending)
            pending.clear()

    offsets = [0]
    for ids in layout.passages:
        offsets.append(offsets[-1] + len(chunk_token_ids(ids, k)))
    for kind, value in layout.pieces():
        if kind == "tokens":
            pending.extend(value)
            continue
        ids, vecs, g = layout.passages[value], chunk_embeds[value], offsets[value]
        chunks = chunk_token_ids(ids, k)
        if vecs.shape[0] != len(chunks):
            raise InvalidInputError(f"passage {value}: {vecs.shape[0]} chunk vectors for {len(chunks)} chunks "
                                    f"of k={k}")
        for j, chunk in enumerate(chunks):
            if g + j in expand:
                pending.extend(chunk)
            else:
                flush()
                pieces.append(vecs[j:j + 1].to(device=device, dtype=dtype))
                tokens.append(None)
    g = offsets[-1]
    flush()
    embeds = torch.cat(pieces, 0)[None]
    return CompressedInput(inputs_embeds=embeds, token_ids=tokens, n_chunks=g,
                           expanded=sorted(i for i in expand if i < g), full_length=len(layout.full_ids()))
