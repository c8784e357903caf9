"""``jetspec prepare-data``: held-out dev splits and a shuffled training mix from the source prompt files.

Example::

    jetspec prepare-data --data-dir /path/to/data --out runs/data --dev-size 40 --distill

Writes ``dev_{math,code,chat}.jsonl``, ``dev.jsonl``, ``train_prompts.jsonl``, ``split.json`` (and
``distill.jsonl`` with ``--distill``) into ``--out``; see ``jetspec.splits``. Every flag is
generated from a field of ``jetspec.splits.PrepareDataConfig``.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing


def register(sub: argparse._SubParsersAction) -> None:
    from jetspec.commands.bench import _arg_type, field_docs
    from jetspec.splits import PrepareDataConfig

    p = sub.add_parser("prepare-data", help="held-out dev splits and a training prompt mix",
                       description=__doc__.splitlines()[0])
    docs, hints = field_docs(PrepareDataConfig), typing.get_type_hints(PrepareDataConfig)
    for f in dataclasses.fields(PrepareDataConfig):
        # bool flags also work bare (--distill), as the script they replace accepted them
        bare = {"nargs": "?", "const": True} if hints[f.name] is bool else {}
        p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=_arg_type(hints[f.name]),
                       default=f.default, help=f"{docs.get(f.name, '')} (default: {f.default})", **bare)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from jetspec.splits import PrepareDataConfig, prepare_data

    names = {f.name for f in dataclasses.fields(PrepareDataConfig)}
    try:
        cfg = PrepareDataConfig(**{k: v for k, v in vars(args).items() if k in names})
        counts = prepare_data(cfg)
    except ValueError as err:
        raise SystemExit(f"jetspec prepare-data: {err}") from err
    print(f"wrote {cfg.out}: {json.dumps(counts)}")
    return 0
