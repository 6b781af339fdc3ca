"""Tree verification: pick the accepted path from the target's logits over every tree node.

Both rules walk from the root (node 0). At each node the target chooses the next token exactly as plain
decoding would; if a child carries it, the walk moves there, else it stops. The tokens chosen along the
way are emitted: the accepted candidates plus the target's own "bonus" token at the last node.

* Greedy: the choice is the argmax, so the output is the target's greedy output.
* Sampling: multi-candidate rejection sampling with residuals for deterministic candidates (SpecInfer /
  EAGLE): with the target's distribution ``p`` at the node, try the children in score order; child ``x`` is
  accepted with probability ``p(x)``; on rejection ``p(x)`` is zeroed and ``p`` renormalised; if every child is
  rejected the token is drawn from what is left of ``p``. The emitted token is therefore distributed exactly
  as ``p``: speculation changes the speed, never the distribution.

Example:
    >>> import torch
    >>> from refrag_rasd_core.rasd.token_tree import TokenTree
    >>> tree = TokenTree.from_sequences(0, [(1, 2)])       # root 0 -> 1 -> 2
    >>> logits = torch.zeros(3, 4); logits[0, 1] = logits[1, 3] = logits[2, 0] = 9
    >>> accept_greedy(tree, logits)                          # 1 accepted, then the target says 3
    ([0, 1], [1, 3])
"""

from __future__ import annotations

import torch

from ..sampling import SamplingParams, logits_to_probs

__all__ = ["accept_greedy", "accept_sampled"]


def accept_greedy(tree, logits: torch.Tensor) -> tuple[list[int], list[int]]:  # noqa: ANN001 - TokenTree
    """Longest path whose tokens equal the target's argmax. Returns ``(path nodes from the root, emitted
    tokens)``; ``len(emitted) == len(path)`` (the last emitted token is the bonus)."""
    best = logits.argmax(dim=-1).tolist()
    node, path, out = 0, [0], []
    while True:
        tok = best[node]
        out.append(tok)
        nxt = tree.child(node, tok)
        if nxt < 0:
            return path, out
        path.append(nxt)
        node = nxt


def accept_sampled(tree, logits: torch.Tensor, params: SamplingParams,  # noqa: ANN001 - TokenTree
                   generator: torch.Generator | None) -> tuple[list[int], list[int]]:
    """Lossless multi-candidate rejection sampling over the tree (see the module docstring)."""
    node, path, out = 0, [0], []
    device = logits.device
    while True:
        p = logits_to_probs(logits[node], params)
        kids = sorted(tree.children(node), key=lambda i: -tree.scores[i])
        chosen = -1
        for kid in kids:
            tok = tree.tokens[kid]
            px = float(p[tok])
            if px <= 0.0:
                continue
            if float(torch.rand((), generator=generator, device=device)) < px:
                chosen = kid
                break
            p[tok] = 0.0
            p = p / p.sum()
        if chosen < 0:
            tok = int(torch.multinomial(p, 1, generator=generator).item())
            out.append(tok)
            return path, out
        out.append(tree.tokens[chosen])
        path.append(chosen)
        node = chosen
