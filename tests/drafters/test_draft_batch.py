"""Drafting a batch: per-row state, and ``draft_batch`` equal to ``draft`` row by row (docs/design.md §4.9).

A batched decoder calls a drafter once per round with one ``DraftInput`` per running row; rows
have different committed lengths, grow by different amounts, and restart (``round_index == 0``)
independently. Three ways of drafting the same rows' rounds must give the same proposals:

* **alone**: every row on its own fresh drafter, ``draft`` round after round (the reference);
* **interleaved**: one fresh drafter, ``draft`` called row by row within each round;
* **batched**: one fresh drafter, ``draft_batch`` over all rows of each round.

Everything runs on float64 tiny targets (tests/conftest.py) with tiny random heads, so the head
internals agree to 1e-10. ``DraftOutput`` stores log q in float32 (its contract), so proposals are
compared token for token exactly and log q to float32 resolution; the float64 logits of the heads
are compared at 1e-10 separately. A head that shares one cache between rows must fail (the
negative control).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

import jetspec
from jetspec import DRAFTERS, SpeculativeDecoder
from jetspec.core.checks import run_drafter, run_drafter_batch
from jetspec.core.target import Teacher
from jetspec.core.types import DraftInput, DraftOutput
from jetspec.drafters import (
    CompositeDrafter,
    DFlashHead,
    DraftModelDrafter,
    EagleHead,
    JetSpecHead,
    NGramDrafter,
    OracleDrafter,
    RandomDrafter,
    TargetScoredDrafter,
)
from jetspec.trees import BestFirstBuilder

VOCAB = 64


@pytest.fixture(scope="module")
def target():
    return tiny_model("qwen3", seed=1)


@pytest.fixture(scope="module")
def draft_lm():
    return tiny_model("llama", seed=5, layers=1)


def factories(target, draft_lm) -> dict:
    """name -> a function building a fresh drafter (heads seeded, so two calls build twins)."""

    def seeded(build):
        def make():
            torch.manual_seed(11)
            head = build()
            for name, p in head.net.named_parameters():  # random norms and direct path, so they matter
                if "direct" in name or "norm" in name:
                    torch.nn.init.normal_(p, mean=1.0 if "norm" in name else 0.0, std=0.3)
            return head
        return make

    return {
        "jetspec": seeded(lambda: JetSpecHead(target, block_size=5, direct_path=True)),
        "jetspec-conditioned": seeded(lambda: JetSpecHead(target, block_size=5, conditioned=True)),
        "jetspec-reduced-vocab": seeded(lambda: JetSpecHead(target, block_size=5, draft_vocab=torch.arange(5, 40))),
        "dflash": seeded(lambda: DFlashHead(target, block_size=5, mask_token_id=3)),
        "eagle": seeded(lambda: EagleHead(target, num_layers=2)),
        "draft_model": lambda: DraftModelDrafter(draft_lm),
        "oracle": lambda: OracleDrafter(target),
        "target_scored": lambda: TargetScoredDrafter(target),
        "random": lambda: RandomDrafter(VOCAB, seed=4),
        "ngram": lambda: NGramDrafter(max_ngram=2, smoothing=1.0),
        "composite": lambda: CompositeDrafter([seeded(lambda: JetSpecHead(target, block_size=5))(),
                                               NGramDrafter(smoothing=1.0)], weights=[2, 1]),
    }


# ------------------------------------------------------------------------------ the scenario
def schedule(seed: int, rows: int, rounds: int) -> list[list[tuple[int, int, int, int]]]:
    """Per round, the running rows as (row, sequence, committed length, round_index).

    Rows start at different lengths (1 = a one-token prompt), grow by 1..4 tokens a round, and
    row 0 (when there are several rounds) restarts on a new sequence midway; row 3 joins late.
    """
    gen = torch.Generator().manual_seed(seed)
    state = {r: [r, int(torch.randint(1, 9, (1,), generator=gen)), 0] for r in range(rows)}
    plan = []
    for k in range(rounds):
        this = []
        for r in range(rows):
            if r == 3 and k == 0:
                continue  # a row that joins the batch one round later
            seq, length, idx = state[r]
            if r == 0 and k == rounds // 2 and k > 0:
                seq, length, idx = rows + k, int(torch.randint(2, 6, (1,), generator=gen)), 0  # restart
            this.append((r, seq, length, idx))
            state[r] = [seq, length + int(torch.randint(1, 5, (1,), generator=gen)), idx + 1]
        plan.append(this)
    return plan


class Corpus:
    """Token sequences and their taps, made once per drafter's tap layers."""

    def __init__(self, target, seed: int, n: int = 12, length: int = 40) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.target = target
        self.ids = torch.randint(0, VOCAB, (n, length), generator=gen)
        # Repeats, so that prompt lookup finds matches.
        self.ids[:, 20:30] = self.ids[:, 5:15]
        self._taps: dict[tuple, torch.Tensor] = {}

    def inputs(self, drafter, plan_round, depth=3, width=2, budget=6) -> list[DraftInput]:
        layers = tuple(drafter.tap_layers)
        if layers and layers not in self._taps:
            self._taps[layers] = Teacher(self.target, layers)(self.ids).taps  # [n, length, F]
        out = []
        for row, seq, length, idx in plan_round:
            taps = self._taps[layers][seq, : length - 1] if layers else None
            out.append(DraftInput(tokens=self.ids[seq, :length].clone(), depth=depth + row % 2, width=width,
                                  budget=budget + row, taps=taps, round_index=idx, row=row))
        return out


