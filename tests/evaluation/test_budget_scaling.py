"""Budget scaling by replay: ``jetspec replay-table --scaling --plots`` on a tiny target.

The per-depth acceptance replay reports is checked against real decoding in tests/core/test_replay.py;
here the table, the plots and a property with a known answer: a drafter whose every drafted token
is the target's own greedy choice (``TargetScoredDrafter``) has its whole chain accepted, so its tau
grows with the tree's depth, and one that is never right stays at tau 1 whatever the budget.
"""

from __future__ import annotations

import json

import pytest

from jetspec.cli import main
from jetspec.core.jsonl import write_jsonl
from jetspec.evaluation.replay_tools import scaling_markdown


def test_scaling_table_and_plots(target_dir, tmp_path):
    prompts = tmp_path / "p.jsonl"
    write_jsonl(prompts, [{"prompt": f"w{10 + i} w{20 + i} w{30 + i}", "set": "a"} for i in range(2)])
    refs = tmp_path / "refs.jsonl"
    assert main(["references", "--target", str(target_dir), "--prompts", str(prompts), "--out", str(refs),
                 "--max-new-tokens", "12"]) == 0
    out, md = tmp_path / "rows.json", tmp_path / "scaling.md"
    assert main(["replay-table", "--target", str(target_dir), "--refs", str(refs), "--drafters",
                 "target_scored,random", "--budgets", "1,2,4", "--width", "1", "--depth", "4", "--scaling",
                 "--plots", str(tmp_path / "plots"), "--out", str(out), "--md", str(md)]) == 0
    rows = json.loads(out.read_text())
    by = {(r["drafter"], r["budget"]): r for r in rows}
    # width 1: a chain as deep as the budget (<= depth 4); the target-scored chain is the greedy path
    assert [by["target_scored", b]["tree_depth_mean"] for b in (1, 2, 4)] == [1.0, 2.0, 4.0]
    taus = [by["target_scored", b]["tau"] for b in (1, 2, 4)]
    assert taus[0] < taus[1] < taus[2] and taus[0] == pytest.approx(2.0)  # every round: 1 draft + bonus
    assert by["target_scored", 4]["depth_acceptance"][0] == 1.0
    assert all(by["random", b]["tau"] < 1.3 for b in (1, 2, 4))  # random tokens: (almost) never accepted
    text = md.read_text()
    assert "### Replay tau against the budget" in text and "| target_scored | 2.000 (1.0) |" in text
    assert "| random | 4 |" in text  # its per-depth acceptance row, at its largest budget
    for name in ("tau_vs_budget.png", "depth_acceptance.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 1000


def test_scaling_markdown_marks_missing_cells():
    rows = [{"drafter": "a", "budget": 4, "tau": 1.5, "tree_depth_mean": 2.0, "depth_acceptance": [0.5, 0.25]},
            {"drafter": "b", "budget": 8, "tau": 2.0, "tree_depth_mean": 3.0, "depth_acceptance": [0.75]}]
    text = scaling_markdown(rows, "T")
    assert "| a | 1.500 (2.0) | - |" in text and "| b | - | 2.000 (3.0) |" in text
    assert "| a | 4 | 0.50 | 0.25 |" in text and "| b | 8 | 0.75 | - |" in text
