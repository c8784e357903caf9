"""Branch faithfulness (jetspec/evaluation/faithfulness.py) on tiny float64 targets with known answers.

The expected values are computed independently of the module: the target's joint log-prob of a
branch by a plain forward over prefix + branch (no cache, no tree mask), the draft score from the
drafter's own log-probs. Two drafters make the answer known by construction: one that scores its
branches with the target's own log-probs (gap 0, and its rank-1 branch is the greedy path, accepted
in full), and one that puts all its mass on the target's least likely token (rejected at depth 1,
gap = -log p of that token, large on a peaked target).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import tiny_model

from jetspec.cli import main
from jetspec.core.interfaces import Drafter
from jetspec.core.jsonl import read_jsonl, write_jsonl
from jetspec.core.replay import Reference, make_references, replay
from jetspec.core.types import DraftInput, DraftOutput, DraftTree
from jetspec.drafters.simple import TargetScoredDrafter
from jetspec.evaluation.faithfulness import (
    Branch,
    FaithRound,
    measure_faithfulness,
    path_logprobs,
    summarize,
    top_branches,
)
from jetspec.trees import BestFirstBuilder


def _plain_joint_logprob(model, prefix: list[int], branch: list[int]) -> float:
    """log p(branch | prefix) from one plain causal forward over prefix + branch."""
    with torch.no_grad():
        logits = model(torch.tensor([prefix + branch])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    return sum(float(logp[len(prefix) - 1 + i, t]) for i, t in enumerate(branch))


@pytest.fixture(scope="module")
def refs_llama(llama64):
    prompts = [[5, 9, 13, 2, 40], [7, 7, 30, 11, 3, 60, 21]]
    return make_references(llama64, prompts, 20, progress=False)


def test_target_scored_drafter_gap_is_zero_and_rank1_is_accepted(llama64, refs_llama):
    builder = BestFirstBuilder(budget=12, width=3, depth=4)
    rounds = measure_faithfulness(TargetScoredDrafter(llama64), builder, llama64, refs_llama, topk=3)
    assert rounds and all(r.branches for r in rounds)
    for r in rounds:
        ids = refs_llama[r.reference].input_ids
        truth = ids[r.anchor + 1:]
        assert r.tree_depth == 4 and len(r.branches) == 3  # 3 siblings at the chain's last level
        rank1 = r.branches[0]
        assert rank1.tokens == truth[:4][: len(rank1.tokens)] and rank1.accepted == min(4, len(truth))
        for b in r.branches:
            assert abs(b.gap) < 1e-9
            assert b.target_logprob == pytest.approx(_plain_joint_logprob(llama64, ids[: r.anchor + 1], b.tokens),
                                                     abs=1e-9)
        assert [b.draft_score for b in r.branches] == sorted((b.draft_score for b in r.branches), reverse=True)
    s = summarize("t", rounds, topk=3, gap_threshold=1.0)
    assert s.within_5_nats == 1.0 and s.over_80_nats == 0.0 and s.inconsistent_rounds == 0.0
    assert abs(s.rank1_gap_median) < 1e-9
    # tau and rounds are replay's own: the walk is replay's
    rep = replay(TargetScoredDrafter(llama64), builder, refs_llama)
    assert s.rounds == sum(len(x) for x in rep.lengths) and s.tau == pytest.approx(rep.pooled_tau())


class ArgminDrafter(Drafter):
    """All its mass (log q = 0) on the target's least likely next token: rejected at depth 1."""

    def __init__(self, model) -> None:
        self.model = model
        self.vocab_size = model.config.vocab_size

    def draft(self, inp: DraftInput) -> DraftOutput:
        with torch.no_grad():
            worst = int(self.model(inp.tokens[None]).logits[0, -1].argmin())
        return DraftOutput(depth_tokens=torch.tensor([[worst]]), depth_logprobs=torch.zeros(1, 1))


