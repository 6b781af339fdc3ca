"""The one public entry: generate or stream an answer from a prompt (and retrieved passages).

``Engine`` owns a target model and runs one decoding loop for every method: each step it asks the
method's proposer for a token tree rooted at the last committed token (none = a plain step), verifies the
whole tree in one target forward, keeps the longest accepted path (greedy) or the path chosen by lossless
multi-candidate rejection sampling, compacts the KV cache to it and emits the accepted tokens plus the
target's own next token. ``method="vanilla"`` never proposes anything: it is the plain KV-cache loop that
every speedup is measured against.

Example:
    >>> from refrag_rasd_core.engine import Engine
    >>> engine = Engine.load()                                   # doctest: +SKIP
    >>> for piece in engine.stream([{"role": "user", "content": "Hi!"}], max_new_tokens=32):
    ...     print(piece, end="")                                 # doctest: +SKIP
    >>> engine.generate("The capital of France is", max_new_tokens=8).stats.new_tokens  # doctest: +SKIP
    8
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .errors import ContextTooLongError, InvalidInputError
from .models import LoadedModel, load_target
from .sampling import SamplingParams, logits_to_probs, make_generator, sample
from .stats import GenerationResult, GenerationStats
from .target import TargetRunner, keep_cache_path
from .text_stream import TextAssembler

Prompt = str | Sequence[dict[str, str]]

METHODS = ("vanilla", "pld", "rest", "draft", "rasd")


@dataclass(frozen=True)
class GenerationConfig:
    """Generation settings. ``temperature`` 0 is greedy; ``stop`` strings end the answer (not included).

    ``method`` is one of ``vanilla``, ``pld``, ``rest``, ``draft``, ``rasd`` (see :mod:`refrag_rasd_core.rasd`).

    ``context`` says how the passages enter the decoder: ``"none"`` (the prompt is used as given; passages
    only feed the speculative datastore), ``"text"`` (plain RAG: the engine lays the passages' tokens out
    around the question) or ``"compressed"`` (REFRAG: one projected chunk vector per k tokens; a fraction
    ``expand`` of the chunks, or ``expand_tokens`` raw tokens' worth, stays raw, chosen by ``policy``:
    ``none``, ``random``, ``similarity``, ``perplexity``, ``rl`` or ``auto`` = ``rl`` when the checkpoint
    has a trained policy, else ``similarity``).
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    method: str = "vanilla"
    spec: dict[str, Any] = field(default_factory=dict)
    context: str = "none"
    expand: float = 0.0
    expand_tokens: int | None = None
    policy: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int):
            raise InvalidInputError(f"max_new_tokens must be an integer, got {self.max_new_tokens!r}")
        if self.max_new_tokens < 1:
            raise InvalidInputError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.method not in METHODS:
            raise InvalidInputError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        from .refrag.context import CONTEXT_MODES
        from .refrag.policy import POLICIES, expansion_count

        if self.context not in CONTEXT_MODES:
            raise InvalidInputError(f"unknown context mode {self.context!r}; choose one of {', '.join(CONTEXT_MODES)}")
        if self.policy != "auto" and self.policy not in POLICIES:
            raise InvalidInputError(f"unknown expansion policy {self.policy!r}; choose auto or one of {', '.join(POLICIES)}")
        expansion_count(1, self.expand, expand_tokens=self.expand_tokens)  # validates the ranges
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        object.__setattr__(self, "stop", stop)
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise InvalidInputError(f"seed must be an integer or None, got {self.seed!r}")
        self.sampling  # validates temperature / top_p / top_k  # noqa: B018

    @property
    def sampling(self) -> SamplingParams:
        try:
            t, p, k = float(self.temperature), float(self.top_p), self.top_k
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"temperature and top_p must be numbers (temperature 0 = greedy, top_p in "
                                    f"(0, 1]), got {self.temperature!r} and {self.top_p!r}") from exc
        return SamplingParams(temperature=t, top_p=p, top_k=k)


