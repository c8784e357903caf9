"""``jetspec demo`` (= ``make demo``): real drafting on a real LLM, on a laptop CPU, in minutes.

It loads the embedded target (SmolLM2-135M-Instruct, offline) and the heads shipped in
``jetspec/assets/heads``, benchmarks a handful of built-in prompts (math, code, chat) against plain
decoding and Hugging Face ``generate`` in the same process, prints the table and writes the plots,
then prints one generation with the accepted draft spans marked.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Optional

HELP = "benchmark the shipped heads on SmolLM2 and show a generation"


@dataclass
class DemoConfig:
    """The demo's knobs; the CLI flags are generated from these fields (one source of defaults)."""

    target: str = "smollm2-135m-instruct"
    """Target model: built-in name, local folder or Hub id."""
    head_dir: Optional[str] = None
    """Folder with trained heads in <dir>/<drafter name>; default: the heads shipped inside the package."""
    drafters: tuple[str, ...] = ("ngram:smoothing=1", "jetspec", "dflash", "eagle", "jetspec+ngram:smoothing=1")
    """Drafter specs to benchmark (comma list)."""
    budgets: tuple[int, ...] = (16,)
    """Drafted nodes per round (comma list)."""
    node_costs: tuple[float, ...] = (0.0, 0.055)
    """Whole-budget trees and cost-aware ones, side by side (c measured by `jetspec roofline`)."""
    prompts_per_set: int = 1
    """Built-in prompts taken from each of the math, code and chat sets."""
    max_new_tokens: int = 48
    """New tokens per prompt."""
    threads: str = "auto"
    """torch CPU threads: a number, or auto (measure 1 thread vs all cores at start, jetspec/evaluation/threads.py)."""
    out: str = "runs/demo"
    """Output folder for the tables and plots."""


def register(sub: argparse._SubParsersAction) -> None:
    from jetspec.commands.flags import add_config_flags

    p = sub.add_parser("demo", help=HELP, description=__doc__.splitlines()[0])
    add_config_flags(p, DemoConfig)
    p.set_defaults(func=run)


def marked_generation(tokenizer, prompt_len: int, res) -> str:
    """The generated text with each round's accepted drafts in [brackets]; bonus tokens are bare."""
    ids = res.sequences[0, prompt_len:].tolist()
    pieces, pos = [], 0
    for committed, drafted in zip(res.accepted_lengths, res.accepted_depths):
        drafted = min(drafted, committed)
        if drafted:
            pieces.append("[" + tokenizer.decode(ids[pos:pos + drafted]) + "]")
        pieces.append(tokenizer.decode(ids[pos + drafted:pos + committed]))
        pos += committed
    return "".join(pieces)


def run(args: argparse.Namespace) -> int:
    import time

    import torch

    from jetspec.core.decoding import SpeculativeDecoder
    from jetspec.core.loading import load_target
    from jetspec.core.prompts import builtin_prompts, chat_ids, eos_ids
    from jetspec.evaluation.bench import run_bench
    from jetspec.evaluation.drafter_specs import DrafterUnavailable, make_drafter
    from jetspec.evaluation.threads import choose_threads
    from jetspec.trees import BestFirstBuilder

    t0 = time.perf_counter()
    if args.prompts_per_set < 1:
        raise SystemExit(f"jetspec demo: --prompts-per-set must be >= 1, got {args.prompts_per_set}")
    try:
        threads = choose_threads(args.threads)
    except ValueError as err:
        raise SystemExit(f"jetspec demo: {err}") from None
    torch.set_num_threads(threads.count)  # process settings belong to the command (and jetspec.cli.main)
    print(f"[demo] torch threads: {threads.reason}")
    model, tok = load_target(args.target)
    print(f"[demo] target {args.target} loaded in {time.perf_counter() - t0:.1f}s")
    prompts = []
    for s in ("math", "code", "chat"):
        prompts += [r for r in builtin_prompts([s])][: args.prompts_per_set]
    result = run_bench(model=model, tokenizer=tok, prompts=prompts, drafters=args.drafters,
                       budgets=args.budgets, node_costs=args.node_costs, max_new_tokens=args.max_new_tokens,
                       head_dir=args.head_dir, out=args.out, threads=threads.count,
                       threads_reason=threads.reason)
    rows = [r for r in result["rows"] if r["prompt_set"] == "all"]
    width = max(18, max(len(r["drafter"]) for r in rows))
    print(f"\n{'drafter':{width}s} {'budget':>6s} {'tau':>5s} {'tok/s':>7s} {'vs HF greedy':>12s} {'vs ar':>6s}")
    for r in sorted(rows, key=lambda r: (-(r["tokens_per_s"] or 0))):
        budget = "-" if r.get("budget") in (None, 0) else str(r["budget"])
        print(f"{r['drafter']:{width}s} {budget:>6s} {r['tau']:5.2f} {r['tokens_per_s']:7.1f} "
              f"{(r['speedup_vs_hf'] or 0):11.2f}x {(r['speedup_vs_ar'] or 0):5.2f}x")
    print(f"\n[demo] tables and plots written to {args.out}/")

    # One generation, accepted draft spans in [brackets], with the best available drafter.
    drafter, name = None, None
    for name in ("jetspec", "ngram"):
        try:
            drafter = make_drafter(name, model, args.head_dir)
            break
        except DrafterUnavailable:
            continue
    ids = torch.tensor([chat_ids(tok, prompts[0]["prompt"])])
    depth = min(8, drafter.max_depth or 8)
    dec = SpeculativeDecoder(model, drafter, BestFirstBuilder(depth=depth))  # the builder's own budget and width
    res = dec.generate(ids, max_new_tokens=args.max_new_tokens, eos_token_id=eos_ids(tok, model) or None)
    print(f"\n[demo] {name} drafter, prompt: {prompts[0]['prompt']!r}\n")
    print(marked_generation(tok, ids.shape[1], res))
    print(f"\n[demo] tau {res.tau:.2f}: {sum(res.accepted_depths)} drafted tokens accepted in "
          f"{len(res.accepted_lengths)} rounds; total {time.perf_counter() - t0:.0f}s")
    return 0
