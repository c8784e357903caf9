"""Token sequences for training draft heads, and the front-ends that make them from text.

A training example is one token sequence (prompt + response) and the index where the response
starts: only response tokens are supervised, because at inference the head drafts responses,
not prompts. Everything else here is plumbing around that:

* ``TokenDataModule(sequences, batch_size=8)``: right-padded batches, an optional validation split,
  and a deterministic order that is the same for one process and for N DDP processes (the global
  batch of step n is the same set of sequences either way). The training loader is resumable: a run
  killed mid-epoch and resumed from a checkpoint trains on exactly the batches an uninterrupted run
  would (``ResumableSampler``).
* ``TokenDataModule.from_jsonl / from_text / from_hf_dataset / from_path``: text front-ends that
  tokenize with the target's tokenizer and chat template.
* ``sample_continuations``: let the target itself write the responses (docs/design.md §5.2: training on
  target-regenerated data is what matters most). ``jetspec.training.regenerate`` does the same for text
  prompts at scale, writing rows this module reads back (``input_ids`` + ``response_start``).

Batch layout (B sequences, T = longest length in the batch)::

    input_ids [B, T] (right-padded), attention_mask [B, T], lengths [B], response_start [B],
    index [B] (position in the full sequence list: seeds anchor sampling and keys the teacher cache)
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterable, Optional, Sequence

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from jetspec.core.jsonl import numbered_rows


@dataclass
class Example:
    input_ids: list[int]
    response_start: int = 0  # first supervised token; 0 = the whole sequence is a response
    source: str = ""  # where it came from ("file.jsonl:12", "sequences[3]"), for error messages


def as_example(item, where: str = "") -> Example:
    """Accept a list/tensor of ids, a dict {"input_ids", "response_start"?} or an Example.

    ``where`` names the item in errors (a negative token id is refused here; ids beyond the
    vocabulary by ``TokenDataModule.check_vocab``, which knows it).
    """
    if isinstance(item, Example):
        ex = item if item.source or not where else Example(item.input_ids, item.response_start, where)
    elif isinstance(item, dict):
        if "input_ids" not in item:
            raise ValueError(f"{where or 'a sequence dict'} needs 'input_ids', got keys {sorted(item)}")
        ex = Example([int(t) for t in item["input_ids"]], int(item.get("response_start", 0)), where)
    else:
        if isinstance(item, Tensor):
            item = item.flatten().tolist()
        ex = Example([int(t) for t in item], 0, where)
    if ex.input_ids and min(ex.input_ids) < 0:
        raise ValueError(f"{ex.source or where or 'a sequence'}: token id {min(ex.input_ids)} is negative")
    return ex


class TokenDataset(Dataset):
    """Examples plus their global indices (kept through the train/val split)."""

    def __init__(self, examples: Sequence[Example], indices: Sequence[int]) -> None:
        self.examples, self.indices = list(examples), list(indices)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        ex = self.examples[i]
        return {"input_ids": torch.tensor(ex.input_ids, dtype=torch.long),
                "response_start": ex.response_start, "index": self.indices[i]}


def collate(items: list[dict], pad_id: int = 0) -> dict:
    """Right-pad to the longest sequence of the batch (padding sits after every real token)."""
    lengths = torch.tensor([it["input_ids"].numel() for it in items])
    ids = torch.full((len(items), int(lengths.max())), pad_id, dtype=torch.long)  # [B, T]
    for b, it in enumerate(items):
        ids[b, : lengths[b]] = it["input_ids"]
    mask = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()  # [B, T]
    return {"input_ids": ids, "attention_mask": mask, "lengths": lengths,
            "response_start": torch.tensor([it["response_start"] for it in items]),
            "index": torch.tensor([it["index"] for it in items])}


class ResumableSampler(DistributedSampler):
    """A ``DistributedSampler`` that knows how far into its epoch training got, and resumes there.

    The position counts this process's items that reached a training step, not the items the
    loader has fetched: Lightning prefetches a batch ahead, so a count taken inside the iterator
    would run ahead of training. ``TokenDataModule`` calls ``advance`` as each training batch is
    handed to the model. ``state_dict``/``load_state_dict`` save and restore the position;
    after ``load_state_dict`` the next iteration over the saved epoch skips the items already
    trained on, and every later epoch is whole. ``__len__`` stays the full epoch's length, so
    Lightning's step counts (and the LR schedule) are those of an uninterrupted run.
    """

    def __init__(self, dataset, num_replicas: int, rank: int, shuffle: bool, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.position = 0  # items of epoch ``position_epoch`` trained on (this process)
        self.position_epoch = 0
        self.tracked = False  # set when a data module advances the position
        self._resume: Optional[tuple[int, int]] = None  # (epoch, items to skip) for the next iteration

    def advance(self, items: int) -> None:
        """Record that ``items`` more items of the current epoch reached a training step."""
        if self.position_epoch != self.epoch:
            self.position_epoch, self.position = self.epoch, 0
        self.position += items

    def _identity(self) -> dict:
        # What must be equal for a saved position to mean the same items after a resume.
        return {"num_replicas": self.num_replicas, "num_items": len(self.dataset), "seed": self.seed,
                "shuffle": self.shuffle}

    def state_dict(self) -> dict:
        position = self.position if self.position_epoch == self.epoch else 0  # nothing yet of a new epoch
        return {"epoch": self.epoch, "position": position if self.tracked else None, **self._identity()}

    def load_state_dict(self, state: dict) -> None:
        """Resume at ``state``'s position; refuse a position that would mean other items now."""
        if state.get("position") is None:
            warnings.warn("the checkpoint holds no position within its epoch (the training loader ran "
                          "without its TokenDataModule, e.g. fit(train_dataloaders=...)): the resumed "
                          "epoch starts again at its first batch", stacklevel=2)
            return
        if state["position"]:
            changed = {k: (state.get(k), v) for k, v in self._identity().items() if state.get(k) != v}
            if changed:
                detail = ", ".join(f"{k} {old} in the checkpoint, {new} now" for k, (old, new) in changed.items())
                raise ValueError(f"cannot resume in the middle of epoch {state['epoch']}: the training data "
                                 f"order changed ({detail})")
        self._resume = (int(state["epoch"]), int(state["position"]))
        self.position_epoch, self.position = self._resume

    def __iter__(self):
        order = list(super().__iter__())
        resume, self._resume = self._resume, None
        skip = resume[1] if resume is not None and resume[0] == self.epoch else 0
        return iter(order[skip:])


