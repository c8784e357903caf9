"""``jetspec bench``: time drafters against plain decoding and Hugging Face on the same prompts.

Example::

    jetspec bench --drafters ngram,jetspec --budgets 8,16,32,64 --max-new-tokens 128 --out runs/bench
    jetspec bench --drafters ngram,jetspec --budgets 8,16 --batch-sizes 1,2,4,8 --out runs/bench-batch

Every flag is generated from a field of ``jetspec.evaluation.bench.BenchConfig`` (``jetspec.commands.flags``):
its name (``max_new_tokens`` -> ``--max-new-tokens``), its default and the docstring under it (the
help text). Defaults and help therefore live in one place.
"""

from __future__ import annotations

import argparse

HELP = ("one benchmark run you configure (drafters, budgets, prompts), results to --out; "
        "`jetspec benchmarks` runs it on the dev splits and rewrites BENCHMARKS.md")


def register(sub: argparse._SubParsersAction) -> None:
    from jetspec.commands.flags import add_config_flags
    from jetspec.evaluation.bench import BenchConfig

    p = sub.add_parser("bench", help=HELP, description=__doc__.splitlines()[0])
    add_config_flags(p, BenchConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from jetspec.commands.flags import config_from_args
    from jetspec.evaluation.bench import BenchConfig, run_bench
    from jetspec.evaluation.bench_outputs import columns_for, markdown_table
    from jetspec.evaluation.threads import choose_threads

    try:
        cfg = config_from_args(BenchConfig, args)
        threads = choose_threads(cfg.threads) if cfg.threads is not None else None
    except ValueError as err:
        raise SystemExit(f"jetspec bench: {err}") from err
    if threads is not None:  # a process setting: the command makes it, run_bench records it
        torch.set_num_threads(threads.count)
    try:
        result = run_bench(cfg, threads_reason=threads.reason if threads else "torch's default")
    except KeyboardInterrupt:
        print(f"\ninterrupted: every run measured so far is in {cfg.out}/runs.jsonl")
        return 130
    rows = [r for r in result["rows"] if r["prompt_set"] == "all"]
    print(markdown_table(rows, columns_for(rows)))
    print(f"\nwrote {cfg.out}/results.json, results.md, runs.jsonl" + (" and plots" if cfg.plots else ""))
    return 0
