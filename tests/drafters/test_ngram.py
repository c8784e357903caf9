"""Prompt lookup: the trie of continuations and its scores, worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from jetspec.core.types import DraftInput
from jetspec.drafters.ngram import NGramDrafter

# The tail (1, 2) occurred at positions 1 and 5: continuations 3 7 1 (most recent) and 3 9 1.
TOKENS = torch.tensor([5, 1, 2, 3, 9, 1, 2, 3, 7, 1, 2])


def trie(drafter: NGramDrafter) -> dict[tuple[int, ...], float]:
    """path of tokens -> conditional q of its last step."""
    out = drafter.draft(DraftInput(tokens=TOKENS, depth=3, width=4, budget=16))
    paths: dict[int, tuple[int, ...]] = {}
    q = {}
    for m, (tok, par, lp) in enumerate(zip(out.node_tokens.tolist(), out.node_parents.tolist(),
                                           out.node_logprobs.tolist())):
        paths[m] = (paths[par] if par >= 0 else ()) + (tok,)
        q[paths[m]] = math.exp(lp)
    return q


def test_continuations_of_the_longest_matching_tail():
    assert NGramDrafter().find_continuations(TOKENS, 3) == [[3, 7, 1], [3, 9, 1]]
    assert NGramDrafter(max_matches=1).find_continuations(TOKENS, 2) == [[3, 7]]
    assert NGramDrafter().find_continuations(torch.tensor([4, 5, 6]), 3) == []


def test_trie_counts_without_and_with_smoothing():
    plain = trie(NGramDrafter())
    assert plain == pytest.approx({(3,): 1.0, (3, 7): 0.5, (3, 9): 0.5, (3, 7, 1): 1.0, (3, 9, 1): 1.0})
    smooth = trie(NGramDrafter(smoothing=1.0))  # count / (parent count + 1)
    assert smooth == pytest.approx({(3,): 2 / 3, (3, 7): 1 / 3, (3, 9): 1 / 3, (3, 7, 1): 1 / 2,
                                    (3, 9, 1): 1 / 2})


@pytest.mark.parametrize("kwargs", [dict(min_ngram=0), dict(min_ngram=3, max_ngram=2), dict(max_matches=0),
                                    dict(smoothing=-1.0), dict(smoothing=float("inf"))])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        NGramDrafter(**kwargs)
