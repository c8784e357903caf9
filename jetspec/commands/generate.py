"""``jetspec generate``: speculative generation from a prompt with any registered parts."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate text with speculative decoding")
    p.add_argument("--target", required=True, help="HF model id, local folder or built-in name")
    p.add_argument("--prompt", required=True)
    p.add_argument("--drafter", default="ngram",
                   help="registered drafter name, a+b for a composite, name:key=value for options "
                        "(e.g. ngram:smoothing=1) (default: ngram)")
    p.add_argument("--head-dir", default=None,
                   help="folder with trained heads in <dir>/<name> (default: the shipped heads)")
    p.add_argument("--tree", default="bestfirst", help="chain | bestfirst | fanout")
    p.add_argument("--budget", type=int, default=32)
    p.add_argument("--width", type=int, default=4)
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--node-cost", type=float, default=0.0,
                   help="verify cost per drafted node in plain steps: trees stop growing where a node "
                        "would not pay (0 = spend the whole budget; about 0.055 on a 2-core CPU, "
                        "measured by `jetspec roofline`)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", default="auto",
                   help="torch CPU threads: a number, or auto = measure 1 vs all cores at start (default: auto)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from jetspec import SpeculativeDecoder
    from jetspec.bench import DEFAULT_HEAD_DIR, make_drafter
    from jetspec.interfaces import TREE_BUILDERS
    from jetspec.loading import load_target
    from jetspec.threads import choose_threads

    try:
        threads = choose_threads(args.threads)
    except ValueError as err:
        raise SystemExit(f"jetspec generate: {err}") from None
    torch.set_num_threads(threads.count)
    model, tok = load_target(args.target)
    head_dir = Path(args.head_dir) if args.head_dir else DEFAULT_HEAD_DIR
    drafter, reason = make_drafter(args.drafter, model, head_dir)
    if drafter is None:
        raise SystemExit(f"cannot use drafter '{args.drafter}': {reason}")
    depth = min(args.depth, drafter.max_depth or args.depth)  # a parallel head drafts block_size - 1
    if args.tree not in TREE_BUILDERS:
        raise SystemExit(f"--tree must be one of {', '.join(sorted(TREE_BUILDERS))}")
    shape = dict(depth=depth, node_cost=args.node_cost)
    if args.tree != "chain":
        shape.update(budget=args.budget, width=args.width)
    try:
        dec = SpeculativeDecoder(model, drafter, TREE_BUILDERS[args.tree](**shape))
    except ValueError as err:
        raise SystemExit(str(err)) from None
    msgs = [{"role": "user", "content": args.prompt}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    ids = ids["input_ids"]
    res = dec.generate(ids, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                       top_k=args.top_k, top_p=args.top_p, eos_token_id=tok.eos_token_id,
                       generator=torch.Generator().manual_seed(args.seed))
    print(tok.decode(res.sequences[0, ids.shape[1]:], skip_special_tokens=True))
    print(f"\n[tau {res.tau:.2f} over {len(res.accepted_lengths)} rounds; threads {threads.reason}]")
    return 0
