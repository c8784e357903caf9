"""Where a round's time goes on this CPU: draft-cost switches and verify cost vs tree size.

    python scripts/profile_round.py --heads full=jetspec/assets/heads/jetspec,small=runs/x/head \
        --threads 2 --out runs/profile_round.md

For each head (``label=folder``) it times ``draft`` on the prefixes of one reference answer with
the head's context K/V cache on (only new rows projected each round, the default) and off (the
whole context re-projected every round), with denormal flushing on and off; then one target
verify forward for best-first trees of several budgets against a single-token forward. Times
are medians over rounds, in ms; everything runs in this one process, so ratios are comparable.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from jetspec.drafters import ParallelHead
from jetspec.loading import load_target
from jetspec.prompts import read_jsonl
from jetspec.replay import as_references, reference_taps
from jetspec.target import TargetModel
from jetspec.trees import BestFirstBuilder
from jetspec.types import DraftInput


def time_drafts(head, ids, taps, start: int, rounds: int, cache: bool) -> float:
    times = []
    for r in range(rounds):
        a = start + r
        inp = DraftInput(tokens=ids[: a + 1], depth=head.max_depth, width=4, budget=16, taps=taps[:a],
                         round_index=r if cache else 0)  # round 0 = start over: re-project the context
        t0 = time.perf_counter()
        head.draft(inp)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times[2:])


def time_verify(target: TargetModel, head, ids, taps, a: int, budget: int, reps: int) -> float:
    times = []
    for _ in range(reps):
        target.prefill(ids[: a + 1])
        inp = DraftInput(tokens=ids[: a + 1], depth=head.max_depth, width=4, budget=budget, taps=taps[:a])
        tree = BestFirstBuilder(budget=budget, width=4, depth=head.max_depth).build(head.draft(inp), int(ids[a]))
        t0 = time.perf_counter()
        target.verify(tree)
        times.append(time.perf_counter() - t0)
    target.reset()
    return 1000 * statistics.median(times)


def one_token_ms(target: TargetModel, ids, a: int, reps: int = 7) -> float:
    """One plain-decoding step after a cached prefix of ``a`` tokens (the baseline forward)."""
    target.prefill(ids[: a + 1])
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        target.step(int(ids[a]))
        times.append(time.perf_counter() - t0)
        target.commit([], 1)  # drop the row again: every repetition sees the same prefix
    target.reset()
    return 1000 * statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="smollm2-135m-instruct")
    p.add_argument("--refs", default="runs/data/dev_refs.jsonl")
    p.add_argument("--heads", required=True, help="label=folder,label=folder")
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--budgets", default="0,8,16,32,64", help="0 = a one-token forward (plain decoding)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="write the Markdown tables here")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model, _ = load_target(a.target)
    ref = as_references(read_jsonl(a.refs))[0]
    ids = torch.tensor(ref.input_ids)
    lines = [f"### Per-round cost on this CPU ({a.threads} threads, `scripts/profile_round.py`)", "",
             "Head draft time per round (median ms over the rounds of one reference answer):", "",
             "| head | V' | cache on, flush on | cache off | denormals kept |", "|---|---|---|---|---|"]
    heads = {}
    for spec in a.heads.split(","):
        label, folder = spec.split("=", 1)
        head = heads[label] = ParallelHead.from_pretrained(folder, model)
        taps = reference_taps(model, head.tap_layers, [ref])[0]
        row = []
        for cache, flush in ((True, True), (False, True), (True, False)):
            torch.set_flush_denormal(flush)
            head.reset_cache()
            row.append(time_drafts(head, ids, taps, ref.response_start - 1, a.rounds, cache))
        torch.set_flush_denormal(True)
        v = head.config.draft_vocab_size or head.vocab_size
        lines.append(f"| {label} | {v} | {row[0]:.1f} | {row[1]:.1f} | {row[2]:.1f} |")
        print(lines[-1], flush=True)
    head = next(iter(heads.values()))
    taps = reference_taps(model, head.tap_layers, [ref])[0]
    target = TargetModel(model)
    target.set_taps(head.tap_layers)
    a_mid = ref.response_start + 32
    lines += ["", f"Target verify forward vs tree size (median ms, prefix of {a_mid} tokens, taps captured):", "",
              "| drafted nodes | ms | x one-token forward |", "|---|---|---|"]
    base = None
    for b in (int(x) for x in a.budgets.split(",")):
        ms = time_verify(target, head, ids, taps, a_mid, b, reps=7) if b else one_token_ms(target, ids, a_mid)
        base = base or ms
        lines.append(f"| {b or '1 (plain decoding)'} | {ms:.1f} | {ms / base:.2f} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