class _ModelLock:
    """Serializes the model between threads. A call from the thread that already holds it (a new request
    while one of this engine's streams is still open in the same thread) raises instead of deadlocking."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: int | None = None

    def __enter__(self) -> None:
        me = threading.get_ident()
        if self._owner == me:
            raise InvalidInputError(
                "this engine is busy with a stream still open in this thread: iterate it to the end or call "
                "its close() before starting another call"
            )
        self._lock.acquire()
        self._owner = me

    def __exit__(self, *exc: object) -> None:
        self._owner = None
        self._lock.release()


class GenerationStream:
    """An iterator of text pieces; ``.stats``, ``.text`` and ``.token_ids`` are complete once it is exhausted."""

    def __init__(self, pieces: Iterator[str], stats: GenerationStats, token_ids: list[int]) -> None:
        self._pieces = pieces
        self.stats = stats
        self.token_ids = token_ids
        self.text = ""

    def __iter__(self) -> Iterator[str]:
        for piece in self._pieces:
            self.text += piece
            yield piece

    def close(self) -> None:
        """Stop generating now and release the engine (a stream holds it until it ends or is closed)."""
        close = getattr(self._pieces, "close", None)
        if close is not None:
            close()

    def result(self) -> GenerationResult:
        """Run to the end (if not done yet) and return the whole result."""
        for _ in self:
            pass
        return GenerationResult(text=self.text, token_ids=self.token_ids, stats=self.stats)


class Engine:
    """Generation over one target model, with every decoding method behind one loop.

    Thread-safe: calls are serialized on the model (one decoding loop runs at a time per engine).
    """

    def __init__(self, target: LoadedModel, *, drafter: Any = "auto", datastore: Any = None,
                 refrag: Any = "auto", refrag_encoder: Any = None) -> None:
        """``drafter``: a :class:`~refrag_rasd_core.rasd.draft_tree.Drafter` (an EAGLE head, a
        :class:`~refrag_rasd_core.rasd.draft_tree.CausalLMDrafter`), ``None`` for retrieval-only speculation,
        or ``"auto"``: the shipped EAGLE head when the target is the default model. ``datastore``: a shared
        :class:`~refrag_rasd_core.rasd.datastore.RestDatastore` consulted by ``rest`` / ``rasd`` besides the
        request's passages. ``refrag``: the REFRAG parts for ``context="compressed"``: a checkpoint path, a
        :class:`~refrag_rasd_core.refrag.RefragModel`, ``None``, or ``"auto"`` (the shipped checkpoint when
        the target is the default model). A checkpoint's decoder LoRA adapters apply to compressed requests
        only: those run on a second weight set (the adapted linears merged into copies, everything else
        shared, built on the first compressed request); every other request runs the stock target, so its
        output is the stock model's. ``refrag_encoder``: the
        :class:`~refrag_rasd_core.refrag.ChunkEncoder` for passages that come without chunk embeddings
        (default: the checkpoint's encoder, loaded on first need)."""
        self.target = target
        self.model = target.model
        self.tokenizer = target.tokenizer
        self.runner = TargetRunner(target.model)
        self.drafter = default_drafter(target) if isinstance(drafter, str) and drafter == "auto" else drafter
        _check_drafter_vocab(self.drafter, target)
        self.datastore = datastore
        self.refrag = load_refrag(target, refrag)
        self._adapted_runner: TargetRunner | None = None
        self._refrag_encoder: Any = refrag_encoder
        self._lock = _ModelLock()
        self._budgets: dict[str, Any] = {}
        self.verify_costs: dict[int, float] | None = None  # None: the defaults for the device type
        gen_cfg = getattr(self.model, "generation_config", None)
        eos = getattr(gen_cfg, "eos_token_id", None)
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids = frozenset([eos] if isinstance(eos, int) else (eos or []))

    @classmethod
    def load(cls, model: str | None = None, *, device: str = "auto", dtype: str | None = None,
             **kwargs: Any) -> Engine:
        """Load a target (``None`` = the offline default) and wrap it in an engine."""
        return cls(load_target(model, device=device, dtype=dtype), **kwargs)

    # ---- prompts ---------------------------------------------------------------------------------------
    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt: chat messages go through the chat template (with the generation prompt);
        a string is used as it is."""
        if isinstance(prompt, str):
            if not prompt.strip():
                raise InvalidInputError("the prompt is empty")
            return self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        if not isinstance(prompt, Sequence) or not all(isinstance(m, dict) for m in prompt):
            raise InvalidInputError(f"the prompt must be a string or a list of chat messages "
                                    f"({{'role': ..., 'content': ...}} dicts), got {type(prompt).__name__}")
        messages = list(prompt)
        if not messages or not any(str(m.get("content", "")).strip() for m in messages):
            raise InvalidInputError("the prompt has no messages with content")
        if getattr(self.tokenizer, "chat_template", None):
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                     return_dict=False)
            return list(ids)
        text = "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"
        return self.tokenizer(text)["input_ids"]

    # ---- public API ------------------------------------------------------------------------------------
    def stream(self, prompt: Prompt, *, passages: Sequence[Any] | None = None,
               config: GenerationConfig | None = None, **overrides: Any) -> GenerationStream:
        """Stream the answer as text pieces. Keyword overrides are :class:`GenerationConfig` fields.

        With ``context="text"`` or ``"compressed"`` the prompt is the question (a string, or chat messages
        whose last user message is the question) and the engine lays the passages out around it."""
        cfg = _merge_config(config, overrides)
        request = self._request(prompt, passages, cfg)
        stats = GenerationStats(method=cfg.method, prompt_tokens=request.prompt_tokens, context=cfg.context)
        token_ids: list[int] = []
        return GenerationStream(self._run(request, passages, cfg, stats, token_ids), stats, token_ids)

    def generate(self, prompt: Prompt, *, passages: Sequence[Any] | None = None,
                 config: GenerationConfig | None = None, **overrides: Any) -> GenerationResult:
        """Generate the whole answer at once."""
        return self.stream(prompt, passages=passages, config=config, **overrides).result()

    def generate_ids(self, prompt_ids: Sequence[int], *, passages: Sequence[Any] | None = None,
                     config: GenerationConfig | None = None, **overrides: Any) -> GenerationResult:
        """Like :meth:`generate` from already tokenized prompt ids (``context`` must be ``"none"``)."""
        cfg = _merge_config(config, overrides)
        if cfg.context != "none":
            raise InvalidInputError("generate_ids takes a finished prompt: use context='none', or generate()")
        ids = [int(t) for t in prompt_ids]
        if not ids:
            raise InvalidInputError("the prompt is empty")
        self._check_token_ids(ids, "the prompt")
        stats = GenerationStats(method=cfg.method, prompt_tokens=len(ids))
        token_ids: list[int] = []
        request = _Request(prompt_ids=ids, prompt_tokens=len(ids))
        return GenerationStream(self._run(request, passages, cfg, stats, token_ids), stats, token_ids).result()

    # ---- REFRAG ----------------------------------------------------------------------------------------
    @property
    def has_chunk_encoder(self) -> bool:
        """Whether :meth:`refrag_encoder` has an encoder to give (a REFRAG checkpoint, or one given)."""
        return self.refrag is not None or self._refrag_encoder is not None

    def refrag_encoder(self) -> Any:
        """The :class:`~refrag_rasd_core.refrag.ChunkEncoder` matching this engine's REFRAG checkpoint
        (loaded on first use; only passages WITHOUT stored chunk embeddings need it)."""
        if self._refrag_encoder is None:
            self._refrag_encoder = self._require_refrag().load_encoder(self.tokenizer)
        return self._refrag_encoder

    def refrag_signature(self) -> dict[str, Any]:
        """What a store's chunk embeddings must match to be read by this engine (encoder, k, tokenizer...)."""
        return self._require_refrag().signature(self.tokenizer)

    def auto_context(self) -> dict[str, Any]:
        """The settings ``context="auto"`` stands for when passages come with a request: the operating point
        recorded in the REFRAG checkpoint (its sidecar's ``"auto"``: chosen on the qa suite as the fastest
        setting that keeps at least 95% of plain RAG's right answers), else plain RAG, ``{"context": "text"}``.
        So by default an answer is never worse than plain RAG; compression is there when asked for.

        Example:
            >>> engine.auto_context()                    # doctest: +SKIP
            {'context': 'text'}
        """
        point = dict((self.refrag.meta.get("auto") or {}) if self.refrag is not None else {})
        if point.get("context") != "compressed":
            return {"context": "text"}
        return {"context": "compressed", **{k: point[k] for k in ("expand", "expand_tokens", "policy") if k in point}}

    def runner_for(self, compressed: bool) -> TargetRunner:
        """The decoder a request runs on: the REFRAG-adapted weight set for a compressed request when the
        checkpoint has decoder adapters (built once, on first need), else the stock target."""
        rm = self.refrag
        if not compressed or rm is None or not rm.lora:
            return self.runner
        if self._adapted_runner is None:
            from .refrag.lora import adapted_copy

            self._adapted_runner = TargetRunner(adapted_copy(self.model, rm.lora, rm.lora_scaling))
        return self._adapted_runner

    def _require_refrag(self) -> Any:
        if self.refrag is None:
            raise InvalidInputError(
                f"context='compressed' needs a REFRAG checkpoint for {self.target.name}: train one with "
                "`refrag-rasd train-refrag` and pass Engine(..., refrag=PATH), or use context='text'"
            )
        return self.refrag

    def _request(self, prompt: Prompt, passages: Sequence[Any] | None, cfg: GenerationConfig) -> _Request:
        """Tokenize the prompt (and lay out the passages) for one call; compression happens in the loop."""
        if cfg.context == "none":
            ids = self.encode_prompt(prompt)
            return _Request(prompt_ids=ids, prompt_tokens=len(ids))
        from .refrag.context import layout_prompt, question_text

        if cfg.context == "compressed":
            self._require_refrag()
        pids = self.passage_token_ids(passages)
        layout = layout_prompt(self.tokenizer, prompt, pids)
        if not layout.passages:  # nothing to lay out: the question alone
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            ids = self.encode_prompt(messages)
            return _Request(prompt_ids=ids, prompt_tokens=len(ids))
        full = layout.full_ids()
        if cfg.context == "text":
            return _Request(prompt_ids=full, prompt_tokens=len(full), context_tokens=layout.context_tokens)
        kept = [i for i, p in enumerate(pids) if p]  # layout_prompt drops empty passages
        return _Request(layout=layout, prompt_tokens=len(full), context_tokens=layout.context_tokens,
                        passages=[passages[i] for i in kept], question=question_text(prompt))

    def _compress(self, request: _Request, cfg: GenerationConfig, stats: GenerationStats) -> Any:
        """Build the mixed (compressed + expanded) prefill input of a request."""
        from .refrag.chunking import chunk_token_ids, num_chunks
        from .refrag.context import build_compressed_input
        from .refrag.policy import choose_expansions, expansion_count

        rm = self.refrag
        layout = request.layout
        vectors = self._chunk_vectors(request.passages, layout.passages)
        dtype = self.model.dtype
        projected = [rm.project(v, dtype=dtype) if len(v) else torch.empty(0, self.model.config.hidden_size,
                     dtype=dtype, device=rm.device) for v in vectors]
        total = sum(num_chunks(len(p), rm.k) for p in layout.passages)
        n = expansion_count(total, cfg.expand, expand_tokens=cfg.expand_tokens, k=rm.k)
        policy = cfg.policy if cfg.policy != "auto" else ("rl" if rm.policy is not None else "similarity")
        embed = self.model.get_input_embeddings()
        chosen: list[int] = []
        if n:
            with torch.inference_mode():
                query = embed(torch.tensor(layout.suffix, device=self.runner.device))
            chunks = [c for p in layout.passages for c in chunk_token_ids(p, rm.k)]
            chosen = choose_expansions(policy, n, chunk_vectors=torch.cat([torch.as_tensor(v, dtype=torch.float32)
                                       for v in vectors]), projected=torch.cat(projected), query_embeds=query,
                                       chunks=chunks, decoder=self.model, network=rm.policy, seed=cfg.seed,
                                       question_vector=lambda: self.refrag_encoder().encode_question(request.question))
        with torch.inference_mode():
            mixed = build_compressed_input(layout, embed, projected, rm.k, chosen)
        stats.chunks = mixed.n_chunks
        stats.expanded_chunks = len(mixed.expanded)
        stats.expanded = list(mixed.expanded)
        return mixed

    def _chunk_vectors(self, passages: list[Any], ids: list[list[int]]) -> list[Any]:
        """Each passage's chunk embeddings: the stored ones when a passage carries them (checked against
        this engine's k and encoder width), else encoded now."""
        import numpy as np

        from .refrag.chunking import num_chunks

        rm = self.refrag
        given = [getattr(p, "chunk_embeddings", None) for p in passages]
        out: list[Any] = [None] * len(ids)
        missing = []
        for i, (vec, toks) in enumerate(zip(given, ids, strict=True)):
            if vec is None:
                missing.append(i)
                continue
            want = (num_chunks(len(toks), rm.k), rm.encoder_dim)
            if tuple(np.shape(vec)) != want:
                raise InvalidInputError(
                    f"passage {i}: chunk embeddings of shape {tuple(np.shape(vec))}, expected {want} for "
                    f"{len(toks)} tokens at k={rm.k} with a {rm.encoder_dim}-wide encoder: the store was built "
                    "with another encoder or chunk size; re-index it"
                )
            out[i] = vec
        if missing:
            enc = self.refrag_encoder()
            for i, vec in zip(missing, enc.encode_passages([ids[i] for i in missing]), strict=True):
                out[i] = vec
        return out

    # ---- the loop --------------------------------------------------------------------------------------
    def _check_fits(self, request: _Request) -> int | None:
        """Raise :class:`ContextTooLongError` when a token prompt exceeds the model's window; returns the
        window (``None``: unbounded). A compressed prompt is checked once it is built."""
        limit = self.runner.max_positions
        if limit is not None and request.prompt_ids is not None and len(request.prompt_ids) >= limit:
            hint = " or use context='compressed' (REFRAG reads k tokens per position)" if request.context_tokens else ""
            raise ContextTooLongError(
                f"the prompt has {len(request.prompt_ids)} tokens but the model reads at most {limit}: shorten "
                f"the prompt or pass fewer passages{hint}"
            )
        return limit

    def _run(self, request: _Request, passages: Sequence[Any] | None, cfg: GenerationConfig,
             stats: GenerationStats, out_ids: list[int]) -> Iterator[str]:
        limit = self._check_fits(request)
        with self._lock:
            yield from self._decode(request, passages, cfg, stats, out_ids, limit)

    def _decode(self, request: _Request, passages: Sequence[Any] | None, cfg: GenerationConfig,
                stats: GenerationStats, out_ids: list[int], limit: int | None) -> Iterator[str]:
        runner = self.runner_for(request.layout is not None)
        device = runner.device
        params = cfg.sampling
        gen = make_generator(cfg.seed, device)
        text = TextAssembler(self.tokenizer, cfg.stop)

        t0 = time.perf_counter()
        prompt_ids, shift, mixed = self._prefill_input(request, cfg, stats, limit)
        proposer = self._proposer(cfg, prompt_ids, passages)
        want_hidden = bool(proposer is not None and proposer.uses_target_hidden)
        max_new = cfg.max_new_tokens
        if limit is not None:
            max_new = min(max_new, limit - stats.prefill_positions)
        committed = list(prompt_ids)
        cache, logits, hidden = self._prefill_forward(runner, prompt_ids, mixed, want_hidden)
        token = _choose(logits[0], params, gen)
        _sync_device(device)
        stats.ttft_s = time.perf_counter() - t0

        def emit(tok: int) -> tuple[str, bool]:
            """Commit one token; return (text to show, finished?)."""
            out_ids.append(tok)
            committed.append(tok)
            stats.new_tokens += 1
            if tok in self.eos_ids:
                stats.finish_reason = "stop"
                return text.finish(), True
            piece = text.push(tok)
            if text.stopped:
                stats.finish_reason = "stop"
                return piece, True
            if stats.new_tokens >= max_new:
                stats.finish_reason = "length"
                return piece + text.finish(), True
            return piece, False

        piece, done = emit(token)
        if piece:
            yield piece
        if proposer is None:
            step = torch.empty((1, 1), dtype=torch.long, device=device)
            while not done:
                step[0, 0] = token
                logits, _ = runner.forward(step, cache, logits_at=-1)
                stats.target_forwards += 1
                token = _choose(logits[0], params, gen)
                piece, done = emit(token)
                if piece:
                    yield piece
            stats.accepted_hist[1] = stats.target_forwards
        elif not done:
            yield from self._speculate(runner, proposer, cache, committed, hidden, params, gen, stats, emit,
                                       shift)
        if proposer is not None:  # proposal time = retrieval + drafting / tree building
            stats.retrieval_s = proposer.retrieval_s
            stats.draft_s = max(stats.draft_s - proposer.retrieval_s, 0.0)
        _sync_device(device)
        stats.total_s = time.perf_counter() - t0

    def _prefill_input(self, request: _Request, cfg: GenerationConfig, stats: GenerationStats,
                       limit: int | None) -> tuple[list[int], int, Any]:
        """(raw prompt tokens, compressed positions, mixed input or None) of a request."""
        mixed = self._compress(request, cfg, stats) if request.layout is not None else None
        if mixed is None:
            stats.prefill_positions = len(request.prompt_ids)
            return request.prompt_ids, 0, None
        if limit is not None and mixed.length >= limit:
            raise ContextTooLongError(
                f"the compressed prompt takes {mixed.length} positions but the model reads at most {limit} "
                f"(at k={self.refrag.k} that is about {limit * self.refrag.k} tokens of passages): pass "
                "fewer passages or expand fewer chunks"
            )
        prompt_ids = [t for t in mixed.token_ids if t is not None]
        stats.prefill_positions = mixed.length
        return prompt_ids, mixed.length - len(prompt_ids), mixed  # compressed positions: cached, not tokens

    @staticmethod
    def _prefill_forward(runner: TargetRunner, prompt_ids: list[int], mixed: Any,
                         want_hidden: bool) -> tuple[Any, torch.Tensor, torch.Tensor | None]:
        """One forward over the prompt into a new KV cache: (cache, last logits, hidden of raw tokens)."""
        cache = runner.new_cache()
        if mixed is None:
            ids = torch.tensor([prompt_ids], device=runner.device)
            logits, hidden = runner.forward(ids, cache, logits_at=-1, want_hidden=want_hidden)
            return cache, logits, hidden
        logits, hidden = runner.forward(None, cache, logits_at=-1, want_hidden=want_hidden,
                                        inputs_embeds=mixed.inputs_embeds)
        if hidden is not None:  # the draft head sees the raw-token positions only
            raw = [i for i, t in enumerate(mixed.token_ids) if t is not None]
            hidden = hidden.index_select(0, torch.tensor(raw, device=hidden.device))
        return cache, logits, hidden

    def prefill(self, prompt: Prompt, *, passages: Sequence[Any] | None = None,
                config: GenerationConfig | None = None, **overrides: Any) -> Prefill:
        """Only the prefill of a request (as :meth:`generate` would run it): the KV cache, the next-token
        logits and the statistics (``ttft_s`` covers compression, the policy and the forward).

        Example:
            >>> pre = engine.prefill(q, passages=ps, context="compressed")     # doctest: +SKIP
            >>> engine.continuation_nll(pre, answer_ids)                       # doctest: +SKIP
            1.73
        """
        cfg = _merge_config(config, overrides)
        request = self._request(prompt, passages, cfg)
        stats = GenerationStats(method=cfg.method, prompt_tokens=request.prompt_tokens, context=cfg.context)
        limit = self._check_fits(request)
        with self._lock:
            runner = self.runner_for(request.layout is not None)
            t0 = time.perf_counter()
            prompt_ids, _, mixed = self._prefill_input(request, cfg, stats, limit)
            cache, logits, _ = self._prefill_forward(runner, prompt_ids, mixed, False)
            int(logits[0].argmax())
            _sync_device(runner.device)
            stats.ttft_s = time.perf_counter() - t0
        return Prefill(cache=cache, logits=logits[0], positions=stats.prefill_positions, stats=stats,
                       runner=runner)

    def continuation_nll(self, prefill: Prefill, token_ids: Sequence[int]) -> float:
        """Mean negative log-likelihood per token of ``token_ids`` following a :meth:`prefill` (consumes
        its cache). The first token is scored by the prefill's own logits."""
        ids = [int(t) for t in token_ids]
        if not ids:
            raise InvalidInputError("the continuation is empty")
        lps = [torch.log_softmax(prefill.logits.float(), -1)[ids[0]]]
        if len(ids) > 1:
            runner = prefill.runner or self.runner
            with self._lock:
                logits, _ = runner.forward(torch.tensor([ids[:-1]], device=runner.device),
                                           prefill.cache, logits_at=None)
            lp = torch.log_softmax(logits.float(), -1)
            lps.extend(lp[torch.arange(len(ids) - 1), torch.tensor(ids[1:], device=lp.device)])
        return float(-torch.stack([x.to(lps[0].device) for x in lps]).mean())

    def _speculate(self, runner: TargetRunner, proposer: Any, cache: Any, committed: list[int],
                   hidden: torch.Tensor | None, params: SamplingParams, gen: torch.Generator | None,
                   stats: GenerationStats, emit: Any, shift: int = 0) -> Iterator[str]:
        from .rasd.verify import accept_greedy, accept_sampled

        device = runner.device
        done = False
        while not done:
            ctx = len(committed) - 1 + shift  # cached positions: the root (last committed token) is not cached yet
            proposer.observe(committed, hidden)
            t = time.perf_counter()
            tree = proposer.propose(committed)
            stats.draft_s += time.perf_counter() - t
            t = time.perf_counter()
            if tree is None or len(tree) <= 1:
                ids = torch.tensor([[committed[-1]]], device=device)
                logits, hidden = runner.forward(ids, cache, logits_at=None,
                                                want_hidden=proposer.uses_target_hidden)
                path, chosen = [0], [_choose(logits[0], params, gen)]
                proposer.feedback(None, path)  # a plain step: the proposal (if any) yielded nothing
            else:
                tokens = torch.tensor([tree.tokens], device=device)
                logits, hidden = runner.forward(
                    tokens, cache, logits_at=None,
                    attention_mask=tree.attention_mask(ctx, runner.model.dtype, device),
                    position_ids=tree.position_ids(ctx, device),
                    want_hidden=proposer.uses_target_hidden,
                )
                if params.greedy:
                    path, chosen = accept_greedy(tree, logits)
                else:
                    path, chosen = accept_sampled(tree, logits, params, gen)
                keep = torch.tensor(path, device=device)
                keep_cache_path(cache, ctx, keep)
                if hidden is not None:
                    hidden = hidden.index_select(0, keep)
                proposer.feedback(tree, path)
                stats.tree_nodes += len(tree)
            stats.verify_s += time.perf_counter() - t
            stats.target_forwards += 1
            used = 0
            for tok in chosen:
                used += 1
                piece, done = emit(tok)
                if piece:
                    yield piece
                if done:
                    break
            stats.accepted_hist[used] += 1

    def _proposer(self, cfg: GenerationConfig, prompt_ids: list[int], passages: Sequence[Any] | None) -> Any:
        if cfg.method == "vanilla":
            return None
        from .rasd.proposers import make_proposer

        return make_proposer(cfg.method, engine=self, prompt_ids=prompt_ids, passages=passages,
                             options=cfg.spec)

    def calibrate_verify_costs(self, context_len: int = 512, repeats: int = 3) -> dict[int, float]:
        """Measure what a verify forward of n tree nodes costs here, relative to a plain step, and use it
        for every speculative method from now on (a few seconds; the defaults describe a 2-core CPU or a
        datacenter GPU)."""
        from .rasd.budget import measure_verify_costs
        from .rasd.token_tree import TokenTree
        from .target import truncate_cache

        device = self.runner.device
        vocab = int(self.model.config.vocab_size)
        ctx_ids = torch.arange(context_len, device=device)[None] % vocab
        with self._lock:
            cache = self.runner.new_cache()
            self.runner.forward(ctx_ids, cache)

            def forward(n: int) -> None:
                tree = TokenTree(1)
                for i in range(n - 1):  # a bushy tree: half the nodes hang off the root
                    tree.add(0 if i % 2 == 0 else len(tree) - 1, 2 + i, 0.5, 1)
                mask = tree.attention_mask(context_len, self.model.dtype, device) if n > 1 else None
                self.runner.forward(torch.tensor([tree.tokens], device=device), cache, logits_at=None,
                                    attention_mask=mask, position_ids=tree.position_ids(context_len, device))
                _sync_device(device)
                truncate_cache(cache, context_len)

            costs = measure_verify_costs(forward, repeats=repeats)
        self.verify_costs = costs
        self._budgets.clear()
        return costs

    def draft_gate(self) -> Any:
        """The engine's :class:`~refrag_rasd_core.rasd.budget.DraftGate` for ``rasd`` (kept across requests)."""
        from .rasd.budget import DraftGate

        if "rasd-draft-gate" not in self._budgets:
            self._budgets["rasd-draft-gate"] = DraftGate()
        return self._budgets["rasd-draft-gate"]

    def tree_budget(self, method: str) -> Any:
        """The engine's :class:`~refrag_rasd_core.rasd.budget.TreeBudget` for ``method`` (its calibration
        carries over from one request to the next)."""
        from .rasd.budget import CPU_COSTS, GPU_COSTS, TreeBudget

        if method not in self._budgets:
            costs = self.verify_costs or (GPU_COSTS if self.runner.device.type == "cuda" else CPU_COSTS)
            self._budgets[method] = TreeBudget(costs)
        return self._budgets[method]

    def passage_token_ids(self, passages: Sequence[Any] | None) -> list[list[int]]:
        """Token ids of passages given as strings, token-id lists or objects with ``token_ids`` / ``text``."""
        out: list[list[int]] = []
        for p in passages or []:
            ids = getattr(p, "token_ids", None) if not isinstance(p, (str, list, tuple)) else None
            if ids is None and isinstance(p, (list, tuple)):
                ids = p
            if ids is None:
                txt = p if isinstance(p, str) else getattr(p, "text", None)
                if txt is None:
                    raise InvalidInputError(f"a passage must be text, token ids or have .text, got {type(p)!r}")
                ids = self.tokenizer(txt, add_special_tokens=False)["input_ids"] if txt.strip() else []
            out.append([int(t) for t in ids])
            self._check_token_ids(out[-1], f"passage {len(out) - 1}")
        return out

    def _check_token_ids(self, ids: list[int], what: str) -> None:
        n = int(self.model.get_input_embeddings().weight.shape[0])
        bad = next((t for t in ids if not 0 <= t < n), None)
        if bad is not None:
            raise InvalidInputError(f"{what} has token id {bad}, outside this model's vocabulary [0, {n}): "
                                    "token ids must come from the target's own tokenizer (or pass text)")


@dataclass
class Prefill:
    """What :meth:`Engine.prefill` returns: the filled KV cache, the next-token logits ``[V]``, the number of
    positions the decoder read, the statistics and the decoder that filled the cache (stock or adapted)."""

    cache: Any
    logits: torch.Tensor
    positions: int
    stats: GenerationStats
    runner: TargetRunner | None = None

    def kv_bytes(self) -> int:
        """Bytes the KV cache holds (keys and values of every layer)."""
        return sum(t.numel() * t.element_size() for layer in self.cache.layers
                   for t in (getattr(layer, "keys", None), getattr(layer, "values", None)) if t is not None)


@dataclass
class _Request:
    """One call's prompt: finished token ids, or a layout whose passages are compressed in the loop."""

    prompt_ids: list[int] | None = None
    layout: Any = None
    prompt_tokens: int = 0
    context_tokens: int = 0
    passages: list[Any] = field(default_factory=list)
    question: str = ""


def load_refrag(target: LoadedModel, refrag: Any) -> Any:
    """Resolve the engine's ``refrag`` argument to a :class:`~refrag_rasd_core.refrag.RefragModel` (or None).
    The target is not modified: its decoder adapters apply to compressed requests only
    (:meth:`Engine.runner_for`)."""
    from .refrag.checkpoint import DEFAULT_REFRAG_CHECKPOINT, load_refrag_checkpoint
    from .refrag.refrag_model import RefragModel

    if refrag is None:
        return None
    if isinstance(refrag, str) and refrag == "auto":
        if not target.is_default or not Path(DEFAULT_REFRAG_CHECKPOINT).exists():
            return None
        refrag = DEFAULT_REFRAG_CHECKPOINT
    rm = refrag if isinstance(refrag, RefragModel) else load_refrag_checkpoint(refrag, target.model, target.tokenizer)
    rm.to(target.device)
    return rm


def default_drafter(target: LoadedModel) -> Any:
    """The shipped EAGLE draft head for the default target (``None`` for any other model)."""
    if not target.is_default:
        return None
    from .eagle.checkpoint import DEFAULT_CHECKPOINT, load_default_draft_head

    if not Path(DEFAULT_CHECKPOINT).exists():
        return None
    return load_default_draft_head(target.model)


def _check_drafter_vocab(drafter: Any, target: LoadedModel) -> None:
    """Refuse a draft model whose embedding table cannot take the target's token ids."""
    from .errors import TokenizerMismatchError

    model = getattr(drafter, "model", None)
    if model is None or not hasattr(model, "get_input_embeddings"):
        return
    n_draft, n_target = int(model.get_input_embeddings().weight.shape[0]), len(target.tokenizer)
    if n_draft < n_target:
        raise TokenizerMismatchError(
            f"the draft model embeds {n_draft} tokens but the target's tokenizer has {n_target}: a draft model "
            "must share the target's tokenizer (use a draft from the same model family, or an EAGLE head)")


def _choose(logits: torch.Tensor, params: SamplingParams, gen: torch.Generator | None) -> int:
    if params.greedy:
        return int(logits.argmax())
    return sample(logits_to_probs(logits, params), gen)


def _sync_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _merge_config(config: GenerationConfig | None, overrides: dict[str, Any]) -> GenerationConfig:
    cfg = config or GenerationConfig()
    if not overrides:
        return cfg
    if "max_tokens" in overrides:  # the name LangChain / OpenAI users know
        overrides["max_new_tokens"] = overrides.pop("max_tokens")
    unknown = set(overrides) - set(GenerationConfig.__dataclass_fields__)
    if unknown:
        raise InvalidInputError(f"unknown generation setting(s): {', '.join(sorted(unknown))}")
    return replace(cfg, **overrides)