class ResumableLoader(DataLoader):
    """A ``DataLoader`` over a ``ResumableSampler``: Lightning stores its state in checkpoints
    (loaders with ``state_dict``/``load_state_dict`` are "stateful" to Lightning) and restores it
    before the resumed epoch's first batch."""

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


class TokenDataModule(L.LightningDataModule):
    """Batches of token sequences for ``lightning.Trainer.fit(head, datamodule=...)``.

    Args:
        sequences: token id lists, or dicts {"input_ids": [...], "response_start": int}.
        batch_size: sequences per process and step.
        val_fraction: share of ``sequences`` held out for validation (a seeded split).
        val_sequences: an explicit validation set instead (same forms as ``sequences``).
        max_length: truncate longer sequences; sequences left with nothing to supervise are dropped.
        pad_id: token id used for padding (it is never attended to or supervised).
        shuffle: reshuffle the training order every epoch (seeded by ``seed`` and the epoch).
        vocab_size: refuse token ids >= this (naming the file and row). If None, ``setup`` checks
            against the ``vocab_size`` of the module being fitted, before its first step.
    """

    def __init__(self, sequences: Iterable, batch_size: int = 8, val_fraction: float = 0.0,
                 val_sequences: Optional[Iterable] = None, max_length: Optional[int] = None, pad_id: int = 0,
                 shuffle: bool = True, seed: int = 0, num_workers: int = 0,
                 vocab_size: Optional[int] = None) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.batch_size, self.pad_id, self.shuffle, self.seed = batch_size, pad_id, shuffle, seed
        self.num_workers = num_workers
        examples = [self._fit(as_example(s, f"sequences[{i}]"), max_length) for i, s in enumerate(sequences)]
        usable = [i for i, ex in enumerate(examples) if ex is not None]
        self.num_dropped = len(examples) - len(usable)
        if not usable:
            raise ValueError("no usable sequence: each needs >= 2 tokens and a response token after "
                             "position 0")
        n_val = int(round(len(usable) * val_fraction))
        if n_val:
            perm = torch.randperm(len(usable), generator=torch.Generator().manual_seed(seed)).tolist()
            val_idx = sorted(usable[i] for i in perm[:n_val])
            train_idx = sorted(usable[i] for i in perm[n_val:])
        else:
            val_idx, train_idx = [], usable
        self.train_set = TokenDataset([examples[i] for i in train_idx], train_idx)
        if val_sequences is not None:
            extra = [self._fit(as_example(s, f"val_sequences[{i}]"), max_length)
                     for i, s in enumerate(val_sequences)]
            kept = [ex for ex in extra if ex is not None]
            # Indices after the training range keep anchor seeds distinct from training sequences.
            self.val_set = TokenDataset(kept, range(len(examples), len(examples) + len(kept)))
        else:
            self.val_set = TokenDataset([examples[i] for i in val_idx], val_idx)
        self._train_sampler: Optional[ResumableSampler] = None
        if vocab_size is not None:
            self.check_vocab(vocab_size)

    def check_vocab(self, vocab_size: int) -> None:
        """Raise a ValueError naming the file and row of the first token id >= ``vocab_size``."""
        for ex in self.train_set.examples + self.val_set.examples:
            top = max(ex.input_ids)
            if top >= vocab_size:
                raise ValueError(f"{ex.source}: token id {top} is outside the vocabulary of {vocab_size} "
                                 "(was the data tokenized for another model?)")

    def setup(self, stage: str) -> None:
        # Lightning calls this with the module attached: check ids before any embedding sees them.
        module = self.trainer.lightning_module if self.trainer is not None else None
        vocab_size = getattr(module, "vocab_size", None)
        if isinstance(vocab_size, int):
            self.check_vocab(vocab_size)

    @staticmethod
    def _fit(ex: Example, max_length: Optional[int]) -> Optional[Example]:
        ids = ex.input_ids[:max_length] if max_length else ex.input_ids
        # Something to supervise: a token at position >= max(1, response_start) must exist.
        if len(ids) < 2 or max(1, ex.response_start) >= len(ids):
            return None
        return Example(ids, ex.response_start, ex.source)

    def _loader(self, ds: TokenDataset, shuffle: bool) -> ResumableLoader:
        # Always a DistributedSampler (one replica without DDP): Lightning keeps it as is, and the
        # per-epoch permutation it draws is the same in every process, so rank r of N gets items
        # r, r+N, ... of the very order a single process walks through.
        trainer = self.trainer
        world = trainer.world_size if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0
        sampler = ResumableSampler(ds, num_replicas=world, rank=rank, shuffle=shuffle, seed=self.seed)
        return ResumableLoader(ds, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                               collate_fn=partial(collate, pad_id=self.pad_id))

    def train_dataloader(self) -> ResumableLoader:
        loader = self._loader(self.train_set, self.shuffle)
        # Positions are counted only when Lightning runs this data module (on_before_batch_transfer).
        loader.sampler.tracked = self.trainer is not None and self.trainer.datamodule is self
        self._train_sampler = loader.sampler
        return loader

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Advance the training position by each batch that reaches a training step.

        Lightning calls this for the batch it is about to train on (not for the one it prefetched),
        so a checkpoint taken after step n records exactly the items of steps <= n. A
        LightningModule's own ``on_before_batch_transfer`` is not called while this data module is
        in use (Lightning's rule for hooks both define).
        """
        trainer = self.trainer
        if trainer is not None and trainer.training and self._train_sampler is not None:
            self._train_sampler.advance(int(batch["input_ids"].shape[0]))
        return batch

    def val_dataloader(self):
        return self._loader(self.val_set, False) if len(self.val_set) else []

    # ------------------------------------------------------------------ text front-ends
    @classmethod
    def from_jsonl(cls, path: str | os.PathLike, tokenizer, **kwargs) -> "TokenDataModule":
        """A jsonl file, one example per row in any layout ``encode_row`` reads.

        Rows written by ``jetspec regenerate`` carry ``input_ids`` and are used as they are.
        """
        examples = [encode_row(tokenizer, row, f"{path}:{n}") for n, row in numbered_rows(path)]
        return cls(examples, **kwargs)

    @classmethod
    def from_text(cls, path: str | os.PathLike, tokenizer, chunk_length: int = 512,
                  **kwargs) -> "TokenDataModule":
        """A plain text file, tokenized whole, cut into chunks of ``chunk_length`` tokens (all supervised)."""
        ids = _ids(tokenizer(Path(path).read_text(encoding="utf-8"), add_special_tokens=False))
        chunks = [Example(ids[i: i + chunk_length], 0, f"{path} (tokens {i}..)")
                  for i in range(0, len(ids), chunk_length)]
        return cls([c for c in chunks if len(c.input_ids) >= 2], **kwargs)

    @classmethod
    def from_hf_dataset(cls, path: str | os.PathLike, tokenizer, split: str = "train",
                        **kwargs) -> "TokenDataModule":
        """A local folder saved with ``datasets``' ``save_to_disk`` (rows as in ``from_jsonl``)."""
        try:
            from datasets import DatasetDict, load_from_disk
        except ImportError as err:
            raise ImportError("reading a datasets folder needs the 'datasets' package: "
                              "pip install datasets") from err
        ds = load_from_disk(str(path))
        if isinstance(ds, DatasetDict):
            ds = ds[split]
        return cls([encode_row(tokenizer, r, f"{path}[{i}]") for i, r in enumerate(ds)], **kwargs)

    @classmethod
    def from_path(cls, path: str | os.PathLike, tokenizer, **kwargs) -> "TokenDataModule":
        """Dispatch on the path: a folder -> datasets, *.jsonl / *.json -> jsonl, anything else -> text."""
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"training data {p} not found")
        if p.is_dir():
            return cls.from_hf_dataset(p, tokenizer, **kwargs)
        if p.suffix in (".jsonl", ".json"):
            return cls.from_jsonl(p, tokenizer, **kwargs)
        return cls.from_text(p, tokenizer, **kwargs)


