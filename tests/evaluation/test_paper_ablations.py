"""experiments/paper_ablations.py: the variants it trains, its seed statistics and the results file.

Training is not run here (each run is a ``jetspec train``, tested in tests/test_train_cli.py);
finished runs are faked as the files ``jetspec train`` leaves (``head/config.json`` and the final
``tau_curve.jsonl`` row), with per-seed taus whose mean and Student-t interval are worked out by hand.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))
import paper_ablations as pa  # noqa: E402

from jetspec.evaluation.plots import plot_ablation  # noqa: E402

T975_DF2 = 4.303  # Student-t 97.5% quantile, 2 degrees of freedom (3 seeds)


def test_gamma_zero_is_no_weighting_and_the_forward_kl_run_is_shared():
    gamma = dict(pa.gamma_variants())
    assert len(gamma) == 8
    assert gamma["jetspec-kl-g0"] == ["--head=jetspec"]  # gamma 0: --decay-gamma unset, uniform weights
    assert gamma["dflash-kl-g7"] == ["--head=dflash", "--decay-gamma=7"]
    assert [n for n, _ in pa.gamma_variants(("dflash",))] == [f"dflash-kl-g{g}" for g in (0, 3, 7, 15)]
    objective = dict(pa.objective_variants())
    assert objective["jetspec-kl-g0"] == gamma["jetspec-kl-g0"]  # one run set serves both ablations
    assert objective["jetspec-reverse_kl-g0"] == ["--head=jetspec", "--loss=reverse_kl"]
    assert objective["jetspec-ce-g0"] == ["--head=jetspec", "--loss=ce"]


def fake_run(out: Path, name: str, seed: int, steps: int, tau: float) -> None:
    run = out / f"{name}-s{seed}"
    (run / "head").mkdir(parents=True)
    (run / "head" / "config.json").write_text("{}")
    row = {"step": steps, "tokens_seen": 100, "wall_s": 1.0, "tau_b16": tau, "taus_b16": [tau, tau],
           "tau_b16_math": tau}
    (run / "tau_curve.jsonl").write_text(json.dumps(row) + "\n")


def args(tmp_path: Path, seeds=(0, 1, 2)) -> argparse.Namespace:
    return argparse.Namespace(out=str(tmp_path / "runs"), target="t", data="d", refs="r", teacher_cache="c",
                              seeds=list(seeds), steps=48, budget=16, parallel=2, heads=pa.HEADS)


def test_objective_rows_are_mean_and_student_t_interval_over_seeds(tmp_path):
    a = args(tmp_path)
    taus = {"kl": (1.0, 1.2, 1.4), "reverse_kl": (1.0, 1.0, 1.0), "ce": (1.1, 1.2, 1.3)}
    for loss, values in taus.items():
        for seed, tau in enumerate(values):
            fake_run(Path(a.out), pa.run_name("jetspec", loss, 0), seed, a.steps, tau)
    rows, text = pa.objective_ablation(a)
    kl = next(r for r in rows if r["loss"] == "kl")
    assert kl["tau_mean"] == pytest.approx(1.2)
    assert kl["tau_ci"] == pytest.approx(T975_DF2 * 0.2 / math.sqrt(3), rel=1e-3)  # sd 0.2
    assert kl["taus"] == [1.0, 1.2, 1.4] and kl["budget"] == 16 and kl["steps"] == 48
    assert next(r for r in rows if r["loss"] == "reverse_kl")["tau_ci"] == 0.0
    assert "| kl | 1.200 +- 0.497 |" in text
    assert "jetspec-reverse_kl-g0 - jetspec-kl-g0 @ 16 | -0.200 +- 0.497" in text  # paired over seeds


def test_a_seed_missing_a_variant_is_left_out_and_one_seed_is_refused(tmp_path):
    a = args(tmp_path)
    for loss in pa.LOSSES:
        for seed in (0, 1):
            fake_run(Path(a.out), pa.run_name("jetspec", loss, 0), seed, a.steps, 1.1 + seed / 10)
    fake_run(Path(a.out), pa.run_name("jetspec", "kl", 0), 2, a.steps, 9.0)  # seed 2 of one variant only
    rows, _ = pa.objective_ablation(a)
    assert all(len(r["taus"]) == 2 for r in rows)  # paired: seed 2 is not used until every variant has it
    with pytest.raises(SystemExit, match="fewer than 2 seeds"):
        pa.objective_ablation(args(tmp_path, seeds=(0,)))


def test_merge_keeps_the_other_ablations(tmp_path):
    path = tmp_path / "ablations.json"
    pa.merge_results(path, "tree_scoring", [{"rule": "entropy", "drafter": "jetspec", "budget": 16, "tau": 1.5}])
    pa.merge_results(path, "gamma", [{"head": "dflash", "gamma": 3, "tau_mean": 1.1, "tau_ci": 0.1, "taus": [1.1],
                                      "budget": 16, "steps": 48}])
    pa.merge_results(path, "tree_scoring", [{"rule": "entropy", "drafter": "eagle", "budget": 16, "tau": 1.4}],
                     field="drafter")  # another drafter's run keeps jetspec's row
    data = json.loads(path.read_text())
    assert data["gamma"][0]["head"] == "dflash"
    assert [r["drafter"] for r in data["tree_scoring"]] == ["jetspec", "eagle"]
    pa.merge_results(path, "tree_scoring", [{"rule": "hybrid", "drafter": "jetspec", "budget": 16, "tau": 1.6}],
                     field="drafter")  # a rerun of jetspec replaces its rows
    assert [(r["drafter"], r["rule"]) for r in json.loads(path.read_text())["tree_scoring"]] == [
        ("eagle", "entropy"), ("jetspec", "hybrid")]
    pa.merge_results(path, "tree_scoring", [])  # no field: the key is replaced whole
    assert json.loads(path.read_text())["tree_scoring"] == []


def test_plot_ablation_writes_a_png(tmp_path):
    path = plot_ablation({"jetspec": [("0", 1.1, 0.05), ("3", 1.2, float("nan"))], "dflash": [("0", 1.0, 0.0)]},
                         "gamma", "tau", "t", tmp_path / "img" / "a.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
