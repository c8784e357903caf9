"""Measure greedy speculative vs plain decoding of SmolLM2-135M in bf16 (docs/half_precision.md).

For each prompt, plain greedy decoding (one-row steps) and speculative decoding with the shipped
JetSpec head (tree forwards) run on the same bf16 target and engine; the script writes a Markdown
table: whether the outputs are identical and, at the first differing token, the plain logit
margin between the two tokens (also in bf16 spacings), the plain top-1/top-2 margin, and the
largest |plain - tree| logit difference there and over the shared prefix
(``jetspec.evaluation.precision``). ``--dtype fp32`` is the control (the outputs must all be identical).

    nice -n 19 python experiments/half_precision.py --threads 1 --out runs/half_precision.md
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from jetspec.core.loading import load_target
from jetspec.core.prompts import builtin_prompts, chat_ids, eos_ids
from jetspec.core.target import TargetModel
from jetspec.evaluation.drafter_specs import DEFAULT_HEAD_DIR, DrafterUnavailable, make_drafter
from jetspec.evaluation.precision import RecordingDecoder, compare, markdown_table, plain_trace, summary
from jetspec.trees import BestFirstBuilder

# Nine more prompts in the built-in sets' style, so that 24 prompts need no data files.
EXTRA_PROMPTS = [
    ("math", "A farmer has 7 rows of 9 apple trees. Each tree gives 15 apples. How many apples is that?"),
    ("math", "Anna saves $12 a week. How many weeks until she can buy a $150 bike? Explain."),
    ("math", "A rectangle is 8 cm wide and 13 cm long. What are its area and perimeter? Step by step."),
    ("code", "Write a Python function that returns the largest and smallest number in a list."),
    ("code", "Write a Python function that removes duplicates from a list while keeping the order."),
    ("code", "Write a Python function that converts a temperature from Celsius to Fahrenheit."),
    ("chat", "Why is the sky blue? Answer in a few sentences."),
    ("chat", "Suggest a simple weekly plan for someone who wants to start running."),
    ("chat", "What should I pack for a weekend camping trip?"),
]


def prompts(n: int) -> list[tuple[str, str]]:
    rows = [(r["set"], r["prompt"]) for r in builtin_prompts()] + EXTRA_PROMPTS
    if n > len(rows):
        raise SystemExit(f"only {len(rows)} prompts are defined")
    return rows[:n]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=24)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--budget", type=int, default=16)
    p.add_argument("--width", type=int, default=4)
    p.add_argument("--out", default="runs/half_precision.md")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    model, tok = load_target("smollm2-135m-instruct", dtype=dtype)
    target = TargetModel(model)  # the default engine
    try:
        head = make_drafter("jetspec", model, DEFAULT_HEAD_DIR)
    except DrafterUnavailable as err:
        raise SystemExit(f"the shipped JetSpec head did not load: {err}") from None
    builder = BestFirstBuilder(budget=args.budget, width=args.width, depth=head.max_depth)
    dec = RecordingDecoder(target, head, builder)
    eos = eos_ids(tok, model)
    rows, labels, t0 = [], [], time.perf_counter()
    for i, (kind, text) in enumerate(prompts(args.prompts)):
        ids = torch.tensor([chat_ids(tok, text)])
        r = compare(plain_trace(target, ids, args.max_new_tokens, eos), dec.trace(ids, args.max_new_tokens, eos))
        rows.append(r)
        labels.append(f"{i} {kind}")
        print(f"[{time.perf_counter() - t0:6.0f}s] {i:2d} {kind:4s} identical={r.identical} "
              f"first diff={r.position} margin={r.margin} spacings={r.margin_spacings}", flush=True)
    s = summary(rows)
    head_line = (f"SmolLM2-135M-Instruct in {args.dtype}, engine `{target.engine}`, shipped JetSpec head "
                 f"(BestFirstBuilder budget {args.budget}, width {args.width}, depth {head.max_depth}), "
                 f"{len(rows)} prompts x up to {args.max_new_tokens} tokens (EOS ends a run), "
                 f"{args.threads} thread(s), {time.perf_counter() - t0:.0f} s.\n\n"
                 f"Identical outputs: {s['identical']}/{s['prompts']} ({100 * s['share_identical']:.0f}%). "
                 f"Largest plain margin at a first divergence: {s['max_margin']} "
                 f"({s['max_margin_spacings']} bf16 spacings). Largest |plain - tree| logit difference at a "
                 f"shared position: {s['max_delta']:.4g}.\n\n")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(head_line + markdown_table(rows, labels) + "\n")
    print(head_line + markdown_table(rows, labels))


if __name__ == "__main__":
    main()
