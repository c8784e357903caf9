"""The documentation build's own checks (docs/hooks.py) hold today and would fail on what they guard against.

The strict site build refuses a public name without a docstring and an executed tutorial whose cell
raised. These tests run the same functions the build runs: on the real package (nothing missing)
and on deliberately broken inputs (negative controls), which must be reported by name.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path

import nbformat
import pytest

pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e '.[docs]')")
from mkdocs.exceptions import PluginError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("jetspec_docs_hooks", ROOT / "docs" / "hooks.py")
hooks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(hooks)


def test_every_pinned_public_name_has_a_docstring():
    for module in hooks.PUBLIC_MODULES:
        assert hooks.missing_docstrings(module) == [], module


def test_an_undocumented_public_name_is_reported(monkeypatch):
    """Negative control: a module whose __all__ holds undocumented names must be reported, name by name."""
    fake = types.ModuleType("jetspec_fake_api")

    def documented():
        """Has a contract."""

    def bare():
        pass

    class Part:
        """A documented class with one undocumented public method and a documented one."""

        def run(self):
            pass

        def stop(self):
            """Stops."""

    fake.documented, fake.bare, fake.Part = documented, bare, Part
    fake.__all__ = ["documented", "bare", "Part"]
    monkeypatch.setitem(sys.modules, "jetspec_fake_api", fake)
    assert hooks.missing_docstrings("jetspec_fake_api") == ["jetspec_fake_api.bare", "jetspec_fake_api.Part.run"]


def _notebook_pair(tmp_path, outputs):
    source = tmp_path / "01_x.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("1 / 0")]
    nbformat.write(nb, source)
    out = tmp_path / "out"
    out.mkdir()
    nb.cells[0].outputs = outputs
    nb.cells[0].execution_count = 1
    nbformat.write(nb, out / source.name)
    later = source.stat().st_mtime + 10  # the copy is newer than its source: not executed again
    os.utime(out / source.name, (later, later))
    return source, out


def test_a_tutorial_cell_that_raised_fails_the_build(tmp_path):
    """Negative control: an executed copy holding an error output stops the build, naming notebook and cell."""
    error = nbformat.v4.new_output("error", ename="ZeroDivisionError", evalue="division by zero",
                                   traceback=["ZeroDivisionError: division by zero"])
    source, out = _notebook_pair(tmp_path, [error])
    with pytest.raises(PluginError, match=r"01_x.ipynb, cell 0 raised ZeroDivisionError"):
        hooks.ensure_executed([source], out)


def test_a_clean_executed_copy_passes(tmp_path):
    source, out = _notebook_pair(tmp_path, [nbformat.v4.new_output("stream", name="stdout", text="ok\n")])
    hooks.ensure_executed([source], out)  # no error, nothing executed


def test_included_reports_link_their_figures_relative_to_the_page():
    # docs/results/batching.md links its figure from the repository root, as the code host resolves it
    page = '# Benchmarks\n\n--8<-- "docs/results/batching.md"\n'
    at_root = hooks.inline_snippets(page, "benchmarks.md")
    assert "](docs/results/img/batching.png)" in at_root and "](/docs/results/img/batching.png)" not in at_root
    assert "## Batching" in at_root and "--8<--" not in at_root
    assert "](../docs/results/img/batching.png)" in hooks.inline_snippets(page, "guides/benchmarks.md")


def test_a_missing_report_or_figure_is_not_papered_over(tmp_path, monkeypatch):
    with pytest.raises(PluginError, match="does not exist"):
        hooks.inline_snippets('--8<-- "docs/results/no_such_report.md"\n', "benchmarks.md")
    (tmp_path / "r.md").write_text("![gone](/docs/results/img/no_such_figure.png)\n")
    monkeypatch.setattr(hooks.nbexec, "REPO", tmp_path)
    # left as a root link, which the strict build then reports as a warning (so the build fails)
    kept = hooks.inline_snippets('--8<-- "r.md"\n', "benchmarks.md")
    assert kept == "![gone](/docs/results/img/no_such_figure.png)\n\n"


def test_the_tutorials_index_holds_the_syllabus_and_every_tutorial():
    notebooks = hooks.nbexec.tutorial_notebooks()
    index = hooks.tutorials_index(notebooks)
    for heading in ("## Syllabus", "## What you will see here vs the paper, and why", "## Glossary",
                    "## Every tutorial"):
        assert heading in index, heading
    for term in ("**tau**", "**acceptance per depth**", "*conditional*", "**budget**", "**node cost c**",
                 "**replay**"):
        assert term in index, term
    for nb in notebooks:  # a syllabus row and a summary line each
        assert index.count(f"]({nb.name})") == 2, nb.name


def test_a_tutorial_missing_from_the_syllabus_fails_the_build(tmp_path):
    """Negative control: a new tutorial without its row in tutorials/README.md is named by the build."""
    syllabus = tmp_path / "README.md"
    text = hooks.SYLLABUS.read_text(encoding="utf-8")
    notebooks = hooks.nbexec.tutorial_notebooks()
    syllabus.write_text("\n".join(line for line in text.splitlines() if f"]({notebooks[2].name})" not in line))
    with pytest.raises(PluginError, match=f"no syllabus row for {notebooks[2].name}"):
        hooks.tutorials_index(notebooks, syllabus)
