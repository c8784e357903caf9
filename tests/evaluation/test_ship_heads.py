"""experiments/ship_heads.py: reshipping one head keeps the others and their model-card sections.

A head trained this round is copied, sealed and described from its run (metrics, replay tau, the
command written beside the run folder); a head whose run is not on this machine keeps its files and
its section byte for byte. The negative control: a head with neither a run nor shipped files is an
error naming the flag, not a card without it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_model

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))
from ship_heads import card_sections, main  # noqa: E402

from jetspec.drafters import JetSpecHead  # noqa: E402
from jetspec.drafters.head_format import read_config, verify_integrity  # noqa: E402

OLD_CARD = """# Heads

## Runs (commit abc)

### jetspec

- old jetspec text

### eagle

- eagle text that must survive
- command:

```
jetspec train --head eagle
```


![loss curves](loss_curves.png)

## Limits
"""


def test_card_sections_split_at_headings_and_figures():
    sections = card_sections(OLD_CARD)
    assert list(sections) == ["jetspec", "eagle"]
    assert sections["jetspec"] == "### jetspec\n\n- old jetspec text\n"
    assert sections["eagle"].endswith("jetspec train --head eagle\n```\n")
    assert "loss curves" not in sections["eagle"] and "Limits" not in sections["eagle"]


def write_run(run: Path) -> None:
    torch.manual_seed(0)
    JetSpecHead(tiny_model("llama", seed=0), block_size=4).save_pretrained(run / "head")
    (run / "logs" / "version_0").mkdir(parents=True)
    (run / "logs" / "version_0" / "metrics.csv").write_text(
        "step,train/loss,val/agree_d1\n0,5.0,\n9,4.25,\n9,,0.5\n")
    last = {"step": 12, "tau_b16": 1.9, "taus_b16": [1.9]}
    (run / "tau_curve.jsonl").write_text(json.dumps(last) + "\n")
    root = Path(__file__).resolve().parents[2]  # data_scaling.py writes absolute interpreter paths
    command = f"{root}/.venv/bin/python -m jetspec.cli train --num-layers 2\n"
    run.parent.joinpath(f"{run.name}.cmd.txt").write_text(command)


def test_reshipping_one_head_keeps_the_other(tmp_path):
    dest = tmp_path / "heads"
    (dest / "eagle").mkdir(parents=True)
    (dest / "eagle" / "model.safetensors").write_bytes(b"untouched")
    (dest / "MODEL_CARD.md").write_text(OLD_CARD)
    write_run(tmp_path / "runs" / "jetspec-l2")

    main(["--runs", str(tmp_path / "runs"), "--heads", "jetspec,eagle", "--run",
          f"jetspec={tmp_path / 'runs' / 'jetspec-l2'}", "--dest", str(dest)])

    card = (dest / "MODEL_CARD.md").read_text()
    assert card_sections(OLD_CARD)["eagle"] in card  # the kept head's section, unchanged
    assert "old jetspec text" not in card
    new = card_sections(card)["jetspec"]
    assert "steps: 12; last logged train loss: 4.250" in new  # the last step replayed, not logged
    assert '"val/agree_d1": "0.5"' in new and '{"tau_b16": 1.9}' in new  # per-prompt taus left out
    assert "```\n.venv/bin/python -m jetspec.cli train --num-layers 2\n```" in new  # beside the run, made relative
    assert (dest / "eagle" / "model.safetensors").read_bytes() == b"untouched"
    meta = read_config(dest / "jetspec")
    verify_integrity(dest / "jetspec", meta, (dest / "jetspec" / "model.safetensors").read_bytes())
    assert (dest / "loss_curves.png").stat().st_size > 0


def test_a_subset_of_heads_keeps_the_others_sections(tmp_path):
    dest = tmp_path / "heads"
    (dest / "eagle").mkdir(parents=True)
    (dest / "jetspec").mkdir()
    (dest / "MODEL_CARD.md").write_text(OLD_CARD)
    write_run(tmp_path / "runs" / "jetspec-l2")
    main(["--heads", "jetspec", "--run", f"jetspec={tmp_path / 'runs' / 'jetspec-l2'}", "--dest", str(dest)])
    sections = card_sections((dest / "MODEL_CARD.md").read_text())
    assert list(sections) == ["jetspec", "eagle"] and sections["eagle"] == card_sections(OLD_CARD)["eagle"]
    assert sections["jetspec"].startswith("### jetspec\n\n- shipped on top of commit ")


def test_a_named_run_without_a_head_is_an_error_and_changes_nothing(tmp_path):
    """A typo or an unfinished run must not quietly keep the old head; nor may a later head's error
    leave an earlier head copied under an old card."""
    dest = tmp_path / "heads"
    (dest / "eagle").mkdir(parents=True)
    (dest / "jetspec").mkdir()
    (dest / "jetspec" / "model.safetensors").write_bytes(b"old")
    (dest / "MODEL_CARD.md").write_text(OLD_CARD)
    write_run(tmp_path / "runs" / "jetspec-l2")
    (tmp_path / "runs" / "unfinished").mkdir()
    with pytest.raises(SystemExit, match="--run jetspec=.*unfinished: no .*unfinished/head"):
        main(["--heads", "jetspec,eagle", "--run", f"jetspec={tmp_path / 'runs' / 'unfinished'}",
              "--dest", str(dest)])
    with pytest.raises(SystemExit, match="--heads dflash: no "):  # jetspec is fine, dflash is not
        main(["--runs", str(tmp_path / "runs"), "--heads", "jetspec,dflash", "--run",
              f"jetspec={tmp_path / 'runs' / 'jetspec-l2'}", "--dest", str(dest)])
    assert (dest / "jetspec" / "model.safetensors").read_bytes() == b"old"
    assert (dest / "MODEL_CARD.md").read_text() == OLD_CARD


def test_a_head_with_no_run_and_nothing_shipped_is_an_error(tmp_path):
    dest = tmp_path / "heads"
    dest.mkdir()
    (dest / "MODEL_CARD.md").write_text(OLD_CARD)
    with pytest.raises(SystemExit, match="--heads dflash: no .*dflash/head and no shipped head to keep"):
        main(["--runs", str(tmp_path / "runs"), "--heads", "dflash", "--dest", str(dest)])
