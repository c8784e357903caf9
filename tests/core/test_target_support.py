"""RoPE kinds and sliding windows: exact where supported, refused up front where not (docs/design.md §6.10).

Every supported config is checked three ways in float64 over many seeds: Hugging Face ``generate``
(the independent reference), jetspec's plain decoding and speculative decoding with trees that
reach several positions ahead (a drafter that knows the reference continuation, with wrong
siblings). The targets are sharpened (lm_head x 30) so a changed rotation or window changes the
argmax; the negative controls show the configs matter on these prompts.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from jetspec import SpeculativeDecoder, TargetModel, autoregressive_generate
from jetspec.core.batched import left_pad
from jetspec.core.interfaces import Drafter
from jetspec.core.types import DraftInput, DraftOutput
from jetspec.trees import BestFirstBuilder

VOCAB, PROMPT, NEW, SEEDS = 64, 10, 30, range(8)
FAMILIES = {"llama": (LlamaConfig, LlamaForCausalLM), "mistral": (MistralConfig, MistralForCausalLM),
            "qwen2": (Qwen2Config, Qwen2ForCausalLM)}
THETA = {"rope_theta": 10000.0}
ROPE = {  # every rope type of transformers' ROPE_INIT_FUNCTIONS, plus the default (thresholds inside the run)
    "default": {"rope_type": "default", **THETA},
    "linear": {"rope_type": "linear", "factor": 4.0, **THETA},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16, **THETA},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, **THETA},
    "proportional": {"rope_type": "proportional", "factor": 2.0, "partial_rotary_factor": 0.5, **THETA},
    "dynamic": {"rope_type": "dynamic", "factor": 4.0, **THETA},
    "longrope": {"rope_type": "longrope", "short_factor": [1.0] * 4, "long_factor": [4.0] * 4, "factor": 4.0,
                 "original_max_position_embeddings": 16, **THETA},
}
REFUSED = ("dynamic", "longrope")


def sharp_target(family: str = "llama", seed: int = 0, **config):
    """A 2-layer random target in float64 with its lm_head scaled by 30 (peaked laws, no argmax ties)."""
    cfg_cls, model_cls = FAMILIES[family]
    kw = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = model_cls(cfg_cls(**{**kw, **config})).double().eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(30)
    return model


def hf_greedy(model, ids: torch.Tensor, n: int = NEW) -> torch.Tensor:
    return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                          eos_token_id=None, pad_token_id=0)


class ReferenceDrafter(Drafter):
    """Drafts the known continuation at depth 0.. and a wrong sibling beside it: deep trees whose
    accepted paths are long, so every verify reaches several positions past the cache."""

    def __init__(self, *references: torch.Tensor) -> None:
        self.references = [r.flatten().tolist() for r in references]  # one per batch row
        self.vocab_size = VOCAB

    def draft(self, inp: DraftInput) -> DraftOutput:
        reference, t = self.references[inp.row], inp.tokens.numel()
        toks = []
        for d in range(inp.depth):
            right = reference[t + d] if t + d < len(reference) else 0
            toks.append([right, (right + 1) % VOCAB][: inp.width])
        lps = torch.log(torch.tensor([[0.7, 0.3][: inp.width]] * inp.depth))
        return DraftOutput(depth_tokens=torch.tensor(toks), depth_logprobs=lps.float())


def prompt(seed: int, length: int = PROMPT) -> torch.Tensor:
    return torch.randint(0, VOCAB, (1, length), generator=torch.Generator().manual_seed(seed))


def assert_three_ways(model, engine: str = "auto") -> None:
    for seed in SEEDS:
        ids = prompt(seed)
        ref = hf_greedy(model, ids)
        target = TargetModel(model, engine=engine)
        plain = autoregressive_generate(target, ids, NEW).sequences
        dec = SpeculativeDecoder(target, ReferenceDrafter(ref), BestFirstBuilder(10, 2, 5))
        spec = dec.generate(ids, max_new_tokens=NEW)
        assert torch.equal(plain, ref), f"seed {seed}: plain decoding differs from Hugging Face"
        assert torch.equal(spec.sequences, ref), f"seed {seed}: speculative decoding differs from Hugging Face"
        assert max(spec.accepted_lengths) >= 4  # the trees did reach ahead


def test_every_rope_type_is_covered():
    assert set(ROPE_INIT_FUNCTIONS) | {"default"} == set(ROPE)


@pytest.mark.parametrize("rope", [r for r in ROPE if r not in REFUSED])
def test_static_rope_types_are_exact(rope):
    assert_three_ways(sharp_target(rope_parameters=ROPE[rope]))


@pytest.mark.parametrize("rope", REFUSED)
@pytest.mark.parametrize("engine", ["auto", "hf"])
def test_forward_dependent_rope_is_refused_with_the_reason(rope, engine):
    model = sharp_target(rope_parameters=ROPE[rope], max_position_embeddings=16 if rope == "dynamic" else 64)
    with pytest.raises(ValueError, match=f"rope_type '{rope}' recomputes its RoPE frequencies"):
        TargetModel(model, engine=engine)
    with pytest.raises(ValueError, match="recomputes"):
        autoregressive_generate(model, prompt(0), 4)


@pytest.mark.parametrize("rope", REFUSED)
def test_why_refused_a_chain_forward_rotates_differently_than_single_steps(rope):
    """The reason for the refusal, measured on Hugging Face's own forward: four tokens in one forward
    give other logits than four one-token steps after the same prefix (default RoPE: equal)."""
    def gap(model) -> float:
        ids = prompt(1, 20)
        with torch.no_grad():
            out = model(input_ids=ids[:, :15], use_cache=True)
            chain = model(input_ids=ids[:, 15:], cache=out.cache, use_cache=True).logits[0]
            out = model(input_ids=ids[:, :15], use_cache=True)
            cache, steps = out.cache, []
            for i in range(15, 19):
                o = model(input_ids=ids[:, i: i + 1], cache=cache, use_cache=True)
                cache = o.cache
                steps.append(o.logits[0, -1])
        return float((chain[:4] - torch.stack(steps)).abs().max())

    assert gap(sharp_target(rope_parameters=ROPE["default"])) < 1e-9
    assert gap(sharp_target(rope_parameters=ROPE[rope], max_position_embeddings=16 if rope == "dynamic" else 64)) > 1e-3


# ----------------------------------------------------------------------------- sliding windows
WINDOWED = {
    "mistral-default": dict(family="mistral"),  # HF's default window, 4096: longer than the sequence
    "mistral-window-7": dict(family="mistral", sliding_window=7),
    "qwen2-mixed-window-5": dict(family="qwen2", use_sliding_window=True, sliding_window=5, max_window_layers=1),
}


@pytest.mark.parametrize("name", sorted(WINDOWED))
@pytest.mark.parametrize("engine", ["auto", "hf"])
def test_sliding_window_targets_are_exact(name, engine):
    assert_three_ways(sharp_target(**WINDOWED[name]), engine)


def test_a_short_window_matters_on_these_prompts():
    """Negative control: the window-7 model decodes differently from the same weights without a window."""
    windowed, full = sharp_target("mistral", sliding_window=7), sharp_target("mistral", sliding_window=None)
    assert any(not torch.equal(hf_greedy(windowed, prompt(s)), hf_greedy(full, prompt(s))) for s in SEEDS)


@pytest.mark.parametrize("name", ["mistral-window-7", "qwen2-mixed-window-5"])
def test_sliding_window_batches_are_exact(name):
    """Left-padded batches, plain and speculative: each row equals Hugging Face on its prompt alone."""
    model = sharp_target(**WINDOWED[name])
    prompts = [prompt(s, length)[0] for s, length in zip(SEEDS, (3, 9, 14, 6))]
    refs = [hf_greedy(model, p[None])[0] for p in prompts]
    ids, mask = left_pad(prompts, 0)
    plain = autoregressive_generate(model, ids, NEW, attention_mask=mask, pad_token_id=0).sequences
    spec = SpeculativeDecoder(model, ReferenceDrafter(*refs), BestFirstBuilder(10, 2, 5)).generate(
        ids, max_new_tokens=NEW, attention_mask=mask, pad_token_id=0)
    for r, ref in enumerate(refs):
        assert torch.equal(plain[r, ids.shape[1] - len(prompts[r]):], ref), f"plain row {r}"
        assert torch.equal(spec.sequences[r, ids.shape[1] - len(prompts[r]):], ref), f"speculative row {r}"


def test_unsupported_attention_layer_types_are_refused():
    model = sharp_target()
    model.config.layer_types = ["full_attention", "chunked_attention"]
    with pytest.raises(ValueError, match="chunked_attention"):
        TargetModel(model)
