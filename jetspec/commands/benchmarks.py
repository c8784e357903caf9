"""``jetspec benchmarks``: rerun the benchmark on the held-out dev splits and rewrite BENCHMARKS.md.

Examples::

    jetspec benchmarks                 # the full run (hours on a 2-core CPU)
    jetspec benchmarks --quick         # a reduced run: a few prompts, short answers
    jetspec benchmarks --temperatures 0 --budgets 16 --include docs/results/roofline.md
    jetspec benchmarks --temperatures 0 --budgets 16 --include docs/results/roofline.md --render-only

One ``jetspec bench`` run per temperature on the dev prompts of ``jetspec prepare-data`` (built if
missing), rendered by ``jetspec.evaluation.benchmarks_md.render``; ``--include`` appends Markdown
sections written by other commands; ``--render-only`` rewrites the file from an earlier run's
results (same ``--out``) after an included section changed, without decoding again. Every flag is
generated from a field of ``jetspec.evaluation.benchmarks_md.BenchmarksConfig``.
"""

from __future__ import annotations

import argparse

HELP = ("rerun `jetspec bench` on the held-out dev splits, once per temperature, and rewrite BENCHMARKS.md "
        "(for one configurable run, use `jetspec bench`)")


def register(sub: argparse._SubParsersAction) -> None:
    from jetspec.commands.flags import add_config_flags
    from jetspec.evaluation.benchmarks_md import BenchmarksConfig

    p = sub.add_parser("benchmarks", help=HELP, description=__doc__.splitlines()[0])
    add_config_flags(p, BenchmarksConfig, skip={"include"})
    # --include is repeatable, one file each (a path may hold a comma), unlike other tuple flags
    p.add_argument("--include", action="append", default=None, metavar="MD",
                   help="append this Markdown file (a section written by another command); repeatable")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from jetspec.commands.flags import config_from_args
    from jetspec.core.loading import load_target
    from jetspec.evaluation.benchmarks_md import BenchmarksConfig, dev_prompts, load_results, render, run_benchmarks
    from jetspec.evaluation.threads import choose_threads

    args.include = tuple(args.include or ())  # argparse collects the repeated flag in a list (None: not given)
    try:
        cfg = config_from_args(BenchmarksConfig, args)
        missing = [path for path in cfg.include if not Path(path).is_file()]
        if missing:  # before hours of decoding, not after
            raise ValueError(f"--include {', '.join(missing)}: no such file")
        if cfg.render_only:
            Path(cfg.write).write_text(render(load_results(cfg), cfg))
            print(f"wrote {cfg.write} from {cfg.out}/")
            return 0
        prompts = dev_prompts(Path(cfg.data), cfg.effective_limit())  # before the target: fail fast
        threads = choose_threads(cfg.threads) if cfg.threads is not None else None
    except ValueError as err:
        raise SystemExit(f"jetspec benchmarks: {err}") from err
    # Process settings are the entry point's to make (run_bench leaves them alone).
    if threads is not None:
        torch.set_num_threads(threads.count)
    torch.set_flush_denormal(True)
    model, tok = load_target(cfg.target)
    results = run_benchmarks(cfg, model, tok, prompts, threads.reason if threads else "torch's default")
    Path(cfg.write).write_text(render(results, cfg))
    print(f"wrote {cfg.write} and {cfg.out}/")
    return 0