# ---------------------------------------------------------------------- tokenizing
def _ids(enc) -> list[int]:
    """Token ids from whatever a tokenizer call returned (BatchEncoding, dict or list)."""
    ids = enc["input_ids"] if hasattr(enc, "keys") else enc
    return [int(t) for t in ids]


def encode_chat(tokenizer, messages: list[dict]) -> Example:
    """A conversation whose last message is the assistant's answer (the supervised part)."""
    if not messages or messages[-1].get("role") != "assistant":
        raise ValueError("the last message must be the assistant's response (the part the head learns)")
    prompt_msgs, response = messages[:-1], messages[-1]["content"]
    if getattr(tokenizer, "chat_template", None):
        prompt = _ids(tokenizer.apply_chat_template(prompt_msgs, add_generation_prompt=True, tokenize=True))
        full = _ids(tokenizer.apply_chat_template(messages, tokenize=True))
        if full[: len(prompt)] == prompt and len(full) > len(prompt):
            return Example(full, len(prompt))
        # Templates that rewrite earlier turns (e.g. strip reasoning) break the prefix property;
        # then the answer is appended to the generation prompt the way decoding will see it.
    else:
        prompt = _ids(tokenizer("\n".join(m["content"] for m in prompt_msgs), add_special_tokens=True))
    answer = _ids(tokenizer(response, add_special_tokens=False))
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return Example(prompt + answer + eos, len(prompt))


