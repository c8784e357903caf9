"""The learned draft heads' base class: ONE place where a head's training reads top to bottom.

``LearnedHead`` is a ``lightning.LightningModule`` and a ``jetspec.core.interfaces.Drafter``. It owns
the whole recipe (docs/design.md §5); a subclass (``JetSpecHead``, ``DFlashHead``, ``EagleHead``)
only says what its network computes. One training step, in the order the code below runs it:

1. ``teacher``: the frozen target reads the batch once under ``no_grad``: its tapped layer
   outputs are the head's context rows, its next-token logits (or their top-k, optionally served
   from a ``TeacherCache`` on disk) are the soft labels.
2. ``slot_batch``: ``sample_anchors`` picks up to ``anchors_per_seq`` anchor positions per
   sequence (seeded by sequence index, epoch and ``TrainConfig.seed`` only, so DDP and one
   process agree); the subclass's ``packed_hidden`` runs every anchor's block in one forward;
   slot k of the block at anchor a is supervised with the teacher's row a+k-1 (``block_targets``),
   optionally only while the data is the target's own greedy text (``on_policy_slots``); the
   frozen lm_head scores only the supervised slots; ``slot_losses`` gives a loss per slot and
   ``depth_weights`` its weight.
3. ``training_step``: the weighted mean over the GLOBAL batch, through the strategy's ``reduce``.
4. ``validation_step`` / ``on_validation_epoch_end``: loss and per-depth top-1 agreement with the
   target, summed over processes; ``val/accept_len`` estimates the chain acceptance length.
5. ``configure_optimizers``: AdamW on the head's own weights (``self.net``), linear warm-up then
   cosine decay (``warmup_cosine``).

The pure pieces (anchors, masks, losses, metrics, the teacher and its cache) are functions and
classes of ``jetspec.training.recipe``; nothing there touches a head.

A subclass provides (the declared interface; everything else is inherited):

* ``config_class``: its architecture dataclass (with ``resolved(model)``, ``tap_layers`` and
  ``block_size``); ``min_anchor``: the first position its packed forward can serve;
* ``packed_hidden``: the packed training forward (abstract, below);
* ``draft``: drafting (abstract, below), with the per-row context caches ``start_context`` hands out;
* ``__init__``: calls ``LearnedHead.__init__`` and then sets ``self.net`` (its own weights, the only
  thing trained and saved) and ``self.max_depth``;
* ``for_saved_weights`` when its saved weights need more than its config to be rebuilt.

Shapes use the glossary of ``jetspec`` (docs/design.md §8).
"""

from __future__ import annotations

import os
from abc import abstractmethod
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import ClassVar, Optional

import lightning as L
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

import jetspec.drafters.head_format as head_format
from jetspec.core.interfaces import DRAFTERS, Drafter
from jetspec.core.target import TargetModel, Teacher, TeacherOutput
from jetspec.drafters.context_cache import RowContext
from jetspec.drafters.draft_vocab import DraftVocabulary
from jetspec.drafters.head_layers import PackedLinears
from jetspec.kernels import PackedLinear
from jetspec.training.recipe import (
    TeacherCache,
    TrainConfig,
    acceptance_estimate,
    anchor_seeds,
    block_targets,
    depth_agreement,
    depth_weights,
    on_policy_slots,
    sample_anchors,
    slot_losses,
    warmup_cosine,
)


class _Frozen:
    """Holds the target out of nn.Module's sight (no registration, no state_dict, no optimizer)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model


def split_options(options: dict, config_class: type, kind: str = "head") -> tuple[dict, dict]:
    """Route keyword options to ``config_class`` or ``TrainConfig`` by field name; unknown names fail."""
    arch = {f.name for f in fields(config_class)}
    train = {f.name for f in fields(TrainConfig)}
    unknown = set(options) - arch - train
    if unknown:
        raise TypeError(f"unknown {kind} option(s) {sorted(unknown)}; see {config_class.__name__} and TrainConfig")
    return ({k: v for k, v in options.items() if k in arch}, {k: v for k, v in options.items() if k in train})


@dataclass
class SlotBatch:
    """One packed forward's supervised slots, flattened to R rows."""

    losses: Float[Tensor, " R"]
    weights: Float[Tensor, " R"]
    draft_top1: Int[Tensor, "B A D"]  # -1 where unsupervised
    teacher_top1: Int[Tensor, "B A D"]
    ok: Bool[Tensor, "B A D"]


