"""A saved head's config.json that is damaged or foreign is refused with the file named.

Before (issue 14, item 13): an empty or truncated file raised a bare ``JSONDecodeError`` (no path), an unknown key a
``TypeError`` from ``HeadConfig.__init__``.
"""

from __future__ import annotations

import json

import pytest
from conftest import tiny_model

from jetspec.drafters import EagleHead, JetSpecHead, ParallelHead

HEADS = [(JetSpecHead, dict(block_size=4)), (EagleHead, dict(ttt_steps=2))]


@pytest.fixture(scope="module")
def target():
    return tiny_model("llama", seed=0)


def saved(cls, kw, target, folder):
    cls(target, num_layers=1, **kw).save_pretrained(folder)
    return folder / "config.json"


@pytest.mark.parametrize("cls, kw", HEADS)
@pytest.mark.parametrize("damage", ["", "{", "truncate", "[1, 2]", '{"head": "jetspec"}'])
def test_a_damaged_config_names_the_file(target, tmp_path, cls, kw, damage):
    path = saved(cls, kw, target, tmp_path / "h")
    text = path.read_text()
    path.write_text(text[: len(text) // 2] if damage == "truncate" else damage)
    with pytest.raises(ValueError, match=str(path)):
        cls.from_pretrained(tmp_path / "h", target=target)


@pytest.mark.parametrize("cls, kw", HEADS)
@pytest.mark.parametrize("section, key", [("config", "blocksize"), ("training", "learning_rate")])
def test_an_unknown_key_names_the_file_and_the_key(target, tmp_path, cls, kw, section, key):
    """In a folder without an integrity record (saved by an older jetspec); in a sealed folder the same
    edit is refused as a changed architecture (test_head_format.py)."""
    path = saved(cls, kw, target, tmp_path / "h")
    meta = json.loads(path.read_text())
    meta.pop("integrity")
    meta[section][key] = 4
    path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=rf"{path}.*{key}"):
        cls.from_pretrained(tmp_path / "h", target=target)


def test_a_bad_value_names_the_file(target, tmp_path):
    path = saved(JetSpecHead, dict(block_size=4), target, tmp_path / "h")
    meta = json.loads(path.read_text())
    meta.pop("integrity")  # an older, unsealed folder: the value itself is checked
    meta["config"]["block_size"] = 1
    path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=rf"{path}.*block_size"):
        ParallelHead.from_pretrained(tmp_path / "h", target=target)


@pytest.mark.parametrize("cls, kw", HEADS)
def test_an_intact_config_loads(target, tmp_path, cls, kw):
    saved(cls, kw, target, tmp_path / "h")  # negative control
    assert type(cls.from_pretrained(tmp_path / "h", target=target)) is cls


def test_bench_names_a_damaged_head_folder(target, tmp_path):
    from jetspec.evaluation.drafter_specs import DrafterUnavailable, make_drafter

    path = saved(JetSpecHead, dict(block_size=4), target, tmp_path / "h")
    path.write_text("")
    with pytest.raises(DrafterUnavailable) as err:
        make_drafter(f"mine={tmp_path / 'h'}", target, tmp_path)
    assert str(path) in str(err.value)
