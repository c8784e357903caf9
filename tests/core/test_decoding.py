"""Greedy losslessness, KV compaction and input validation of the decoding loop (docs/design.md §1).

Equality runs in float64 on random tiny Llama and Qwen3 targets, where argmax ties are practically
impossible, against Hugging Face ``generate(do_sample=False)`` as the independent reference.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_model
from hypothesis import given
from hypothesis import strategies as st

from jetspec import SpeculativeDecoder, autoregressive_generate
from jetspec.drafters import DraftModelDrafter, NGramDrafter, OracleDrafter, RandomDrafter
from jetspec.trees import BestFirstBuilder, ChainBuilder, EntropyBuilder, FanoutCapBuilder, HybridBuilder
from jetspec.verifiers import GreedyVerifier, SamplingVerifier

VOCAB = 64
TARGETS = {"llama": tiny_model("llama", seed=0), "qwen3": tiny_model("qwen3", seed=1)}
DRAFT_LM = tiny_model("llama", seed=5, hidden=16, layers=1, heads=2, kv_heads=1)


def hf_greedy(model, ids, n):
    # An explicit all-ones mask: HF would otherwise mask prompt tokens equal to pad_token_id.
    return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                          eos_token_id=None, pad_token_id=0)


def repetitive_prompt(seed: int, length: int) -> torch.Tensor:
    """Prompts with repeats, so the n-gram drafter finds matches and trees get accepted paths."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(0, VOCAB, (max(2, length // 3),), generator=g)
    return torch.cat([base, base, torch.randint(0, VOCAB, (length,), generator=g)])[:length][None]


def all_drafters(model):
    return [RandomDrafter(VOCAB, seed=1), OracleDrafter(model), NGramDrafter(), DraftModelDrafter(DRAFT_LM)]


@given(family=st.sampled_from(sorted(TARGETS)), seed=st.integers(0, 10_000), length=st.integers(1, 24),
       budget=st.integers(1, 24), width=st.integers(1, 4), depth=st.integers(1, 6), n=st.integers(1, 20),
       node_cost=st.sampled_from([0.0, 0.02, 0.3]))
def test_greedy_output_equals_hugging_face(family, seed, length, budget, width, depth, n, node_cost):
    model = TARGETS[family]
    ids = repetitive_prompt(seed, length)
    ref = hf_greedy(model, ids, n)
    for drafter in all_drafters(model):
        for builder in (ChainBuilder(depth, node_cost), BestFirstBuilder(budget, width, depth, node_cost),
                        FanoutCapBuilder(budget, width, depth, node_cost=node_cost),
                        EntropyBuilder(budget, width, depth), HybridBuilder(budget, width, depth, node_cost)):
            res = SpeculativeDecoder(model, drafter, builder).generate(ids, max_new_tokens=n)
            assert torch.equal(res.sequences, ref), f"{type(drafter).__name__} + {builder}"
            assert sum(res.accepted_lengths) == n
            assert all(a >= 1 for a in res.accepted_lengths)


@pytest.mark.parametrize("family", sorted(TARGETS))
def test_autoregressive_baseline_equals_hugging_face(family):
    model = TARGETS[family]
    ids = repetitive_prompt(3, 10)
    res = autoregressive_generate(model, ids, 30)
    assert torch.equal(res.sequences, hf_greedy(model, ids, 30))
    assert res.tau == 1.0


@pytest.mark.parametrize("builder", [ChainBuilder(5), BestFirstBuilder(8, 1, 5)])
def test_oracle_is_accepted_in_full(llama64, builder):
    ids = repetitive_prompt(4, 8)
    res = SpeculativeDecoder(llama64, OracleDrafter(llama64), builder).generate(ids, max_new_tokens=36)
    assert res.accepted_lengths == [6] * 6  # 5 drafts + the bonus, every round
    assert res.tau == 6.0


def test_sampling_verifier_at_temperature_zero_is_greedy(llama64):
    ids = repetitive_prompt(5, 12)
    dec = SpeculativeDecoder(llama64, NGramDrafter(), BestFirstBuilder(12, 3, 4), verifier=SamplingVerifier())
    assert torch.equal(dec.generate(ids, 20).sequences, hf_greedy(llama64, ids, 20))


def test_eos_stops_generation(llama64):
    ids = repetitive_prompt(6, 12)
    ref = hf_greedy(llama64, ids, 30)[0, 12:].tolist()
    eos = ref[7]
    first = ref.index(eos)
    res = SpeculativeDecoder(llama64, OracleDrafter(llama64), ChainBuilder(4)).generate(
        ids, max_new_tokens=30, eos_token_id=eos)
    assert res.sequences[0, 12:].tolist() == ref[: first + 1]


