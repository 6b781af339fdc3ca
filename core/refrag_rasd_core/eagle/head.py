"""EAGLE-style draft head: one LLaMA decoder layer over the target's features, with its own KV cache.

Design (EAGLE / EAGLE-2, with EAGLE-3's reduced draft vocabulary):

- The feature ``h_i`` is the target's last hidden state AFTER the final norm (what its LM head reads).
- The head's input at position i is ``fc(cat(embed(t_{i+1}), h_i))`` (embedding first, as EAGLE); one
  decoder layer (no input norm on the first layer, as EAGLE) outputs a prediction of ``h_{i+1}``; the
  target's LM head, restricted to ``draft_vocab_size`` frequent tokens (``vocab_ids``, target ids),
  turns it into the distribution of ``t_{i+2}``.
- The target's embedding and LM head are borrowed (frozen, never saved); the checkpoint holds ``fc``,
  ``layers.0.*`` and ``vocab_ids`` only.
- Drafting: :meth:`sync` feeds the committed tokens with the target's true features into the head's KV
  cache; :meth:`expand_root` / :meth:`expand` score tree nodes, deeper nodes reading their parent's
  PREDICTED feature and attending to the cache plus their own ancestors (float 0 / -inf mask). A tree of
  depth d costs d small forwards. Speculative entries are dropped at the next :meth:`sync`.

It implements the ``Drafter`` protocol of ``refrag_rasd_core.rasd.draft_tree`` structurally. Its shapes
(:class:`~refrag_rasd_core.eagle.layers.DraftHeadConfig`) and decoder layer are :mod:`.layers`.

Example:
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
    ...                   num_attention_heads=4, num_key_value_heads=2)
    >>> target = LlamaForCausalLM(cfg).eval()
    >>> head = DraftHead.for_target(target, draft_vocab_size=32)
    >>> ids = torch.tensor([1, 5, 7, 9])
    >>> hidden = torch.randn(3, 32)              # target features of positions 0..2 (not the root)
    >>> head.sync(ids, hidden)
    >>> lp, tok = head.expand_root(top_k=4)      # root's children, target ids
    >>> lp2, tok2 = head.expand(tok[:2], torch.tensor([-1, -1]), top_k=3)
    >>> lp2.shape
    torch.Size([2, 3])
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError
from .layers import DecoderLayer, DraftHeadConfig, apply_rope

NEG_INF = float("-inf")



class DraftHead(nn.Module):
    """EAGLE draft head (see module docstring). Build with :meth:`for_target` or a loader."""

    uses_target_hidden: bool = True

    def __init__(self, config: DraftHeadConfig, vocab_ids: torch.Tensor | None = None):
        super().__init__()
        self.config = c = config
        H = c.hidden_size
        self.fc = nn.Linear(2 * H, H, bias=c.fc_bias)
        self.layers = nn.ModuleList([DecoderLayer(c)])
        if vocab_ids is None:
            vocab_ids = torch.arange(c.draft_vocab_size)
        if vocab_ids.numel() != c.draft_vocab_size:
            raise InvalidInputError("vocab_ids must have draft_vocab_size entries")
        self.register_buffer("vocab_ids", vocab_ids.long().clone())
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        rot = LlamaRotaryEmbedding(c.llama_config())
        self._inv_freq = rot.inv_freq.float()
        self._rope_scale = float(rot.attention_scaling)
        self._cos = torch.empty(0)
        self._sin = torch.empty(0)
        self._embed: torch.Tensor | None = None
        self._lm_w: torch.Tensor | None = None
        self._lm_full: torch.Tensor | None = None
        self._lm_q8: nn.Module | None = None  # the draft LM head rows as Q8_0 (use_int8), or None
        self._init_weights()
        self.reset()

    # ----------------------------------------------------------------- setup
    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # Start near "copy the feature": fc passes h_i through, the layer adds a small residual.
        H = self.config.hidden_size
        with torch.no_grad():
            self.fc.weight[:, H:] += torch.eye(H)
            self.layers[0].self_attn.o_proj.weight.mul_(0.1)
            self.layers[0].mlp.down_proj.weight.mul_(0.1)

    @classmethod
    def for_target(cls, target, draft_vocab_size: int | None = None, vocab_ids: torch.Tensor | None = None,
                   **overrides) -> DraftHead:
        """A fresh (untrained) head shaped for ``target`` (a HF causal LM), attached to it."""
        if vocab_ids is not None:
            draft_vocab_size = int(vocab_ids.numel())
        cfg = DraftHeadConfig.from_target_config(target.config, draft_vocab_size, **overrides)
        if vocab_ids is None and cfg.draft_vocab_size != cfg.target_vocab_size:
            vocab_ids = torch.arange(cfg.draft_vocab_size)
        head = cls(cfg, vocab_ids)
        head.attach_target(target)
        return head

    def attach_target(self, target) -> DraftHead:
        """Borrow ``target``'s input embedding and LM head (frozen, not copied into the checkpoint)."""
        emb = target.get_input_embeddings().weight
        lm = target.get_output_embeddings()
        lm_w = lm.weight if lm is not None else emb
        if emb.shape[1] != self.config.hidden_size or lm_w.shape[0] < int(self.vocab_ids.max()) + 1:
            raise InvalidInputError(
                f"draft head (hidden {self.config.hidden_size}, vocab {self.config.target_vocab_size}) does not "
                f"fit target (hidden {emb.shape[1]}, vocab {lm_w.shape[0]})"
            )
        dev = next(self.parameters()).device
        dt = next(self.parameters()).dtype
        self._embed = emb.detach().to(dev, dt)
        self._lm_full = lm_w.detach()  # the full LM head (a reference, for evaluation)
        self._lm_w = lm_w.detach()[self.vocab_ids.to(lm_w.device)].to(dev, dt).contiguous()
        return self

    def with_vocab_size(self, size: int) -> DraftHead:
        """A copy of this head that drafts over ``size`` target ids: its own ``vocab_ids`` first, then the lowest
        target ids it lacks (BPE ids roughly follow merge order, so low ids are frequent ones). Nothing is
        retrained: the head predicts a feature and borrows the target's LM head, so more ids only add LM-head
        rows (a larger read per ``expand``) and raise the share of target tokens the draft can propose.

        Example:
            >>> import torch
            >>> from transformers import LlamaConfig, LlamaForCausalLM
            >>> target = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
            ...     num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2))
            >>> head = DraftHead.for_target(target, draft_vocab_size=16)
            >>> big = head.with_vocab_size(48)
            >>> big.config.draft_vocab_size, bool(torch.equal(big.vocab_ids[:16], head.vocab_ids))
            (48, True)
        """
        if self._embed is None:
            raise InvalidInputError("draft head has no target attached: call attach_target(model)")
        n_target = self._lm_full.shape[0]
        if not int(self.vocab_ids.numel()) <= size <= n_target:
            raise InvalidInputError(f"vocabulary size {size} must be between the head's {self.vocab_ids.numel()} "
                                    f"and the target's {n_target}")
        have = torch.zeros(n_target, dtype=torch.bool)
        have[self.vocab_ids.cpu()] = True
        extra = torch.nonzero(~have).flatten()[: size - int(self.vocab_ids.numel())]
        ids = torch.cat((self.vocab_ids.cpu(), extra))
        cfg = replace(self.config, draft_vocab_size=size)
        twin = DraftHead(cfg, ids)
        twin.load_state_dict({k: v for k, v in self.state_dict().items() if k != "vocab_ids"}, strict=False)
        ref = self.fc.weight
        twin.to(ref.device, ref.dtype)
        twin._embed = self._embed
        twin._lm_full = self._lm_full
        twin._lm_w = self._lm_full[ids.to(self._lm_full.device)].to(ref.device, ref.dtype).contiguous()
        return twin

    def _apply(self, fn, *args, **kwargs):  # keep borrowed tensors on the head's device / dtype
        out = super()._apply(fn, *args, **kwargs)
        if self._embed is not None:
            self._embed = fn(self._embed)
            self._lm_w = fn(self._lm_w)
        self.__dict__["_lm_q8"] = None  # packed for the old device / values
        self._cos = torch.empty(0)
        self.reset()
        return out

    def _rope_tables(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cos.shape[0] < n:
            size = max(n, 2 * self._cos.shape[0], 1024)
            dev = self.fc.weight.device
            freqs = torch.arange(size, device=dev, dtype=torch.float32)[:, None] * self._inv_freq.to(dev)[None]
            emb = torch.cat((freqs, freqs), dim=-1)
            dt = self.fc.weight.dtype
            self._cos = (emb.cos() * self._rope_scale).to(dt)
            self._sin = (emb.sin() * self._rope_scale).to(dt)
        return self._cos, self._sin

    # ----------------------------------------------------------------- core math
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        if self._embed is None:
            raise InvalidInputError("draft head has no target attached: call attach_target(model)")
        return F.embedding(ids, self._embed)

    def draft_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the draft vocabulary (column j is target id ``vocab_ids[j]``)."""
        if self._lm_q8 is not None and hidden.dtype == torch.float32:
            return self._lm_q8(hidden)
        return hidden @ self._lm_w.T

    @property
    def int8(self) -> bool:
        """Whether :meth:`use_int8` runs the head's matmuls as Q8_0 x int8."""
        return self._lm_q8 is not None

    def use_int8(self, ops: object) -> int:
        """Run the head's linears and its LM head rows as Q8_0 weights times int8 activations (the batch-invariant
        kernels' ``rows_linear_q8x``: a quarter of the bytes; for a target whose own steps run int4, where the
        fp32 head would cost as much as the target's step). The proposals change slightly; what is accepted
        never does (the target verifies). Returns how many linears now run int8 (0 when they already did)."""
        from ..lean.q4 import Q8Linear, int8_linears

        if self.int8:
            return 0
        n = 0
        if isinstance(self.fc, nn.Linear):
            self.fc = Q8Linear(self.fc, ops)  # its weight / bias stay registered as fc.weight / fc.bias
            n += 1
        n += int8_linears(self.layers, ops)
        lm = nn.Linear(self._lm_w.shape[1], self._lm_w.shape[0], bias=False)
        lm.weight = nn.Parameter(self._lm_w, requires_grad=False)
        self.__dict__["_lm_q8"] = Q8Linear(lm, ops)  # not a submodule: never in the state dict
        return n + 1

    def fuse(self, token_ids: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """The head's input: ``fc(cat(embed(token), feature))``."""
        return self.fc(torch.cat((self.embed(token_ids), hidden.to(self.fc.weight.dtype)), dim=-1))

    def _qkv(self, x: torch.Tensor, pos: torch.Tensor):
        """x [..., T, H] -> q [..., nh, T, hd], k, v [..., nkv, T, hd] with RoPE at ``pos`` [T]."""
        layer = self.layers[0]
        a = layer.self_attn
        h = layer.input_layernorm(x) if self.config.input_norm else x
        lead = x.shape[:-2]
        T = x.shape[-2]
        q = a.q_proj(h).view(*lead, T, a.nh, a.hd).transpose(-2, -3)
        k = a.k_proj(h).view(*lead, T, a.nkv, a.hd).transpose(-2, -3)
        v = a.v_proj(h).view(*lead, T, a.nkv, a.hd).transpose(-2, -3)
        cos, sin = self._rope_tables(int(pos.max()) + 1)
        cos, sin = cos[pos], sin[pos]
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def _finish(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        """Attention of q over (k, v) with an additive float mask, then o_proj, residual and MLP."""
        layer = self.layers[0]
        a = layer.self_attn
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=a.nh != a.nkv)
        o = o.transpose(-2, -3).reshape(*x.shape[:-1], a.nh * a.hd)  # q may carry an extra batch dim
        x = x + a.o_proj(o)
        return x + layer.mlp(layer.post_attention_layernorm(x))

    # ----------------------------------------------------------------- Drafter protocol
    def reset(self) -> None:
        """Forget the request: empty KV cache, no committed tokens."""
        c = self.config
        dev = self.fc.weight.device
        dt = self.fc.weight.dtype
        if not hasattr(self, "_k") or self._k.device != dev or self._k.dtype != dt:
            cap = 1024
            self._k = torch.zeros(c.num_key_value_heads, cap, c.head_dim, device=dev, dtype=dt)
            self._v = torch.zeros_like(self._k)
            smax = 256
            self._spec_h = torch.zeros(smax, c.hidden_size, device=dev, dtype=dt)
            self._anc = torch.zeros(smax, smax, dtype=torch.bool, device=dev)
            self._depth = torch.zeros(smax, dtype=torch.long, device=dev)
        self._n_commit = 0  # committed (true-feature) entries in the cache = pairs 0 .. n_commit-1
        self._n_spec = 0  # speculative entries after them, dropped at the next sync
        self._n_tokens = 0
        self._root_h: torch.Tensor | None = None

    def _ensure_cache(self, n: int) -> None:
        cap = self._k.shape[1]
        if n > cap:
            new = max(n, 2 * cap)
            k = self._k.new_zeros(self._k.shape[0], new, self._k.shape[2])
            v = torch.zeros_like(k)
            k[:, :cap] = self._k
            v[:, :cap] = self._v
            self._k, self._v = k, v

    def _ensure_spec(self, n: int) -> None:
        smax = self._spec_h.shape[0]
        if n > smax:
            new = max(n, 2 * smax)
            h = self._spec_h.new_zeros(new, self._spec_h.shape[1])
            h[:smax] = self._spec_h
            anc = self._anc.new_zeros(new, new)
            anc[:smax, :smax] = self._anc
            d = self._depth.new_zeros(new)
            d[:smax] = self._depth
            self._spec_h, self._anc, self._depth = h, anc, d

    @torch.inference_mode()
    def sync(self, token_ids: torch.Tensor, target_hidden: torch.Tensor | None) -> None:
        """Commit tokens with the target's true features; drop the previous step's speculative state.

        ``token_ids``: all committed tokens (the last is the tree root). ``target_hidden``: features of
        positions ``n_seen .. len(token_ids) - 2`` (every committed position not seen yet, except the root).
        """
        token_ids = token_ids.reshape(-1)
        if target_hidden is not None and target_hidden.dim() == 3:  # accept [1, n, H]
            target_hidden = target_hidden[0]
        n = int(token_ids.shape[0])
        self._n_spec = 0
        new = 0 if target_hidden is None else int(target_hidden.shape[0])
        if self._n_commit + new != max(n - 1, 0):
            raise InvalidInputError(
                f"sync: draft head has seen {self._n_commit} features, got {new} more, but "
                f"{n} committed tokens need {n - 1} (all positions but the root)"
            )
        self._n_tokens = n
        if new == 0:
            if n > 1 and self._root_h is None:
                raise InvalidInputError("sync: no root state; call reset() and sync from the start")
            return
        dev = self.fc.weight.device
        start = self._n_commit
        toks = token_ids[start + 1 : n].to(dev)
        x = self.fuse(toks, target_hidden.to(dev))
        pos = torch.arange(start, n - 1, device=dev)
        self._ensure_cache(n - 1)
        q, k, v = self._qkv(x, pos)
        self._k[:, start : n - 1] = k
        self._v[:, start : n - 1] = v
        L = n - 1
        mask = torch.full((new, L), NEG_INF, device=dev, dtype=x.dtype).triu_(start + 1)
        out = self._finish(x, q[None], self._k[None, :, :L], self._v[None, :, :L], mask)
        self._root_h = out[-1]
        self._n_commit = L

    @torch.inference_mode()
    def expand_root(self, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The root's children: ``(log_probs [top_k], target ids [top_k])``, sorted descending."""
        if self._root_h is None:
            raise InvalidInputError("expand_root: call sync() with at least two committed tokens first")
        lp = torch.log_softmax(self.draft_logits(self._root_h).float(), dim=-1)
        vals, idx = lp.topk(min(top_k, lp.shape[-1]))
        return vals, self.vocab_ids[idx]

    @torch.inference_mode()
    def expand(self, tokens: torch.Tensor, parents: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Score tree nodes in one forward; ``parents[i]`` indexes nodes of earlier calls this step (-1 = root)."""
        if self._root_h is None:
            raise InvalidInputError("expand: call sync() first")
        dev = self.fc.weight.device
        tokens = tokens.to(dev).long()
        parents = parents.to(dev).long()
        m = int(tokens.shape[0])
        s0 = self._n_spec
        if m == 0:
            return torch.empty(0, top_k, device=dev), torch.empty(0, top_k, dtype=torch.long, device=dev)
        if int(parents.max()) >= s0 or int(parents.min()) < -1:
            raise InvalidInputError(f"expand: parents must be -1 or < {s0} (nodes of earlier calls)")
        self._ensure_spec(s0 + m)
        is_root = parents < 0
        pidx = parents.clamp(min=0)
        par_h = torch.where(is_root[:, None], self._root_h[None], self._spec_h[pidx])
        depth = torch.where(is_root, 0, self._depth[pidx]) + 1
        new_idx = torch.arange(s0, s0 + m, device=dev)
        anc = self._anc[pidx, : s0 + m] & ~is_root[:, None]
        anc[torch.arange(m, device=dev), new_idx] = True
        self._anc[s0 : s0 + m, : s0 + m] = anc
        self._depth[s0 : s0 + m] = depth
        x = self.fuse(tokens, par_h)
        pos = self._n_commit - 1 + depth
        start = self._n_commit + s0
        self._ensure_cache(start + m)
        q, k, v = self._qkv(x, pos)
        self._k[:, start : start + m] = k
        self._v[:, start : start + m] = v
        L = start + m
        mask = torch.zeros(m, L, device=dev, dtype=x.dtype)
        mask[:, self._n_commit :].masked_fill_(~anc, NEG_INF)
        out = self._finish(x, q[None], self._k[None, :, :L], self._v[None, :, :L], mask)
        self._spec_h[s0 : s0 + m] = out
        self._n_spec = s0 + m
        lp = torch.log_softmax(self.draft_logits(out).float(), dim=-1)
        vals, idx = lp.topk(min(top_k, lp.shape[-1]), dim=-1)
        return vals, self.vocab_ids[idx]

    # ----------------------------------------------------------------- training
    def forward_train(self, tokens: torch.Tensor, hidden: torch.Tensor, unroll: int = 1,
                      noise: float = 0.0) -> list[torch.Tensor]:
        """Teacher-forced predictions for training, with "training-time test" unrolling.

        ``tokens`` [B, T], ``hidden`` [B, T, H] (true features). Returns one tensor [B, T-1, H] per unroll
        step s = 1..unroll: entry i predicts ``h_{i+1}``; step 1 reads the true ``h_i`` (plus uniform
        noise of half-width ``noise``), step s > 1 reads step s-1's prediction of ``h_i`` and attends as
        a depth-s tree node would (true keys up to i-s+1, then its own chain); entries i < s-1 of step s
        are meaningless (mask them out of the loss).
        """
        B, T, H = hidden.shape
        Tp = T - 1
        dev = hidden.device
        emb = self.embed(tokens[:, 1:])
        pos = torch.arange(Tp, device=dev)
        h_in = hidden[:, :-1].to(self.fc.weight.dtype)
        if noise > 0:
            h_in = h_in + (torch.rand_like(h_in) - 0.5) * (2 * noise)
        ks: list[torch.Tensor] = []
        vs: list[torch.Tensor] = []
        outs: list[torch.Tensor] = []
        for s in range(1, unroll + 1):
            if s > 1:
                prev = outs[-1]
                h_in = torch.cat((prev[:, :1] * 0, prev[:, :-1]), dim=1)
            x = self.fc(torch.cat((emb, h_in), dim=-1))
            q, k, v = self._qkv(x, pos)
            ks.append(k)
            vs.append(v)
            mask = _unroll_mask(Tp, s, dev, x.dtype)
            out = self._finish(x, q, torch.cat(ks, dim=-2), torch.cat(vs, dim=-2), mask)
            outs.append(out)
        return outs


_MASKS: dict[tuple, torch.Tensor] = {}


def _unroll_mask(T: int, s: int, dev, dtype) -> torch.Tensor:
    """Additive mask [T, s*T]: query i of step s sees step-1 keys j <= i-s+1 and step-r key i-s+r."""
    key = (T, s, str(dev), dtype)
    if key not in _MASKS:
        i = torch.arange(T, device=dev)[:, None]
        j = torch.arange(T, device=dev)[None]
        blocks = [j <= i - s + 1]
        for r in range(2, s + 1):
            blocks.append(j == i - s + r)
        allow = torch.cat(blocks, dim=1)
        # rows with nothing allowed (i < s-1 and no step-1 key) would be all -inf: let them see key 0
        allow[:, 0] |= ~allow.any(dim=1)
        _MASKS.clear() if len(_MASKS) > 16 else None
        _MASKS[key] = torch.zeros(allow.shape, device=dev, dtype=dtype).masked_fill_(~allow, NEG_INF)
    return _MASKS[key]


def param_count(head: DraftHead) -> int:
    """Trainable parameters (what the checkpoint stores, besides ``vocab_ids``)."""
    return sum(p.numel() for p in head.parameters())


__all__ = ["DraftHead", "param_count"]
