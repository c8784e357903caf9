"""Write a replay reference set: prompts + the target's greedy answers (plain decoding), as token ids.

    python scripts/make_references.py --prompts runs/data/dev.jsonl --per-set 8 \
        --max-new-tokens 128 --out runs/data/dev_refs.jsonl

The rows (``input_ids``, ``response_start``, ``set``) feed ``jetspec.replay.replay`` and
``jetspec train --eval-data``. Resumable: prompts whose reference is already in ``--out`` are skipped.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from jetspec.loading import load_target
from jetspec.prompts import chat_ids, eos_ids, read_jsonl, read_prompts
from jetspec.replay import make_references


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="smollm2-135m-instruct")
    p.add_argument("--prompts", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--per-set", type=int, default=8, help="first N prompts of every set")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.set_flush_denormal(True)
    model, tok = load_target(a.target)
    taken: dict[str, int] = {}
    rows = []
    for r in read_prompts(a.prompts):
        s = r.get("set") or "default"
        if taken.get(s, 0) < a.per_set:
            taken[s] = taken.get(s, 0) + 1
            rows.append({**r, "ids": chat_ids(tok, r["prompt"])})
    out = Path(a.out)
    done = {tuple(x["input_ids"][: x["response_start"]]) for x in read_jsonl(out)} if out.exists() else set()
    rows = [r for r in rows if tuple(r["ids"]) not in done]
    eos = eos_ids(tok, model)
    with out.open("a") as f:
        for r in rows:  # one at a time so an interrupted run keeps what it finished
            ref = make_references(model, [r["ids"]], a.max_new_tokens, [r.get("set") or "default"], eos,
                                  progress=False)[0]
            f.write(json.dumps(ref.to_row()) + "\n")
            f.flush()
            print(f"{ref.set}: {len(ref.input_ids) - ref.response_start} tokens", flush=True)


if __name__ == "__main__":
    main()
