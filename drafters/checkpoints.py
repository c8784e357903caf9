"""Reading and writing draft heads in the layouts other engines publish and load.

jetspec's own format (``save_pretrained``) stores a head's config and weights under jetspec's
module names. Two published layouts are mapped here, name by name:

**DFlash / JetSpec draft heads** (``DFlashDraftModel``; ``load_dflash_checkpoint``,
``export_dflash_checkpoint``). A folder (or hub repository) with

* ``config.json``: a Qwen3-style config of the *draft* model -- ``hidden_size``,
  ``num_attention_heads``, ``num_key_value_heads``, ``head_dim``, ``intermediate_size``,
  ``num_hidden_layers`` (draft layers), ``rms_norm_eps``, ``rope_theta`` (or
  ``rope_parameters.rope_theta``), ``vocab_size`` -- plus ``block_size`` (S),
  ``num_target_layers`` (L of the target it was trained on) and a ``dflash_config`` holding
  ``target_layer_ids`` (tapped layers; id l is the output of target layer l, i.e. HF's
  ``hidden_states[l + 1]``, jetspec's convention), ``mask_token_id`` (the token whose embedding
  fills the MASK slots) and ``causal_head`` (true: JetSpec's causal block; false: DFlash's
  bidirectional block).
* ``model.safetensors`` (or shards listed in ``model.safetensors.index.json``) with HF Qwen3
  decoder-layer names ``layers.{i}.self_attn.{q,k,v,o}_proj.weight``,
  ``layers.{i}.self_attn.{q,k}_norm.weight``, ``layers.{i}.mlp.{gate,up,down}_proj.weight``,
  ``layers.{i}.{input,post_attention}_layernorm.weight``, and ``fc.weight`` (the tap fusion
  Linear(k*H -> H)), ``hidden_norm.weight`` (the RMSNorm after it), ``norm.weight`` (final norm).
  No embedding and no lm_head: the target's are used, exactly as in jetspec.

**EAGLE-3 draft heads** (``LlamaForCausalLMEagle3``, what vLLM and SGLang load;
``export_eagle3_checkpoint``, ``load_eagle3_checkpoint``). A folder with

* ``config.json``: ``architectures: ["LlamaForCausalLMEagle3"]``, ``model_type: "llama"``,
  ``hidden_size``, ``intermediate_size``, ``num_attention_heads``, ``num_key_value_heads``,
  ``head_dim``, ``num_hidden_layers: 1``, ``rms_norm_eps``, ``rope_theta``,
  ``max_position_embeddings``, ``hidden_act: "silu"``, ``tie_word_embeddings: false``,
  ``vocab_size`` (the target's), ``draft_vocab_size`` (the head's output vocabulary; here the
  full vocabulary), ``target_hidden_size`` (the width of each tapped feature), ``torch_dtype``,
  and ``eagle_config.eagle_aux_hidden_state_layer_ids``: the tapped layers in EAGLE's numbering,
  where id i is the *input* of target layer i (jetspec tap l = id l + 1). Engines that ignore
  it capture ids (2, L/2, L-3), which is jetspec's default for EAGLE heads on L >= 8 layers.
  jetspec adds a ``jetspec`` entry (target layer count, training-time-test steps) that other
  readers ignore.
* weights: ``fc.weight`` (Linear(3*H -> H): exactly three taps), ``midlayer.input_layernorm``
  (norm of the token embedding), ``midlayer.hidden_norm`` (norm of the feature),
  ``midlayer.self_attn.{q,k,v}_proj`` (2H inputs: [embedding ; feature]) and ``o_proj``,
  ``midlayer.post_attention_layernorm``, ``midlayer.mlp.{gate,up,down}_proj``, ``norm.weight``,
  ``lm_head.weight`` (the format has no way to point at the target's lm_head, so the target's is
  written into it), ``d2t`` (int64 [draft vocab]: target id = draft id + d2t[draft id]; zeros
  here) and ``t2d`` (bool [vocab]: which target tokens the draft vocabulary holds; all here).

Hub ids are fetched with ``huggingface_hub.snapshot_download`` (imported only then), which uses
the user's own credentials and cache; a local folder is read as is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import torch

from jetspec.drafters.eagle_head import EagleConfig, EagleHead
from jetspec.drafters.parallel_head import DFlashHead, HeadConfig, JetSpecHead, ParallelHead
from jetspec.target import TargetModel

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
DFLASH_TOP = {"fuse.weight": "fc.weight", "fuse_norm.weight": "hidden_norm.weight",
              "norm.weight": "norm.weight"}
EAGLE_TOP = {"fc.weight": "fc.weight", "norm.weight": "norm.weight"}


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


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a checkpoint folder needs config.json")
    return json.loads(path.read_text())


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


def rope_theta(cfg: dict) -> float:
    """The RoPE base from either config style; scaled RoPE variants are refused, not ignored."""
    scaling = cfg.get("rope_scaling") or {}
    params = cfg.get("rope_parameters") or {}
    kind = scaling.get("rope_type", scaling.get("type")) or params.get("rope_type", "default")
    if kind not in ("default", None):
        raise ValueError(f"RoPE scaling '{kind}' is not supported by jetspec's draft heads")
    return float(cfg.get("rope_theta") or params.get("rope_theta") or 10000.0)


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


# ---------------------------------------------------------------------------------------- DFlash
def load_dflash_checkpoint(path_or_hub_id: str | os.PathLike, target) -> ParallelHead:
    """A ``DFlashDraftModel`` checkpoint as a ``JetSpecHead`` (causal_head) or ``DFlashHead``."""
    folder = resolve_folder(path_or_hub_id)
    cfg = read_config(folder)
    dc = cfg.get("dflash_config")
    if not isinstance(dc, dict) or "target_layer_ids" not in dc:
        raise ValueError(f"{folder}/config.json has no dflash_config.target_layer_ids: "
                         "not a DFlash-layout head")
    what = f"the draft head in {folder}"
    check_target(target, cfg.get("hidden_size"), cfg.get("vocab_size"),
                 cfg.get("num_target_layers", dc.get("num_target_layers")), what)
    if dc.get("mask_token_id") is None:
        raise ValueError(f"{what} has no dflash_config.mask_token_id (the MASK slots' token)")
    weights = read_weights(folder)
    head_cfg = HeadConfig(
        num_layers=int(cfg["num_hidden_layers"]),
        block_size=int(cfg.get("block_size", dc.get("block_size", 16))),
        tap_layers=tuple(dc["target_layer_ids"]), num_heads=cfg["num_attention_heads"],
        num_kv_heads=cfg.get("num_key_value_heads"), head_dim=cfg.get("head_dim"),
        intermediate_size=cfg["intermediate_size"], mask_token_id=int(dc["mask_token_id"]),
        qk_norm="layers.0.self_attn.q_norm.weight" in weights, rms_norm_eps=cfg.get("rms_norm_eps"),
        rope_theta=rope_theta(cfg))
    cls = JetSpecHead if dc.get("causal_head", False) else DFlashHead
    head = cls(target, config=head_cfg)
    load_mapped(head.net, weights, dflash_names(head_cfg.num_layers), what)
    return head


def export_dflash_checkpoint(head: ParallelHead, folder: str | os.PathLike,
                             dtype: Optional[torch.dtype] = None) -> Path:
    """Write a parallel head in the ``DFlashDraftModel`` layout (needs ``mask_token_id``)."""
    c = head.config
    if c.mask_token_id is None:
        raise ValueError("the DFlash layout has no learned MASK embedding: build the head with mask_token_id")
    if head.net.in_proj is not None:
        raise ValueError("the DFlash layout needs the head's hidden size to equal the target's")
    theirs = {ours: name for name, ours in dflash_names(c.num_layers).items()}
    state = head.net.state_dict()
    weights = {theirs[k]: (v.to(dtype) if dtype is not None else v) for k, v in state.items()}
    config = {
        "architectures": ["DFlashDraftModel"], "model_type": "qwen3", "hidden_size": c.hidden_size,
        "num_attention_heads": c.num_heads, "num_key_value_heads": c.num_kv_heads, "head_dim": c.head_dim,
        "intermediate_size": c.intermediate_size, "num_hidden_layers": c.num_layers,
        "rms_norm_eps": c.rms_norm_eps, "rope_theta": c.rope_theta, "vocab_size": c.target_vocab_size,
        "hidden_act": "silu", "tie_word_embeddings": False, "block_size": c.block_size,
        "num_target_layers": c.target_num_layers,
        "torch_dtype": str(dtype or next(iter(state.values())).dtype).replace("torch.", ""),
        "dflash_config": {"target_layer_ids": list(c.tap_layers), "mask_token_id": c.mask_token_id,
                          "causal_head": bool(head.causal)},
    }
    return write_checkpoint(folder, config, weights)


def dflash_names(num_layers: int) -> dict[str, str]:
    """published -> jetspec names of a DFlash-layout head (q/k norms only where the head has them)."""
    names = {theirs: ours for ours, theirs in DFLASH_TOP.items()}
    names.update(layer_map(num_layers))
    return names


# ---------------------------------------------------------------------------------------- EAGLE-3
def export_eagle3_checkpoint(head: EagleHead, folder: str | os.PathLike,
                             dtype: Optional[torch.dtype] = None) -> Path:
    """Write an ``EagleHead`` as an EAGLE-3 draft model (``LlamaForCausalLMEagle3``)."""
    c = head.config
    if c.num_layers != 1:
        raise ValueError(f"the EAGLE-3 layout has one decoder layer (midlayer); this head has {c.num_layers}")
    if len(c.tap_layers) != 3:
        raise ValueError(f"the EAGLE-3 layout fuses exactly 3 taps (fc is 3H -> H); this head taps "
                         f"{c.tap_layers}")
    if c.qk_norm:
        raise ValueError("the EAGLE-3 layout is Llama-style: build the head with qk_norm=False")
    if max(c.tap_layers) >= c.target_num_layers - 1:
        raise ValueError(f"tap layer {max(c.tap_layers)} is the target's last layer: EAGLE-3 engines "
                         "capture the input of a layer, so taps must be below L-1")
    cast = (lambda t: t.to(dtype)) if dtype is not None else (lambda t: t)
    to_theirs = {ours: theirs for theirs, ours in eagle_names().items()}
    weights = {to_theirs[k]: cast(v) for k, v in head.net.state_dict().items()}
    v = c.target_vocab_size
    weights["lm_head.weight"] = cast(head.target_model.get_output_embeddings().weight)
    weights["d2t"] = torch.zeros(v, dtype=torch.long)
    weights["t2d"] = torch.ones(v, dtype=torch.bool)
    target_cfg = head.target_model.config
    config = {
        "architectures": ["LlamaForCausalLMEagle3"], "model_type": "llama",
        "hidden_size": c.target_hidden_size,
        "intermediate_size": c.intermediate_size, "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads, "head_dim": c.head_dim, "num_hidden_layers": 1,
        "rms_norm_eps": c.rms_norm_eps, "rope_theta": c.rope_theta, "hidden_act": "silu",
        "max_position_embeddings": getattr(target_cfg, "max_position_embeddings", 4096),
        "tie_word_embeddings": False, "vocab_size": v, "draft_vocab_size": v,
        "target_hidden_size": c.target_hidden_size,
        "torch_dtype": str(dtype or head.net.fc.weight.dtype).replace("torch.", ""),
        "eagle_config": {"eagle_aux_hidden_state_layer_ids": [t + 1 for t in c.tap_layers],
                         "use_aux_hidden_state": True},
        "jetspec": {"target_num_layers": c.target_num_layers, "ttt_steps": c.ttt_steps},
    }
    return write_checkpoint(folder, config, weights)


def eagle_names() -> dict[str, str]:
    """published -> jetspec names of the EAGLE-3 layout (one fusion layer)."""
    names = {theirs: ours for ours, theirs in EAGLE_TOP.items()}
    for ours, theirs in LAYER_NAMES.items():
        if "q_norm" in ours or "k_norm" in ours:
            continue
        names[f"midlayer.{theirs}"] = f"layers.0.{ours}"
    return names


def load_eagle3_checkpoint(path_or_hub_id: str | os.PathLike, target) -> EagleHead:
    """An EAGLE-3 checkpoint whose draft vocabulary is the full one, as an ``EagleHead``.

    jetspec's EAGLE head drafts through the target's own lm_head, so the file's ``lm_head`` must
    be the target's and ``d2t`` must be the identity; heads with a reduced draft vocabulary are
    refused with that reason rather than loaded wrongly.
    """
    folder = resolve_folder(path_or_hub_id)
    cfg = read_config(folder)
    what = f"the EAGLE-3 head in {folder}"
    if "LlamaForCausalLMEagle3" not in cfg.get("architectures", []):
        raise ValueError(f"{what}: config.json architectures {cfg.get('architectures')} is not "
                         "LlamaForCausalLMEagle3")
    extra = cfg.get("jetspec", {})
    check_target(target, cfg.get("target_hidden_size", cfg.get("hidden_size")), cfg.get("vocab_size"),
                 extra.get("target_num_layers"), what)
    if cfg.get("num_hidden_layers", 1) != 1:
        raise ValueError(f"{what} has {cfg['num_hidden_layers']} layers; only the one-layer layout "
                         "is supported")
    weights = read_weights(folder)
    n = hf_model(target).config.num_hidden_layers
    ids = (cfg.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids") or [2, n // 2, n - 3]
    if any(not 1 <= i < n for i in ids):
        raise ValueError(f"target mismatch: {what} taps layers {ids} (EAGLE numbering), outside "
                         f"this target's number of layers {n}")
    lm, d2t = weights.pop("lm_head.weight", None), weights.pop("d2t", None)
    weights.pop("t2d", None)
    weights.pop("embed_tokens.weight", None)  # jetspec uses the target's embedding
    target_lm = hf_model(target).get_output_embeddings().weight.detach()
    if cfg.get("draft_vocab_size", cfg.get("vocab_size")) != cfg.get("vocab_size") or \
            (d2t is not None and bool(d2t.any())):
        raise ValueError(f"{what} drafts in a reduced vocabulary (draft_vocab_size "
                         f"{cfg.get('draft_vocab_size')}); jetspec's EagleHead drafts with the "
                         "target's lm_head")
    if lm is not None and (lm.shape != target_lm.shape or not torch.allclose(
            lm.double(), target_lm.double().cpu(), rtol=1e-2, atol=1e-2 * float(target_lm.abs().max()))):
        raise ValueError(f"{what} has its own lm_head, not this target's; jetspec's EagleHead "
                         "drafts with the target's lm_head")
    config = EagleConfig(num_layers=1, ttt_steps=int(extra.get("ttt_steps", EagleConfig.ttt_steps)),
                         tap_layers=tuple(i - 1 for i in ids), num_heads=cfg["num_attention_heads"],
                         num_kv_heads=cfg.get("num_key_value_heads"), head_dim=cfg.get("head_dim"),
                         intermediate_size=cfg["intermediate_size"], rms_norm_eps=cfg.get("rms_norm_eps"),
                         rope_theta=rope_theta(cfg))
    head = EagleHead(target, config=config)
    load_mapped(head.net, weights, eagle_names(), what)
    return head