def assert_same(a: DraftOutput, b: DraftOutput, where: str) -> None:
    fields = ("depth_tokens", "node_tokens", "node_parents")
    for f in fields:
        x, y = getattr(a, f), getattr(b, f)
        assert (x is None) == (y is None) and (x is None or torch.equal(x, y)), f"{where}: {f} differ"
    for f in ("depth_logprobs", "node_logprobs"):  # float32 by the DraftOutput contract
        x, y = getattr(a, f), getattr(b, f)
        if x is not None:
            torch.testing.assert_close(x, y, rtol=0, atol=2e-6, msg=f"{where}: {f} differ")
    if a.node_q is not None or b.node_q is not None:
        torch.testing.assert_close(a.node_q, b.node_q, rtol=0, atol=1e-10, msg=f"{where}: node_q differ")
    assert a.forwards == b.forwards, where


def alone(make, corpus, plan) -> dict:
    """(round, row) -> proposal, every row on its own fresh drafter."""
    out, drafters = {}, {}
    for k, plan_round in enumerate(plan):
        for entry in plan_round:
            d = drafters.setdefault(entry[0], make())
            out[k, entry[0]] = run_drafter(d, corpus.inputs(d, [entry])[0], VOCAB)
    return out


def interleaved(make, corpus, plan) -> dict:
    d, out = make(), {}
    for k, plan_round in enumerate(plan):
        for inp in corpus.inputs(d, plan_round):
            out[k, inp.row] = run_drafter(d, inp, VOCAB)
    return out


def batched(make, corpus, plan) -> dict:
    d, out = make(), {}
    for k, plan_round in enumerate(plan):
        inputs = corpus.inputs(d, plan_round)
        for inp, prop in zip(inputs, run_drafter_batch(d, inputs, VOCAB)):
            out[k, inp.row] = prop
    return out


# ------------------------------------------------------------------------------ the tests
def test_every_registered_drafter_is_covered(target, draft_lm):
    names = set(factories(target, draft_lm))
    assert set(DRAFTERS) <= names, f"add a factory for {sorted(set(DRAFTERS) - names)}"


@settings(deadline=None, max_examples=6)
@given(rows=st.integers(1, 4), rounds=st.integers(1, 5), seed=st.integers(0, 2**16))
@pytest.mark.parametrize("name", ["jetspec", "jetspec-conditioned", "jetspec-reduced-vocab", "dflash", "eagle",
                                  "draft_model", "oracle", "random", "ngram", "composite"])
def test_batched_and_interleaved_rows_equal_each_row_alone(target, draft_lm, name, rows, rounds, seed):
    make = factories(target, draft_lm)[name]
    corpus = Corpus(target, seed)
    plan = schedule(seed, rows, rounds)
    want = alone(make, corpus, plan)
    for label, got in (("interleaved", interleaved(make, corpus, plan)), ("batched", batched(make, corpus, plan))):
        assert got.keys() == want.keys()
        for key in want:
            assert_same(got[key], want[key], f"{name} {label} round {key[0]} row {key[1]}")


# ------------------------------------------------------------------------------ negative control
class SharedCacheJetSpec(JetSpecHead):
    """The bug per-row state prevents: every row drafts from row 0's cache."""

    def draft(self, inp):
        return super().draft(replace(inp, row=0))

    def draft_batch(self, inputs):
        return [self.draft(inp) for inp in inputs]


