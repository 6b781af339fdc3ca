"""The one public entry: generate or stream an answer from a prompt (and retrieved passages).

``Engine`` owns a target model and runs one decoding loop for every method: each step it asks the
method's proposer for a token tree rooted at the last committed token (none = a plain step), verifies the
whole tree in one target forward, keeps the longest accepted path (greedy) or the path chosen by lossless
multi-candidate rejection sampling, compacts the KV cache to it and emits the accepted tokens plus the
target's own next token. The default method is ``rasd`` (greedy output equals plain decoding's);
``method="vanilla"`` never proposes anything: it is the plain KV-cache loop that every speedup is measured
against. Settings are :class:`~refrag_rasd_core.generation_config.GenerationConfig` fields.

Example:
    >>> from refrag_rasd_core.engine import Engine
    >>> engine = Engine.load(device="cpu")                       # doctest: +REAL_MODEL
    >>> text = "".join(engine.stream([{"role": "user", "content": "Hi!"}], max_new_tokens=8))  # doctest: +REAL_MODEL
    >>> res = engine.generate("The capital of France is", max_tokens=8)                       # doctest: +REAL_MODEL
    >>> res.stats.new_tokens <= 8, res.stats.method                                           # doctest: +REAL_MODEL
    (True, 'rasd')
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from .components import check_drafter_vocab, default_drafter, drafter_for_weights, load_refrag, load_refrag_long
from .errors import InvalidInputError
from .forward import Runner, make_runner, resolve_weights, runner_kind, sync_device
from .generation_config import METHODS, GenerationConfig, Prompt
from .generation_stream import GenerationStream, ModelLock
from .models import LoadedModel, load_target
from .prefill import KeptAnswer, Prefill, prefill_forward
from .prefix_cache import PrefixCache
from .rasd.budget import DraftGate, TreeBudget, default_verify_costs, runner_verify_costs
from .rasd.proposers import PROPOSERS
from .rasd.step import speculative_step
from .refrag.runtime import RefragRuntime
from .request import EngineRequest, RequestBuilder, check_compressed_fits
from .sampling import SamplingParams, make_generator
from .stats import GenerationResult, GenerationStats
from .structured.constraint import UNCONSTRAINED, Grammars
from .text_stream import TextAssembler

# the engine's public names; the settings and the stream live in their own modules
__all__ = ["METHODS", "Engine", "GenerationConfig", "GenerationResult", "GenerationStats", "GenerationStream",
           "Prefill", "Prompt", "Runner"]


WEIGHTS = ("auto", "exact", "int4")
"""How the target's linears run: ``auto`` (the model's own format: ``int4`` for a 4-bit checkpoint on CPU, else
``exact``), as loaded (fp32), or 4-bit weights through the int4 kernels (see
:func:`~refrag_rasd_core.forward.resolve_weights`)."""
DEFAULT_WEIGHTS = "auto"


def check_weights(weights: str) -> str:
    """``weights`` if it is one of :data:`WEIGHTS`, else an :class:`InvalidInputError` that lists them."""
    if weights not in WEIGHTS:
        raise InvalidInputError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    return weights


class Engine:
    """Generation over one target model, with every decoding method behind one loop.

    Thread-safe: calls are serialized on the model (one decoding loop runs at a time per engine).
    """

    def __init__(self, target: LoadedModel, *, drafter: Any = "auto", datastore: Any = None,
                 refrag: Any = "auto", refrag_encoder: Any = None, forward: str = "auto",
                 weights: str = DEFAULT_WEIGHTS, prefix_cache: PrefixCache | int | None = None,
                 refrag_long: Any = "auto") -> None:
        """``drafter``: a :class:`~refrag_rasd_core.rasd.draft_tree.Drafter`, ``None`` (retrieval-only
        speculation) or ``"auto"`` (the shipped EAGLE head for the default model). ``datastore``: a shared
        :class:`~refrag_rasd_core.rasd.datastore.RestDatastore` for ``rest`` / ``rasd``. ``refrag``: the REFRAG
        checkpoint for compressed requests (a path, a :class:`~refrag_rasd_core.refrag.RefragModel`, ``None``
        or ``"auto"``: the shipped one); other requests run the stock target. ``refrag_long``: the checkpoint
        for passages that ``context="auto"`` compresses because they do not fit the window (same encoder and k;
        ``"auto"``: the shipped long-document one with the shipped checkpoint; ``None``: ``refrag``'s).
        ``refrag_encoder``: the chunk encoder for passages without stored chunk embeddings (default: the
        checkpoint's). ``forward``: ``"auto"`` (the lean forward for LLaMA / Qwen2 / Mistral, transformers'
        otherwise), ``"lean"`` or ``"hf"`` (:mod:`~refrag_rasd_core.forward`; same greedy outputs). ``weights``:
        ``"auto"`` (default: the model's own format: a 4-bit checkpoint, as the default model's Q4_1 linears, runs
        4-bit on the lean CPU forward, Q4_1 x two-level int8 activations; anything else as loaded), ``"exact"``
        (fp32, as loaded) or ``"int4"`` (4-bit or an error); speculation equals the engine's own plain decoding
        exactly at every setting (:mod:`refrag_rasd_core.lean.invariant`); ``self.weights`` says what ran.
        ``prefix_cache``: a byte budget (or a :class:`~refrag_rasd_core.prefix_cache.PrefixCache`) for reusing
        earlier requests' prompt and answer KV (off)."""
        check_weights(weights)
        self.target = target
        self.model = target.model
        self.tokenizer = target.tokenizer
        self.weights = resolve_weights(target.model, forward, weights)  # "auto" resolved: "int4" or "exact"
        self.runner: Runner = make_runner(
            target.model, forward, **({"int4": True} if self.weights == "int4" else {}))
        self.forward = runner_kind(self.runner)  # "lean" or "hf": what ``forward="auto"`` resolved to
        self.drafter = drafter_for_weights(
            default_drafter(target) if isinstance(drafter, str) and drafter == "auto" else drafter, self.weights)
        check_drafter_vocab(self.drafter, target)
        self.datastore = datastore
        self.refrag = load_refrag(target, refrag)
        self._refrag = RefragRuntime(self.refrag, model=self.model, tokenizer=self.tokenizer,
                                     target_name=target.name, encoder=refrag_encoder)
        self.refrag_long = load_refrag_long(target, refrag_long, self.refrag, refrag == "auto")
        self._refrag_long = self._refrag.sibling(self.refrag_long) if self.refrag_long is not None else None
        self._lock = ModelLock()
        self.prefix_cache = PrefixCache(prefix_cache) if isinstance(prefix_cache, int) else prefix_cache
        self._requests = RequestBuilder(self.tokenizer, int(self.model.get_input_embeddings().weight.shape[0]))
        self._budgets: dict[str, TreeBudget] = {}  # method -> its budget (calibrated across requests)
        self._draft_gate: DraftGate | None = None
        self._grammars: Grammars | None = None  # structured output's compiler (built on first need)
        self.verify_costs: dict[int, float] | None = None  # None: the defaults for the device type
        eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        eos = self.tokenizer.eos_token_id if eos is None else eos
        self.eos_ids = frozenset([eos] if isinstance(eos, int) else (eos or []))

    @classmethod
    def load(cls, model: str | None = None, *, device: str = "auto", dtype: str | None = None, **kwargs: Any) -> Engine:
        """Load a target (``None`` = the offline default) and wrap it in an engine."""
        return cls(load_target(model, device=device, dtype=dtype), **kwargs)

    # ---- what it is --------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """The device the target runs on."""
        return self.runner.device

    @property
    def name(self) -> str:
        """The target model's name."""
        return self.target.name

    @property
    def has_refrag(self) -> bool:
        """Whether this engine can read compressed context (it has a REFRAG checkpoint)."""
        return self.refrag is not None

    @property
    def max_positions(self) -> int | None:
        """The target's window in positions (``None``: unbounded)."""
        return self.runner.max_positions

    def describe(self) -> dict[str, Any]:
        """What this engine runs, for results files and reports: the target's name and dtype, the device,
        the forward and weights chosen at load (``forward_choices``: what the lean forward measured here),
        the drafter and the REFRAG checkpoint (chunk size, encoder, sha256, whether it has a trained policy,
        its measured ``auto`` operating point, the long-document checkpoint's sha256), or ``None`` without one.

        Example:
            >>> info = engine.describe()                                        # doctest: +REAL_MODEL
            >>> info["refrag"]["k"], info["weights"]                            # doctest: +REAL_MODEL
            (16, 'int4')
        """
        rm, long = self.refrag, self.refrag_long
        refrag = None if rm is None else {"k": rm.k, "encoder": rm.encoder_id, "sha256": rm.meta.get("sha256"),
                                          "policy": rm.policy is not None, "auto": dict(rm.meta.get("auto") or {}),
                                          "long_sha256": long.meta.get("sha256") if long is not None else None}
        return {"model": self.name, "dtype": str(self.model.dtype).replace("torch.", ""), "device": str(self.device),
                "forward": self.forward, "weights": self.weights, "forward_choices": self.runner.describe(),
                "drafter": type(self.drafter).__name__ if self.drafter is not None else None, "refrag": refrag}

    # ---- prompts ---------------------------------------------------------------------------------------
    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt: chat messages go through the chat template (with the generation prompt);
        a string is used as it is."""
        return self._requests.encode_prompt(prompt)

    # ---- public API ------------------------------------------------------------------------------------
    def stream(self, prompt: Prompt, *, passages: Sequence[Any] | None = None,
               config: GenerationConfig | None = None, datastore: Any = None, **settings: Any) -> GenerationStream:
        """Stream the answer as text pieces. ``config`` and keyword ``settings`` (any :class:`GenerationConfig`
        field, the keywords winning) say how; ``datastore``: a corpus datastore for ``rest`` / ``rasd`` (any
        store with ``source`` and ``candidates``, e.g. a ``RestDatastore``) instead of the engine's own.

        With passages, ``context`` (default ``auto``: this engine's measured operating point, plain RAG by
        default) says how they enter the decoder; with ``text`` or ``compressed`` the prompt is the question
        (a string, or chat messages whose last user message is the question) and the engine lays the
        passages out around it."""
        request = self._request(prompt, passages, _config(config, settings))
        return self._open(request, datastore)

    def generate(self, prompt: Prompt, *, passages: Sequence[Any] | None = None,
                 config: GenerationConfig | None = None, datastore: Any = None, **settings: Any) -> GenerationResult:
        """Generate the whole answer at once."""
        return self.stream(prompt, passages=passages, config=config, datastore=datastore, **settings).result()

    def generate_ids(self, prompt_ids: Sequence[int], *, passages: Sequence[Any] | None = None,
                     config: GenerationConfig | None = None, datastore: Any = None, **settings: Any
                     ) -> GenerationResult:
        """Like :meth:`generate` from already tokenized prompt ids (``context`` ``none`` or ``auto``: the
        passages feed the speculative datastore only)."""
        request = self._requests.from_ids(prompt_ids, passages, _config(config, settings))
        return self._open(request, datastore).result()

    def _open(self, request: EngineRequest, datastore: Any = None) -> GenerationStream:
        request.datastore = self.datastore if datastore is None else datastore
        limit = self.runner.max_positions
        request.check_fits(limit)  # here, not in the loop: a server can refuse before streaming
        cfg = request.config
        stats = GenerationStats(method=cfg.method, prompt_tokens=request.prompt_tokens, context=cfg.context,
                                context_reason=request.context_reason)
        fmt = cfg.constraint_format()
        if fmt is not None and self._grammars is None:
            self._grammars = Grammars(self.tokenizer, self._requests.vocab_size, self.eos_ids)
        constraint = self._grammars.constraint(fmt) if self._grammars is not None else UNCONSTRAINED
        token_ids: list[int] = []
        return GenerationStream(self._run(request, stats, token_ids, limit, constraint), stats, token_ids,
                                tools=cfg.offers_tools)

    # ---- REFRAG (its parts: :class:`~refrag_rasd_core.refrag.runtime.RefragRuntime`) -------------------------
    @property
    def has_chunk_encoder(self) -> bool:
        """Whether :meth:`refrag_encoder` has an encoder to give (a REFRAG checkpoint, or one given)."""
        return self._refrag.has_chunk_encoder

    def refrag_encoder(self) -> Any:
        """The :class:`~refrag_rasd_core.refrag.ChunkEncoder` matching this engine's REFRAG checkpoint
        (loaded on first use; only passages WITHOUT stored chunk embeddings need it)."""
        return self._refrag.encoder()

    def refrag_signature(self) -> dict[str, Any]:
        """What a store's chunk embeddings must match to be read by this engine (encoder, k, tokenizer...)."""
        return self._refrag.signature()

    def auto_context(self, passage_tokens: int | None = None) -> dict[str, Any]:
        """The settings ``context="auto"`` stands for when passages come with a request: the operating point
        recorded in the REFRAG checkpoint (chosen on the qa suite as the fastest setting that keeps at least 95%
        of plain RAG's right answers, for all requests or for passages of at least so many tokens), else plain
        RAG. The shipped checkpoint records none (measured, compression lost too many answers at every length),
        so by default an answer is not worse than plain RAG's; compression is there when asked for.

        Example:
            >>> engine.auto_context()                    # doctest: +REAL_MODEL
            {'context': 'text'}
            >>> engine.auto_context(passage_tokens=3000)    # doctest: +REAL_MODEL
            {'context': 'text'}
        """
        return self._refrag.auto_context(passage_tokens)

    def runner_for(self, compressed: bool, long_document: bool = False) -> Runner:
        """The decoder a request runs on: the REFRAG-adapted weight set for a compressed request when the
        checkpoint (``long_document``: the long-document one) has decoder adapters for every position (built
        once), else the stock target."""
        return self._runtime(long_document).runner_for(self.runner, compressed)

    def prefill_adapter(self, compressed: bool, long_document: bool = False) -> Any:
        """The row-scoped decoder adapters a compressed request's prefill adds at its chunk positions, or
        ``None``."""
        return self._runtime(long_document).prefill_adapter(compressed)

    def _runtime(self, long_document: bool) -> RefragRuntime:
        return self._refrag_long if long_document and self._refrag_long is not None else self._refrag

    def _request(self, prompt: Prompt, passages: Sequence[Any] | None, cfg: GenerationConfig) -> EngineRequest:
        """Tokenize the prompt and the passages (once) and resolve ``context="auto"`` for one call;
        compression happens in the loop."""
        return self._requests.build(prompt, passages, cfg,
                                    auto_point=lambda n: self.auto_context(passage_tokens=n),
                                    require_refrag=self._refrag.require, limit=self.runner.max_positions,
                                    window_point=self._runtime(True).window_point,
                                    long_checkpoint=self._refrag_long is not None)

    # ---- the loop --------------------------------------------------------------------------------------
    def _run(self, request: EngineRequest, stats: GenerationStats, out_ids: list[int], limit: int | None,
             constraint: Any) -> Iterator[str]:
        with self._lock, KeptAnswer(self.prefix_cache, out_ids) as kept:  # the next turn starts with both
            yield from self._decode(request, stats, out_ids, limit, constraint, kept)

    def _decode(self, request: EngineRequest, stats: GenerationStats, out_ids: list[int], limit: int | None,
                constraint: Any, kept: KeptAnswer) -> Iterator[str]:
        cfg = request.config
        runner = self.runner_for(request.compressed, request.long_document)
        device = runner.device
        params = cfg.sampling
        gen = make_generator(cfg.seed, device)
        text = TextAssembler(self.tokenizer, cfg.stop)

        t0 = time.perf_counter()
        prompt_ids, shift, mixed = self._prefill_input(request, stats, limit)
        proposer = self._proposer(request)
        if proposer is not None and constraint.active:
            proposer.constraint = constraint
        want_hidden = bool(proposer is not None and proposer.uses_target_hidden)
        max_new = cfg.max_tokens
        if limit is not None:
            max_new = min(max_new, limit - stats.prefill_positions)
        committed = list(prompt_ids)
        kept.prefill = pre = prefill_forward(runner, prompt_ids, mixed, want_hidden, self.prefill_adapter(
            mixed is not None, request.long_document), prefix=self.prefix_cache)
        cache, logits, hidden, stats.cached_tokens = pre.cache, pre.logits, pre.hidden, pre.cached
        token = constraint.choose(logits[0], params, gen)
        sync_device(device)
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
                token = constraint.choose(logits[0], params, gen)
                piece, done = emit(token)
                if piece:
                    yield piece
            stats.accepted_hist[1] = stats.target_forwards
        elif not done:
            yield from self._speculate(runner, proposer, cache, committed, hidden, params, gen, stats, emit,
                                       shift, constraint, kept.hidden)
        if proposer is not None:  # proposal time = retrieval + drafting / tree building
            stats.retrieval_s = proposer.retrieval_s
            stats.draft_s = max(stats.draft_s - proposer.retrieval_s, 0.0)
        stats.grammar_s = constraint.mask_s
        sync_device(device)
        stats.total_s = time.perf_counter() - t0

    def _prefill_input(self, request: EngineRequest, stats: GenerationStats,
                       limit: int | None) -> tuple[list[int], int, Any]:
        """(raw prompt tokens, compressed positions, mixed input or None) of a request; a compressed request's
        mixed (compressed + expanded) input is built here."""
        if not request.compressed:
            ids = request.prompt_ids or []
            stats.prefill_positions = len(ids)
            return ids, 0, None
        cfg = request.config
        mixed = self._runtime(request.long_document).compress(
            request.layout, request.passages, request.question, expand=cfg.expand, expand_tokens=cfg.expand_tokens,
            policy=cfg.policy, seed=cfg.seed, raw_passages=request.raw_passages)
        stats.chunks, stats.expanded_chunks, stats.expanded = mixed.n_chunks, len(mixed.expanded), list(mixed.expanded)
        check_compressed_fits(mixed.length, limit, self._refrag.require().k)
        prompt_ids = [t for t in mixed.token_ids if t is not None]
        stats.prefill_positions = mixed.length
        return prompt_ids, mixed.length - len(prompt_ids), mixed  # compressed positions: cached, not tokens

    def prefill(self, prompt: Prompt, *, passages: Sequence[Any] | None = None,
                config: GenerationConfig | None = None, **overrides: Any) -> Prefill:
        """Only the prefill of a request (as :meth:`generate` would run it): the KV cache, the next-token
        logits and the statistics (``ttft_s`` covers compression, the policy and the forward).

        Example:
            >>> pre = engine.prefill(question, passages=passages, context="compressed")   # doctest: +REAL_MODEL
            >>> answer_ids = engine.tokenizer(" William Shakespeare")["input_ids"]         # doctest: +REAL_MODEL
            >>> (pre.positions < pre.stats.prompt_tokens,
            ...  engine.continuation_nll(pre, answer_ids) > 0)                            # doctest: +REAL_MODEL
            (True, True)
        """
        request = self._request(prompt, passages, _config(config, overrides))
        cfg = request.config
        stats = GenerationStats(method=cfg.method, prompt_tokens=request.prompt_tokens, context=cfg.context)
        limit = self.runner.max_positions
        request.check_fits(limit)
        with self._lock:
            runner = self.runner_for(request.compressed, request.long_document)
            t0 = time.perf_counter()
            prompt_ids, _, mixed = self._prefill_input(request, stats, limit)
            pre = prefill_forward(runner, prompt_ids, mixed, False,
                                  self.prefill_adapter(mixed is not None, request.long_document))
            cache, logits = pre.cache, pre.logits
            int(logits[0].argmax())
            sync_device(runner.device)
            stats.ttft_s = time.perf_counter() - t0
        return Prefill(cache=cache, logits=logits[0], positions=stats.prefill_positions, stats=stats,
                       runner=runner)

    def continuation_nll(self, prefill: Prefill, token_ids: Sequence[int]) -> float:
        """Mean negative log-likelihood per token of ``token_ids`` following a :meth:`prefill` (consumes
        its cache; :meth:`Prefill.continuation_nll`)."""
        with self._lock:
            return prefill.continuation_nll(token_ids, self.runner)

    def _speculate(self, runner: Runner, proposer: Any, cache: Any, committed: list[int],
                   hidden: torch.Tensor | None, params: SamplingParams, gen: torch.Generator | None,
                   stats: GenerationStats, emit: Any, shift: int, constraint: Any,
                   kept_hidden: list[torch.Tensor]) -> Iterator[str]:
        """Speculative steps (:func:`~refrag_rasd_core.rasd.step.speculative_step`) until ``emit`` says done;
        each step's hidden states of the positions it cached go to ``kept_hidden``."""
        done = False
        while not done:
            step = speculative_step(runner, proposer, cache, committed, hidden, params, gen, shift=shift,
                                    constraint=constraint)
            hidden = step.hidden
            if hidden is not None:
                kept_hidden.append(hidden)
            stats.count_step(step)
            used = 0
            for tok in step.tokens:
                used += 1
                piece, done = emit(tok)
                if piece:
                    yield piece
                if done:
                    break
            stats.accepted_hist[used] += 1

    def _proposer(self, request: EngineRequest) -> Any:
        """The request's proposer (:data:`~refrag_rasd_core.rasd.proposers.PROPOSERS`; none for ``vanilla``),
        given what its method uses: the engine's budget and draft gate for the method, its shared datastore
        and drafter, and the passages' token ids."""
        cfg = request.config
        entry = PROPOSERS.get(cfg.method)
        if entry is None:
            return None
        return entry.build(cfg.spec, self.tree_budget(cfg.method),
                           gate=self.draft_gate() if entry.gate else None, datastore=request.datastore,
                           drafter=self.drafter, passages=request.passage_ids)

    def calibrate_verify_costs(self, context_len: int = 512, repeats: int = 3) -> dict[int, float]:
        """Measure what a verify forward of n tree nodes costs here, relative to a plain step, and use it
        for every speculative method from now on (a few seconds; the defaults describe a 2-core CPU or a
        datacenter GPU)."""
        with self._lock:
            costs = runner_verify_costs(self.runner, context_len=context_len, repeats=repeats)
        self.verify_costs = costs
        self._budgets.clear()
        self._draft_gate = None
        return costs

    def draft_gate(self) -> DraftGate:
        """The engine's :class:`~refrag_rasd_core.rasd.budget.DraftGate` for ``rasd`` (kept across requests)."""
        if self._draft_gate is None:
            self._draft_gate = DraftGate()
        return self._draft_gate

    def tree_budget(self, method: str) -> TreeBudget:
        """The engine's :class:`~refrag_rasd_core.rasd.budget.TreeBudget` for ``method`` (its calibration
        carries over from one request to the next)."""
        if method not in self._budgets:
            costs = self.verify_costs or default_verify_costs(self.runner)
            self._budgets[method] = TreeBudget(costs)
        return self._budgets[method]

    def passage_token_ids(self, passages: Sequence[Any] | None) -> list[list[int]]:
        """Token ids of passages given as strings, token-id lists or objects with ``token_ids`` / ``text``."""
        return self._requests.passage_token_ids(passages)


def _config(config: GenerationConfig | None, settings: dict[str, Any]) -> GenerationConfig:
    """A call's settings: ``config`` (default: the defaults) with its keyword ``settings`` over it."""
    return (config or GenerationConfig()).merge(settings)

