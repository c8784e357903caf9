"""Replay reference sets: prompts and the target's greedy answers (plain decoding), as token ids.

``jetspec references`` writes them; the rows (``input_ids``, ``response_start``, ``set``) feed
``jetspec.replay.replay``, ``jetspec replay-table`` and ``jetspec train --eval-data``. Writing is
resumable: prompts whose reference is already in the output file are skipped, and every reference
is appended as soon as it is made, so an interrupted run keeps what it finished.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from jetspec.prompts import chat_ids, eos_ids, read_jsonl, read_prompts

log = logging.getLogger(__name__)


@dataclass
class ReferencesConfig:
    """Everything ``jetspec references`` can vary. The CLI flags are generated from these fields."""

    prompts: str
    """Prompt file (JSON lines with 'prompt' and optional 'set'), e.g. runs/data/dev.jsonl."""
    out: str
    """Reference file to write (JSON lines); existing rows are kept and their prompts skipped."""
    target: str = "smollm2-135m-instruct"
    """Target model: built-in name, local folder or Hub id."""
    per_set: int = 8
    """First N prompts of every prompt set."""
    max_new_tokens: int = 128
    """Longest greedy answer per prompt (fewer if the target ends its answer)."""
    threads: int = 1
    """torch CPU threads (set by the command, not by the library)."""

    def __post_init__(self) -> None:
        for name in ("per_set", "max_new_tokens", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")


def pick_prompts(rows: list[dict], per_set: int) -> list[dict]:
    """The first ``per_set`` rows of every set, in file order; a row without a set is in 'default'."""
    taken: dict[str, int] = {}
    picked = []
    for r in rows:
        s = r.get("set") or "default"
        if taken.get(s, 0) < per_set:
            taken[s] = taken.get(s, 0) + 1
            picked.append({**r, "set": s})
    return picked


def write_references(model, tokenizer, cfg: ReferencesConfig) -> int:
    """Append the missing references of ``cfg.prompts`` to ``cfg.out``; returns how many were written."""
    from jetspec.replay import make_references

    rows = [{**r, "ids": chat_ids(tokenizer, r["prompt"])} for r in pick_prompts(read_prompts(cfg.prompts),
                                                                                   cfg.per_set)]
    out = Path(cfg.out)
    done = {tuple(x["input_ids"][: x["response_start"]]) for x in read_jsonl(out)} if out.exists() else set()
    rows = [r for r in rows if tuple(r["ids"]) not in done]
    eos = eos_ids(tokenizer, model)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        for r in rows:  # one at a time so an interrupted run keeps what it finished
            ref = make_references(model, [r["ids"]], cfg.max_new_tokens, [r["set"]], eos, progress=False)[0]
            f.write(json.dumps(ref.to_row()) + "\n")
            f.flush()
            log.info("%s: %d tokens", ref.set, len(ref.input_ids) - ref.response_start)
    return len(rows)
