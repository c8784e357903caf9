"""The shipped tree builders: chain, best-first and fan-out cap (docs/design.md §2.5).

All three are thin configurations of ``grow_tree``; the budget counts drafted nodes with the
root excluded, as everywhere in jetspec. ``node_cost`` (default 0 = off) turns the budget into a
cap and lets each round's tree stop growing where more nodes would not pay for their verify cost
(``best_first`` module docstring).
"""

from __future__ import annotations

import inspect
from typing import no_type_check

from jetspec.core.interfaces import TREE_BUILDERS, TreeBuilder, register_tree_builder
from jetspec.core.types import DraftOutput, DraftTree
from jetspec.trees.best_first import capped_fanout, check_finite, check_node_cost, check_shape_args, grow_tree


@register_tree_builder("chain")
class ChainBuilder(TreeBuilder):
    """The top-1 candidate at every depth: a single path of ``depth`` drafted tokens."""

    @no_type_check  # validates its arguments with errors naming them (see jetspec/__init__.py)
    def __init__(self, depth: int = 8, node_cost: float = 0.0) -> None:
        check_shape_args(1, 1, depth)  # the budget is the depth: only depth can be wrong (and is named)
        check_node_cost(node_cost)
        self.depth, self.width, self.budget, self.node_cost = depth, 1, depth, node_cost

    def build(self, draft: DraftOutput, anchor: int) -> DraftTree:
        return grow_tree(draft, anchor, self.budget, self.depth, fanout=lambda lps: min(1, len(lps)),
                         node_cost=self.node_cost)

    def __repr__(self) -> str:
        return f"ChainBuilder(depth={self.depth}, node_cost={self.node_cost})"


@register_tree_builder("bestfirst")
class BestFirstBuilder(TreeBuilder):
    """Best-first growth on accumulated log-prob with up to ``width`` children per node."""

    @no_type_check  # validates its arguments with errors naming them (see jetspec/__init__.py)
    def __init__(self, budget: int = 32, width: int = 4, depth: int = 8, node_cost: float = 0.0) -> None:
        """
        Args:
            budget: drafted nodes per round, root excluded.
            width: candidates per node the tree may take as children.
            depth: deepest tree level (clamped to what the drafter can produce).
            node_cost: verify cost per drafted node in plain steps: the tree stops growing where a
                node would not pay (0 = spend the whole budget; ``jetspec roofline`` measures it).
        """
        check_shape_args(budget, width, depth)
        check_node_cost(node_cost)
        self.budget, self.width, self.depth, self.node_cost = budget, width, depth, node_cost

    def build(self, draft: DraftOutput, anchor: int) -> DraftTree:
        w = self.width
        return grow_tree(draft, anchor, self.budget, self.depth, fanout=lambda lps: min(w, len(lps)),
                         node_cost=self.node_cost)

    def __repr__(self) -> str:
        return (f"BestFirstBuilder(budget={self.budget}, width={self.width}, depth={self.depth}, "
                f"node_cost={self.node_cost})")


@register_tree_builder("fanout")
class FanoutCapBuilder(TreeBuilder):
    """Best-first growth whose per-node fan-out shrinks where the top-2 log-prob gap is large."""

    @no_type_check  # validates its arguments with errors naming them (see jetspec/__init__.py)
    def __init__(self, budget: int = 32, width: int = 4, depth: int = 8, beta: float = 1.0,
                 gap0: float = 1.0, node_cost: float = 0.0) -> None:
        check_shape_args(budget, width, depth)
        check_node_cost(node_cost)
        check_finite("beta", beta, 0.0)  # nan or inf would only fail at the first build
        check_finite("gap0", gap0)
        self.budget, self.width, self.depth = budget, width, depth
        self.beta, self.gap0, self.node_cost = beta, gap0, node_cost

    def build(self, draft: DraftOutput, anchor: int) -> DraftTree:
        fanout = capped_fanout(self.width, self.beta, self.gap0)
        return grow_tree(draft, anchor, self.budget, self.depth, fanout=fanout, node_cost=self.node_cost)

    def __repr__(self) -> str:
        return (f"FanoutCapBuilder(budget={self.budget}, width={self.width}, depth={self.depth}, "
                f"beta={self.beta}, gap0={self.gap0}, node_cost={self.node_cost})")


def make_tree_builder(name: str, budget: int, width: int, depth: int, node_cost: float = 0.0) -> TreeBuilder:
    """The registered builder ``name`` with the shape arguments its constructor takes.

    A builder without a ``budget`` (or ``width``) argument fixes it itself: a chain's budget is its depth.
    """
    cls = TREE_BUILDERS[name]
    accepted = inspect.signature(cls).parameters
    shape = dict(budget=budget, width=width, depth=depth, node_cost=node_cost)
    return cls(**{k: v for k, v in shape.items() if k in accepted})
