"""Prompts: a few built-in ones for demos and benchmarks, and readers for prompt files.

Speculative decoding speeds differ a lot by *kind* of text (docs/design.md §7.6: math and code
accept far longer drafts than open chat), so every prompt carries a ``set`` name and benchmarks
report each set separately. The built-in prompts below are three small sets written for jetspec:

    math   short word problems (step-by-step arithmetic repeats numbers from the prompt)
    code   small programming tasks (code repeats identifiers: prompt lookup shines here)
    chat   open questions and writing requests (the hardest case for every drafter)

Prompt files are JSON lines. A row may be in jetspec's own format or in one of the raw formats of
the shared training data (see ``prompt_of``), so the same reader serves benchmarks, regeneration
and the data-preparation script:

    {"prompt": "...", "set": "math", "reference": "..."}       jetspec (set, reference optional)
    {"question": "...", "answer": "..."}                        GSM8K             -> set "math"
    {"instruction": "...", "input": "...", "output": "..."}     Code Alpaca       -> set "code"
    {"instruction": "...", "instances": [{"input", "output"}]}  Alpaca seed tasks -> set "chat"
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Optional

from jetspec.core.jsonl import numbered_rows, read_jsonl, write_jsonl  # noqa: F401  (re-exported: JSONL files)

BUILTIN_PROMPTS: dict[str, list[str]] = {
    "math": [
        "A baker makes 24 muffins in the morning and 18 in the afternoon. She sells 30 of them. "
        "How many muffins are left? Explain step by step.",
        "Tom reads 15 pages a day. His book has 240 pages. How many days does he need to finish it? "
        "Show your reasoning.",
        "A train travels at 60 km per hour for 2.5 hours, then at 80 km per hour for 1.5 hours. "
        "How far does it travel in total? Solve it step by step.",
        "Sara has 3 boxes with 12 pencils each. She gives 7 pencils to each of her 4 friends. "
        "How many pencils does she have left? Think step by step.",
        "A shirt costs $40. It is on sale for 25% off. How much do you pay for two shirts? "
        "Explain your calculation.",
    ],
    "code": [
        "Write a Python function that returns the n-th Fibonacci number.",
        "Write a Python function that checks whether a string is a palindrome, ignoring case and spaces.",
        "Write a Python function that counts how many times each word appears in a text and returns a dict.",
        "Write a Python class Stack with push, pop, peek and is_empty methods.",
        "Write a Python function that merges two sorted lists into one sorted list.",
    ],
    "chat": [
        "What is the capital of France, and what is it famous for?",
        "Give me three tips for sleeping better.",
        "Explain what photosynthesis is to a ten-year-old.",
        "Write a short, friendly email inviting a colleague to lunch on Friday.",
        "What are the main differences between a cat and a dog as pets?",
    ],
}


def builtin_prompts(sets: Optional[Iterable[str]] = None) -> list[dict]:
    """The built-in prompts as rows ``{"prompt", "set"}``, set by set."""
    names = list(BUILTIN_PROMPTS) if sets is None else list(sets)
    rows = []
    for name in names:
        if name not in BUILTIN_PROMPTS:
            raise ValueError(f"unknown built-in prompt set '{name}'; known: {', '.join(BUILTIN_PROMPTS)}")
        rows.extend({"prompt": p, "set": name} for p in BUILTIN_PROMPTS[name])
    return rows


# ---------------------------------------------------------------------------- prompt files
def prompt_of(row: dict) -> tuple[str, Optional[str], Optional[str]]:
    """``(prompt, set, reference answer)`` of a row in any supported format (module docstring).

    The reference is the dataset's own answer; regeneration ignores it (the target writes its own
    responses), the distillation file uses it as the response text.
    """
    if "prompt" in row:
        return str(row["prompt"]), row.get("set"), row.get("reference")
    if "question" in row:  # GSM8K
        return str(row["question"]), "math", row.get("answer")
    if "instruction" in row and "instances" in row:  # Alpaca seed tasks: one instance each
        inst = row["instances"][0] if row["instances"] else {}
        return _join(row["instruction"], inst.get("input", "")), "chat", inst.get("output")
    if "instruction" in row:  # Code Alpaca
        return _join(row["instruction"], row.get("input", "")), "code", row.get("output")
    raise ValueError(f"a prompt row needs a 'prompt', 'question' or 'instruction' field; "
                     f"got keys {sorted(row)}")


def _join(instruction: str, extra: str) -> str:
    """Instruction, then its input (if any) after a blank line, the usual Alpaca layout."""
    extra = (extra or "").strip()
    return instruction.strip() + ("\n\n" + extra if extra else "")


def read_prompts(path: str | os.PathLike, limit: Optional[int] = None, default_set: Optional[str] = None,
                 ) -> list[dict]:
    """Read a prompt file into rows ``{"prompt", "set", "reference"}`` (first ``limit`` rows).

    ``set`` falls back to ``default_set``, else to the file's stem (``dev_math.jsonl`` ->
    ``dev_math``), so rows always say which set they belong to.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 (or None), got {limit}")
    rows = []
    for line, row in numbered_rows(path):
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{line}: a prompt row must be a JSON object, got {type(row).__name__} "
                             f"{json.dumps(row)[:60]}")
        try:
            prompt, set_name, reference = prompt_of(row)
        except ValueError as err:
            raise ValueError(f"{path}:{line}: {err}") from None
        rows.append({"prompt": prompt, "set": set_name or default_set or Path(path).stem,
                     "reference": reference})
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise ValueError(f"{path} holds no prompts")
    return rows


# ---------------------------------------------------------------------------- tokenizing
def chat_ids(tokenizer, prompt: str) -> list[int]:
    """Token ids of ``prompt`` as a single user turn, ready for the assistant's answer.

    The target was tuned on its chat template, so drafts are judged on the text it really writes
    after one. A tokenizer without a template (tiny test tokenizers) gets the plain encoding.
    """
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            tokenize=True)
        # transformers 5 returns a BatchEncoding here; older versions a plain list.
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        return [int(t) for t in ids]
    return [int(t) for t in tokenizer(prompt, add_special_tokens=True)["input_ids"]]


def eos_ids(tokenizer=None, model=None) -> list[int]:
    """Every token id that ends a response: the tokenizer's EOS and the model's generation config."""
    ids: list[int] = []
    sources = [getattr(tokenizer, "eos_token_id", None)]
    if model is not None:
        gen = getattr(model, "generation_config", None)
        sources += [getattr(gen, "eos_token_id", None), getattr(model.config, "eos_token_id", None)]
    for src in sources:
        for t in ([src] if isinstance(src, int) else (src or [])):
            if t is not None and int(t) not in ids:
                ids.append(int(t))
    return ids
