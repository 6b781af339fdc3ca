"""The lean forward: a LLaMA-family decoder in plain tensor code over a preallocated KV cache.

:class:`LeanRunner` has :class:`~refrag_rasd_core.target.TargetRunner`'s interface (``forward``,
``new_cache``, ``device``, ``model``, ``max_positions``), so the engine, the speculative step and the
budget calibration run it unchanged; the cache helpers of :mod:`refrag_rasd_core.target`
(``keep_cache_path``, ``truncate_cache``) dispatch to :class:`~refrag_rasd_core.lean.cache.LeanCache`.
Per layer (as in gpt-fast): RMSNorm, one fused QKV matmul, rotary from the position ids, the new keys and
values written in place into the cache, grouped-query SDPA under the caller's tree mask (or causal), the
output projection, RMSNorm, one fused gate/up matmul, SwiGLU, the down projection. Logits are computed only
at the requested positions; hidden states (after the final norm) only when asked. On CPU the linears run
MKL-prepacked or oneDNN copies for the row counts where that measured faster at load (:mod:`.linear`).

Example:
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
    ...                   num_attention_heads=4, num_key_value_heads=2)
    >>> runner = LeanRunner(LlamaForCausalLM(cfg).eval(), prepack=False)
    >>> cache = runner.new_cache()
    >>> logits, hidden = runner.forward(torch.tensor([[1, 2, 3]]), cache, logits_at=-1, want_hidden=True)
    >>> tuple(logits.shape), tuple(hidden.shape), cache.length
    ((1, 32), (3, 16), 3)
    >>> runner = LeanRunner(engine.model)                                             # doctest: +REAL_MODEL
    >>> logits, _ = runner.forward(torch.tensor([[1, 2, 3]]), runner.new_cache())      # doctest: +REAL_MODEL
    >>> tuple(logits.shape)                                                           # doctest: +REAL_MODEL
    (1, 49152)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .cache import LeanCache
from .int4 import DECODE_ROWS
from .invariant import attend, tree_tails
from .linear import NO_PACKING, PackPlan, measure_pack_plans
from .weights import lean_weights, linear_groups

__all__ = ["ROTATION_ROWS", "LeanRunner", "pack_plans"]

_PLANS: dict[tuple[Any, ...], dict[str, PackPlan]] = {}  # measured plans, per weight shapes and threads


def pack_plans(model: Any) -> dict[str, PackPlan]:
    """The packed-weight plans for ``model`` on this machine: measured on its own weights the first time a
    model of these shapes is seen in this process (threads and dtype included), then reused."""
    groups = linear_groups(model)
    first = groups["decoder"][0]
    head = groups["head"][0]
    groups["head"] = [head[:max(1, (16 << 20) // max(1, head.shape[1] * head.element_size()))]]  # ~16 MB of rows
    if first.device.type != "cpu" or first.dtype != torch.float32:
        return {"decoder": NO_PACKING, "head": NO_PACKING}
    key = (tuple(tuple(w.shape) for g in groups.values() for w in g), first.dtype, torch.get_num_threads())
    if key not in _PLANS:
        _PLANS[key] = measure_pack_plans(groups, long=("decoder",), sample_bytes=40 << 20)
    return _PLANS[key]


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm: normalise in float32, cast back, then scale (in float32: torch's fused
    kernel, one op instead of six)."""
    if x.dtype == torch.float32 and weight.dtype == torch.float32:
        return F.rms_norm(x, weight.shape, weight, eps)
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


