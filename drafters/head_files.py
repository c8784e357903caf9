"""Reading a saved head's ``config.json``: every failure names the file.

``save_pretrained`` writes ``{"head": <registry name>, "config": {...}, "training": {...}}`` next to
the weights. A file that is empty, truncated, not that object, or holds keys this version does not
know (another jetspec version, a hand edit) is refused with a ValueError naming the path, instead
of a bare ``JSONDecodeError`` or a ``TypeError`` from a dataclass constructor.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import TypeVar

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"

T = TypeVar("T")


def read_head_meta(folder: str | Path) -> dict:
    """The parsed ``config.json`` of a head folder (which must also hold the weights file).

    Raises FileNotFoundError for a missing file, ValueError naming the file for anything else.
    """
    folder = Path(folder)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} not found: expected a folder written by save_pretrained")
    path = folder / CONFIG_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); is it empty or truncated? Save the head "
                         "again with save_pretrained") from err
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise ValueError(f"{path} has no 'config' object: not a head written by save_pretrained")
    if not isinstance(meta.get("training", {}), dict):
        raise ValueError(f"{path}: 'training' must be an object, got {type(meta['training']).__name__}")
    return meta


def config_from(cls: type[T], values: dict, path: str | Path, section: str) -> T:
    """``cls(**values)`` for a dataclass, with unknown keys and invalid values named with ``path``."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{path}: unknown {section} key(s) {unknown} for {cls.__name__} (written by another "
                         f"jetspec version, or edited?); known keys: {sorted(known)}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: invalid {section}: {err}") from err
