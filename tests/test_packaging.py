"""The wheel carries every module of the package-dir mapped folders (docs/design.md §6.8: a regular wheel
silently drops nested sub-packages that are not listed)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAPPING = {"jetspec": "jetspec", "drafters": "jetspec/drafters", "verifiers": "jetspec/verifiers",
           "trees": "jetspec/trees", "kernels": "jetspec/kernels"}


def test_wheel_contains_every_module(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True)
    wheel = next(tmp_path.glob("jetspec-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = set()
    for folder, dest in MAPPING.items():
        for py in (ROOT / folder).rglob("*.py"):
            rel = py.relative_to(ROOT / folder).as_posix()
            expected.add(f"{dest}/{rel}")
    missing = sorted(expected - names)
    assert not missing, f"modules missing from the wheel: {missing}"
    # and nothing is installed under the bare, colliding top-level names
    assert not any(n.split("/")[0] in {"drafters", "verifiers", "trees", "kernels"} for n in names)


def test_console_script_and_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "jetspec", "--help"], capture_output=True, text=True, check=True)
    assert "generate" in out.stdout
