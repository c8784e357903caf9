"""``jetspec train`` as a user reruns it: resuming the right head, never overwriting a finished run silently.

Every run here trains a tiny head for one or two steps on a tiny Llama saved to a folder.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from conftest import random_seqs, tiny_model, tiny_tokenizer

from jetspec.cli import main


@pytest.fixture
def argv(tmp_path):
    """A `jetspec train` command line for a 1-step JetSpec run into tmp_path/out (append flags to it)."""
    target, tok = tiny_model("llama", seed=4, dtype=torch.float32), tiny_tokenizer()
    target.save_pretrained(tmp_path / "target")
    tok.save_pretrained(tmp_path / "target")
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in random_seqs(8)) + "\n")
    return ["train", "--target", str(tmp_path / "target"), "--data", str(data), "--out", str(tmp_path / "out"),
            "--batch-size", "4", "--accelerator", "cpu", "--devices", "1", "--checkpoint-every", "1",
            "--max-steps", "1"]


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_resume_refuses_another_head_kind_or_architecture(argv, tmp_path):
    assert main(argv + ["--head", "jetspec", "--block-size", "4"]) == 0
    weights = tmp_path / "out" / "head" / "model.safetensors"
    before = digest(weights)
    more = ["--max-steps", "2", "--resume", "last"]
    with pytest.raises(SystemExit, match=r"'jetspec' head.*'dflash' head") as err:
        main(argv + ["--head", "dflash", "--block-size", "4"] + more)
    assert "last.ckpt" in str(err.value)
    with pytest.raises(SystemExit, match="block_size: 4 in the checkpoint, 8 requested"):
        main(argv + ["--head", "jetspec", "--block-size", "8"] + more)
    with pytest.raises(SystemExit, match="'jetspec' head.*'eagle' head"):
        main(argv + ["--head", "eagle", "--block-size", "4"] + more)
    assert digest(weights) == before  # nothing was overwritten
    assert main(argv + ["--head", "jetspec", "--block-size", "4"] + more) == 0  # the matching head resumes


def test_resume_check_in_the_lightning_hook(tmp_path):
    """Library users resuming with Trainer.fit(ckpt_path=...) get the same refusal."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from jetspec.drafters import DFlashHead, JetSpecHead
    from jetspec.training.data import TokenDataModule

    target = tiny_model("llama", seed=4)

    def fit(head, steps, ckpt=None):
        L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                  enable_model_summary=False, callbacks=[ModelCheckpoint(tmp_path / "ck", save_last=True)]
                  ).fit(head, datamodule=TokenDataModule(random_seqs(8), batch_size=4), ckpt_path=ckpt)

    fit(JetSpecHead(target, block_size=4), 1)
    with pytest.raises(ValueError, match=r"'jetspec' head.*'dflash' head"):
        fit(DFlashHead(target, block_size=4), 2, str(tmp_path / "ck" / "last.ckpt"))
    with pytest.raises(ValueError, match="num_layers: 1 in the checkpoint, 2 requested"):
        fit(JetSpecHead(target, block_size=4, num_layers=2), 2, str(tmp_path / "ck" / "last.ckpt"))
    state = torch.load(tmp_path / "ck" / "last.ckpt", weights_only=False)
    assert state.pop("jetspec_head") == {"head": "jetspec", "config": state_config(target)}
    torch.save(state, tmp_path / "old.ckpt")  # as written before checkpoints recorded the head
    with pytest.warns(UserWarning, match="does not record its head kind and architecture"):
        fit(JetSpecHead(target, block_size=4), 2, str(tmp_path / "old.ckpt"))


def state_config(target) -> dict:
    from dataclasses import asdict

    from jetspec.drafters import JetSpecHead

    return json.loads(json.dumps(asdict(JetSpecHead(target, block_size=4).config)))


