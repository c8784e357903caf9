"""Execute the tutorials once and keep the executed copies: the tests check them, the site shows them.

The notebooks under ``tutorials/`` are stored without outputs (jupytext pairs). ``execute_notebook``
runs one in a fresh kernel and writes the executed copy, outputs included, to ``build/tutorials/``;
the test suite (``tests/test_tutorials.py``, one test per notebook) fails with the raising cell's
source and traceback, and the documentation build (``docs/hooks.py``) renders the copies, executing
only those that are missing or older than their notebook. One execution serves both.

    python -m jetspec.testing.notebooks [--out build/tutorials] [--jobs 2] [--force]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TUTORIALS = REPO / "tutorials"
BUILD = REPO / "build" / "tutorials"
CELL_TIMEOUT_S = 900  # per cell; the slowest tutorial cell trains a head for about two minutes on 2 cores
# The kernel's environment: progress bars are for terminals (in a saved notebook they are a block of
# carriage returns), and tqdm's notice that no notebook widgets are installed says nothing about jetspec.
KERNEL_ENV = {"TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore:IProgress not found"}


@dataclass(frozen=True)
class CellError:
    """A code cell whose execution raised: its index among all cells, its source, the error's traceback."""

    index: int
    source: str
    ename: str
    traceback: str

    def describe(self, notebook: str) -> str:
        """A report naming the notebook and the cell, with the cell's source and the traceback."""
        return (f"{notebook}, cell {self.index} raised {self.ename}:\n--- cell source ---\n{self.source}\n"
                f"--- traceback ---\n{self.traceback}")


@dataclass(frozen=True)
class ExecutionResult:
    """What executing one notebook produced: the executed copy, the first cell that raised (if any), seconds."""

    source: Path
    executed: Path
    error: CellError | None
    seconds: float


def tutorial_notebooks(folder: Path = TUTORIALS) -> list[Path]:
    """The tutorials, ``NN_name.ipynb``, in their numbered order."""
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))


def executed_path(notebook: Path, out: Path = BUILD) -> Path:
    """Where the executed copy of ``notebook`` lives."""
    return out / notebook.name


def is_stale(notebook: Path, out: Path = BUILD) -> bool:
    """True when the executed copy is missing or older than the notebook it was executed from."""
    copy = executed_path(notebook, out)
    return not copy.exists() or copy.stat().st_mtime < notebook.stat().st_mtime


def _ansi_free(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def first_error(nb) -> CellError | None:
    """The first code cell of an executed notebook (an ``nbformat`` node) with an error output, if any."""
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                trace = _ansi_free("\n".join(output.get("traceback", [])))
                return CellError(index, cell.source, output.get("ename", "?"), trace)
    return None


# What a reader of the site must never see in an executed tutorial: a path of the machine that ran it
# (a home, a temporary folder, a virtual environment), a warning (a library's or Python's), or the
# default repr of an object (``<torch._C.Generator object at 0x7f...>``, the value of a stray last line).
MACHINE_PATH = re.compile(r"/(home|root|tmp|work|opt|Users|private/var|var/folders)/|[A-Za-z]:\\Users\\|"
                          r"site-packages|\.venv\b")
WARNING = re.compile(r"\b\w*Warning\b|\bWARNING\b")
OBJECT_REPR = re.compile(r"<[\w.]+( object)? at 0x[0-9a-fA-F]+>")  # Python's repr, or IPython's


def _output_text(output) -> str:
    """The text a reader sees of one output: a stream's text, or a result's text/plain (images are not text)."""
    if output.get("output_type") == "stream":
        return output.get("text", "")
    if output.get("output_type") in ("execute_result", "display_data"):
        return output.get("data", {}).get("text/plain", "")
    return ""


def stray_outputs(nb) -> list[str]:
    """Outputs of an executed notebook (an ``nbformat`` node) that show a machine path, a warning or an
    object's default repr, one line each: ``cell N (stream name): the offending line``."""
    found = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        for output in cell.get("outputs", []):
            where = output.get("name") or output.get("output_type")
            for line in _output_text(output).splitlines():
                reasons = [what for what, pattern in (("a machine path", MACHINE_PATH), ("a warning", WARNING),
                                                      ("an object repr", OBJECT_REPR)) if pattern.search(line)]
                if reasons:
                    found.append(f"cell {index} ({where}), {' and '.join(reasons)}: {line.strip()[:200]}")
    return found


def execute_notebook(notebook: Path, out: Path = BUILD, timeout_s: int = CELL_TIMEOUT_S,
                     env: dict[str, str] | None = None) -> ExecutionResult:
    """Execute ``notebook`` in a fresh kernel (working directory: its folder) and save the executed copy.

    The kernel inherits this process's environment plus ``KERNEL_ENV`` (no progress bars) and ``env``.

    A cell that raises stops the execution (later cells would only fail in its wake); the copy is saved
    all the same, with the error output in that cell, so that the tests and the site build both see it.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    notebook = Path(notebook)
    if not notebook.is_file():
        raise FileNotFoundError(f"notebook: no such file {notebook}")
    nb = nbformat.read(notebook, as_version=4)
    client = NotebookClient(nb, timeout=timeout_s, kernel_name="python3",
                            resources={"metadata": {"path": str(notebook.parent)}})
    start = time.perf_counter()
    try:
        client.execute(env={**os.environ, **KERNEL_ENV, **(env or {})})
    except CellExecutionError:
        pass  # recorded in the cell's outputs; first_error reads it from there
    seconds = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    copy = executed_path(notebook, out)
    nbformat.write(nb, copy)
    return ExecutionResult(notebook, copy, first_error(nb), seconds)


def execute_all(notebooks: list[Path], out: Path = BUILD, jobs: int = 2,
                timeout_s: int = CELL_TIMEOUT_S) -> list[ExecutionResult]:
    """Execute ``notebooks`` with ``jobs`` at a time (each in its own kernel); results in input order."""
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    if not notebooks:
        return []
    with ProcessPoolExecutor(max_workers=min(jobs, len(notebooks))) as pool:
        futures = [pool.submit(execute_notebook, nb, out, timeout_s) for nb in notebooks]
        return [f.result() for f in futures]


def main(argv: list[str] | None = None) -> int:
    """Execute the stale (or, with --force, all) tutorials; exit status 1 when a cell raised."""
    parser = argparse.ArgumentParser(prog="python -m jetspec.testing.notebooks", description=main.__doc__)
    parser.add_argument("--out", type=Path, default=BUILD, help="folder of the executed copies")
    parser.add_argument("--jobs", type=int, default=2, help="notebooks executed at a time")
    parser.add_argument("--timeout", type=int, default=CELL_TIMEOUT_S, help="seconds allowed per cell")
    parser.add_argument("--force", action="store_true", help="execute every tutorial, not only stale ones")
    args = parser.parse_args(argv)
    todo = [nb for nb in tutorial_notebooks() if args.force or is_stale(nb, args.out)]
    print(f"executing {len(todo)} tutorial(s) into {args.out}", flush=True)
    failed = False
    for result in execute_all(todo, args.out, args.jobs, args.timeout):
        status = "ok" if result.error is None else f"FAILED ({result.error.ename})"
        print(f"  {result.source.name}: {status} in {result.seconds:.0f} s", flush=True)
        if result.error is not None:
            failed = True
            print(result.error.describe(result.source.name), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
