"""Batched decoding is lossless per row (docs/design.md §1.6 and §6.9).

* Greedy (float64 tiny Llama and Qwen3, both engines): every row of a left-padded batch equals
  Hugging Face ``generate`` on the same padded batch AND the row's prompt decoded alone, for every
  drafter x builder of the batch-1 matrix, rows stopping at different rounds (EOS, max_new_tokens).
* Sampling, exact: the joint law of two rows' first two tokens, enumerated over every random
  choice, is the product of the target's processed laws; a loop that shares one draw across rows
  fails the same check.
* The cache after every commit: each running row's valid columns equal a fresh prefill of its
  committed tokens, and each row's taps equal the target's hidden states of those tokens.
"""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import tiny_model
from hypothesis import given
from hypothesis import strategies as st

from jetspec import SpeculativeDecoder, TargetModel, autoregressive_generate
from jetspec.core.batched import BatchedRounds, autoregressive_batch, generate_batch, left_pad
from jetspec.core.generation import GenerationResult
from jetspec.core.interfaces import Drafter
from jetspec.core.sampling import Rng, SamplingConfig, TorchRng, process_logits
from jetspec.core.target import capture_taps
from jetspec.drafters import CompositeDrafter, DraftModelDrafter, NGramDrafter, OracleDrafter, RandomDrafter
from jetspec.testing.exact import enumerate_law
from jetspec.trees import BestFirstBuilder, ChainBuilder, FanoutCapBuilder
from jetspec.verifiers import GreedyVerifier, SamplingVerifier

VOCAB = 64
PAD = 0
MODELS = {"llama": tiny_model("llama", seed=0), "qwen3": tiny_model("qwen3", seed=1)}
DRAFT_LM = tiny_model("llama", seed=5, hidden=16, layers=1, heads=2, kv_heads=1)


@functools.lru_cache(maxsize=None)
def target(family: str, engine: str) -> TargetModel:
    return TargetModel(MODELS[family], engine=engine)