@pytest.mark.parametrize("form", [np.int64, np.int32, torch.tensor, lambda e: [np.int64(e)],
                                  lambda e: torch.tensor([e]), lambda e: (e, 0), lambda e: {e}])
def test_eos_given_as_numpy_tensor_or_collection_stops_like_an_int(llama64, form):
    ids = repetitive_prompt(6, 12)
    ref = hf_greedy(llama64, ids, 30)[0, 12:].tolist()
    eos = ref[7]
    want = ref[: ref.index(eos) + 1]
    dec = SpeculativeDecoder(llama64, OracleDrafter(llama64), ChainBuilder(4))
    assert dec.generate(ids, max_new_tokens=30, eos_token_id=form(eos)).sequences[0, 12:].tolist() == want
    got = autoregressive_generate(llama64, ids, 30, eos_token_id=form(eos)).sequences[0, 12:].tolist()
    assert got == want


@pytest.mark.parametrize("eos", [float(7), "7", "72", True, -1, [7, 2.5], [7, "8"], torch.tensor(7.0),
                                 torch.tensor([[7]]), object()])
def test_bad_eos_token_ids_are_refused(llama64, eos):
    """A string used to be split into digits ("72" stopped at 7 and 2), a float raised "not iterable"."""
    with pytest.raises(ValueError, match="eos_token_id"):
        SpeculativeDecoder(llama64, NGramDrafter()).generate(repetitive_prompt(1, 6), 4, eos_token_id=eos)
    with pytest.raises(ValueError, match="eos_token_id"):
        autoregressive_generate(llama64, repetitive_prompt(1, 6), 4, eos_token_id=eos)


class CheckingDecoder(SpeculativeDecoder):
    """Checks after every commit that the compacted cache equals a fresh prefill."""

    checked = 0

    def draft(self, tokens, *args, **kw):
        self._tokens = tokens
        return super().draft(tokens, *args, **kw)

    def commit(self, tree, acc, node_taps):
        out = super().commit(tree, acc, node_taps)
        committed = torch.cat([self._tokens, torch.tensor(acc.draft_tokens, dtype=torch.long)])
        fresh = self.target.model(input_ids=committed[None], use_cache=True).cache
        assert self.target.cache_length == committed.numel()
        for got, ref in zip(self.target.cache.layers, fresh.layers):
            assert torch.allclose(got.keys, ref.keys, atol=1e-10)
            assert torch.allclose(got.values, ref.values, atol=1e-10)
        CheckingDecoder.checked += 1
        return out


@pytest.mark.parametrize("drafter_fn", [lambda m: NGramDrafter(), lambda m: OracleDrafter(m),
                                        lambda m: RandomDrafter(VOCAB)])
@pytest.mark.parametrize("builder", [BestFirstBuilder(16, 3, 5), BestFirstBuilder(2, 2, 2), ChainBuilder(1)])
def test_kv_cache_after_commit_equals_fresh_prefill(qwen64, drafter_fn, builder):
    """Also for 2- and 3-row trees, which the target pads with dummy rows (target.py)."""
    before = CheckingDecoder.checked
    dec = CheckingDecoder(qwen64, drafter_fn(qwen64), builder)
    dec.generate(repetitive_prompt(7, 15), max_new_tokens=25)
    assert CheckingDecoder.checked > before


@pytest.mark.parametrize("num_nodes", [2, 3])
def test_padding_small_trees_changes_no_logit(qwen64, num_nodes):
    from jetspec.core.target import TargetModel
    from jetspec.core.types import DraftTree

    tokens = torch.tensor([5, 9, 11][:num_nodes])
    parents = torch.tensor([-1, 0, 0][:num_nodes])
    tree = DraftTree(tokens=tokens, parents=parents, depth=(parents >= 0).long(), score=torch.zeros(num_nodes))
    outs = []
    for rows in (1, 4):
        target = TargetModel(qwen64, min_rows=rows)
        target.set_taps([0])
        target.prefill(torch.arange(1, 9))
        out = target.verify(tree)
        assert target.cache_length == 7 + (rows if rows > num_nodes else num_nodes)
        target.commit([0, 1], num_nodes)
        assert target.cache_length == 9
        outs.append((out, [layer.keys.clone() for layer in target.cache.layers]))
    (a, ka), (b, kb) = outs
    assert a.logits.shape == b.logits.shape == (num_nodes, qwen64.config.vocab_size)
    assert torch.allclose(a.logits, b.logits, atol=1e-10) and torch.allclose(a.taps, b.taps, atol=1e-10)
    assert all(torch.allclose(x, y, atol=1e-10) for x, y in zip(ka, kb))
    with pytest.raises(ValueError, match="min_rows"):
        TargetModel(qwen64, min_rows=0)