class LearnedHead(L.LightningModule, Drafter):
    """A trained draft head over a frozen target; subclasses declare the network (module docstring).

    Args:
        target: a Hugging Face causal LM or a ``jetspec.core.target.TargetModel``. It is *used*, never
            copied or registered: its embedding table and lm_head serve the head, it is in no
            checkpoint and no optimizer. It is put in eval mode with gradients off (frozen).
        config: the architecture (``config_class``); its fields may also be keyword options.
        training: optimisation and loss (``TrainConfig``); its fields may also be keyword options.
    """

    config_class: ClassVar[type]
    kind: ClassVar[str] = "head"  # how errors name this kind of head
    #: The first anchor position ``packed_hidden`` can serve (EAGLE needs a context row before it).
    min_anchor: ClassVar[int] = 0

    def __init__(self, target, config=None, training: Optional[TrainConfig] = None, **options) -> None:
        super().__init__()
        arch, train = split_options(options, self.config_class, self.kind)
        model = target.model if isinstance(target, TargetModel) else target
        if not hasattr(model, "get_output_embeddings") or not hasattr(model, "config"):
            raise TypeError("target must be a Hugging Face causal LM or a jetspec TargetModel")
        model.eval().requires_grad_(False)
        self._frozen = _Frozen(model)
        self._packed_lm_head = None  # (weight key, PackedLinear): the full-vocabulary lm_head for drafting
        self.config = replace(config or self.config_class(), **arch).resolved(model)
        self.train_config = replace(training or TrainConfig(), **train)
        # Drafter attributes the decoding loop reads (max_depth is the subclass's).
        self.tap_layers = self.config.tap_layers
        self.vocab_size = self.config.target_vocab_size
        self._teacher: Optional[Teacher] = None  # built on the first step (the target has moved by then)
        self._teacher_cache: Optional[TeacherCache] = None
        self._val_stats: dict[str, Tensor] = {}
        self.reset_cache()

    # ------------------------------------------------------------------ what a subclass declares
    @abstractmethod
    def packed_hidden(self, input_ids: Int[Tensor, "B T"], taps: Float[Tensor, "B T F"],
                      anchors: Int[Tensor, "B A"]) -> Float[Tensor, "B A S H"]:
        """The packed training forward: for every anchor a, S rows ready for the target's lm_head.

        Row k (1..S-1) must be the head's prediction of token a+k given x[0..a] (teacher-forced
        inputs where the head reads drafted tokens), computed from ``taps`` rows < a only; row 0
        is never scored. ``taps`` are the teacher's tapped layers for ``input_ids``. Anchors are
        ``>= min_anchor``; padding anchors (0) have no supervised slots, so any value will do there.
        """

    # ------------------------------------------------------------------ drafting state, one per batch row
    @staticmethod
    def committed_before_anchor(tokens: Tensor, taps: Optional[Tensor]) -> int:
        """t, the committed tokens before the anchor (the last of ``tokens``), after checking that
        ``taps`` holds one row for each of them (``ValueError`` otherwise)."""
        t = tokens.shape[0] - 1
        if taps is None or taps.shape[0] != t:
            got = None if taps is None else tuple(taps.shape)
            raise ValueError(f"taps must hold the {t} committed tokens before the anchor, got {got}; "
                             "the decoder provides them when it reads head.tap_layers")
        return t

    def reset_cache(self) -> None:
        """Forget the context cache of every batch row (docs/design.md §4.9)."""
        self._rows: dict[int, RowContext] = {}

    def context_cache(self, row: int = 0) -> RowContext:
        """Batch row ``row``'s context cache (created empty on first use)."""
        if row not in self._rows:
            self._rows[row] = RowContext()
        return self._rows[row]

    def start_context(self, row: int, round_index: int, at_most: int) -> RowContext:
        """``row``'s cache for this round: a fresh one on a new sequence (``round_index == 0``) or when it
        holds more than ``at_most`` rows (then it is no prefix of this round's text); else the cache as it is."""
        cache = self.context_cache(row)
        if round_index == 0:  # a new sequence drafts with the weights the head holds now (PackedLinears)
            for module in self.modules():
                if isinstance(module, PackedLinears):
                    module.drop_packed()
        if round_index == 0 or cache.length > at_most:
            cache = self._rows[row] = RowContext()
        return cache

    # ------------------------------------------------------------------ the frozen target
    @property
    def target_model(self) -> nn.Module:
        """The frozen target model the head reads (kept outside the head's parameters and checkpoint)."""
        return self._frozen.model

    @property
    def draft_vocab(self) -> Optional[DraftVocabulary]:
        """The reduced draft vocabulary, or None when the head scores the full vocabulary."""
        return getattr(self.net, "vocab", None)

    def lm_head(self, hidden: Float[Tensor, "... H"]) -> Float[Tensor, "... Vd"]:
        """The target's lm_head, restricted to the draft vocabulary when the head has one (V' = V otherwise)."""
        head = self.target_model.get_output_embeddings()
        if self.draft_vocab is not None:
            return self.draft_vocab.logits(hidden, head)
        bias = getattr(head, "bias", None)
        if bias is None and not (torch.is_grad_enabled() and hidden.requires_grad):
            # Drafting over the full vocabulary (the EAGLE head): the prepacked product, made once
            # and keyed, like DraftVocabulary's, on which weight tensor this is (it has no backward,
            # so training keeps F.linear).
            key = (head.weight.data_ptr(), head.weight.device, head.weight.dtype)
            if self._packed_lm_head is None or self._packed_lm_head[0] != key:
                self._packed_lm_head = (key, PackedLinear([head.weight]))
            return self._packed_lm_head[1](hidden.to(head.weight.dtype))
        return F.linear(hidden.to(head.weight.dtype), head.weight, bias)

    def to_target_ids(self, draft_ids: Tensor) -> Tensor:
        """Draft-vocabulary ids (indices into ``lm_head``'s output) as target token ids."""
        return draft_ids if self.draft_vocab is None else self.draft_vocab.to_target(draft_ids)

    def forward(self, input_ids: Int[Tensor, "B T"], taps: Float[Tensor, "B T F"],
                anchors: Int[Tensor, "B A"]) -> Float[Tensor, "B A D Vd"]:
        """Draft logits of slots 1..S-1 (depths 1..S-1) of every anchor (the packed training forward)."""
        return self.lm_head(self.packed_hidden(input_ids, taps, anchors)[:, :, 1:])

    # ------------------------------------------------------------------ the recipe, step by step
    def teacher(self, batch: dict) -> TeacherOutput:
        """Step 1: the frozen target's taps and logits for a batch (from the disk cache when configured)."""
        cfg = self.train_config
        if self._teacher is None:
            self._teacher = Teacher(self.target_model, self.config.tap_layers, cfg.kl_topk)
            if cfg.teacher_cache is not None:
                self._teacher_cache = TeacherCache(cfg.teacher_cache, self.config.tap_layers, cfg.kl_topk,
                                                   rank=self.global_rank)
        ids, lengths, cache = batch["input_ids"], batch["lengths"], self._teacher_cache
        if cache is not None:
            out = cache.get(batch["index"].tolist(), lengths.tolist(), ids.shape[1], ids.device)
            if out is not None:
                return out
        out = self._teacher(ids, batch["attention_mask"])
        if cache is not None:
            cache.put(batch["index"].tolist(), lengths.tolist(), out)
        return out

    def anchors(self, batch: dict, epoch: int) -> tuple[Int[Tensor, "B A"], Bool[Tensor, "B A"]]:
        """Step 2a: the anchor positions of every sequence (``sample_anchors``), on the batch's device."""
        cfg, ids = self.train_config, batch["input_ids"]
        # Anchors start at response_start - 1; clamping it serves min_anchor (a no-op at min_anchor 0).
        start = batch["response_start"].clamp(min=self.min_anchor + 1)
        seeds = anchor_seeds(batch["index"], epoch, cfg.seed)
        anchors, valid = sample_anchors(batch["lengths"].cpu(), start.cpu(), cfg.anchors_per_seq, seeds)
        return anchors.to(ids.device), valid.to(ids.device)

    def slot_batch(self, batch: dict, epoch: int) -> SlotBatch:
        """Step 2: teacher, anchors, one packed head forward and the per-slot losses and weights."""
        cfg, s = self.train_config, self.config.block_size
        ids, lengths = batch["input_ids"], batch["lengths"]
        teacher = self.teacher(batch)
        anchors, valid = self.anchors(batch, epoch)
        hidden = self.packed_hidden(ids, teacher.taps, anchors)  # [B, A, S, H]
        rows, ok = block_targets(anchors, valid, s, lengths)  # [B, A, S-1]
        rows = rows.clamp(max=ids.shape[1] - 1)  # unsupervised slots may point past the end
        if cfg.on_policy:
            ok = ok & on_policy_slots(ids, teacher.top1(), rows)
        bidx = torch.arange(ids.shape[0], device=ids.device)[:, None, None].expand_as(rows)
        b_ok, r_ok = bidx[ok], rows[ok]  # [R]: batch row and teacher position of each supervised slot
        logits = self.lm_head(hidden[:, :, 1:][ok])  # [R, Vd]: the lm_head only where there is a label
        data = ids[b_ok, r_ok + 1]
        t_logits = teacher.logits[b_ok, r_ok] if teacher.logits is not None else None
        t_values = teacher.top_values[b_ok, r_ok] if teacher.top_values is not None else None
        t_indices = teacher.top_indices[b_ok, r_ok] if teacher.top_indices is not None else None
        vocab, row_ok = self.draft_vocab, None
        if vocab is not None:  # compare on the draft vocabulary only (drafters/draft_vocab.py)
            data, t_logits, t_values, t_indices, row_ok = vocab.restrict_teacher(data, t_logits, t_values, t_indices)
            row_ok = row_ok & (data >= 0) if cfg.loss == "ce" else row_ok
        losses = slot_losses(cfg, logits, data, t_logits, t_values, t_indices)
        weights = depth_weights(s - 1, cfg.decay_gamma, ids.device).expand(rows.shape)[ok].to(losses.dtype)
        if row_ok is not None:
            losses = torch.where(row_ok, losses, torch.zeros_like(losses))
            weights = weights * row_ok.to(weights.dtype)
        draft_top1 = torch.full(rows.shape, -1, dtype=torch.long, device=ids.device)
        draft_top1[ok] = self.to_target_ids(logits.argmax(-1))
        return SlotBatch(losses, weights, draft_top1, teacher.top1()[bidx, rows], ok)

    def _global_sum(self, x: Tensor) -> Tensor:
        """Sum over all processes (the single-device strategy returns ``x`` itself)."""
        return self.trainer.strategy.reduce(x, reduce_op="sum")

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        """Step 3: the weighted mean slot loss over the GLOBAL batch.

        DDP/FSDP average gradients over processes. Dividing each process's weighted sum by the
        global weight (and multiplying by the world size) makes that average the gradient of the
        global mean, so N processes with batch b take exactly the steps of one process with batch
        N*b, even when the processes hold different numbers of supervised slots.
        """
        sb = self.slot_batch(batch, self.current_epoch)
        local = (sb.losses * sb.weights).sum()
        total = self._global_sum(sb.weights.sum().detach()).clamp_min(1e-12)
        loss = local * self.trainer.world_size / total
        self.log("train/loss", self._global_sum(local.detach()) / total, prog_bar=True,
                 batch_size=batch["input_ids"].shape[0])
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_stats = {}

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """Step 4: accumulate loss and per-depth top-1 agreement; the anchors of epoch 0 every time."""
        sb = self.slot_batch(batch, epoch=0)
        hits, counts = depth_agreement(sb.draft_top1, sb.teacher_top1, sb.ok)
        st = self._val_stats
        for key, val in (("loss", (sb.losses * sb.weights).sum().detach()), ("weight", sb.weights.sum()),
                         ("hits", hits), ("counts", counts)):
            st[key] = st[key] + val if key in st else val

    def on_validation_epoch_end(self) -> None:
        """Log val/loss, val/agree_d{k} (per-depth top-1 agreement) and val/accept_len."""
        if not self._val_stats:
            return
        sums = {k: self._global_sum(v.double()) for k, v in self._val_stats.items()}
        rates = sums["hits"] / sums["counts"].clamp_min(1)
        # The values are already global; sync_dist only keeps Lightning's epoch-level bookkeeping happy.
        self.log("val/loss", sums["loss"] / sums["weight"].clamp_min(1e-12), prog_bar=True, sync_dist=True)
        for d, r in enumerate(rates.tolist(), 1):
            self.log(f"val/agree_d{d}", r, sync_dist=True)
        self.log("val/accept_len", acceptance_estimate(rates), prog_bar=True, sync_dist=True)

    def configure_optimizers(self):
        """Step 5: AdamW over the head's own weights; warm-up then cosine decay, stepped per batch."""
        c = self.train_config
        opt = torch.optim.AdamW(self.net.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        total = int(self.trainer.estimated_stepping_batches)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: warmup_cosine(step, c.warmup_steps, total, c.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_fit_start(self) -> None:
        self.target_model.to(self.device)  # the target is not a sub-module, so move it ourselves
        if self.logger is not None:
            self.logger.log_hyperparams({"head": type(self).__name__, **asdict(self.config),
                                         **asdict(self.train_config)})

    def on_validation_start(self) -> None:
        self.target_model.to(self.device)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        head_format.record_identity(self, checkpoint)  # so a resume into another head is refused

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        head_format.check_identity(self, checkpoint)

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, folder: str | os.PathLike, dtype: Optional[torch.dtype] = None,
                        state_dict: Optional[dict] = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (the head's weights only, optionally cast).

        ``config.json`` records checksums of the weights and the architecture (``head_format``).
        ``state_dict``: the module's full state dict when it is not in ``self`` (FSDP keeps only a
        shard per process; ``trainer.strategy.lightning_module_state_dict()`` gathers it).
        """
        full = self.state_dict() if state_dict is None else state_dict
        state = {k[len("net."):]: (v.to(dtype) if dtype is not None and v.is_floating_point() else v)
                 .detach().cpu().contiguous() for k, v in full.items() if k.startswith("net.")}
        return head_format.write_head_folder(folder, self, state)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, target, dtype: Optional[torch.dtype] = None,
                        **training_options) -> "LearnedHead":
        """Load a head saved by ``save_pretrained`` onto ``target`` (checked to be the same shape).

        The weights and architecture are verified against the checksums in ``config.json`` first.
        ``folder`` is a local folder, or a shipped head's name: ``"smollm2-135m-instruct/jetspec"``
        (``head_format.head_folder``). Called on a base class (``ParallelHead``) it builds whichever of
        its kinds the folder holds; ``training_options`` override the saved ``TrainConfig`` fields.
        """
        folder = head_format.head_folder(folder)
        meta, state = head_format.read_head_folder(folder)
        path = folder / head_format.CONFIG_FILE
        saved = DRAFTERS.get(meta.get("head"))
        if not (isinstance(saved, type) and issubclass(saved, cls)):
            learned = isinstance(saved, type) and issubclass(saved, LearnedHead)
            held = saved.__name__ if learned else f"'{meta.get('head')}' head"
            hint = f"; load it with {saved.__name__}.from_pretrained" if learned else ""
            article = "an" if cls.__name__[0] in "AEIOU" else "a"
            raise ValueError(f"{folder} holds a {held}, not {article} {cls.__name__}{hint}")
        training = replace(head_format.config_from(TrainConfig, meta.get("training", {}), path, "training"),
                           **training_options)
        config = head_format.config_from(saved.config_class, meta["config"], path, "config")
        head = saved.for_saved_weights(target, config, training, state)
        head.net.load_state_dict(state)
        if dtype is not None:
            head.net.to(dtype)
        return head

    @classmethod
    def for_saved_weights(cls, target, config, training: TrainConfig, state: dict[str, Tensor]) -> "LearnedHead":
        """An untrained head whose ``net`` accepts ``state`` (override when the config is not enough)."""
        return cls(target, config=config, training=training)
