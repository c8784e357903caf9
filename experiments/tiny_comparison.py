"""The three learned drafters (+ conditioned JetSpec) on a tiny target, with equal training.

    .venv/bin/python experiments/tiny_comparison.py                 # ~3 minutes on one CPU thread
    .venv/bin/python experiments/tiny_comparison.py --steps 600 --seeds 0 1 2 --out results/tiny.md

What it does (docs/design.md §4 and §7):

1. A tiny random Llama (2 layers, H 64, V 128) whose lm_head is scaled by 30, so its next-token
   distributions are peaked like a trained LM's (the one ``tests/training/test_training.py`` learns on).
2. Training data written by the target itself: 128 random 8-token prompts, 32 tokens each,
   sampled at temperature 0.3.
3. Four heads trained identically: same data, steps, batch, anchors per sequence, learning rate
   and seed; 7 drafted depths each (parallel block 8, EAGLE 7 unrolled training-time-test steps).
   JetSpec one-pass, JetSpec conditioned (``conditioned=True``), DFlash (bidirectional), EAGLE.
   A control row drafts one-pass with the conditioned head's weights (which saw MASK blocks for
   only half of its anchors), to separate the second forward's effect from the training's.
4. Greedy decoding of held-out prompts with ``BestFirstBuilder(budget, width=4, depth=7)`` at
   each budget; tau (committed tokens per target forward, pooled) and draft forwards per round.

Output: a markdown table on stdout (and in ``--out`` if given). Greedy decoding is lossless, so
the numbers measure drafting quality only; wall-clock on this target says nothing about speed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import lightning as L
import torch

from jetspec import SpeculativeDecoder
from jetspec.drafters import DFlashHead, EagleHead, JetSpecHead
from jetspec.testing.toy import peaked_tiny_target
from jetspec.training.data import TokenDataModule, sample_continuations
from jetspec.trees import BestFirstBuilder

HEADS = {
    "JetSpec one-pass": lambda t, kw: JetSpecHead(t, block_size=8, **kw),
    "JetSpec conditioned": lambda t, kw: JetSpecHead(t, block_size=8, conditioned=True, **kw),
    "DFlash": lambda t, kw: DFlashHead(t, block_size=8, **kw),
    "EAGLE": lambda t, kw: EagleHead(t, ttt_steps=7, **kw),
}


CONTROL = "(control) conditioned-trained JetSpec, one-pass draft"


def measure(target, head, prompts, budget: int, new_tokens: int) -> tuple[float, float]:
    """Pooled tau and mean draft forwards per round over the prompts."""
    dec = SpeculativeDecoder(target, head, BestFirstBuilder(budget=budget, width=4, depth=7))
    lengths, forwards = [], []
    for p in prompts:
        res = dec.generate(p[None], max_new_tokens=new_tokens)
        lengths += res.accepted_lengths
        forwards += res.draft_forwards
    return sum(lengths) / len(lengths), sum(forwards) / len(forwards)


def run(seed: int, steps: int, budgets: list[int], num_prompts: int, new_tokens: int) -> dict:
    target = peaked_tiny_target(0)
    gen = torch.Generator().manual_seed(1)
    prompts = torch.randint(0, 128, (128, 8), generator=gen).tolist()
    held_out = torch.randint(0, 128, (num_prompts, 8), generator=gen)
    rows = sample_continuations(target, prompts, max_new_tokens=32, temperature=0.3, seed=0)
    results = {}
    for name, make in HEADS.items():
        torch.manual_seed(seed)
        head = make(target, dict(anchors_per_seq=32, lr=3e-3, warmup_steps=10, seed=seed))
        t0 = time.perf_counter()
        L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False).fit(
            head, datamodule=TokenDataModule(rows, batch_size=8, seed=seed))
        train_s = time.perf_counter() - t0
        results[name] = {b: measure(target, head, held_out, b, new_tokens) for b in budgets}
        print(f"seed {seed} {name}: trained {steps} steps in {train_s:.0f}s; " + ", ".join(
            f"B{b} tau {t:.2f}" for b, (t, _) in results[name].items()), flush=True)
        if head.config.__dict__.get("conditioned"):
            # Control: the same conditioned-trained weights drafting one-pass only (1 forward).
            head.config.conditioned = False
            results[CONTROL] = {b: measure(target, head, held_out, b, new_tokens) for b in budgets}
    return results


def table(all_results: list[dict], budgets: list[int], steps: int) -> str:
    seeds = len(all_results)
    lines = [f"tau (pooled, bonus included) and draft forwards per round; "
             f"BestFirstBuilder(width=4, depth=7); {steps} training steps; mean over {seeds} seed(s)", "",
             "| drafter | " + " | ".join(f"tau @ {b}" for b in budgets) + " | draft forwards / round |",
             "|---|" + "---|" * (len(budgets) + 1)]
    for name in list(HEADS) + [CONTROL]:
        taus = [sum(r[name][b][0] for r in all_results) / seeds for b in budgets]
        fw = sum(r[name][b][1] for r in all_results for b in budgets) / (seeds * len(budgets))
        lines.append(f"| {name} | " + " | ".join(f"{t:.2f}" for t in taus) + f" | {fw:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300, help="training steps per head")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="head init / data order seeds")
    ap.add_argument("--budgets", type=int, nargs="+", default=[8, 16, 32], help="drafted nodes per tree")
    ap.add_argument("--prompts", type=int, default=12, help="held-out prompts")
    ap.add_argument("--new-tokens", type=int, default=48, help="tokens generated per prompt")
    ap.add_argument("--out", type=Path, default=None, help="also write the table here (markdown)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # tiny forwards: more threads only add contention
    torch.set_flush_denormal(True)
    results = [run(s, args.steps, args.budgets, args.prompts, args.new_tokens) for s in args.seeds]
    text = table(results, args.budgets, args.steps)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
