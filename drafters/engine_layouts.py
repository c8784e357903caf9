"""Reading and writing draft heads in the layouts other engines publish and load.

jetspec's own format (``save_pretrained``) stores a head's config and weights under jetspec's
module names. Two published layouts are mapped here, name by name, and held in the tests against
forwards written from the engines' own reading of them (``tests/drafters/layout_reference.py``).
Layer numbering: jetspec tap l is the *output* of target layer l (HF ``hidden_states[l + 1]``);
engines capture the *input* of a layer, so tap l is captured as the input of layer l + 1, taps
must be 0..L-2 and distinct, and features are fused in layer order (exporters sort the taps and
permute the fusion weight to match; importers refuse unsorted lists where engines disagree).

**DFlash / JetSpec draft heads** (``DFlashDraftModel``; ``load_dflash_checkpoint``,
``export_dflash_checkpoint``). A folder (or hub repository) with

* ``config.json``: a Qwen3-style config of the *draft* model -- ``hidden_size``,
  ``num_attention_heads``, ``num_key_value_heads``, ``head_dim``, ``intermediate_size``,
  ``num_hidden_layers`` (draft layers), ``rms_norm_eps``, ``rope_theta`` (or
  ``rope_parameters.rope_theta``; required), ``vocab_size``, ``max_position_embeddings``,
  ``layer_types`` (all ``full_attention``) -- plus ``block_size`` (S), ``num_target_layers`` (L)
  and a ``dflash_config`` holding ``target_layer_ids`` (layer-output ids, jetspec's numbering;
  when missing, the published rule: L // 2 for one draft layer, else n ids spread from 1 to L-3
  with Python's rounding) and ``mask_token_id`` (whose embedding fills the MASK slots).
* Which block mask: vLLM reads ``is_causal``, then ``dflash_config.causal``; JetSpec's files
  ``dflash_config.causal_head``. The exporter writes all three; the loader reads any of them,
  refuses disagreement, and takes "bidirectional" (DFlash) when none is set. Engines that always
  run full-attention layers bidirectionally (SGLang's DFLASH model, z-lab's first
  ``DFlashDraftModel``, vLLM before these flags) cannot run a JetSpec (causal) head correctly:
  it stays lossless there, but drafts under a mask it was not trained with.
* ``model.safetensors`` (or shards listed in ``model.safetensors.index.json``) with HF Qwen3
  decoder-layer names ``layers.{i}.self_attn.{q,k,v,o}_proj.weight``,
  ``layers.{i}.self_attn.{q,k}_norm.weight`` (always present in this layout),
  ``layers.{i}.mlp.{gate,up,down}_proj.weight``, ``layers.{i}.{input,post_attention}_layernorm.weight``,
  and ``fc.weight`` (the tap fusion Linear(k*H -> H)), ``hidden_norm.weight`` (the RMSNorm after
  it), ``norm.weight`` (final norm). No embedding and no lm_head: the target's are used.
* Refused on import: sliding-window layers (``layer_types``, ``dflash_config.use_swa``),
  interleaved RoPE (``is_neox_style`` / ``rope_is_neox_style`` false), biases, attention sinks,
  logit multipliers and soft-capping, embedding scales, reduced draft vocabularies,
  ``DFlash2DraftModel``. Refused on export: ``qk_norm=False``, ``direct_path``, a reduced draft
  vocabulary, a learned MASK embedding (no ``mask_token_id``), a head narrower than the target.

**EAGLE-3 draft heads** (``LlamaForCausalLMEagle3``, what vLLM and SGLang load;
``export_eagle3_checkpoint``, ``load_eagle3_checkpoint``). A folder with

* ``config.json``: ``architectures: ["LlamaForCausalLMEagle3"]``, ``model_type: "llama"``,
  ``hidden_size``, ``intermediate_size``, ``num_attention_heads``, ``num_key_value_heads``,
  ``head_dim``, ``num_hidden_layers: 1``, ``rms_norm_eps``, ``rope_theta``,
  ``max_position_embeddings``, ``hidden_act: "silu"``, ``tie_word_embeddings: false``,
  ``vocab_size`` (the target's), ``draft_vocab_size`` (the head's output vocabulary),
  ``target_hidden_size``, ``torch_dtype``, and the tapped layers in two numberings: vLLM reads
  the top-level ``eagle_aux_hidden_state_layer_ids`` as layer-*input* ids (tap l = id l + 1);
  SGLang (and SpecForge) read ``eagle_config.eagle_aux_hidden_state_layer_ids`` as layer-*output*
  ids (tap l = id l). With neither, both capture the inputs of layers (2, L // 2, L - 3), i.e.
  taps (1, L // 2 - 1, L - 4), jetspec's default for EAGLE heads on L >= 8 layers: the exporter
  then writes no ids; for any other taps it writes both keys, each in its engine's numbering.
  The loader reads both, each in its own numbering, and refuses them if they disagree. jetspec
  adds a ``jetspec`` entry (target layer count, training-time-test steps) that others ignore.
* weights: ``fc.weight`` (Linear(3*H -> H): exactly three taps), ``midlayer.input_layernorm``
  (norm of the token embedding), ``midlayer.hidden_norm`` (norm of the feature),
  ``midlayer.self_attn.{q,k,v}_proj`` (2H inputs: [embedding ; feature]) and ``o_proj``,
  ``midlayer.post_attention_layernorm``, ``midlayer.mlp.{gate,up,down}_proj``, ``norm.weight``,
  ``lm_head.weight`` [draft vocab, H], ``d2t`` (int64 [draft vocab]: target id = draft id +
  d2t[draft id]) and ``t2d`` (bool [vocab]: which target tokens the draft vocabulary holds);
  optionally ``embed_tokens.weight``, which must be the target's (jetspec embeds with the target).
* Reduced vocabularies and trained lm_heads (most published heads: 32k rows with ``d2t``) load
  as an ``EagleHead`` whose output layer is that lm_head over those ids; the exporter writes
  them back. jetspec's own heads write the target's lm_head with ``d2t`` zeros.
* Refused on import: more than one layer, ``tie_word_embeddings``, ``norm_before_residual``,
  biases, activations other than SiLU, per-feature norms (``fc_norm``), ``logit_scale``,
  ``use_aux_hidden_state: false``, scaled RoPE, tap ids that are not three capturable layers.

Hub ids are fetched with ``huggingface_hub.snapshot_download`` (imported only then), which uses
the user's own credentials and cache; a local folder is read as is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch

from jetspec.drafters.draft_vocab import DraftVocabulary, OwnLMHead
from jetspec.drafters.eagle_head import EagleConfig, EagleHead
from jetspec.drafters.engine_layout_rules import (
    LAYER_NAMES,
    attention_shape,
    capturable_order,
    check_target,
    hf_model,
    layer_map,
    load_mapped,
    lookup,
    permute_taps,
    read_checkpoint_config,
    read_weights,
    refuse_unsupported,
    resolve_folder,
    rope_theta,
    write_checkpoint,
)
from jetspec.drafters.parallel_head import DFlashHead, JetSpecHead, ParallelHead
from jetspec.drafters.parallel_net import HeadConfig

DFLASH_TOP = {"fuse.weight": "fc.weight", "fuse_norm.weight": "hidden_norm.weight",
              "norm.weight": "norm.weight"}
EAGLE_TOP = {"fc.weight": "fc.weight", "norm.weight": "norm.weight"}
SILU = ("silu",)
OFF, ONE, ON = (False,), (1, 1.0), (True,)

DFLASH_UNSUPPORTED = (
    ("attention_bias", OFF, "biases in the attention projections"), ("mlp_bias", OFF, "biases in the MLP"),
    ("hidden_act", SILU, "an MLP activation other than SiLU"),
    ("is_neox_style", ON, "interleaved RoPE; jetspec rotates halves (NeoX style)"),
    ("rope_is_neox_style", ON, "interleaved RoPE; jetspec rotates halves (NeoX style)"),
    ("dflash_config.use_swa", OFF, "sliding-window attention"),
    ("use_sliding_window", OFF, "sliding-window attention"),
    ("dflash_config.attention_sink_bias", OFF, "attention-sink biases"),
    ("add_swa_attention_sink_bias", OFF, "attention-sink biases"),
    ("dflash_config.output_multiplier", ONE, "scaled draft logits"),
    ("dflash_config.final_logit_softcapping", (0, 0.0), "soft-capped draft logits"),
    ("dflash_config.input_embedding_scale", ONE, "scaled block embeddings"),
    ("dflash_config.use_aux_hidden_state", ON, "drafting without the target's features"),
)
EAGLE3_UNSUPPORTED = (
    ("tie_word_embeddings", OFF, "the draft's lm_head tied to its input embedding"),
    ("norm_before_residual", OFF, "a first layer whose residual is the normed feature"),
    ("attention_bias", OFF, "biases in the attention projections"), ("mlp_bias", OFF, "biases in the MLP"),
    ("bias", OFF, "a bias in fc"), ("hidden_act", SILU, "an MLP activation other than SiLU"),
    ("fc_norm", OFF, "a norm of each tapped feature before fc"),
    ("use_aux_norm", OFF, "a norm of each tapped feature before fc"),
    ("logit_scale", ONE, "scaled draft logits"),
    ("eagle_config.use_aux_hidden_state", ON, "drafting from the last hidden state, not three taps"),
)


# ---------------------------------------------------------------------------------------- DFlash
def published_layer_ids(num_target_layers: int, num_draft_layers: int) -> list[int]:
    """DFlash's rule when a config names no ``target_layer_ids``: L // 2 for one draft layer, else
    ``num_draft_layers`` ids from 1 to L-3, rounded as Python's ``round`` does (half to even)."""
    if num_draft_layers == 1:
        return [num_target_layers // 2]
    span = num_target_layers - 4
    return [int(round(1 + i * span / (num_draft_layers - 1))) for i in range(num_draft_layers)]


def dflash_causal(cfg: dict, what: str) -> bool:
    """The block mask a DFlash-layout config asks for: every spelling read, disagreement refused."""
    flags = {key: lookup(cfg, key) for key in ("is_causal", "dflash_config.causal", "dflash_config.causal_head")}
    given = {key: bool(value) for key, value in flags.items() if value is not None}
    if len(set(given.values())) > 1:
        raise ValueError(f"{what}: the causal flags disagree ({given}); vLLM reads is_causal, then "
                         "dflash_config.causal, jetspec's files causal_head: they must say the same")
    return next(iter(given.values()), False)


def dflash_layer_ids(cfg: dict, dc: dict, num_layers: int, what: str) -> list[int]:
    """``target_layer_ids`` (or the published default rule), checked to mean one thing everywhere."""
    ids = dc.get("target_layer_ids")
    if ids is None:
        ids = published_layer_ids(int(cfg.get("num_target_layers") or num_layers), int(cfg["num_hidden_layers"]))
    ids = [int(i) for i in ids]
    if any(b <= a for a, b in zip(ids, ids[1:])):
        raise ValueError(f"{what}: target_layer_ids {ids} must be strictly ascending: vLLM fuses the captured "
                         "layers in layer order, DFlash's own code in the listed order")
    capturable_order(ids, num_layers, what)
    top = cfg.get("eagle_aux_hidden_state_layer_ids")
    if top is not None and [int(i) for i in top] != [i + 1 for i in ids]:
        raise ValueError(f"{what}: vLLM reads eagle_aux_hidden_state_layer_ids {top} (layer inputs) before "
                         f"dflash_config.target_layer_ids {ids} (layer outputs), and they disagree")
    return ids


def check_dflash_config(cfg: dict, dc: dict, what: str) -> None:
    """Refuse what the loader cannot run as the engines run it (sliding windows, biases, ...)."""
    refuse_unsupported(cfg, DFLASH_UNSUPPORTED, what)
    archs = cfg.get("architectures")
    if archs and "DFlashDraftModel" not in archs:
        raise ValueError(f"{what}: architectures {archs} is not DFlashDraftModel (e.g. DFlash2DraftModel "
                         "adds convolutions and a candidate selector jetspec does not have)")
    kinds = set(cfg.get("layer_types") or ["full_attention"])
    if kinds != {"full_attention"}:
        raise ValueError(f"{what}: layer_types {sorted(kinds)} include sliding-window (or other) attention; "
                         "jetspec's heads attend to the whole context")
    if cfg.get("draft_vocab_size") not in (None, cfg.get("vocab_size")):
        raise ValueError(f"{what}: a reduced draft vocabulary (draft_vocab_size {cfg['draft_vocab_size']}) "
                         "is not supported in the DFlash layout")
    for key in ("block_size", "mask_token_id"):
        if cfg.get(key) is not None and dc.get(key) is not None and cfg[key] != dc[key]:
            raise ValueError(f"{what}: {key} {cfg[key]} and dflash_config.{key} {dc[key]} disagree")


def load_dflash_checkpoint(path_or_hub_id: str | os.PathLike, target) -> ParallelHead:
    """A ``DFlashDraftModel`` checkpoint as a ``JetSpecHead`` (causal block) or ``DFlashHead``."""
    folder = resolve_folder(path_or_hub_id)
    cfg = read_checkpoint_config(folder)
    dc = cfg.get("dflash_config")
    if not isinstance(dc, dict):
        raise ValueError(f"{folder}/config.json has no dflash_config: not a DFlash-layout head")
    what = f"the draft head in {folder}"
    n = hf_model(target).config.num_hidden_layers
    check_target(target, cfg.get("hidden_size"), cfg.get("vocab_size"),
                 cfg.get("num_target_layers", dc.get("num_target_layers")), what)
    check_dflash_config(cfg, dc, what)
    mask = dc.get("mask_token_id", cfg.get("mask_token_id"))
    if mask is None:
        raise ValueError(f"{what} has no dflash_config.mask_token_id (the MASK slots' token)")
    weights = read_weights(folder)
    num_layers = int(cfg["num_hidden_layers"])
    for i in range(num_layers):
        if f"layers.{i}.self_attn.q_norm.weight" not in weights:
            raise ValueError(f"{what}: layer {i} has no self_attn.q_norm/k_norm weights; every engine's "
                             "DFlash layer has per-head q/k RMSNorm")
    head_cfg = HeadConfig(
        num_layers=num_layers, block_size=int(dc.get("block_size", cfg.get("block_size", 16))),
        tap_layers=tuple(dflash_layer_ids(cfg, dc, n, what)), mask_token_id=int(mask), qk_norm=True,
        rope_theta=rope_theta(cfg, what, required=True), **attention_shape(cfg))
    cls = JetSpecHead if dflash_causal(cfg, what) else DFlashHead
    head = cls(target, config=head_cfg)
    load_mapped(head.net, weights, dflash_names(num_layers), what)
    return head


def export_dflash_checkpoint(head: ParallelHead, folder: str | os.PathLike,
                             dtype: Optional[torch.dtype] = None) -> Path:
    """Write a parallel head in the ``DFlashDraftModel`` layout, readable by vLLM, SGLang and z-lab's code."""
    c, what = head.config, f"this {type(head).__name__}"
    refusals = ((c.mask_token_id is None, "has a learned MASK embedding; the layout has none: build the head "
                 "with mask_token_id"),
                (head.net.in_proj is not None, "is narrower or wider than the target; the layout needs equal "
                 "hidden sizes"),
                (not c.qk_norm, "has qk_norm=False; the layout's layers always have per-head q/k RMSNorm"),
                (c.direct_path, "has direct_path=True; the layout has no direct-path projection"),
                (c.draft_vocab_size is not None, f"drafts in a reduced vocabulary (draft_vocab_size "
                 f"{c.draft_vocab_size}); the layout drafts with the target's whole lm_head"))
    for refused, reason in refusals:
        if refused:
            raise ValueError(f"{what} {reason}")
    order = capturable_order(c.tap_layers, c.target_num_layers, what)
    theirs = {ours: name for name, ours in dflash_names(c.num_layers).items()}
    state = dict(head.net.state_dict())
    state["fuse.weight"] = permute_taps(state["fuse.weight"], order)
    weights = {theirs[k]: (v.to(dtype) if dtype is not None else v) for k, v in state.items()}
    causal = bool(head.causal)
    target_cfg = head.target_model.config
    config = {
        "architectures": ["DFlashDraftModel"], "model_type": "qwen3", "hidden_size": c.hidden_size,
        "num_attention_heads": c.num_heads, "num_key_value_heads": c.num_kv_heads, "head_dim": c.head_dim,
        "intermediate_size": c.intermediate_size, "num_hidden_layers": c.num_layers,
        "rms_norm_eps": c.rms_norm_eps, "rope_theta": c.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
        "vocab_size": c.target_vocab_size, "hidden_act": "silu", "tie_word_embeddings": False,
        "attention_bias": False, "layer_types": ["full_attention"] * c.num_layers, "use_sliding_window": False,
        "max_position_embeddings": getattr(target_cfg, "max_position_embeddings", 4096),
        "block_size": c.block_size, "num_target_layers": c.target_num_layers, "is_causal": causal,
        "torch_dtype": str(dtype or next(iter(state.values())).dtype).replace("torch.", ""),
        "dflash_config": {"target_layer_ids": sorted(c.tap_layers), "mask_token_id": c.mask_token_id,
                          "block_size": c.block_size, "causal": causal, "causal_head": causal},
    }
    return write_checkpoint(folder, config, weights)


def dflash_names(num_layers: int) -> dict[str, str]:
    """published -> jetspec names of a DFlash-layout head."""
    names = {theirs: ours for ours, theirs in DFLASH_TOP.items()}
    names.update(layer_map(num_layers))
    return names


# ---------------------------------------------------------------------------------------- EAGLE-3
def engine_default_taps(num_layers: int) -> Optional[tuple[int, ...]]:
    """The taps vLLM and SGLang capture when a config names none: inputs of layers (2, L//2, L-3),
    i.e. outputs (1, L//2 - 1, L - 4); None when these are not three capturable layers."""
    taps = (1, num_layers // 2 - 1, num_layers - 4)
    ok = taps[0] < taps[1] < taps[2] <= num_layers - 2
    return taps if ok else None


def eagle3_taps(cfg: dict, num_layers: int, what: str) -> tuple[int, ...]:
    """jetspec taps from either key, each in its own engine's numbering (layer order)."""
    top = cfg.get("eagle_aux_hidden_state_layer_ids")
    nested = lookup(cfg, "eagle_config.eagle_aux_hidden_state_layer_ids")
    if top and min(top) < 1:
        raise ValueError(f"{what}: eagle_aux_hidden_state_layer_ids {top} has id 0, the input of layer 0 (the "
                         "token embedding); jetspec taps layer outputs")
    from_top = sorted(int(i) - 1 for i in top) if top else None
    from_nested = sorted(int(i) for i in nested) if nested else None
    if from_top is not None and from_nested is not None and from_top != from_nested:
        raise ValueError(f"{what}: eagle_aux_hidden_state_layer_ids {top} (vLLM: inputs of those layers) and "
                         f"eagle_config.eagle_aux_hidden_state_layer_ids {nested} (SGLang: outputs of those "
                         "layers) name different layers")
    taps = from_top or from_nested or engine_default_taps(num_layers)
    if taps is None:
        raise ValueError(f"{what} names no tapped layers, and the engines' default for {num_layers} layers is "
                         "not three distinct layers")
    if len(taps) != 3:
        raise ValueError(f"{what} taps layers {taps}; the EAGLE-3 layout fuses exactly 3")
    capturable_order(taps, num_layers, what)
    return tuple(taps)


def eagle3_vocabulary(cfg: dict, weights: dict, target, what: str) -> Optional[DraftVocabulary]:
    """The head's output layer from ``lm_head``/``d2t``/``t2d`` (popped from ``weights``).

    None: the target's own lm_head over the full vocabulary. A ``DraftVocabulary``: the target's
    rows at the draft ids. An ``OwnLMHead``: the file's trained rows.
    """
    model = hf_model(target)
    target_lm = model.get_output_embeddings().weight.detach().cpu()
    vocab, hidden = target_lm.shape
    size = int(cfg.get("draft_vocab_size") or vocab)
    embed = weights.pop("embed_tokens.weight", None)
    if embed is not None and not torch.equal(embed, model.get_input_embeddings().weight.detach().cpu().to(embed.dtype)):
        raise ValueError(f"{what}: embed_tokens differs from this target's input embedding; jetspec embeds "
                         "draft tokens with the target's table")
    lm, d2t, t2d = (weights.pop(k, None) for k in ("lm_head.weight", "d2t", "t2d"))
    if d2t is None and size != vocab:
        raise ValueError(f"{what}: draft_vocab_size {size} < vocab_size {vocab} but no d2t maps draft ids")
    d2t = torch.zeros(size, dtype=torch.long) if d2t is None else d2t.long()
    if d2t.numel() != size:
        raise ValueError(f"{what}: d2t has {d2t.numel()} entries for draft_vocab_size {size}")
    ids = torch.arange(size) + d2t
    if int(ids.min()) < 0 or int(ids.max()) >= vocab:
        raise ValueError(f"{what}: d2t maps draft ids outside the vocabulary of {vocab}")
    if torch.unique(ids).numel() != size:
        raise ValueError(f"{what}: d2t maps draft ids to target ids that are not distinct")
    if t2d is not None and (t2d.numel() != vocab or int(t2d.sum()) != size or not bool(t2d.bool()[ids].all())):
        raise ValueError(f"{what}: t2d does not mark exactly the target tokens d2t maps to")
    if lm is None:
        if size != vocab:
            raise ValueError(f"{what} has no lm_head for its draft vocabulary of {size}")
        return None
    if tuple(lm.shape) != (size, hidden):
        raise ValueError(f"{what}: lm_head has shape {tuple(lm.shape)}, expected ({size}, {hidden})")
    if torch.equal(lm, target_lm[ids].to(lm.dtype)):  # the target's own rows (jetspec's exports)
        return None if torch.equal(ids, torch.arange(vocab)) else DraftVocabulary(ids, vocab)
    if "jetspec" in cfg and not cfg["jetspec"].get("own_lm_head", False):
        raise ValueError(f"{what} was exported by jetspec for another target: its lm_head is not this "
                         "target's")
    return OwnLMHead(ids, vocab, lm)


def load_eagle3_checkpoint(path_or_hub_id: str | os.PathLike, target) -> EagleHead:
    """An EAGLE-3 checkpoint (full or reduced draft vocabulary) as an ``EagleHead``."""
    folder = resolve_folder(path_or_hub_id)
    cfg = read_checkpoint_config(folder)
    what = f"the EAGLE-3 head in {folder}"
    if "LlamaForCausalLMEagle3" not in cfg.get("architectures", []):
        raise ValueError(f"{what}: config.json architectures {cfg.get('architectures')} is not "
                         "LlamaForCausalLMEagle3")
    extra = cfg.get("jetspec", {})
    check_target(target, cfg.get("target_hidden_size", cfg.get("hidden_size")), cfg.get("vocab_size"),
                 extra.get("target_num_layers"), what)
    if cfg.get("hidden_size") != cfg.get("target_hidden_size", cfg.get("hidden_size")):
        raise ValueError(f"{what}: hidden_size {cfg.get('hidden_size')} differs from target_hidden_size; "
                         "jetspec's EagleHead works at the target's hidden size")
    if cfg.get("num_hidden_layers", 1) != 1:
        raise ValueError(f"{what} has {cfg['num_hidden_layers']} layers; only the one-layer layout "
                         "is supported")
    refuse_unsupported(cfg, EAGLE3_UNSUPPORTED, what)
    taps = eagle3_taps(cfg, hf_model(target).config.num_hidden_layers, what)
    weights = read_weights(folder)
    vocab = eagle3_vocabulary(cfg, weights, target, what)
    config = EagleConfig(num_layers=1, ttt_steps=int(extra.get("ttt_steps", EagleConfig.ttt_steps)),
                         tap_layers=taps, rope_theta=rope_theta(cfg, what), **attention_shape(cfg))
    head = EagleHead(target, config=config)
    load_mapped(head.net, weights, eagle_names(), what)
    if vocab is not None:
        head.net.vocab = vocab.to(head.net.fc.weight.dtype)
    return head


def export_eagle3_checkpoint(head: EagleHead, folder: str | os.PathLike,
                             dtype: Optional[torch.dtype] = None) -> Path:
    """Write an ``EagleHead`` as an EAGLE-3 draft model (``LlamaForCausalLMEagle3``)."""
    c, what = head.config, "this EagleHead"
    if c.num_layers != 1:
        raise ValueError(f"the EAGLE-3 layout has one decoder layer (midlayer); this head has {c.num_layers}")
    if len(c.tap_layers) != 3:
        raise ValueError(f"the EAGLE-3 layout fuses exactly 3 taps (fc is 3H -> H); this head taps "
                         f"{c.tap_layers}")
    if c.qk_norm:
        raise ValueError("the EAGLE-3 layout is Llama-style: build the head with qk_norm=False")
    order = capturable_order(c.tap_layers, c.target_num_layers, what)
    taps = sorted(c.tap_layers)
    cast = (lambda t: t.to(dtype)) if dtype is not None else (lambda t: t)
    to_theirs = {ours: theirs for theirs, ours in eagle_names().items()}
    state = {k: v for k, v in head.net.state_dict().items() if not k.startswith("vocab.")}
    state["fc.weight"] = permute_taps(state["fc.weight"], order)
    weights = {to_theirs[k]: cast(v) for k, v in state.items()}
    weights.update(eagle3_output_weights(head, cast))
    config = {
        "architectures": ["LlamaForCausalLMEagle3"], "model_type": "llama",
        "hidden_size": c.target_hidden_size,
        "intermediate_size": c.intermediate_size, "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads, "head_dim": c.head_dim, "num_hidden_layers": 1,
        "rms_norm_eps": c.rms_norm_eps, "rope_theta": c.rope_theta, "hidden_act": "silu",
        "max_position_embeddings": getattr(head.target_model.config, "max_position_embeddings", 4096),
        "tie_word_embeddings": False, "norm_before_residual": False, "vocab_size": c.target_vocab_size,
        "draft_vocab_size": weights["d2t"].numel(), "target_hidden_size": c.target_hidden_size,
        "torch_dtype": str(dtype or head.net.fc.weight.dtype).replace("torch.", ""),
        "eagle_config": {"use_aux_hidden_state": True},
        "jetspec": {"target_num_layers": c.target_num_layers, "ttt_steps": c.ttt_steps,
                    # an imported head that brought its own trained lm_head (OwnLMHead) exports it as is
                    "own_lm_head": isinstance(head.draft_vocab, OwnLMHead)},
    }
    if tuple(taps) != engine_default_taps(c.target_num_layers):  # else both engines' default is right
        config["eagle_aux_hidden_state_layer_ids"] = [t + 1 for t in taps]  # vLLM: layer inputs
        config["eagle_config"]["eagle_aux_hidden_state_layer_ids"] = taps  # SGLang: layer outputs
    return write_checkpoint(folder, config, weights)


def eagle3_output_weights(head: EagleHead, cast) -> dict[str, torch.Tensor]:
    """``lm_head``, ``d2t`` and ``t2d`` of a head: its own vocabulary, or the target's lm_head."""
    target_lm = head.target_model.get_output_embeddings().weight.detach()
    vocab = head.draft_vocab
    ids = torch.arange(target_lm.shape[0]) if vocab is None else vocab.ids.cpu()
    lm = vocab.weight if isinstance(vocab, OwnLMHead) else target_lm[ids.to(target_lm.device)]
    t2d = torch.zeros(target_lm.shape[0], dtype=torch.bool)
    t2d[ids] = True
    return {"lm_head.weight": cast(lm.detach()), "d2t": ids - torch.arange(ids.numel()), "t2d": t2d}


def eagle_names() -> dict[str, str]:
    """published -> jetspec names of the EAGLE-3 layout (one fusion layer)."""
    names = {theirs: ours for ours, theirs in EAGLE_TOP.items()}
    for ours, theirs in LAYER_NAMES.items():
        if "q_norm" in ours or "k_norm" in ours:
            continue
        names[f"midlayer.{theirs}"] = f"layers.0.{ours}"
    return names
