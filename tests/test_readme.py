"""The README's own examples run: the custom drafter it shows is registered and lossless."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from conftest import tiny_model

from jetspec import DRAFTERS, SpeculativeDecoder, autoregressive_generate

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def code_block_after(heading: str) -> str:
    section = README.split(heading, 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_adding_a_drafter_example_runs_and_is_lossless():
    namespace: dict = {}
    exec(code_block_after("## Adding a drafter"), namespace)
    drafter = DRAFTERS["repeat-last"]()
    model = tiny_model("llama", seed=4)
    ids = torch.tensor([[3, 5, 5, 5, 7]])
    res = SpeculativeDecoder(model, drafter).generate(ids, max_new_tokens=12)
    assert torch.equal(res.sequences, autoregressive_generate(model, ids, 12).sequences)


def test_readme_names_the_two_commands():
    assert "make demo" in README and "make test" in README
