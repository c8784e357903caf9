"""``jetspec bench``: time drafters against plain decoding and Hugging Face on the same prompts.

Example::

    jetspec bench --drafters ngram,jetspec --budgets 8,16,32,64 --max-new-tokens 128 --out runs/bench

Every flag is generated from a field of ``jetspec.bench.BenchConfig``: its name (``max_new_tokens``
-> ``--max-new-tokens``), its default and the docstring under it (the help text). Defaults and
help therefore live in one place.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import typing


def field_docs(cls) -> dict[str, str]:
    """The docstring written under each field of a dataclass, read from its source."""
    docs: dict[str, str] = {}
    body = ast.parse(inspect.getsource(cls)).body[0].body
    for stmt, nxt in zip(body, body[1:]):
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) \
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[stmt.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


def _arg_type(annotation):
    """argparse type for a field annotation; lists stay strings (BenchConfig parses "a,b,c")."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    base = args[0] if typing.get_origin(annotation) is typing.Union and len(args) == 1 else annotation
    if typing.get_origin(base) is tuple:
        return str
    return {bool: _bool, int: int, float: float}.get(base, str)


def register(sub: argparse._SubParsersAction) -> None:
    from jetspec.bench import BenchConfig

    p = sub.add_parser("bench", help="benchmark drafters vs plain decoding and HF generate",
                       description=__doc__.splitlines()[0])
    docs = field_docs(BenchConfig)
    hints = typing.get_type_hints(BenchConfig)
    for f in dataclasses.fields(BenchConfig):
        default = f.default
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=_arg_type(hints[f.name]),
                       default=shown, help=f"{docs.get(f.name, '')} (default: {shown})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from jetspec.bench import BenchConfig, run_bench
    from jetspec.plots import markdown_table

    names = {f.name for f in dataclasses.fields(BenchConfig)}
    try:
        cfg = BenchConfig(**{k: v for k, v in vars(args).items() if k in names})
    except ValueError as err:
        raise SystemExit(f"jetspec bench: {err}") from err
    result = run_bench(cfg)
    rows = [r for r in result["rows"] if r["prompt_set"] == "all"]
    print(markdown_table(rows))
    print(f"\nwrote {cfg.out}/results.json, results.md, runs.jsonl" + (" and plots" if cfg.plots else ""))
    return 0
