"""The weights of a LLaMA-family decoder, laid out for the lean forward: fused QKV and gate/up matrices.

Supported: ``LlamaForCausalLM`` (SmolLM2, Llama), ``Qwen2ForCausalLM`` (biases on q/k/v) and
``MistralForCausalLM`` when no sliding window is in use: the same math (RMSNorm, rotary, grouped-query
attention, SwiGLU MLP). :func:`unsupported_reason` says why another model is not.

Fusing costs no memory: the fused matrix is built once and the Hugging Face module's own ``q_proj`` /
``k_proj`` / ``v_proj`` (``gate_proj`` / ``up_proj``) parameters become row views of it (same values), so
the model and the lean forward share one copy. A model fused before is recognised and not copied again.

Example:
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> small = dict(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1)
    >>> model = LlamaForCausalLM(LlamaConfig(**small, num_attention_heads=4, num_key_value_heads=2)).eval()
    >>> unsupported_reason(model) is None
    True
    >>> w = lean_weights(model)
    >>> tuple(w.layers[0].qkv.weight.shape), tuple(w.layers[0].gate_up.weight.shape)   # (4 + 2 * 2) heads of 4
    ((32, 16), (64, 16))
    >>> (w.layers[0].qkv.weight.untyped_storage().data_ptr()
    ...  == model.model.layers[0].self_attn.k_proj.weight.untyped_storage().data_ptr())
    True
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from ..heap import trim
from .int4 import DECODE_ROWS, Int4Linear, measure_prefill
from .invariant import InvariantHead, kernels, kernels_problem
from .linear import NO_PACKING, PackedLinear, PackPlan

__all__ = ["LeanLayer", "LeanWeights", "SUPPORTED", "lean_weights", "linear_groups", "unsupported_reason"]

SUPPORTED = ("llama", "qwen2", "mistral")
"""``config.model_type`` values the lean forward runs."""


@dataclass
class LeanLayer:
    """One decoder layer: norms' weights and the four (fused) linears."""

    attn_norm: torch.Tensor
    qkv: PackedLinear          # [(heads + 2 * kv_heads) * head_dim, hidden]
    o: PackedLinear
    mlp_norm: torch.Tensor
    gate_up: PackedLinear      # [2 * intermediate, hidden]: gate rows, then up rows
    down: PackedLinear


@dataclass
class LeanWeights:
    """The whole decoder: embeddings, layers, final norm, LM head, and the shapes the forward needs."""

    embed: torch.Tensor
    layers: list[LeanLayer]
    norm: torch.Tensor
    head: PackedLinear
    rotary: Any                # the model's own rotary module: (x, position_ids) -> (cos, sin)
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    eps: float
    scaling: float
    int4_prefill: dict[str, Any] | None = None  # measure_prefill's result when int4 linears are in use
    invariant: Any = None      # the batch-invariant kernels (int4 with them loaded; :mod:`.invariant`), or None
    row_head: Any = None       # the LM head through them (forwards of up to DECODE_ROWS rows), or None
    invariant_problem: str | None = None  # why an int4 forward is not batch-invariant here, if it is not
    fused: list[torch.Tensor] | None = None  # every layer's weights for ``decoder_layers`` when all run Q4_1 x int8


