"""The processed target distribution p matches Hugging Face's logits warpers (temperature -> top-k -> top-p)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from jetspec.core.sampling import SamplingConfig, TorchRng, process_logits


@given(st.integers(2, 50), st.floats(0.1, 3.0), st.one_of(st.none(), st.integers(1, 60)),
       st.one_of(st.none(), st.floats(0.05, 1.0)), st.integers(0, 1000))
def test_matches_hugging_face_warpers(vocab, temperature, top_k, top_p, seed):
    logits = torch.randn(3, vocab, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3
    ours = process_logits(logits, SamplingConfig(temperature, top_k, top_p))
    x = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_k is not None:
        x = TopKLogitsWarper(top_k)(None, x)
    if top_p is not None:
        x = TopPLogitsWarper(top_p)(None, x)
    theirs = torch.softmax(x, -1)
    assert torch.allclose(ours, theirs, atol=1e-12)


def test_greedy_is_one_hot_argmax():
    logits = torch.tensor([[0.1, 2.0, -1.0]])
    assert process_logits(logits, SamplingConfig(0.0)).tolist() == [[0.0, 1.0, 0.0]]


@pytest.mark.parametrize("kw, name", [(dict(temperature=-0.1), "temperature"), (dict(top_k=0), "top_k"),
                                      (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p")])
def test_bad_sampling_arguments(kw, name):
    with pytest.raises(ValueError, match=name):
        SamplingConfig(**kw)


@pytest.mark.parametrize("kw, name", [(dict(temperature=1.0, top_k=2.5), "top_k"), (dict(top_k=True), "top_k"),
                                      (dict(top_k="3"), "top_k"), (dict(temperature="1"), "temperature"),
                                      (dict(temperature=float("inf")), "temperature"),
                                      (dict(top_p="0.5"), "top_p"), (dict(top_p=float("nan")), "top_p")])
def test_sampling_argument_types_are_checked_at_construction(kw, name):
    """top_k=2.5 used to pass and fail only at the first sampling step."""
    with pytest.raises(ValueError, match=name):
        SamplingConfig(**kw)


def test_numpy_and_integral_sampling_arguments_are_accepted():
    import numpy as np

    cfg = SamplingConfig(np.float32(0.5), top_k=np.int64(3), top_p=np.float64(0.9))
    assert (cfg.top_k, type(cfg.top_k)) == (3, int) and cfg.temperature == 0.5 and cfg.top_p == 0.9
    assert SamplingConfig(1, top_k=4).temperature == 1.0


def test_torch_rng_follows_the_generator():
    probs = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    a = [TorchRng(torch.Generator().manual_seed(3)).categorical(probs) for _ in range(3)]
    b = [TorchRng(torch.Generator().manual_seed(3)).categorical(probs) for _ in range(3)]
    assert a == b
    rng = TorchRng(torch.Generator().manual_seed(0))
    draws = [rng.categorical(probs) for _ in range(4000)]
    freq = torch.bincount(torch.tensor(draws), minlength=3).double() / 4000
    assert torch.allclose(freq, probs, atol=0.03)
    assert rng.bernoulli(1.0) and not rng.bernoulli(0.0)
