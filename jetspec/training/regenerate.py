"""Let the target write the training responses itself ("regeneration"), and the cheap alternative.

A draft head learns to predict what *the target* will write. Training it on a dataset's own
answers teaches it somebody else's style; training on answers the target regenerated for the same
prompts is what the JetSpec paper found to matter most (MATH-500: 9.64x with regenerated data vs
3.66x with the raw corpus, docs/design.md §5.2). Regeneration is also the slow part of the
pipeline on a CPU (BENCHMARKS.md has tokens/s against batch size), so this module is built to run
for hours unattended:

* batched plain decoding on jetspec's own engine (``autoregressive_generate`` over a
  ``TargetModel``) with *left* padding: one forward per step covers every running row, and a row
  that reached its EOS leaves the batch instead of riding along as padding. The prefill is what
  still pays for padding (every row is padded to the batch's longest prompt), so the pending rows
  are taken ``LENGTH_WINDOW`` batches at a time and each window is batched in order of prompt
  length (``length_windows``): a batch's prompts are of similar length;
* resumable: every output row carries the ``id`` of its prompt (its position in the prompt list),
  rows whose id is already in the output file are skipped (repeated prompt texts each keep their
  row), and each finished window is appended in id order and flushed at once, so the file keeps
  the prompts' order and an interrupted job loses at most one window;
* reproducible when sampling: each row draws from a generator of its own, seeded from ``seed``
  and the row's id, so an interrupted and resumed job writes the same rows as an uninterrupted
  one, however it is batched (bit for bit when padding does not change a row's logits, as in
  float64; in lower precision a row in another batch can round differently, like greedy decoding);
* a tqdm progress bar with the useful (non-padding) tokens per second.

Each output row holds the token ids the head trains on, so nothing is re-tokenized later::

    {"id": int, "prompt": str, "response": str, "input_ids": [prompt ids + response ids],
     "response_start": int, "set": str | None, "finish_reason": "eos" | "length"}

``write_distillation`` writes the same row format from the dataset's own answers. Those rows need
no generation at all (only a teacher forward when training), so they are a fast first data set.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from pathlib import Path
from typing import Iterable, Optional

import torch
from tqdm.auto import tqdm

from jetspec.core.batched import left_pad
from jetspec.core.decoding import autoregressive_generate
from jetspec.core.jsonl import jsonl_line, read_jsonl, write_jsonl
from jetspec.core.prompts import chat_ids, eos_ids
from jetspec.core.sampling import SamplingConfig
from jetspec.core.target import TargetModel

LENGTH_WINDOW = 8  # batches whose rows are sorted by prompt length together (a window is written before the next)


def read_done(out_path: str | os.PathLike) -> tuple[dict[int, str], list[str]]:
    """Rows already in ``out_path``: ``{id: prompt}``, and the prompts of rows without an id.

    Rows without an id were written before rows had one. A final line cut off by an interrupted
    write is ignored (and overwritten on resume); a row written twice counts once.
    """
    done: dict[int, str] = {}
    legacy: list[str] = []
    if not Path(out_path).exists():
        return done, legacy
    for row in read_jsonl(out_path, skip_invalid=True):
        prompt = row.get("prompt") if isinstance(row, dict) else None
        if prompt is None:
            continue
        if "id" in row:
            done[int(row["id"])] = prompt
        else:
            legacy.append(prompt)
    return done, legacy


def pending_rows(rows: list[dict], out_path: str | os.PathLike) -> list[dict]:
    """The rows of ``rows`` (with ids) that ``out_path`` does not hold yet.

    Raises ``ValueError`` naming the file and the id when a row of the file was written for another
    prompt than the one with that id now: the prompt list changed, and resuming would mix two lists.
    Rows without an id (older files) count once per occurrence of their prompt text.
    """
    done, legacy = read_done(out_path)
    for row in rows:
        old = done.get(row["id"])
        if old is not None and old != row["prompt"]:
            raise ValueError(f"{out_path}: the row with id {row['id']} was written for the prompt {old[:60]!r}, "
                             f"but prompt {row['id']} of this prompt list is {row['prompt'][:60]!r}; the prompt "
                             "list changed since that run: write to a new output file")
    unmatched = Counter(legacy)
    todo = []
    for row in rows:
        if row["id"] in done:
            continue
        if unmatched[row["prompt"]] > 0:
            unmatched[row["prompt"]] -= 1
            continue
        todo.append(row)
    return todo


def row_seed(seed: int, row_id: int) -> int:
    """A row's sampling seed: a hash of (``seed``, id), independent of batching and of other rows."""
    digest = hashlib.sha256(f"{int(seed)}:{int(row_id)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # 63 bits: a valid torch seed


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
    """Accept prompt strings or rows with a ``prompt`` (and optional ``set``) field; ids by position."""
    rows = []
    for i, p in enumerate(prompts):
        rows.append({"id": i, "prompt": p, "set": None} if isinstance(p, str) else
                    {"id": i, "prompt": p["prompt"], "set": p.get("set")})
    return rows


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
        prompts: strings, or rows with a ``prompt`` field and an optional ``set`` field. A prompt's
            position in this list is its row's ``id``.
        out_path: output JSON-lines file; ids already in it are skipped (resume). It must have been
            written for the same prompt list (``ValueError`` naming the id otherwise).
        max_new_tokens: longest response; longer ones are cut and marked ``"length"``.
        batch_size: prompts per ``generate`` call. Larger batches give more tokens/s on a CPU,
            until the longest response of a batch dominates (the rest wait as padding).
        temperature: 0 = greedy (the target's most likely text); > 0 samples.
        top_p: nucleus sampling threshold when sampling.
        seed: sampling seed; row ``id`` samples with ``row_seed(seed, id)``, so its text does not
            depend on batching or on where a previous run stopped.
        limit: take only the first ``limit`` prompts.
        progress: show a tqdm bar.

    Returns:
        ``{"rows_written", "rows_skipped", "new_tokens", "seconds", "tokens_per_s"}``: rows written
        by this call, and rows of this prompt list that the file already held.
    """
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"max_new_tokens and batch_size must be >= 1, got {max_new_tokens}, {batch_size}")
    SamplingConfig(temperature, top_p=top_p)  # generate's rules: ValueError naming temperature / top_p
    rows = _as_rows(prompts)[:limit] if limit is not None else _as_rows(prompts)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _trim_partial_line(out_path)
    todo = pending_rows(rows, out_path)
    if model.training:  # the caller's module is not switched behind its back
        raise ValueError("the target is in training mode (dropout would change its answers): call model.eval()")
    target = TargetModel(model)
    stats = {"rows_written": 0, "rows_skipped": len(rows) - len(todo), "new_tokens": 0}
    t0 = time.perf_counter()
    bar = tqdm(total=len(todo), disable=not progress, unit="row", desc="regenerate", dynamic_ncols=True)
    with open(out_path, "a", encoding="utf-8") as f:
        for window in length_windows(todo, tokenizer, batch_size):
            answered = []
            for batch in window:
                answered += _answer(target, tokenizer, batch, max_new_tokens, temperature, top_p, seed)
                stats["new_tokens"] += sum(len(r["input_ids"]) - r["response_start"] for r in answered[-len(batch):])
                bar.update(len(batch))
                bar.set_postfix(tok_s=f"{stats['new_tokens'] / max(time.perf_counter() - t0, 1e-9):.0f}")
            for row in sorted(answered, key=lambda r: r["id"]):
                f.write(jsonl_line(row))
            f.flush()
            stats["rows_written"] += len(answered)
    bar.close()
    stats["seconds"] = time.perf_counter() - t0
    stats["tokens_per_s"] = stats["new_tokens"] / max(stats["seconds"], 1e-9)
    return stats


def length_windows(rows: list[dict], tokenizer, batch_size: int, window: int = LENGTH_WINDOW) -> list[list[list[dict]]]:
    """``rows`` in windows of ``window`` batches of ``batch_size`` rows, in the given order; inside a
    window the batches take its rows in order of prompt length (chat template applied; ties keep the
    given order), so that left padding to a batch's longest prompt costs little in the prefill.
    Every row lands in exactly one batch of the window its position falls in."""
    span = batch_size * window
    windows = []
    for start in range(0, len(rows), span):
        chunk = sorted(rows[start: start + span], key=lambda r: len(chat_ids(tokenizer, r["prompt"])))
        windows.append([chunk[i: i + batch_size] for i in range(0, len(chunk), batch_size)])
    return windows


def _answer(target: TargetModel, tokenizer, batch: list[dict], max_new_tokens: int, temperature: float,
            top_p: Optional[float], seed: int) -> list[dict]:
    """One batched plain decoding of ``batch`` on the target's engine; its output rows, in order."""
    eos = set(eos_ids(tokenizer, target.model))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos, default=0)
    prompt_ids = [chat_ids(tokenizer, r["prompt"]) for r in batch]
    ids, mask = left_pad(prompt_ids, pad_id)
    generators = [torch.Generator().manual_seed(row_seed(seed, r["id"])) for r in batch]
    out = autoregressive_generate(target, ids, max_new_tokens, temperature=temperature, top_p=top_p,
                                  eos_token_id=sorted(eos) or None, generator=generators, attention_mask=mask,
                                  pad_token_id=pad_id)
    rows = []
    for row, p_ids, res in zip(batch, prompt_ids, out.rows):
        resp, reason = cut_response(res.sequences[0, len(p_ids):].tolist(), eos)
        rows.append({"id": row["id"], "prompt": row["prompt"],
                     "response": tokenizer.decode(resp, skip_special_tokens=True), "input_ids": p_ids + resp,
                     "response_start": len(p_ids), "set": row["set"], "finish_reason": reason})
    return rows


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
    return write_jsonl(out_path, distillation_rows(tokenizer, prompt_rows))


def read_regenerated(path: str | os.PathLike) -> list[dict]:
    """Rows of a regeneration (or distillation) file, checked for the fields training relies on."""
    rows = []
    for i, row in enumerate(read_jsonl(path), 1):
        for key in ("input_ids", "response_start"):
            if key not in row:
                raise ValueError(f"{path}: row {i} has no '{key}' field; is it a regeneration output?")
        rows.append(row)
    return rows


# -- archives: what took hours to write, kept small enough to commit ------------------------------------------------
#
# A regeneration file repeats every prompt and its chat template. An archive keeps only what the
# target wrote: per row its id, a digest of its prompt, its set, the response token ids and why it
# stopped, in gzip-compressed parts of a fixed number of rows. The prompts are rebuilt from the
# prompt file the run used (``jetspec prepare-data``), which need not be redistributed.

ARCHIVE_PART = "part-{:05d}.jsonl.gz"


def prompt_digest(prompt: str) -> str:
    """A short, stable digest of a prompt's text: an archive row must meet the same prompt again."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


def archived_ids(archive: str | os.PathLike) -> set[int]:
    """Ids of the rows already in an archive folder (none if it does not exist)."""
    return {int(row["id"]) for part in sorted(Path(archive).glob("part-*.jsonl.gz")) for row in read_jsonl(part)}


def archive_rows(regen_path: str | os.PathLike, archive: str | os.PathLike, part_rows: int = 2000,
                 final: bool = False) -> list[Path]:
    """Move the rows of ``regen_path`` that ``archive`` lacks into new parts of ``part_rows`` rows.

    Rows are written in id order. A remainder smaller than ``part_rows`` waits for a later call
    unless ``final``, so a growing run adds whole parts and never rewrites a committed one.
    Returns the parts written.
    """
    if part_rows < 1:
        raise ValueError(f"part_rows must be >= 1, got {part_rows}")
    archive = Path(archive)
    archive.mkdir(parents=True, exist_ok=True)
    have = archived_ids(archive)
    new = {}
    for row in read_jsonl(regen_path, skip_invalid=True):  # a run may be appending right now
        if "id" in row and int(row["id"]) not in have:
            new[int(row["id"])] = row
    rows = [new[i] for i in sorted(new)]
    written, index = [], len(list(archive.glob("part-*.jsonl.gz")))
    while len(rows) >= part_rows or (final and rows):
        chunk, rows = rows[:part_rows], rows[part_rows:]
        path = archive / ARCHIVE_PART.format(index)
        write_jsonl(path, ({"id": r["id"], "prompt_digest": prompt_digest(r["prompt"]), "set": r.get("set"),
                            "response_ids": r["input_ids"][r["response_start"]:],
                            "finish_reason": r["finish_reason"]} for r in chunk))
        written.append(path)
        index += 1
    return written


def restore_rows(tokenizer, prompts: Iterable, archive: str | os.PathLike, out_path: str | os.PathLike) -> int:
    """Rebuild full regeneration rows from an archive and the prompt list it was written for.

    ``prompts`` is the same list ``regenerate`` was given (a row's id is its position). Rows go to
    ``out_path`` (replaced) in id order, exactly as ``regenerate`` would have written them, so a
    ``regenerate`` call on the same output resumes after them. ``ValueError`` names the part and id
    of a row whose prompt digest does not match: the prompt list is not the one of the archive.
    """
    rows = {r["id"]: r for r in _as_rows(prompts)}
    restored = []
    for part in sorted(Path(archive).glob("part-*.jsonl.gz")):
        for row in read_jsonl(part):
            src = rows.get(int(row["id"]))
            if src is None or prompt_digest(src["prompt"]) != row["prompt_digest"]:
                raise ValueError(f"{part}: row id {row['id']} was written for another prompt than prompt "
                                 f"{row['id']} of this list; restore with the prompt file of that run")
            p_ids = chat_ids(tokenizer, src["prompt"])
            resp = row["response_ids"]
            restored.append({"id": src["id"], "prompt": src["prompt"],
                             "response": tokenizer.decode(resp, skip_special_tokens=True), "input_ids": p_ids + resp,
                             "response_start": len(p_ids), "set": row["set"], "finish_reason": row["finish_reason"]})
    return write_jsonl(out_path, sorted(restored, key=lambda r: r["id"]))
