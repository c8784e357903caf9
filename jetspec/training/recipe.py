"""Training a parallel draft head: anchors, the packed block-sparse mask, losses, the teacher.

The recipe (docs/design.md §5), as plain functions the LightningModule calls:

1. The frozen target (the *teacher*) reads a ground-truth sequence x once: its tapped layer
   outputs become the head's context rows, its logits at every position are the soft labels.
2. ``sample_anchors`` picks many anchor positions a in the supervised (response) span.
3. Every anchor becomes a block [x_a, MASK, ..., MASK] of S slots at positions a..a+S-1. All the
   blocks of a sequence are packed into ONE head forward whose keys are the T context rows
   followed by all the block slots; ``packed_block_mask`` lets slot i of block a see context
   rows < a and its own block (slots <= i for the causal head, all slots for the bidirectional
   one), never another block.
4. ``block_targets``: slot k of block a is supervised with the teacher's distribution at
   position a+k-1, i.e. the law of token a+k given x[0..a+k-1]. Slot 0 (the anchor) has no loss.
5. ``slot_losses``: forward KL(p_target || q_draft) (default) or reverse KL(q_draft || p_target),
   optionally against the teacher's top-k logits only, or cross-entropy to the data token (SFT);
   optional exp(-(k-1)/gamma) decay.

The functions here do not touch a head: ``jetspec.drafters.learned_head.LearnedHead`` runs them,
in this order, in one place (its ``slot_batch`` and ``training_step``).

The target writes two kinds of training data, which is why there are two paths: *text*
(``jetspec.training.regenerate``, or ``jetspec.training.data.sample_continuations`` in memory for token-id prompts:
the target answers the prompts, and the answers become the sequences x) and *labels* (``Teacher``
/ ``TeacherCache`` / ``fill_teacher_cache`` here: one forward over an x that already exists, giving
its taps and next-token logits at every position). The first samples new tokens and runs once per
data set; the second never samples and runs (or is read from the cache) every step. The teacher
captures taps with ``jetspec.core.target.capture_taps``, the hooks the decoding loop's target uses.

Shapes use the glossary of ``jetspec`` (docs/design.md §8).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from jetspec.core.masks import additive_mask
from jetspec.core.target import Teacher, TeacherOutput

LOSSES = ("kl", "reverse_kl", "ce")  # the objectives ``slot_losses`` knows


@dataclass
class TrainConfig:
    """Optimisation and loss settings of a head (the one source of their defaults)."""

    lr: float = 3e-4  # the paper's learning rate
    weight_decay: float = 0.0
    warmup_steps: int = 20  # linear warm-up, then cosine decay to min_lr_ratio * lr
    min_lr_ratio: float = 0.1
    anchors_per_seq: int = 16  # anchor blocks packed per sequence and step
    loss: str = "kl"  # "kl": KL(p || q) to the teacher; "reverse_kl": KL(q || p); "ce": CE to the data token (SFT)
    kl_topk: Optional[int] = None  # KL against the teacher's top-k logits only (needed by the cache)
    decay_gamma: Optional[float] = None  # weight exp(-(k-1)/gamma) on slot k (DFlash); None = uniform
    teacher_cache: Optional[str] = None  # folder of safetensors shards with taps + top-k logits
    # Supervise slot k only while the data's tokens a+1..a+k-1 are the target's own greedy choices
    # (see ``on_policy_slots``); off = every slot of every block, the paper's recipe.
    on_policy: bool = False
    seed: int = 0  # anchor sampling is a function of (seed, epoch, sequence index) only

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.anchors_per_seq < 1:
            raise ValueError(f"anchors_per_seq must be >= 1, got {self.anchors_per_seq}")
        if self.teacher_cache is not None and self.kl_topk is None:
            raise ValueError("teacher_cache stores top-k teacher logits: set kl_topk (e.g. 64) with it")
        if self.kl_topk is not None and self.kl_topk < 1:
            raise ValueError(f"kl_topk must be >= 1, got {self.kl_topk}")
        if self.decay_gamma is not None and self.decay_gamma <= 0:
            raise ValueError(f"decay_gamma must be > 0, got {self.decay_gamma}")


# ---------------------------------------------------------------------------------------- anchors
def sample_anchors(lengths: Int[Tensor, " B"], response_start: Int[Tensor, " B"], num_anchors: int,
                   seeds: Sequence[int]) -> tuple[Int[Tensor, "B A"], Bool[Tensor, "B A"]]:
    """Up to ``num_anchors`` distinct anchor positions per sequence, sorted; padding is invalid.

    Anchor a is useful iff its first drafted token a+1 exists and is supervised:
    response_start - 1 <= a <= length - 2. (a = response_start - 1, the last prompt token, is
    exactly the anchor of the first decoding round.) Each sequence draws from its own generator
    seeded by ``seeds[b]``, so the anchors of a sequence do not depend on which other sequences
    share its batch or on the process that sees it: DDP and one process agree.
    """
    b = lengths.shape[0]
    anchors = torch.zeros(b, num_anchors, dtype=torch.long)
    valid = torch.zeros(b, num_anchors, dtype=torch.bool)
    for i in range(b):
        lo = max(int(response_start[i]) - 1, 0)
        hi = int(lengths[i]) - 2
        n = hi - lo + 1
        if n <= 0:
            continue
        gen = torch.Generator().manual_seed(int(seeds[i]))
        pick = torch.randperm(n, generator=gen)[:num_anchors].sort().values + lo
        anchors[i, : pick.numel()] = pick
        valid[i, : pick.numel()] = True
    return anchors, valid


def anchor_seeds(indices: Int[Tensor, " B"], epoch: int, seed: int) -> list[int]:
    """One seed per (base seed, epoch, sequence index): a new anchor draw every epoch."""
    return [(seed * 1_000_003 + epoch * 10_007 + int(i)) % (2**63 - 1) for i in indices]


def block_targets(anchors: Int[Tensor, "B A"], valid: Bool[Tensor, "B A"], block_size: int,
                  lengths: Int[Tensor, " B"]) -> tuple[Int[Tensor, "B A D"], Bool[Tensor, "B A D"]]:
    """Teacher rows and supervision mask of slots 1..S-1 (D = S - 1 drafted depths).

    Slot k of block a learns the teacher's distribution at position a+k-1 (predicting token a+k);
    the slot is supervised only while token a+k exists.
    """
    k = torch.arange(1, block_size, device=anchors.device)  # [D]
    rows = anchors[..., None] + k - 1  # [B, A, D]
    ok = valid[..., None] & (rows + 1 < lengths.to(anchors.device)[:, None, None])
    return rows.clamp(min=0), ok


def on_policy_slots(ids: Int[Tensor, "B T"], teacher_top1: Int[Tensor, "B T"],
                    rows: Int[Tensor, "B A D"]) -> Bool[Tensor, "B A D"]:
    """Slots whose block prefix the target itself would have written (greedy).

    Slot k of the block at anchor a is taught the target's law at position a+k-1 given the data's
    tokens a+1..a+k-1, but at drafting time the slots before k stand for the target's *own* next
    tokens. On text the target wrote greedily the two agree; on other text (dataset answers) they
    drift apart after the first token where the data and the target's argmax differ, and the
    deeper slots would learn to predict a continuation the target never takes. This mask keeps
    slot 1 always and slot k only while tokens a+1..a+k-1 all equal the teacher's argmax, so
    plain text gives exactly on-policy labels from one teacher forward.
    """
    b = ids.shape[0]
    agree = torch.zeros_like(ids, dtype=torch.bool)  # agree[b, p]: token p+1 == argmax at p
    agree[:, :-1] = ids[:, 1:] == teacher_top1[:, :-1]
    bidx = torch.arange(b, device=ids.device)[:, None, None].expand_as(rows)
    step_ok = agree[bidx, rows]  # [B, A, D]: slot k's own label token is the argmax
    before = torch.ones_like(step_ok)
    before[..., 1:] = step_ok[..., :-1].cumprod(-1).bool()  # every earlier slot's token was
    return before


def block_positions(anchors: Int[Tensor, "B A"], block_size: int) -> Int[Tensor, "B N"]:
    """Absolute RoPE positions of all packed block slots: slot i of block a sits at a + i."""
    return (anchors[..., None] + torch.arange(block_size, device=anchors.device)).flatten(1)


def packed_block_mask(anchors: Int[Tensor, "B A"], num_context: int, block_size: int, causal: bool,
                      dtype: torch.dtype) -> Float[Tensor, "B 1 N T"]:
    """Additive mask for A packed blocks against T context rows: [B, 1, A*S, T + A*S].

    Query (block a, slot i) sees context row j iff j < anchor_a, and block slot (b, j') iff
    b == a and (j' <= i when causal). Every query sees at least itself, so no row is all -inf.
    """
    bsz, a = anchors.shape
    s = block_size
    dev = anchors.device
    ctx_ok = torch.arange(num_context, device=dev) < anchors[..., None]  # [B, A, T]
    ctx_ok = ctx_ok[:, :, None, :].expand(bsz, a, s, num_context).reshape(bsz, a * s, num_context)
    same_block = torch.eye(a, dtype=torch.bool, device=dev)  # [A, A]
    slot_ok = torch.ones(s, s, dtype=torch.bool, device=dev)
    if causal:
        slot_ok = slot_ok.tril()  # [S, S]
    blk_ok = (same_block[:, None, :, None] & slot_ok[None, :, None, :]).reshape(a * s, a * s)
    ok = torch.cat([ctx_ok, blk_ok.expand(bsz, -1, -1)], dim=-1)  # [B, A*S, T + A*S]
    return additive_mask(ok, dtype)[:, None]


# ---------------------------------------------------------------------------------------- losses
def depth_weights(num_slots: int, gamma: Optional[float], device=None) -> Float[Tensor, " D"]:
    """Weight of slots 1..S-1: uniform, or DFlash's exp(-(k-1)/gamma)."""
    k = torch.arange(num_slots, dtype=torch.float32, device=device)
    return torch.ones_like(k) if gamma is None else torch.exp(-k / gamma)


def forward_kl(teacher_logits: Float[Tensor, "R V"],
               draft_logits: Float[Tensor, "R V"]) -> Float[Tensor, " R"]:
    """KL(p || q) per row, p = softmax(teacher), q = softmax(draft); computed in fp32 or better."""
    dt = torch.promote_types(draft_logits.dtype, torch.float32)
    logp = torch.log_softmax(teacher_logits.to(dt), -1)
    logq = torch.log_softmax(draft_logits.to(dt), -1)
    return (logp.exp() * (logp - logq)).sum(-1)


def topk_forward_kl(top_values: Float[Tensor, "R C"], top_indices: Int[Tensor, "R C"],
                    draft_logits: Float[Tensor, "R V"]) -> Float[Tensor, " R"]:
    """KL from the teacher renormalised on its top-k tokens to the full draft distribution.

    sum_{i in top-k} p_i (log p_i - log q_i): the gradient is that of cross-entropy with the soft
    top-k labels, and it is 0 only when q puts the teacher's top-k mass where the teacher does.
    """
    dt = torch.promote_types(draft_logits.dtype, torch.float32)
    logp = torch.log_softmax(top_values.to(dt), -1)  # [R, C]; -inf entries (masked tokens) get p = 0
    logq = torch.log_softmax(draft_logits.to(dt), -1).gather(-1, top_indices.long())  # [R, C]
    # A row with no unmasked token has NaN log p: p = 0 there keeps NaN out of the gradient too.
    p = torch.nan_to_num(logp.exp(), nan=0.0)
    return torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(-1)


def reverse_kl(teacher_logits: Float[Tensor, "R V"],
               draft_logits: Float[Tensor, "R V"]) -> Float[Tensor, " R"]:
    """KL(q || p) per row, p = softmax(teacher), q = softmax(draft): sum_i q_i (log q_i - log p_i).

    Mode-seeking: q is pushed onto the teacher's high-probability tokens and pays little for
    leaving some of them out, the opposite of forward KL's mass-covering (docs/design.md §5).
    """
    dt = torch.promote_types(draft_logits.dtype, torch.float32)
    logp = torch.log_softmax(teacher_logits.to(dt), -1)
    logq = torch.log_softmax(draft_logits.to(dt), -1)
    return (logq.exp() * (logq - logp)).sum(-1)


def topk_reverse_kl(top_values: Float[Tensor, "R C"], top_indices: Int[Tensor, "R C"],
                    draft_logits: Float[Tensor, "R V"]) -> Float[Tensor, " R"]:
    """Reverse KL against a top-k teacher: KL(q_S || p_S) - log q(S), S = the teacher's finite top-k.

    The cache keeps only the teacher's top-k logits, so p is known on S alone (renormalised:
    p_S = softmax(top_values)) and log p of any token outside S is unknown. The loss splits q by
    the chain rule into "is the token in S" and "which token of S":

    * within S: the textbook reverse KL of the renormalised draft q_S = q / q(S) to p_S;
    * the split: -log q(S), the forward KL of the two-outcome law {S, not S} from a teacher that
      puts all its renormalised mass on S. Without it, logits outside S get no gradient at all
      and the draft's argmax may drift off S.

    It is 0 iff q = p_S, and with C = V (S = every token, q(S) = 1) it is exactly ``reverse_kl``.
    Entries of ``top_values`` at -inf (tokens a reduced draft vocabulary lacks) are not in S;
    a row whose S is empty has loss 0.
    """
    dt = torch.promote_types(draft_logits.dtype, torch.float32)
    in_s = torch.isfinite(top_values)  # [R, C]
    # Rows with an empty S get one stand-in member, so no -inf - -inf appears anywhere: a NaN in a
    # branch ``where`` discards still poisons the gradient. Their loss is zeroed at the end.
    any_s = in_s.any(-1, keepdim=True)
    in_s_safe = in_s | (~any_s & (torch.arange(in_s.shape[-1], device=in_s.device) == 0))
    ninf = torch.full_like(top_values, float("-inf"), dtype=dt)
    vals = torch.where(in_s, top_values.to(dt), torch.zeros_like(ninf))  # the stand-in gets logit 0
    logp = torch.log_softmax(torch.where(in_s_safe, vals, ninf), -1)
    logq = torch.log_softmax(draft_logits.to(dt), -1).gather(-1, top_indices.long())  # [R, C]
    logq = torch.where(in_s_safe, logq, ninf)
    log_mass = torch.logsumexp(logq, -1, keepdim=True)  # log q(S), [R, 1]
    logq_s = torch.where(in_s_safe, logq - log_mass, torch.zeros_like(logq))
    logp = torch.where(in_s_safe, logp, torch.zeros_like(logp))
    terms = torch.where(in_s_safe, logq_s.exp() * (logq_s - logp), torch.zeros_like(logq_s))
    loss = terms.sum(-1) - log_mass.squeeze(-1)
    return torch.where(any_s.squeeze(-1), loss, torch.zeros_like(loss))


def slot_losses(cfg: TrainConfig, draft_logits: Float[Tensor, "R V"], data_tokens: Int[Tensor, " R"],
                teacher_logits: Optional[Tensor] = None, top_values: Optional[Tensor] = None,
                top_indices: Optional[Tensor] = None) -> Float[Tensor, " R"]:
    """Per-slot loss of the configured kind (no weighting, no reduction)."""
    if cfg.loss == "ce":
        dt = torch.promote_types(draft_logits.dtype, torch.float32)
        # -1: a data token outside a reduced draft vocabulary (no loss; its weight is 0 too).
        return F.cross_entropy(draft_logits.to(dt), data_tokens, reduction="none", ignore_index=-1)
    if top_values is not None:
        fn = topk_reverse_kl if cfg.loss == "reverse_kl" else topk_forward_kl
        return fn(top_values, top_indices, draft_logits)
    return (reverse_kl if cfg.loss == "reverse_kl" else forward_kl)(teacher_logits, draft_logits)


# ---------------------------------------------------------------------------------------- metrics
def depth_agreement(draft_top1: Int[Tensor, "B A D"], teacher_top1: Int[Tensor, "B A D"],
                    ok: Bool[Tensor, "B A D"]) -> tuple[Tensor, Tensor]:
    """Per depth: how many supervised slots agree with the target's argmax, and how many there are."""
    hits = ((draft_top1 == teacher_top1) & ok).sum((0, 1))
    return hits, ok.sum((0, 1))


def acceptance_estimate(rates: Sequence[float] | Tensor) -> float:
    """Expected chain acceptance length from per-depth top-1 agreement rates.

    1 (the bonus token) + sum_d prod_{j<=d} rate_j: the chance that depths 1..d all match,
    summed over d, treating depths as independent.
    """
    total, run = 1.0, 1.0
    for r in (rates.tolist() if isinstance(rates, Tensor) else rates):
        run *= float(r)
        total += run
    return total


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------------- teacher
class TeacherCache:
    """Taps and top-k teacher logits on disk (safetensors shards), reused across epochs.

    One shard per batch the first time it is seen; tensors are keyed by sequence index and cut to
    the sequence's length. ``meta.json`` pins what the cache was made for, so a cache made with
    other tap layers or another k is refused instead of silently reused.
    """

    def __init__(self, folder: str | os.PathLike, tap_layers: Sequence[int], topk: int,
                 rank: int = 0) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.meta = {"tap_layers": list(tap_layers), "topk": int(topk)}
        self.rank = rank
        meta_path = self.folder / "meta.json"
        if meta_path.exists():
            found = json.loads(meta_path.read_text())
            if found != self.meta:
                raise ValueError(f"teacher cache {self.folder} was made for {found}, not {self.meta}; "
                                 "use an empty folder")
        elif rank == 0:
            meta_path.write_text(json.dumps(self.meta))
        self.index: dict[int, Path] = {}
        self._scan()

    def _scan(self) -> None:
        from safetensors import safe_open

        for shard in sorted(self.folder.glob("shard-*.safetensors")):
            if shard in self.index.values():
                continue
            with safe_open(str(shard), "pt") as f:
                for key in f.keys():
                    if key.startswith("taps."):
                        self.index[int(key.split(".")[1])] = shard

    def get(self, indices: Sequence[int], lengths: Sequence[int], width: int,
            device) -> Optional[TeacherOutput]:
        """The cached teacher output for a batch, padded to ``width``, or None if any is missing."""
        from safetensors import safe_open

        indices = [int(i) for i in indices]
        if any(i not in self.index for i in indices):
            self._scan()  # another rank may have written it
            if any(i not in self.index for i in indices):
                return None
        rows = []
        for i, n in zip(indices, lengths):
            with safe_open(str(self.index[i]), "pt") as f:
                t = [f.get_tensor(f"{name}.{i}") for name in ("taps", "topv", "topi")]
            if t[0].shape[0] != int(n):
                return None  # the data changed under the cache: recompute
            rows.append(t)
        out = []
        for j, pad in enumerate((0.0, 0.0, 0)):
            parts = [F.pad(r[j], (0, 0, 0, width - r[j].shape[0]), value=pad) for r in rows]
            out.append(torch.stack(parts).to(device))
        return TeacherOutput(taps=out[0], top_values=out[1], top_indices=out[2].long())

    def put(self, indices: Sequence[int], lengths: Sequence[int], out: TeacherOutput) -> None:
        from safetensors.torch import save_file

        tensors = {}
        for b, (i, n) in enumerate(zip(indices, lengths)):
            n = int(n)
            tensors[f"taps.{int(i)}"] = out.taps[b, :n].detach().cpu().contiguous()
            tensors[f"topv.{int(i)}"] = out.top_values[b, :n].detach().cpu().contiguous()
            tensors[f"topi.{int(i)}"] = out.top_indices[b, :n].detach().to(torch.int32).cpu().contiguous()
        name = f"shard-r{self.rank}-{min(int(i) for i in indices):09d}-{len(self.index):09d}.safetensors"
        path = self.folder / name
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp))
        tmp.replace(path)  # atomic: a reader never sees half a shard
        for i in indices:
            self.index[int(i)] = path


