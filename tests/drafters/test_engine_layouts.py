"""Exported and imported heads against the engines' own reading of the layouts.

``layout_reference`` computes, without jetspec, the draft distribution an engine (vLLM, SGLang,
z-lab's DFlash) derives from a checkpoint folder and a target. Every test here puts jetspec's
head next to it: an export must run in each engine as it ran in jetspec, and an import must run
in jetspec as it runs in the engine that wrote it, for default and non-default tap layers.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_model
from layout_reference import dflash_default_layer_ids, dflash_reference, eagle3_reference, read
from safetensors.torch import save_file

from jetspec import SpeculativeDecoder
from jetspec.core.decoding import autoregressive_generate
from jetspec.core.target import Teacher
from jetspec.core.types import DraftInput
from jetspec.drafters import DFlashHead, EagleHead, JetSpecHead
from jetspec.drafters.engine_layouts import (
    export_dflash_checkpoint,
    export_eagle3_checkpoint,
    load_dflash_checkpoint,
    load_eagle3_checkpoint,
)
from jetspec.trees import BestFirstBuilder

LAYERS = 8  # engine defaults: inputs of layers (2, 4, 5) = outputs of layers (1, 3, 4)


@pytest.fixture(scope="module")
def llama8():
    return tiny_model("llama", seed=3, layers=LAYERS)


@pytest.fixture(scope="module")
def qwen8():
    return tiny_model("qwen3", seed=4, layers=LAYERS)


def shake(head, seed: int = 0):
    """Weights far from their init (norms != 1, larger projections), so every mistake shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in head.net.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3
            p.copy_(1 + noise if "norm" in name else noise)
    return head


def jetspec_eagle_rows(head, ids, child: int):
    """jetspec's root and depth-2 (after ``child``) log-probs, in target-vocabulary terms."""
    taps = Teacher(head.target_model, head.tap_layers)(ids).taps[0, :-1]
    rows = head.tree_logprobs(ids[0], taps, torch.tensor([child]), torch.tensor([-1]))
    full = torch.full((2, head.vocab_size), float("-inf"), dtype=torch.float64)
    full[:, head.to_target_ids(torch.arange(rows.shape[-1]))] = rows.double()
    return full


def ids_for(seed: int, n: int = 12, vocab: int = 64):
    return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------ EAGLE-3
@pytest.mark.parametrize("taps", [None, (0, 2, 6), (5, 0, 2)])
def test_eagle3_export_runs_the_trained_layers_in_vllm_and_sglang(llama8, taps, tmp_path):
    head = shake(EagleHead(llama8, tap_layers=taps))
    export_eagle3_checkpoint(head, tmp_path / "e3")
    cfg, _ = read(tmp_path / "e3")
    trained = sorted(head.tap_layers)
    if taps is None:  # the engines' default capture is the head's: the config names no layers
        assert "eagle_aux_hidden_state_layer_ids" not in cfg
        assert "eagle_aux_hidden_state_layer_ids" not in cfg["eagle_config"]
    else:  # vLLM numbering on top (input of layer id), SGLang's in eagle_config (output of layer id)
        assert cfg["eagle_aux_hidden_state_layer_ids"] == [t + 1 for t in trained]
        assert cfg["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == trained
    ids, child = ids_for(1), 17
    want = jetspec_eagle_rows(head, ids, child)
    for engine in ("vllm", "sglang"):
        got = eagle3_reference(tmp_path / "e3", llama8, ids, engine, child)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9, msg=engine)
    loaded = load_eagle3_checkpoint(tmp_path / "e3", llama8)
    assert loaded.tap_layers == tuple(trained)
    torch.testing.assert_close(jetspec_eagle_rows(loaded, ids, child), want, rtol=1e-9, atol=1e-9)