def encode_row(tokenizer, row: dict, where: str = "row") -> Example:
    """One jsonl / datasets row in any of the supported layouts (``where`` names it in errors)."""
    if "input_ids" in row:
        return as_example(row, where)
    if "messages" in row:
        return as_example(encode_chat(tokenizer, list(row["messages"])), where)
    if "prompt" in row and "response" in row:
        return as_example(encode_chat(tokenizer, [{"role": "user", "content": row["prompt"]},
                                                  {"role": "assistant", "content": row["response"]}]), where)
    if "text" in row:
        return Example(_ids(tokenizer(row["text"], add_special_tokens=True)), 0, where)
    raise ValueError(f"{where}: expected 'input_ids', 'messages', 'prompt'+'response' or 'text', "
                     f"got fields {sorted(row)}")


# ---------------------------------------------------------------------- target-written data
@torch.no_grad()
def sample_continuations(model, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                         temperature: float = 0.0, seed: int = 0, batch_size: int = 32) -> list[dict]:
    """Let the target continue each prompt: rows {"input_ids", "response_start"} for training.

    Prompts of equal length are batched together, so no padding is needed; temperature 0 is greedy.
    A row ends after the model's first end-of-sequence token (later columns are batch filler).
    ``seed`` seeds a fork of torch's global RNG (HF ``generate`` samples from it), so the caller's
    RNG state is the same afterwards.
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return _continuations(model, prompts, max_new_tokens, temperature, batch_size)


def _continuations(model, prompts: Sequence[Sequence[int]], max_new_tokens: int, temperature: float,
                   batch_size: int) -> list[dict]:
    eos = model.generation_config.eos_token_id
    eos = set() if eos is None else {eos} if isinstance(eos, int) else set(eos)
    rows: dict[int, dict] = {}
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(p), []).append(i)
    dev = next(model.parameters()).device
    sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature > 0 else \
        dict(do_sample=False)
    for n, idx in sorted(by_len.items()):
        for s in range(0, len(idx), batch_size):
            group = idx[s: s + batch_size]
            ids = torch.tensor([list(prompts[i]) for i in group], device=dev)  # [B, n]
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 pad_token_id=0, **sampling)
            for i, seq in zip(group, out.tolist()):
                new = seq[n:]
                cut = next((j + 1 for j, t in enumerate(new) if t in eos), len(new))
                rows[i] = {"input_ids": seq[: n + cut], "response_start": n}
    return [rows[i] for i in range(len(prompts))]
