"""``jetspec roofline``: what a k-row target forward costs here, beside the hardware's floor.

Example::

    jetspec roofline --rows 1,4,17,33,65 --threads 2 --out runs/roofline.md

Measures this machine's memory bandwidth and matrix throughput, the target's own product shapes
at skinny row counts on both product backends, each engine's forward over k rows (ratios to its
own one-token step), where that time goes (torch.profiler), and the ratios again while one other
CPU-bound process runs. Every flag is generated from a field of ``jetspec.evaluation.roofline.RooflineConfig``
(``jetspec.commands.flags``).
"""

from __future__ import annotations

import argparse

HELP = "verify-forward cost vs the machine's roofline floor"


def register(sub: argparse._SubParsersAction) -> None:
    from jetspec.commands.flags import add_config_flags
    from jetspec.evaluation.roofline import RooflineConfig

    p = sub.add_parser("roofline", help=HELP, description=__doc__.splitlines()[0])
    add_config_flags(p, RooflineConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from jetspec.commands.flags import config_from_args
    from jetspec.core.loading import load_target
    from jetspec.evaluation.roofline import RooflineConfig, roofline_markdown, run_roofline
    from jetspec.evaluation.threads import choose_threads

    try:
        cfg = config_from_args(RooflineConfig, args)
        threads = choose_threads(cfg.threads)
    except ValueError as err:
        raise SystemExit(f"jetspec roofline: {err}") from err
    torch.set_num_threads(threads.count)
    print(f"torch threads: {threads.reason}")
    model, _ = load_target(cfg.target)
    text = roofline_markdown(run_roofline(cfg, model), cfg)
    print(text)
    if cfg.out:
        import sys

        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        command = "jetspec roofline " + " ".join(sys.argv[2:]) if len(sys.argv) > 1 else "jetspec roofline"
        Path(cfg.out).write_text(f"## Roofline: a k-row target forward on this CPU\n\nCommand: `{command}`; torch "
                                 f"threads: {threads.reason}.\n\n{text}")
        print(f"wrote {cfg.out}")
    return 0