def write_eagle3_folder(folder, head, ids_key: dict, lm_head=None, d2t=None, extra: dict = None):
    """An EAGLE-3 folder as SpecForge/SGLang or vLLM tooling writes one, from a head's weights."""
    export_eagle3_checkpoint(head, folder)
    cfg, w = read(folder)
    cfg.pop("eagle_aux_hidden_state_layer_ids", None)
    cfg.pop("jetspec")
    cfg["eagle_config"] = {"use_aux_hidden_state": True}
    for where, value in ids_key.items():
        (cfg if where == "top" else cfg["eagle_config"])["eagle_aux_hidden_state_layer_ids"] = value
    w["embed_tokens.weight"] = head.target_model.get_input_embeddings().weight.detach().clone()
    if lm_head is not None:
        vocab = cfg["vocab_size"]
        w["lm_head.weight"], w["d2t"] = lm_head, d2t
        t2d = torch.zeros(vocab, dtype=torch.bool)
        t2d[torch.arange(d2t.numel()) + d2t] = True
        w["t2d"] = t2d
        cfg["draft_vocab_size"] = d2t.numel()
    cfg.update(extra or {})
    (folder / "config.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in w.items()}, str(folder / "model.safetensors"))


@pytest.mark.parametrize("engine,key,ids,taps", [
    ("sglang", "nested", [0, 2, 6], (0, 2, 6)),  # SpecForge / SGLang: output of layer id
    ("vllm", "top", [1, 3, 7], (0, 2, 6)),  # vLLM: input of layer id
    ("sglang", None, None, (1, 3, 4)),  # no ids: both engines' default
])
def test_eagle3_import_reads_each_engines_numbering(llama8, engine, key, ids, taps, tmp_path):
    head = shake(EagleHead(llama8, tap_layers=taps), seed=2)
    write_eagle3_folder(tmp_path / "e3", head, {key: ids} if key else {})
    loaded = load_eagle3_checkpoint(tmp_path / "e3", llama8)
    assert loaded.tap_layers == taps
    x = ids_for(2)
    want = eagle3_reference(tmp_path / "e3", llama8, x, engine, 5)
    torch.testing.assert_close(jetspec_eagle_rows(loaded, x, 5), want, rtol=1e-9, atol=1e-9)


def test_eagle3_import_refuses_keys_that_disagree(llama8, tmp_path):
    head = EagleHead(llama8, tap_layers=(0, 2, 6))
    write_eagle3_folder(tmp_path / "e3", head, {"top": [1, 3, 7], "nested": [1, 3, 7]})
    with pytest.raises(ValueError, match=r"eagle_aux_hidden_state_layer_ids.*\[1, 3, 7\].*\[1, 3, 7\]"):
        load_eagle3_checkpoint(tmp_path / "e3", llama8)
    write_eagle3_folder(tmp_path / "ok", head, {"top": [1, 3, 7], "nested": [0, 2, 6]})  # agree
    assert load_eagle3_checkpoint(tmp_path / "ok", llama8).tap_layers == (0, 2, 6)


def test_eagle3_reduced_vocabulary_head_loads_drafts_and_exports(llama8, tmp_path):
    head = shake(EagleHead(llama8, tap_layers=(1, 3, 4)), seed=3)
    gen = torch.Generator().manual_seed(4)
    vocab_ids = torch.randperm(64, generator=gen)[:40].sort().values  # a 40-token draft vocabulary
    own = torch.randn(40, 32, generator=gen, dtype=torch.float64)  # its own trained lm_head
    write_eagle3_folder(tmp_path / "e3", head, {}, lm_head=own, d2t=vocab_ids - torch.arange(40))
    loaded = load_eagle3_checkpoint(tmp_path / "e3", llama8)
    assert torch.equal(loaded.to_target_ids(torch.arange(40)), vocab_ids)
    x = ids_for(5)
    child = int(vocab_ids[7])
    want = eagle3_reference(tmp_path / "e3", llama8, x, "vllm", child)
    torch.testing.assert_close(eagle3_reference(tmp_path / "e3", llama8, x, "sglang", child), want)
    torch.testing.assert_close(jetspec_eagle_rows(loaded, x, child), want, rtol=1e-9, atol=1e-9)
    # Drafting names target tokens, all inside the draft vocabulary, best first as the engine ranks them.
    taps = Teacher(llama8, loaded.tap_layers)(x).taps[0, :-1]
    out = loaded.draft(DraftInput(tokens=x[0], depth=1, width=3, budget=8, taps=taps))
    assert out.node_tokens.tolist() == want[0].topk(3).indices.tolist()
    # jetspec's own format keeps the vocabulary and its lm_head.
    loaded.save_pretrained(tmp_path / "own")
    again = EagleHead.from_pretrained(tmp_path / "own", llama8)
    torch.testing.assert_close(jetspec_eagle_rows(again, x, child), want, rtol=1e-9, atol=1e-9)
    # Out again: the same vocabulary, lm_head and mapping; and decoding with it stays lossless.
    export_eagle3_checkpoint(loaded, tmp_path / "again")
    cfg, w = read(tmp_path / "again")
    _, w0 = read(tmp_path / "e3")
    assert cfg["draft_vocab_size"] == 40
    for name in ("lm_head.weight", "d2t", "t2d"):
        assert torch.equal(w[name], w0[name]), name
    # ... and jetspec reads its own export of such a head back (its lm_head is the head's, not the target's).
    reread = load_eagle3_checkpoint(tmp_path / "again", llama8)
    torch.testing.assert_close(jetspec_eagle_rows(reread, x, child), want, rtol=1e-9, atol=1e-9)
    prompt = ids_for(6, n=6)
    spec = SpeculativeDecoder(llama8, loaded, BestFirstBuilder(budget=8, width=2, depth=3)).generate(prompt, 12)
    assert torch.equal(spec.sequences, autoregressive_generate(llama8, prompt, 12).sequences)


# ------------------------------------------------------------------------------------------ DFlash
def jetspec_block(head, ids, depth):
    taps = Teacher(head.target_model, head.tap_layers)(ids).taps[0, :-1]
    return torch.log_softmax(head.draft_logits(ids[0], taps, 0, depth=depth).double(), -1)


@pytest.mark.parametrize("cls", [JetSpecHead, DFlashHead])
@pytest.mark.parametrize("taps", [None, (0, 2, 6), (6, 0, 3)])
def test_dflash_export_matches_the_engines_forward(qwen8, cls, taps, tmp_path):
    head = shake(cls(qwen8, block_size=5, num_layers=2, mask_token_id=7, tap_layers=taps), seed=5)
    export_dflash_checkpoint(head, tmp_path / "df")
    cfg, _ = read(tmp_path / "df")
    causal = cls is JetSpecHead
    assert (cfg["is_causal"], cfg["dflash_config"]["causal"], cfg["dflash_config"]["causal_head"]) == (causal,) * 3
    assert cfg["layer_types"] == ["full_attention"] * 2
    assert cfg["max_position_embeddings"] == qwen8.config.max_position_embeddings
    assert cfg["dflash_config"]["target_layer_ids"] == sorted(head.tap_layers)  # engines concatenate in layer order
    x = ids_for(7)
    want = jetspec_block(head, x, 4)
    torch.testing.assert_close(dflash_reference(tmp_path / "df", qwen8, x, 4), want, rtol=1e-9, atol=1e-9)
    loaded = load_dflash_checkpoint(tmp_path / "df", qwen8)
    assert type(loaded) is cls
    torch.testing.assert_close(jetspec_block(loaded, x, 4), want, rtol=1e-9, atol=1e-9)
    # The mask matters: read with the other causality the same file drafts something else.
    cfg["is_causal"] = not causal
    (tmp_path / "df" / "config.json").write_text(json.dumps(cfg))
    assert not torch.allclose(dflash_reference(tmp_path / "df", qwen8, x, 4), want, atol=1e-6)


@pytest.mark.parametrize("draft_layers", [1, 2, 3])
def test_dflash_import_without_layer_ids_uses_the_published_rule(qwen8, draft_layers, tmp_path):
    rule = dflash_default_layer_ids(LAYERS, draft_layers)  # [4], [1, 5], [1, 3, 5]
    head = shake(DFlashHead(qwen8, block_size=4, num_layers=draft_layers, mask_token_id=3, tap_layers=tuple(rule)))
    export_dflash_checkpoint(head, tmp_path / "df")
    cfg, _ = read(tmp_path / "df")
    del cfg["dflash_config"]["target_layer_ids"]  # as SpecForge's DFlash configs ship
    (tmp_path / "df" / "config.json").write_text(json.dumps(cfg))
    loaded = load_dflash_checkpoint(tmp_path / "df", qwen8)
    assert loaded.tap_layers == tuple(rule)
    x = ids_for(8)
    torch.testing.assert_close(jetspec_block(loaded, x, 3), dflash_reference(tmp_path / "df", qwen8, x, 3),
                               rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("flags,cls", [
    ({"is_causal": True}, JetSpecHead), ({"causal": True}, JetSpecHead),
    ({"is_causal": False, "causal": False}, DFlashHead), ({}, DFlashHead),
])
def test_dflash_import_reads_vllms_causal_flags(qwen8, flags, cls, tmp_path):
    head = shake(JetSpecHead(qwen8, block_size=4, mask_token_id=3, tap_layers=(1, 5)))
    export_dflash_checkpoint(head, tmp_path / "df")
    cfg, _ = read(tmp_path / "df")
    for name in ("is_causal",):
        cfg.pop(name)
    for name in ("causal", "causal_head"):
        cfg["dflash_config"].pop(name)
    if "is_causal" in flags:
        cfg["is_causal"] = flags["is_causal"]
    if "causal" in flags:
        cfg["dflash_config"]["causal"] = flags["causal"]
    (tmp_path / "df" / "config.json").write_text(json.dumps(cfg))
    loaded = load_dflash_checkpoint(tmp_path / "df", qwen8)
    assert type(loaded) is cls
    x = ids_for(9)
    torch.testing.assert_close(jetspec_block(loaded, x, 3), dflash_reference(tmp_path / "df", qwen8, x, 3),
                               rtol=1e-9, atol=1e-9)
