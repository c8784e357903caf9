"""``jetspec faithfulness``: how far a drafter's best branch score is from the target's own log-prob.

Example::

    jetspec faithfulness --prompts runs/data/dev_refs.jsonl --drafters jetspec,dflash,eagle --budget 16 \\
        --out runs/faithfulness

``--prompts`` takes a reference file (``jetspec references``) or a prompt file, whose references
the target writes first (into ``--out``/references.jsonl). Per round of the greedy walk along each
reference, the rank-1 branch of the drafter's tree, its draft score, the target's joint log-prob of
it and their gap (``jetspec.evaluation.faithfulness``). Writes ``faithfulness.json`` (one row per
drafter), ``faithfulness.md``, ``gaps.png`` and ``rounds.jsonl`` (every round's top-k branches).
Every flag is generated from a field of ``jetspec.evaluation.faithfulness.FaithfulnessConfig``.
"""

from __future__ import annotations

import argparse

HELP = "branch faithfulness: draft score vs the target's log-prob of the drafter's best branches"


def register(sub: argparse._SubParsersAction) -> None:
    from jetspec.commands.flags import add_config_flags
    from jetspec.evaluation.faithfulness import FaithfulnessConfig

    p = sub.add_parser("faithfulness", help=HELP, description=__doc__.splitlines()[0])
    add_config_flags(p, FaithfulnessConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    import torch

    from jetspec.commands.flags import config_from_args
    from jetspec.core.loading import load_target
    from jetspec.evaluation.faithfulness import FaithfulnessConfig, run_faithfulness

    try:
        cfg = config_from_args(FaithfulnessConfig, args)
    except ValueError as err:
        raise SystemExit(f"jetspec faithfulness: {err}") from err
    if not Path(cfg.prompts).is_file():
        raise SystemExit(f"jetspec faithfulness: --prompts {cfg.prompts} is not a file")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(cfg.threads)
    model, tok = load_target(cfg.target)
    try:
        run_faithfulness(cfg, model, tok)
    except ValueError as err:
        raise SystemExit(f"jetspec faithfulness: {err}") from err
    print((Path(cfg.out) / "faithfulness.md").read_text())
    return 0