ROTATION_ROWS = 64
"""Up to this many new positions (steps, verifies) rotary runs as one ``bmm`` per layer (see
:func:`_rotations`); a prefill keeps the elementwise formula (its ``[n, head_dim, head_dim]`` matrices would
grow with the prompt)."""


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rotations(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding as one matrix per position: ``x @ rot[p] == x * cos[p] + rotate_half(x) * sin[p]``
    (transformers' formula), so each layer rotates its queries and keys with one ``bmm`` instead of five
    elementwise ops. ``cos`` / ``sin``: ``[n, head_dim]``; returns ``[n, head_dim, head_dim]``."""
    n, hd = cos.shape
    half = hd // 2
    turn = torch.zeros(hd, hd, dtype=cos.dtype, device=cos.device)  # x @ turn == rotate_half(x)
    idx = torch.arange(half, device=cos.device)
    turn[idx + half, idx] = -1
    turn[idx, idx + half] = 1
    return torch.diag_embed(cos) + turn * sin[:, None, :]


def _call(linear: Any, x: torch.Tensor) -> torch.Tensor:
    return linear(x)


def _prompt(linear: Any, x: torch.Tensor) -> torch.Tensor:
    """``linear`` as a prompt is read (an :class:`~.int4.Int4Linear`'s :meth:`~.int4.Int4Linear.prompt`)."""
    return linear.prompt(x) if hasattr(linear, "prompt") else linear(x)


def _adapted(y: torch.Tensor, x: torch.Tensor, delta: Any, rows: torch.Tensor | None) -> torch.Tensor:
    """``y`` (a linear's output on ``x``) with a row-scoped adapter's delta added at ``rows``, if any."""
    return y if delta is None or rows is None else delta.add_(x, y, rows)


class LeanRunner:
    """A LLaMA-family target's forward in plain tensor code (see the module docstring)."""

    def __init__(self, model: Any, *, prepack: bool | None = None, plans: dict[str, PackPlan] | None = None,
                 shared: dict[Any, Any] | None = None, int4: bool = False) -> None:
        """``prepack``: use prepared weights (MKL-packed, oneDNN) where measured faster (``None``: on CPU
        when available; ``False``: never, plain ``F.linear``). ``plans``: given plans instead of measuring;
        ``shared``: linears to reuse (see :meth:`sibling`). ``int4``: run the linears whose weights lie on a
        4-bit grid with the int4 kernel (opt-in; :mod:`refrag_rasd_core.lean.int4` says what it changes)."""
        self.model = model
        self.config = model.config
        self.device = next(model.parameters()).device
        self.max_positions = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None
        if plans is None:
            plans = pack_plans(model) if prepack is not False else {"decoder": NO_PACKING, "head": NO_PACKING}
        self.plans = plans
        self._shared: dict[Any, Any] = shared if shared is not None else {}
        self.int4 = bool(int4)
        self.weights = lean_weights(model, plans, self._shared, int4=self.int4)

    def sibling(self, model: Any) -> LeanRunner:
        """A runner over another weight set of the same architecture (the REFRAG-adapted copy): the same
        pack plans (and int4 setting), and the linears it does not change shared, not packed twice."""
        return LeanRunner(model, plans=self.plans, shared=self._shared, int4=self.int4)

    @property
    def int4_linears(self) -> tuple[int, int]:
        """``(linears running int4, all linears)`` of this runner's layers and LM head."""
        from .int4 import Int4Linear

        lins = [lin for layer in self.weights.layers for lin in (layer.qkv, layer.o, layer.gate_up, layer.down)]
        lins.append(self.weights.head)
        return sum(isinstance(lin, Int4Linear) for lin in lins), len(lins)

    def describe(self) -> str:
        """One line: what runs the linears."""
        text = f"lean forward; decoder: {self.plans['decoder'].describe()}; head: {self.plans['head'].describe()}"
        if self.int4:
            n, total = self.int4_linears
            q4 = sum(getattr(lin, "q4", None) is not None for layer in self.weights.layers
                     for lin in (layer.qkv, layer.o, layer.gate_up, layer.down))
            text += f"; int4 kernel (bf16 activations) on {n} of {total} linears, the rest as planned"
            if q4:
                text += f"; up to {DECODE_ROWS} rows, {q4} of them as Q4_1 x int8, two levels (AVX-512 VNNI)"
            head = self.weights.row_head
            text += (f"; batch-invariant attention and LM head ({head.kind}) up to {DECODE_ROWS} rows"
                     if head is not None else f"; NOT batch-invariant ({self.weights.invariant_problem})")
            pre = self.weights.int4_prefill
            if pre:
                text += (f"; forwards over {DECODE_ROWS} rows on "
                         f"{'the fp32 weights' if pre['long'] == 'fp32' else 'int4'}"
                         f" (at {pre['rows']} rows: int4 {pre['int4_ms']} ms, fp32 {pre['fp32_ms']} ms"
                         f", bf16 {pre.get('bf16_ms')} ms)")
                bf16 = any(getattr(lin, "bf16", None) is not None for layer in self.weights.layers
                           for lin in (layer.qkv, layer.o, layer.gate_up, layer.down))
                text += f"; prompts read {'bf16' if bf16 else 'fp32'}"
        return text

    def new_cache(self, capacity: int = 0) -> LeanCache:
        w = self.weights
        return LeanCache(layers=len(w.layers), kv_heads=w.kv_heads, head_dim=w.head_dim, dtype=w.embed.dtype,
                         device=self.device, capacity=capacity)

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor | None,
        cache: LeanCache,
        *,
        logits_at: int | torch.Tensor | None = -1,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        want_hidden: bool = False,
        adapter: Any = None,
        adapter_rows: torch.Tensor | None = None,
        prompt: bool = False,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """One forward of ``input_ids`` ``[1, n]`` (or ``inputs_embeds`` ``[1, n, H]``) appended to ``cache``.

        ``attention_mask``: an additive float mask ``[1, 1, n, cached + n]`` (a token tree's); none means
        causal. ``position_ids`` ``[1, n]``: default ``cached .. cached + n - 1``. ``logits_at``: ``-1`` for
        the last position only, ``None`` for all, an index tensor for some. ``adapter`` (a
        :class:`~refrag_rasd_core.refrag.scoped_lora.RowScopedLora`): its deltas are added at the new
        positions ``adapter_rows`` only (a compressed prefill's chunk positions). ``prompt``: with int4 weights,
        read a prompt: every linear through :meth:`~.int4.Int4Linear.prompt` (bf16 where measured faster, else
        fp32), the fp32 LM head; steps and verifies run 4-bit. Returns ``(logits [m, V] float, hidden [n, H]
        after the final norm, or None)``.
        """
        w = self.weights
        deltas = adapter.lean_layers(self.model, self.device) if adapter is not None else None
        rows = adapter_rows.to(self.device) if deltas is not None and adapter_rows is not None else None
        x = inputs_embeds[0] if inputs_embeds is not None else F.embedding(input_ids[0], w.embed)
        n = x.shape[0]
        start = cache.length
        total = start + n
        cache.reserve(total)
        if position_ids is None:
            position_ids = torch.arange(start, total, device=x.device)[None]
        cos, sin = w.rotary(x, position_ids)
        wide = prompt and self.int4  # a prompt read on the wide weights, not the 4-bit kernels
        inv = w.invariant if n <= DECODE_ROWS and deltas is None and not wide else None
        if attention_mask is not None:  # checked (and cast) first, whichever attention reads it
            attention_mask, _ = self._mask(attention_mask, n, start, x.dtype, x.device)
        tails = tree_tails(attention_mask, n, start) if inv is not None else None
        inv = inv if tails is not None else None  # batch-invariant: elementwise rotary, row-by-row attention
        rot = _rotations(cos[0], sin[0]) if n <= ROTATION_ROWS and inv is None else None
        cos, sin = cos[0][:, None, :], sin[0][:, None, :]  # [n, 1, head_dim]: broadcast over heads
        # the SDPA mask only where SDPA runs (a causal one costs a [n, start + n] tril per forward)
        mask, causal = (None, False) if inv is not None else self._mask(attention_mask, n, start, x.dtype, x.device)
        heads, kv, hd = w.heads, w.kv_heads, w.head_dim
        qk_width, inter = (heads + kv) * hd, w.intermediate
        keys, values = cache.keys, cache.values
        fused = inv is not None and tails is not None and w.fused is not None and rows is None
        if fused:  # every layer in one C++ call (Q4_1 x int8 linears, batch-invariant: csrc/layers.cpp)
            x = inv.decoder_layers(x, w.fused, cos[:, 0], sin[:, 0], keys, values, start, tails[0], tails[1],
                                   heads, kv, inter, w.eps, w.scaling)
        run = _prompt if wide else _call
        for i, layer in enumerate(() if fused else w.layers):
            d = deltas[i] if rows is not None else None
            h = _rms_norm(x, layer.attn_norm, w.eps)
            qkv = _adapted(run(layer.qkv, h).to(x.dtype), h, d and d.qkv, rows)
            qk = qkv[:, :qk_width].view(n, heads + kv, hd)
            qk = torch.bmm(qk, rot) if rot is not None else qk * cos + _rotate_half(qk) * sin
            keys[i, :, start:total] = qk[:, heads:].transpose(0, 1)
            values[i, :, start:total] = qkv[:, qk_width:].view(n, kv, hd).transpose(0, 1)
            if inv is not None and tails is not None:
                a = attend(inv, qk[:, :heads], keys[i], values[i], start, tails, w.scaling)
            else:
                att = F.scaled_dot_product_attention(
                    qk[:, :heads].transpose(0, 1)[None], keys[i, :, :total][None], values[i, :, :total][None],
                    attn_mask=mask, is_causal=causal, scale=w.scaling, enable_gqa=heads != kv)
                a = att[0].transpose(0, 1).reshape(n, heads * hd)
            x = x + _adapted(run(layer.o, a), a, d and d.o, rows)
            h = _rms_norm(x, layer.mlp_norm, w.eps)
            gu = _adapted(run(layer.gate_up, h), h, d and d.gate_up, rows)
            m = F.silu(gu[:, :inter]) * gu[:, inter:]
            x = x + _adapted(run(layer.down, m), m, d and d.down, rows)
        cache.length = total
        if want_hidden:
            hidden = _rms_norm(x, w.norm, w.eps)
            sel = hidden if logits_at is None else hidden[self._rows(logits_at, n)]
        else:
            hidden = None
            sel = _rms_norm(x if logits_at is None else x[self._rows(logits_at, n)], w.norm, w.eps)
        head = w.row_head if w.row_head is not None and sel.shape[0] <= DECODE_ROWS and not wide else w.head
        return head(sel).float(), hidden

    @staticmethod
    def _rows(logits_at: int | torch.Tensor, n: int) -> slice | torch.Tensor:
        if isinstance(logits_at, int):
            i = logits_at % n if -n <= logits_at < n else logits_at
            return slice(i, i + 1)
        return logits_at

    @staticmethod
    def _mask(attention_mask: torch.Tensor | None, n: int, start: int, dtype: torch.dtype,
              device: torch.device) -> tuple[torch.Tensor | None, bool]:
        """(the SDPA mask, is_causal) for ``n`` new positions after ``start`` cached ones."""
        if attention_mask is not None:
            if attention_mask.dim() != 4 or attention_mask.shape[-1] != start + n or attention_mask.shape[-2] != n:
                raise ValueError(f"attention_mask must be [1, 1, {n}, {start + n}] (new x cached + new positions),"
                                 f" got {tuple(attention_mask.shape)}")
            if attention_mask.dtype != torch.bool and attention_mask.dtype != dtype:
                attention_mask = attention_mask.to(dtype)
            return attention_mask, False
        if n == 1:
            return None, False
        if start == 0:
            return None, True
        allowed = (torch.arange(start, start + n, device=device)[:, None]
                   >= torch.arange(start + n, device=device)[None])  # causal; torch's bool tril is slow on CPU
        return allowed, False
