"""The bench at several batch sizes and ``jetspec batching`` on a tiny random float64 target.

Timings of a 2-layer model mean nothing, so nothing here is timed: the checks are the table's
shape (one row per method, budget and batch size; per-row and total speeds), that batch size 1 is
the classic measurement, that every row of a batch (ours and Hugging Face's on the same padded
batch) equals plain decoding, the cost-model arithmetic on hand-made numbers, the report's files,
and clear errors for bad flags.
"""

from __future__ import annotations

import json

import pytest
from conftest import tiny_llama, tiny_tokenizer

from jetspec.cli import main
from jetspec.core.prompts import write_jsonl
from jetspec.evaluation.batching import BatchingConfig, best_budgets, run_batching, verify_costs
from jetspec.evaluation.bench import BenchConfig, run_bench
from jetspec.evaluation.roofline import node_cost

# Repeated n-grams, so the n-gram drafter gets accepted drafts; prompts of different lengths.
PROMPTS = [{"prompt": [1, 5, 6, 7, 5, 6, 7, 5, 6, 9, 10, 5], "set": "rep"},
           {"prompt": [1, 8, 9, 12, 8, 9, 12, 8], "set": "rep"},
           {"prompt": [1, 20, 31, 42, 53], "set": "plain"},
           {"prompt": [1, 7, 7, 7, 7, 7, 7], "set": "plain"}]


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama()