def padded_batch(prompts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return left_pad(prompts, PAD)


def repetitive(seed: int, length: int) -> torch.Tensor:
    """A prompt with repeats (the n-gram drafter then finds matches), ids 1.. (never PAD)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(1, VOCAB, (max(2, length // 3),), generator=g)
    return torch.cat([base, base, torch.randint(1, VOCAB, (length,), generator=g)])[:length]


def hf(model, ids, mask, n, eos=None):
    return model.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False, eos_token_id=eos,
                          pad_token_id=PAD)


def all_drafters(model):
    """The batch-1 greedy matrix's drafters (tests/core/test_decoding.py) plus a composite of two."""
    return [RandomDrafter(VOCAB, seed=1), OracleDrafter(model), NGramDrafter(), DraftModelDrafter(DRAFT_LM),
            CompositeDrafter([NGramDrafter(), RandomDrafter(VOCAB, seed=2)])]


def builders(budget, width, depth, node_cost):
    return [ChainBuilder(depth, node_cost), BestFirstBuilder(budget, width, depth, node_cost),
            FanoutCapBuilder(budget, width, depth, node_cost=node_cost)]


# --------------------------------------------------------------------------- greedy
@given(family=st.sampled_from(sorted(MODELS)), engine=st.sampled_from(["fast", "hf"]), seed=st.integers(0, 10_000),
       lengths=st.lists(st.integers(1, 16), min_size=2, max_size=3), budget=st.integers(1, 16),
       width=st.integers(1, 3), depth=st.integers(1, 5), n=st.integers(1, 14),
       node_cost=st.sampled_from([0.0, 0.3]), eos_at=st.one_of(st.none(), st.integers(0, 13)))
def test_greedy_rows_equal_hugging_face_batch_and_alone(family, engine, seed, lengths, budget, width, depth, n,
                                                        node_cost, eos_at):
    model = MODELS[family]
    prompts = [repetitive(seed + r, t) for r, t in enumerate(lengths)]
    ids, mask = padded_batch(prompts)
    alone = [hf(model, p[None], torch.ones(1, p.numel(), dtype=torch.long), n)[0, p.numel():] for p in prompts]
    # EOS: a token row 0 writes at step eos_at, so row 0 stops early and the others maybe elsewhere
    eos = None if eos_at is None or eos_at >= n else int(alone[0][eos_at])
    ref = hf(model, ids, mask, n, eos)
    tgt = target(family, engine)
    for drafter in all_drafters(model):
        for builder in builders(budget, width, depth, node_cost):
            res = SpeculativeDecoder(tgt, drafter, builder).generate(
                ids, max_new_tokens=n, attention_mask=mask, eos_token_id=eos, pad_token_id=PAD)
            what = f"{type(drafter).__name__} + {builder} on {engine}"
            assert torch.equal(res.sequences, ref), what
            for r, (p, row) in enumerate(zip(prompts, res.rows)):
                new = row.sequences[0, p.numel():]
                stop = alone[r].tolist().index(eos) + 1 if eos in alone[r].tolist() else n
                assert torch.equal(row.sequences[0, : p.numel()], p), what
                assert torch.equal(new, alone[r][:stop]), what  # the row decoded alone
                assert sum(row.accepted_lengths) == stop and all(a >= 1 for a in row.accepted_lengths)
            assert res.num_new_tokens == sum(sum(row.accepted_lengths) for row in res.rows)


@pytest.mark.parametrize("engine", ["fast", "hf"])
@pytest.mark.parametrize("family", sorted(MODELS))
def test_plain_batch_equals_hugging_face(family, engine):
    model = MODELS[family]
    prompts = [repetitive(1, 9), repetitive(2, 3), repetitive(3, 1)]
    ids, mask = padded_batch(prompts)
    ref = hf(model, ids, mask, 20)
    eos = int(ref[1, ids.shape[1] + 4])  # row 1 stops after 5 tokens; the others maybe later
    res = autoregressive_generate(target(family, engine), ids, 20, attention_mask=mask)
    assert torch.equal(res.sequences, ref)
    assert res.rows_per_round == [3] * 20 and res.tau == 1.0
    res = autoregressive_generate(target(family, engine), ids, 20, attention_mask=mask, eos_token_id=eos,
                                  pad_token_id=PAD)
    assert torch.equal(res.sequences, hf(model, ids, mask, 20, eos))
    assert res.rows_per_round[-1] < 3  # the row that stopped left the batch


def test_attention_backend_torch_on_a_batch(llama64):
    """Batched masks are not tree-shaped for the whole batch: the backend falls back to exact masked attention."""
    prompts = [repetitive(4, 7), repetitive(5, 2)]
    ids, mask = padded_batch(prompts)
    tgt = TargetModel(llama64, attn_backend="torch", engine="hf")
    res = SpeculativeDecoder(tgt, NGramDrafter(), BestFirstBuilder(8, 2, 3)).generate(ids, 12, attention_mask=mask)
    assert torch.equal(res.sequences, hf(llama64, ids, mask, 12))


def test_one_padded_prompt_equals_the_prompt_alone(llama64):
    p = repetitive(6, 8)
    ids, mask = padded_batch([p, repetitive(7, 11)])
    dec = SpeculativeDecoder(llama64, NGramDrafter(), BestFirstBuilder(8, 2, 3))
    res = dec.generate(ids[:1], 10, attention_mask=mask[:1])  # B = 1 but padded: the batched loop
    single = dec.generate(p[None], 10)
    assert torch.equal(res.sequences, torch.cat([ids[:1], single.sequences[:, p.numel():]], dim=1))
    assert res.rows[0].accepted_lengths == single.accepted_lengths == single.rows[0].accepted_lengths
    assert single.rows_per_round == [1] * len(single.accepted_lengths)


def test_per_row_statistics_pool_into_the_result(llama64):
    prompts = [repetitive(8, 12), torch.arange(1, 13)]
    ids, mask = padded_batch(prompts)
    res = SpeculativeDecoder(llama64, OracleDrafter(llama64), ChainBuilder(3)).generate(ids, 12, attention_mask=mask)
    assert [r.accepted_lengths for r in res.rows] == [[4, 4, 4], [4, 4, 4]]  # the oracle is accepted in full
    assert res.accepted_lengths == [4] * 6 and res.tau == 4.0 and res.rows[0].tau == 4.0
    assert res.rows_per_round == [2, 2, 2]
    assert set(res.timings) == {"prefill", "draft", "tree", "verify", "accept", "commit"}
    assert all(len(r.tree_sizes) == len(r.accepted_depths) == len(r.draft_forwards) == 3 for r in res.rows)
    assert res.depth_acceptance() == [1.0, 1.0, 1.0]


# --------------------------------------------------------------------------- the cache after every commit
class TapChecker(Drafter):
    """An n-gram drafter that asks for taps and checks them against the target's own hidden states."""

    tap_layers = (0, 1)

    def __init__(self, model) -> None:
        self.model, self.inner, self.checked = model, NGramDrafter(), 0

    def draft(self, inp):
        ctx = inp.tokens[:-1]
        assert inp.taps.shape == (ctx.numel(), 2 * self.model.config.hidden_size)
        if ctx.numel():
            with capture_taps(self.model, self.tap_layers) as got:
                self.model(input_ids=ctx[None])
            torch.testing.assert_close(inp.taps, torch.cat([got[0][0], got[1][0]], -1), atol=1e-10, rtol=0)
        self.checked += 1
        return self.inner.draft(inp)


class CheckingRounds(BatchedRounds):
    """After every commit, each running row's cache equals a fresh prefill of its committed tokens."""

    checked = 0

    def commit(self, rows, trees, accs, taps, max_new_tokens, eos):
        running = super().commit(rows, trees, accs, taps, max_new_tokens, eos)
        model = self.dec.target.model
        for r in running:
            ctx = rows[r].tokens[:-1]  # the anchor is not cached
            fresh = model(input_ids=ctx[None], use_cache=True).cache
            got = self.target.row_cache(r)
            assert int(self.target.pos[r]) == ctx.numel() and len(got) == len(fresh.layers)
            for a, b in zip(got, fresh.layers):
                torch.testing.assert_close(a.keys, b.keys, atol=1e-10, rtol=0)
                torch.testing.assert_close(a.values, b.values, atol=1e-10, rtol=0)
            CheckingRounds.checked += 1
        return running


@pytest.mark.parametrize("engine", ["fast", "hf"])
@pytest.mark.parametrize("builder", [BestFirstBuilder(12, 3, 4), BestFirstBuilder(2, 2, 2), ChainBuilder(1)])
def test_cache_after_every_commit_equals_a_fresh_prefill(qwen64, engine, builder):
    before = CheckingRounds.checked
    model = qwen64
    ids, mask = padded_batch([repetitive(9, 14), repetitive(10, 5), torch.tensor([7])])
    drafter = TapChecker(model)
    dec = SpeculativeDecoder(TargetModel(model, engine=engine), drafter, builder)
    res = generate_batch(dec, ids, mask, 16, SamplingConfig(), GreedyVerifier(), TorchRng(), None, None,
                         rounds=CheckingRounds)
    assert torch.equal(res.sequences, hf(model, ids, mask, 16))
    assert CheckingRounds.checked > before + 3 and drafter.checked > 3


# --------------------------------------------------------------------------- sampling, exact
SMALL_VOCAB = 4
SMALL = tiny_model("llama", seed=11, vocab=SMALL_VOCAB, hidden=16, layers=1, heads=2, kv_heads=1)
with torch.no_grad():  # a random tiny model is nearly uniform; sharpen it so wrong laws stand out
    SMALL.lm_head.weight.mul_(8.0)
SMALL_DRAFT = tiny_model("llama", seed=12, vocab=SMALL_VOCAB, hidden=16, layers=1, heads=2, kv_heads=1)
SAMPLING_PROMPTS = [torch.tensor([1, 2, 3, 1, 2]), torch.tensor([3, 0])]
SETTINGS = {"t1": SamplingConfig(1.0), "topk": SamplingConfig(0.8, top_k=2), "topp": SamplingConfig(1.2, top_p=0.7)}


def target_law(prompt: torch.Tensor, cfg: SamplingConfig) -> dict:
    """The exact law of the first two tokens of plain sampling from SMALL: p(a) p(b | a)."""
    law = {}
    with torch.no_grad():
        p1 = process_logits(SMALL(prompt[None]).logits[0, -1], cfg)
        for a in range(SMALL_VOCAB):
            if p1[a] > 0:
                p2 = process_logits(SMALL(torch.cat([prompt, torch.tensor([a])])[None]).logits[0, -1], cfg)
                law.update({(a, b): float(p1[a] * p2[b]) for b in range(SMALL_VOCAB) if p2[b] > 0})
    return law


def law_gap(run, cfg: SamplingConfig) -> float:
    """max |enumerated joint law of both rows' first two tokens - product of the target laws|."""
    ids, mask = padded_batch(SAMPLING_PROMPTS)
    got = enumerate_law(lambda rng: tuple(tuple(r) for r in run(ids, mask, rng).sequences[:, -2:].tolist()))
    laws = [target_law(p, cfg) for p in SAMPLING_PROMPTS]
    want = {(a, b): pa * pb for a, pa in laws[0].items() for b, pb in laws[1].items()}
    assert abs(sum(got.values()) - 1) < 1e-9
    return max(abs(got.get(k, 0.0) - want.get(k, 0.0)) for k in set(got) | set(want))


class SharedDrawRounds(BatchedRounds):
    """WRONG on purpose: every row of a round replays row 0's draws (correlated rows)."""

    def accept(self, trees, logits):
        draws: list[int] = []
        base = self.rng

        class Replay(Rng):
            def __init__(self, record: bool) -> None:
                self.record, self.i = record, 0

            def categorical(self, probs):
                if not self.record and self.i < len(draws) and probs[draws[self.i]] > 0:
                    self.i += 1
                    return draws[self.i - 1]
                x = base.categorical(probs)
                if self.record:
                    draws.append(x)
                return x

            def bernoulli(self, prob):
                return base.bernoulli(prob)

        accs = []
        for r, tree in enumerate(trees):
            self.rng = Replay(record=r == 0)
            accs.extend(super().accept([tree], logits[r: r + 1]))
        self.rng = base
        return accs


SMALL_TARGET = TargetModel(SMALL)  # wrapped once: the enumeration reruns generate a few hundred times
DRAFTERS = {  # fresh per run: the random drafter's generator must restart with every enumerated run
    "ngram": lambda: (NGramDrafter(max_ngram=2), BestFirstBuilder(4, 2, 2)),
    "draft-model-q": lambda: (DraftModelDrafter(SMALL_DRAFT), ChainBuilder(1)),
    "random": lambda: (RandomDrafter(SMALL_VOCAB, seed=3), ChainBuilder(1)),
}


def speculative(case: str, cfg: SamplingConfig, rounds: type = BatchedRounds):
    def run(ids, mask, rng):
        drafter, builder = DRAFTERS[case]()
        dec = SpeculativeDecoder(SMALL_TARGET, drafter, builder)
        return generate_batch(dec, ids, mask, 2, cfg, SamplingVerifier(), rng, None, None, rounds=rounds)
    return run


# Each drafter family meets a processor; enumeration cost grows with the options per draw, so the
# sampled-draft case runs at top-k 2.
@pytest.mark.parametrize("case, setting", [("ngram", "topk"), ("ngram", "topp"), ("draft-model-q", "topk"),
                                           ("random", "topk")])
def test_each_row_samples_the_target_law_independently(case, setting):
    cfg = SETTINGS[setting]
    assert law_gap(speculative(case, cfg), cfg) < 1e-9


def test_plain_batch_samples_the_target_law_independently():
    cfg = SETTINGS["t1"]
    run = lambda ids, mask, rng: autoregressive_batch(SMALL_TARGET, ids, mask, 2, cfg, [rng] * 2, None, None)  # noqa: E731
    assert law_gap(run, cfg) < 1e-9


def test_rows_that_share_a_draw_are_caught():
    cfg = SETTINGS["topk"]
    assert law_gap(speculative("ngram", cfg, SharedDrawRounds), cfg) > 1e-2


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("mask, kw, match", [
    (torch.tensor([[1, 1, 1], [0, 2, 1]]), {}, "attention_mask row 1 holds values other than 0 and 1"),
    (torch.tensor([[1, 1, 1], [0, 0, 0]]), {}, "attention_mask row 1 masks every token"),
    (torch.tensor([[1, 1, 0], [1, 1, 1]]), {}, "attention_mask row 0 is not left-padded"),
    (torch.ones(2, 4, dtype=torch.long), {}, r"attention_mask must be a tensor of input_ids' shape \(2, 3\)"),
    (torch.ones(2, 3), {}, "attention_mask must hold 0 and 1"),
    (None, dict(eos_token_id=5), "pad_token_id is required"),
    (None, dict(eos_token_id=5, pad_token_id=-1), "pad_token_id must be a token id"),
    (None, dict(max_new_tokens=0), "max_new_tokens"),
])
def test_bad_batch_arguments_are_refused(llama64, mask, kw, match):
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    kw = {"max_new_tokens": 4, **kw}
    with pytest.raises(ValueError, match=match):
        SpeculativeDecoder(llama64, NGramDrafter()).generate(ids, attention_mask=mask, **kw)
    with pytest.raises(ValueError, match=match):
        autoregressive_generate(llama64, ids, attention_mask=mask, **kw)


def test_left_pad():
    ids, mask = left_pad([[5, 6, 7], torch.tensor([8])], pad_token_id=1)
    assert ids.tolist() == [[5, 6, 7], [1, 1, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="at least one token"):
        left_pad([[5], []], 0)


def test_batch_ids_outside_the_vocabulary_are_refused(llama64):
    with pytest.raises(ValueError, match="input_ids holds token id 64"):
        SpeculativeDecoder(llama64, NGramDrafter()).generate(torch.tensor([[1, 2], [3, 64]]), 4)


def test_a_failing_drafter_leaves_nothing_behind(llama64):
    class Failing(NGramDrafter):
        def draft(self, inp):
            if inp.round_index == 1 and inp.row == 1:
                raise RuntimeError("drafter failed")
            return super().draft(inp)

    tgt = TargetModel(llama64)
    ids, mask = padded_batch([repetitive(11, 6), repetitive(12, 9)])
    with pytest.raises(RuntimeError, match="drafter failed"):
        SpeculativeDecoder(tgt, Failing(), ChainBuilder(2)).generate(ids, 8, attention_mask=mask)
    assert tgt.cache is None
    res = SpeculativeDecoder(tgt, NGramDrafter(), ChainBuilder(2)).generate(ids, 8, attention_mask=mask)
    assert torch.equal(res.sequences, hf(llama64, ids, mask, 8))
    assert isinstance(res, GenerationResult)
