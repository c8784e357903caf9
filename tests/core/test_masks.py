"""jetspec.core.masks: several rows' trees over prefixes of different lengths in one padded batch
(docs/design.md §4.9).

``padded_visibility`` and ``stack_kv`` pad rows to a common shape; attention under the padded mask
must give every row exactly what tree attention gives it alone, whatever the padding holds.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from jetspec.core.masks import ancestor_from_parents, padded_visibility, stack_kv, tree_visibility
from jetspec.kernels import masked_attention, tree_attention_reference


def random_parents(gen: torch.Generator, n: int) -> list[int]:
    return [-1] + [int(torch.randint(0, i, (1,), generator=gen)) for i in range(1, n)]


@settings(deadline=None, max_examples=25)
@given(sizes=st.lists(st.tuples(st.integers(0, 6), st.integers(1, 5)), min_size=1, max_size=4),
       seed=st.integers(0, 2**16))
def test_padded_rows_attend_exactly_as_each_row_alone(sizes, seed):
    gen = torch.Generator().manual_seed(seed)
    h, h_kv, k_dim = 4, 2, 8
    ancestors = [ancestor_from_parents(random_parents(gen, n)) for _, n in sizes]
    lens = [p for p, _ in sizes]
    qs = [torch.randn(1, h, n, k_dim, generator=gen, dtype=torch.float64) for _, n in sizes]
    prefix = [[(torch.randn(1, h_kv, p, k_dim, generator=gen, dtype=torch.float64),
                torch.randn(1, h_kv, p, k_dim, generator=gen, dtype=torch.float64))] for p in lens]
    own = [(torch.randn(1, h_kv, n, k_dim, generator=gen, dtype=torch.float64),
            torch.randn(1, h_kv, n, k_dim, generator=gen, dtype=torch.float64)) for _, n in sizes]
    visible = padded_visibility([tree_visibility(a, p) for a, p in zip(ancestors, lens)], lens)
    p_max, n_max = max(lens), max(n for _, n in sizes)
    assert visible.shape == (len(sizes), n_max, p_max + n_max)
    # Keys: the padded prefixes, then each row's own nodes padded with garbage (which must stay hidden).
    (kp, vp), = stack_kv(prefix, p_max)
    ko = torch.cat([torch.cat([k, torch.full((1, h_kv, n_max - k.shape[2], k_dim), 1e3, dtype=k.dtype)], 2)
                    for k, _ in own])
    vo = torch.cat([torch.cat([v, torch.full((1, h_kv, n_max - v.shape[2], k_dim), 1e3, dtype=v.dtype)], 2)
                    for _, v in own])
    q = torch.cat([torch.cat([x, torch.zeros(1, h, n_max - x.shape[2], k_dim, dtype=x.dtype)], 2) for x in qs])
    out = masked_attention(q, torch.cat([kp, ko], 2), torch.cat([vp, vo], 2), visible[:, None])
    assert torch.isfinite(out).all()  # padding queries see themselves, never nothing
    for b, ((p, n), anc) in enumerate(zip(sizes, ancestors)):
        k = torch.cat([prefix[b][0][0], own[b][0]], 2)
        v = torch.cat([prefix[b][0][1], own[b][1]], 2)
        want = tree_attention_reference(qs[b], k, v, anc)
        torch.testing.assert_close(out[b: b + 1, :, :n], want, rtol=0, atol=1e-12)
        # The mask itself: the row's prefix and its tree, at the padded columns; nothing else.
        vis = tree_visibility(anc, p)
        assert torch.equal(visible[b, :n, :p], vis[:, :p]) and not visible[b, :n, p:p_max].any()
        assert torch.equal(visible[b, :n, p_max:p_max + n], vis[:, p:])
        assert not visible[b, :n, p_max + n:].any()
        assert torch.equal(visible[b, n:, p_max + n:], torch.eye(n_max - n, dtype=torch.bool))


def test_padded_visibility_names_a_bad_row():
    with pytest.raises(ValueError, match=r"visible\[1\]"):
        padded_visibility([tree_visibility(torch.ones(1, 1, dtype=torch.bool), 2),
                           torch.ones(2, 3, dtype=torch.bool)], [2, 2])
    with pytest.raises(ValueError, match="prefix lengths"):
        padded_visibility([torch.ones(1, 1, dtype=torch.bool)], [0, 1])
