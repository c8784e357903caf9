"""Replay (jetspec.core.replay) reproduces greedy speculative decoding round for round; the tau curve callback.

Float64 tiny targets: no argmax ties, so the target's greedy continuation is unique and replaying
it must give exactly the accepted lengths ``SpeculativeDecoder.generate`` reports.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import tiny_model

from jetspec import SpeculativeDecoder
from jetspec.core.generation import depth_acceptance
from jetspec.core.replay import Reference, accepted_path, make_references, mean_ci, replay, replay_sequence
from jetspec.core.types import DraftTree
from jetspec.drafters import CompositeDrafter, DraftModelDrafter, JetSpecHead, NGramDrafter
from jetspec.trees import BestFirstBuilder, ChainBuilder


@pytest.fixture(scope="module")
def target():
    return tiny_model("llama", seed=0)


def noisy_copy(model, scale: float, seed: int):
    """A draft model that agrees with the target often but not always."""
    other = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale * p.std())
    return other


def test_accepted_path_walks_the_matching_path():
    # root 0 -> 1 (tok 5), 2 (tok 6); 1 -> 3 (tok 7); 2 -> 4 (tok 7)
    tree = DraftTree(tokens=torch.tensor([9, 5, 6, 7, 7]), parents=torch.tensor([-1, 0, 0, 1, 2]),
                     depth=torch.tensor([0, 1, 1, 2, 2]), score=torch.zeros(5))
    assert accepted_path(tree, [6, 7, 1]) == [2, 4]
    assert accepted_path(tree, [5, 8]) == [1]
    assert accepted_path(tree, [1]) == []
    assert accepted_path(tree, []) == []


@pytest.mark.parametrize("kind", ["draft_model", "ngram", "head+draft_model"])
def test_replay_equals_speculative_decoding(target, kind):
    torch.manual_seed(0)
    draft_lm = DraftModelDrafter(noisy_copy(target, 0.3, seed=1))
    drafter = {"draft_model": draft_lm, "ngram": NGramDrafter(),
               "head+draft_model": CompositeDrafter([JetSpecHead(target, block_size=6), draft_lm])}[kind]
    gen = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, 64, (n,), generator=gen).tolist() for n in (3, 8)]
    prompts.append([4, 5, 6, 4, 5, 6, 4, 5])  # something for the n-gram drafter to match
    refs = make_references(target, prompts, max_new_tokens=24, progress=False)
    for builder in (BestFirstBuilder(budget=10, width=3, depth=5, node_cost=0.02), ChainBuilder(depth=4),
                    BestFirstBuilder(budget=10, width=3, depth=5)):
        report = replay(drafter, builder, refs, model=target)
        accepted, depths = [], []
        for ref, got, sizes, acc, tdepth in zip(refs, report.lengths, report.sizes, report.accepted_depths,
                                                report.tree_depths):
            res = SpeculativeDecoder(target, drafter, builder).generate(
                torch.tensor([ref.input_ids[: ref.response_start]]), max_new_tokens=24)
            assert torch.equal(res.sequences[0], torch.tensor(ref.input_ids))
            assert got == res.accepted_lengths, (kind, builder)
            assert sizes == res.tree_sizes  # drafted nodes per round, too
            # the same trees and accepted paths, except that in the last round decoding may accept
            # drafts past max_new_tokens (then cut) that the reference cannot show
            assert tdepth == res.tree_depths and acc[:-1] == res.accepted_depths[:-1]
            assert acc[-1] <= res.accepted_depths[-1]
            accepted += acc
            depths += tdepth
        assert report.depth_acceptance() == depth_acceptance(accepted, depths)
    if kind == "draft_model":  # the test means something only if drafts were accepted
        assert report.pooled_tau() > 1.2


def test_modelled_speedup_is_tokens_over_modelled_cost():
    from jetspec.core.replay import ReplayReport

    rep = ReplayReport(lengths=[[3, 1], [2]], sets=["a", "b"], sizes=[[8, 0], [4]])
    # 6 tokens; cost = 3 rounds * (1 + 0.1) + 0.05 * 12 nodes = 3.9
    assert rep.modelled_speedup(0.05, 0.1) == pytest.approx(6 / 3.9)
    assert rep.modelled_speedup(0.05, 0.1, "a") == pytest.approx(4 / (2 * 1.1 + 0.05 * 8))
    assert rep.modelled_speedup(0.0) == pytest.approx(rep.pooled_tau())


def test_replay_cut_and_errors(target):
    refs = make_references(target, [[1, 2, 3]], max_new_tokens=12, progress=False)
    ids = torch.tensor(refs[0].input_ids)
    lengths = replay_sequence(NGramDrafter(), ChainBuilder(depth=3), ids, 3, max_new_tokens=5)
    assert sum(lengths) == 5
    with pytest.raises(ValueError, match="at least one token"):
        replay_sequence(NGramDrafter(), ChainBuilder(depth=3), ids, ids.shape[0])
    head = JetSpecHead(target, block_size=4)
    with pytest.raises(ValueError, match="taps"):
        replay(head, ChainBuilder(depth=3), refs)


def test_replay_hands_the_drafter_a_copy_and_checks_its_proposal(target):
    """As in generate (jetspec.core.checks.run_drafter): a drafter writing into inp.tokens must not
    rewrite the reference it is replayed along, and a bad proposal names the drafter."""

    class Scribbler(NGramDrafter):
        def draft(self, inp):
            out = super().draft(inp)
            inp.tokens.fill_(0)
            return out

    refs = make_references(target, [[4, 5, 6, 4, 5, 6, 4, 5]], max_new_tokens=12, progress=False)
    ids = torch.tensor(refs[0].input_ids)
    before = ids.clone()
    honest = replay_sequence(NGramDrafter(), ChainBuilder(depth=3), ids, 8)
    assert replay_sequence(Scribbler(), ChainBuilder(depth=3), ids, 8) == honest
    assert torch.equal(ids, before)

    class Nothing(NGramDrafter):
        def draft(self, inp):
            return None

    with pytest.raises(ValueError, match="Nothing returned None"):
        replay_sequence(Nothing(), ChainBuilder(depth=3), ids, 8)


def test_pooled_tau_and_confidence_interval():
    from jetspec.core.replay import ReplayReport

    r = ReplayReport(lengths=[[1, 3], [2, 2, 2]], sets=["a", "b"])
    assert r.taus() == [2.0, 2.0] and r.pooled_tau() == 2.0 and r.pooled_tau("a") == 2.0
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.303 / 3 ** 0.5)  # s = 1, t_{0.975, 2} = 4.303
    assert mean_ci([5.0])[1] != mean_ci([5.0])[1]  # nan: no interval from one value


def test_tau_curve_callback_logs_tokens_time_and_tau(target, tmp_path):
    import lightning as L

    from jetspec.training.callbacks import TauCurve, load_curve
    from jetspec.training.data import TokenDataModule

    torch.manual_seed(0)
    seqs = [torch.randint(0, 64, (16,)).tolist() for _ in range(4)]
    refs = [r.to_row() for r in make_references(target, [[1, 2, 3], [7, 8]], max_new_tokens=10, progress=False)]
    curve = TauCurve(refs, budgets=(4, 8), every_n_steps=2, out_file=str(tmp_path / "curve.jsonl"))
    head = JetSpecHead(target, block_size=4, anchors_per_seq=4)
    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", callbacks=[curve])
    trainer.fit(head, datamodule=TokenDataModule(seqs, batch_size=2))
    rows = load_curve(tmp_path / "curve.jsonl")
    assert [r["step"] for r in rows] == [2, 3]  # every 2 steps, and at the end
    assert [r["tokens_seen"] for r in rows] == [64, 96]  # 2 sequences of 16 tokens per step
    for r in rows:
        assert 1.0 <= r["tau_b4"] and 1.0 <= r["tau_b8"] and r["wall_s"] >= 0
        assert "tau_b4_default" in r
    # The replayed tau is the head's: replaying by hand after training gives the last row.
    again = replay(head, BestFirstBuilder(budget=8, width=4, depth=3), [Reference(**x) for x in refs], model=target)
    assert again.pooled_tau() == pytest.approx(rows[-1]["tau_b8"], abs=1e-4)
    assert json.dumps(curve.state_dict())  # checkpointable
    with pytest.raises(ValueError):
        TauCurve(refs, budgets=(0,))


def test_tau_curve_survives_a_resume(target, tmp_path):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from jetspec.training.callbacks import TauCurve, load_curve
    from jetspec.training.data import TokenDataModule

    torch.manual_seed(0)
    seqs = [torch.randint(0, 64, (12,)).tolist() for _ in range(4)]
    refs = [r.to_row() for r in make_references(target, [[1, 2, 3]], max_new_tokens=6, progress=False)]
    out = tmp_path / "curve.jsonl"

    def fit(steps, resume=None):
        curve = TauCurve(refs, budgets=(4,), every_n_steps=2, out_file=str(out))
        ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=1)
        trainer = L.Trainer(max_steps=steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
                            accelerator="cpu", callbacks=[curve, ckpt])
        trainer.fit(JetSpecHead(target, block_size=4, anchors_per_seq=3, seed=1),
                    datamodule=TokenDataModule(seqs, batch_size=2, shuffle=False), ckpt_path=resume)
        return curve

    fit(2)  # evaluates at step 2 (every 2 steps; the end is the same step, so no second row)
    resumed = fit(4, resume=str(tmp_path / "ckpt" / "last.ckpt"))
    rows = load_curve(out)
    assert [r["step"] for r in rows] == [2, 4]
    assert rows[-1]["tokens_seen"] == 4 * 2 * 12 == resumed.tokens_seen  # counted across the resume
