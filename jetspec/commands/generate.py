"""``jetspec generate``: speculative generation from a prompt with any registered parts.

Flags come from three places, each the home of its defaults (``jetspec.commands.flags``):
``GenerateConfig`` below (what only this command has), the tree builder's constructor
(``--budget``, ``--width``, ``--depth``, ``--node-cost``) and ``SpeculativeDecoder.generate``
(``--max-new-tokens``, ``--temperature``, ``--top-k``, ``--top-p``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Optional

HELP = "generate text with speculative decoding"
TREE_FLAGS = ("budget", "width", "depth", "node_cost")
SAMPLING_FLAGS = ("max_new_tokens", "temperature", "top_k", "top_p")


@dataclass
class GenerateConfig:
    """What ``jetspec generate`` adds to the tree builder's and the decoder's own arguments."""

    target: str
    """HF model id, local folder or built-in name."""
    prompt: str
    """The user message (the target's chat template is applied)."""
    drafter: str = "ngram"
    """Registered drafter name, a+b for a composite, name:key=value for options (e.g. ngram:smoothing=1)."""
    head_dir: Optional[str] = None
    """Folder with trained heads in <dir>/<name>; default: the shipped heads."""
    tree: str = "bestfirst"
    """Tree builder: a registered name (jetspec.TREE_BUILDERS: bestfirst, chain, fanout, entropy, hybrid)."""
    seed: int = 0
    """Seed of the sampling generator (temperature > 0)."""
    threads: str = "auto"
    """torch CPU threads: a number, or auto = measure 1 vs all cores at start."""


def register(sub: argparse._SubParsersAction) -> None:
    from jetspec.commands.flags import add_config_flags
    from jetspec.core.decoding import SpeculativeDecoder
    from jetspec.trees import BestFirstBuilder

    p = sub.add_parser("generate", help=HELP, description=__doc__.splitlines()[0])
    add_config_flags(p, GenerateConfig)
    add_config_flags(p, BestFirstBuilder.__init__, only=TREE_FLAGS)
    add_config_flags(p, SpeculativeDecoder.generate, only=SAMPLING_FLAGS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from jetspec import SpeculativeDecoder
    from jetspec.core.interfaces import TREE_BUILDERS
    from jetspec.core.loading import load_target
    from jetspec.evaluation.drafter_specs import DrafterUnavailable, make_drafter
    from jetspec.evaluation.threads import choose_threads
    from jetspec.trees import make_tree_builder

    try:
        threads = choose_threads(args.threads)
    except ValueError as err:
        raise SystemExit(f"jetspec generate: {err}") from None
    torch.set_num_threads(threads.count)
    if args.tree not in TREE_BUILDERS:
        raise SystemExit(f"--tree must be one of {', '.join(sorted(TREE_BUILDERS))}")
    model, tok = load_target(args.target)
    try:
        drafter = make_drafter(args.drafter, model, args.head_dir)
    except DrafterUnavailable as err:
        raise SystemExit(f"cannot use drafter '{args.drafter}': {err}") from None
    depth = min(args.depth, drafter.max_depth or args.depth)  # a parallel head drafts block_size - 1
    try:
        dec = SpeculativeDecoder(model, drafter, make_tree_builder(args.tree, args.budget, args.width, depth,
                                                                   args.node_cost))
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