def unsupported_reason(model: Any) -> str | None:
    """Why the lean forward cannot run ``model`` (``None``: it can)."""
    cfg = getattr(model, "config", None)
    kind = getattr(cfg, "model_type", None)
    if kind not in SUPPORTED:
        return f"model_type {kind!r} is not one of {SUPPORTED}"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"hidden_act {cfg.hidden_act!r} (the lean MLP is SwiGLU)"
    if any(getattr(cfg, a, None) for a in ("final_logit_softcapping", "logit_scale", "attn_logit_softcapping")):
        return "logit soft-capping or scaling"
    layer_types = getattr(cfg, "layer_types", None) or []
    if any(t != "full_attention" for t in layer_types):
        return "sliding-window attention layers"
    window = getattr(cfg, "sliding_window", None)
    if kind == "mistral" and window is not None and window < int(getattr(cfg, "max_position_embeddings", 0) or 0):
        return f"a sliding window of {window} positions"
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "rotary_emb"):
        return "not the usual CausalLM layout (model.model.layers, model.model.rotary_emb)"
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        return "the LM head is not a plain linear layer"
    for layer in inner.layers:
        attn, mlp = layer.self_attn, layer.mlp
        mods = [getattr(attn, n, None) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
        mods += [getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
        if not all(type(m) is torch.nn.Linear for m in mods):
            return "a projection is not a plain nn.Linear (quantized or adapted)"
        if any(hasattr(attn, n) for n in ("q_norm", "k_norm")):
            return "per-head q/k norms"
    if not torch.is_floating_point(head.weight):
        return "non-float weights"
    return None


def _fused(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """The row-concatenation of ``params`` as one tensor; afterwards each parameter is a row view of it."""
    first = params[0]
    rows = sum(p.shape[0] for p in params)
    tail = params[-1]
    consecutive = all(p.untyped_storage().data_ptr() == first.untyped_storage().data_ptr() for p in params) and all(
        b.data_ptr() == a.data_ptr() + a.numel() * a.element_size() for a, b in zip(params, params[1:], strict=False))
    if consecutive and all(p.is_contiguous() for p in params):
        view = first.detach().new_empty(0)
        view.set_(first.untyped_storage(), first.storage_offset(), (rows, *first.shape[1:]), first.stride())
        if view[-tail.shape[0]:].data_ptr() == tail.data_ptr():
            return view
    fused = torch.cat([p.detach() for p in params])
    start = 0
    for p in params:
        n = p.shape[0]
        if p.untyped_storage().nbytes() == p.numel() * p.element_size():  # owns its storage: share instead
            p.data = fused[start:start + n]
        start += n
    return fused


def _fused_bias(mods: list[torch.nn.Linear]) -> torch.Tensor | None:
    if all(m.bias is None for m in mods):
        return None
    return torch.cat([m.bias.detach() if m.bias is not None else m.weight.new_zeros(m.weight.shape[0])
                      for m in mods])


def _bias(mod: torch.nn.Linear) -> torch.Tensor | None:
    return None if mod.bias is None else mod.bias.detach()


@torch.no_grad()
def linear_groups(model: Any) -> dict[str, list[torch.Tensor]]:
    """The weight matrices a lean forward reads, in order and in the shapes it runs them, grouped as the pack
    plans are: ``decoder`` (each layer's fused q/k/v, o, fused gate/up, down) and ``head`` (the LM head).
    The fusion is :func:`lean_weights`' own (the parameters become row views of the fused matrices), so the
    plans are timed on the matrices the forward multiplies, at no extra memory."""
    dec = []
    for layer in model.model.layers:
        a, m = layer.self_attn, layer.mlp
        dec += [_fused([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]), a.o_proj.weight.detach(),
                _fused([m.gate_proj.weight, m.up_proj.weight]), m.down_proj.weight.detach()]
    return {"decoder": dec, "head": [model.get_output_embeddings().weight.detach()]}


@torch.no_grad()
def lean_weights(model: Any, plans: dict[str, PackPlan] | None = None,
                 shared: dict[Any, Any] | None = None, int4: bool = False) -> LeanWeights:
    """Lay out ``model`` (supported: see :func:`unsupported_reason`) for the lean forward, packing each linear
    as ``plans["decoder"]`` / ``plans["head"]`` say. ``shared``: linears built before (keyed by where their
    weight lives), reused instead of packed again: the REFRAG-adapted copy shares every weight it does not
    adapt (its head, usually) with the stock model. ``int4``: matrices whose values lie on a 4-bit grid run as
    :class:`~refrag_rasd_core.lean.int4.Int4Linear` (bf16 activations; see that module), and, where the C++
    kernels of :mod:`~refrag_rasd_core.lean.invariant` load, the LM head and attention of forwards of up to
    ``DECODE_ROWS`` rows run batch-invariant."""
    reason = unsupported_reason(model)
    if reason is not None:
        raise ValueError(f"the lean forward does not support this model: {reason}")
    plans = plans or {}
    dec_plan, head_plan = plans.get("decoder", NO_PACKING), plans.get("head", NO_PACKING)
    shared = shared if shared is not None else {}
    cfg = model.config
    inner = model.model
    heads = int(cfg.num_attention_heads)
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)

    def linear(weight: torch.Tensor, bias: torch.Tensor | None, plan: PackPlan) -> Any:
        key = (weight.data_ptr(), tuple(weight.shape), weight.dtype, id(plan), int4)
        if bias is None and key in shared:
            return shared[key]
        out = (Int4Linear.from_weight(weight, bias) if int4 else None) or PackedLinear(weight, bias, plan)
        if bias is None:
            shared[key] = out
        return out

    layers = []
    for layer in inner.layers:
        a, m = layer.self_attn, layer.mlp
        qkv = _fused([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
        gate_up = _fused([m.gate_proj.weight, m.up_proj.weight])
        layers.append(LeanLayer(
            attn_norm=layer.input_layernorm.weight.detach(),
            qkv=linear(qkv, _fused_bias([a.q_proj, a.k_proj, a.v_proj]), dec_plan),
            o=linear(a.o_proj.weight.detach(), _bias(a.o_proj), dec_plan),
            mlp_norm=layer.post_attention_layernorm.weight.detach(),
            gate_up=linear(gate_up, _fused_bias([m.gate_proj, m.up_proj]), dec_plan),
            down=linear(m.down_proj.weight.detach(), _bias(m.down_proj), dec_plan),
        ))
    head = model.get_output_embeddings()
    first = inner.layers[0]
    prefill = _int4_prefill(layers, dec_plan) if int4 else None
    ops = kernels() if int4 and head.weight.device.type == "cpu" else None
    problem = None if ops is not None or not int4 else f"kernels: {kernels_problem()}"
    if ops is not None and not _int4_rows_invariant(layers):
        ops, problem = None, "the int4 kernel's rows depend on the row count on this machine"
    row_head = InvariantHead(head.weight.detach(), _bias(head), ops) if ops is not None else None
    q4_ops = ops if ops is not None and ops.q4_vnni() else None  # int8 activations on VNNI (AVX2: torch's is faster)
    for lin in (x for layer in layers for x in (layer.qkv, layer.o, layer.gate_up, layer.down)):
        if isinstance(lin, Int4Linear):
            lin.settle(q4_ops)
    if int4:
        trim()  # the int4 grids just released (~300 MB for the default model) go back to the system
    fused = _fused_layers(layers) if ops is not None else None
    return LeanWeights(
        embed=model.get_input_embeddings().weight.detach(), layers=layers, norm=inner.norm.weight.detach(),
        head=linear(head.weight.detach(), _bias(head), head_plan), rotary=inner.rotary_emb,
        heads=heads, kv_heads=kv_heads, head_dim=head_dim, intermediate=int(first.mlp.gate_proj.weight.shape[0]),
        eps=float(first.input_layernorm.variance_epsilon),
        scaling=float(getattr(first.self_attn, "scaling", head_dim ** -0.5)), int4_prefill=prefill,
        invariant=ops, row_head=row_head, invariant_problem=problem, fused=fused)


def _fused_layers(layers: list[LeanLayer]) -> list[torch.Tensor] | None:
    """The 14 tensors per layer that ``decoder_layers`` takes, when every linear runs the Q4_1 x int8 kernel
    without a bias (else ``None``: the forward runs its Python loop)."""
    out: list[torch.Tensor] = []
    for layer in layers:
        lins = (layer.qkv, layer.o, layer.gate_up, layer.down)
        if not all(isinstance(lin, Int4Linear) and lin.q4 is not None and lin.bias is None for lin in lins):
            return None
        packed = [lin.q4[1][:3] for lin in lins]  # type: ignore[union-attr]
        out += [layer.attn_norm.float().contiguous(), *packed[0], *packed[1], layer.mlp_norm.float().contiguous(),
                *packed[2], *packed[3]]
    return out


def _int4_rows_invariant(layers: list[LeanLayer]) -> bool:
    """Whether the int4 kernel gives a row the same bits alone and among up to DECODE_ROWS rows (checked once on
    the first int4 linear: torch's kernel computes rows one by one here; a build that blocks rows differently,
    e.g. an AMX path for many rows, would not, and then no forward is claimed batch-invariant)."""
    lin = next((x for layer in layers for x in (layer.qkv, layer.gate_up) if isinstance(x, Int4Linear)), None)
    if lin is None:
        return True
    x = torch.randn(DECODE_ROWS, lin.weight.shape[1], generator=torch.Generator().manual_seed(0))
    alone = torch.cat([lin.int4(x[i:i + 1]) for i in (0, 1, 2, DECODE_ROWS - 1)])
    return all(torch.equal(lin.int4(x[:m])[[0, 1, 2, m - 1] if m == DECODE_ROWS else [0, 1, 2]],
                           alone[:4 if m == DECODE_ROWS else 3]) for m in (3, 5, 17, DECODE_ROWS))


_PREFILL: dict[tuple[Any, ...], dict[str, Any]] = {}  # measure_prefill's results, per shapes and threads
_PREFILL_SAMPLE_LAYERS = 2
_PROMPT_BF16 = os.environ.get("REFRAG_RASD_PROMPT_BF16", "0") == "1"
"""Opt-in (``REFRAG_RASD_PROMPT_BF16=1``): read prompts in bf16 where measured >= 1.25x faster than fp32. Off by
default: on 70 dev questions it kept 19 of the fp32 path's 20 right answers (the bar is 0.97; fp32 prompts: 20)."""


def _int4_prefill(layers: list[LeanLayer], plan: PackPlan) -> dict[str, Any] | None:
    """Measure (once per process for these shapes) whether long forwards run faster on the fp32 weights than
    on the int4 kernel; if so, give every :class:`Int4Linear` of ``layers`` its fp32 linear for them."""
    lins = [lin for layer in layers for lin in (layer.qkv, layer.o, layer.gate_up, layer.down)
            if isinstance(lin, Int4Linear)]
    if not lins:
        return None
    long_plan = PackPlan(long=plan.long)  # only forwards past the buckets reach it

    def fp32(lin: Int4Linear) -> PackedLinear:
        return PackedLinear(lin.weight, lin.bias, long_plan)

    key = (tuple(tuple(lin.weight.shape) for lin in lins), plan.long, torch.get_num_threads())
    if key not in _PREFILL:
        sample = [(lin, fp32(lin)) for lin in lins[:4 * _PREFILL_SAMPLE_LAYERS]]
        _PREFILL[key] = measure_prefill(sample)
    result = _PREFILL[key]
    if result["long"] == "fp32":
        for lin in lins:
            lin.long = lin.long or fp32(lin)
    if result.get("prompt") == "bf16" and _PROMPT_BF16:
        for lin in lins:
            if lin.bf16 is None:
                lin.bf16 = lin.weight.detach().to(torch.bfloat16)
    return result
