"""Build jetspec's prompt files from the shared data: held-out dev splits and a training mix.

Benchmarks must never run on prompts a head was trained on, so the split happens once, here, with
a fixed seed, and everything downstream reads its files:

    OUT/dev_math.jsonl   N GSM8K questions            (held out)
    OUT/dev_code.jsonl   N Code Alpaca instructions   (held out)
    OUT/dev_chat.jsonl   N Alpaca seed tasks          (held out)
    OUT/dev.jsonl        the three above, in one file
    OUT/train_prompts.jsonl   every other prompt of the three sources, shuffled together
    OUT/distill.jsonl    (with --distill) the training prompts with the datasets' own answers,
                         tokenized in the regeneration row format (no generation needed)
    OUT/split.json       what was done: sources, counts, seed

Rows are ``{"prompt", "set", "reference"}`` (see ``jetspec.prompts``). Shuffling the training mix
matters for regeneration: it runs for hours and may be stopped at any time, and a shuffled file
gives a balanced mix of math, code and chat at every point.

Usage::

    python scripts/prepare_data.py                        # -> runs/data
    python scripts/prepare_data.py --out runs/data --dev-size 40 --distill
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from jetspec.prompts import read_prompts, write_jsonl

# set name -> file in the shared data folder
SOURCES = {"math": "gsm8k_train.jsonl", "code": "codealpaca.jsonl", "chat": "alpaca_seed_tasks.jsonl"}


def split_sources(data_dir: Path, dev_size: int, seed: int) -> tuple[dict[str, list[dict]], list[dict]]:
    """Per-set dev rows and the shuffled training mix."""
    rng = random.Random(seed)
    dev: dict[str, list[dict]] = {}
    train: list[dict] = []
    for set_name, file in SOURCES.items():
        path = data_dir / file
        if not path.is_file():
            raise SystemExit(f"missing {path}; pass --data-dir pointing at the shared data folder")
        rows = read_prompts(path, default_set=set_name)
        for r in rows:
            r["set"] = set_name
        # Duplicated prompts would leak between the splits: keep the first of each.
        seen, unique = set(), []
        for r in rows:
            if r["prompt"] not in seen:
                seen.add(r["prompt"])
                unique.append(r)
        rng.shuffle(unique)
        if dev_size >= len(unique):
            raise SystemExit(f"--dev-size {dev_size} leaves no training rows for '{set_name}' "
                             f"({len(unique)} rows)")
        dev[set_name] = unique[:dev_size]
        train.extend(unique[dev_size:])
    rng.shuffle(train)
    return dev, train


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="/work/shared/data", help="folder with the shared jsonl files")
    p.add_argument("--out", default="runs/data", help="output folder (git-ignored)")
    p.add_argument("--dev-size", type=int, default=40, help="held-out prompts per set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--distill", action="store_true",
                   help="also write distill.jsonl: training prompts + the datasets' own answers, tokenized")
    p.add_argument("--target", default="smollm2-135m-instruct", help="whose tokenizer --distill uses")
    args = p.parse_args(argv)

    out = Path(args.out)
    dev, train = split_sources(Path(args.data_dir), args.dev_size, args.seed)
    for set_name, rows in dev.items():
        write_jsonl(out / f"dev_{set_name}.jsonl", rows)
    write_jsonl(out / "dev.jsonl", [r for rows in dev.values() for r in rows])
    write_jsonl(out / "train_prompts.jsonl", train)
    counts = {"dev": {k: len(v) for k, v in dev.items()},
              "train": {k: sum(1 for r in train if r["set"] == k) for k in SOURCES}}
    if args.distill:
        from jetspec.loading import load_tokenizer
        from jetspec.regenerate import write_distillation

        counts["distill"] = write_distillation(load_tokenizer(args.target), train, out / "distill.jsonl")
    (out / "split.json").write_text(json.dumps({"data_dir": args.data_dir, "sources": SOURCES,
                                                "seed": args.seed, "dev_size": args.dev_size,
                                                "counts": counts}, indent=2) + "\n")
    print(f"wrote {out}: {json.dumps(counts)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
