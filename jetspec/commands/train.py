"""``jetspec train``: train a JetSpec (causal) or DFlash (bidirectional) head on a frozen target.

Example::

    jetspec train --head jetspec --target smollm2-135m-instruct --data regenerated.jsonl \\
        --out runs/jetspec --max-steps 2000 --batch-size 8

Writes ``OUT/head`` (``save_pretrained``: config.json + model.safetensors, the head's weights
only), ``OUT/checkpoints`` (Lightning checkpoints; ``--resume last`` continues from the newest)
and ``OUT/logs`` (CSV or TensorBoard). Every default comes from ``HeadConfig``, ``TrainConfig``
or ``TokenDataModule``; none is written twice.

A finished run is never overwritten by accident: a non-empty ``--out`` is refused unless the run
resumes (``--resume``) or ``--overwrite`` replaces it (removing the previous run's ``head``,
``checkpoints``, ``logs`` and ``tau_curve.jsonl``; other files stay). ``--resume last`` on an
``--out`` without a checkpoint starts from scratch, so one command both starts and continues a
run. A checkpoint written for another head kind or architecture is refused.
"""

from __future__ import annotations

import argparse
import inspect
from dataclasses import fields

from jetspec.drafters.parallel_head import HeadConfig
from jetspec.training import TrainConfig

DTYPES = ("float32", "float16", "bfloat16")


def _default(source, name: str):
    """The default of a config field or of a constructor argument (the single source of truth)."""
    if isinstance(source, type) and hasattr(source, "__dataclass_fields__"):
        return {f.name: f.default for f in fields(source)}[name]
    return inspect.signature(source).parameters[name].default


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer indices, got {text!r}") from err


def register(sub: argparse._SubParsersAction) -> None:
    from jetspec.data import TokenDataModule

    p = sub.add_parser("train", help="train a parallel draft head (jetspec or dflash) on a frozen target")
    p.add_argument("--head", choices=("jetspec", "dflash", "eagle"), default="jetspec",
                   help="jetspec: causal block; dflash: bidirectional block")
    p.add_argument("--target", required=True, help="HF model id, local folder or built-in name")
    p.add_argument("--data", required=True, help="jsonl (input_ids | messages | prompt+response | text), "
                   "plain text, or a local datasets folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--max-steps", type=int, default=1000)
    p.add_argument("--max-time", default=None,
                   help="stop (and still save the head) after this wall time, DD:HH:MM:SS")
    p.add_argument("--batch-size", type=int, default=_default(TokenDataModule, "batch_size"),
                   help="sequences per process and step")
    p.add_argument("--max-length", type=int, default=_default(TokenDataModule, "max_length"))
    p.add_argument("--val-fraction", type=float, default=_default(TokenDataModule, "val_fraction"))
    p.add_argument("--val-every", type=int, default=None,
                   help="validate every N steps (default: every epoch)")
    # Architecture (HeadConfig).
    p.add_argument("--num-layers", type=int, default=_default(HeadConfig, "num_layers"))
    p.add_argument("--block-size", type=int, default=_default(HeadConfig, "block_size"))
    p.add_argument("--tap-layers", type=_int_list, default=_default(HeadConfig, "tap_layers"),
                   help="comma-separated target layers (default: evenly spaced from 1 to L-3)")
    p.add_argument("--hidden-size", type=int, default=_default(HeadConfig, "hidden_size"))
    p.add_argument("--mask-token-id", type=int, default=_default(HeadConfig, "mask_token_id"),
                   help="embed MASK as this token (default: a learned mask embedding)")
    p.add_argument("--draft-vocab", type=int, default=_default(HeadConfig, "draft_vocab_size"), metavar="V'",
                   help="score only the V' most frequent response tokens of the training data (default: all)")
    p.add_argument("--vocab-data", default=None,
                   help="count --draft-vocab frequencies on this data instead of the training split "
                   "(same formats as --data; a larger sample of the target's text gives a better vocabulary)")
    p.add_argument("--conditioned", action="store_true",
                   help="jetspec only: train for and draft with a second, branch-conditioned forward")
    p.add_argument("--direct-path", action="store_true",
                   help="add the anchor embedding and the last context row to every block slot")
    # Optimisation and loss (TrainConfig).
    p.add_argument("--lr", type=float, default=_default(TrainConfig, "lr"))
    p.add_argument("--weight-decay", type=float, default=_default(TrainConfig, "weight_decay"))
    p.add_argument("--warmup-steps", type=int, default=_default(TrainConfig, "warmup_steps"))
    p.add_argument("--anchors", type=int, default=_default(TrainConfig, "anchors_per_seq"),
                   help="anchor blocks per sequence and step")
    p.add_argument("--loss", choices=("kl", "ce"), default=_default(TrainConfig, "loss"))
    p.add_argument("--kl-topk", type=int, default=_default(TrainConfig, "kl_topk"))
    p.add_argument("--decay-gamma", type=float, default=_default(TrainConfig, "decay_gamma"))
    p.add_argument("--on-policy", action="store_true",
                   help="supervise block slot k only while the data's tokens before it are the target's "
                        "greedy choices (exact labels from dataset text; see training.on_policy_slots)")
    p.add_argument("--teacher-cache", default=_default(TrainConfig, "teacher_cache"),
                   help="folder for cached taps + top-k teacher logits (needs --kl-topk)")
    # Lightning.
    p.add_argument("--precision", default="32-true", help="Lightning precision: 32-true, bf16-mixed, ...")
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--devices", default="auto")
    p.add_argument("--strategy", default="auto", help="auto | ddp | fsdp | ...")
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--checkpoint-every", type=int, default=500, help="save a checkpoint every N steps")
    p.add_argument("--resume", default=None,
                   help="checkpoint path, or 'last' (OUT/checkpoints/last.ckpt; none yet: start from scratch)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the previous run in a non-empty --out (its head, checkpoints, logs, tau curve)")
    p.add_argument("--logger", choices=("csv", "tensorboard"), default="csv")
    p.add_argument("--save-dtype", choices=DTYPES, default="float32", help="dtype of the saved head weights")
    p.add_argument("--seed", type=int, default=_default(TrainConfig, "seed"))
    p.add_argument("--data-seed", type=int, default=_default(TokenDataModule, "seed"),
                   help="seed of the train/val split and of the shuffling (kept apart from --seed so "
                   "runs with several seeds see identical data)")
    p.add_argument("--eval-data", default=None,
                   help="replay references (jsonl: input_ids, response_start, set) for the tau curve")
    p.add_argument("--eval-every", type=int, default=100, help="replay tau every N steps (with --eval-data)")
    p.add_argument("--eval-budgets", type=_int_list, default=(16,), help="comma-separated tree budgets")
    p.add_argument("--eval-final-budgets", type=_int_list, default=None,
                   help="budgets of the last replay, when training ends (default: --eval-budgets)")
    p.add_argument("--eval-tokens", type=int, default=None, help="replay only the first N answer tokens")
    p.add_argument("--cache-only", default=None, metavar="I/N",
                   help="only fill --teacher-cache (share I of N: run N processes, 1 thread each) and exit")
    p.set_defaults(func=run)


