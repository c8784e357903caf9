"""``jetspec batching``: what batching does to plain and speculative decoding, written as a report.

Example::

    jetspec batching --batch-sizes 1,2,4,8 --drafters ngram,jetspec --md docs/results/batching.md

Runs ``jetspec bench`` at every batch size on the same prompts (left-padded batches; plain
decoding, HF generate and each drafter at each budget), times the verify forward over B rows x k
tree rows against a plain batched step, fits the per-node cost c(B), and writes the Markdown report
(``--md``), its plot (``--img``) and the raw results (``--out``). Every flag is generated from a
field of ``jetspec.evaluation.batching.BatchingConfig`` (``jetspec.commands.flags``).
"""

from __future__ import annotations

import argparse

HELP = "tokens/s and verify cost vs batch size; the budget that pays per batch size"


def register(sub: argparse._SubParsersAction) -> None:
    from jetspec.commands.flags import add_config_flags
    from jetspec.evaluation.batching import BatchingConfig

    p = sub.add_parser("batching", help=HELP, description=__doc__.splitlines()[0])
    add_config_flags(p, BatchingConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from jetspec.commands.flags import config_from_args
    from jetspec.core.loading import load_target
    from jetspec.evaluation.batching import BatchingConfig, run_batching
    from jetspec.evaluation.threads import choose_threads

    try:
        cfg = config_from_args(BatchingConfig, args)
        threads = choose_threads(cfg.threads) if cfg.threads is not None else None
    except ValueError as err:
        raise SystemExit(f"jetspec batching: {err}") from err
    if threads is not None:  # a process setting: the command makes it, the report records it
        torch.set_num_threads(threads.count)
    model, tok = load_target(cfg.target)
    result = run_batching(cfg, model, tok, threads_reason=threads.reason if threads else "torch's default")
    print(result["markdown"])
    print(f"\nwrote {cfg.md}, {cfg.img} and {cfg.out}/")
    return 0
