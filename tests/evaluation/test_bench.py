"""The benchmark harness on a tiny random target: schema, baselines, losslessness, files, CLI.

Timings of a random 2-layer model mean nothing; what is checked is everything else: that every
row has the fields the plots and BENCHMARKS.md read, that plain decoding is its own baseline
(tau 1, speedup 1), that greedy speculative outputs equal plain decoding, and that a trained head
is picked up from a head folder. One torch thread keeps these fast on a busy 2-core machine.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_llama, tiny_tokenizer

from jetspec import DRAFTERS, TREE_BUILDERS
from jetspec.cli import build_parser
from jetspec.core.prompts import write_jsonl
from jetspec.evaluation.bench import BenchConfig, divergence, run_bench

ROW_FIELDS = {"drafter", "tree", "budget", "temperature", "prompt_set", "tau", "tokens_per_s",
              "tokens_per_s_e2e", "speedup_vs_ar", "speedup_vs_hf", "draft_forwards_per_round", "draft_ms",
              "tree_ms", "verify_ms", "accept_ms", "commit_ms", "depth_acceptance", "n_prompts", "new_tokens",
              "matches_ar"}
# Prompts with repeated n-grams, so prompt lookup has something to find.
PROMPTS = [{"prompt": [1, 5, 6, 7, 5, 6, 7, 5, 6, 9, 10, 5], "set": "rep"},
           {"prompt": [1, 8, 9, 12, 8, 9, 12, 8], "set": "rep"},
           {"prompt": [1, 20, 31, 42, 53], "set": "plain"}]


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama()


def test_schema_baselines_and_files(tiny, tmp_path):
    out = tmp_path / "bench"
    res = run_bench(model=tiny, prompts=PROMPTS, drafters=("ar", "ngram", "random"), budgets=(4, 8), max_new_tokens=10,
                    out=str(out), threads=1, progress=False)
    assert set(res) == {"machine", "config", "skipped", "divergences", "rows"}
    assert res["divergences"] == []  # float64 target: no near-ties
    assert {"cpu", "logical_cores", "torch", "threads"} <= set(res["machine"])
    # run_bench leaves the process's threads alone (the command sets them) and records them.
    assert res["machine"]["threads"] == torch.get_num_threads()
    rows = res["rows"]
    for r in rows:
        assert ROW_FIELDS <= set(r), ROW_FIELDS - set(r)
    names = {r["drafter"] for r in rows}
    assert names == {"ar", "hf_greedy", "hf_prompt_lookup", "ngram", "random"}
    assert {r["prompt_set"] for r in rows} == {"all", "rep", "plain"}
    key = {(r["drafter"], r["budget"], r["prompt_set"]): r for r in rows}
    assert {b for (d, b, _) in key if d == "ngram"} == {4, 8}
    for pset, n in (("all", 3), ("rep", 2), ("plain", 1)):
        ar = key[("ar", None, pset)]
        assert ar["tau"] == 1.0 and ar["speedup_vs_ar"] == 1.0 and ar["n_prompts"] == n
        assert ar["depth_acceptance"] == [] and ar["draft_forwards_per_round"] == 0
        assert key[("hf_greedy", None, pset)]["speedup_vs_hf"] == 1.0
    for r in rows:
        # Greedy speculative decoding is lossless: same tokens as plain decoding, for every method.
        assert r["matches_ar"] == 1.0, r
        assert r["new_tokens"] == key[("ar", None, r["prompt_set"])]["new_tokens"]
        assert r["tau"] >= 1.0 and r["tokens_per_s"] > 0
    ngram = key[("ngram", 8, "rep")]
    assert ngram["tau"] > 1.0  # the repeated prompts do get accepted drafts
    assert len(ngram["depth_acceptance"]) >= 1 and all(0 <= a <= 1 for a in ngram["depth_acceptance"])
    assert ngram["verify_ms"] > 0 and ngram["draft_ms"] >= 0
    assert key[("hf_prompt_lookup", 10, "rep")]["tau"] > 1.0
    for name in ("results.json", "results.md", "runs.jsonl", "tau_vs_budget.png",
                 "tokens_per_s_vs_budget.png", "depth_acceptance.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert json.loads((out / "results.json").read_text())["rows"] == rows
    assert "| ngram | bestfirst | 8 | all |" in (out / "results.md").read_text()
    assert sum(1 for _ in open(out / "runs.jsonl")) == 3 * len([n for n in key if n[2] == "all"])


def test_cost_aware_trees_are_benchmarked_beside_full_budget_trees(tiny, tmp_path):
    res = run_bench(model=tiny, prompts=PROMPTS[:2], drafters=("ngram",), budgets=(8,), node_costs=(0, 0.5),
                    max_new_tokens=10, out=str(tmp_path), threads=1, progress=False, plots=False, hf=False)
    key = {r["drafter"]: r for r in res["rows"] if r["prompt_set"] == "all"}
    assert set(key) == {"ar", "ngram", "ngram(c=0.5)"}
    assert key["ngram(c=0.5)"]["matches_ar"] == 1.0
    # The prompts' repeats end in different tokens, so the tries branch at q = 1/2; at c = 0.5 the
    # first such branch does not pay (1/2 <= 0.5 * 1 / 1) and those rounds verify the bare root.
    assert key["ngram(c=0.5)"]["mean_tree_size"] < key["ngram"]["mean_tree_size"]


def test_drafter_options_in_specs(tiny, tmp_path):
    from jetspec.evaluation.drafter_specs import DrafterUnavailable, make_drafter, spec_label

    d = make_drafter("ngram:smoothing=1:max_ngram=4", tiny, tmp_path)
    assert d.smoothing == 1.0 and d.max_ngram == 4
    assert spec_label("ngram:smoothing=1+jetspec") == "ngram:smoothing=1+jetspec"
    assert spec_label("mine=runs/x/head+ngram") == "mine+ngram"
    for bad, why in (("ngram:nope=1", "no option"), ("ngram:smoothing", "key=value"),
                     ("ngram:smoothing=x", "not a float"), ("ngram:smoothing=-1", "smoothing")):
        with pytest.raises(DrafterUnavailable, match=why):
            make_drafter(bad, tiny, tmp_path)
    with pytest.raises(ValueError, match="not a registered drafter"):  # DrafterUnavailable is a ValueError
        make_drafter("nope", tiny, tmp_path)


@pytest.mark.parametrize("tree", sorted(TREE_BUILDERS))
def test_every_registered_tree_builder_can_be_benchmarked(tiny, tmp_path, tree):
    """The bench reads the allowed trees from the registry: entropy and hybrid used to be refused
    (BenchConfig hard-coded bestfirst, chain and fanout)."""
    res = run_bench(model=tiny, prompts=PROMPTS[:1], drafters=("ngram",), tree=tree, budgets=(4,), depth=3,
                    max_new_tokens=6, hf=False, out=str(tmp_path), threads=1, plots=False, progress=False)
    rows = [r for r in res["rows"] if r["drafter"] == "ngram" and r["prompt_set"] == "all"]
    assert rows and all(r["tree"] == tree and r["matches_ar"] == 1.0 for r in rows)


def test_divergence_locates_the_first_differing_token(tiny):
    from jetspec import autoregressive_generate

    prompt = PROMPTS[2]["prompt"]
    ar = autoregressive_generate(tiny, torch.tensor([prompt]), 6).sequences[0, len(prompt):].tolist()
    other = ar[:3] + [(ar[3] + 1) % 64] + ar[4:]
    d = divergence(tiny, prompt, ar, {"drafter": "x", "budget": 8, "prompt_set": "plain", "prompt_index": 2,
                                      "tokens": other})
    assert d["position"] == 3 and d["ar_token"] == ar[3] and d["token"] == other[3]
    assert d["logit_gap"] > 0  # plain greedy took the argmax, so its token has the larger logit


def test_text_prompts_sampling_chain_and_skips(tiny, tmp_path):
    res = run_bench(model=tiny, tokenizer=tiny_tokenizer(),
                    prompts=[{"prompt": "w1 w2 w3 w1 w2", "set": "s"}],
                    drafters=("ngram", "draft_model"), tree="chain", depth=3, temperature=1.0,
                    max_new_tokens=6, out=str(tmp_path), threads=1, plots=False, progress=False)
    names = {r["drafter"] for r in res["rows"]}
    assert names == {"ar", "hf_sample", "hf_prompt_lookup", "ngram"}
    chain = [r for r in res["rows"] if r["drafter"] == "ngram"]
    assert {r["budget"] for r in chain} == {3} and all(r["tree"] == "chain" for r in chain)
    assert all(r["matches_ar"] is None for r in res["rows"])  # sampled outputs differ by design
    assert all(r["temperature"] == 1.0 for r in res["rows"])
    skipped = {s["drafter"]: s["reason"] for s in res["skipped"]}
    assert "draft_model" in skipped["draft_model"]
    assert not (tmp_path / "tau_vs_budget.png").exists()


@pytest.mark.skipif(not hasattr(DRAFTERS.get("jetspec"), "from_pretrained"), reason="no jetspec head class")
def test_trained_head_is_loaded_from_the_head_dir(tiny, tmp_path):
    head = DRAFTERS["jetspec"](tiny, num_layers=1, block_size=4)
    head.save_pretrained(tmp_path / "heads" / "jetspec")
    res = run_bench(model=tiny, prompts=PROMPTS[:1], drafters=("jetspec", "dflash"), budgets=(4,), max_new_tokens=6,
                    head_dir=str(tmp_path / "heads"), hf=False, out=str(tmp_path), threads=1, plots=False,
                    progress=False)
    rows = [r for r in res["rows"] if r["drafter"] == "jetspec" and r["prompt_set"] == "all"]
    assert len(rows) == 1 and rows[0]["matches_ar"] == 1.0
    assert rows[0]["depth"] == 3  # clamped to the head's block_size - 1
    assert rows[0]["draft_forwards_per_round"] == 1.0
    assert [s["drafter"] for s in res["skipped"]] == ["dflash"]  # no dflash folder


def test_a_head_folder_can_be_named_and_labelled(tiny, tmp_path):
    torch.manual_seed(0)
    head = DRAFTERS["dflash"](tiny, num_layers=1, block_size=4, draft_vocab=torch.arange(0, 64, 2))
    head.save_pretrained(tmp_path / "runs" / "variant" / "head")
    spec = f"small={tmp_path / 'runs' / 'variant' / 'head'}"
    res = run_bench(model=tiny, prompts=PROMPTS[:1], drafters=(spec, f"{spec}+ngram", f"bad={tmp_path}"),
                    budgets=(4,), max_new_tokens=6, hf=False, out=str(tmp_path), threads=1, plots=False,
                    progress=False)
    names = {r["drafter"] for r in res["rows"] if r["prompt_set"] == "all"}
    assert {"small", "small+ngram"} <= names
    assert all(r["matches_ar"] == 1.0 for r in res["rows"] if r["prompt_set"] == "all")
    assert [s["drafter"] for s in res["skipped"]] == [f"bad={tmp_path}"]


def test_cli_flags_come_from_the_config(tiny, tmp_path):
    from jetspec.cli import main

    parser = build_parser()
    args = parser.parse_args(["bench"])
    assert args.budgets == (8, 16, 32, 64) and args.target == "smollm2-135m-instruct" and args.hf is True
    assert BenchConfig(**{k: v for k, v in vars(args).items() if k in BenchConfig.__dataclass_fields__}) \
        == BenchConfig()
    help_text = parser._subparsers._group_actions[0].choices["bench"].format_help()
    assert "Drafted nodes per round, root excluded" in help_text
    # A config names the field; the command line names its flag (jetspec.commands.flags.config_from_args).
    with pytest.raises(ValueError, match="^tree: unknown tree builder 'star'; registered: bestfirst, chain, entropy"):
        BenchConfig(tree="star")
    with pytest.raises(ValueError, match="^budgets:"):
        BenchConfig(budgets=(0, 8))
    with pytest.raises(ValueError, match="^node_costs:"):
        BenchConfig(node_costs=(0, -1))
    with pytest.raises(SystemExit, match="--node-costs: must be >= 0"):
        main(["bench", "--node-costs", "0,-1", "--target", str(tmp_path / "no-such-target")])

    tok = tiny_tokenizer()
    tiny.save_pretrained(tmp_path / "target")
    tok.save_pretrained(tmp_path / "target")
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "w3 w4 w3 w4", "set": "x"}, {"prompt": "w5 w6"}])
    argv = ["bench", "--target", str(tmp_path / "target"), "--prompts", str(tmp_path / "p.jsonl"),
            "--drafters", "ngram", "--budgets", "4", "--max-new-tokens", "5", "--threads", "1",
            "--hf", "false", "--plots", "false", "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    rows = json.loads((tmp_path / "o" / "results.json").read_text())["rows"]
    assert {r["prompt_set"] for r in rows} == {"all", "x", "p"}  # unnamed rows take the file's stem


def test_cli_generate_with_options_and_cost_aware_tree(tiny, tmp_path, capsys):
    from jetspec.cli import main

    tiny_tokenizer().save_pretrained(tmp_path / "target")
    tiny.save_pretrained(tmp_path / "target")
    base = ["generate", "--target", str(tmp_path / "target"), "--prompt", "w3 w4 w3 w4 w3", "--max-new-tokens", "6"]
    outs = []
    for extra in ([], ["--drafter", "ngram:smoothing=1", "--node-cost", "0.035"]):
        assert main(base + extra) == 0
        outs.append(capsys.readouterr().out.split("\n[tau")[0])
    assert outs[0] == outs[1]  # greedy: the drafter and the tree never change the text
    with pytest.raises(SystemExit, match="node_cost"):
        main(base + ["--node-cost", "-1"])
    with pytest.raises(SystemExit, match="no option"):
        main(base + ["--drafter", "ngram:nope=1"])


@pytest.mark.parametrize("spec, bad", [(("typo",), "typo"), (("ngram", "typo"), "typo"), (("ngram+typo",), "typo"),
                                       (("typo:smoothing=1",), "typo"), (("ar", "jetspec-missing"), "jetspec-missing"),
                                       (("ngram+ar",), "ar")])
def test_an_unknown_drafter_is_an_error_not_a_skip(spec, bad):
    """It used to be skipped: `bench --drafters typo` timed only the baselines and exited 0."""
    with pytest.raises(ValueError, match=f"drafters.*'{bad}'"):
        BenchConfig(drafters=spec)
    # Negative control: registered names, options, composites, anchors and label=folder specs pass.
    BenchConfig(drafters=("ar", "ngram", "ngram:smoothing=1", "jetspec+ngram", "mine=runs/x/head",
                          "mine=runs/x+ngram"))


def test_cli_bench_with_an_unknown_drafter_fails_before_loading(tmp_path):
    from jetspec.cli import main

    with pytest.raises(SystemExit, match="typo"):
        main(["bench", "--target", str(tmp_path / "no-such-target"), "--drafters", "typo", "--out", str(tmp_path)])


def _small_bench(tiny, out, **kw):
    return run_bench(model=tiny, prompts=PROMPTS[:2], drafters=("ar", "ngram"), budgets=(4,), max_new_tokens=4,
                     out=str(out), hf=False, warmup=False, plots=False, progress=False, **kw)


def test_an_out_that_is_a_file_is_refused_before_measuring(tiny, tmp_path, monkeypatch):
    import jetspec.evaluation.bench as bench

    out = tmp_path / "results.json"
    out.write_text("mine")
    monkeypatch.setattr(bench, "_timed_runs", lambda *a, **k: pytest.fail("measured before checking --out"))
    with pytest.raises(ValueError, match="--out .* is a file"):
        _small_bench(tiny, out)
    assert out.read_text() == "mine"


def test_a_second_run_keeps_the_first_runs_results(tiny, tmp_path):
    out = tmp_path / "bench"
    _small_bench(tiny, out)
    first_json, first_runs = (out / "results.json").read_text(), (out / "runs.jsonl").read_text()
    _small_bench(tiny, out, seed=1)
    kept = list((out / "earlier").glob("*/results.json"))
    assert len(kept) == 1 and kept[0].read_text() == first_json
    assert (kept[0].parent / "runs.jsonl").read_text() == first_runs != ""
    assert json.loads((out / "results.json").read_text())["config"]["seed"] == 1


def test_an_interrupted_bench_keeps_the_runs_it_measured(tiny, tmp_path, monkeypatch):
    import jetspec.evaluation.bench as bench

    calls, real = [], bench._run_once

    def interrupted(*a, **k):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(bench, "_run_once", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _small_bench(tiny, tmp_path / "bench", repeats=3)
    lines = (tmp_path / "bench" / "runs.jsonl").read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(x)["drafter"] in ("ar", "ngram") for x in lines)
