"""Reduced draft vocabulary and the direct path: choice of ids, mapping, losses, losslessness, persistence.

Tiny float64 targets (tests/conftest.py): V = 64, so a draft vocabulary of 16-24 ids leaves most
tokens undraftable, which is exactly the case the mapping and the losses must get right.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model

from jetspec import SpeculativeDecoder
from jetspec.core.target import Teacher
from jetspec.drafters import DFlashHead, JetSpecHead, ParallelHead
from jetspec.drafters.draft_vocab import DraftVocabulary, coverage, frequent_tokens, token_counts
from jetspec.training.data import Example
from jetspec.training.recipe import TrainConfig, slot_losses, topk_forward_kl
from jetspec.trees import BestFirstBuilder, ChainBuilder

HEADS = [JetSpecHead, DFlashHead]


@pytest.fixture(scope="module")
def target():
    return tiny_model("qwen3", seed=1)


def record_drafted_tokens(head) -> set[int]:
    """Wrap ``head.draft``; the returned set fills with every token the head proposes."""
    drafted: set[int] = set()
    original = head.draft

    def spy(inp):
        out = original(inp)  # a per-depth table, or a candidate tree (conditioned drafting)
        tokens = out.depth_tokens if out.depth_tokens is not None else out.node_tokens
        drafted.update(tokens.flatten().tolist())
        return out

    head.draft = spy
    return drafted


# ------------------------------------------------------------------------------ choosing the ids
def test_token_counts_count_only_response_tokens():
    seqs = [Example([5, 5, 6, 7, 7, 7], response_start=3), {"input_ids": [1, 2, 7], "response_start": 2}, [9, 9]]
    counts = token_counts(seqs, 10)
    # Responses: [7, 7, 7], [7] and, for a plain list, everything after position 0: [9].
    assert counts.tolist() == [0, 0, 0, 0, 0, 0, 0, 4, 0, 1]
    with pytest.raises(ValueError, match="outside"):
        token_counts([[0, 12]], 10)


def test_frequent_tokens_order_ties_and_always():
    counts = torch.tensor([3, 0, 5, 5, 1, 0, 2])
    assert frequent_tokens(counts, 3).tolist() == [0, 2, 3]  # 5, 5, then 3
    assert frequent_tokens(counts, 4).tolist() == [0, 2, 3, 6]
    assert frequent_tokens(counts, 3, always=[5]).tolist() == [2, 3, 5]  # 5 forced in, ties by id
    assert coverage(counts, torch.tensor([2, 3])) == pytest.approx(10 / 16)
    for bad in (0, 8):
        with pytest.raises(ValueError, match="size"):
            frequent_tokens(counts, bad)
    with pytest.raises(ValueError, match="always"):
        frequent_tokens(counts, 1, always=[1, 2])


def test_vocabulary_mapping_and_errors():
    v = DraftVocabulary(torch.tensor([9, 2, 5]), 12)
    assert v.ids.tolist() == [2, 5, 9] and v.size == 3
    assert v.to_target(torch.tensor([[0, 2]])).tolist() == [[2, 9]]
    assert v.from_target(torch.tensor([5, 6, 9])).tolist() == [1, -1, 2]
    for ids in ([1, 1], [0, 12], [-1], []):
        with pytest.raises(ValueError):
            DraftVocabulary(torch.tensor(ids, dtype=torch.long), 12)


# ------------------------------------------------------------------------------ the head
def test_head_scores_exactly_the_chosen_rows_of_the_target_lm_head(target):
    ids = torch.tensor([3, 11, 17, 40, 63])
    head = JetSpecHead(target, block_size=4, draft_vocab=ids)
    hidden = torch.randn(6, 32, dtype=torch.float64)
    full = F.linear(hidden, target.get_output_embeddings().weight)
    torch.testing.assert_close(head.lm_head(hidden), full[:, ids], rtol=0, atol=1e-12)
    assert head.config.draft_vocab_size == 5 and head.vocab_size == 64  # the decoder still sees V


def test_head_option_errors(target):
    with pytest.raises(ValueError, match="needs the ids"):
        JetSpecHead(target, draft_vocab_size=8)
    with pytest.raises(ValueError, match="within"):
        JetSpecHead(target, draft_vocab=torch.tensor([1, 64]))
    with pytest.raises(ValueError, match="larger than"):
        JetSpecHead(target, draft_vocab_size=65, draft_vocab=torch.arange(65))


@pytest.mark.parametrize("cls", HEADS)
def test_reduced_vocabulary_drafts_only_its_ids_and_stays_lossless(target, cls):
    torch.manual_seed(4)
    ids = torch.randperm(64)[:16]
    head = cls(target, block_size=6, draft_vocab=ids, direct_path=True)
    torch.nn.init.normal_(head.net.direct.weight, std=0.3)
    prompt = torch.randint(0, 64, (1, 6))
    want = target.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=24, do_sample=False,
                           eos_token_id=None, pad_token_id=0)
    drafted = record_drafted_tokens(head)
    for builder in (ChainBuilder(depth=5), BestFirstBuilder(budget=12, width=3, depth=5)):
        res = SpeculativeDecoder(target, head, builder).generate(prompt, max_new_tokens=24)
        assert torch.equal(res.sequences, want), builder
    assert drafted and drafted <= set(ids.tolist())


def test_conditioned_head_with_reduced_vocabulary_is_lossless(target):
    torch.manual_seed(5)
    ids = torch.randperm(64)[:20]
    head = JetSpecHead(target, block_size=5, draft_vocab=ids, conditioned=True, direct_path=True)
    torch.nn.init.normal_(head.net.direct.weight, std=0.3)
    prompt = torch.randint(0, 64, (1, 5))
    want = target.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=16, do_sample=False,
                           eos_token_id=None, pad_token_id=0)
    drafted = record_drafted_tokens(head)
    res = SpeculativeDecoder(target, head, BestFirstBuilder(budget=10, width=3, depth=4)).generate(prompt, 16)
    assert torch.equal(res.sequences, want)
    assert drafted and drafted <= set(ids.tolist())


def test_zero_direct_path_is_the_papers_design(target):
    torch.manual_seed(0)
    plain = JetSpecHead(target, block_size=5)
    direct = JetSpecHead(target, block_size=5, direct_path=True)
    missing = direct.net.load_state_dict(plain.net.state_dict(), strict=False).missing_keys
    assert missing == ["direct.weight"] and float(direct.net.direct.weight.detach().abs().max()) == 0.0
    ids = torch.randint(0, 64, (1, 12))
    taps = Teacher(target, plain.tap_layers)(ids).taps
    anchors = torch.tensor([[0, 4, 9]])
    torch.testing.assert_close(direct(ids, taps, anchors), plain(ids, taps, anchors), rtol=0, atol=0)


def test_save_and_load_keeps_the_vocabulary(target, tmp_path):
    torch.manual_seed(1)
    ids = torch.randperm(64)[:12]
    head = DFlashHead(target, block_size=4, draft_vocab=ids, direct_path=True)
    head.save_pretrained(tmp_path / "h", dtype=torch.float16)
    again = ParallelHead.from_pretrained(tmp_path / "h", target)
    assert again.config == head.config and torch.equal(again.draft_vocab.ids, ids.sort().values)
    tokens = torch.randint(0, 64, (9,))
    taps = Teacher(target, head.tap_layers)(tokens[None]).taps[0, :8]
    torch.testing.assert_close(again.draft_logits(tokens, taps), head.draft_logits(tokens, taps),
                               rtol=0, atol=0.05)


# ------------------------------------------------------------------------------ losses
def test_restricted_topk_kl_is_the_kl_of_the_renormalised_teacher():
    gen = torch.Generator().manual_seed(0)
    vocab = DraftVocabulary(torch.tensor([1, 3, 4, 8]), 10)
    top_values = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    top_indices = torch.tensor([[3, 5, 8], [2, 6, 7]])  # row 1 has nothing inside the vocabulary
    draft = torch.randn(2, 4, generator=gen, dtype=torch.float64)
    data = torch.tensor([4, 0])
    d, _, tv, ti, ok = vocab.restrict_teacher(data, None, top_values, top_indices)
    assert d.tolist() == [2, -1] and ok.tolist() == [True, False]
    kl = topk_forward_kl(tv, ti, draft)
    # Row 0 by hand: teacher renormalised on tokens {3, 8} (draft ids 1, 3), draft over 4 ids.
    p = torch.softmax(top_values[0, [0, 2]], -1)
    logq = torch.log_softmax(draft[0], -1)[[1, 3]]
    assert float(kl[0]) == pytest.approx(float((p * (p.log() - logq)).sum()), abs=1e-12)
    # Full-logit teacher: gathered on the ids, so the KL is over the draft vocabulary.
    full = torch.randn(2, 10, generator=gen, dtype=torch.float64)
    _, tl, _, _, _ = vocab.restrict_teacher(data, full)
    got = slot_losses(TrainConfig(), draft, d, teacher_logits=tl)
    want = F.kl_div(torch.log_softmax(draft, -1), torch.log_softmax(full[:, [1, 3, 4, 8]], -1), log_target=True,
                    reduction="none").sum(-1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    ce = slot_losses(TrainConfig(loss="ce"), draft, d)
    assert float(ce[1]) == 0.0 and float(ce[0]) == pytest.approx(-float(torch.log_softmax(draft[0], -1)[2]))


def test_training_metrics_report_target_ids(target):
    from jetspec.training.data import collate

    torch.manual_seed(2)
    ids = torch.randperm(64)[:16]
    head = JetSpecHead(target, block_size=4, draft_vocab=ids, anchors_per_seq=5)
    items = [{"input_ids": torch.randint(0, 64, (14,)), "response_start": 2, "index": i} for i in range(2)]
    sb = head.slot_batch(collate(items), epoch=0)
    got = sb.draft_top1[sb.ok]
    # Unmapped draft indices would lie in 0..15, and most of those are not among the 16 random ids.
    assert got.numel() > 0 and set(got.tolist()) <= set(ids.tolist())
    assert not set(range(16)) <= set(ids.tolist())


@pytest.mark.parametrize("loss,topk", [("kl", None), ("kl", 8), ("ce", None)])
def test_training_with_a_reduced_vocabulary(target, loss, topk):
    import lightning as L

    from jetspec.training.data import TokenDataModule

    torch.manual_seed(0)
    seqs = [torch.randint(0, 64, (20,)).tolist() for _ in range(8)]
    ids = frequent_tokens(token_counts(seqs, 64), 16)
    head = JetSpecHead(target, block_size=4, draft_vocab=ids, direct_path=True, loss=loss, kl_topk=topk,
                       anchors_per_seq=4, lr=1e-2, warmup_steps=0)
    before = {k: v.clone() for k, v in head.net.state_dict().items()}
    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(head, datamodule=TokenDataModule(seqs, batch_size=4))
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    after = head.net.state_dict()
    assert torch.equal(after["vocab.ids"], before["vocab.ids"])  # a buffer, never trained
    assert not torch.equal(after["direct.weight"], before["direct.weight"])  # the direct path learns


def test_sliced_weight_follows_loaded_ids_and_invalidate():
    # The sliced lm_head weight is cached by tensor identity; loading new ids in place and editing
    # the weight in place (then invalidate()) must both be seen.
    lm_head = torch.nn.Linear(8, 10, bias=False)
    vocab = DraftVocabulary(torch.tensor([1, 3, 4, 8]), 10)
    hidden = torch.randn(2, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        vocab.logits(hidden, lm_head)
        vocab.load_state_dict({"ids": torch.tensor([0, 2, 5, 9])})
        got = vocab.logits(hidden, lm_head)
        torch.testing.assert_close(got, hidden @ lm_head.weight[[0, 2, 5, 9]].T)
        lm_head.weight.mul_(2.0)
        vocab.invalidate()
        torch.testing.assert_close(vocab.logits(hidden, lm_head), 2 * got)
