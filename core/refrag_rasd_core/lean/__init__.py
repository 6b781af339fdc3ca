"""The lean forward for LLaMA-family targets (gpt-fast style): :class:`LeanRunner` over a
:class:`LeanCache`, with fused weights, run (on CPU) by whichever matmul backend measured fastest at load.

Modules: :mod:`.cache` (the preallocated KV cache), :mod:`.linear` (prepacked linears and the plan that
picks them), :mod:`.weights` (which models are supported; the fused layout), :mod:`.runner` (the forward).
"""

from .cache import LeanCache
from .linear import PackPlan
from .runner import LeanRunner, pack_plans
from .weights import SUPPORTED, unsupported_reason

__all__ = ["SUPPORTED", "LeanCache", "LeanRunner", "PackPlan", "pack_plans", "unsupported_reason"]
