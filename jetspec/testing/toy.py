"""A tiny target with learnable next-token laws, for tests, tutorials and quick experiments.

A randomly initialised LM (weights with std 0.02) has an almost uniform next-token distribution:
its argmax is decided by noise-level logit gaps and a drafter has nothing to learn. Scaling the
frozen lm_head by 30 makes the laws peaked, like a trained LM's, while staying tiny (2 layers,
H 64, V 128) so a head trains in seconds on a CPU.
"""

from __future__ import annotations

import torch


def peaked_tiny_target(seed: int = 0, sharpen: float = 30.0) -> torch.nn.Module:
    """A 2-layer Llama (H 64, V 128, GQA 4/2) in fp32 with its lm_head scaled by ``sharpen``.

    Seeds the global torch RNG with ``seed`` first, so the weights (and whatever the caller draws
    from the global RNG next) are reproducible.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpen)
    return model


def mean_tau(target, drafter, prompts, budget: int = 24, width: int = 4, depth: int = 6,
             max_new_tokens: int = 32) -> float:
    """Pooled tau of best-first speculative decoding over ``prompts`` (1-D token tensors)."""
    from jetspec.core.decoding import SpeculativeDecoder
    from jetspec.trees import BestFirstBuilder

    dec = SpeculativeDecoder(target, drafter, BestFirstBuilder(budget=budget, width=width, depth=depth))
    results = [dec.generate(p[None], max_new_tokens=max_new_tokens) for p in prompts]
    return sum(sum(r.accepted_lengths) for r in results) / sum(len(r.accepted_lengths) for r in results)
