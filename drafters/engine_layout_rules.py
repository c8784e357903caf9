"""What the published checkpoint layouts share: files, weight names, tap numbering and refusals.

Used by ``jetspec.drafters.engine_layouts`` (read that module's docstring for the layouts). The rules
here encode what the engines do with a config, as read in their source:

* Engines capture the *input* of a decoder layer (the residual stream entering it), in layer
  order, once per layer. jetspec tap l is the *output* of layer l, i.e. the input of layer l + 1:
  so a tap must be one of layers 0..L-2 (the last layer's output is never captured; HF's
  ``hidden_states[L]`` is moreover after the final norm), taps must be distinct, and the fused
  features are ordered by layer whatever order a config lists them in.
* A config key an engine honours but jetspec's heads do not compute (biases, soft-capping,
  sliding windows, ...) is refused by name, never ignored.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence

import torch

from jetspec.core.jsonl import read_json_object
from jetspec.core.target import TargetModel

# jetspec name <-> published name, for the pieces of one decoder layer (HF Llama/Qwen3 names).
LAYER_NAMES = {
    "attn.q_proj.weight": "self_attn.q_proj.weight",
    "attn.k_proj.weight": "self_attn.k_proj.weight",
    "attn.v_proj.weight": "self_attn.v_proj.weight",
    "attn.o_proj.weight": "self_attn.o_proj.weight",
    "attn.q_norm.weight": "self_attn.q_norm.weight",
    "attn.k_norm.weight": "self_attn.k_norm.weight",
    "mlp.gate_proj.weight": "mlp.gate_proj.weight",
    "mlp.up_proj.weight": "mlp.up_proj.weight",
    "mlp.down_proj.weight": "mlp.down_proj.weight",
    "input_norm.weight": "input_layernorm.weight",
    "post_attn_norm.weight": "post_attention_layernorm.weight",
    "hidden_norm.weight": "hidden_norm.weight",  # EAGLE-3's fusion layer only
}


# ---------------------------------------------------------------------------------------- files
def resolve_folder(path_or_hub_id: str | os.PathLike) -> Path:
    """A local folder, or a hub repository downloaded (config + safetensors only) into the HF cache."""
    path = Path(path_or_hub_id)
    if path.is_dir():
        return path
    name = str(path_or_hub_id)
    if path.exists() or name.count("/") != 1 or name.startswith((".", "/")):
        raise FileNotFoundError(f"{name} is not a checkpoint folder (nor a hub id 'org/name')")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:
        raise ImportError(f"downloading {name} needs huggingface_hub (pip install huggingface_hub), "
                          "or pass a local folder") from err
    return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors"]))


def read_checkpoint_config(folder: Path) -> dict:
    """An engine checkpoint folder's config.json (any object: the layouts check their own keys)."""
    return read_json_object(folder / "config.json", "a checkpoint folder needs config.json")


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """model.safetensors, or every shard named in model.safetensors.index.json."""
    from safetensors.torch import load_file

    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        return load_file(str(single))
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(str(folder / shard)))
        return state
    raise FileNotFoundError(f"no model.safetensors (or index) in {folder}")


def write_checkpoint(folder: str | os.PathLike, config: dict, weights: dict[str, torch.Tensor]) -> Path:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


# ---------------------------------------------------------------------------------------- config
def lookup(cfg: dict, key: str):
    """``cfg[a][b]`` for the dotted key "a.b"; None where any part is missing."""
    node = cfg
    for part in key.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def refuse_unsupported(cfg: dict, rules: Sequence[tuple[str, tuple, str]], what: str) -> None:
    """Raise for the first key whose value asks for something jetspec's heads do not compute.

    ``rules``: (dotted key, the values that mean "off", what any other value asks for). A missing
    key or ``null`` is "off", as in every engine.
    """
    for key, off, meaning in rules:
        value = lookup(cfg, key)
        if value is not None and value not in off:
            raise ValueError(f"{what}: config.json sets {key} = {value!r} ({meaning}); jetspec's heads do "
                             "not compute that, so the checkpoint is refused rather than run as something else")


