"""Tree scoring rules beside cumulative log-prob: entropy-guided and a hybrid (docs/design.md §2.8).

The paper compares rules for spending one node budget. ``bestfirst`` (``trees/builders.py``)
ranks every candidate by its cumulative draft log-prob, the probability that the whole path is
right if q is calibrated. The two rules here spend the budget *where the draft is uncertain*
instead, measured by the entropy of the draft's candidate distribution at a node:

* ``entropy``: a node may take round(exp(H)) children (H the entropy in nats, so exp(H) is the
  draft's effective number of choices there), capped at ``width``; the tree fills level after
  level (breadth-first, the better-scored candidates first within a level) until the budget is
  spent. Confident depths become chains and uncertain ones fan out, and path probability plays
  no part in how deep the tree goes.
* ``hybrid``: the same entropy fan-out, grown best-first on cumulative log-prob: uncertainty
  decides how many siblings a node may have, path probability decides which nodes get them.

H is computed from the candidates the drafter offers (its top few tokens), with the mass they
leave out as one more outcome, so it is a lower bound on the entropy of the full draft
distribution; candidate scores that sum past 1 (drafters whose scores are not probabilities)
are renormalised first. Both builders only choose which nodes to verify, so greedy output is
that of plain decoding whatever they choose (docs/design.md §1.3).
"""

from __future__ import annotations

import math
from typing import no_type_check

from jetspec.core.interfaces import TreeBuilder, register_tree_builder
from jetspec.core.types import DraftOutput, DraftTree
from jetspec.trees.best_first import Fanout, check_node_cost, check_shape_args, grow_tree


def candidate_entropy(logprobs: list[float]) -> float:
    """Entropy (nats) of the candidates' distribution plus one bucket for the mass they leave out."""
    probs = [math.exp(lp) for lp in logprobs if lp > -math.inf]
    total = sum(probs)
    if total > 1.0:
        probs, total = [p / total for p in probs], 1.0
    rest = max(0.0, 1.0 - total)
    return -sum(p * math.log(p) for p in probs + [rest] if p > 0)


def entropy_fanout(width: int) -> Fanout:
    """Children allowed = clamp(round(exp(H)), 1, width): the draft's effective number of choices."""

    def fanout(logprobs: list[float]) -> int:
        if not logprobs:
            return 0
        return max(1, min(width, len(logprobs), round(math.exp(candidate_entropy(logprobs)))))

    return fanout


@register_tree_builder("entropy")
class EntropyBuilder(TreeBuilder):
    """Entropy-guided: fan out round(exp(H)) <= ``width`` per node, fill the tree level by level."""

    @no_type_check  # validates its arguments with errors naming them (see jetspec/__init__.py)
    def __init__(self, budget: int = 32, width: int = 4, depth: int = 8, node_cost: float = 0.0) -> None:
        """``node_cost`` is accepted for the common builder signature but must be 0: its stop test
        needs candidates in decreasing path probability, which level-by-level growth does not give."""
        check_shape_args(budget, width, depth)
        check_node_cost(node_cost)
        if node_cost > 0:
            raise ValueError(f"node_cost must be 0 for the entropy rule (it grows level by level), got {node_cost!r}")
        self.budget, self.width, self.depth = budget, width, depth

    def build(self, draft: DraftOutput, anchor: int) -> DraftTree:
        return grow_tree(draft, anchor, self.budget, self.depth, fanout=entropy_fanout(self.width),
                         breadth_first=True)

    def __repr__(self) -> str:
        return f"EntropyBuilder(budget={self.budget}, width={self.width}, depth={self.depth})"


@register_tree_builder("hybrid")
class HybridBuilder(TreeBuilder):
    """Entropy fan-out (round(exp(H)) <= ``width`` children per node), grown best-first on cumulative log-prob."""

    @no_type_check  # validates its arguments with errors naming them (see jetspec/__init__.py)
    def __init__(self, budget: int = 32, width: int = 4, depth: int = 8, node_cost: float = 0.0) -> None:
        """``node_cost`` as in ``BestFirstBuilder`` (the growth order is the same: best-first)."""
        check_shape_args(budget, width, depth)
        check_node_cost(node_cost)
        self.budget, self.width, self.depth, self.node_cost = budget, width, depth, node_cost

    def build(self, draft: DraftOutput, anchor: int) -> DraftTree:
        return grow_tree(draft, anchor, self.budget, self.depth, fanout=entropy_fanout(self.width),
                         node_cost=self.node_cost)

    def __repr__(self) -> str:
        return (f"HybridBuilder(budget={self.budget}, width={self.width}, depth={self.depth}, "
                f"node_cost={self.node_cost})")
