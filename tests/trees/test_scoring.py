"""The entropy-guided and hybrid scoring rules (trees/scoring.py) on drafts whose trees are worked out by hand.

The generic invariants (budget, parents first, distinct siblings, width) and greedy losslessness
are checked for these builders with all the others in tests/trees/test_builders.py,
tests/core/test_decoding.py and tests/drafters/test_parallel_heads.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from jetspec import TREE_BUILDERS
from jetspec.core.types import DraftOutput
from jetspec.trees import BestFirstBuilder, EntropyBuilder, HybridBuilder, entropy_fanout, grow_tree
from jetspec.trees.scoring import candidate_entropy


def table(rows: list[list[float]]) -> DraftOutput:
    """A per-depth table whose row d offers tokens 10*d + 0, 10*d + 1, ... with probabilities ``rows[d]``."""
    toks = torch.tensor([[10 * d + j for j in range(len(r))] for d, r in enumerate(rows)])
    return DraftOutput(depth_tokens=toks, depth_logprobs=torch.tensor(rows, dtype=torch.float64).log())


def paths(tree) -> set[tuple[int, ...]]:
    par, tok = tree.parents.tolist(), tree.tokens.tolist()
    out = set()
    for i in range(1, len(par)):
        path, j = [], i
        while j > 0:
            path.append(tok[j])
            j = par[j]
        out.add(tuple(reversed(path)))
    return out


def test_candidate_entropy_by_hand():
    # 0.5, 0.25 offered, 0.25 left out as one bucket: H = 1.5 ln 2.
    assert candidate_entropy([math.log(0.5), math.log(0.25)]) == pytest.approx(1.5 * math.log(2))
    assert candidate_entropy([math.log(0.25)] * 4) == pytest.approx(math.log(4))
    assert candidate_entropy([0.0]) == 0.0  # certain
    assert candidate_entropy([0.0, 0.0]) == pytest.approx(math.log(2))  # scores past 1 are renormalised
    assert candidate_entropy([math.log(0.5), float("-inf")]) == pytest.approx(math.log(2))


def test_entropy_fanout_is_the_effective_number_of_choices():
    fan = entropy_fanout(4)
    assert fan([math.log(0.25)] * 4) == 4
    assert fan([math.log(0.97)] + [math.log(0.01)] * 3) == 1  # exp(H) = 1.18
    assert fan([math.log(0.6), math.log(0.4)]) == 2  # exp(H) = 1.96
    assert entropy_fanout(2)([math.log(0.25)] * 4) == 2  # capped at the width
    assert fan([]) == 0


def test_entropy_rule_fills_levels_where_best_first_follows_the_likely_path():
    draft = table([[0.6, 0.4, 0.0, 0.0], [0.97, 0.01, 0.01, 0.01], [0.97, 0.01, 0.01, 0.01]])  # 0: not offered
    best = BestFirstBuilder(budget=3, width=4, depth=3).build(draft, anchor=99)
    ent = EntropyBuilder(budget=3, width=4, depth=3).build(draft, anchor=99)
    hyb = HybridBuilder(budget=3, width=4, depth=3).build(draft, anchor=99)
    assert paths(best) == {(0,), (0, 10), (0, 10, 20)}  # path probabilities .6, .582, .565
    assert paths(ent) == {(0,), (1,), (0, 10)}  # depth 0 is uncertain: both children first
    assert paths(hyb) == paths(best)
    # Negative control: the rules do differ in what they verify.
    assert paths(ent) != paths(best)


def test_hybrid_refuses_siblings_where_the_draft_is_sure():
    draft = table([[0.9, 0.1], [0.5, 0.5]])
    best = BestFirstBuilder(budget=5, width=4, depth=2).build(draft, anchor=99)
    hyb = HybridBuilder(budget=5, width=4, depth=2).build(draft, anchor=99)
    assert paths(best) == {(0,), (0, 10), (0, 11), (1,), (1, 10)}
    assert paths(hyb) == {(0,), (0, 10), (0, 11)}  # exp(H) = 1.38 at depth 0: one child; the budget is a cap
    # The score stays the cumulative log-prob, whatever the rule.
    torch.testing.assert_close(hyb.score[1:].double(), torch.tensor([0.9, 0.45, 0.45], dtype=torch.float64).log(),
                               check_dtype=False)


def test_registered_and_validated():
    assert TREE_BUILDERS["entropy"] is EntropyBuilder and TREE_BUILDERS["hybrid"] is HybridBuilder
    with pytest.raises(ValueError, match="budget"):
        EntropyBuilder(budget=0)
    with pytest.raises(ValueError, match="width"):
        HybridBuilder(width=1.5)
    with pytest.raises(ValueError, match="node_cost"):
        grow_tree(table([[0.5, 0.5]]), 0, 4, 1, entropy_fanout(2), node_cost=0.1, breadth_first=True)
    with pytest.raises(ValueError, match="node_cost"):
        EntropyBuilder(node_cost=0.1)
    EntropyBuilder(node_cost=0.0)  # the common signature (jetspec generate passes node_cost) works
    # The hybrid is best-first, so the cost-aware stop applies as in best-first: where the entropy
    # fan-out equals the width, the two builders are the same tree, cost cut included.
    flat = table([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]])
    for cost in (0.0, 0.3, 5.0):
        hyb = HybridBuilder(budget=9, width=2, depth=3, node_cost=cost).build(flat, 0)
        best = BestFirstBuilder(budget=9, width=2, depth=3, node_cost=cost).build(flat, 0)
        assert torch.equal(hyb.tokens, best.tokens) and torch.equal(hyb.parents, best.parents), cost
    assert HybridBuilder(budget=9, width=2, depth=3, node_cost=5.0).build(flat, 0).budget == 0  # nothing pays
