"""Saved heads load as saved or not at all: checksums of the weights and of the architecture.

Damaged weights and hand-edited architectures used to load silently as other heads. Each case
here changes one thing in a saved folder and expects a refusal naming the file; the untouched
folder and harmless edits (the training section) are the negative controls.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from conftest import tiny_model

from jetspec.core.target import Teacher
from jetspec.core.types import DraftInput
from jetspec.drafters import DFlashHead, EagleHead, JetSpecHead, ParallelHead

HEADS = {"jetspec": JetSpecHead, "dflash": DFlashHead, "eagle": EagleHead}
SHIPPED = Path(__file__).resolve().parents[2] / "jetspec" / "assets" / "heads"


@pytest.fixture(scope="module")
def target():
    return tiny_model("llama", seed=0)


def drafted(head, target):
    """The tokens the head drafts for one fixed context (per-depth tables or tree nodes)."""
    ids = torch.arange(3, 15)
    taps = Teacher(target, head.tap_layers)(ids[None]).taps[0, :-1]
    head.reset_cache()
    out = head.draft(DraftInput(tokens=ids, depth=3, width=3, budget=8, taps=taps))
    return out.depth_tokens if out.depth_tokens is not None else out.node_tokens


def saved(target, kind, folder):
    torch.manual_seed(0)
    head = HEADS[kind](target, block_size=4) if kind != "eagle" else EagleHead(target, ttt_steps=3)
    head.save_pretrained(folder)
    return head


def edit_config(folder, change):
    path = folder / "config.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta, indent=2))


@pytest.mark.parametrize("kind", ["jetspec", "eagle"])
def test_flipped_weight_bytes_are_refused(target, kind, tmp_path):
    head = saved(target, kind, tmp_path / "h")
    again = type(head).from_pretrained(tmp_path / "h", target=target)  # control: the untouched folder
    assert torch.equal(drafted(again, target), drafted(head, target))
    weights = tmp_path / "h" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x40  # one bit of the last tensor: still a valid file, other weights
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"h/model.safetensors does not match the checksum"):
        type(head).from_pretrained(tmp_path / "h", target=target)


@pytest.mark.parametrize("change, kind", [
    (lambda m: m["config"].update(block_size=8), "jetspec"),  # same weight shapes: loaded silently before
    (lambda m: m.update(head="dflash"), "jetspec"),  # a causal head read as a bidirectional one
    (lambda m: m["config"].update(tap_layers=[1, 0]), "jetspec"),
    (lambda m: m["config"].update(ttt_steps=5), "eagle"),
])
def test_hand_edited_architecture_is_refused(target, change, kind, tmp_path):
    head = saved(target, kind, tmp_path / "h")
    edit_config(tmp_path / "h", change)
    loader = ParallelHead if kind != "eagle" else EagleHead
    with pytest.raises(ValueError, match=r"h/config.json: the head kind or architecture differs"):
        loader.from_pretrained(tmp_path / "h", target=target)
    assert head.config is not None


def test_training_section_edits_still_load(target, tmp_path):
    saved(target, "dflash", tmp_path / "h")
    edit_config(tmp_path / "h", lambda m: m["training"].update(lr=0.5))
    assert DFlashHead.from_pretrained(tmp_path / "h", target=target).train_config.lr == 0.5


def test_broken_config_names_the_file(target, tmp_path):
    saved(target, "jetspec", tmp_path / "h")
    (tmp_path / "h" / "config.json").write_text('{"head": "jetspec", "con')
    with pytest.raises(ValueError, match=r"h/config.json is not valid JSON"):
        JetSpecHead.from_pretrained(tmp_path / "h", target=target)


@pytest.mark.parametrize("kind", ["dflash", "eagle"])
def test_unsealed_folders_load_unverified_until_sealed(target, kind, tmp_path):
    from jetspec.drafters.head_format import seal_head_folder

    head = saved(target, kind, tmp_path / "h")
    want = drafted(head, target)
    edit_config(tmp_path / "h", lambda m: m.pop("integrity"))  # a folder saved by an older jetspec
    weights_before = (tmp_path / "h" / "model.safetensors").read_bytes()
    with pytest.warns(UserWarning, match="no integrity record"):
        legacy = type(head).from_pretrained(tmp_path / "h", target=target)
    assert torch.equal(drafted(legacy, target), want)
    record = seal_head_folder(tmp_path / "h")
    assert (tmp_path / "h" / "model.safetensors").read_bytes() == weights_before  # weights untouched
    assert seal_head_folder(tmp_path / "h") == record  # sealing twice changes nothing
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # verified now: no "unverified" warning
        sealed = type(head).from_pretrained(tmp_path / "h", target=target)
    assert torch.equal(drafted(sealed, target), want)
    shutil.copytree(tmp_path / "h", tmp_path / "bad")
    edit_config(tmp_path / "bad", lambda m: m["config"].update(num_layers=2))
    with pytest.raises(ValueError, match="architecture differs"):
        seal_head_folder(tmp_path / "bad")


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_shipped_heads_are_sealed_and_their_weights_unchanged(kind):
    """The shipped heads carry a record that verifies; their weights are the bytes shipped before sealing."""
    from jetspec.drafters.head_format import read_config, verify_integrity

    folder = SHIPPED / kind
    meta = read_config(folder)
    assert "integrity" in meta
    weights = (folder / "model.safetensors").read_bytes()
    verify_integrity(folder, meta, weights)
    assert hashlib.sha256(weights).hexdigest() == SHIPPED_WEIGHTS_SHA256[kind]


# sha256 of the shipped model.safetensors files as training wrote them, before experiments/ship_heads.py
# sealed the folders (so sealing provably changed config.json only, and the heads draft the same tokens):
# eagle as committed before the integrity record existed, jetspec and dflash as `jetspec train` saved the
# fourth round's runs (runs/curve/{jetspec,dflash}-l2g3-n4624/head/model.safetensors).
SHIPPED_WEIGHTS_SHA256 = {
    "dflash": "20d59576ec1f773a444a807a54ef72855b09b45322b0e048d943a640ae83d526",
    "eagle": "1316b304b0bacb134c98e04e2d37f83d7f7be274725f2ce3ca68fdb81084db01",
    "jetspec": "6335714284b6c2d0696ccb7123979c1b3022e8ded26789c1bfe54981e840612b",
}


def test_a_shipped_head_loads_by_name(tmp_path):
    """Shipped heads are named like Hub repos, "<target>/<kind>"; a local folder is taken as given."""
    from jetspec.drafters import DEFAULT_HEAD_DIR
    from jetspec.drafters.head_format import head_folder

    for kind in ("jetspec", "dflash", "eagle"):
        assert head_folder(f"smollm2-135m-instruct/{kind}") == DEFAULT_HEAD_DIR / kind
    with pytest.raises(FileNotFoundError, match="no shipped head 'smollm2-135m-instruct/medusa'; shipped: "
                                                "smollm2-135m-instruct/dflash, smollm2-135m-instruct/eagle"):
        head_folder("smollm2-135m-instruct/medusa")
    assert head_folder(tmp_path) == tmp_path and head_folder("runs/x/head") == Path("runs/x/head")