def _devices(text: str):
    return int(text) if str(text).isdigit() else text


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import lightning as L
    import torch
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    from jetspec.data import TokenDataModule
    from jetspec.interfaces import DRAFTERS
    from jetspec.loading import load_target

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
    if args.head == "eagle" and (args.draft_vocab or args.direct_path or args.conditioned):
        raise SystemExit("--draft-vocab, --direct-path and --conditioned are parallel-head options")
    if args.head == "eagle":
        # An EAGLE head unrolls block_size - 1 depths in training-time test; it has no MASK slots
        # and always works at the target's width.
        arch = dict(ttt_steps=args.block_size - 1)
    else:
        arch = dict(block_size=args.block_size, hidden_size=args.hidden_size, mask_token_id=args.mask_token_id,
                    direct_path=args.direct_path, conditioned=args.conditioned,
                    draft_vocab=_draft_vocab(args, model, tok, dm))
    head = DRAFTERS[args.head](
        model, num_layers=args.num_layers, tap_layers=args.tap_layers, **arch, lr=args.lr,
        weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, anchors_per_seq=args.anchors,
        loss=args.loss, kl_topk=args.kl_topk, decay_gamma=args.decay_gamma, on_policy=args.on_policy,
        teacher_cache=args.teacher_cache,
        seed=args.seed)
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
    return 0


TRAIN_OUTPUTS = ("head", "checkpoints", "logs", "tau_curve.jsonl")  # what a run writes into --out


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
    from jetspec.drafters.head_files import check_identity, peek_checkpoint

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
    from jetspec.drafters.parallel_head import default_tap_layers
    from jetspec.training import fill_teacher_cache

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
    from jetspec.data import TokenDataModule
    from jetspec.drafters.draft_vocab import coverage, frequent_tokens, token_counts
    from jetspec.prompts import eos_ids

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
    from jetspec.callbacks import TauCurve
    from jetspec.prompts import read_jsonl

    refs = list(read_jsonl(args.eval_data))
    return [TauCurve(refs, budgets=args.eval_budgets, every_n_steps=args.eval_every,
                     out_file=str(out / "tau_curve.jsonl"), max_new_tokens=args.eval_tokens,
                     final_budgets=args.eval_final_budgets)]