def rope_theta(cfg: dict, what: str, required: bool = False) -> float:
    """The RoPE base from either config style; scaled RoPE variants are refused, not ignored.

    ``required``: a missing base is an error (the engines disagree on its default), else 10000.
    """
    scaling = cfg.get("rope_scaling") or {}
    params = cfg.get("rope_parameters") or {}
    kind = scaling.get("rope_type", scaling.get("type")) or params.get("rope_type", "default")
    if kind not in ("default", None):
        raise ValueError(f"{what}: RoPE scaling '{kind}' is not supported by jetspec's draft heads")
    theta = cfg.get("rope_theta") or params.get("rope_theta")
    if theta is None and required:
        raise ValueError(f"{what}: config.json gives no rope_theta (nor rope_parameters.rope_theta); the "
                         "engines' defaults differ (vLLM 1e6, transformers 1e4), so it must be stated")
    return float(theta or 10000.0)


def attention_shape(cfg: dict) -> dict:
    """Heads, K/V heads and head dim as the engines read them (missing: from the draft's own sizes)."""
    heads = int(cfg["num_attention_heads"])
    return {"num_heads": heads, "num_kv_heads": int(cfg.get("num_key_value_heads") or heads),
            "head_dim": int(cfg.get("head_dim") or cfg["hidden_size"] // heads),
            "intermediate_size": int(cfg["intermediate_size"]),
            "rms_norm_eps": float(cfg.get("rms_norm_eps") or 1e-6)}


# ---------------------------------------------------------------------------------------- target
def hf_model(target) -> torch.nn.Module:
    return target.model if isinstance(target, TargetModel) else target


def check_target(target, hidden: Optional[int], vocab: Optional[int], layers: Optional[int],
                 what: str) -> None:
    """The errors a user needs when a checkpoint was made for another target."""
    model = hf_model(target)
    have = {"hidden size": model.config.hidden_size,
            "vocab size": model.get_output_embeddings().weight.shape[0],
            "number of layers": model.config.num_hidden_layers}
    for name, want in (("hidden size", hidden), ("vocab size", vocab), ("number of layers", layers)):
        if want is not None and int(want) != have[name]:
            raise ValueError(f"target mismatch: {what} was made for a target with {name} {want}, "
                             f"this target has {name} {have[name]}")


def capturable_order(taps: Sequence[int], num_layers: int, what: str) -> list[int]:
    """The order that sorts ``taps`` by layer, after checking that engines can capture each one."""
    taps = [int(t) for t in taps]
    if len(set(taps)) != len(taps):
        raise ValueError(f"{what} taps a layer twice ({taps}); engines capture each layer once")
    for t in taps:
        if not 0 <= t <= num_layers - 2:
            raise ValueError(f"{what} taps layer {t}: engines capture the input of layer l + 1 for tap l, "
                             f"so taps must be 0..{num_layers - 2}; the last layer's output is not captured")
    return sorted(range(len(taps)), key=taps.__getitem__)


def permute_taps(weight: torch.Tensor, order: Sequence[int]) -> torch.Tensor:
    """A fusion Linear's weight [H_out, k*H] with its k input blocks put in ``order``."""
    blocks = weight.chunk(len(order), dim=1)
    return torch.cat([blocks[i] for i in order], dim=1)


# ---------------------------------------------------------------------------------------- weights
def load_mapped(net: torch.nn.Module, weights: dict[str, torch.Tensor], to_ours: dict[str, str],
                what: str) -> None:
    """Load published weights through a name map; list every missing or unexpected name."""
    expected = net.state_dict()
    ours = {to_ours[k]: v for k, v in weights.items() if to_ours.get(k) in expected}
    unexpected = sorted(k for k in weights if to_ours.get(k) not in expected)
    missing = sorted(set(expected) - set(ours))
    if unexpected or missing:
        raise ValueError(f"{what}: weights do not match the layout (unexpected: {unexpected[:8]}, "
                         f"missing: {missing[:8]})")
    for name, tensor in expected.items():
        if ours[name].shape != tensor.shape:
            raise ValueError(f"{what}: {name} has shape {tuple(ours[name].shape)}, the head expects "
                             f"{tuple(tensor.shape)}")
    net.load_state_dict(ours)


def layer_map(num_layers: int) -> dict[str, str]:
    """published -> jetspec names of every piece of layers 0..num_layers-1 (HF ``layers.{i}.`` prefix)."""
    return {f"layers.{i}.{theirs}": f"layers.{i}.{ours}"
            for i in range(num_layers) for ours, theirs in LAYER_NAMES.items()}
