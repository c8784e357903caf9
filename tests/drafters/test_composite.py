"""The composite drafter: a lossless union of its members' trees on one mixture scale."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_model

from jetspec import DraftInput, SpeculativeDecoder
from jetspec.drafters import NGramDrafter, OracleDrafter, RandomDrafter
from jetspec.drafters.composite import CompositeDrafter
from jetspec.trees import BestFirstBuilder, ChainBuilder, FanoutCapBuilder

TARGET = tiny_model("qwen3", seed=3)


def prompt(seed=0, n=20):
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(0, 64, (7,), generator=g)
    return torch.cat([base, base, base])[:n][None]


@pytest.mark.parametrize("builder", [ChainBuilder(4), BestFirstBuilder(12, 3, 5), FanoutCapBuilder(12, 3, 5)])
def test_composite_is_lossless(builder):
    comp = CompositeDrafter([NGramDrafter(), RandomDrafter(64, seed=2)], weights=[2.0, 1.0])
    ids = prompt()
    ref = TARGET.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                          eos_token_id=None, pad_token_id=0)
    res = SpeculativeDecoder(TARGET, comp, builder).generate(ids, max_new_tokens=24)
    assert torch.equal(res.sequences, ref)


def test_union_keeps_both_members_and_mixes_their_laws():
    ids = prompt()[0]
    inp = DraftInput(tokens=ids, depth=3, width=2, budget=8)
    oracle, ngram = OracleDrafter(TARGET), NGramDrafter()
    out = CompositeDrafter([oracle, ngram], weights=[1.0, 1.0]).draft(inp)
    roots = {t: lp for t, lp, p in zip(out.node_tokens.tolist(), out.node_logprobs.tolist(),
                                         out.node_parents.tolist()) if p == -1}
    o = oracle.draft(inp)
    n = ngram.draft(inp)
    n_roots = {t: lp for t, lp, p in zip(n.node_tokens.tolist(), n.node_logprobs.tolist(),
                                         n.node_parents.tolist()) if p == -1}
    for t, lp in zip(o.depth_tokens[0].tolist(), o.depth_logprobs[0].tolist()):
        expected = 0.5 * math.exp(lp) + 0.5 * math.exp(n_roots.get(t, -math.inf))
        assert math.isclose(math.exp(roots[t]), expected, rel_tol=1e-5)
    assert set(n_roots) <= set(roots)
    # parents come before children
    assert all(p < i for i, p in enumerate(out.node_parents.tolist()))


def test_bad_composites_are_refused():
    with pytest.raises(ValueError, match="at least one"):
        CompositeDrafter([])
    with pytest.raises(ValueError, match="vocabulary"):
        CompositeDrafter([RandomDrafter(64), RandomDrafter(65)])
    with pytest.raises(ValueError, match="weights"):
        CompositeDrafter([NGramDrafter()], weights=[0.0])
