"""``jetspec replay-table``: replay tau of several drafters per prompt set and budget, as a Markdown table.

Example::

    jetspec replay-table --refs runs/data/dev_refs.jsonl --budgets 8,16,32 \\
        --drafters "ngram,jetspec=runs/compare/jetspec-s0/head,jetspec=runs/compare/jetspec-s0/head+ngram" \\
        --out runs/replay_table.json --md runs/replay_table.md

No target forward runs per round (``jetspec.core.replay``), so many drafters and budgets fit on a CPU.
Prints the Markdown table; ``--out`` keeps the per-reference taus as JSON, ``--md`` the table for
``jetspec benchmarks --include``. Budget scaling::

    jetspec replay-table --refs runs/data/dev_refs.jsonl --drafters jetspec,dflash,eagle,ngram,jetspec+ngram \
        --budgets 4,8,16,32,64,128,256 --width 8 --scaling --plots runs/scaling --out runs/scaling/rows.json

``--scaling`` adds a drafter x budget tau table and per-depth acceptance; ``--plots`` draws
tau_vs_budget.png and depth_acceptance.png. Every flag is generated from a field of
``jetspec.evaluation.replay_tools.ReplayTableConfig``.
"""

from __future__ import annotations

import argparse

HELP = "replay tau of drafters on a reference set (no target per round)"


def register(sub: argparse._SubParsersAction) -> None:
    from jetspec.commands.flags import add_config_flags
    from jetspec.evaluation.replay_tools import ReplayTableConfig

    p = sub.add_parser("replay-table", help=HELP, description=__doc__.splitlines()[0])
    add_config_flags(p, ReplayTableConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    import logging
    from pathlib import Path

    import torch

    from jetspec.commands.flags import config_from_args
    from jetspec.core.loading import load_target
    from jetspec.core.replay import read_references
    from jetspec.evaluation.plots import replay_plots
    from jetspec.evaluation.replay_tools import ReplayTableConfig, replay_markdown, replay_rows, scaling_markdown

    try:
        cfg = config_from_args(ReplayTableConfig, args)
    except ValueError as err:
        raise SystemExit(f"jetspec replay-table: {err}") from err
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # one line per (drafter, budget)
    torch.set_num_threads(cfg.threads)
    model, _ = load_target(cfg.target)
    try:
        refs = read_references(cfg.refs, model.get_output_embeddings().weight.shape[0])
        rows = replay_rows(cfg, model, refs)
    except (OSError, ValueError) as err:  # DrafterUnavailable is a ValueError
        raise SystemExit(f"jetspec replay-table: {err}") from None
    md = replay_markdown(rows, cfg, len(refs), sorted({r.set for r in refs}))
    if cfg.scaling:
        md += "\n\n" + scaling_markdown(rows)
    if cfg.plots:
        replay_plots(rows, cfg.plots)
    print("\n" + md)
    if cfg.md:
        Path(cfg.md).write_text(md + "\n")
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(json.dumps(rows, indent=1))
    return 0
