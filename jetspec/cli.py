"""The ``jetspec`` command line (also ``python -m jetspec``).

Each sub-command lives in ``jetspec/commands/<name>.py`` and exposes ``HELP`` (one line) and
``register(subparsers)``, which adds its parser and sets ``func`` to the function that runs it.
Flags follow Hugging Face and Lightning naming (``--max-new-tokens``, ``--max-steps``,
``--precision``); ``jetspec.commands.flags`` generates them from the config dataclasses and
function signatures, so defaults are never written twice.

Only the command being run builds its flags: building ``train``'s imports Lightning (its defaults
live in the head and data classes), which ``jetspec --help`` or ``jetspec generate`` must not pay.
Process-wide settings (threads, denormal flushing, seeds) are made here and in the commands,
never inside library functions.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

import jetspec.commands


def command_modules() -> dict:
    """Sub-command name -> its module (modules without ``register``, like ``flags``, are helpers).

    A module's name with ``-`` for ``_`` is its command's name, as its ``register`` spells it."""
    modules = {}
    for info in sorted(pkgutil.iter_modules(jetspec.commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"jetspec.commands.{info.name}")
        if hasattr(module, "register"):
            modules[info.name.replace("_", "-")] = module  # prepare_data.py -> `jetspec prepare-data`
    return modules


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command``, the other sub-commands are listed by name and help only."""
    parser = argparse.ArgumentParser(prog="jetspec", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error (default: its message only)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in command_modules().items():
        if command is None or name == command:
            module.register(sub)
        else:
            sub.add_parser(name, help=module.HELP)
    return parser


def _show_library_logs() -> None:
    """Library code logs (``jetspec.*`` loggers) instead of printing; the command line shows it."""
    logger = logging.getLogger("jetspec")
    if not logger.handlers:  # main() may run many times in one process (the tests)
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    # Shown once, here: not again by a root handler a command or library set up (logging.basicConfig).
    logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    import torch

    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), "")
    args = build_parser(command).parse_args(argv)
    _show_library_logs()
    # Denormal floats make CPU matmuls (the lm_head's backward above all) up to ~30x slower
    # (docs/design.md §5.9); flushing them to zero changes no result that matters here. A process
    # setting, so the entry point makes it, not the library.
    torch.set_flush_denormal(True)
    try:
        result = args.func(args)
    except (ValueError, OSError) as err:  # a refusal with its reason: the message is the answer
        if args.debug:
            raise
        print(f"jetspec {args.command}: error: {err}\n(run `jetspec --debug {args.command} ...` for the traceback)",
              file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
