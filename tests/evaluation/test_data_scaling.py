"""experiments/data_scaling.py: prefixes, equal epochs, exact resume, and the report of the curve.

Training is not run here (each point is a ``jetspec train``, tested in tests/test_train_cli.py);
finished runs are faked as the files ``jetspec train`` leaves (``head/config.json``, the CSV log
and the ``tau_curve.jsonl`` rows), with numbers whose summaries are worked out by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))
import data_scaling as ds  # noqa: E402

from jetspec.training.data import TokenDataModule  # noqa: E402

T975_DF3 = 3.182  # Student-t 97.5% quantile, 3 degrees of freedom (4 prompts)


def regen_rows(ids) -> list[dict]:
    return [{"id": i, "input_ids": [1, 2, 3, 4 + i % 5], "response_start": 2, "set": "math"} for i in ids]


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def args(tmp_path: Path, **kw) -> argparse.Namespace:
    base = dict(out=str(tmp_path / "curve"), target="t", refs=str(tmp_path / "refs.jsonl"), teacher_cache="c",
                epochs=2.0, batch_size=4, max_length=256, val_fraction=0.02, val_every=400, seed=0, eval_every=250,
                checkpoint_every=100, budgets="16,64", curve_budgets="16", parallel=2,
                img_dir=str(tmp_path / "img"))
    return argparse.Namespace(**{**base, **kw})


def test_prefixes_are_the_first_rows_by_id_whatever_the_file_order(tmp_path):
    regen = write(tmp_path / "regen.jsonl", regen_rows([5, 0, 3, 1, 4, 2]))
    paths = ds.prefix_files(regen, [2, 4], tmp_path / "out")
    assert [json.loads(x)["id"] for x in paths[2].read_text().splitlines()] == [0, 1]
    assert [json.loads(x)["id"] for x in paths[4].read_text().splitlines()] == [0, 1, 2, 3]
    with pytest.raises(SystemExit, match="holds 6 rows, fewer than the largest size 7"):
        ds.prefix_files(regen, [7], tmp_path / "other")


@pytest.mark.parametrize("rows", [50, 1156, 2312])
def test_steps_give_the_same_epochs_over_the_data_modules_own_training_split(rows):
    dm = TokenDataModule([[1, 2, 3]] * rows, batch_size=4, val_fraction=0.02)
    steps = ds.steps_for(rows, 2.0, 4, 0.02)
    assert steps == -(-2 * len(dm.train_set) // 4)  # ceil(2 epochs x training rows / batch)
    assert ds.steps_for(1156, 2.0, 4, 0.02) == 567  # 1156 - round(23.12) = 1133 rows; ceil(566.5)


def test_a_point_resumes_exactly_once_it_has_a_checkpoint_and_restarts_before(tmp_path):
    a = args(tmp_path)
    name, flags = ds.parse_variant("jetspec-init:--head=jetspec,--init-from-target")
    assert (name, flags) == ("jetspec-init", ["--head=jetspec", "--init-from-target"])
    cmd = ds.train_command(a, name, flags, 1156, Path("rows.jsonl"), ["--block-size", "8"])
    assert "--overwrite" in cmd and "--resume" not in cmd
    assert cmd[cmd.index("--out") + 1] == str(Path(a.out) / "jetspec-init-n1156")
    assert cmd[cmd.index("--max-steps") + 1] == "567"
    # the shared flags come after the script's own, and the variant's last, so each wins over the earlier
    assert cmd[-5:] == ["--block-size", "8", "--head", "jetspec", "--init-from-target"]
    ckpt = Path(a.out) / "jetspec-n1156" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"")
    cmd = ds.train_command(a, "jetspec", [], 1156, Path("rows.jsonl"), [])
    assert cmd[cmd.index("--resume") + 1] == "last" and "--overwrite" not in cmd


def test_a_variants_own_epochs_set_its_steps_and_never_reach_jetspec_train(tmp_path):
    a = args(tmp_path)  # the script's --epochs is 2
    cmd = ds.train_command(a, "jetspec-e4", ["--head=jetspec", "--epochs=4"], 2312, Path("rows.jsonl"), [])
    assert cmd[cmd.index("--max-steps") + 1] == str(ds.steps_for(2312, 4.0, 4, 0.02)) == "2266"
    assert "--epochs" not in cmd and not any(c.startswith("--epochs") for c in cmd)
    # the control it exists for: 2,312 rows for 4 epochs take the steps of 4,624 rows for 2
    assert ds.train_command(a, "jetspec", ["--head=jetspec"], 4624, Path("r.jsonl"), [])[
        cmd.index("--max-steps") + 1] == "2266"
    assert ds.variant_epochs(a, ["--head=jetspec"]) == (2.0, ["--head=jetspec"])


def fake_point(a, head: str, rows: int, taus16: list[float], pooled: dict, train_losses: list[float],
               val_loss: float) -> None:
    run = Path(a.out) / ds.run_name(head, rows)
    (run / "head").mkdir(parents=True)
    (run / "head" / "config.json").write_text("{}")
    steps = ds.steps_for(rows, a.epochs, a.batch_size, a.val_fraction)
    mid = {"step": 1, "tokens_seen": 10, "wall_s": 1.0, "tau_b16": 1.0, "taus_b16": [1.0] * 4}
    final = {"step": steps, "tokens_seen": 500, "wall_s": 9.0, "tau_b16": pooled[16], "taus_b16": taus16,
             "tau_b16_math": pooled[16], "tau_b64": pooled[64], "taus_b64": taus16, "tau_b64_math": pooled[64]}
    (run / "tau_curve.jsonl").write_text(json.dumps(mid) + "\n" + json.dumps(final) + "\n")
    log = run / "logs" / "version_0"
    log.mkdir(parents=True)
    lines = ["step,train/loss,val/loss,val/agree_d1"] + [f"{s},{v},," for s, v in enumerate(train_losses)]
    lines.append(f"{len(train_losses) - 101},,{val_loss},0.25")  # the last validation, 100 steps before the end
    (log / "metrics.csv").write_text("\n".join(lines) + "\n")


def test_report_pools_tau_with_an_interval_over_prompts_and_the_losses_at_the_end(tmp_path):
    a = args(tmp_path)
    write(Path(a.refs), [{}] * 4)
    data = ds.prefix_files(write(tmp_path / "regen.jsonl", regen_rows(range(8))), [4, 8], Path(a.out))
    # 400 logged steps, validated at step 299: the 200 steps before it (100..299) average to 2.0; the
    # steps before them and after the validation are far off.
    losses = [9.0] * 100 + [1.5, 2.5] * 100 + [0.1] * 100
    fake_point(a, "jetspec", 4, [1.0, 1.2, 1.4, 1.6], {16: 1.25, 64: 1.3}, losses, 2.4)
    fake_point(a, "jetspec", 8, [1.5, 1.5, 1.5, 1.5], {16: 1.5, 64: 1.6}, losses, 2.1)
    fake_point(a, "dflash", 8, [1.5, 1.7, 1.5, 1.3], {16: 1.5, 64: 1.6}, losses, 2.1)
    rep = ds.report(a, [("jetspec", [], 4, data[4]), ("jetspec", [], 8, data[8]), ("dflash", [], 8, data[8])])
    small = rep["points"][0]
    assert small["tau"][16]["pooled"] == 1.25
    # per-prompt taus 1.0..1.6: mean 1.3, sample sd 0.2582; half-width t(3) * sd / 2
    assert small["tau"][16]["prompt_ci"] == pytest.approx(T975_DF3 * 0.2582 / 2, rel=1e-3)
    assert small["train_loss"] == pytest.approx(2.0) and small["val_loss"] == 2.4
    assert small["val_step"] == 299 and small["val_agree_d1"] == 0.25
    assert small["response_tokens"] == 4 * 2  # 4 rows x (4 ids - response_start 2)
    assert [r["tokens_seen"] for r in small["curve"]] == [10, 500]
    assert (Path(a.img_dir) / "data_scaling.png").stat().st_size > 0
    assert (Path(a.img_dir) / "data_scaling_curves.png").stat().st_size > 0
    text = (Path(a.out) / "report.md").read_text()
    assert ("| jetspec | 8 | 16 | 2 | 4 | 1.500 +- 0.000 | 1.600 +- 0.000 | math 1.50 | 299 | 2.000 | 2.100 | 0.250 |"
            in text)
    # dflash - jetspec at 8 rows, per prompt: 0, +0.2, 0, -0.2 -> mean 0, sd 0.1633, one better, one worse
    pair = next(d for d in rep["pairs"] if d["budget"] == 16)
    assert (pair["pair"], pair["rows"], pair["better"], pair["worse"]) == ("dflash - jetspec", 8, 1, 1)
    assert pair["mean"] == pytest.approx(0.0, abs=1e-12)
    assert pair["ci"] == pytest.approx(T975_DF3 * 0.1633 / 2, rel=1e-3)
    assert len(rep["pairs"]) == 2  # budgets 16 and 64; no pair at 4 rows, where dflash has no point


def test_a_variant_with_its_own_epochs_is_paired_with_the_baseline_of_as_many_steps(tmp_path):
    a = args(tmp_path)
    write(Path(a.refs), [{}] * 4)
    data = ds.prefix_files(write(tmp_path / "regen.jsonl", regen_rows(range(8))), [4, 8], Path(a.out))
    losses = [2.0] * 300
    fake_point(a, "jetspec", 4, [1.0] * 4, {16: 1.0, 64: 1.0}, losses, 2.0)
    fake_point(a, "jetspec", 8, [1.5, 1.5, 1.5, 1.5], {16: 1.5, 64: 1.5}, losses, 2.0)
    fake_point(args(tmp_path, epochs=4.0), "jetspec-e4", 4, [1.6, 1.5, 1.7, 1.4], {16: 1.55, 64: 1.55}, losses, 2.0)
    rep = ds.report(a, [("jetspec", [], 4, data[4]), ("jetspec", [], 8, data[8]),
                        ("jetspec-e4", ["--epochs=4"], 4, data[4])])
    assert ds.steps_for(4, 4.0, 4, 0.02) == ds.steps_for(8, 2.0, 4, 0.02)  # 4 rows x 4 epochs = 8 rows x 2
    labels = [d["pair"] for d in rep["pairs"] if d["budget"] == 16]
    assert labels == ["jetspec-e4 - jetspec", "jetspec-e4 (4 rows) - jetspec (8 rows), 4 steps each"]
    by_steps = next(d for d in rep["pairs"] if d["budget"] == 16 and "steps each" in d["pair"])
    assert by_steps["mean"] == pytest.approx(0.05) and (by_steps["better"], by_steps["worse"]) == (2, 1)
    same_rows = next(d for d in rep["pairs"] if d["budget"] == 16 and d["pair"] == "jetspec-e4 - jetspec")
    assert same_rows["mean"] == pytest.approx(0.55) and same_rows["better"] == 4


def test_report_refuses_a_point_that_did_not_reach_its_steps(tmp_path):
    a = args(tmp_path)
    write(Path(a.refs), [{}] * 4)
    data = ds.prefix_files(write(tmp_path / "regen.jsonl", regen_rows(range(4))), [4], Path(a.out))
    fake_point(a, "jetspec", 4, [1.0] * 4, {16: 1.0, 64: 1.0}, [2.0], 2.0)
    curve = Path(a.out) / "jetspec-n4" / "tau_curve.jsonl"
    curve.write_text(curve.read_text().splitlines()[0] + "\n")  # only the mid-run row: stopped early
    with pytest.raises(SystemExit, match="has not finished its 2 steps"):
        ds.report(a, [("jetspec", [], 4, data[4])])


def test_prefixes_only_writes_the_row_files_and_trains_nothing(tmp_path, monkeypatch, capsys):
    regen = write(tmp_path / "regen.jsonl", regen_rows([3, 1, 2, 0]))
    out = tmp_path / "curve"
    monkeypatch.setattr(ds, "run_all", lambda *a: pytest.fail("--prefixes-only must not train"))
    monkeypatch.setattr(sys, "argv", ["data_scaling.py", "--regen", str(regen), "--sizes", "2,4", "--out", str(out),
                                      "--refs", "r", "--teacher-cache", "c", "--prefixes-only"])
    ds.main()
    assert capsys.readouterr().out.split() == [str(out / "rows-2.jsonl"), str(out / "rows-4.jsonl")]
    assert [json.loads(x)["id"] for x in (out / "rows-2.jsonl").read_text().splitlines()] == [0, 1]
