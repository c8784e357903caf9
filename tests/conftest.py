"""Shared test set-up: hypothesis profiles, the Triton interpreter, tiny random targets.

TRITON_INTERPRET must be set before any @triton.jit function is defined or launched, so it is set
here, at import time of the test session.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

# Shapes that can fail: every annotation in the package (jaxtyping shapes and dtypes, and plain
# types) is checked at call time, by beartype, for the whole test session. The hook must be
# installed before anything imports jetspec (conftest runs first); it matches on module names, so
# the folder mapping of pyproject.toml (drafters/ installed as jetspec.drafters, ...) is covered by
# the one prefix "jetspec". The PEP 484 numeric tower lets an int stand where a float is annotated,
# as Python's typing rules say. Entry points that validate their own arguments with errors naming
# them are marked ``@no_type_check`` (see jetspec/__init__.py), so the tests see the errors users see.
from jaxtyping import install_import_hook  # noqa: E402

install_import_hook("jetspec", "beartype.beartype(conf=beartype.BeartypeConf(is_pep484_tower=True))")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("dev", max_examples=10, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))

# One intra-op thread: the test models are tiny (threads only add sync cost), pytest-xdist workers
# already fill the cores, and oversubscribed OpenMP threads slowed tiny forwards ~100x here.
torch.set_num_threads(1)
torch.set_flush_denormal(True)


@pytest.fixture(autouse=True)
def one_thread():
    """Every test starts with one intra-op thread and leaves the count as it found it (some set more)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(family: str = "llama", vocab: int = 64, hidden: int = 32, layers: int = 2, heads: int = 4,
                kv_heads: int = 2):
    """A small Llama or Qwen3 config (GQA) that builds in milliseconds."""
    from transformers import LlamaConfig, Qwen3Config

    common = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=512,
                  tie_word_embeddings=False)
    if family == "llama":
        return LlamaConfig(**common)
    if family == "qwen3":
        return Qwen3Config(head_dim=hidden // heads, **common)
    raise ValueError(family)


def tiny_model(family: str = "llama", seed: int = 0, dtype=torch.float64, **kw):
    """A random-weight causal LM in float64: ties in argmax are then practically impossible."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **kw))
    return model.to(dtype).eval()


@pytest.fixture(scope="session")
def llama64():
    return tiny_model("llama", seed=0)


@pytest.fixture(scope="session")
def qwen64():
    return tiny_model("qwen3", seed=1)


# Helpers shared by the tests of several layers (regenerate, the CLI, loading, benchmarks, training).
def tiny_tokenizer():
    """A 64-token word-level tokenizer with a chat template (ids: 0 pad, 1 bos, 2 eos, 3 unk)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<s>", "</s>", "<unk>", "user", "assistant", ":", "."] + [f"w{i}" for i in range(56)]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>")
    tok.chat_template = ("{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
                         "{% if add_generation_prompt %}<s> assistant : {% endif %}")
    return tok


def tiny_llama(seed: int = 0, dtype=torch.float64):
    """A tiny Llama whose special ids match tiny_tokenizer (1 bos, 2 eos, 0 pad), to save with it as a folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return LlamaForCausalLM(cfg).to(dtype).eval()


@pytest.fixture(scope="session")
def target_dir(tmp_path_factory):
    """A tiny random Llama and its tokenizer saved in a folder, loadable by a command's ``--target``."""
    path = tmp_path_factory.mktemp("target")
    tiny_llama().save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def random_seqs(n: int, vocab: int = 64, seed: int = 0, lo: int = 8, hi: int = 20) -> list[dict]:
    """n random token sequences of lo..hi-1 tokens, the response starting at a third of each."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi, (n,), generator=gen).tolist()
    return [{"input_ids": torch.randint(0, vocab, (t,), generator=gen).tolist(), "response_start": t // 3}
            for t in lengths]