def test_branch_rejected_at_depth_one_has_a_large_gap():
    model = tiny_model("llama", seed=3)
    with torch.no_grad():
        model.lm_head.weight.mul_(100.0)  # peaked laws: the least likely token is very unlikely
    refs = make_references(model, [[4, 8, 15, 16, 23, 42]], 12, progress=False)
    rounds = measure_faithfulness(ArgminDrafter(model), BestFirstBuilder(budget=1, width=1, depth=1), model, refs)
    assert len(rounds) == 12  # nothing accepted: one token per round
    for r in rounds:
        (b,) = r.branches
        prefix = refs[0].input_ids[: r.anchor + 1]
        assert b.accepted == 0 and r.committed == 1
        assert b.gap == pytest.approx(-_plain_joint_logprob(model, prefix, b.tokens), abs=1e-9)
        assert b.gap >= math.log(64) and b.gap > 20.0  # p(argmin) <= 1/V by construction; peaked: far less
    s = summarize("argmin", rounds, topk=1, gap_threshold=20.0)
    assert s.within_5_nats == 0.0 and s.inconsistent_rounds == 1.0 and s.tau == 1.0 and s.rank1_accepted_mean == 0


def _tree(parents: list[int], tokens: list[int], scores: list[float]) -> DraftTree:
    depth = []
    for p in parents:
        depth.append(0 if p < 0 else depth[p] + 1)
    return DraftTree(tokens=torch.tensor(tokens), parents=torch.tensor(parents), depth=torch.tensor(depth),
                     score=torch.tensor(scores, dtype=torch.float64))


def test_path_logprobs_sums_each_nodes_parent_row():
    #        0 ── 1 ── 3
    #          └─ 2
    tree = _tree([-1, 0, 0, 1], [0, 1, 2, 0], [0.0, -0.1, -0.5, -0.3])
    logits = torch.log(torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3], [1 / 3] * 3, [0.4, 0.4, 0.2]],
                                    dtype=torch.float64))
    want = [0.0, math.log(0.5), math.log(0.3), math.log(0.5) + math.log(0.6)]
    assert path_logprobs(tree, logits).tolist() == pytest.approx(want, abs=1e-12)


def test_top_branches_take_the_deepest_level_best_first():
    tree = _tree([-1, 0, 0, 1, 1, 2], [0, 1, 2, 3, 4, 5], [0.0, -0.1, -0.2, -0.9, -0.4, -0.6])
    assert top_branches(tree, depth=2, k=2) == [4, 5]
    assert top_branches(tree, depth=8, k=5) == [4, 5, 3]  # shallower than D: its deepest level
    assert top_branches(tree, depth=1, k=1) == [1]
    assert top_branches(_tree([-1], [0], [0.0]), depth=3, k=4) == []  # a bare root has no branch


def test_summary_thresholds_and_inconsistent_rounds():
    def rnd(*gaps):
        return FaithRound(0, "s", 0, 4, 1, committed=2,
                          branches=[Branch(i + 1, [1], g, 0.0, 0) for i, g in enumerate(gaps)])

    rounds = [rnd(5.0, 30.0), rnd(80.0), rnd(-3.0, 1.0), FaithRound(0, "s", 0, 0, 0, committed=1)]
    s = summarize("x", rounds, topk=2, gap_threshold=20.0)
    assert s.rounds == 4 and s.branch_rounds == 3 and s.rank1_gaps == [5.0, 80.0, -3.0]
    assert s.rank1_gap_median == 5.0 and s.within_5_nats == pytest.approx(2 / 3)  # 5.0 itself is within
    assert s.over_80_nats == pytest.approx(1 / 3)  # 80.0 itself is over
    assert s.inconsistent_rounds == pytest.approx(2 / 3) and s.topk_over_threshold == pytest.approx(2 / 5)
    assert s.tau == pytest.approx(7 / 4)
    assert summarize("x", rounds, topk=1, gap_threshold=20.0).inconsistent_rounds == pytest.approx(1 / 3)


