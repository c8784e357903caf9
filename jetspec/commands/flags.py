"""The one way every ``jetspec`` sub-command builds its flags: from a config dataclass or a signature.

A field ``max_new_tokens: int = 128`` with a docstring under it becomes ``--max-new-tokens``
(type ``int``, default 128, the docstring as help). A function or constructor works the same way:
its parameters become flags, its defaults the flags' defaults, and the ``Args:`` entries of its
docstring the help. Defaults therefore exist once, where the code that uses them is.

Types: ``bool`` flags take ``true/false`` (``--hf false``) and may be given bare (``--conditioned``);
``tuple[X, ...]`` and ``Sequence[X]`` flags take a comma list (``--budgets 8,16``); ``Literal[...]`` gives choices;
``Optional[X]`` is ``X`` with default None; ``str | tuple[X, ...]`` is the comma list; ``int | str``
stays text for the code to read (``--threads auto``). Any other annotation is an error when the
flag is built, never a flag that silently parses as a string. A dataclass field without a default
is a required flag.

    add_config_flags(parser, BenchConfig)          # every field
    cfg = config_from_args(BenchConfig, args)      # the dataclass back from the parsed flags
"""

from __future__ import annotations

import argparse
import ast
import collections.abc
import dataclasses
import inspect
import re
import textwrap
import types
import typing
from typing import Any, Callable, Iterable, Optional

from jetspec.core.config import ConfigError, parse_tuple, tuple_item_type

_MISSING = object()


@dataclasses.dataclass
class Flag:
    """One command-line flag: its destination name, annotation, default and help text."""

    name: str
    annotation: Any
    default: Any = _MISSING
    doc: str = ""


def field_docs(cls) -> dict[str, str]:
    """The help of each field of a class (and its bases), read from the source: the docstring
    written under the field, else the ``#`` comment at the end of its line."""
    docs: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if k is not object]):
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        lines = source.splitlines()
        body = ast.parse(source).body[0].body
        for stmt, nxt in zip(body, body[1:] + [None]):
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
                docs[stmt.target.id] = " ".join(str(nxt.value.value).split())
            elif "  # " in lines[stmt.end_lineno - 1]:
                docs[stmt.target.id] = lines[stmt.end_lineno - 1].split("  # ", 1)[1].strip()
    return docs


def arg_docs(fn: Callable) -> dict[str, str]:
    """The ``name: text`` entries of a Google-style ``Args:`` section (continuation lines joined)."""
    doc = inspect.getdoc(fn) or ""
    match = re.search(r"^Args:\s*\n(.*?)(?:^\S|\Z)", doc, re.S | re.M)
    docs: dict[str, str] = {}
    if not match:
        return docs
    current = None
    for line in match.group(1).splitlines():
        entry = re.match(r"\s{2,4}(\w+(?:,\s*\w+)*)(?:\s*\([^)]*\))?:\s*(.*)", line)
        if entry:
            current = [n.strip() for n in entry.group(1).split(",")]
            for n in current:
                docs[n] = entry.group(2).strip()
        elif current and line.strip():
            for n in current:
                docs[n] += " " + line.strip()
    return docs


def flags_of(source) -> list[Flag]:
    """The flags of a dataclass (its fields) or of a callable (its keyword parameters)."""
    if dataclasses.is_dataclass(source):
        hints, docs = typing.get_type_hints(source), field_docs(source)
        return [Flag(f.name, hints[f.name], _field_default(f), docs.get(f.name, ""))
                for f in dataclasses.fields(source) if f.init]
    # Not typing.get_type_hints: it returns {} for a @no_type_check function (SpeculativeDecoder.generate
    # validates its own arguments), and every flag would then parse as a string.
    hints = inspect.get_annotations(inspect.unwrap(source), eval_str=True)
    docs = arg_docs(source)
    flags = []
    for name, p in inspect.signature(source).parameters.items():
        if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        annotation = hints.get(name, type(p.default) if p.default not in (p.empty, None) else str)
        flags.append(Flag(name, annotation, _MISSING if p.default is p.empty else p.default, docs.get(name, "")))
    return flags


def _field_default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return _MISSING


def parse_bool(text: str) -> bool:
    """``true/false`` (also 1/0, yes/no, on/off) as given on a command line."""
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


def _comma_list(kind):
    """A comma-list flag, read exactly as a config reads the same value from Python (``parse_tuple``)."""
    def parse(text: str) -> tuple:
        try:
            return parse_tuple(text, kind, "")
        except ConfigError as err:
            raise argparse.ArgumentTypeError(err.message) from err
    return parse


