"""Registries pick implementations by name; the decoding core stays free of Lightning."""

from __future__ import annotations

import subprocess
import sys

import pytest

from jetspec import DRAFTERS, TREE_BUILDERS, VERIFIERS
from jetspec.core.interfaces import Registry


def test_shipped_parts_are_registered():
    assert {"ngram", "random", "oracle", "draft_model", "jetspec", "dflash"} <= set(DRAFTERS)
    assert {"chain", "bestfirst", "fanout"} <= set(TREE_BUILDERS)
    assert {"greedy", "sampling"} <= set(VERIFIERS)
    assert TREE_BUILDERS.create("bestfirst", budget=4, width=2, depth=2).budget == 4


def test_lazy_entries_resolve_on_lookup():
    reg = Registry("thing")
    reg.register_lazy("ngram", "jetspec.drafters.ngram:NGramDrafter")
    from jetspec.drafters import NGramDrafter

    assert "ngram" in reg and reg["ngram"] is NGramDrafter
    with pytest.raises(KeyError, match="unknown thing 'nope'; known: ngram"):
        reg.create("nope")


def test_name_clash_is_refused():
    reg = Registry("thing")
    reg.register("a")(type("A", (), {}))
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(type("B", (), {}))


def test_importing_the_core_does_not_import_lightning():
    code = ("import sys, jetspec; from jetspec import SpeculativeDecoder; "
            "from jetspec.drafters import NGramDrafter; import jetspec.trees, jetspec.verifiers; "
            "print('lightning' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
