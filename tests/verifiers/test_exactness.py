"""Sampling verification is exact: proved by enumeration on tiny vocabularies (docs/design.md §3.6).

A "table target" gives a fixed random next-token distribution for every context, so the exact law
of plain sampling is known: p(a | ctx) * p(b | ctx + a). We enumerate every random choice of the
verifier (and of the drafter, for sampled drafts) and require the law of the first and of the
first two emitted tokens to equal it to 1e-9. Two deliberately wrong verifiers must fail the same
check: the test asserts they do, so the check is known to have teeth.
"""

from __future__ import annotations

import functools
import hashlib

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from jetspec.core.sampling import SamplingConfig, process_logits, residual
from jetspec.core.types import DraftTree, VerifyInput
from jetspec.testing.exact import enumerate_law
from jetspec.verifiers import SamplingVerifier

CONFIGS = [
    SamplingConfig(1.0),
    SamplingConfig(0.7),
    SamplingConfig(1.3, top_k=3),
    SamplingConfig(0.9, top_p=0.8),
    SamplingConfig(1.1, top_k=4, top_p=0.7),
    SamplingConfig(0.0),
]


@functools.lru_cache(maxsize=None)
def table_logits(ctx: tuple, vocab: int, salt: int = 0) -> torch.Tensor:
    """A fixed random logits vector per context (the same context always gives the same row)."""
    digest = hashlib.sha256(repr((salt, ctx)).encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
    return torch.randn(vocab, generator=g, dtype=torch.float64) * 2


def random_tree(ctx: tuple, vocab: int, n: int, seed: int) -> DraftTree:
    """A deterministic random tree (distinct sibling tokens) rooted at ctx[-1]."""
    g = torch.Generator().manual_seed(seed)
    tokens, parents, depth = [ctx[-1]], [-1], [0]
    for _ in range(n):
        p = int(torch.randint(0, len(tokens), (1,), generator=g))
        used = {tokens[i] for i in range(len(tokens)) if parents[i] == p}
        free = [t for t in range(vocab) if t not in used]
        if not free:
            continue
        tokens.append(free[int(torch.randint(0, len(free), (1,), generator=g))])
        parents.append(p)
        depth.append(depth[p] + 1)
    return DraftTree(tokens=torch.tensor(tokens), parents=torch.tensor(parents), depth=torch.tensor(depth),
                     score=torch.zeros(len(tokens)))


def node_contexts(tree: DraftTree, ctx: tuple) -> list[tuple]:
    """The context after each node's path (root = the anchor, already the last token of ctx)."""
    out = []
    for i in range(tree.num_nodes):
        out.append(ctx + tuple(tree.tokens[tree.path_to(i)].tolist()))
    return out


def tree_logits(tree: DraftTree, ctx: tuple, vocab: int) -> torch.Tensor:
    return torch.stack([table_logits(c, vocab) for c in node_contexts(tree, ctx)])


def exact_plain_law(ctx: tuple, vocab: int, cfg: SamplingConfig, two: bool) -> dict:
    p1 = process_logits(table_logits(ctx, vocab), cfg)
    if not two:
        return {(a,): float(p1[a]) for a in range(vocab) if p1[a] > 0}
    law = {}
    for a in range(vocab):
        if p1[a] > 0:
            p2 = process_logits(table_logits(ctx + (a,), vocab), cfg)
            for b in range(vocab):
                if p2[b] > 0:
                    law[(a, b)] = float(p1[a] * p2[b])
    return law


def max_gap(law: dict, ref: dict) -> float:
    keys = set(law) | set(ref)
    return max(abs(law.get(k, 0.0) - ref.get(k, 0.0)) for k in keys)


def speculative_law(verify, make_tree, ctx, vocab, cfg, two: bool) -> dict:
    """Law of the first (two) emitted tokens of one (or two) rounds with ``verify``."""

    def run(rng):
        tree = make_tree(ctx, rng)
        acc = verify(VerifyInput(tree=tree, logits=tree_logits(tree, ctx, vocab), sampling=cfg, rng=rng))
        toks = acc.tokens
        if not two:
            return (toks[0],)
        if len(toks) >= 2:
            return tuple(toks[:2])
        ctx2 = ctx + (toks[0],)
        tree2 = make_tree(ctx2, rng)
        acc2 = verify(VerifyInput(tree=tree2, logits=tree_logits(tree2, ctx2, vocab), sampling=cfg, rng=rng))
        return (toks[0], acc2.tokens[0])

    return enumerate_law(run)


# --------------------------------------------------------------------------- deterministic trees
@given(st.integers(3, 6), st.integers(1, 7), st.integers(0, 10_000), st.sampled_from(CONFIGS))
def test_sample_and_match_is_exact(vocab, n, seed, cfg):
    ctx = (seed % vocab, (seed // 7) % vocab)
    make_tree = lambda c, rng: random_tree(c, vocab, n, seed + len(c))
    verify = SamplingVerifier().verify
    for two in (False, True):
        law = speculative_law(verify, make_tree, ctx, vocab, cfg, two)
        assert max_gap(law, exact_plain_law(ctx, vocab, cfg, two)) < 1e-9
        assert abs(sum(law.values()) - 1) < 1e-9


def per_path_row_verifier(inp: VerifyInput):
    """WRONG on purpose: sample-and-match run independently down every root-to-leaf path (one
    draw per path row), keeping the longest acceptance. Shared prefixes get several chances."""
    from jetspec.core.types import Acceptance

    tree, p = inp.tree, process_logits(inp.logits, inp.sampling)
    kids = tree.children()
    leaves = [i for i in range(tree.num_nodes) if not kids[i]]
    best = None
    for leaf in leaves:
        path_nodes = tree.path_to(leaf)
        node, accepted = 0, []
        for nxt in path_nodes:
            y = inp.rng.categorical(p[node])
            if y != int(tree.tokens[nxt]):
                break
            accepted.append(nxt)
            node = nxt
        else:
            y = inp.rng.categorical(p[node])
        if best is None or len(accepted) > len(best[0]):
            best = (accepted, y)
    return Acceptance(best[0], int(best[1]), tree.tokens[best[0]].tolist())


def test_per_path_row_sampling_is_caught():
    vocab, cfg, ctx = 4, SamplingConfig(1.0), (1, 2)
    make_tree = lambda c, rng: random_tree(c, vocab, 5, 11 + len(c))
    tree = make_tree(ctx, None)
    assert len([k for k in tree.children()[0]]) >= 2, "the control needs a branching root"
    law = speculative_law(per_path_row_verifier, make_tree, ctx, vocab, cfg, two=False)
    assert max_gap(law, exact_plain_law(ctx, vocab, cfg, False)) > 1e-3


# --------------------------------------------------------------------------- sampled drafts with q
def draft_q(ctx: tuple, vocab: int) -> torch.Tensor:
    """The draft's law: another fixed random table (some tokens impossible under q)."""
    q = torch.softmax(table_logits(ctx, vocab, salt=1), -1)
    q[int(torch.argmin(q))] = 0.0
    return q / q.sum()


def sampled_tree_maker(vocab: int, shape: tuple[int, ...], q_fn=draft_q, q_told=None):
    """Sample a tree: shape[d] i.i.d. children from q per node at depth d (SpecInfer-style).

    ``q_told`` is the q the verifier is told; by default the one actually drafted from.
    """
    q_told = q_told or q_fn

    def make(ctx, rng):
        tokens, parents, depth, q_rows = [ctx[-1]], [-1], [0], [q_told(ctx, vocab)]
        frontier = [(0, ctx)]
        for k in shape:
            nxt = []
            for node, c in frontier:
                q = q_fn(c, vocab)
                for _ in range(k):
                    tok = rng.categorical(q)
                    tokens.append(tok)
                    parents.append(node)
                    depth.append(depth[node] + 1)
                    q_rows.append(q_told(c + (tok,), vocab))
                    nxt.append((len(tokens) - 1, c + (tok,)))
            frontier = nxt
        return DraftTree(tokens=torch.tensor(tokens), parents=torch.tensor(parents),
                         depth=torch.tensor(depth), score=torch.zeros(len(tokens)), q=torch.stack(q_rows))

    return make


@pytest.mark.parametrize("shape", [(1,), (1, 1), (2,), (3,), (2, 1)])
@pytest.mark.parametrize("cfg", CONFIGS[:5])
def test_rejection_sampling_is_exact(shape, cfg):
    vocab, ctx = 4, (0, 3)
    make = sampled_tree_maker(vocab, shape)
    two = shape in [(1,), (2,), (1, 1)]  # keep the enumeration small
    law = speculative_law(SamplingVerifier().verify, make, ctx, vocab, cfg, two)
    assert max_gap(law, exact_plain_law(ctx, vocab, cfg, two)) < 1e-9


def test_rejection_with_the_wrong_q_is_caught():
    """WRONG on purpose: the verifier is told a q other than the one the draft was sampled from."""
    vocab, ctx, cfg = 4, (0, 3), SamplingConfig(1.0)
    wrong_q = lambda c, v: torch.softmax(table_logits(c, v, salt=2), -1)
    make = sampled_tree_maker(vocab, (1, 1), q_told=wrong_q)
    law = speculative_law(SamplingVerifier().verify, make, ctx, vocab, cfg, two=True)
    assert max_gap(law, exact_plain_law(ctx, vocab, cfg, True)) > 1e-3


def test_residual_is_the_positive_part():
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.2, 0.6, 0.2], dtype=torch.float64)
    assert torch.allclose(residual(p, q), torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    assert torch.equal(residual(p, p), p)  # nothing to reject: keep p rather than divide by zero


# --------------------------------------------------------------------------- q the verifier must refuse
def _bad_q(kind: str):
    """A q told to the verifier that is not a law the drafts could have come from."""

    def q_told(ctx, vocab):
        q = draft_q(ctx, vocab)
        if kind == "zeros":
            return torch.zeros_like(q)
        if kind == "negative":  # still sums to 1
            top, low = int(torch.argmax(q)), int(torch.argmin(q))
            q = q.clone()
            q[top] += 0.2
            q[low] -= 0.2
            return q
        if kind == "nan":
            return torch.full_like(q, float("nan"))
        if kind == "unnormalised":
            return q * 1.5
        if kind == "zero at the drafted token":  # normalised, but no mass where the drafts landed
            return torch.nn.functional.one_hot(torch.argmin(q), vocab).double()
        if kind == "narrower vocabulary":
            return q[:-1] / q[:-1].sum()
        if kind == "wider vocabulary":
            return torch.cat([q, q.new_zeros(1)])
        raise AssertionError(kind)

    return q_told


@pytest.mark.parametrize("kind", ["zeros", "negative", "nan", "unnormalised", "zero at the drafted token",
                                  "narrower vocabulary", "wider vocabulary"])
@pytest.mark.parametrize("shape", [(1,), (2, 1)])
def test_rejection_with_an_impossible_q_is_refused(kind, shape):
    """A q that is no probability law at a drafted token must raise, never bias the law. With q all
    zeros the old rule accepted every draft (min(1, p/0) read as 1)."""
    vocab, ctx, cfg = 4, (0, 3), SamplingConfig(1.0)
    make = sampled_tree_maker(vocab, shape, q_told=_bad_q(kind))
    with pytest.raises(ValueError, match="q"):
        speculative_law(SamplingVerifier().verify, make, ctx, vocab, cfg, two=False)


def test_leaf_rows_of_q_are_not_read():
    """Negative control: rows of nodes without children are never used, so zeros there are fine
    (DraftModelDrafter writes zeros for its last node) and the law stays exact."""
    vocab, ctx, cfg = 4, (0, 3), SamplingConfig(0.8)
    base = sampled_tree_maker(vocab, (1, 1))

    def make(c, rng):
        tree = base(c, rng)
        tree.q[-1] = 0.0  # node 2 is the only leaf
        return tree

    law = speculative_law(SamplingVerifier().verify, make, ctx, vocab, cfg, two=True)
    assert max_gap(law, exact_plain_law(ctx, vocab, cfg, True)) < 1e-9
