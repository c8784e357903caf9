"""``jetspec prepare-data``: held-out dev splits and a shuffled training mix from the source prompt files.

Example::

    jetspec prepare-data --data-dir /path/to/data --out runs/data --dev-size 40 --distill

Writes ``dev_{math,code,chat}.jsonl``, ``dev.jsonl``, ``train_prompts.jsonl``, ``split.json`` (and
``distill.jsonl`` with ``--distill``) into ``--out``; see ``jetspec.evaluation.splits``. Every flag is
generated from a field of ``jetspec.evaluation.splits.PrepareDataConfig``.
"""

from __future__ import annotations

import argparse

HELP = "held-out dev splits and a training prompt mix"


def register(sub: argparse._SubParsersAction) -> None:
    from jetspec.commands.flags import add_config_flags
    from jetspec.evaluation.splits import PrepareDataConfig

    p = sub.add_parser("prepare-data", help=HELP, description=__doc__.splitlines()[0])
    add_config_flags(p, PrepareDataConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from jetspec.commands.flags import config_from_args
    from jetspec.evaluation.splits import PrepareDataConfig, prepare_data

    try:
        cfg = config_from_args(PrepareDataConfig, args)
        counts = prepare_data(cfg)
    except ValueError as err:
        raise SystemExit(f"jetspec prepare-data: {err} (--data-dir is the folder with the source files)") from err
    print(f"wrote {cfg.out}: {json.dumps(counts)}")
    return 0
