"""``jetspec references``: a replay reference set, the target's greedy answers to prompts, as token ids.

Example::

    jetspec references --prompts runs/data/dev.jsonl --per-set 8 --max-new-tokens 128 \\
        --out runs/data/dev_refs.jsonl

The rows feed ``jetspec replay-table`` and ``jetspec train --eval-data``. Resumable: prompts whose
reference is already in ``--out`` are skipped. Every flag is generated from a field of
``jetspec.evaluation.replay_tools.ReferencesConfig``.
"""

from __future__ import annotations

import argparse

HELP = "write a replay reference set (greedy answers as token ids)"


def register(sub: argparse._SubParsersAction) -> None:
    from jetspec.commands.flags import add_config_flags
    from jetspec.evaluation.replay_tools import ReferencesConfig

    p = sub.add_parser("references", help=HELP, description=__doc__.splitlines()[0])
    add_config_flags(p, ReferencesConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    import torch

    from jetspec.commands.flags import config_from_args
    from jetspec.core.loading import load_target
    from jetspec.evaluation.replay_tools import ReferencesConfig, write_references

    try:
        cfg = config_from_args(ReferencesConfig, args)
    except ValueError as err:
        raise SystemExit(f"jetspec references: {err}") from err
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # one line per reference written
    torch.set_num_threads(cfg.threads)
    model, tok = load_target(cfg.target)
    n = write_references(model, tok, cfg)
    print(f"wrote {n} new reference(s) to {cfg.out}")
    return 0
