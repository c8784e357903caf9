"""The one CLI mechanism (jetspec/commands/flags.py) and what `jetspec` imports to run a command."""

from __future__ import annotations

import subprocess
import sys
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Optional

import pytest

from jetspec.cli import build_parser, command_modules
from jetspec.commands.flags import add_config_flags, config_from_args


@dataclass
class _Knobs:
    """A config as a command would declare it."""

    name: str
    """Required: no default."""
    budgets: tuple[int, ...] = (8, 16)
    """Comma list."""
    mode: Literal["a", "b"] = "a"
    """Choices."""
    fast: bool = False
    """A switch."""
    limit: Optional[int] = None  # the comment is the help when no docstring follows


def _fn(x, depth: int = 3, scale: float = 0.5) -> None:
    """A function whose keyword parameters become flags.

    Args:
        depth: how deep.
        scale: how large, on a
            second line.
    """


def _parser():
    import argparse

    p = argparse.ArgumentParser()
    add_config_flags(p, _Knobs, rename={"limit": "max_rows"})
    add_config_flags(p, _fn, only=("depth", "scale"))
    return p


def test_flags_from_a_dataclass_and_a_signature():
    p = _parser()
    args = p.parse_args(["--name", "n"])
    assert (args.budgets, args.mode, args.fast, args.max_rows, args.depth, args.scale) == ((8, 16), "a", False,
                                                                                           None, 3, 0.5)
    args = p.parse_args(["--name", "n", "--budgets", "4,32", "--mode", "b", "--fast", "--max-rows", "7",
                         "--depth", "5"])
    assert (args.budgets, args.mode, args.fast, args.max_rows, args.depth) == ((4, 32), "b", True, 7, 5)
    assert p.parse_args(["--name", "n", "--fast", "false"]).fast is False
    assert config_from_args(_Knobs, p.parse_args(["--name", "n"])) == _Knobs("n")
    text = p.format_help()
    for words in ("Required: no default.", "Comma list. (default: 8,16)", "the comment is the help",
                  "how deep.", "how large, on a second line."):
        assert words in " ".join(text.split()), words
    for bad in (["--fast"], ["--name", "n", "--mode", "c"], ["--name", "n", "--budgets", "x"]):
        with pytest.raises(SystemExit):
            p.parse_args(bad)


def test_every_command_builds_its_flags_with_help():
    parser = build_parser()
    for name in command_modules():
        sub = parser._subparsers._group_actions[0].choices[name]
        missing = [a.dest for a in sub._actions if a.dest != "help" and not a.help]
        # The data module's constructor documents no Args: its three flags are the exception.
        assert set(missing) <= {"batch_size", "max_length", "val_fraction", "data_seed"}, (name, missing)


def test_generate_reuses_the_tree_builder_and_decoder_defaults():
    import inspect

    from jetspec.core.decoding import SpeculativeDecoder
    from jetspec.trees import BestFirstBuilder

    args = build_parser("generate").parse_args(["generate", "--target", "t", "--prompt", "p"])
    for fn, names in ((BestFirstBuilder.__init__, ("budget", "width", "depth", "node_cost")),
                      (SpeculativeDecoder.generate, ("max_new_tokens", "temperature", "top_k", "top_p"))):
        params = inspect.signature(fn).parameters
        assert all(getattr(args, n) == params[n].default for n in names)


CHECK = """
import sys
from jetspec.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
print("LIGHTNING" if "lightning" in sys.modules else "NO-LIGHTNING")
"""


def _imports_lightning(argv: list[str]) -> bool:
    out = subprocess.run([sys.executable, "-c", CHECK.format(argv=argv)], capture_output=True, text=True,
                         check=True).stdout
    return out.strip().splitlines()[-1] == "LIGHTNING"


def test_commands_that_do_not_train_do_not_import_lightning(tmp_path):
    from conftest import tiny_llama, tiny_tokenizer

    tiny_llama().save_pretrained(tmp_path / "target")
    tiny_tokenizer().save_pretrained(tmp_path / "target")
    assert not _imports_lightning(["--help"])
    assert not _imports_lightning(["generate", "--target", str(tmp_path / "target"), "--prompt", "w3 w4 w3",
                                   "--max-new-tokens", "3", "--threads", "1"])
    assert _imports_lightning(["train", "--help"])  # the negative control: train's defaults live there


