"""``jetspec regenerate``: the target writes its own responses to a prompt file (training data).

Example (resumable: run the same command again after an interruption)::

    jetspec regenerate --target smollm2-135m-instruct --prompts runs/data/train_prompts.jsonl \\
        --out runs/data/regen.jsonl --max-new-tokens 256 --batch-size 24

The sampling flags come from the signature of ``jetspec.training.regenerate.regenerate`` and the others from
``RegenerateConfig`` below (``jetspec.commands.flags``), so every default exists once.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Optional

HELP = "let the target answer a prompt file (training data for heads)"
FUNCTION_FLAGS = ("max_new_tokens", "batch_size", "temperature", "top_p", "limit", "seed")


@dataclass
class RegenerateConfig:
    """What ``jetspec regenerate`` adds to the arguments of ``jetspec.training.regenerate.regenerate``."""

    prompts: str
    """JSON-lines prompt file: rows with 'prompt', or raw GSM8K / Code Alpaca / Alpaca seed rows."""
    out: str
    """Output JSON-lines file (appended; rows already in it, keyed by the prompt's position in --prompts,
    are skipped)."""
    target: str = "smollm2-135m-instruct"
    """HF model id, local folder or built-in name."""
    threads: Optional[int] = None
    """torch CPU threads; default: torch's choice."""


def register(sub: argparse._SubParsersAction) -> None:
    from jetspec.commands.flags import add_config_flags
    from jetspec.training.regenerate import regenerate

    p = sub.add_parser("regenerate", help=HELP, description=__doc__.splitlines()[0])
    add_config_flags(p, RegenerateConfig)
    add_config_flags(p, regenerate, only=FUNCTION_FLAGS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from jetspec.commands.flags import kwargs_from_args
    from jetspec.core.jsonl import check_not_input
    from jetspec.core.loading import load_target
    from jetspec.core.prompts import read_prompts
    from jetspec.core.sampling import SamplingConfig
    from jetspec.training.regenerate import regenerate

    try:  # before the target is loaded: the same rules as `jetspec generate`
        SamplingConfig(args.temperature, top_p=args.top_p)
        check_not_input(args.out, args.prompts, "--out", "--prompts")
        if args.threads is not None and args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        prompts = read_prompts(args.prompts, limit=args.limit)
    except ValueError as err:
        raise SystemExit(f"jetspec regenerate: {err}") from None
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model, tok = load_target(args.target)
    kwargs = kwargs_from_args(regenerate, args, skip=("model", "tokenizer", "prompts", "limit"))
    stats = regenerate(model, tok, prompts, args.out, **kwargs)
    print(f"wrote {stats['rows_written']} rows ({stats['rows_skipped']} already done) to {args.out}: "
          f"{stats['new_tokens']} tokens in {stats['seconds']:.0f} s ({stats['tokens_per_s']:.1f} tokens/s)")
    return 0
