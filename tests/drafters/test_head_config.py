"""The config rules both head kinds share (drafters/head_config.py): one way to fill from the target.

Before (issue 24, item 7) EAGLE borrowed the parallel heads' rules by building a throw-away
``HeadConfig(block_size=2, hidden_size=None)``; ``test_eagle_builds_no_parallel_config`` fails on
that code (it makes ``HeadConfig`` unbuildable and resolves an ``EagleConfig``). The expected
values below are read from the tiny targets' Hugging Face configs, not from ``from_target``.
"""

from __future__ import annotations

import pytest
from conftest import tiny_model

from jetspec.drafters.eagle_head import EagleConfig
from jetspec.drafters.head_config import from_target
from jetspec.drafters.parallel_net import HeadConfig

SHARED = ("tap_layers", "num_heads", "num_kv_heads", "head_dim", "intermediate_size", "rms_norm_eps", "rope_theta",
          "target_hidden_size", "target_vocab_size", "target_num_layers")


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def target(request):
    return tiny_model(request.param, layers=4)


def test_both_configs_fill_the_shared_fields_alike(target):
    c = target.config
    parallel = HeadConfig(tap_layers=(1, 3)).resolved(target)
    eagle = EagleConfig(tap_layers=(1, 3)).resolved(target)
    assert {f: getattr(parallel, f) for f in SHARED} == {f: getattr(eagle, f) for f in SHARED}
    assert (eagle.num_heads, eagle.num_kv_heads, eagle.head_dim) == (4, 2, 8)  # tiny_config: 32 wide, 4 heads
    assert eagle.intermediate_size == c.intermediate_size and eagle.rms_norm_eps == c.rms_norm_eps
    assert eagle.target_hidden_size == c.hidden_size and eagle.target_num_layers == 4
    assert parallel.hidden_size == c.hidden_size and not hasattr(eagle, "hidden_size")


def test_each_config_keeps_its_own_rules(target):
    has_qk_norm = target.config.model_type == "qwen3"
    assert HeadConfig().resolved(target).qk_norm is has_qk_norm  # as the target has it
    assert EagleConfig().resolved(target).qk_norm is False  # the EAGLE-3 layout, whatever the target
    assert HeadConfig(hidden_size=16).resolved(target).intermediate_size == target.config.intermediate_size // 2


@pytest.mark.parametrize("field, what", [("target_vocab_size", "vocab size"), ("target_hidden_size", "hidden size"),
                                         ("target_num_layers", "number of layers")])
def test_a_foreign_target_is_refused_by_both(target, field, what):
    for config in (HeadConfig(**{field: 7}), EagleConfig(**{field: 7})):
        with pytest.raises(ValueError, match=f"target mismatch.*{what} 7"):
            config.resolved(target)
    assert from_target(HeadConfig(), target, (0,), None)["target_num_layers"] == 4  # negative control


def test_taps_outside_the_target_are_refused(target):
    with pytest.raises(ValueError, match=r"tap_layers \(1, 4\)"):
        EagleConfig(tap_layers=(1, 4)).resolved(target)
    with pytest.raises(ValueError, match="tap_layers"):
        HeadConfig(tap_layers=(4,)).resolved(target)


def test_eagle_builds_no_parallel_config(target, monkeypatch):
    def refuse(self):
        raise AssertionError("EagleConfig.resolved built a HeadConfig")

    monkeypatch.setattr(HeadConfig, "__post_init__", refuse)
    assert EagleConfig(ttt_steps=3).resolved(target).target_vocab_size == target.config.vocab_size
