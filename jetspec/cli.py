"""The ``jetspec`` command line (also ``python -m jetspec``).

Each sub-command lives in ``jetspec/commands/<name>.py`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to the function that runs it.
Flags follow Hugging Face and Lightning naming (``--max-new-tokens``, ``--max-steps``,
``--precision``); defaults come from the function signatures and config dataclasses, never written
twice.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import jetspec.commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jetspec", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for info in sorted(pkgutil.iter_modules(jetspec.commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"jetspec.commands.{info.name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    import torch

    args = build_parser().parse_args(argv)
    # Denormal floats make CPU matmuls (the lm_head's backward above all) up to ~30x slower
    # (docs/design.md §5.9); flushing them to zero changes no result that matters here.
    torch.set_flush_denormal(True)
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
