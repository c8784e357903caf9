"""What a saved head or a training checkpoint holds is what gets loaded, or a clear error.

A head folder (``save_pretrained``) is ``config.json`` + ``model.safetensors``. ``config.json``
carries an integrity record written at save time::

    "integrity": {"weights_sha256": <sha256 of model.safetensors>,
                  "architecture_sha256": <sha256 of the canonical JSON of {"head", "config"}>}

``read_head_folder`` checks both before building anything: flipped bytes in the weights, or a
hand-edited head kind or architecture in ``config.json``, are refused with an error naming the
file. The ``training`` section is not covered: it holds optimisation settings, which
``from_pretrained`` lets the caller override anyway.

Folders saved before the record existed load *unverified*, with a warning that names the folder
(a deliberate choice: refusing them would break every head trained earlier). ``seal_head_folder``
adds the record to such a folder without touching its weights; the heads shipped in
``jetspec/assets/heads`` were sealed that way.

Training checkpoints (Lightning ``.ckpt``) record the head kind and architecture too
(``record_identity``, from the heads' ``on_save_checkpoint``); resuming a checkpoint into another
kind of head or another architecture is refused (``check_identity``).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import asdict, fields
from pathlib import Path
from typing import Optional, TypeVar

import torch
from torch import Tensor

from jetspec.core.config import from_json
from jetspec.core.jsonl import read_json_object
from jetspec.core.loading import DEFAULT_HEAD_DIR, SHIPPED_HEADS_TARGET

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
T = TypeVar("T")
CHECKPOINT_KEY = "jetspec_head"  # where a Lightning checkpoint keeps the head's identity


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def architecture_sha256(meta: dict) -> str:
    """Digest of the parts of ``config.json`` that decide what the weights mean: head kind + config."""
    return hashlib.sha256(_canonical({"head": meta.get("head"), "config": meta.get("config")}).encode()).hexdigest()


def head_identity(head) -> dict:
    """``{"head": registry name, "config": architecture}`` as JSON values (tuples become lists)."""
    return json.loads(json.dumps({"head": head.registry_name, "config": asdict(head.config)}))


# ---------------------------------------------------------------------------------- head folders
def write_head_folder(folder: str | os.PathLike, head, state: dict[str, Tensor]) -> Path:
    """Write ``model.safetensors`` (``state`` as given) and ``config.json`` with its integrity record."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    meta = {**head_identity(head), "training": asdict(head.train_config)}
    meta["integrity"] = _integrity(meta, (folder / WEIGHTS_FILE).read_bytes())
    (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
    return folder


def _integrity(meta: dict, weights: bytes) -> dict:
    return {"weights_sha256": hashlib.sha256(weights).hexdigest(), "architecture_sha256": architecture_sha256(meta)}


def head_folder(name_or_path: str | os.PathLike) -> Path:
    """The folder of a saved head: a local folder as given, else a shipped head named ``<target>/<kind>``
    ("smollm2-135m-instruct/jetspec", as on the Hugging Face Hub); a local folder of that name wins."""
    path = Path(name_or_path)
    target, _, kind = str(name_or_path).partition("/")
    if path.is_dir() or target != SHIPPED_HEADS_TARGET:
        return path
    shipped = sorted(p.name for p in DEFAULT_HEAD_DIR.iterdir() if (p / CONFIG_FILE).is_file())
    if kind not in shipped:
        raise FileNotFoundError(f"no shipped head '{name_or_path}'; shipped: "
                                f"{', '.join(f'{target}/{k}' for k in shipped)}")
    return DEFAULT_HEAD_DIR / kind


def read_config(folder: str | os.PathLike) -> dict:
    """``config.json`` of a head folder, parsed (errors name the file)."""
    path = Path(folder) / CONFIG_FILE
    meta = read_json_object(path, "expected a folder written by save_pretrained")
    if not isinstance(meta.get("config"), dict):
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
        return cls(**from_json(cls, values))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: invalid {section}: {err}") from err


def read_head_folder(folder: str | os.PathLike) -> tuple[dict, dict[str, Tensor]]:
    """``config.json`` and the weights of a head folder, verified against the integrity record.

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: ``model.safetensors`` or the architecture in ``config.json`` is not what was
            saved (the message names the file).
    """
    from safetensors.torch import load

    folder = Path(folder)
    meta = read_config(folder)
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: expected a folder written by save_pretrained")
    data = path.read_bytes()  # read once: hashed and parsed from the same bytes
    verify_integrity(folder, meta, data)
    try:
        return meta, load(data)
    except Exception as err:  # safetensors raises its own error types for broken headers
        raise ValueError(f"{path} is not a readable safetensors file ({err})") from err


def verify_integrity(folder: Path, meta: dict, weights: bytes) -> None:
    """Compare the weights bytes and the architecture with ``meta["integrity"]`` (see module doc)."""
    record = meta.get("integrity")
    if record is None:
        warnings.warn(f"{folder / CONFIG_FILE} has no integrity record (saved before jetspec recorded "
                      "checksums): loading its weights unverified; "
                      "jetspec.drafters.head_format.seal_head_folder adds the record", stacklevel=3)
        return
    if not isinstance(record, dict) or not {"weights_sha256", "architecture_sha256"} <= set(record):
        raise ValueError(f"{folder / CONFIG_FILE}: malformed 'integrity' record {record!r}")
    got = hashlib.sha256(weights).hexdigest()
    if got != record["weights_sha256"]:
        raise ValueError(f"{folder / WEIGHTS_FILE} does not match the checksum recorded in "
                         f"{folder / CONFIG_FILE} (sha256 {got[:16]}..., recorded "
                         f"{record['weights_sha256'][:16]}...): the file is damaged or was changed after saving")
    if architecture_sha256(meta) != record["architecture_sha256"]:
        raise ValueError(f"{folder / CONFIG_FILE}: the head kind or architecture differs from the one saved "
                         "with these weights (edited by hand?); the weights were trained for the saved one")


def seal_head_folder(folder: str | os.PathLike) -> dict:
    """Add an integrity record to a folder saved without one; returns the record.

    The conversion for heads saved before checksums existed: the weights file is read, never
    written, so the head drafts exactly as before. A folder that already has a record is verified
    instead (and its record returned), so sealing twice changes nothing.
    """
    folder = Path(folder)
    meta = read_config(folder)
    weights = (folder / WEIGHTS_FILE).read_bytes()
    if "integrity" in meta:
        verify_integrity(folder, meta, weights)
        return meta["integrity"]
    meta["integrity"] = _integrity(meta, weights)
    (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
    return meta["integrity"]


# ---------------------------------------------------------------------------------- checkpoints
def record_identity(head, checkpoint: dict) -> None:
    """Store the head's kind and architecture in a Lightning checkpoint (``on_save_checkpoint``)."""
    checkpoint[CHECKPOINT_KEY] = head_identity(head)


def check_identity(head, checkpoint: dict, where: Optional[str] = None) -> None:
    """Refuse a checkpoint written for another head kind or architecture than ``head``'s.

    Checkpoints from before the record existed cannot be checked; they load with a warning.
    """
    name = f"checkpoint {where}" if where else "the checkpoint"
    saved = checkpoint.get(CHECKPOINT_KEY)
    if saved is None:
        warnings.warn(f"{name} does not record its head kind and architecture (written by an older "
                      "jetspec): resuming unchecked", stacklevel=2)
        return
    want = head_identity(head)
    diffs = []
    if saved.get("head") != want["head"]:
        diffs.append(f"'{saved.get('head')}' head in the checkpoint, '{want['head']}' head requested")
    old, new = saved.get("config", {}), want["config"]
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            diffs.append(f"{key}: {old.get(key)} in the checkpoint, {new.get(key)} requested")
    if diffs:
        raise ValueError(f"{name} does not match the requested head: " + "; ".join(diffs)
                         + ". Resume with the head and architecture it was trained with, or start a new run")


def peek_checkpoint(path: str | os.PathLike) -> dict:
    """A Lightning checkpoint's dictionary, memory-mapped (cheap to inspect before ``fit``)."""
    return torch.load(str(path), map_location="cpu", weights_only=False, mmap=True)
