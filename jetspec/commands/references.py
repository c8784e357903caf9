"""``jetspec references``: a replay reference set, the target's greedy answers to prompts, as token ids.

Example::

    jetspec references --prompts runs/data/dev.jsonl --per-set 8 --max-new-tokens 128 \\
        --out runs/data/dev_refs.jsonl

The rows feed ``jetspec replay-table`` and ``jetspec train --eval-data``. Resumable: prompts whose
reference is already in ``--out`` are skipped. Every flag is generated from a field of
``jetspec.replay_tools.ReferencesConfig``.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing


def register(sub: argparse._SubParsersAction) -> None:
    from jetspec.commands.bench import _arg_type, field_docs
    from jetspec.replay_tools import ReferencesConfig

    p = sub.add_parser("references", help="write a replay reference set (greedy answers as token ids)",
                       description=__doc__.splitlines()[0])
    docs, hints = field_docs(ReferencesConfig), typing.get_type_hints(ReferencesConfig)
    for f in dataclasses.fields(ReferencesConfig):
        required = f.default is dataclasses.MISSING
        p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=_arg_type(hints[f.name]),
                       required=required, default=None if required else f.default,
                       help=docs.get(f.name, "") + ("" if required else f" (default: {f.default})"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    import torch

    from jetspec.loading import load_target
    from jetspec.replay_tools import ReferencesConfig, write_references

    names = {f.name for f in dataclasses.fields(ReferencesConfig)}
    try:
        cfg = ReferencesConfig(**{k: v for k, v in vars(args).items() if k in names})
    except ValueError as err:
        raise SystemExit(f"jetspec references: {err}") from err
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # one line per reference written
    torch.set_num_threads(cfg.threads)
    model, tok = load_target(cfg.target)
    n = write_references(model, tok, cfg)
    print(f"wrote {n} new reference(s) to {cfg.out}")
    return 0
