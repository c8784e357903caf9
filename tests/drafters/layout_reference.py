"""Reference draft forwards of the published layouts, written from their public descriptions.

Nothing here imports jetspec: these functions read a checkpoint folder (config.json +
model.safetensors) and a Hugging Face target, and compute what an engine computes, so the tests
can hold jetspec's loaders and exporters against an independent statement of each layout.

What the engines do, as read in their source (vLLM ``llama_eagle3.py``, ``qwen3_dflash.py``,
``gpu_model_runner.py``; SGLang ``llama_eagle3.py``, ``llama.py``, ``model_runner.py``,
``dflash.py``; z-lab's ``DFlashDraftModel``):

* The target feeds the head the residual stream at the *input* of some decoder layers, i.e. HF's
  ``hidden_states[i]``, concatenated in layer order (the capture runs in the layer loop).
* EAGLE-3 (which inputs): vLLM reads the top-level ``eagle_aux_hidden_state_layer_ids`` (then the
  nested one) as layer-input ids; SGLang reads only ``eagle_config.eagle_aux_hidden_state_layer_ids``
  as layer-*output* ids and captures the input of id + 1; with no ids both capture the inputs of
  layers (2, L // 2, L - 3).
* EAGLE-3 (the layer): fc(features) is the residual; attention reads
  [input_layernorm(embedding of the next token) ; hidden_norm(fc out)] (2H wide); then
  post_attention_layernorm + SwiGLU MLP, residual; ``norm`` + ``lm_head`` give draft-vocabulary
  logits, and draft id j is target id j + d2t[j]. The next depth reads the previous row's output
  before ``norm`` at the next position.
* DFlash: ``target_layer_ids`` are layer-output ids (HF ``hidden_states[id + 1]``); context rows
  are hidden_norm(fc(features)), projected by each layer's k/v (k-norm, RoPE) and put before the
  block's own keys; the block is [anchor, mask x (S-1)] embedded by the target; full-attention
  layers are bidirectional unless ``is_causal`` (vLLM, z-lab) / ``dflash_config.causal`` (vLLM)
  say causal; q/k per-head RMSNorm; final ``norm``; the target's lm_head.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file


def read(folder: Path) -> tuple[dict, dict]:
    return json.loads((Path(folder) / "config.json").read_text()), load_file(str(Path(folder) / "model.safetensors"))


def rms(x, w, eps):
    x = x.double()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w.double()


def rope(x, positions, theta):
    """Rotate-half (NeoX) RoPE of x [heads, T, K] at integer positions [T]."""
    k = x.shape[-1]
    inv = theta ** (-torch.arange(0, k, 2, dtype=torch.float64) / k)
    ang = positions.double()[:, None] * inv  # [T, K/2]
    cos, sin = ang.cos(), ang.sin()
    a, b = x[..., : k // 2], x[..., k // 2:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], -1)


def heads(x, n):
    return x.view(x.shape[0], n, -1).transpose(0, 1)  # [T, n*K] -> [n, T, K]


def attention(q, k, v, visible):
    """q [h, M, K], k/v [h_kv, N, K], visible [M, N] bool -> [M, h*K]."""
    g = q.shape[0] // k.shape[0]
    k, v = k.repeat_interleave(g, 0), v.repeat_interleave(g, 0)
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    out = torch.softmax(s.masked_fill(~visible, float("-inf")), -1) @ v
    return out.transpose(0, 1).reshape(q.shape[1], -1)


def swiglu(x, w, p):
    lin = lambda name: x @ w[f"{p}.{name}.weight"].double().T  # noqa: E731
    return (F.silu(lin("gate_proj")) * lin("up_proj")) @ w[f"{p}.down_proj.weight"].double().T


def target_states(target, ids):
    """HF hidden_states (input of layer i at index i) in float64, batch removed."""
    with torch.no_grad():
        return [h[0].double() for h in target(ids, output_hidden_states=True).hidden_states]


# ----------------------------------------------------------------------------------------- EAGLE-3
def eagle3_layer_inputs(cfg: dict, num_layers: int, engine: str) -> list[int]:
    """The target layers whose input an engine captures for this config, in layer order."""
    nested = (cfg.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids")
    if engine == "vllm":
        ids = cfg.get("eagle_aux_hidden_state_layer_ids") or nested
    elif engine == "sglang":
        ids = [i + 1 for i in nested] if nested else None
    else:
        raise ValueError(engine)
    return sorted(set(ids or [2, num_layers // 2, num_layers - 3]))


def eagle3_rows(cfg, w, x, emb, positions, prefix=None):
    """The midlayer over rows (residual x = fc features or parent outputs, emb = token embeddings).

    ``prefix``: (k, v, count) of earlier rows every row may see. Returns (prenorm out, k, v).
    """
    eps, theta = cfg["rms_norm_eps"], float(cfg["rope_theta"])
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    inp = torch.cat([rms(emb, w["midlayer.input_layernorm.weight"], eps),
                     rms(x, w["midlayer.hidden_norm.weight"], eps)], -1)
    proj = lambda name: inp @ w[f"midlayer.self_attn.{name}.weight"].double().T  # noqa: E731
    q = rope(heads(proj("q_proj"), nh), positions, theta)
    k, v = rope(heads(proj("k_proj"), nkv), positions, theta), heads(proj("v_proj"), nkv)
    m = x.shape[0]
    visible = torch.tril(torch.ones(m, m, dtype=torch.bool))
    if prefix is not None:
        k, v = torch.cat([prefix[0], k], 1), torch.cat([prefix[1], v], 1)
        visible = torch.cat([torch.ones(m, prefix[2], dtype=torch.bool), visible], 1)
    h = x + attention(q, k, v, visible) @ w["midlayer.self_attn.o_proj.weight"].double().T
    h = h + swiglu(rms(h, w["midlayer.post_attention_layernorm.weight"], eps), w, "midlayer.mlp")
    return h, k, v


def eagle3_reference(folder, target, ids, engine: str, child=None):
    """Target-vocabulary log-probs an engine drafts from a checkpoint.

    ids [1, T]: rows 0..T-2 (feature of x_j, embedding of x_{j+1}); returns the root row's
    log-probs [V] (-inf outside the draft vocabulary) and, for ``child`` (a token drafted at depth
    1), the depth-2 log-probs after it.
    """
    cfg, w = read(folder)
    n = target.config.num_hidden_layers
    hs = target_states(target, ids)
    feats = torch.cat([hs[i] for i in eagle3_layer_inputs(cfg, n, engine)], -1)[:-1]  # [T-1, 3H]
    x = feats @ w["fc.weight"].double().T
    emb = target.get_input_embeddings().weight.double()
    t = ids.shape[1] - 1
    out, k, v = eagle3_rows(cfg, w, x, emb[ids[0, 1:]], torch.arange(t))
    rows = [out[-1]]
    if child is not None:
        deeper, _, _ = eagle3_rows(cfg, w, out[-1:], emb[torch.tensor([child])], torch.tensor([t]), (k, v, t))
        rows.append(deeper[0])
    logits = rms(torch.stack(rows), w["norm.weight"], cfg["rms_norm_eps"]) @ w["lm_head.weight"].double().T
    vocab = cfg["vocab_size"]
    d2t = w.get("d2t", torch.zeros(logits.shape[-1], dtype=torch.long))
    full = torch.full((len(rows), vocab), float("-inf"), dtype=torch.float64)
    full[:, torch.arange(logits.shape[-1]) + d2t] = torch.log_softmax(logits, -1)
    return full


# ----------------------------------------------------------------------------------------- DFlash
def dflash_default_layer_ids(num_target_layers: int, num_draft_layers: int) -> list[int]:
    """The published rule for a config without ``target_layer_ids`` (Python's round: half to even)."""
    if num_draft_layers == 1:
        return [num_target_layers // 2]
    span = num_target_layers - 3 - 1
    return [int(round(1 + i * span / (num_draft_layers - 1))) for i in range(num_draft_layers)]


def dflash_causal(cfg: dict) -> bool:
    """vLLM's reading: is_causal, else dflash_config.causal, else bidirectional full attention."""
    if cfg.get("is_causal") is not None:
        return bool(cfg["is_causal"])
    return bool((cfg.get("dflash_config") or {}).get("causal", False))


def dflash_reference(folder, target, ids, depth: int):
    """Log-probs [depth, V] of block slots 1..depth for the anchor ids[0, -1] (context: the rest)."""
    cfg, w = read(folder)
    dc = cfg.get("dflash_config") or {}
    eps = cfg["rms_norm_eps"]
    theta = float(cfg.get("rope_theta") or cfg["rope_parameters"]["rope_theta"])
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    layer_ids = dc.get("target_layer_ids") or dflash_default_layer_ids(
        cfg.get("num_target_layers", target.config.num_hidden_layers), cfg["num_hidden_layers"])
    s = int(dc.get("block_size", cfg.get("block_size", 16)))
    t = ids.shape[1] - 1
    hs = target_states(target, ids[:, :t])
    ctx = rms(torch.cat([hs[i + 1] for i in layer_ids], -1) @ w["fc.weight"].double().T,
              w["hidden_norm.weight"], eps)
    emb = target.get_input_embeddings().weight.double()
    h = emb[torch.tensor([int(ids[0, -1])] + [dc["mask_token_id"]] * (s - 1))]
    pos = torch.arange(t + s)
    visible = torch.ones(s, t + s, dtype=torch.bool)
    if dflash_causal(cfg):
        visible[:, t:] = torch.tril(torch.ones(s, s, dtype=torch.bool))
    for i in range(cfg["num_hidden_layers"]):
        p = f"layers.{i}"
        x = rms(h, w[f"{p}.input_layernorm.weight"], eps)
        lin = lambda a, name: a @ w[f"{p}.self_attn.{name}.weight"].double().T  # noqa: E731
        q = rms(heads(lin(x, "q_proj"), nh), w[f"{p}.self_attn.q_norm.weight"], eps)
        both = torch.cat([ctx, x])
        k = rms(heads(lin(both, "k_proj"), nkv), w[f"{p}.self_attn.k_norm.weight"], eps)
        v = heads(lin(both, "v_proj"), nkv)
        a = attention(rope(q, pos[t:], theta), rope(k, pos, theta), v, visible)
        h = h + a @ w[f"{p}.self_attn.o_proj.weight"].double().T
        h = h + swiglu(rms(h, w[f"{p}.post_attention_layernorm.weight"], eps), w, f"{p}.mlp")
    logits = rms(h, w["norm.weight"], eps) @ target.get_output_embeddings().weight.double().T
    return torch.log_softmax(logits[1: depth + 1], -1)
