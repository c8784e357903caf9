"""Every tutorial is a jupytext pair, and the two files say the same thing.

The suite executes the ``.ipynb`` (tests/test_tutorials.py) while reviewers read the ``.py``; if the
two drifted, the reviewed text would not be the tested one. The check is a round trip through
jupytext: the notebook written in the percent format must be the ``.py`` to the byte, and the
``.py`` read back must give the notebook's cells. Fix a failure with
``jupytext --sync tutorials/NN_name.py`` (after editing either side).
"""

from __future__ import annotations

from pathlib import Path

import jupytext
import nbformat
import pytest

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
PAIRS = sorted(p.stem for p in TUTORIALS.glob("*.py"))


def pair_differences(py_text: str, notebook: nbformat.NotebookNode) -> list[str]:
    """What differs between a tutorial's ``.py`` text and its notebook (empty when they are one pair)."""
    problems = []
    if jupytext.writes(notebook, fmt="py:percent") != py_text:
        problems.append("the notebook written as py:percent is not the .py file")
    from_py = [(c.cell_type, c.source) for c in jupytext.reads(py_text, fmt="py:percent").cells]
    in_nb = [(c.cell_type, c.source) for c in notebook.cells]
    if from_py != in_nb:
        diff = next((i for i, (a, b) in enumerate(zip(from_py, in_nb)) if a != b), min(len(from_py), len(in_nb)))
        problems.append(f"cells differ from cell {diff} ({len(from_py)} in the .py, {len(in_nb)} in the notebook)")
    return problems


def test_every_tutorial_has_both_files():
    assert PAIRS, "no tutorials found"
    assert sorted(p.stem for p in TUTORIALS.glob("*.ipynb")) == PAIRS


@pytest.mark.parametrize("name", PAIRS)
def test_the_pair_round_trips(name):
    py_text = (TUTORIALS / f"{name}.py").read_text()
    notebook = nbformat.read(TUTORIALS / f"{name}.ipynb", as_version=4)
    assert pair_differences(py_text, notebook) == [], f"run: jupytext --sync tutorials/{name}.py"


def test_a_drifted_pair_is_found():
    """Negative control: one changed line in either file breaks the pair."""
    name = PAIRS[0]
    py_text = (TUTORIALS / f"{name}.py").read_text()
    notebook = nbformat.read(TUTORIALS / f"{name}.ipynb", as_version=4)
    edited = py_text.replace("\nimport ", "\nimport os  # drift\nimport ", 1)
    assert edited != py_text and len(pair_differences(edited, notebook)) == 2
    code = next(c for c in notebook.cells if c.cell_type == "code")
    code.source += "\nprint('only in the notebook')"
    assert len(pair_differences(py_text, notebook)) == 2
