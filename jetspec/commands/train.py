"""``jetspec train``: train a JetSpec (causal) or DFlash (bidirectional) head on a frozen target.

Example::

    jetspec train --head jetspec --target smollm2-135m-instruct --data regenerated.jsonl \\
        --out runs/jetspec --max-steps 2000 --batch-size 8

Writes ``OUT/head`` (``save_pretrained``: config.json + model.safetensors, the head's weights
only), ``OUT/checkpoints`` (Lightning checkpoints; ``--resume last`` continues from the newest),
``OUT/logs`` (CSV or TensorBoard) and, with ``--eval-data``, the replay tau during training
(``OUT/tau_curve.jsonl`` and its plot ``OUT/tau_curve.png``). Every flag is generated
(``jetspec.commands.flags``) from ``TrainCommand`` below, ``TokenDataModule``, ``HeadConfig`` or
``TrainConfig``, which hold the defaults; none is written twice.

A finished run is never overwritten by accident: a non-empty ``--out`` is refused unless the run
resumes (``--resume``) or ``--overwrite`` replaces it (removing the previous run's ``head``,
``checkpoints``, ``logs`` and ``tau_curve.jsonl`` / ``.png``; other files stay). ``--resume last``
on an ``--out`` without a checkpoint starts from scratch, so one command both starts and continues a
run. A checkpoint written for another head kind or architecture is refused.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal, Optional

HELP = "train a parallel draft head (jetspec or dflash) on a frozen target"
DTYPES = ("float32", "float16", "bfloat16")

# Flags whose defaults live elsewhere: the fields of TokenDataModule, HeadConfig and TrainConfig that
# `jetspec train` offers, and the flag names that differ from the field names.
DATA_FLAGS = ("batch_size", "max_length", "val_fraction", "seed")
DATA_RENAME = {"seed": "data_seed"}
HEAD_FLAGS = ("num_layers", "block_size", "tap_layers", "hidden_size", "mask_token_id", "draft_vocab_size",
              "conditioned", "direct_path", "init_from_target")
HEAD_RENAME = {"draft_vocab_size": "draft_vocab"}
RECIPE_FLAGS = ("lr", "weight_decay", "warmup_steps", "anchors_per_seq", "loss", "kl_topk", "decay_gamma",
                "on_policy", "teacher_cache", "seed")
RECIPE_RENAME = {"anchors_per_seq": "anchors"}
# HeadConfig fields an EAGLE head does not have (its block is its unrolled steps + 1, its width the target's).
PARALLEL_ONLY = ("hidden_size", "mask_token_id", "draft_vocab_size", "conditioned", "direct_path",
                 "init_from_target")


@dataclass
class TrainCommand:
    """What only ``jetspec train`` has: the run, Lightning's Trainer, the saved head, the tau curve.

    The data, architecture and recipe flags come from ``TokenDataModule``, ``HeadConfig`` and
    ``TrainConfig`` (``register``), where their defaults live.
    """

    target: str
    """HF model id, local folder or built-in name."""
    data: str
    """jsonl (input_ids | messages | prompt+response | text), plain text, or a local datasets folder."""
    out: str
    """Output folder."""
    head: Literal["jetspec", "dflash", "eagle"] = "jetspec"
    """jetspec: causal block; dflash: bidirectional block; eagle: EAGLE-3 head."""
    max_steps: int = 1000
    """Optimizer steps."""
    max_time: Optional[str] = None
    """Stop (and still save the head) after this wall time, DD:HH:MM:SS."""
    val_every: Optional[int] = None
    """Validate every N steps (default: every epoch)."""
    vocab_data: Optional[str] = None
    """Count --draft-vocab frequencies on this data instead of the training split (same formats as --data;
    a larger sample of the target's text gives a better vocabulary)."""
    precision: str = "32-true"
    """Lightning precision: 32-true, bf16-mixed, ..."""
    accelerator: str = "auto"
    """Lightning accelerator."""
    devices: str = "auto"
    """Lightning devices: a number or auto."""
    strategy: str = "auto"
    """auto | ddp | fsdp | ..."""
    grad_clip: float = 1.0
    """Gradient norm clipping."""
    checkpoint_every: int = 500
    """Save a checkpoint every N steps."""
    resume: Optional[str] = None
    """Checkpoint path, or 'last' (OUT/checkpoints/last.ckpt; none yet: start from scratch)."""
    overwrite: bool = False
    """Replace the previous run in a non-empty --out (its head, checkpoints, logs, tau curve)."""
    logger: Literal["csv", "tensorboard"] = "csv"
    """Where the metrics go."""
    save_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    """dtype of the saved head weights."""
    eval_data: Optional[str] = None
    """Replay references (jsonl: input_ids, response_start, set) for the tau curve."""
    eval_every: int = 100
    """Replay tau every N steps (with --eval-data)."""
    eval_budgets: tuple[int, ...] = (16,)
    """Comma-separated tree budgets of the replay."""
    eval_final_budgets: Optional[tuple[int, ...]] = None
    """Budgets of the last replay, when training ends (default: --eval-budgets)."""
    eval_tokens: Optional[int] = None
    """Replay only the first N answer tokens."""
    cache_only: Optional[str] = None
    """Only fill --teacher-cache (share I/N: run N processes, 1 thread each) and exit."""


def register(sub: argparse._SubParsersAction) -> None:
    # These imports load Lightning: jetspec.cli builds this parser only when `train` is the command.
    from jetspec.commands.flags import add_config_flags
    from jetspec.drafters.parallel_net import HeadConfig
    from jetspec.training.data import TokenDataModule
    from jetspec.training.recipe import LOSSES, TrainConfig

    p = sub.add_parser("train", help=HELP, description=__doc__.splitlines()[0])
    add_config_flags(p, TrainCommand)
    add_config_flags(p, TokenDataModule.__init__, only=DATA_FLAGS, rename=DATA_RENAME)
    add_config_flags(p, HeadConfig, only=HEAD_FLAGS, rename=HEAD_RENAME)
    add_config_flags(p, TrainConfig, only=RECIPE_FLAGS, rename=RECIPE_RENAME, choices={"loss": LOSSES})
    p.set_defaults(func=run)


def build_head(args: argparse.Namespace, model, draft_vocab):
    """The ``--head`` drafter on ``model``, from the generated architecture and recipe flags, by field name."""
    from jetspec.commands.flags import options_from_args
    from jetspec.core.interfaces import DRAFTERS

    options = {**options_from_args(args, HEAD_FLAGS, HEAD_RENAME), **options_from_args(args, RECIPE_FLAGS,
                                                                                         RECIPE_RENAME)}
    options.pop("draft_vocab_size")  # --draft-vocab N: the head takes the N token ids (draft_vocab)
    if args.head == "eagle":
        given = [f"--{name.replace('_', '-')}" for name in (HEAD_RENAME.get(n, n) for n in PARALLEL_ONLY)
                 if getattr(args, name) is not None and getattr(args, name) is not False]
        if given:
            raise SystemExit(f"{', '.join(given)}: parallel-head options (not for --head eagle)")
        # An EAGLE head unrolls block_size - 1 depths in training-time test; it has no MASK slots
        # and always works at the target's width.
        options = {k: v for k, v in options.items() if k not in PARALLEL_ONLY}
        options["ttt_steps"] = options.pop("block_size") - 1
        return DRAFTERS[args.head](model, **options)
    return DRAFTERS[args.head](model, draft_vocab=draft_vocab, **options)


def _devices(text: str):
    return int(text) if str(text).isdigit() else text


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import lightning as L
    import torch
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    from jetspec.core.loading import load_target
    from jetspec.training.data import TokenDataModule

    if args.max_steps < 1:  # 0 saved an untrained head; Lightning reads -1 as "no limit"
        raise SystemExit(f"jetspec train: --max-steps must be >= 1, got {args.max_steps}")
    # Denormal floats make the frozen lm_head's backward ~30x slower on CPU (docs/design.md §5.9).
    torch.set_flush_denormal(True)
    L.seed_everything(args.seed, workers=True)
    out = Path(args.out)
    resume = None if args.cache_only else _resume_path(args, out)
    model, tok = load_target(args.target)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    dm = TokenDataModule.from_path(args.data, tok, batch_size=args.batch_size, val_fraction=args.val_fraction,
                                   max_length=args.max_length, pad_id=pad, seed=args.data_seed,
                                   vocab_size=model.get_output_embeddings().weight.shape[0])
    if args.cache_only:
        return _fill_cache(args, model, dm, pad)
    draft_vocab = None if args.head == "eagle" else _draft_vocab(args, model, tok, dm)
    head = build_head(args, model, draft_vocab)
    if resume is not None:
        _check_checkpoint(head, resume)
    elif args.overwrite:
        _remove_previous_run(out)
    if args.logger == "csv":
        logger = L.pytorch.loggers.CSVLogger(out, name="logs")
    else:
        try:
            logger = L.pytorch.loggers.TensorBoardLogger(out, name="logs")
        except ModuleNotFoundError as err:
            raise SystemExit("--logger tensorboard needs the tensorboard package: "
                             "pip install tensorboard") from err
    # No version counter: the newest run's checkpoint is always last.ckpt, never last-v1.ckpt.
    ckpt = ModelCheckpoint(dirpath=out / "checkpoints", save_last=True, enable_version_counter=False,
                           every_n_train_steps=args.checkpoint_every)
    val = dict(val_check_interval=args.val_every, check_val_every_n_epoch=None) if args.val_every else {}
    trainer = L.Trainer(max_steps=args.max_steps, max_time=args.max_time, accelerator=args.accelerator,
                        devices=_devices(args.devices), strategy=args.strategy, precision=args.precision,
                        gradient_clip_val=args.grad_clip, logger=logger,
                        callbacks=[ckpt, LearningRateMonitor("step")] + _tau_curve(args, out),
                        log_every_n_steps=min(50, args.max_steps), **val)
    trainer.fit(head, datamodule=dm, ckpt_path=resume)
    state = trainer.strategy.lightning_module_state_dict()  # every process: FSDP gathers its shards here
    if trainer.is_global_zero:
        folder = head.save_pretrained(out / "head", dtype=getattr(torch, args.save_dtype), state_dict=state)
        print(f"saved {type(head).__name__} to {folder} after {trainer.global_step} steps")
        if args.eval_data:
            print(f"tau curve: {_plot_tau_curve(out)}")
    return 0


TRAIN_OUTPUTS = ("head", "checkpoints", "logs", "tau_curve.jsonl", "tau_curve.png")  # what a run writes into --out


def _plot_tau_curve(out):
    """``OUT/tau_curve.png``: the replay tau at every budget logged during training (all resumed parts)
    against the training tokens seen."""
    from jetspec.evaluation.plots import plot_tau_curves
    from jetspec.training.callbacks import load_curve

    rows = load_curve(out / "tau_curve.jsonl")
    keys = sorted({k for r in rows for k in r if k.startswith("tau_b") and k[5:].isdigit()}, key=lambda k: int(k[5:]))
    curves = {f"budget {k[5:]}": [(r["tokens_seen"], r[k]) for r in rows if k in r] for k in keys}
    return plot_tau_curves(curves, "training tokens seen", "replay tau", f"{out.name}: tau during training",
                           out / "tau_curve.png")


def _resume_path(args: argparse.Namespace, out) -> "str | None":
    """The checkpoint to resume from (None: a new run), after checking that ``out`` may be written."""
    from pathlib import Path

    if args.overwrite and args.resume:
        raise SystemExit("--overwrite starts a new run and --resume continues one: give only one")
    if out.exists() and not out.is_dir():
        raise SystemExit(f"--out {out} is a file, not a folder")
    if args.resume == "last":
        last = out / "checkpoints" / "last.ckpt"
        if last.is_file():
            return str(last)
        print(f"note: --resume last: no checkpoint in {out / 'checkpoints'} yet, starting from scratch")
    elif args.resume is not None:
        if not Path(args.resume).is_file():
            raise SystemExit(f"--resume {args.resume}: no such checkpoint file")
        return args.resume
    used = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if used and not args.overwrite:
        raise SystemExit(f"--out {out} is not empty ({', '.join(used)}): continue its run with --resume last "
                         "(or --resume PATH), or replace it with --overwrite")
    return None


def _check_checkpoint(head, path: str) -> None:
    """Refuse a checkpoint of another head kind or architecture before anything is written."""
    from jetspec.drafters.head_format import check_identity, peek_checkpoint

    try:
        check_identity(head, peek_checkpoint(path), where=path)
    except ValueError as err:
        raise SystemExit(str(err)) from err


def _remove_previous_run(out) -> None:
    """--overwrite: delete what an earlier run wrote into ``out`` (other files are left alone)."""
    import shutil

    for name in TRAIN_OUTPUTS:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _fill_cache(args: argparse.Namespace, model, dm, pad: int) -> int:
    from jetspec.drafters.head_config import default_tap_layers
    from jetspec.training.recipe import fill_teacher_cache

    if args.teacher_cache is None or args.kl_topk is None:
        raise SystemExit("--cache-only needs --teacher-cache and --kl-topk")
    try:
        shard, num = (int(x) for x in args.cache_only.split("/"))
    except ValueError:
        raise SystemExit(f"--cache-only takes I/N (e.g. 0/2), got {args.cache_only!r}") from None
    taps = args.tap_layers or default_tap_layers(model.config.num_hidden_layers)
    n = fill_teacher_cache(model, [dm.train_set, dm.val_set], taps, args.kl_topk, args.teacher_cache,
                           batch_size=args.batch_size, pad_id=pad, shard=shard, num_shards=num)
    print(f"teacher cache {args.teacher_cache}: {n} rows added by share {shard}/{num}")
    return 0


def _draft_vocab(args: argparse.Namespace, model, tok, dm):
    """The --draft-vocab most frequent response tokens of the training split (EOS always in)."""
    if not args.draft_vocab:
        return None
    from jetspec.core.prompts import eos_ids
    from jetspec.drafters.draft_vocab import coverage, frequent_tokens, token_counts
    from jetspec.training.data import TokenDataModule

    source = dm.train_set.examples
    if args.vocab_data:
        source = TokenDataModule.from_path(args.vocab_data, tok, val_fraction=0.0).train_set.examples
    counts = token_counts(source, model.get_output_embeddings().weight.shape[0])
    ids = frequent_tokens(counts, args.draft_vocab, always=eos_ids(tok, model))
    print(f"draft vocabulary: {ids.numel()} ids cover {coverage(counts, ids):.2%} of the counted responses")
    return ids


def _tau_curve(args: argparse.Namespace, out) -> list:
    if not args.eval_data:
        return []
    from jetspec.core.prompts import read_jsonl
    from jetspec.training.callbacks import TauCurve

    refs = list(read_jsonl(args.eval_data))
    return [TauCurve(refs, budgets=args.eval_budgets, every_n_steps=args.eval_every,
                     out_file=str(out / "tau_curve.jsonl"), max_new_tokens=args.eval_tokens,
                     final_budgets=args.eval_final_budgets)]
