"""Every tutorial executes without an error, and the executed copy is kept for the documentation site.

This is the one execution of the notebooks: each test writes ``build/tutorials/NN_name.ipynb`` with
its outputs, and ``make docs`` renders those copies instead of executing the notebooks again. A cell
that raised fails its test with the cell's source and traceback, and so does an output a reader of
the site should not see (a path of the machine that ran it, a warning, an object's default repr).
The executor and that check are themselves checked on tiny notebooks written here (negative controls:
a raising cell must be reported by index, each kind of stray output by cell).
"""

from __future__ import annotations

import os
import re

import nbformat
import pytest

from jetspec.testing.notebooks import BUILD, execute_notebook, is_stale, stray_outputs, tutorial_notebooks

NOTEBOOKS = tutorial_notebooks()


def test_the_tutorials_are_found():
    assert len(NOTEBOOKS) >= 10, NOTEBOOKS
    assert [p.name[:2] for p in NOTEBOOKS] == sorted(p.name[:2] for p in NOTEBOOKS)


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_tutorial_executes(notebook):
    result = execute_notebook(notebook, BUILD)
    assert result.executed.is_file()
    if result.error is not None:
        pytest.fail(result.error.describe(notebook.name), pytrace=False)
    executed = nbformat.read(result.executed, as_version=4)
    code = [c for c in executed.cells if c.cell_type == "code"]
    assert code and all(c.execution_count is not None for c in code), "a code cell did not run"
    assert not is_stale(notebook, BUILD)
    stray = stray_outputs(executed)
    assert not stray, f"{notebook.name} shows what a reader should not see:\n" + "\n".join(stray)


# Started before anything else in a kernel, this makes `import triton` fail and find_spec("triton")
# return None: what a machine without Triton (macOS, Windows) looks like to jetspec.
NO_TRITON = 'import sys\nsys.modules["triton"] = None\n'


@pytest.mark.slow
def test_the_kernel_tutorial_runs_where_triton_is_not_installed(tmp_path):
    """Tutorial 8 on a laptop without Triton: it says once that the twin runs, and runs to the end."""
    (tmp_path / "sitecustomize.py").write_text(NO_TRITON)
    notebook = next(p for p in NOTEBOOKS if p.name.startswith("08_"))
    path = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    result = execute_notebook(notebook, tmp_path / "out", env={"PYTHONPATH": path})
    if result.error is not None:
        pytest.fail(result.error.describe(notebook.name), pytrace=False)
    executed = nbformat.read(result.executed, as_version=4)
    printed = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert printed.count("Triton is not installed here") == 1, printed[:2000]
    assert "|triton - reference| = 0.0e+00" in printed  # the twin compared with itself
    assert not stray_outputs(executed)


def try_this_prompts(source: str) -> list[str]:
    """The bullets of a tutorial's "## Try this" section (jupytext percent format: ``# * ...`` lines and
    their ``#   ...`` continuations), one string each."""
    section = source.split("# ## Try this\n", 1)[1] if "# ## Try this\n" in source else ""
    section = section.split("\n# %%", 1)[0].split("\n# ## ", 1)[0]
    bullets: list[str] = []
    for line in section.splitlines():
        if line.startswith("# * "):
            bullets.append(line[4:])
        elif line.startswith("#   ") and bullets:
            bullets[-1] += " " + line[4:]
    return bullets


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_tutorial_reads_its_results_and_ends_with_try_this(notebook):
    """Each tutorial says what its measurements mean ("Reading the result", computed cells) and ends with
    two or three "Try this" prompts saying what to expect (tutorials/README.md promises both)."""
    source = notebook.with_suffix(".py").read_text(encoding="utf-8")
    assert "Reading the result" in source, notebook.name
    prompts = try_this_prompts(source)
    assert 2 <= len(prompts) <= 3, (notebook.name, prompts)
    vague = [p for p in prompts if not re.search(r"\bexpect|\bmust\b", p, re.I)]
    assert not vague, f"{notebook.name}: a prompt that does not say what to expect: {vague}"


def test_try_this_needs_its_own_section():
    """Negative control: bullets elsewhere do not count, and a section stops at the next heading."""
    assert try_this_prompts("# ## Summary\n# * one\n# * two\n") == []
    assert try_this_prompts("# ## Try this\n# * a\n#   more\n# * b\n# ## Next\n# * c\n") == ["a more", "b"]


def _tiny_notebook(path, second_cell: str):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# tiny"), nbformat.v4.new_code_cell("x = 6 * 7\nprint(x)"),
                nbformat.v4.new_code_cell(second_cell)]
    nbformat.write(nb, path)
    return path


def test_executor_keeps_outputs(tmp_path):
    nb = _tiny_notebook(tmp_path / "01_ok.ipynb", "x + 1")
    result = execute_notebook(nb, tmp_path / "out", timeout_s=120)
    assert result.error is None
    cells = nbformat.read(result.executed, as_version=4).cells
    assert cells[1].outputs[0]["text"] == "42\n"
    assert cells[2].outputs[0]["data"]["text/plain"] == "43"


def test_executor_reports_the_raising_cell(tmp_path):
    """Negative control: a cell that raises is reported with its index, source and traceback."""
    nb = _tiny_notebook(tmp_path / "02_bad.ipynb", "raise RuntimeError('tutorial broke')")
    result = execute_notebook(nb, tmp_path / "out", timeout_s=120)
    assert result.error is not None
    assert result.error.index == 2 and result.error.ename == "RuntimeError"
    assert "tutorial broke" in result.error.traceback
    assert "raise RuntimeError" in result.error.describe("02_bad.ipynb")
    assert result.executed.is_file()  # kept, so the site build sees the error too


def test_staleness_follows_the_notebook(tmp_path):
    nb = _tiny_notebook(tmp_path / "03_s.ipynb", "1")
    out = tmp_path / "out"
    assert is_stale(nb, out)  # never executed
    execute_notebook(nb, out, timeout_s=120)
    assert not is_stale(nb, out)
    later = (out / nb.name).stat().st_mtime + 10
    os.utime(nb, (later, later))  # the notebook changed after its execution
    assert is_stale(nb, out)


def test_stray_outputs_are_reported(tmp_path):
    """Negative control: a machine path, a warning on stderr and a stray object repr are each reported by
    cell; a clean notebook of numbers and prose-like prints is not."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("print('tau = 2.31 tokens per round; see docs/design.md')"),
                nbformat.v4.new_code_cell("import sys, tempfile\nprint(tempfile.mkdtemp())"),
                nbformat.v4.new_code_cell("import warnings\nwarnings.warn('careful')"),
                nbformat.v4.new_code_cell("import torch\ntorch.manual_seed(0)")]
    path = tmp_path / "04_stray.ipynb"
    nbformat.write(nb, path)
    result = execute_notebook(path, tmp_path / "out", timeout_s=120)
    assert result.error is None
    found = stray_outputs(nbformat.read(result.executed, as_version=4))
    assert [line.split(",")[0] for line in found] == ["cell 1 (stdout)", "cell 2 (stderr)", "cell 3 (execute_result)"]
    assert "a machine path" in found[0] and "a warning" in found[1] and "an object repr" in found[2]
