"""``jetspec replay-table``: replay tau of several drafters per prompt set and budget, as a Markdown table.

Example::

    jetspec replay-table --refs runs/data/dev_refs.jsonl --budgets 8,16,32 \\
        --drafters "ngram,jetspec=runs/compare/jetspec-s0/head,jetspec=runs/compare/jetspec-s0/head+ngram" \\
        --out runs/replay_table.json --md runs/replay_table.md

No target forward runs per round (``jetspec.replay``), so many drafters and budgets fit on a CPU.
Prints the Markdown table; ``--out`` keeps the per-reference taus as JSON, ``--md`` the table for
``jetspec benchmarks --include``. Every flag is generated from a field of
``jetspec.replay_tools.ReplayTableConfig``.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing


def register(sub: argparse._SubParsersAction) -> None:
    from jetspec.commands.bench import _arg_type, field_docs
    from jetspec.replay_tools import ReplayTableConfig

    p = sub.add_parser("replay-table", help="replay tau of drafters on a reference set (no target per round)",
                       description=__doc__.splitlines()[0])
    docs, hints = field_docs(ReplayTableConfig), typing.get_type_hints(ReplayTableConfig)
    for f in dataclasses.fields(ReplayTableConfig):
        required = f.default is dataclasses.MISSING
        p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=_arg_type(hints[f.name]),
                       required=required, default=None if required else f.default,
                       help=docs.get(f.name, "") + ("" if required else f" (default: {f.default})"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    import logging
    from pathlib import Path

    import torch

    from jetspec.loading import load_target
    from jetspec.prompts import read_jsonl
    from jetspec.replay import as_references
    from jetspec.replay_tools import ReplayTableConfig, replay_markdown, replay_rows

    names = {f.name for f in dataclasses.fields(ReplayTableConfig)}
    try:
        cfg = ReplayTableConfig(**{k: v for k, v in vars(args).items() if k in names})
    except ValueError as err:
        raise SystemExit(f"jetspec replay-table: {err}") from err
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # one line per (drafter, budget)
    torch.set_num_threads(cfg.threads)
    model, _ = load_target(cfg.target)
    refs = as_references(read_jsonl(cfg.refs))
    rows, _skipped = replay_rows(cfg, model, refs)
    md = replay_markdown(rows, cfg, len(refs), sorted({r.set for r in refs}))
    print("\n" + md)
    if cfg.md:
        Path(cfg.md).write_text(md + "\n")
    if cfg.out:
        Path(cfg.out).write_text(json.dumps(rows, indent=1))
    return 0