class SharedCacheEagle(EagleHead):
    def draft(self, inp):
        return super().draft(replace(inp, row=0))

    def draft_batch(self, inputs):
        return [self.draft(inp) for inp in inputs]


@pytest.mark.parametrize("cls", [SharedCacheJetSpec, SharedCacheEagle])
def test_a_shared_cache_fails_the_interleaving_test(target, cls):
    def make():
        torch.manual_seed(11)
        return cls(target, block_size=5) if cls is SharedCacheJetSpec else cls(target, num_layers=1)

    corpus = Corpus(target, 0)
    # Row 1 is longer than row 0, so a shared cache extends row 0's context with row 1's taps.
    plan = [[(0, 0, 4, 0), (1, 1, 9, 0)], [(0, 0, 6, 1), (1, 1, 11, 1)], [(0, 0, 7, 2), (1, 1, 14, 2)]]
    want = alone(make, corpus, plan)
    for run in (interleaved, batched):
        got = run(make, corpus, plan)
        with pytest.raises(AssertionError):
            for key in want:
                assert_same(got[key], want[key], f"{cls.__name__} {run.__name__} {key}")
    # The same rows on the real heads pass (so it is the shared cache that fails above).
    real = cls.__mro__[1]
    fresh = (lambda: (torch.manual_seed(11), real(target, block_size=5) if real is JetSpecHead
                      else real(target, num_layers=1))[1])
    want = alone(fresh, corpus, plan)
    for run in (interleaved, batched):
        got = run(fresh, corpus, plan)
        for key in want:
            assert_same(got[key], want[key], f"{real.__name__} {run.__name__} {key}")