# ---------------------------------------------------------------------------- the command
def _prompts(path):
    write_jsonl(path, [{"prompt": f"w{10 + i} w{20 + i} w{30 + i} w{10 + i}", "set": s}
                       for s in ("a", "b") for i in range(2)])
    return path


def test_cli_writes_json_markdown_and_histogram(target_dir, tmp_path):
    out = tmp_path / "faith"
    argv = ["faithfulness", "--target", str(target_dir), "--prompts", str(_prompts(tmp_path / "p.jsonl")),
            "--drafters", "target_scored,ngram", "--budget", "6", "--width", "2", "--depth", "3",
            "--per-set", "1", "--max-new-tokens", "8", "--out", str(out)]
    assert main(argv) == 0
    refs = list(read_jsonl(out / "references.jsonl"))
    assert sorted(r["set"] for r in refs) == ["a", "b"]  # written first, one per set
    rows = json.loads((out / "faithfulness.json").read_text())
    assert [r["drafter"] for r in rows] == ["target_scored", "ngram"]
    for key in ("drafter", "rounds", "rank1_gap_median", "within_5_nats", "over_80_nats", "tau"):
        assert all(key in r for r in rows)
    assert abs(rows[0]["rank1_gap_median"]) < 1e-5 and rows[0]["within_5_nats"] == 1.0  # load_target: fp32
    assert rows[0]["tau"] > 1.0 and rows[0]["rounds"] >= 2
    text = (out / "faithfulness.md").read_text()
    assert text.startswith("### Branch faithfulness (budget 6)") and "| target_scored |" in text and "| ngram |" in text
    assert (out / "gaps.png").stat().st_size > 1000
    per_round = list(read_jsonl(out / "rounds.jsonl"))
    assert {r["drafter"] for r in per_round} == {"target_scored", "ngram"}
    assert sum(r["drafter"] == "ngram" for r in per_round) == rows[1]["rounds"]
    # a reference file is read as it is, without writing references
    again = tmp_path / "again"
    assert main(argv[:4] + [str(out / "references.jsonl"), "--drafters", "target_scored", "--budget", "6",
                             "--width", "2", "--depth", "3", "--out", str(again)]) == 0
    assert not (again / "references.jsonl").exists()
    assert json.loads((again / "faithfulness.json").read_text())[0]["rounds"] == rows[0]["rounds"]


def test_cli_names_bad_input(target_dir, tmp_path):
    base = ["faithfulness", "--target", str(target_dir), "--out", str(tmp_path / "o"), "--drafters", "ngram"]
    refs = tmp_path / "refs.jsonl"
    write_jsonl(refs, [Reference([1, 5, 6, 7], 2).to_row(), {"input_ids": [1, 5, 6], "response_start": 3}])
    with pytest.raises(SystemExit, match=r"refs.jsonl:2: response_start must be an integer in 1..2"):
        main(base + ["--prompts", str(refs)])
    write_jsonl(refs, [{"input_ids": [1, 5, 999], "response_start": 1}])
    with pytest.raises(SystemExit, match=r"refs.jsonl:1: token id 999 is outside"):
        main(base + ["--prompts", str(refs)])
    prompts = tmp_path / "p.jsonl"
    write_jsonl(prompts, [{"prompt": "w10 w11"}, {"text": "no prompt here"}])
    with pytest.raises(SystemExit, match=r"p.jsonl:2: a prompt row needs"):
        main(base + ["--prompts", str(prompts)])
    with pytest.raises(SystemExit, match="is not a file"):
        main(base + ["--prompts", str(tmp_path / "missing.jsonl")])
    write_jsonl(refs, [Reference([1, 5, 6, 7], 2).to_row()])
    with pytest.raises(SystemExit, match="--drafters: 'nope'"):
        main(base[:-1] + ["nope", "--prompts", str(refs)])
    with pytest.raises(SystemExit, match="--drafters: names no drafter"):
        main(base[:-1] + [" , ", "--prompts", str(refs)])
    with pytest.raises(SystemExit, match="--budget must be >= 1"):
        main(base + ["--prompts", str(refs), "--budget", "0"])
