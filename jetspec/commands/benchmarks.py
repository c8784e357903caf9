"""``jetspec benchmarks``: rerun the benchmark on the held-out dev splits and rewrite BENCHMARKS.md.

Examples::

    jetspec benchmarks                 # the full run (hours on a 2-core CPU)
    jetspec benchmarks --quick         # a reduced run: a few prompts, short answers
    jetspec benchmarks --temperatures 0 --budgets 16 --include docs/results/roofline.md

One ``jetspec bench`` run per temperature on the dev prompts of ``jetspec prepare-data`` (built if
missing), rendered by ``jetspec.bench_report.render``; ``--include`` appends Markdown sections written
by other commands. Every flag is generated from a field of ``jetspec.bench_report.BenchmarksConfig``.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing


def register(sub: argparse._SubParsersAction) -> None:
    from jetspec.bench_report import BenchmarksConfig
    from jetspec.commands.bench import _arg_type, field_docs

    p = sub.add_parser("benchmarks", help="rerun the benchmark on the dev splits and rewrite BENCHMARKS.md",
                       description=__doc__.splitlines()[0])
    docs, hints = field_docs(BenchmarksConfig), typing.get_type_hints(BenchmarksConfig)
    for f in dataclasses.fields(BenchmarksConfig):
        kind = hints[f.name]
        extra: dict = {"type": _arg_type(kind), "default": f.default}
        if kind is bool:  # bare --quick, as the script it replaces accepted it
            extra.update(nargs="?", const=True)
        elif typing.get_origin(kind) is tuple:  # --include: repeatable, one file each
            extra.update(action="append", default=None, metavar="MD")
        p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name,
                       help=f"{docs.get(f.name, '')} (default: {f.default})", **extra)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from jetspec.bench_report import BenchmarksConfig, dev_prompts, render, run_benchmarks
    from jetspec.loading import load_target
    from jetspec.threads import choose_threads

    names = {f.name for f in dataclasses.fields(BenchmarksConfig)}
    try:
        cfg = BenchmarksConfig(**{k: v for k, v in vars(args).items() if k in names})
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