# Flags whose value is text by nature (paths, names, specs, "auto"), with no default or None: any other
# flag typed str would be a number or a list the code receives as a string.
TEXT_FLAGS = {"target", "prompt", "prompts", "head_dir", "threads", "out", "refs", "drafters", "md", "plots", "data",
              "max_time", "vocab_data", "resume", "eval_data", "cache_only", "teacher_cache",
              "include"}


def _typical(action) -> str:
    """A typical command-line value for a flag, from what it parses into."""
    if action.choices:
        return str(list(action.choices)[0])
    kind = getattr(action.type, "__name__", "str")
    return {"int": "3", "float": "0.5", "parse_bool": "true", "parse": "1,2"}.get(kind, "x")


def test_every_flag_of_every_command_parses_typical_values_into_its_type():
    """Each sub-command parsed with every flag given a typical value: numbers come back as numbers,
    lists as tuples; no flag silently stays a string (``--top-k 5`` was '5' under @no_type_check)."""
    for name in command_modules():
        parser = build_parser(name)
        sub = parser._subparsers._group_actions[0].choices[name]
        flags = [a for a in sub._actions if a.option_strings and a.dest != "help"]
        for a in flags:
            is_text = a.type in (None, str) and not a.choices
            assert not is_text or isinstance(a.default, str) or a.dest in TEXT_FLAGS, (name, a.dest)
        argv = [name]
        for a in flags:
            argv += [a.option_strings[0], _typical(a)]
        args = parser.parse_args(argv)
        for a in flags:
            value = getattr(args, a.dest)
            kind = getattr(a.type, "__name__", "")
            want = {"int": int, "float": float, "parse_bool": bool, "parse": tuple}.get(kind)
            assert want is None or isinstance(value, want), (name, a.dest, value)


def test_generate_takes_top_k_and_top_p(target_dir, capsys):
    from jetspec.cli import main

    args = build_parser("generate").parse_args(["generate", "--target", "t", "--prompt", "p", "--top-k", "5",
                                                "--top-p", "0.9"])
    assert (args.top_k, args.top_p) == (5, 0.9)
    assert main(["generate", "--target", str(target_dir), "--prompt", "w3 w4 w3", "--max-new-tokens", "3",
                 "--threads", "1", "--temperature", "0.8", "--top-k", "5", "--top-p", "0.9"]) == 0


def test_train_tap_layers_is_a_comma_list():
    args = build_parser("train").parse_args(["train", "--target", "t", "--data", "d", "--out", "o",
                                             "--tap-layers", "1,4"])
    assert args.tap_layers == (1, 4)


def _typed(a: Sequence[int] = (1,), b: str | tuple[float, ...] = "0.5", c: int | str = "auto",
           d: Optional[tuple[int, ...]] = None) -> None:
    """A signature's list flags (``Sequence`` and ``tuple``), a text-or-list flag and a number-or-word flag."""


@typing.no_type_check
def _unchecked(k: int = 3) -> None:
    """A function under @no_type_check: its annotations still type its flags."""


def _odd(x: dict | None = None) -> None:
    """No command-line type exists for a dict."""


def test_list_flags_of_both_forms_and_text_and_the_strict_refusal():
    import argparse

    p = argparse.ArgumentParser()
    add_config_flags(p, _typed)
    add_config_flags(p, _unchecked)
    args = p.parse_args(["--a", "2, 3", "--b", "1,2.5", "--c", "4", "--d", "7", "--k", "5"])
    assert (args.a, args.b, args.c, args.d, args.k) == ((2, 3), (1.0, 2.5), "4", (7,), 5)
    with pytest.raises(SystemExit):
        p.parse_args(["--a", "x"])
    with pytest.raises(TypeError, match="--x: no command-line type"):
        add_config_flags(argparse.ArgumentParser(), _odd)