def fill_teacher_cache(model: torch.nn.Module, datasets: Sequence, tap_layers: Sequence[int], topk: int,
                       folder: str | os.PathLike, batch_size: int = 4, pad_id: int = 0, shard: int = 0,
                       num_shards: int = 1, progress: bool = True) -> int:
    """Run the teacher over datasets of a ``TokenDataModule`` into a ``TeacherCache``; returns rows done.

    Resumable (rows already cached are skipped) and splittable: process ``shard`` of ``num_shards``
    takes the rows whose index is ``shard`` modulo ``num_shards``, so two 1-thread processes fill
    one cache on two cores. Training then reads every step's teacher from disk: the target forward, which
    is most of a step's cost on CPU, is paid once for all epochs, seeds and head variants.
    """
    from jetspec.training.data import collate

    if not 0 <= shard < num_shards:
        raise ValueError(f"shard must be in 0..{num_shards - 1}, got {shard}")
    cache = TeacherCache(folder, tap_layers, topk, rank=shard)
    teacher = Teacher(model, tap_layers, topk)
    # Shares split by row index, so processes started at different times never overlap.
    todo = [(ds, i) for ds in datasets for i in range(len(ds))
            if ds.indices[i] % num_shards == shard and ds.indices[i] not in cache.index]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"teacher cache {shard}/{num_shards}", unit="row")
    dev = next(model.parameters()).device
    for start in range(0, len(todo), batch_size):
        batch = collate([ds[i] for ds, i in todo[start: start + batch_size]], pad_id)
        out = teacher(batch["input_ids"].to(dev), batch["attention_mask"].to(dev))
        cache.put(batch["index"].tolist(), batch["lengths"].tolist(), out)
        if bar is not None:
            bar.update(batch["index"].numel())
    if bar is not None:
        bar.close()
    return len(todo)
