"""Lossless verification when sampling (docs/design.md §3.3-§3.5).

Two exact rules, chosen by the tree:

* **Deterministic drafts** (a tree of chosen tokens, no q): walk from the root; at node i draw one
  token y ~ p_i; if a child of i carries y, move there, else stop and emit y. Every emitted token
  is then an exact sample of the target given the emitted prefix, because the draw at node i *is*
  the target's sample for that position; the tree only decides whether we get to reuse the
  target forward we already paid for. One draw per node on the walk, never one per path row.

* **Sampled drafts** (``tree.q`` set: node i's children were drawn i.i.d. from q_i): recursive
  rejection sampling over siblings (SpecInfer). Try children in order; accept child c with
  probability min(1, p(c) / q(c)); after a rejection replace p by normalize(max(p - q, 0)). If
  every child is rejected, emit a sample of the final residual. For a chain this is exactly the
  classic min(1, p/q) rule, with the bonus token drawn from p after full acceptance.

Randomness goes through ``jetspec.core.sampling.Rng`` so tests can enumerate it exactly.
"""

from __future__ import annotations

from jetspec.core.interfaces import Verifier, register_verifier
from jetspec.core.sampling import Rng, TorchRng, check_child_laws, process_logits, residual
from jetspec.core.types import Acceptance, VerifyInput


def sample_and_match(tree, p, rng: Rng) -> tuple[list[int], int]:
    """Deterministic tree. p: [N, V] processed target law per node. Returns (path, bonus)."""
    kids = tree.children()
    tokens = tree.tokens.tolist()
    node, path = 0, []
    while True:
        y = rng.categorical(p[node])
        nxt = next((c for c in kids[node] if tokens[c] == y), None)
        if nxt is None:
            return path, y
        path.append(nxt)
        node = nxt


def recursive_rejection(tree, p, rng: Rng) -> tuple[list[int], int]:
    """Sampled tree with q. p: [N, V]; tree.q: [N, V]. Returns (path, bonus)."""
    kids = tree.children()
    tokens = tree.tokens.tolist()
    q = tree.q.double()
    node, path = 0, []
    while True:
        law = p[node]
        moved = False
        for c in kids[node]:
            tok = tokens[c]
            # q_tok > 0: verify() refused any q without mass at a drawn token (check_child_laws).
            accept_prob = min(1.0, float(law[tok]) / float(q[node, tok]))
            if rng.bernoulli(accept_prob):
                path.append(c)
                node, moved = c, True
                break
            law = residual(law, q[node])
        if not moved:
            return path, rng.categorical(law)


@register_verifier("sampling")
class SamplingVerifier(Verifier):
    """Lossless for any temperature / top-k / top-p; at temperature 0 it equals greedy.

    A tree with q is checked first: a q that is not a law its drafts could have been drawn from
    raises a ValueError (``check_child_laws``) instead of biasing the output.
    """

    def verify(self, inp: VerifyInput) -> Acceptance:
        p = process_logits(inp.logits, inp.sampling)  # [N, V] float64
        rng = inp.rng if inp.rng is not None else TorchRng()
        tree = inp.tree
        if tree.q is not None:
            if tree.q.shape != p.shape:
                raise ValueError(f"tree.q must be [N, V] = {tuple(p.shape)}, got {tuple(tree.q.shape)}")
            check_child_laws(tree.q, tree.parents[1:], tree.tokens[1:], "tree.q")
            path, bonus = recursive_rejection(tree, p, rng)
        else:
            path, bonus = sample_and_match(tree, p, rng)
        return Acceptance(accepted_nodes=path, bonus_token=int(bonus),
                          draft_tokens=tree.tokens[path].tolist())
