"""Tree invariants for every builder, on both proposal forms (docs/design.md §2)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from jetspec.core.types import DraftOutput, ancestor_mask
from jetspec.trees import BestFirstBuilder, ChainBuilder, EntropyBuilder, FanoutCapBuilder, HybridBuilder


@st.composite
def table_drafts(draw):
    depth = draw(st.integers(1, 6))
    width = draw(st.integers(1, 5))
    vocab = draw(st.integers(width, 40))
    seed = draw(st.integers(0, 10_000))
    g = torch.Generator().manual_seed(seed)
    toks = torch.stack([torch.randperm(vocab, generator=g)[:width] for _ in range(depth)])
    lps = torch.log_softmax(torch.randn(depth, width, generator=g), -1).sort(-1, descending=True).values
    return DraftOutput(depth_tokens=toks, depth_logprobs=lps)


@st.composite
def node_drafts(draw):
    m = draw(st.integers(0, 30))
    seed = draw(st.integers(0, 10_000))
    g = torch.Generator().manual_seed(seed)
    parents = [int(torch.randint(-1, i, (1,), generator=g)) if i > 0 else -1 for i in range(m)]
    tokens = torch.randint(0, 50, (m,), generator=g)
    lps = -torch.rand(m, generator=g) * 3
    return DraftOutput(node_tokens=tokens, node_parents=torch.tensor(parents, dtype=torch.long),
                       node_logprobs=lps)


def builders(budget, width, depth):
    return [ChainBuilder(depth), BestFirstBuilder(budget, width, depth),
            FanoutCapBuilder(budget, width, depth, beta=1.5, gap0=0.5),
            BestFirstBuilder(budget, width, depth, node_cost=0.05), EntropyBuilder(budget, width, depth),
            HybridBuilder(budget, width, depth), HybridBuilder(budget, width, depth, node_cost=0.05)]


def closure_by_walking(parents):
    n = len(parents)
    anc = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        j = i
        while j >= 0:
            anc[i, j] = True
            j = parents[j]
    return anc


def check_invariants(tree, builder, anchor):
    par = tree.parents.tolist()
    assert tree.tokens[0] == anchor and par[0] == -1 and tree.depth[0] == 0
    assert tree.budget <= builder.budget, "budget (drafted nodes, root excluded) exceeded"
    for i in range(1, tree.num_nodes):
        assert 0 <= par[i] < i, "parents must come before children"
        assert tree.depth[i] == tree.depth[par[i]] + 1
        assert tree.depth[i] <= builder.depth
    assert torch.equal(tree.ancestor, closure_by_walking(par))
    # siblings carry distinct tokens (a verifier could not tell them apart otherwise)
    kids = tree.children()
    for k in kids:
        toks = tree.tokens[k].tolist()
        assert len(toks) == len(set(toks))
        assert len(k) <= builder.width
    # the score is the cumulative log-prob along the path
    for i in range(1, tree.num_nodes):
        assert tree.score[i] <= tree.score[par[i]] + 1e-6


@given(table_drafts(), st.integers(1, 40), st.integers(1, 5), st.integers(1, 6))
def test_table_invariants(draft, budget, width, depth):
    for b in builders(budget, width, depth):
        check_invariants(b.build(draft, anchor=7), b, 7)


@given(node_drafts(), st.integers(1, 40), st.integers(1, 5), st.integers(1, 6))
def test_candidate_tree_invariants(draft, budget, width, depth):
    for b in builders(budget, width, depth):
        check_invariants(b.build(draft, anchor=3), b, 3)


@given(table_drafts(), st.integers(1, 6))
def test_chain_is_best_first_with_width_one(draft, depth):
    chain = ChainBuilder(depth).build(draft, 0)
    bf = BestFirstBuilder(budget=depth, width=1, depth=depth).build(draft, 0)
    assert torch.equal(chain.tokens, bf.tokens) and torch.equal(chain.parents, bf.parents)
    # the chain is the top-1 token of each depth
    d = min(depth, draft.depth_tokens.shape[0])
    assert chain.tokens[1:].tolist() == draft.depth_tokens[:d, 0].tolist()


@given(table_drafts(), st.integers(1, 40), st.integers(1, 5), st.integers(1, 6))
def test_best_first_keeps_the_best_nodes(draft, budget, width, depth):
    """Best-first is optimal: no node left out scores above the worst node kept."""
    tree = BestFirstBuilder(budget, width, depth).build(draft, 0)
    if tree.budget < budget:
        return  # everything reachable was taken
    worst_kept = float(tree.score[1:].min())
    kids = tree.children()
    for i in range(tree.num_nodes):
        d = int(tree.depth[i])
        if d >= min(depth, draft.depth_tokens.shape[0]):
            continue
        taken = set(tree.tokens[kids[i]].tolist())
        for tok, lp in zip(draft.depth_tokens[d, :width].tolist(), draft.depth_logprobs[d, :width].tolist()):
            if tok not in taken:
                assert float(tree.score[i]) + lp <= worst_kept + 1e-6


def test_fanout_cap_turns_confident_depths_into_chains():
    toks = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    confident = torch.tensor([[-0.01, -8.0, -9.0, -10.0], [-1.0, -1.1, -1.2, -1.3]])
    tree = FanoutCapBuilder(budget=20, width=4, depth=2, beta=2.0, gap0=1.0).build(
        DraftOutput(depth_tokens=toks, depth_logprobs=confident), 0)
    kids = tree.children()
    assert len(kids[0]) == 1  # depth 1 is confident: a single child
    assert len(kids[kids[0][0]]) >= 2  # depth 2 is uncertain: fans out


def test_ancestor_mask_rejects_bad_parents():
    with pytest.raises(ValueError, match="precede"):
        ancestor_mask(torch.tensor([-1, 2, 0]))
    with pytest.raises(ValueError, match="root"):
        ancestor_mask(torch.tensor([-1, -1]))


@pytest.mark.parametrize("kw", [dict(budget=0), dict(width=0), dict(depth=0)])
def test_builder_arguments_are_validated(kw):
    args = dict(budget=4, width=2, depth=3) | kw
    name = next(iter(kw))
    with pytest.raises(ValueError, match=name):
        BestFirstBuilder(**args)


@pytest.mark.parametrize("kw, name", [(dict(beta=float("nan")), "beta"), (dict(beta=float("inf")), "beta"),
                                      (dict(beta=-1.0), "beta"), (dict(beta="1"), "beta"),
                                      (dict(gap0=float("nan")), "gap0"), (dict(gap0=None), "gap0"),
                                      (dict(budget=True), "budget"), (dict(width=2.0), "width")])
def test_fanout_cap_arguments_are_validated(kw, name):
    """beta=nan used to be accepted and fail at the first build."""
    with pytest.raises(ValueError, match=name):
        FanoutCapBuilder(**kw)
    FanoutCapBuilder(beta=0.0, gap0=-1)  # negative control: any finite gap0, beta >= 0


@pytest.mark.parametrize("depth", [0, -2, 1.5, True])
def test_chain_builder_names_depth(depth):
    """A chain has no budget argument, so the error must not talk about one."""
    with pytest.raises(ValueError, match="depth") as err:
        ChainBuilder(depth)
    assert "budget" not in str(err.value)


def tokens_per_cost(tree, n: int, c: float) -> float:
    """Modelled committed tokens per verify cost when the first n drafted nodes are verified."""
    probs = tree.score[1: n + 1].double().exp()
    return (1.0 + float(probs.sum())) / (1.0 + c * n)


@given(st.one_of(table_drafts(), node_drafts()), st.integers(1, 40), st.integers(1, 5), st.integers(1, 6),
       st.floats(0.001, 2.0))
def test_node_cost_keeps_the_best_prefix(draft, budget, width, depth, c):
    """With node_cost c the tree is the prefix of the full-budget tree that maximises the model
    (1 + sum q) / (1 + c n), checked against every prefix (an independent brute force)."""
    full = BestFirstBuilder(budget, width, depth).build(draft, 0)
    cut = BestFirstBuilder(budget, width, depth, node_cost=c).build(draft, 0)
    n = cut.num_nodes
    assert torch.equal(cut.tokens, full.tokens[:n]) and torch.equal(cut.parents, full.parents[:n])
    best = max(tokens_per_cost(full, k, c) for k in range(full.num_nodes))
    assert tokens_per_cost(full, n - 1, c) >= best - 1e-9


def test_node_cost_shrinks_unsure_trees_and_rejects_bad_values():
    sure = DraftOutput(depth_tokens=torch.tensor([[1, 2], [3, 4]]),
                       depth_logprobs=torch.tensor([[-0.01, -5.0], [-0.01, -5.0]]))
    unsure = DraftOutput(depth_tokens=torch.tensor([[1, 2], [3, 4]]),
                         depth_logprobs=torch.tensor([[-4.0, -5.0], [-4.0, -5.0]]))
    b = BestFirstBuilder(budget=6, width=2, depth=2, node_cost=0.05)
    assert b.build(sure, 0).tokens.tolist() == [0, 1, 3]  # two likely nodes; the 1% ones do not pay
    assert b.build(unsure, 0).num_nodes == 1  # nothing is worth verifying: plain decoding this round
    for bad in (-0.1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="node_cost"):
            BestFirstBuilder(node_cost=bad)
