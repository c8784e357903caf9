"""Training-data writing speed: ``jetspec regenerate`` tokens/s against the batch size, beside HF ``generate``.

Both write the same greedy answers to the same prompts (the first ``--prompts-n`` rows of the prompt
file); only useful tokens count (a finished row's padding does not). jetspec's batched engine drops
a row when it ends, while HF ``generate`` keeps padding it until the batch's longest row ends.
Writes a Markdown table to ``--out`` (BENCHMARKS.md includes docs/results/regen_throughput.md).

    python experiments/regen_throughput.py --prompts runs/data/train_prompts.jsonl --threads 1 \\
        --batch-sizes 4,8,16,32 --out docs/results/regen_throughput.md
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path


def hf_rate(model, tok, prompts: list[str], max_new: int, batch: int) -> float:
    """Useful tokens/s of HF ``generate`` on the same left-padded batches."""
    import torch

    from jetspec.core.batched import left_pad
    from jetspec.core.prompts import chat_ids, eos_ids
    from jetspec.training.regenerate import cut_response

    eos = set(eos_ids(tok, model))
    pad = tok.pad_token_id if tok.pad_token_id is not None else min(eos)
    useful, t0 = 0, time.perf_counter()
    for i in range(0, len(prompts), batch):
        ids, mask = left_pad([chat_ids(tok, p) for p in prompts[i: i + batch]], pad)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                                 pad_token_id=pad, eos_token_id=sorted(eos), temperature=None, top_p=None, top_k=None)
        useful += sum(len(cut_response(g, eos)[0]) for g in out[:, ids.shape[1]:].tolist())
    return useful / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--prompts-n", type=int, default=64, help="prompts per measurement (default: 64)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-sizes", default="4,8,16,32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--hf", action=argparse.BooleanOptionalAction, default=True, help="also time HF generate")
    ap.add_argument("--out", default="docs/results/regen_throughput.md")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    from jetspec.core.loading import load_target
    from jetspec.core.prompts import read_prompts
    from jetspec.training.regenerate import regenerate

    prompts = [r["prompt"] if isinstance(r, dict) else r for r in read_prompts(args.prompts, limit=args.prompts_n)]
    model, tok = load_target("smollm2-135m-instruct")
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    regenerate(model, tok, prompts[:2], Path(tempfile.mkdtemp()) / "warm.jsonl", max_new_tokens=4, progress=False)
    lines = ["| batch | jetspec regenerate tok/s | HF generate tok/s | jetspec / HF |", "|---|---|---|---|"]
    for b in sizes:
        stats = regenerate(model, tok, prompts, Path(tempfile.mkdtemp()) / "r.jsonl",
                           max_new_tokens=args.max_new_tokens, batch_size=b, progress=False)
        ours = stats["tokens_per_s"]
        theirs = hf_rate(model, tok, prompts, args.max_new_tokens, b) if args.hf else float("nan")
        lines.append(f"| {b} | {ours:.0f} | {theirs:.0f} | {ours / theirs:.2f} |")
        print(lines[-1], flush=True)
    head = (f"Greedy answers to the first {len(prompts)} prompts of `{args.prompts}`, <= {args.max_new_tokens} new "
            f"tokens, {args.threads} thread(s), fp32, {platform.processor() or platform.machine()}, load average "
            f"{os.getloadavg()[0]:.2f} at the end. Useful tokens only.")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("## Writing training data: tokens/s against batch size\n\n" + head + "\n\n"
                              + "\n".join(lines) + "\n\nCommand: `python experiments/regen_throughput.py "
                              f"--prompts {args.prompts} --prompts-n {args.prompts_n} --threads {args.threads} "
                              f"--batch-sizes {args.batch_sizes} "
                              f"--max-new-tokens {args.max_new_tokens} --out {args.out}`\n")


if __name__ == "__main__":
    main()
