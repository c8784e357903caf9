"""Greedy tree verification (docs/design.md §3.1).

Node i (i > 0) *matches* when its token is the target's argmax after its parent's path; it is
*accepted* when it and all its ancestors match. The deepest accepted node ends the path and
the argmax of its own row is the bonus token. Because every accepted token is exactly what plain
greedy decoding would have emitted at that position, the output cannot change.
"""

from __future__ import annotations

from jaxtyping import Int
from torch import Tensor

from jetspec.core.interfaces import Verifier, register_verifier
from jetspec.core.types import Acceptance, VerifyInput


def greedy_accept(tokens: Int[Tensor, " N"], parents: Int[Tensor, " N"], argmax: Int[Tensor, " N"]) -> list[int]:
    """Deepest path of matching nodes; returns node ids, root excluded (the one greedy path matcher).

    Vectorised over nodes: ``ok[i]`` = node i matches; ``accepted[i]`` = every node on its path
    matches, i.e. the number of matching ancestors-or-self equals the depth.
    """
    n = tokens.shape[0]
    if n == 1:
        return []
    par = parents.clamp_min(0)
    ok = tokens == argmax[par]
    ok[0] = True
    # Propagate along parents: since parents precede children one ordered pass suffices; done
    # in Python on small trees (N <= a few hundred) it is cheaper than building N x N masks.
    acc = ok.tolist()
    par_l = parents.tolist()
    best, best_depth, depth = 0, 0, [0] * n
    for i in range(1, n):
        depth[i] = depth[par_l[i]] + 1
        acc[i] = acc[i] and acc[par_l[i]]
        if acc[i] and depth[i] > best_depth:
            best, best_depth = i, depth[i]
    path = []
    while best > 0:
        path.append(best)
        best = par_l[best]
    return path[::-1]


@register_verifier("greedy")
class GreedyVerifier(Verifier):
    """Accept the deepest path that plain greedy decoding would have produced."""

    greedy_only = True

    def verify(self, inp: VerifyInput) -> Acceptance:
        if not inp.sampling.greedy:
            raise ValueError(
                f"GreedyVerifier is only lossless at temperature 0 (got temperature="
                f"{inp.sampling.temperature}); use SamplingVerifier for sampling")
        tree = inp.tree
        argmax = inp.logits.argmax(-1)  # [N]
        path = greedy_accept(tree.tokens, tree.parents, argmax)
        last = path[-1] if path else 0
        return Acceptance(accepted_nodes=path, bonus_token=int(argmax[last]),
                          draft_tokens=tree.tokens[path].tolist())
