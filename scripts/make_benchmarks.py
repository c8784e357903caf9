"""Rerun the benchmark on the held-out dev splits and rewrite BENCHMARKS.md from the results.

What it runs: ``jetspec.bench.run_bench`` on the dev prompts of ``scripts/prepare_data.py``
(math from GSM8K, code from Code Alpaca, chat from the Alpaca seed tasks: prompts no head was
trained on), once greedy and once at temperature 1, over budgets 8-64, with plain decoding (``ar``),
Hugging Face greedy / sampling and Hugging Face prompt lookup measured in the same process as the
outside anchors. The target is loaded once and shared by both runs.

    python scripts/make_benchmarks.py                 # the full run (hours on a 2-core CPU)
    python scripts/make_benchmarks.py --quick         # a reduced run: a few prompts, short answers

A reduced run says so at the top of BENCHMARKS.md: its numbers show that the pipeline works and
roughly where things stand, not more. Raw results stay in ``--out`` (git-ignored), one folder per
temperature, with plots.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from jetspec.bench import BenchConfig, run_bench
from jetspec.prompts import read_prompts
from jetspec.report import divergence_note, markdown_table

SETS = ("math", "code", "chat")
# The reduced run: enough to exercise every method on every set in minutes, not hours.
QUICK = {"limit": 3, "max_new_tokens": 48}

MAIN_COLUMNS = [("drafter", "method"), ("tree", "tree"), ("budget", "budget"), ("tau", "tau"),
                ("tokens_per_s", "tok/s (decode)"), ("tokens_per_s_e2e", "tok/s (e2e)"),
                ("speedup_vs_ar", "x ar"), ("speedup_vs_hf", "x HF"),
                ("draft_forwards_per_round", "draft fwd/round"),
                ("draft_ms", "draft ms"), ("tree_ms", "tree ms"), ("verify_ms", "verify ms"),
                ("accept_ms", "accept ms"), ("commit_ms", "commit ms"), ("matches_ar", "= ar")]


def dev_prompts(data: Path, limit: int | None) -> list[dict]:
    """The three dev splits, building them first (scripts/prepare_data.py) if they are missing."""
    if not all((data / f"dev_{s}.jsonl").is_file() for s in SETS):
        sys.path.insert(0, str(Path(__file__).parent))
        import prepare_data

        prepare_data.main(["--out", str(data)])
    rows = []
    for s in SETS:
        split = read_prompts(data / f"dev_{s}.jsonl", limit=limit)
        rows += [{"prompt": r["prompt"], "set": s} for r in split]
    return rows


def per_set_table(rows: list[dict]) -> str:
    """tau and speedup over ar of every method on each prompt set, side by side."""
    keys = []
    for r in rows:
        k = (r["drafter"], r["tree"], r["budget"])
        if k not in keys:
            keys.append(k)
    cell = {(r["drafter"], r["tree"], r["budget"], r["prompt_set"]): r for r in rows}
    head = ["method", "budget"] + [f"{s} tau" for s in SETS] + [f"{s} x ar" for s in SETS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for d, t, b in keys:
        vals = []
        for metric in ("tau", "speedup_vs_ar"):
            for s in SETS:
                v = cell.get((d, t, b, s), {}).get(metric)
                vals.append("-" if v is None else f"{v:.2f}")
        lines.append("| " + " | ".join([d, "-" if b is None else str(b)] + vals) + " |")
    return "\n".join(lines)


def render(results: dict[float, dict], args, command: str) -> str:
    first = next(iter(results.values()))
    m, c = first["machine"], first["config"]
    out = ["# jetspec benchmarks", ""]
    if args.quick:
        out += [f"> **This is a REDUCED run** (`--quick`): {c['limit']} prompts per set, at most "
                f"{c['max_new_tokens']} new tokens each, one repeat, on a shared and busy 2-core "
                "machine. It proves that the pipeline runs end to end and shows the rough picture; "
                "it is not a measurement to quote. Run `python scripts/make_benchmarks.py` without "
                "`--quick` for the full benchmark.", ""]
    budgets = ", ".join(map(str, c["budgets"]))
    out += ["## Setup", "",
            f"- Machine: {m['cpu']}, {m['logical_cores']} logical cores, {m['threads']} torch "
            f"thread(s), no GPU; torch {m['torch']}, transformers {m['transformers']}, Python "
            f"{m['python']}. Load average at the start of the greedy run: {m.get('load_average')}. "
            f"Threads: {m.get('threads_choice', m['threads'])}.",
            f"- Engine of `ar` and the speculative methods: {m.get('engine', 'hf')} (`TargetModel`; "
            "the `hf_*` anchors run Hugging Face `generate` on the same model).",
            f"- Target: `{c['target']}` in fp32, batch 1.",
            f"- Prompts: the held-out dev splits of `scripts/prepare_data.py` ({', '.join(SETS)}), "
            "chat template applied; no head was trained on them.",
            f"- Tree: `{c['tree']}`, width {c['width']}, depth {c['depth']}, budgets {budgets} "
            f"(drafted nodes, root excluded); max_new_tokens {c['max_new_tokens']}; {c['repeats']} "
            "repeat(s); methods interleaved per prompt in a random order."
            + ("" if list(c.get("node_costs", [0.0])) == [0.0] else
               " A label `name(c=x)` is that drafter with a cost-aware tree (node_cost x: the tree "
               "stops growing where one more node would not pay for its verify cost, "
               "`trees/best_first.py`); the budget is then a cap."),
            "- Anchors measured in the same process: `ar` (plain decoding with a KV cache in "
            "jetspec's harness), `hf_greedy` / `hf_sample` (Hugging Face `generate`) and "
            f"`hf_prompt_lookup` (`prompt_lookup_num_tokens={c['prompt_lookup_tokens']}`).",
            f"- Command: `{command}`", "",
            "tau = committed tokens per target forward (bonus included; plain decoding 1.0). "
            "tok/s (decode) excludes prefill; e2e is one whole generate call. x ar / x HF are "
            "decode-speed ratios to `ar` and to HF `generate` on the same prompts. Per-round time "
            "split in ms. '= ar' (greedy only) is the share of outputs identical to plain decoding. "
            "Run-to-run noise on this machine is about +-20 %: compare methods only within one table.",
            ""]
    for temp, res in results.items():
        title = "Greedy (temperature 0)" if temp == 0 else f"Sampling (temperature {temp:g})"
        rows = res["rows"]
        out += [f"## {title}", "", "All prompt sets pooled:", "",
                markdown_table([r for r in rows if r["prompt_set"] == "all"], MAIN_COLUMNS), "",
                "Per prompt set:", "", per_set_table(rows), ""]
        if res.get("divergences"):
            out += ["Greedy outputs that differ from plain decoding (a logit gap near 1e-5 or below is an "
                    "fp32 near-tie: a many-node verify forward rounds differently from a one-token "
                    "forward; a large gap would be a bug):", ""]
            out += [divergence_note(d) for d in res["divergences"]] + [""]
        if res["skipped"]:
            out += ["Not run: " + "; ".join(f"`{s['drafter']}` ({s['reason']})" for s in res["skipped"]),
                    ""]
        out += [f"Raw results and plots: `{Path(res['config']['out'])}/` (results.json, runs.jsonl, "
                "tau_vs_budget.png, tokens_per_s_vs_budget.png, depth_acceptance.png).", ""]
    if args.include:  # sections written by other commands (roofline, head comparison, replay tables)
        for path in args.include:
            out += [Path(path).read_text().rstrip(), ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="runs/data", help="folder with the dev splits (built if missing)")
    p.add_argument("--out", default="runs/benchmarks",
                   help="raw results folder (one sub-folder per temperature)")
    p.add_argument("--write", default="BENCHMARKS.md", help="the Markdown file to (re)write")
    p.add_argument("--temperatures", default="0,1", help="comma list")
    p.add_argument("--quick", action="store_true",
                   help=f"reduced run: {QUICK['limit']} prompts per set, "
                        f"{QUICK['max_new_tokens']} new tokens")
    defaults = BenchConfig()
    p.add_argument("--target", default=defaults.target)
    p.add_argument("--drafters", default=",".join(defaults.drafters))
    p.add_argument("--head-dir", default=defaults.head_dir)
    p.add_argument("--budgets", default=",".join(map(str, defaults.budgets)))
    p.add_argument("--node-costs", default="0",
                   help="tree node_cost values (comma list; 0 = whole budget): see trees/best_first.py")
    p.add_argument("--limit", type=int, default=None,
                   help=f"prompts per set (default: all; --quick: {QUICK['limit']})")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help=f"default: {defaults.max_new_tokens}; --quick: {QUICK['max_new_tokens']}")
    p.add_argument("--repeats", type=int, default=defaults.repeats)
    p.add_argument("--threads", default=defaults.threads, help="a number, or auto (measured at start)")
    p.add_argument("--include", action="append", default=None, metavar="MD",
                   help="append this Markdown file (e.g. the report of scripts/compare_heads.py); repeatable")
    args = p.parse_args(argv)

    limit = args.limit if args.limit is not None else (QUICK["limit"] if args.quick else None)
    max_new = args.max_new_tokens or (QUICK["max_new_tokens"] if args.quick else defaults.max_new_tokens)
    prompts = dev_prompts(Path(args.data), limit)
    import torch

    from jetspec.loading import load_target
    from jetspec.threads import choose_threads

    # Process settings are the entry point's to make (run_bench leaves them alone).
    threads = choose_threads(args.threads) if args.threads is not None else None
    if threads is not None:
        torch.set_num_threads(threads.count)
    torch.set_flush_denormal(True)
    model, tok = load_target(args.target)
    results = {}
    for temp in (float(t) for t in args.temperatures.split(",")):
        cfg = BenchConfig(target=args.target, drafters=args.drafters, head_dir=args.head_dir,
                          budgets=args.budgets, node_costs=args.node_costs, temperature=temp, max_new_tokens=max_new,
                          repeats=args.repeats, threads=args.threads, limit=limit,
                          out=str(Path(args.out) / f"t{temp:g}"))
        results[temp] = run_bench(cfg, model=model, tokenizer=tok, prompts=prompts,
                                  threads_reason=threads.reason if threads else "torch's default")
    command = "python scripts/make_benchmarks.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    Path(args.write).write_text(render(results, args, command.strip()))
    print(f"wrote {args.write} and {args.out}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
