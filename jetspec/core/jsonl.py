"""JSON-lines files, read and written in one place (prompts, references, training data, logs),
and the one reader of a JSON file that holds an object (a head's or a checkpoint's config.json).

One row per line, UTF-8, non-ASCII kept as is; a path ending in ``.gz`` is gzip-compressed (read
and written the same way). Blank lines are skipped. A line that is not valid
JSON is an error naming ``path:line``, except where the caller says a cut-off line is expected
(a file that an interrupted run was appending to): then it is skipped.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from pathlib import Path
from typing import Iterable, Iterator


def _open(path: str | os.PathLike, mode: str):
    """A text file, gzip-compressed when the name ends in ``.gz`` (written with a zero timestamp, so
    the same rows give the same bytes and the same checksum)."""
    if not str(path).endswith(".gz"):
        return open(path, mode, encoding="utf-8")
    if mode == "r":
        return gzip.open(path, "rt", encoding="utf-8")
    return io.TextIOWrapper(gzip.GzipFile(path, mode + "b", mtime=0), encoding="utf-8")


def numbered_rows(path: str | os.PathLike, skip_invalid: bool = False) -> Iterator[tuple[int, dict]]:
    """``(line number, row)`` for every non-blank line of ``path`` (numbers start at 1)."""
    with _open(path, "r") as f:
        for i, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                if skip_invalid:
                    continue
                raise ValueError(f"{path}:{i}: not valid JSON ({err.msg})") from err
            yield i, row


def read_json_object(path: str | os.PathLike, missing_hint: str) -> dict:
    """The object in the JSON file ``path``; errors name the file (``missing_hint`` says what it should be)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {missing_hint}")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); is it empty or truncated?") from err
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds a {type(value).__name__}, not a config object")
    return value


def read_jsonl(path: str | os.PathLike, skip_invalid: bool = False) -> Iterator[dict]:
    """Rows of a JSON-lines file, in order (see ``numbered_rows``)."""
    for _, row in numbered_rows(path, skip_invalid):
        yield row


def jsonl_line(row: dict) -> str:
    """One row as a line, newline included: what ``write_jsonl`` writes, for callers that stream."""
    return json.dumps(row, ensure_ascii=False) + "\n"


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Write rows as JSON lines, replacing the file (parent folders are created); returns the count."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with _open(path, "w") as f:
        for row in rows:
            f.write(jsonl_line(row))
            n += 1
    return n


def check_not_input(out: str | os.PathLike, inp: str | os.PathLike, out_flag: str, in_flag: str) -> None:
    """Refuse an output file that is the input file: appending to it would mix the two kinds of rows
    (and a resumable writer would take the input's rows for finished ones and write nothing)."""
    if Path(out).resolve() == Path(inp).resolve():
        raise ValueError(f"{out_flag} {out} is the {in_flag} file: write to another file")