@pytest.fixture(scope="module")
def batched(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    res = run_bench(model=tiny, prompts=PROMPTS, drafters=("ngram",), budgets=(4, 8), batch_sizes=(1, 2, 4),
                    max_new_tokens=10, out=str(out), progress=False)
    return res, out


def test_one_row_per_method_budget_and_batch_size(batched):
    res, out = batched
    rows = [r for r in res["rows"] if r["prompt_set"] == "all"]
    keys = sorted((r["drafter"], r["budget"] or 0, r["batch_size"]) for r in rows)
    expected = sorted([(d, 0, b) for d in ("ar", "hf_greedy") for b in (1, 2, 4)] + [("hf_prompt_lookup", 10, 1)]
                      + [("ngram", n, b) for n in (4, 8) for b in (1, 2, 4)])
    assert keys == expected  # HF prompt lookup only at batch 1, and said so
    assert [s["drafter"] for s in res["skipped"]] == ["hf_prompt_lookup"]
    for r in rows:
        assert r["n_prompts"] == 4 and r["new_tokens"] > 0 and r["tokens_per_s"] > 0, r
        # throughput vs latency: 4 prompts in full batches of B, so a row's rate is the total over B
        assert r["tokens_per_s_per_row"] == pytest.approx(r["tokens_per_s"] / r["batch_size"], rel=1e-3)
        assert r["matches_ar"] == 1.0, r  # every row of every batch equals plain decoding (float64, no ties)
    assert res["divergences"] == []
    by = {(r["drafter"], r["budget"], r["batch_size"]): r for r in rows}
    for b in (1, 2, 4):
        ar = by[("ar", None, b)]
        assert ar["verify_ratio"] == 1.0 and ar["speedup_vs_ar"] == 1.0 and ar["tau"] == 1.0
        assert ar["forwards"] == ar["rounds"] // b  # one batched step serves b rows (no row stops early here)
        for n in (4, 8):
            # rows are decoded exactly as alone, so the drafter's accepted lengths do not depend on B
            assert by[("ngram", n, b)]["tau"] == by[("ngram", n, 1)]["tau"] > 1.0
            assert by[("ngram", n, b)]["verify_ratio"] > 0
    assert by[("hf_greedy", None, 4)]["verify_ratio"] is None  # HF's stages are not split
    for name in ("results.json", "results.md", "tokens_per_s_vs_batch.png", "tau_vs_budget.png"):
        assert (out / name).stat().st_size > 0, name
    assert "| ngram | bestfirst | 8 | 4 | all |" in (out / "results.md").read_text()


def test_batch_size_one_is_the_classic_measurement(tiny, tmp_path, batched):
    classic = run_bench(model=tiny, prompts=PROMPTS, drafters=("ngram",), budgets=(4, 8), max_new_tokens=10,
                        out=str(tmp_path), plots=False, progress=False)
    ones = {(r["drafter"], r["budget"], r["prompt_set"]): r for r in batched[0]["rows"] if r["batch_size"] == 1}
    assert {(r["drafter"], r["budget"], r["prompt_set"]) for r in classic["rows"]} == set(ones)
    for r in classic["rows"]:
        same = ones[(r["drafter"], r["budget"], r["prompt_set"])]
        for field in ("tau", "new_tokens", "rounds", "n_prompts", "matches_ar", "mean_tree_size", "depth_acceptance"):
            assert r[field] == same[field], (field, r["drafter"])
    assert "| batch |" not in (tmp_path / "results.md").read_text()  # the classic table keeps its columns


def test_a_row_that_differs_from_plain_decoding_is_caught(tiny, tmp_path, monkeypatch):
    """The negative control of matches_ar at B > 1: a batched decoder that corrupts one row's token."""
    import jetspec.evaluation.bench as bench

    real = bench.run_method_batch

    def corrupt(m, *args, **kwargs):
        rec = real(m, *args, **kwargs)
        if m.drafter == "ngram":
            rec["tokens"][1][0] = (rec["tokens"][1][0] + 1) % 64
        return rec

    monkeypatch.setattr(bench, "run_method_batch", corrupt)
    res = run_bench(model=tiny, prompts=PROMPTS[:2], drafters=("ngram",), budgets=(4,), batch_sizes=(2,),
                    max_new_tokens=6, out=str(tmp_path), plots=False, progress=False, hf=False)
    by = {r["drafter"]: r for r in res["rows"] if r["prompt_set"] == "all"}
    assert by["ar"]["matches_ar"] == 1.0 and by["ngram"]["matches_ar"] == 0.0
    (d,) = res["divergences"]
    assert d["batch_size"] == 2 and d["prompt_index"] == 1 and d["position"] == 0 and d["logit_gap"] > 0


@pytest.mark.parametrize("bad", [(0,), (2, 2), (), (-1,), (1, 0)])
def test_bad_batch_sizes_are_refused(bad):
    with pytest.raises(ValueError, match="^batch_sizes: must be"):
        BenchConfig(batch_sizes=bad)
    with pytest.raises(ValueError, match="^batch_sizes: must be"):
        BatchingConfig(batch_sizes=bad)


@pytest.mark.parametrize("bad", ["1,x", "two"])
def test_a_batch_sizes_flag_that_is_no_list_of_numbers_is_refused(bad, capsys):
    from jetspec.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser("bench").parse_args(["bench", "--batch-sizes", bad])
    assert f"--batch-sizes: expected a comma list of int values, got '{bad}'" in capsys.readouterr().err


def test_batch_sizes_flag_reaches_the_configs():
    from jetspec.cli import build_parser
    from jetspec.commands.flags import config_from_args

    args = build_parser("bench").parse_args(["bench", "--batch-sizes", "1, 2,8"])
    assert config_from_args(BenchConfig, args).batch_sizes == (1, 2, 8)
    assert BenchConfig().batch_sizes == (1,)  # the classic bench unless asked
    args = build_parser("batching").parse_args(["batching", "--tree-rows", "1,16"])
    cfg = config_from_args(BatchingConfig, args)
    assert cfg.tree_rows == (1, 16) and cfg.batch_sizes == (1, 2, 4, 8) and cfg.md == "docs/results/batching.md"
    assert cfg.command() == "jetspec batching --tree-rows 1,16"


def test_bad_flags_stop_the_commands_before_loading_a_model(capsys):
    for argv, flag in ((["bench", "--batch-sizes", "1,0"], "--batch-sizes"),
                       (["batching", "--batch-sizes", "two"], "--batch-sizes"),
                       (["batching", "--tree-rows", "4,8"], "--tree-rows"),
                       (["batching", "--drafters", "nope"], "nope")):
        with pytest.raises(SystemExit) as err:
            main(argv + ["--target", "/nonexistent"])
        # a value the config refuses is in the exit message; one argparse cannot parse, in its usage error
        assert flag in str(err.value) + capsys.readouterr().err, argv


def test_cost_model_on_hand_made_numbers():
    # c(B) is the slope of (verify / step - 1) over drafted nodes n = k - 1, through the origin
    costs = {1: {1: 10.0, 5: 12.0}, 8: {1: 20.0, 5: 60.0}}
    assert node_cost(costs[1]) == pytest.approx(0.05) and node_cost(costs[8]) == pytest.approx(0.5)
    rows = [{"drafter": "d", "prompt_set": "all", "budget": n, "batch_size": b, "tau": tau, "speedup_vs_ar": s}
            for b, s4, s8 in ((1, 1.5, 1.3), (8, 0.9, 0.7)) for n, tau, s in ((4, 2.0, s4), (8, 2.4, s8))]
    rows.append({"drafter": "ar", "prompt_set": "all", "budget": None, "batch_size": 1, "tau": 1.0,
                 "speedup_vs_ar": 1.0})
    best = {r["batch_size"]: r for r in best_budgets(rows, costs)}
    assert set(best) == {1, 8}
    # B = 1: tau / (1 + c n) = 2.0 / 1.2 = 1.667 at n = 4, 2.4 / 1.4 = 1.714 at n = 8
    assert best[1]["model_budget"] == 8 and best[1]["model_speedup"] == pytest.approx(2.4 / 1.4, abs=1e-4)
    assert best[1]["measured_budget"] == 4 and best[1]["measured_speedup"] == 1.5
    # B = 8: 2.0 / 3 and 2.4 / 5 are below 1, and so are the measured speedups: do not speculate
    assert best[8]["model_budget"] == 0 and best[8]["model_speedup"] == 1.0
    assert best[8]["measured_budget"] == 0 and best[8]["measured_speedup"] == 1.0
    assert best[8]["node_cost"] == 0.5


def test_verify_costs_cover_the_grid(tiny):
    costs = verify_costs(tiny, (1, 2), (1, 4), prefix=6, repeats=1, progress=False)
    assert set(costs) == {1, 2} and all(set(by_k) == {1, 4} for by_k in costs.values())
    assert all(ms > 0 for by_k in costs.values() for ms in by_k.values())


def test_run_batching_writes_the_report(tiny, tmp_path):
    cfg = BatchingConfig(drafters=("ngram",), budgets=(4,), batch_sizes=(1, 2), tree_rows=(1, 2), n_prompts=2,
                         max_new_tokens=6, prefix=6, repeats=1, out=str(tmp_path / "raw"),
                         md=str(tmp_path / "docs" / "batching.md"), img=str(tmp_path / "docs" / "img" / "b.png"))
    res = run_batching(cfg, tiny, None, prompts=PROMPTS, progress=False)
    text = (tmp_path / "docs" / "batching.md").read_text()
    assert text == res["markdown"]
    for words in ("| method | budget | B |", "| B | plain step ms |", "| drafter | B | c(B) |", "](img/b.png)",
                  "Cost-aware trees with a batch", "--n-prompts 2"):
        assert words in text, words
    assert (tmp_path / "docs" / "img" / "b.png").stat().st_size > 0
    saved = json.loads((tmp_path / "raw" / "batching.json").read_text())
    assert set(saved) == {"bench", "costs", "best"} and set(saved["costs"]) == {"1", "2"}
    assert {(r["drafter"], r["batch_size"]) for r in res["best"]} == {("ngram", 1), ("ngram", 2)}


def test_batching_command_end_to_end(tmp_path):
    tiny_llama().save_pretrained(tmp_path / "target")
    tiny_tokenizer().save_pretrained(tmp_path / "target")
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "w1 w2 w3 w1 w2"}, {"prompt": "w4 w5"}, {"prompt": "w6"}])
    md = tmp_path / "batching.md"
    rc = main(["batching", "--target", str(tmp_path / "target"), "--prompts", str(tmp_path / "p.jsonl"),
               "--n-prompts", "2", "--drafters", "ngram", "--budgets", "4", "--batch-sizes", "1,2",
               "--tree-rows", "1,2", "--prefix", "4", "--repeats", "1", "--max-new-tokens", "4", "--threads", "1",
               "--out", str(tmp_path / "raw"), "--md", str(md), "--img", str(tmp_path / "b.png")])
    assert rc == 0 and "| ngram | 4 | 2 |" in md.read_text()


def test_the_figure_is_linked_from_the_repository_root_when_its_path_is_relative():
    from jetspec.evaluation.batching import image_link

    # BENCHMARKS.md (at the root) includes the report: only a root link resolves there and beside the report
    assert image_link("docs/results/img/batching.png", "docs/results/batching.md") == "/docs/results/img/batching.png"
    assert image_link("/tmp/x/docs/img/b.png", "/tmp/x/docs/batching.md") == "img/b.png"
