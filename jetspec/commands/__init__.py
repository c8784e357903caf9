"""Sub-commands of the ``jetspec`` CLI: one module each, discovered by ``jetspec.cli``."""
