"""Held-out dev splits and a shuffled training mix, built once from the shared prompt files.

Benchmarks must never run on prompts a head was trained on, so the split happens once, here, with
a fixed seed, and everything downstream reads its files (``jetspec prepare-data`` writes them):

    OUT/dev_math.jsonl   N GSM8K questions            (held out)
    OUT/dev_code.jsonl   N Code Alpaca instructions   (held out)
    OUT/dev_chat.jsonl   N Alpaca seed tasks          (held out)
    OUT/dev.jsonl        the three above, in one file
    OUT/train_prompts.jsonl   every other prompt of the three sources, shuffled together
    OUT/distill.jsonl    (with distill) the training prompts with the datasets' own answers,
                         tokenized in the regeneration row format (no generation needed)
    OUT/split.json       what was done: sources, counts, seed

Rows are ``{"prompt", "set", "reference"}`` (see ``jetspec.core.prompts``). Shuffling the training mix
matters for regeneration: it runs for hours and may be stopped at any time, and a shuffled file
gives a balanced mix of math, code and chat at every point.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from jetspec.core.prompts import read_prompts, write_jsonl

# set name -> file in the source data folder (--data-dir)
SOURCES = {"math": "gsm8k_train.jsonl", "code": "codealpaca.jsonl", "chat": "alpaca_seed_tasks.jsonl"}
SETS = tuple(SOURCES)


@dataclass
class PrepareDataConfig:
    """Everything ``jetspec prepare-data`` can vary. The CLI flags are generated from these fields."""

    data_dir: str = "data"
    """Folder with the source jsonl files (gsm8k_train, codealpaca, alpaca_seed_tasks); they are not
    shipped with jetspec: bring your own copies."""
    out: str = "runs/data"
    """Output folder (git-ignored)."""
    dev_size: int = 40
    """Held-out prompts per set."""
    seed: int = 0
    """Seed of the shuffles (the split is a pure function of the files and this seed)."""
    distill: bool = False
    """Also write distill.jsonl: training prompts + the datasets' own answers, tokenized."""
    target: str = "smollm2-135m-instruct"
    """Whose tokenizer distill uses."""

    def __post_init__(self) -> None:
        if self.dev_size < 1:
            raise ValueError(f"--dev-size must be >= 1, got {self.dev_size}")


def _unique_prompts(rows: list[dict]) -> list[dict]:
    """The first row of every distinct prompt: duplicates would leak between the splits."""
    seen, unique = set(), []
    for r in rows:
        if r["prompt"] not in seen:
            seen.add(r["prompt"])
            unique.append(r)
    return unique


def split_sources(data_dir: Path, dev_size: int, seed: int) -> tuple[dict[str, list[dict]], list[dict]]:
    """Per-set dev rows and the shuffled training mix; ``ValueError`` if a file or enough rows are missing."""
    rng = random.Random(seed)
    dev: dict[str, list[dict]] = {}
    train: list[dict] = []
    for set_name, file in SOURCES.items():
        path = Path(data_dir) / file
        if not path.is_file():
            raise ValueError(f"missing source file {path}")
        rows = read_prompts(path, default_set=set_name)
        for r in rows:
            r["set"] = set_name
        unique = _unique_prompts(rows)
        rng.shuffle(unique)
        if dev_size >= len(unique):
            raise ValueError(f"--dev-size {dev_size} leaves no training rows for '{set_name}' ({len(unique)} rows)")
        dev[set_name] = unique[:dev_size]
        train.extend(unique[dev_size:])
    rng.shuffle(train)
    return dev, train


def prepare_data(cfg: PrepareDataConfig) -> dict:
    """Write the split files of the module docstring into ``cfg.out``; returns the row counts."""
    out = Path(cfg.out)
    dev, train = split_sources(Path(cfg.data_dir), cfg.dev_size, cfg.seed)
    for set_name, rows in dev.items():
        write_jsonl(out / f"dev_{set_name}.jsonl", rows)
    write_jsonl(out / "dev.jsonl", [r for rows in dev.values() for r in rows])
    write_jsonl(out / "train_prompts.jsonl", train)
    counts = {"dev": {k: len(v) for k, v in dev.items()},
              "train": {k: sum(1 for r in train if r["set"] == k) for k in SOURCES}}
    if cfg.distill:
        from jetspec.core.loading import load_tokenizer
        from jetspec.training.regenerate import write_distillation

        counts["distill"] = write_distillation(load_tokenizer(cfg.target), train, out / "distill.jsonl")
    (out / "split.json").write_text(json.dumps({"data_dir": cfg.data_dir, "sources": SOURCES, "seed": cfg.seed,
                                                "dev_size": cfg.dev_size, "counts": counts}, indent=2) + "\n")
    return counts
