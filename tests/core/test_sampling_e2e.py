"""End to end: the law of the first sampled tokens of speculative decoding equals plain sampling.

Enumeration (tests/verifiers/test_exactness.py) proves each verifier exact; this test checks the
whole loop (drafters, tree builders, cache compaction, the sampling config plumbing) on a real tiny
model with a two-sample chi-square test at fixed seeds. A verifier that trusts the draft must fail
the same test.
"""

from __future__ import annotations

import functools
from collections import Counter

import pytest
import torch
from conftest import tiny_model

from jetspec import SpeculativeDecoder, autoregressive_generate
from jetspec.core.interfaces import Verifier
from jetspec.core.types import Acceptance
from jetspec.drafters import DraftModelDrafter, NGramDrafter, RandomDrafter
from jetspec.trees import BestFirstBuilder, ChainBuilder

VOCAB = 5
TARGET = tiny_model("llama", seed=11, vocab=VOCAB, hidden=16, layers=1, heads=2, kv_heads=1)
with torch.no_grad():  # a random tiny model is nearly uniform; sharpen it so wrong laws stand out
    TARGET.lm_head.weight.mul_(25.0)
DRAFT = tiny_model("llama", seed=12, vocab=VOCAB, hidden=16, layers=1, heads=2, kv_heads=1)
PROMPT = torch.tensor([[1, 2, 3, 1, 2]])
SAMPLES = 700


def chi_square_p(a: Counter, b: Counter) -> float:
    """p-value of a two-sample chi-square test of equal laws (sparse cells pooled)."""
    na, nb = sum(a.values()), sum(b.values())
    cells, pooled = [], [0, 0]
    for k in set(a) | set(b):
        if a[k] + b[k] >= 10:
            cells.append((a[k], b[k]))
        else:
            pooled[0] += a[k]
            pooled[1] += b[k]
    if sum(pooled) > 0:
        cells.append(tuple(pooled))
    ka, kb = (nb / na) ** 0.5, (na / nb) ** 0.5
    stat = sum((x * ka - y * kb) ** 2 / (x + y) for x, y in cells)
    df = len(cells) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))


def law(generate_fn, seed: int, **kw) -> Counter:
    g = torch.Generator().manual_seed(seed)
    return Counter(tuple(generate_fn(PROMPT, max_new_tokens=3, generator=g, **kw).sequences[0, -3:].tolist())
                   for _ in range(SAMPLES))


def plain(ids, **kw):
    return autoregressive_generate(TARGET, ids, **kw)


CASES = {
    "ngram-tree": lambda: SpeculativeDecoder(TARGET, NGramDrafter(max_ngram=2), BestFirstBuilder(6, 2, 3)),
    "random-tree": lambda: SpeculativeDecoder(TARGET, RandomDrafter(VOCAB, seed=3), BestFirstBuilder(6, 3, 2)),
    "draft-model-q": lambda: SpeculativeDecoder(TARGET, DraftModelDrafter(DRAFT), ChainBuilder(3)),
}
SETTINGS = {"t1": dict(temperature=1.0), "topk": dict(temperature=0.8, top_k=3),
            "topp": dict(temperature=1.2, top_p=0.85)}


@functools.lru_cache(maxsize=None)
def plain_law(setting: str) -> Counter:
    return law(plain, seed=2, **SETTINGS[setting])


# Each drafter family meets a different sampling setting: the pairing keeps the suite fast while
# every drafter and every processor is exercised once.
@pytest.mark.parametrize("case, setting", [("ngram-tree", "t1"), ("random-tree", "topk"),
                                           ("draft-model-q", "topp"), ("draft-model-q", "t1")])
def test_first_three_tokens_follow_the_target(case, setting):
    dec = CASES[case]()
    spec = law(dec.generate, seed=1, **SETTINGS[setting])
    assert chi_square_p(spec, plain_law(setting)) > 1e-3


class TrustingVerifier(Verifier):
    """WRONG on purpose: accepts the first drafted child at every level, then samples the bonus."""

    def verify(self, inp):
        from jetspec.core.sampling import process_logits

        tree, kids, path, node = inp.tree, inp.tree.children(), [], 0
        while kids[node]:
            node = kids[node][0]
            path.append(node)
        bonus = inp.rng.categorical(process_logits(inp.logits[node], inp.sampling))
        return Acceptance(path, bonus, tree.tokens[path].tolist())


def test_a_verifier_that_trusts_the_draft_is_caught():
    dec = SpeculativeDecoder(TARGET, RandomDrafter(VOCAB, seed=3), ChainBuilder(2), verifier=TrustingVerifier())
    spec = law(dec.generate, seed=1, **SETTINGS["t1"])
    assert chi_square_p(spec, plain_law("t1")) < 1e-6
