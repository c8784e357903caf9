"""Tokens per second of plain and speculative decoding at several batch sizes (docs/design.md §1.6).

    .venv/bin/python experiments/batch_speed.py                          # B = 1, 2, 4; SmolLM2-135M
    .venv/bin/python experiments/batch_speed.py --batch-sizes 1,2,4,8 --max-new-tokens 64 --threads 2

For every batch size B the first B built-in prompts (chat-templated, left-padded) are decoded by
plain decoding (``autoregressive_generate``) and by each speculative drafter spec
(``jetspec.evaluation.drafter_specs``) with ``BestFirstBuilder(budget, width, depth)``, greedy,
stopping rows at the tokenizer's EOS. One untimed warm-up call per (method, B) first, then
``--repeats`` timed calls; the median wall time is reported. Columns: total new tokens per second
(all rows), per row, tau (pooled over row-rounds), and the verify forward's seconds per round
against a plain step's at the same B, i.e. what one round's verify costs in plain steps.

Greedy outputs are checked equal to plain decoding's row by row (a wrong batch would show here
first). Wall-clock numbers depend on the machine and on whatever else runs on it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from jetspec import SpeculativeDecoder, autoregressive_generate, load_target
from jetspec.core.batched import left_pad
from jetspec.core.prompts import builtin_prompts, chat_ids
from jetspec.core.target import TargetModel
from jetspec.evaluation.drafter_specs import make_drafter
from jetspec.trees import BestFirstBuilder


def timed(fn, repeats: int):
    """(result of the last call, median seconds) after one untimed warm-up call."""
    fn()
    times, res = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = fn()
        times.append(time.perf_counter() - t0)
    return res, statistics.median(times)


def batch_speed(target: TargetModel, prompts: list[list[int]], batch_sizes, drafters: dict, builder,
                max_new_tokens: int, eos: int, pad: int, repeats: int = 1) -> list[dict]:
    """One row per (method, B): tokens/s (total and per row), tau, verify cost per round in plain steps."""
    rows = []
    for b in batch_sizes:
        ids, mask = left_pad(prompts[:b], pad)
        kw = dict(max_new_tokens=max_new_tokens, attention_mask=mask, eos_token_id=eos, pad_token_id=pad)
        plain, t_plain = timed(lambda: autoregressive_generate(target, ids, **kw), repeats)
        step = plain.timings["verify"] / len(plain.rows_per_round)
        rows.append(_row("ar", b, plain, t_plain, step))
        for name, make in drafters.items():
            dec = SpeculativeDecoder(target, make(), builder)
            res, t = timed(lambda: dec.generate(ids, **kw), repeats)
            same = all(a.sequences.equal(p.sequences) for a, p in zip(res.rows, plain.rows))
            rows.append({**_row(name, b, res, t, step), "equal_to_ar": same})
    return rows


def _row(method: str, b: int, res, seconds: float, plain_step: float) -> dict:
    new = res.num_new_tokens
    per_round = res.timings["verify"] / len(res.rows_per_round)
    return {"method": method, "B": b, "new_tokens": new, "seconds": seconds, "tok_s": new / seconds,
            "tok_s_per_row": new / seconds / b, "tau": res.tau, "verify_ms": 1e3 * per_round,
            "verify_in_steps": per_round / plain_step}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="smollm2-135m-instruct")
    ap.add_argument("--batch-sizes", default="1,2,4")
    ap.add_argument("--drafters", default="ngram", help="comma list of drafter specs")
    ap.add_argument("--budget", type=int, default=16)
    ap.add_argument("--width", type=int, default=4)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_target(args.target)
    target = TargetModel(model)
    sizes = [int(x) for x in args.batch_sizes.split(",")]
    prompts = [chat_ids(tok, r["prompt"]) for r in builtin_prompts()][: max(sizes)]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    drafters = {spec: (lambda spec=spec: make_drafter(spec, model)) for spec in args.drafters.split(",")}
    rows = batch_speed(target, prompts, sizes, drafters, BestFirstBuilder(args.budget, args.width, args.depth),
                       args.max_new_tokens, tok.eos_token_id, pad, args.repeats)
    print("| method | B | new tokens | s | tok/s total | tok/s per row | tau | verify ms/round | "
          "verify / plain step | equal to ar |\n|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['B']} | {r['new_tokens']} | {r['seconds']:.2f} | {r['tok_s']:.1f} | "
              f"{r['tok_s_per_row']:.1f} | {r['tau']:.2f} | {r['verify_ms']:.1f} | {r['verify_in_steps']:.2f} | "
              f"{r.get('equal_to_ar', '')} |")


if __name__ == "__main__":
    main()
