"""DDP over gloo with 2 CPU processes takes exactly the steps of one process with the same global batch.

The training runs are scripts launched with ``subprocess.run([sys.executable, script])``: under
pytest, Lightning's ddp launcher would re-run the whole pytest command as rank 1.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "scripts" / "ddp_train.py"


def run_script(out: Path, devices: int, strategy: str, head: str) -> dict:
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out), str(devices), strategy, head],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_ddp_two_processes_match_one_process(tmp_path):
    one = run_script(tmp_path / "one.json", 1, "auto", "jetspec")
    two = run_script(tmp_path / "two.json", 2, "ddp", "jetspec")
    assert one["world"] == 1 and two["world"] == 2
    assert len(one["losses"]) == len(two["losses"]) == 4
    # fp64 throughout: only the order of the cross-process sums differs.
    for a, b in zip(one["losses"], two["losses"]):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12)
    for name, value in one["weights"].items():
        assert value == pytest.approx(two["weights"][name], rel=1e-9, abs=1e-12), name
