"""Training data is checked where it enters: token ids outside the vocabulary name the file and row.

Without the check an id >= V (or < 0) reaches the target's embedding in the first training step and
fails there with ``index out of range in self`` (on CUDA: a device-side assert that kills the process).
"""

from __future__ import annotations

import json

import lightning as L
import pytest
from conftest import tiny_model

from jetspec.training.data import TokenDataModule

QUIET = dict(accelerator="cpu", enable_progress_bar=False, enable_model_summary=False, logger=False,
              enable_checkpointing=False)
GOOD = [[1, 2, 3, 4], {"input_ids": [5, 6, 7, 63], "response_start": 1}]


def test_negative_ids_are_refused_naming_the_sequence():
    with pytest.raises(ValueError, match=r"sequences\[2\].*-3"):
        TokenDataModule(GOOD + [[4, -3, 5]])
    assert len(TokenDataModule(GOOD).train_set) == 2  # negative control


@pytest.mark.parametrize("bad", [64, 1000])
def test_ids_beyond_a_given_vocabulary_are_refused(bad):
    with pytest.raises(ValueError, match=rf"sequences\[1\].*{bad}.*vocabulary of 64"):
        TokenDataModule([[1, 2, 3], {"input_ids": [4, bad, 5], "response_start": 1}], vocab_size=64)
    TokenDataModule(GOOD, vocab_size=64)  # 63 is the last valid id
    with pytest.raises(ValueError, match=r"val_sequences\[0\]"):
        TokenDataModule(GOOD, val_sequences=[[1, bad, 2]], vocab_size=64)


def test_a_jsonl_file_is_named_with_its_line(tmp_path):
    path = tmp_path / "regen.jsonl"
    rows = [{"input_ids": [1, 2, 3], "response_start": 1}, {"input_ids": [7, 8, 9]},
            {"input_ids": [4, 99, 5], "response_start": 1}]
    path.write_text(json.dumps(rows[0]) + "\n\n" + "\n".join(json.dumps(r) for r in rows[1:]) + "\n")
    with pytest.raises(ValueError, match=rf"{path}:4.*99"):  # line 4: the blank line counts
        TokenDataModule.from_jsonl(path, tokenizer=None, vocab_size=64)
    rows[2]["input_ids"][1] = -1
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(ValueError, match=rf"{path}:3.*-1"):
        TokenDataModule.from_jsonl(path, tokenizer=None)


def test_fit_checks_the_data_against_the_heads_vocabulary(tmp_path):
    """The data module learns V from the module it is fitted with, before any forward runs."""
    from jetspec.drafters import JetSpecHead

    target = tiny_model("llama", seed=0)
    path = tmp_path / "data.jsonl"
    rows = [{"input_ids": [1, 2, 3, 4, 5, 6], "response_start": 2}] * 3 + [{"input_ids": [1, 2, 64, 4]}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    dm = TokenDataModule.from_jsonl(path, tokenizer=None, batch_size=2)
    head = JetSpecHead(target, num_layers=1, block_size=4)
    with pytest.raises(ValueError, match=rf"{path}:4.*64.*vocabulary of 64"):
        L.Trainer(max_steps=1, **QUIET).fit(head, datamodule=dm)
    # Negative control: without the bad row the same fit runs.
    ok = TokenDataModule(rows[:3], batch_size=2)
    L.Trainer(max_steps=1, **QUIET).fit(JetSpecHead(target, num_layers=1, block_size=4), datamodule=ok)


def test_the_public_data_module_path_still_works():
    """``jetspec.data.TokenDataModule`` is public API; jetspec/data.py re-exports the one class."""
    import jetspec.data
    import jetspec.training.data

    assert jetspec.data.TokenDataModule is jetspec.training.data.TokenDataModule