def _list_item_type(annotation) -> Optional[type]:
    """X for a list flag: ``tuple[X, ...]`` (the typed form of a config field, ``jetspec.core.config``) or
    a signature's ``Sequence[X]``; None for any other annotation."""
    if typing.get_origin(annotation) is collections.abc.Sequence:
        items = typing.get_args(annotation)
        return items[0] if items else str
    return tuple_item_type(annotation)


def _strip_optional(annotation):
    """``X`` for ``Optional[X]``; the tuple for ``str | tuple[X, ...]`` (a config field that also takes
    a comma string, as the command line gives it)."""
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if len(args) == 1:
        return args[0]
    tuples = [a for a in args if typing.get_origin(a) is tuple]
    if len(tuples) == 1 and set(args) - set(tuples) == {str}:
        return tuples[0]
    if str in args and set(args) <= {str, int, float}:
        return str  # a number or a word (``--threads 2`` or ``auto``): the field's code reads it
    return annotation


def _argparse_options(flag: Flag, choices: Optional[tuple] = None) -> dict:
    """``add_argument`` keywords for one flag: type, choices, nargs, default, help."""
    base = _strip_optional(flag.annotation)
    opts: dict[str, Any] = {}
    if choices is not None:
        opts["choices"] = choices
    elif typing.get_origin(base) is typing.Literal:
        opts["choices"] = typing.get_args(base)
    elif _list_item_type(base) is not None:
        opts["type"] = _comma_list(_list_item_type(base))
    elif base is bool:
        opts.update(type=parse_bool, nargs="?", const=True, metavar="{true,false}")
    elif base in (int, float, str):
        opts["type"] = base
    else:  # a flag must never parse as a string where the code expects something else
        raise TypeError(f"flag --{flag.name.replace('_', '-')}: no command-line type for {flag.annotation!r}")
    if flag.default is _MISSING:
        opts["required"] = True
        opts["help"] = flag.doc or None
    else:
        opts["default"] = flag.default
        shown = ",".join(map(str, flag.default)) if isinstance(flag.default, tuple) else flag.default
        opts["help"] = f"{flag.doc} (default: {shown})".lstrip()
    return opts


def add_config_flags(parser: argparse.ArgumentParser, source, only: Optional[Iterable[str]] = None,
                     skip: Iterable[str] = (), rename: Optional[dict[str, str]] = None,
                     choices: Optional[dict[str, tuple]] = None) -> list[str]:
    """Add one ``--flag`` per field / parameter of ``source``; returns the destination names added.

    Args:
        only: add just these names (in this order). skip: names not to add.
        rename: field name -> flag and destination name, where the flag's historic name differs
            (``anchors_per_seq`` -> ``--anchors``, read back as ``args.anchors``).
        choices: field name -> the values argparse accepts (for a field typed ``str``).
    """
    rename, choices = rename or {}, choices or {}
    flags = {f.name: f for f in flags_of(source)}
    names = list(only) if only is not None else [n for n in flags if n not in set(skip)]
    added = []
    for name in names:
        dest = rename.get(name, name)
        parser.add_argument("--" + dest.replace("_", "-"), dest=dest,
                            **_argparse_options(flags[name], choices.get(name)))
        added.append(dest)
    return added


def config_from_args(cls, args: argparse.Namespace, **extra):
    """``cls(**matching parsed flags, **extra)``: the config back from the command line.

    A ``ConfigError`` (a bad value of one field) comes back as a ``ValueError`` naming the field's flag.
    """
    names = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) \
        else set(inspect.signature(cls).parameters)
    try:
        return cls(**{k: v for k, v in vars(args).items() if k in names}, **extra)
    except ConfigError as err:
        raise ValueError(f"--{err.field.replace('_', '-')}: {err.message}") from err


def options_from_args(args: argparse.Namespace, names: Iterable[str], rename: Optional[dict[str, str]] = None) -> dict:
    """Field name -> parsed value of the flags ``add_config_flags(..., only=names, rename=rename)`` added:
    the generated flags handed back, by name, to the code that takes the fields."""
    rename = rename or {}
    return {name: getattr(args, rename.get(name, name)) for name in names}


def kwargs_from_args(fn: Callable, args: argparse.Namespace, skip: Iterable[str] = ()) -> dict:
    """The parsed flags that are parameters of ``fn`` (minus ``skip``), as keyword arguments."""
    names = set(inspect.signature(fn).parameters) - set(skip)
    return {k: v for k, v in vars(args).items() if k in names}
