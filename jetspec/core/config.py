"""Config dataclasses: one typed form for list-valued fields, errors that name the field.

A list-valued field is annotated ``tuple[X, ...]`` (``Optional[tuple[X, ...]]`` where None picks a
default). ``read_tuple_fields``, called first in a config's ``__post_init__``, turns what a caller
gave (a tuple, a list or a comma string such as ``"8,16"``) into that tuple, and the command line
parses a list flag with the same ``parse_tuple`` (``jetspec.commands.flags``), so a value means the
same from Python and from a shell. Names a field may take (a drafter, a tree builder) are checked
against the registry that defines them (``check_registered``), never against a copied list.

A bad value raises ``ConfigError``, a ``ValueError`` that names the field; the command line shows
it under the field's flag (``budgets`` -> ``--budgets``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Collection, Iterable, Optional


class ConfigError(ValueError):
    """A config field holds a bad value: ``field`` is its name, ``message`` says what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def tuple_item_type(annotation: Any) -> Optional[type]:
    """X for ``tuple[X, ...]`` or ``Optional[tuple[X, ...]]``; None for any other annotation."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if typing.get_origin(annotation) is tuple:
        items = typing.get_args(annotation)
        return items[0] if items else str
    return None


def parse_tuple(value: Any, kind: type, field: str) -> tuple:
    """``value`` (a comma string, or a sequence) as a tuple of ``kind``; blank items are dropped."""
    items = value.split(",") if isinstance(value, str) else value
    try:
        parts = [str(v).strip() for v in items]
        return tuple(kind(p) for p in parts if p)
    except (TypeError, ValueError) as err:
        raise ConfigError(field, f"expected a comma list of {kind.__name__} values, got {value!r}") from err


def read_tuple_fields(config: Any) -> None:
    """Turn every list-valued field of the dataclass ``config`` (annotated ``tuple[X, ...]``) into its tuple."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        kind, value = tuple_item_type(hints[f.name]), getattr(config, f.name)
        if kind is not None and value is not None:
            setattr(config, f.name, parse_tuple(value, kind, f.name))


def from_json(cls: type, values: dict) -> dict:
    """``values`` read from JSON (which has no tuples), each list-valued field of ``cls`` as its tuple."""
    hints = typing.get_type_hints(cls)
    return {k: tuple(v) if isinstance(v, list) and tuple_item_type(hints.get(k)) is not None else v
            for k, v in values.items()}


def check_at_least(config: Any, names: Iterable[str], minimum: float = 1) -> None:
    """Every field of ``names`` (a number, or a tuple of numbers) is >= ``minimum``."""
    for name in names:
        value = getattr(config, name)
        values = value if isinstance(value, tuple) else (value,)
        if not values or min(values) < minimum:
            raise ConfigError(name, f"must be >= {minimum:g}, got {value!r}")


def check_distinct(config: Any, name: str) -> None:
    """No value of the tuple field ``name`` is given twice (a batch size twice would be timed twice)."""
    values = getattr(config, name)
    if len(set(values)) != len(values):
        raise ConfigError(name, f"must be distinct, got {values!r}")


def check_registered(field: str, names: Iterable[str], registry: Collection[str], what: str) -> None:
    """Every name is in ``registry`` (a registry, or the tuple that defines the names: the list of what exists)."""
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise ConfigError(field, f"unknown {what} {', '.join(map(repr, unknown))}; registered: "
                                 f"{', '.join(sorted(registry))}")
