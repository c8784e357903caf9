"""The how-to page's code runs as written, in order, and its parts stay lossless.

docs/howto.md shows how to bring a model, a drafter, a tree builder and a verifier. Its Python
blocks are executed here one after another in one namespace (the first block's SmolLM2 is replaced
by a tiny random Llama, so the test needs no model download); each block asserts its own claims,
and the test checks the parts it defined against plain decoding once more.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import tiny_model

import jetspec
from jetspec import DRAFTERS, TREE_BUILDERS, VERIFIERS, SpeculativeDecoder, autoregressive_generate

HOWTO = Path(__file__).resolve().parents[1] / "docs" / "howto.md"
NAMES = ((DRAFTERS, "repeat-last"), (TREE_BUILDERS, "star"), (VERIFIERS, "greedy-counting"))


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


@pytest.fixture
def clean_registries():
    """The page registers three names; remove them afterwards so the test can run again in one process."""
    yield
    for registry, name in NAMES:
        dict.pop(registry, name, None)


def test_howto_blocks_run_in_order(monkeypatch, clean_registries):
    blocks = python_blocks(HOWTO.read_text(encoding="utf-8"))
    assert len(blocks) == 5, "the page shows a model, a wrapper, a drafter, a tree builder and a verifier"
    model = tiny_model("llama", seed=4)
    monkeypatch.setattr(jetspec, "load_target", lambda name, **kw: (model, None))
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(HOWTO), "exec"), namespace)
    for registry, name in NAMES:
        assert name in registry
    ids = torch.tensor([[5, 9, 5, 9, 5, 9, 5]])
    plain = autoregressive_generate(model, ids, 12).sequences
    dec = SpeculativeDecoder(model, DRAFTERS.create("repeat-last"), tree_builder=TREE_BUILDERS.create("star"),
                             verifier=VERIFIERS.create("greedy-counting"))
    assert torch.equal(dec.generate(ids, max_new_tokens=12).sequences, plain)


def test_a_star_builder_refuses_candidate_trees(clean_registries):
    namespace: dict = {}
    blocks = python_blocks(HOWTO.read_text(encoding="utf-8"))
    exec("import torch\nfrom jetspec import DraftOutput\n" + blocks[3].split("\n\nres = ")[0], namespace)
    proposal = namespace["DraftOutput"](node_tokens=torch.tensor([3]), node_parents=torch.tensor([-1]),
                                        node_logprobs=torch.tensor([0.0]))
    with pytest.raises(ValueError, match="depth_tokens"):
        namespace["StarBuilder"]().build(proposal, anchor=1)