def test_timings_and_round_records(llama64):
    res = SpeculativeDecoder(llama64, NGramDrafter(), BestFirstBuilder(8, 2, 4)).generate(
        repetitive_prompt(8, 16), max_new_tokens=12)
    assert set(res.timings) == {"prefill", "draft", "tree", "verify", "accept", "commit"}
    assert all(v >= 0 for v in res.timings.values())
    n = len(res.accepted_lengths)
    assert len(res.tree_sizes) == len(res.draft_forwards) == len(res.accepted_depths) == n
    assert all(0 <= r <= 1 for r in res.depth_acceptance())


def test_commit_is_its_own_stage(llama64):
    from jetspec.core.generation import STAGES

    assert STAGES == ("draft", "tree", "verify", "accept", "commit")
    res = autoregressive_generate(llama64, repetitive_prompt(3, 8), max_new_tokens=4)
    assert "commit" in res.timings


class _FailingDrafter(NGramDrafter):
    """Raises in its second round, after the target cache holds the prompt and one round."""

    def draft(self, inp):
        if inp.round_index == 1:
            raise RuntimeError("drafter failed")
        return super().draft(inp)


def test_a_drafter_that_raises_leaves_the_target_reset(llama64):
    from jetspec.core.target import TargetModel

    target = TargetModel(llama64)
    dec = SpeculativeDecoder(target, _FailingDrafter(), BestFirstBuilder(8, 2, 4))
    with pytest.raises(RuntimeError, match="drafter failed"):
        dec.generate(repetitive_prompt(8, 16), max_new_tokens=12)
    assert target.cache_length == 0 and target.cache is None
    # The same decoder generates afterwards exactly like a fresh one.
    ids = repetitive_prompt(9, 16)
    again = SpeculativeDecoder(target, NGramDrafter(), BestFirstBuilder(8, 2, 4)).generate(ids, max_new_tokens=8)
    assert torch.equal(again.sequences, autoregressive_generate(llama64, ids, 8).sequences)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("ids, kw, match", [
    (torch.zeros(2, 4, dtype=torch.long), dict(eos_token_id=3), "pad_token_id"),  # batches: tests/core/test_batched.py
    (torch.zeros(1, 0, dtype=torch.long), {}, "empty"),
    (torch.zeros(1, 4, dtype=torch.long), dict(max_new_tokens=0), "max_new_tokens"),
    (torch.zeros(1, 4, dtype=torch.long), dict(temperature=-1.0), "temperature"),
    (torch.zeros(1, 4, dtype=torch.long), dict(temperature=1.0, top_p=0.0), "top_p"),
    (torch.zeros(1, 4, dtype=torch.long), dict(temperature=1.0, top_k=0), "top_k"),
    (torch.zeros(1, 4), {}, "LongTensor"),
])
def test_generate_rejects_bad_input(llama64, ids, kw, match):
    dec = SpeculativeDecoder(llama64, NGramDrafter())
    with pytest.raises(ValueError, match=match):
        dec.generate(ids, **kw)


def test_greedy_verifier_refuses_temperature(llama64):
    dec = SpeculativeDecoder(llama64, NGramDrafter(), verifier=GreedyVerifier())
    with pytest.raises(ValueError, match="temperature"):
        dec.generate(torch.zeros(1, 4, dtype=torch.long), temperature=0.8)


def test_vocab_mismatch_is_refused(llama64):
    with pytest.raises(ValueError, match="vocabulary"):
        SpeculativeDecoder(llama64, RandomDrafter(VOCAB + 1))


def test_depth_beyond_the_drafter_is_refused(llama64):
    drafter = RandomDrafter(VOCAB)
    drafter.max_depth = 3
    with pytest.raises(ValueError, match="depth"):
        SpeculativeDecoder(llama64, drafter, ChainBuilder(4))


def test_non_drafter_is_refused(llama64):
    with pytest.raises(TypeError, match="Drafter"):
        SpeculativeDecoder(llama64, object())
