"""Draft time per round for B rows, batched (one head forward per step) vs one call per row.

    .venv/bin/python experiments/draft_batch_timing.py                       # ~5 minutes on one thread
    .venv/bin/python experiments/draft_batch_timing.py --drafters jetspec --batch-sizes 1,8 --out timing.jsonl

The shipped SmolLM2-135M-Instruct heads (``jetspec``, ``dflash``, ``eagle``) draft the rounds of
B rows of different lengths (``jetspec.evaluation.draft_timing``); the target only supplies the
taps. Prints a markdown table (ms per round, the per-row loop vs the batched call) and writes
every measurement as JSON lines to ``--out`` if given. Wall-clock numbers: take them on a quiet
machine.
"""

from __future__ import annotations

import argparse

import torch

from jetspec import load_target
from jetspec.commands.flags import add_config_flags, config_from_args
from jetspec.core.jsonl import write_jsonl
from jetspec.evaluation.draft_timing import DraftTimingConfig, speedup_table, time_draft_rounds
from jetspec.evaluation.drafter_specs import make_drafter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--drafters", default="jetspec,dflash,eagle", help="comma list of drafter specs")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0, help="torch seed (drafting is deterministic; kept for form)")
    parser.add_argument("--out", default=None, help="JSON lines file for the measurements")
    add_config_flags(parser, DraftTimingConfig)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = config_from_args(DraftTimingConfig, args)
    model, tokenizer = load_target("smollm2-135m-instruct")
    rows = []
    for spec in args.drafters.split(","):
        rows += time_draft_rounds(make_drafter(spec, model), model, tokenizer, cfg, label=spec)
    print(speedup_table(rows))
    if args.out:
        write_jsonl(args.out, rows)


if __name__ == "__main__":
    main()
