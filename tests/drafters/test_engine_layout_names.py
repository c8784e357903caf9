"""Published checkpoint layouts: DFlash/JetSpec draft heads in, EAGLE-3 heads out (and back in).

The DFlash-layout files are written here by hand, with the published names spelled out in this
file and a config made by transformers' own Qwen3Config, so the loader's name map is checked
against an independent statement of the layout rather than against itself.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_model
from safetensors.torch import load_file, save_file
from transformers import Qwen3Config

from jetspec.core.target import Teacher
from jetspec.drafters import DFlashHead, EagleHead, JetSpecHead
from jetspec.drafters.engine_layouts import (
    export_dflash_checkpoint,
    export_eagle3_checkpoint,
    load_dflash_checkpoint,
    load_eagle3_checkpoint,
)

# jetspec module name -> the HF Qwen3 decoder-layer name DFlashDraftModel uses
PUBLISHED = {"attn.q_proj": "self_attn.q_proj", "attn.k_proj": "self_attn.k_proj",
             "attn.v_proj": "self_attn.v_proj", "attn.o_proj": "self_attn.o_proj",
             "attn.q_norm": "self_attn.q_norm", "attn.k_norm": "self_attn.k_norm",
             "mlp.gate_proj": "mlp.gate_proj", "mlp.up_proj": "mlp.up_proj", "mlp.down_proj": "mlp.down_proj",
             "input_norm": "input_layernorm", "post_attn_norm": "post_attention_layernorm"}


def published_name(ours: str) -> str:
    if ours in ("fuse.weight", "fuse_norm.weight", "norm.weight"):
        return {"fuse.weight": "fc.weight", "fuse_norm.weight": "hidden_norm.weight"}.get(ours, ours)
    _, i, rest = ours.split(".", 2)  # layers.{i}.<module>.weight
    return f"layers.{i}.{PUBLISHED[rest.rsplit('.', 1)[0]]}.weight"


def write_dflash_layout(head, folder, causal: bool) -> None:
    c = head.config
    cfg = Qwen3Config(vocab_size=c.target_vocab_size, hidden_size=c.hidden_size,
                      intermediate_size=c.intermediate_size, num_hidden_layers=c.num_layers,
                      num_attention_heads=c.num_heads,
                      num_key_value_heads=c.num_kv_heads, head_dim=c.head_dim, rms_norm_eps=c.rms_norm_eps,
                      rope_theta=c.rope_theta).to_dict()
    cfg.update(architectures=["DFlashDraftModel"], block_size=c.block_size,
               num_target_layers=c.target_num_layers,
               dflash_config={"target_layer_ids": list(c.tap_layers), "mask_token_id": c.mask_token_id,
                              "causal_head": causal})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    save_file({published_name(k): v.contiguous() for k, v in head.net.state_dict().items()},
              str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def qwen():
    return tiny_model("qwen3", seed=1, layers=4)


# ------------------------------------------------------------------------------ DFlash / JetSpec in
@pytest.mark.parametrize("cls", [JetSpecHead, DFlashHead])
def test_dflash_layout_loads_to_identical_draft_logits(qwen, cls, tmp_path):
    torch.manual_seed(0)
    head = cls(qwen, block_size=5, num_layers=2, mask_token_id=7, tap_layers=(0, 1, 2))
    write_dflash_layout(head, tmp_path / "ck", causal=cls is JetSpecHead)
    loaded = load_dflash_checkpoint(tmp_path / "ck", qwen)
    assert type(loaded) is cls and loaded.config == head.config
    ids = torch.randint(0, 64, (1, 11))
    taps = Teacher(qwen, head.tap_layers)(ids).taps[0, :10]
    want = head.draft_logits(ids[0], taps, 0, depth=4)
    torch.testing.assert_close(loaded.draft_logits(ids[0], taps, 0, depth=4), want, rtol=0, atol=0)
    # And back out: jetspec's exporter writes the very names and config fields read above.
    export_dflash_checkpoint(loaded, tmp_path / "out")
    assert set(load_file(str(tmp_path / "out" / "model.safetensors"))) == \
        set(load_file(str(tmp_path / "ck" / "model.safetensors")))
    again = load_dflash_checkpoint(tmp_path / "out", qwen)
    torch.testing.assert_close(again.draft_logits(ids[0], taps, 0, depth=4), want, rtol=0, atol=0)


def test_dflash_layout_errors(qwen, tmp_path, monkeypatch):
    head = JetSpecHead(qwen, block_size=4, mask_token_id=3, tap_layers=(0, 2))
    write_dflash_layout(head, tmp_path / "ck", causal=True)
    for kw, what in ((dict(hidden=48), "hidden size"), (dict(vocab=80), "vocab size"),
                     (dict(layers=3), "number of layers")):
        with pytest.raises(ValueError, match=f"target mismatch.*{what}"):
            load_dflash_checkpoint(tmp_path / "ck", tiny_model("qwen3", **{"layers": 4, **kw}))
    with pytest.raises(FileNotFoundError, match="not a checkpoint folder"):
        load_dflash_checkpoint(tmp_path / "missing", qwen)
    # A renamed weight is reported by name, not loaded silently.
    weights = load_file(str(tmp_path / "ck" / "model.safetensors"))
    weights["fusion.weight"] = weights.pop("fc.weight")
    save_file(weights, str(tmp_path / "ck" / "model.safetensors"))
    with pytest.raises(ValueError, match="fusion.weight"):
        load_dflash_checkpoint(tmp_path / "ck", qwen)
    (tmp_path / "ck" / "config.json").write_text(json.dumps({"hidden_size": 32}))
    with pytest.raises(ValueError, match="dflash_config"):
        load_dflash_checkpoint(tmp_path / "ck", qwen)
    with pytest.raises(ValueError, match="mask_token_id"):
        export_dflash_checkpoint(JetSpecHead(qwen, block_size=4), tmp_path / "x")
    # A hub id goes through huggingface_hub.snapshot_download (here: a stand-in serving a local folder).
    import huggingface_hub

    write_dflash_layout(head, tmp_path / "hub", causal=True)
    asked = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo, **kw: asked.append(repo) or str(tmp_path / "hub"))
    assert isinstance(load_dflash_checkpoint("JetSpec/jetspec-tiny", qwen), JetSpecHead)
    assert asked == ["JetSpec/jetspec-tiny"]


# ------------------------------------------------------------------------------ EAGLE-3 out and in
EAGLE3_NAMES = {"fc.weight", "norm.weight", "lm_head.weight", "d2t", "t2d"} | {
    f"midlayer.{n}.weight" for n in ("input_layernorm", "hidden_norm", "post_attention_layernorm",
                                     "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                     "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}


def test_eagle3_export_round_trip(tmp_path):
    target = tiny_model("llama", seed=2, layers=4)
    torch.manual_seed(0)
    head = EagleHead(target, tap_layers=(0, 1, 2), ttt_steps=3)
    export_eagle3_checkpoint(head, tmp_path / "e3")
    cfg = json.loads((tmp_path / "e3" / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLMEagle3"] and cfg["num_hidden_layers"] == 1
    sizes = (cfg["vocab_size"], cfg["draft_vocab_size"], cfg["target_hidden_size"], cfg["hidden_size"])
    assert sizes == (64, 64, 32, 32)
    # Not the engines' default capture for 4 layers: vLLM's numbering on top (inputs of layers 1..3),
    # SGLang's in eagle_config (outputs of layers 0..2).
    assert cfg["eagle_aux_hidden_state_layer_ids"] == [1, 2, 3]
    assert cfg["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [0, 1, 2]
    weights = load_file(str(tmp_path / "e3" / "model.safetensors"))
    assert set(weights) == EAGLE3_NAMES
    assert weights["fc.weight"].shape == (32, 96)  # three taps of H
    assert weights["midlayer.self_attn.q_proj.weight"].shape == (32, 64)  # reads [embedding ; feature]
    assert torch.equal(weights["lm_head.weight"], target.lm_head.weight)
    assert not weights["d2t"].any() and weights["t2d"].all() and weights["d2t"].dtype == torch.int64
    loaded = load_eagle3_checkpoint(tmp_path / "e3", target)
    assert loaded.config == head.config
    ids = torch.randint(0, 64, (1, 12))
    taps = Teacher(target, head.tap_layers)(ids).taps
    nodes, parents = torch.tensor([5, 9, 11, 2]), torch.tensor([-1, -1, 0, 2])
    torch.testing.assert_close(loaded.tree_logprobs(ids[0], taps[0, :11], nodes, parents),
                               head.tree_logprobs(ids[0], taps[0, :11], nodes, parents), rtol=0, atol=0)
    anchors = torch.tensor([[3, 7]])
    torch.testing.assert_close(loaded(ids, taps, anchors), head(ids, taps, anchors), rtol=0, atol=0)


def test_eagle3_errors(tmp_path):
    target = tiny_model("llama", seed=2, layers=4)
    with pytest.raises(ValueError, match="one decoder layer"):
        export_eagle3_checkpoint(EagleHead(target, num_layers=2, tap_layers=(0, 1, 2)), tmp_path / "x")
    with pytest.raises(ValueError, match="exactly 3 taps"):
        export_eagle3_checkpoint(EagleHead(target, tap_layers=(0, 2)), tmp_path / "x")
    with pytest.raises(ValueError, match="last layer"):
        export_eagle3_checkpoint(EagleHead(target, tap_layers=(1, 2, 3)), tmp_path / "x")
    head = EagleHead(target, tap_layers=(0, 1, 2))
    export_eagle3_checkpoint(head, tmp_path / "e3")
    for kw, what in ((dict(hidden=48), "hidden size"), (dict(vocab=80), "vocab size"),
                     (dict(layers=5), "number of layers")):
        with pytest.raises(ValueError, match=f"target mismatch.*{what}"):
            load_eagle3_checkpoint(tmp_path / "e3", tiny_model("llama", **{"layers": 4, **kw}))
    # jetspec writes its target's lm_head into the file: another lm_head means another target.
    with pytest.raises(ValueError, match="another target"):
        load_eagle3_checkpoint(tmp_path / "e3", tiny_model("llama", seed=5, layers=4))
    cfg = json.loads((tmp_path / "e3" / "config.json").read_text())
    (tmp_path / "e3" / "config.json").write_text(json.dumps({**cfg, "draft_vocab_size": 32}))
    with pytest.raises(ValueError, match="draft_vocab_size 32"):
        load_eagle3_checkpoint(tmp_path / "e3", target)


def edit(folder, config=None, drop=(), weights=None, remove=()):
    """Change a written checkpoint: config keys (a dotted key reaches into a nested dict), weights."""
    cfg = json.loads((folder / "config.json").read_text())
    for key, value in (config or {}).items():
        *path, last = key.split(".")
        node = cfg
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    for key in drop:
        *path, last = key.split(".")
        node = cfg
        for part in path:
            node = node[part]
        node.pop(last, None)
    (folder / "config.json").write_text(json.dumps(cfg))
    w = load_file(str(folder / "model.safetensors"))
    w.update(weights or {})
    for name in remove:
        w.pop(name)
    save_file(w, str(folder / "model.safetensors"))


EAGLE3_REFUSED = [
    ({"tie_word_embeddings": True}, "tie_word_embeddings"),
    ({"norm_before_residual": True}, "norm_before_residual"),
    ({"attention_bias": True}, "attention_bias"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"eagle_config.use_aux_hidden_state": False}, "use_aux_hidden_state"),
    ({"fc_norm": True}, "fc_norm"),
    ({"logit_scale": 0.5}, "logit_scale"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "yarn"),
    ({"eagle_aux_hidden_state_layer_ids": [0, 1, 2]}, r"id 0.*embedding"),  # vLLM id 0: no layer output
    ({"eagle_aux_hidden_state_layer_ids": [1, 2, 4], "eagle_config.eagle_aux_hidden_state_layer_ids": [0, 1, 3]},
     "last layer"),
    ({"eagle_aux_hidden_state_layer_ids": [1, 2], "eagle_config.eagle_aux_hidden_state_layer_ids": [0, 1]},
     "exactly 3"),
]


@pytest.mark.parametrize("change,message", EAGLE3_REFUSED)
def test_eagle3_import_refuses_what_it_cannot_run(change, message, tmp_path):
    target = tiny_model("llama", seed=2, layers=4)
    export_eagle3_checkpoint(EagleHead(target, tap_layers=(0, 1, 2)), tmp_path / "e3")
    edit(tmp_path / "e3", config=change)
    with pytest.raises(ValueError, match=message):
        load_eagle3_checkpoint(tmp_path / "e3", target)


def test_eagle3_import_refuses_inconsistent_vocabulary_files(tmp_path):
    target = tiny_model("llama", seed=2, layers=4)
    head = EagleHead(target, tap_layers=(0, 1, 2))
    cases = [
        (dict(config={"draft_vocab_size": 8}, weights={"lm_head.weight": torch.zeros(8, 32, dtype=torch.float64)},
              remove=("d2t",)), "no d2t"),
        (dict(weights={"d2t": torch.ones(64, dtype=torch.long)}), "outside the vocabulary"),  # maps 63 to 64
        (dict(weights={"t2d": torch.zeros(64, dtype=torch.bool)}), "t2d"),
        (dict(weights={"embed_tokens.weight": torch.ones(64, 32, dtype=torch.float64)}), "embed_tokens"),
        (dict(weights={"mask_hidden": torch.zeros(96, dtype=torch.float64)}), "mask_hidden"),
    ]
    for i, (change, message) in enumerate(cases):
        export_eagle3_checkpoint(head, tmp_path / str(i))
        edit(tmp_path / str(i), **change)
        with pytest.raises(ValueError, match=message):
            load_eagle3_checkpoint(tmp_path / str(i), target)
    d2t = torch.zeros(64, dtype=torch.long)
    d2t[:2] = torch.tensor([1, 0])  # draft ids 0 and 1 both name target token 1
    export_eagle3_checkpoint(head, tmp_path / "dup")
    edit(tmp_path / "dup", weights={"d2t": d2t})
    with pytest.raises(ValueError, match="distinct"):
        load_eagle3_checkpoint(tmp_path / "dup", target)


def test_eagle3_export_refuses_taps_engines_cannot_capture(tmp_path):
    target = tiny_model("llama", seed=2, layers=4)
    with pytest.raises(ValueError, match="twice"):
        export_eagle3_checkpoint(EagleHead(target, tap_layers=(0, 1, 1)), tmp_path / "x")


DFLASH_REFUSED = [
    ({"layer_types": ["sliding_attention", "full_attention"], "sliding_window": 8}, "sliding"),
    ({"dflash_config.use_swa": True}, "sliding"),
    ({"is_neox_style": False}, "is_neox_style"),
    ({"rope_is_neox_style": False}, "rope_is_neox_style"),
    ({"attention_bias": True}, "attention_bias"),
    ({"architectures": ["DFlash2DraftModel"]}, "DFlash2DraftModel"),
    ({"dflash_config.output_multiplier": 0.5}, "output_multiplier"),
    ({"dflash_config.final_logit_softcapping": 20.0}, "final_logit_softcapping"),
    ({"dflash_config.input_embedding_scale": 2.0}, "input_embedding_scale"),
    ({"draft_vocab_size": 32}, "reduced"),
    ({"dflash_config.target_layer_ids": [2, 0]}, "ascending"),
    ({"dflash_config.target_layer_ids": [0, 0]}, "ascending"),
    ({"dflash_config.target_layer_ids": [0, 3]}, "last layer"),
    ({"is_causal": False}, r"is_causal.*causal_head"),
    ({"dflash_config.causal": False}, r"causal.*causal_head"),
    ({"eagle_aux_hidden_state_layer_ids": [2, 3]}, "eagle_aux_hidden_state_layer_ids"),
    ({"dflash_config.block_size": 8}, "block_size"),
    ({"rope_theta": None, "rope_parameters": None}, "rope_theta"),
]


@pytest.mark.parametrize("change,message", DFLASH_REFUSED)
def test_dflash_import_refuses_what_it_cannot_run(qwen, change, message, tmp_path):
    head = JetSpecHead(qwen, block_size=4, num_layers=2, mask_token_id=3, tap_layers=(0, 2))
    export_dflash_checkpoint(head, tmp_path / "df")
    edit(tmp_path / "df", config=change)
    with pytest.raises(ValueError, match=message):
        load_dflash_checkpoint(tmp_path / "df", qwen)


def test_dflash_import_refuses_a_head_without_qk_norms(qwen, tmp_path):
    export_dflash_checkpoint(JetSpecHead(qwen, block_size=4, mask_token_id=3, tap_layers=(0, 2)), tmp_path / "df")
    edit(tmp_path / "df", remove=("layers.0.self_attn.q_norm.weight", "layers.0.self_attn.k_norm.weight"))
    with pytest.raises(ValueError, match="q_norm"):
        load_dflash_checkpoint(tmp_path / "df", qwen)


def test_dflash_export_refuses_heads_the_layout_cannot_hold(qwen, tmp_path):
    ok = dict(block_size=4, mask_token_id=3, tap_layers=(0, 2))
    cases = [
        (JetSpecHead(qwen, **{**ok, "qk_norm": False}), "qk_norm"),
        (JetSpecHead(qwen, **{**ok, "direct_path": True}), "direct_path"),
        (JetSpecHead(qwen, draft_vocab=torch.arange(16), **ok), "reduced"),
        (JetSpecHead(qwen, **{**ok, "tap_layers": (0, 3)}), "last layer"),
        (JetSpecHead(qwen, **{**ok, "tap_layers": (1, 1)}), "twice"),
    ]
    for head, message in cases:
        with pytest.raises(ValueError, match=message):
            export_dflash_checkpoint(head, tmp_path / "x")
