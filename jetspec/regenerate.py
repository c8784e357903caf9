"""Let the target write the training responses itself ("regeneration"), and the cheap alternative.

A draft head learns to predict what *the target* will write. Training it on a dataset's own
answers teaches it somebody else's style; training on answers the target regenerated for the same
prompts is what the JetSpec paper found to matter most (MATH-500: 9.64x with regenerated data vs
3.66x with the raw corpus, METHOD.md section 2.1). Regeneration is also the slow part of the
pipeline on a CPU (ENVIRONMENT.md: ~140 useful tokens/s at batch 32), so this module is built to
run for hours unattended:

* batched Hugging Face ``generate`` with *left* padding (every row's last prompt token sits in the
  last column, so all rows start generating at the same step);
* resumable: rows whose prompt is already in the output file are skipped, and each finished row is
  appended and flushed at once, so an interrupted job loses at most one batch;
* a tqdm progress bar with the useful (non-padding) tokens per second.

Each output row holds the token ids the head trains on, so nothing is re-tokenized later::

    {"prompt": str, "response": str, "input_ids": [prompt ids + response ids], "response_start": int,
     "set": str | None, "finish_reason": "eos" | "length"}

``write_distillation`` writes the same row format from the dataset's own answers. Those rows need
no generation at all (only a teacher forward when training), so they are a fast first data set.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch
from tqdm.auto import tqdm

from jetspec.prompts import chat_ids, eos_ids, read_jsonl
from jetspec.sampling import SamplingConfig


def done_prompts(out_path: str | os.PathLike) -> set[str]:
    """Prompts that already have a row in ``out_path`` (empty if it does not exist yet).

    A final line cut off by an interrupted write is ignored (and overwritten on resume).
    """
    done: set[str] = set()
    if not Path(out_path).exists():
        return done
    with open(out_path, encoding="utf-8") as f:
        for line in f:
            try:
                done.add(json.loads(line)["prompt"])
            except (json.JSONDecodeError, KeyError):
                continue
    return done


def _trim_partial_line(out_path: Path) -> None:
    """Drop a half-written last line left by a killed job, so appended rows stay one per line."""
    if not out_path.exists() or out_path.stat().st_size == 0:
        return
    with open(out_path, "rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return
        f.seek(0)
        f.truncate(data.rfind(b"\n") + 1)


def _as_rows(prompts: Iterable) -> list[dict]:
    """Accept prompt strings or rows with a ``prompt`` (and optional ``set``) field."""
    rows = []
    for p in prompts:
        rows.append({"prompt": p, "set": None} if isinstance(p, str) else
                    {"prompt": p["prompt"], "set": p.get("set")})
    return rows


def left_pad(seqs: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack token lists into ``input_ids`` [B, T] and ``attention_mask`` [B, T], padded on the left.

    Left, not right: ``generate`` appends each new token after the last column, which must be
    every row's real last token.
    """
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)  # [B, T]
    mask = torch.zeros((len(seqs), width), dtype=torch.long)  # [B, T]
    for b, s in enumerate(seqs):
        ids[b, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[b, width - len(s):] = 1
    return ids, mask


def cut_response(generated: list[int], eos: set[int]) -> tuple[list[int], str]:
    """A row's response ids up to and including its first EOS, and why it stopped.

    The EOS is kept: a head should also learn where the target stops. A row that finished early
    is filled with padding by ``generate`` while the rest of the batch continues; those pads
    come after the EOS and are cut with it.
    """
    for i, t in enumerate(generated):
        if t in eos:
            return generated[: i + 1], "eos"
    return generated, "length"


@torch.no_grad()
def regenerate(model, tokenizer, prompts: Iterable, out_path: str | os.PathLike, max_new_tokens: int = 256,
               batch_size: int = 16, temperature: float = 0.0, top_p: Optional[float] = None,
               seed: int = 0, limit: Optional[int] = None, progress: bool = True) -> dict:
    """Have the target answer every prompt and append the rows to ``out_path`` (JSON lines).

    Args:
        model: a Hugging Face causal LM (the target).
        tokenizer: its tokenizer; its chat template is applied to every prompt.
        prompts: strings, or rows with a ``prompt`` field and an optional ``set`` field.
        out_path: output JSON-lines file; prompts already in it are skipped (resume).
        max_new_tokens: longest response; longer ones are cut and marked ``"length"``.
        batch_size: prompts per ``generate`` call. Larger batches give more tokens/s on a CPU,
            until the longest response of a batch dominates (the rest wait as padding).
        temperature: 0 = greedy (the target's most likely text); > 0 samples.
        top_p: nucleus sampling threshold when sampling.
        seed: sampling seed; batch i uses ``seed + i`` so a resumed run stays reproducible per batch.
        limit: take only the first ``limit`` prompts.
        progress: show a tqdm bar.

    Returns:
        ``{"rows_written", "rows_skipped", "new_tokens", "seconds", "tokens_per_s"}``.
    """
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"max_new_tokens and batch_size must be >= 1, got {max_new_tokens}, {batch_size}")
    SamplingConfig(temperature, top_p=top_p)  # generate's rules: ValueError naming temperature / top_p
    rows = _as_rows(prompts)[:limit] if limit is not None else _as_rows(prompts)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _trim_partial_line(out_path)
    done = done_prompts(out_path)
    todo = [r for r in rows if r["prompt"] not in done]
    eos = set(eos_ids(tokenizer, model))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos, default=0)
    model.eval()
    device = next(model.parameters()).device

    stats = {"rows_written": 0, "rows_skipped": len(rows) - len(todo), "new_tokens": 0}
    t0 = time.perf_counter()
    bar = tqdm(total=len(todo), disable=not progress, unit="row", desc="regenerate", dynamic_ncols=True)
    with open(out_path, "a", encoding="utf-8") as f:
        for i in range(0, len(todo), batch_size):
            batch = todo[i: i + batch_size]
            prompt_ids = [chat_ids(tokenizer, r["prompt"]) for r in batch]
            ids, mask = left_pad(prompt_ids, pad_id)
            sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=None) \
                if temperature > 0 else dict(do_sample=False, temperature=None, top_p=None, top_k=None)
            if temperature > 0:
                torch.manual_seed(seed + i // batch_size)
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 max_new_tokens=max_new_tokens, pad_token_id=pad_id,
                                 eos_token_id=sorted(eos) or None, **sampling)
            new = out[:, ids.shape[1]:].cpu().tolist()  # [B, generated]
            for row, p_ids, gen in zip(batch, prompt_ids, new):
                resp, reason = cut_response(gen, eos)
                f.write(json.dumps({
                    "prompt": row["prompt"], "response": tokenizer.decode(resp, skip_special_tokens=True),
                    "input_ids": p_ids + resp, "response_start": len(p_ids), "set": row["set"],
                    "finish_reason": reason,
                }, ensure_ascii=False) + "\n")
                stats["new_tokens"] += len(resp)
            f.flush()
            stats["rows_written"] += len(batch)
            elapsed = time.perf_counter() - t0
            bar.update(len(batch))
            bar.set_postfix(tok_s=f"{stats['new_tokens'] / max(elapsed, 1e-9):.0f}")
    bar.close()
    stats["seconds"] = time.perf_counter() - t0
    stats["tokens_per_s"] = stats["new_tokens"] / max(stats["seconds"], 1e-9)
    return stats