# ------------------------------------------------------------------------------ one forward, float64 agreement
class ForwardCounter:
    """Counts a module's forwards until ``remove``."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.calls = 0
        self.handle = module.register_forward_hook(self.hook)

    def hook(self, *args) -> None:
        self.calls += 1

    def remove(self) -> int:
        self.handle.remove()
        return self.calls


@pytest.mark.parametrize("name,per_step", [("jetspec", 1), ("dflash", 1), ("jetspec-conditioned", 2)])
def test_parallel_heads_draft_all_rows_in_one_forward(target, draft_lm, name, per_step):
    make = factories(target, draft_lm)[name]
    corpus = Corpus(target, 3)
    plan = [(0, 0, 5, 0), (1, 1, 12, 0), (2, 2, 1, 0)]  # row 2: a one-token prompt (empty context)
    head = make()
    counter = ForwardCounter(head.net)
    head.draft_batch(corpus.inputs(head, plan))
    assert counter.remove() == per_step
    if per_step == 1:  # the float64 logits agree with one row at a time to 1e-10
        batch = make().draft_logits_batch(corpus.inputs(head, plan))
        one = make()
        for inp, got in zip(corpus.inputs(head, plan), batch):
            want = one.draft_logits(inp.tokens, inp.taps, inp.round_index, inp.depth, inp.row)
            torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_eagle_drafts_all_rows_in_one_forward_per_depth(target, draft_lm):
    make = factories(target, draft_lm)["eagle"]
    corpus = Corpus(target, 3)
    plan = [(0, 0, 5, 0), (1, 1, 12, 0), (2, 2, 8, 0)]
    inputs = [replace(inp, depth=4, budget=20) for inp in corpus.inputs(make(), plan)]
    head = make()
    counter = ForwardCounter(head.net)
    outs = head.draft_batch(inputs)
    assert counter.remove() == 4 and all(o.forwards == 4 for o in outs)  # context + 3 deeper levels, all rows
    # The float64 internals: the roots and one expansion agree with one row at a time to 1e-10.
    from jetspec.drafters.eagle_drafting import DraftingTree, expand_batch

    batch, one = make(), make()
    synced = batch._sync_contexts(inputs)
    trees, alone_trees = [], []
    for inp, (root, cache) in zip(inputs, synced):
        want_root, want_cache = one._sync_context(inp.tokens, inp.taps, inp.round_index, inp.row)
        torch.testing.assert_close(root, want_root, rtol=0, atol=1e-10)
        for (k, v), (k1, v1) in zip(cache.kv, want_cache.kv):
            torch.testing.assert_close((k, v), (k1, v1), rtol=0, atol=1e-10)
        trees.append(DraftingTree(batch, root, inp.tokens.shape[0] - 1, cache))
        alone_trees.append(DraftingTree(one, want_root, inp.tokens.shape[0] - 1, want_cache))
    frontiers = [t.offer(-1, t.root_logq, 2) for t in trees]
    for t in alone_trees:
        t.offer(-1, t.root_logq, 2)
    for got, t, f in zip(expand_batch(trees, frontiers), alone_trees, frontiers):
        torch.testing.assert_close(got, t.expand(f), rtol=0, atol=1e-10)


def test_reset_cache_forgets_every_row(target, draft_lm):
    make = factories(target, draft_lm)["jetspec"]
    corpus = Corpus(target, 2)
    head = make()
    head.draft_batch(corpus.inputs(head, [(0, 0, 5, 0), (1, 1, 7, 0)]))
    assert head.context_cache(0).length == 4 and head.context_cache(1).length == 6
    head.reset_cache()
    assert head.context_cache(0).length == 0 and head.context_cache(1).length == 0


# ------------------------------------------------------------------------------ end to end, batch 1
@pytest.mark.parametrize("name", ["jetspec", "dflash", "eagle", "jetspec-conditioned", "composite"])
def test_batch_one_decoding_is_plain_greedy_decoding(target, draft_lm, name):
    drafter = factories(target, draft_lm)[name]()
    prompt = torch.randint(1, VOCAB, (1, 6), generator=torch.Generator().manual_seed(0))  # no 0: the pad id
    want = target.generate(prompt, max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0)
    res = SpeculativeDecoder(target, drafter, BestFirstBuilder(budget=8, width=2, depth=4)).generate(prompt, 16)
    assert torch.equal(res.sequences, want)
    assert jetspec.DraftInput(tokens=prompt[0], depth=1, width=1, budget=1).row == 0


def test_draft_lm_drafts_all_rows_in_one_forward_per_depth(target, draft_lm):
    from jetspec.core.sampling import SamplingConfig, TorchRng

    corpus = Corpus(target, 4)
    plan = [(0, 0, 5, 0), (1, 1, 12, 0), (2, 2, 1, 0)]
    for greedy in (True, False):
        def inputs(drafter):
            out = corpus.inputs(drafter, plan)
            if greedy:
                return out
            return [replace(inp, sampling=SamplingConfig(temperature=0.8, top_k=20),
                            rng=TorchRng(torch.Generator().manual_seed(inp.row))) for inp in out]

        drafter = DraftModelDrafter(draft_lm)
        counter = ForwardCounter(draft_lm)
        got = drafter.draft_batch(inputs(drafter))
        assert counter.remove() == 4  # depths 3, 4, 3 (row % 2): 4 forwards for all rows
        alone_drafter = DraftModelDrafter(draft_lm)
        for inp, out in zip(inputs(alone_drafter), got):
            assert_same(out, alone_drafter.draft(inp), f"greedy={greedy} row {inp.row}")
        # A second round extends each row's own cache (only the new tokens are fed).
        plan2 = [(0, 0, 7, 1), (1, 1, 13, 1), (2, 2, 4, 1)]
        again = drafter.draft_batch(corpus.inputs(drafter, plan2))
        fresh = DraftModelDrafter(draft_lm)
        for inp, out in zip(corpus.inputs(fresh, plan2), again):
            assert_same(out, fresh.draft(inp), f"round 2 row {inp.row}")
        assert [len(drafter.lms[r].tokens) for r in range(3)] == [7 + 2, 13 + 3, 4 + 2]


# ------------------------------------------------------------------------------ end to end, batch > 1
@pytest.mark.parametrize("name", ["jetspec", "dflash", "eagle", "jetspec-conditioned", "jetspec-reduced-vocab",
                                  "draft_model", "composite"])
def test_a_batch_decoded_with_a_learned_drafter_equals_hugging_face_on_the_padded_batch(target, draft_lm, name):
    """Rows of different lengths through one batched decoder: each row's drafter state must stay its own."""
    drafter = factories(target, draft_lm)[name]()
    g = torch.Generator().manual_seed(3)
    lengths = (3, 9, 6)
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, n in enumerate(lengths):
        ids[r, -n:], mask[r, -n:] = torch.randint(1, VOCAB, (n,), generator=g), 1  # no 0: the pad id
    want = target.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False, eos_token_id=None,
                           pad_token_id=0)
    dec = SpeculativeDecoder(target, drafter, BestFirstBuilder(budget=8, width=2, depth=4))
    res = dec.generate(ids, max_new_tokens=20, attention_mask=mask, pad_token_id=0)
    assert torch.equal(res.sequences, want), name
    assert len(res.rows) == len(lengths)
