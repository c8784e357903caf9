"""``jetspec regenerate``: the target writes its own responses to a prompt file (training data).

Example (resumable: run the same command again after an interruption)::

    jetspec regenerate --target smollm2-135m-instruct --prompts runs/data/train_prompts.jsonl \\
        --out runs/data/regen.jsonl --max-new-tokens 256 --batch-size 24

Defaults are read from the signature of ``jetspec.regenerate.regenerate`` so they exist once.
"""

from __future__ import annotations

import argparse
import inspect


def _defaults() -> dict:
    from jetspec.regenerate import regenerate

    return {k: p.default for k, p in inspect.signature(regenerate).parameters.items()
            if p.default is not inspect.Parameter.empty}


def register(sub: argparse._SubParsersAction) -> None:
    d = _defaults()
    p = sub.add_parser("regenerate", help="let the target answer a prompt file (training data for heads)",
                       description=__doc__.splitlines()[0])
    p.add_argument("--target", default="smollm2-135m-instruct",
                   help="HF model id, local folder or built-in name (default: smollm2-135m-instruct)")
    p.add_argument("--prompts", required=True,
                   help="JSON-lines prompt file: rows with 'prompt', or raw GSM8K / Code Alpaca / "
                        "Alpaca seed rows")
    p.add_argument("--out", required=True,
                   help="output JSON-lines file (appended; rows already in it, keyed by the prompt's "
                        "position in --prompts, are skipped)")
    p.add_argument("--max-new-tokens", type=int, default=d["max_new_tokens"])
    p.add_argument("--batch-size", type=int, default=d["batch_size"])
    p.add_argument("--temperature", type=float, default=d["temperature"], help="0 = greedy")
    p.add_argument("--top-p", type=float, default=d["top_p"])
    p.add_argument("--limit", type=int, default=d["limit"], help="only the first N prompts of the file")
    p.add_argument("--seed", type=int, default=d["seed"],
                   help="sampling seed; each row's own seed derives from it and the row's id")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from jetspec.loading import load_target
    from jetspec.prompts import read_prompts
    from jetspec.regenerate import regenerate
    from jetspec.sampling import SamplingConfig

    try:  # before the target is loaded: the same rules as `jetspec generate`
        SamplingConfig(args.temperature, top_p=args.top_p)
    except ValueError as err:
        raise SystemExit(f"jetspec regenerate: {err}") from None
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    # Without this, matmuls that meet denormal floats run many times slower on some CPUs.
    torch.set_flush_denormal(True)
    prompts = read_prompts(args.prompts, limit=args.limit)
    model, tok = load_target(args.target)
    stats = regenerate(model, tok, prompts, args.out, max_new_tokens=args.max_new_tokens,
                       batch_size=args.batch_size, temperature=args.temperature, top_p=args.top_p,
                       seed=args.seed)
    print(f"wrote {stats['rows_written']} rows ({stats['rows_skipped']} already done) to {args.out}: "
          f"{stats['new_tokens']} tokens in {stats['seconds']:.0f} s ({stats['tokens_per_s']:.1f} tokens/s)")
    return 0