def distillation_rows(tokenizer, prompt_rows: Iterable[dict]) -> Iterable[dict]:
    """Rows in the regeneration format whose responses are the dataset's own reference answers.

    Prompt ids are the chat-templated prompt exactly as in ``regenerate``; the response is the
    reference text's tokens followed by EOS, as the target would end its own turn. Rows without a
    reference are skipped.
    """
    eos = eos_ids(tokenizer)
    for row in prompt_rows:
        ref = row.get("reference")
        if not ref:
            continue
        p_ids = chat_ids(tokenizer, row["prompt"])
        resp = tokenizer(ref, add_special_tokens=False)["input_ids"] + eos[:1]
        yield {"prompt": row["prompt"], "response": ref, "input_ids": p_ids + list(resp),
               "response_start": len(p_ids), "set": row.get("set"), "finish_reason": "reference"}


def write_distillation(tokenizer, prompt_rows: Iterable[dict], out_path: str | os.PathLike) -> int:
    """Write ``distillation_rows`` to ``out_path`` (overwritten); returns the number of rows."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(out_path, "w", encoding="utf-8") as f:
        for row in distillation_rows(tokenizer, prompt_rows):
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_regenerated(path: str | os.PathLike) -> list[dict]:
    """Rows of a regeneration (or distillation) file, checked for the fields training relies on."""
    rows = []
    for i, row in enumerate(read_jsonl(path), 1):
        for key in ("input_ids", "response_start"):
            if key not in row:
                raise ValueError(f"{path}: row {i} has no '{key}' field; is it a regeneration output?")
        rows.append(row)
    return rows