def test_rerun_into_a_used_out_needs_resume_or_overwrite(argv, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(argv + ["--resume", "last"]) == 0  # a fresh --out: --resume last starts from scratch
    assert "starting from scratch" in capsys.readouterr().out
    weights = out / "head" / "model.safetensors"
    before = digest(weights)
    for steps in ("3", "2"):
        with pytest.raises(SystemExit, match=r"out is not empty.*--resume last.*--overwrite"):
            main(argv + ["--max-steps", steps, "--seed", "1"])
    assert digest(weights) == before
    assert main(argv + ["--max-steps", "2", "--resume", "last"]) == 0
    assert "after 2 steps" in capsys.readouterr().out
    assert main(argv + ["--overwrite", "--seed", "1"]) == 0  # a new run: the old one's files are gone
    assert "after 1 steps" in capsys.readouterr().out
    assert digest(weights) != before
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["epoch=0-step=1.ckpt", "last.ckpt"]  # no last-v1.ckpt from the first run
    assert [p.name for p in (out / "logs").iterdir()] == ["version_0"]


def test_tap_layers_flag_is_a_list_of_layers():
    """`--tap-layers 0,1` reached HeadConfig as the string '0,1' (its field was typed Sequence[int],
    which the flag generator did not read as a list) and failed with int(',')."""
    from jetspec.cli import build_parser
    from jetspec.drafters.parallel_net import HeadConfig

    args = build_parser("train").parse_args(["train", "--target", "t", "--data", "d", "--out", "o",
                                             "--tap-layers", "0,1"])
    assert args.tap_layers == (0, 1)
    assert HeadConfig(tap_layers=args.tap_layers).tap_layers == (0, 1)


# Every generated architecture and recipe flag of `jetspec train`, with a value that is not its default.
GIVEN = {"num_layers": ("--num-layers", "2", 2), "block_size": ("--block-size", "5", 5),
         "tap_layers": ("--tap-layers", "0,1", (0, 1)), "hidden_size": ("--hidden-size", "32", 32),
         "mask_token_id": ("--mask-token-id", "3", 3), "conditioned": ("--conditioned", "true", True),
         "direct_path": ("--direct-path", "true", True), "init_from_target": ("--init-from-target", "true", True),
         "lr": ("--lr", "0.01", 0.01),
         "weight_decay": ("--weight-decay", "0.5", 0.5), "warmup_steps": ("--warmup-steps", "3", 3),
         "anchors_per_seq": ("--anchors", "5", 5), "loss": ("--loss", "reverse_kl", "reverse_kl"),
         "kl_topk": ("--kl-topk", "4", 4), "decay_gamma": ("--decay-gamma", "2", 2.0),
         "on_policy": ("--on-policy", "true", True), "teacher_cache": ("--teacher-cache", "c", "c"),
         "seed": ("--seed", "9", 9)}


def test_every_generated_head_and_recipe_flag_reaches_the_head():
    """The head is built from the generated flags by name (no hand-copied list that can drop one)."""
    from dataclasses import fields

    from jetspec.cli import build_parser
    from jetspec.commands.train import HEAD_FLAGS, RECIPE_FLAGS, build_head
    from jetspec.drafters.parallel_net import HeadConfig
    from jetspec.training.recipe import TrainConfig

    # draft_vocab_size is the one flag not passed through as it is: --draft-vocab N becomes N token ids.
    assert set(GIVEN) | {"draft_vocab_size"} == set(HEAD_FLAGS) | set(RECIPE_FLAGS)
    argv = ["train", "--target", "t", "--data", "d", "--out", "o"] + [x for f, v, _ in GIVEN.values() for x in (f, v)]
    args = build_parser("train").parse_args(argv)
    head = build_head(args, tiny_model("llama", seed=4), draft_vocab=None)
    defaults = {f.name: f.default for c in (HeadConfig, TrainConfig) for f in fields(c)}
    for name, (flag, _, want) in GIVEN.items():
        assert want != defaults[name], name  # else the check below could not fail
        got = getattr(head.config if name in HEAD_FLAGS else head.train_config, name)
        assert got == want, f"{flag}: the head got {got!r}"


def test_eval_data_writes_the_tau_curve_and_its_plot_across_a_resume(argv, tmp_path, capsys):
    """With --eval-data, a run leaves tau_curve.jsonl (one row per replay) and tau_curve.png drawn from
    every row, the resumed part's included; --overwrite removes both with the run."""
    from jetspec.core.jsonl import write_jsonl
    from jetspec.core.loading import load_target
    from jetspec.core.replay import make_references
    from jetspec.training.callbacks import load_curve

    model, _ = load_target(str(tmp_path / "target"))
    refs = tmp_path / "refs.jsonl"
    write_jsonl(refs, [r.to_row() for r in make_references(model, [[1, 2, 3], [5, 6]], max_new_tokens=6,
                                                           progress=False)])
    flags = ["--head", "jetspec", "--block-size", "4", "--eval-data", str(refs), "--eval-every", "1",
             "--eval-budgets", "4,8"]
    out = tmp_path / "out"
    assert main(argv + flags) == 0
    assert main(argv + flags + ["--max-steps", "2", "--resume", "last"]) == 0
    assert f"tau curve: {out / 'tau_curve.png'}" in capsys.readouterr().out
    rows = load_curve(out / "tau_curve.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["tau_b4"] >= 1.0 and r["tau_b8"] >= 1.0 for r in rows)
    png = (out / "tau_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    assert main(argv + ["--overwrite", "--head", "jetspec", "--block-size", "4"]) == 0  # no --eval-data now
    assert not (out / "tau_curve.png").exists() and not (out / "tau_curve.jsonl").exists()
