"""drafters/parallel_net.py: the init_from_target switch (head layers start as the target's last layers).

On tiny float64 Llama and Qwen3 targets (tests/conftest.py). The copy is checked tensor by tensor
against the target's own modules, and end to end: a head started this way computes, for a block
row, exactly the target's last layer applied to that row's input (the two share every weight), which
a randomly started head does not (the negative control).
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from jetspec.drafters import DFlashHead, JetSpecHead


@pytest.mark.parametrize("family", ["llama", "qwen3"])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_layers_start_as_the_targets_last_layers(family, num_layers):
    target = tiny_model(family, seed=3, layers=3)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    head = JetSpecHead(target, block_size=4, num_layers=num_layers, init_from_target=True)
    layers = target.get_decoder().layers
    for i, mine in enumerate(head.net.layers):
        theirs = layers[3 - num_layers + i]
        assert torch.equal(mine.attn.q_proj.weight, theirs.self_attn.q_proj.weight)
        assert torch.equal(mine.attn.v_proj.weight, theirs.self_attn.v_proj.weight)
        assert torch.equal(mine.mlp.down_proj.weight, theirs.mlp.down_proj.weight)
        assert torch.equal(mine.input_norm.weight, theirs.input_layernorm.weight)
        assert torch.equal(mine.post_attn_norm.weight, theirs.post_attention_layernorm.weight)
        if family == "qwen3":
            assert torch.equal(mine.attn.k_norm.weight, theirs.self_attn.k_norm.weight)
        # a copy, not a shared tensor: training the head never moves the target
        assert mine.attn.q_proj.weight.data_ptr() != theirs.self_attn.q_proj.weight.data_ptr()
    assert torch.equal(head.net.norm.weight, target.get_decoder().norm.weight)
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())  # the target is unchanged


def run_last_layer(layer, x):
    """The head's decoder layer on rows x that see only themselves (no context, causal over x)."""
    n = x.shape[1]
    pos = torch.arange(n)[None]
    head_dim = layer.attn.head_dim
    inv = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    ang = torch.cat([pos[..., None] * inv] * 2, -1)
    mask = torch.full((n, n), float("-inf"), dtype=x.dtype).triu(1)[None, None]
    return layer(x, ang.cos(), ang.sin(), mask)


@pytest.mark.parametrize("init", [True, False])
def test_a_copied_layer_computes_what_the_targets_layer_computes(init):
    target = tiny_model("llama", seed=5, layers=2)
    head = DFlashHead(target, block_size=4, init_from_target=init)
    x = torch.randn(1, 6, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    pos = torch.arange(6)[None]
    theirs_layer = target.get_decoder().layers[-1]
    rope = target.get_decoder().rotary_emb(x, pos)
    theirs = theirs_layer(x, attention_mask=None, position_ids=pos, position_embeddings=rope)
    theirs = theirs[0] if isinstance(theirs, tuple) else theirs
    mine = run_last_layer(head.net.layers[0], x)
    close = torch.allclose(mine, theirs, atol=1e-10)
    assert close is init  # a random head differs (negative control)


def test_a_head_of_another_width_is_refused():
    target = tiny_model("llama", seed=3)
    with pytest.raises(ValueError, match="init_from_target copies the target's layers: it needs hidden_size = "
                                         "the target's 32, got 16"):
        JetSpecHead(target, block_size=4, hidden_size=16, num_heads=2, num_kv_heads=1, init_from_target=True)


def test_more_head_layers_than_the_target_has_are_refused():
    target = tiny_model("llama", seed=3, layers=2)
    with pytest.raises(ValueError, match="init_from_target"):
        JetSpecHead(target, block_size=4, num_layers=3, init_from_target=True)


def test_a_head_parameter_the_target_lacks_is_named():
    target = tiny_model("llama", seed=3)  # Llama layers have no q/k norms
    with pytest.raises(ValueError, match=r"head layer 0 attn.q_norm.weight \(8,\) has no counterpart in the "
                                         r"target's layer \(missing\)"):
        JetSpecHead(target, block_size=4, qk_norm=True, init_from_target=True)
