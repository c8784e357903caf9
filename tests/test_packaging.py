"""The package as users install it: the wheel's contents, its build log, and a fresh virtual environment
outside the checkout that runs ``jetspec generate`` (docs/design.md §6.8).

A regular wheel silently drops nested sub-packages and data folders that are not listed, and
setuptools warns when a data folder looks like an unlisted package; both fail here. The smoke test
installs only the wheel into the new environment: the dependencies come from the project's own
environment as a plain path entry (its ``.pth`` files, among them the editable install of this
checkout, are not run), so every jetspec module it imports comes from the wheel.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAPPING = {"jetspec": "jetspec", "drafters": "jetspec/drafters", "verifiers": "jetspec/verifiers",
           "trees": "jetspec/trees", "kernels": "jetspec/kernels"}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, str]:
    """(the wheel, the build's log) from ``python -m build --wheel`` on a copy-free checkout."""
    out = tmp_path_factory.mktemp("dist")
    run = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(ROOT)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return next(out.glob("jetspec-*.whl")), run.stdout + run.stderr


def test_wheel_contains_every_module_and_data_file(built):
    wheel, _ = built
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = set()
    for folder, dest in MAPPING.items():
        for py in (ROOT / folder).rglob("*.py"):
            expected.add(f"{dest}/{py.relative_to(ROOT / folder).as_posix()}")
    expected |= {f"jetspec/{p.relative_to(ROOT / 'jetspec').as_posix()}"
                 for p in (ROOT / "jetspec" / "assets").rglob("*") if p.is_file()}
    expected |= {f"jetspec/kernels/{p.name}" for p in (ROOT / "kernels").glob("*.cpp")}
    missing = sorted(expected - names)
    assert not missing, f"files missing from the wheel (list new folders in pyproject.toml): {missing}"
    # and nothing is installed under the bare, colliding top-level names
    assert not any(n.split("/")[0] in {"drafters", "verifiers", "trees", "kernels"} for n in names)


def test_the_build_warns_about_nothing_we_configure(built):
    _, log = built
    for warning in ("absent from the `packages` configuration", "`project.license` as a TOML table"):
        assert warning not in log, f"the wheel build warns: {warning!r}"


def test_console_script_and_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "jetspec", "--help"], capture_output=True, text=True, check=True)
    assert "generate" in out.stdout


def test_the_wheel_runs_in_a_fresh_environment_outside_the_checkout(built, tmp_path):
    wheel, _ = built
    env = tmp_path / "env"
    venv.EnvBuilder(with_pip=False).create(env)
    py = env / "bin" / "python"
    site = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # the wheel, unpacked as pip would, then the dependencies as a plain path entry after it
    zipfile.ZipFile(wheel).extractall(site)
    (site / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp_path / "elsewhere"
    work.mkdir()
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = subprocess.run([py, "-c", "import jetspec, jetspec.kernels, jetspec.drafters; "
                            "print(jetspec.__file__); print(jetspec.kernels.__file__)"],
                           cwd=work, env=clean, capture_output=True, text=True, timeout=300)
    assert where.returncode == 0, where.stderr[-3000:]
    assert all(Path(p).resolve().is_relative_to(site.resolve()) for p in where.stdout.split()), where.stdout
    gen = subprocess.run([py, "-m", "jetspec", "generate", "--target", "smollm2-135m-instruct", "--drafter", "jetspec",
                          "--prompt", "What is 2+3?", "--max-new-tokens", "8", "--threads", "1"],
                         cwd=work, env=clean, capture_output=True, text=True, timeout=900)
    assert gen.returncode == 0, gen.stderr[-3000:]
    assert "5" in gen.stdout and "tau" in gen.stdout, gen.stdout
