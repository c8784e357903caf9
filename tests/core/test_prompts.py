"""Prompt files under hostile input: every refusal names the file and the line (jetspec/core/prompts.py)."""

from __future__ import annotations

import re

import pytest

from jetspec.core.prompts import read_prompts


@pytest.mark.parametrize("text, error", [
    ('{"prompt": "a"}\n{"text": "no prompt here"}\n', ":2: a prompt row needs a 'prompt', 'question' or "
                                                      "'instruction' field; got keys ['text']"),
    ('{"prompt": "a"}\n"just a string"\n', ":2: a prompt row must be a JSON object, got str"),
    ('42\n', ":1: a prompt row must be a JSON object, got int"),
    ('["a", "b"]\n', ":1: a prompt row must be a JSON object, got list"),
    ('{"prompt": "a"}\n{"prompt": \n', ":2: not valid JSON"),
])
def test_a_bad_prompt_row_is_named_by_path_and_line(tmp_path, text, error):
    path = tmp_path / "prompts.jsonl"
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(f"{path}{error}")):
        read_prompts(path)


def test_good_rows_still_read(tmp_path):
    path = tmp_path / "dev_math.jsonl"
    path.write_text('{"prompt": "a", "set": "s"}\n\n{"question": "q", "answer": "x"}\n')
    assert [(r["prompt"], r["set"]) for r in read_prompts(path)] == [("a", "s"), ("q", "math")]
