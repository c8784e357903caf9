"""The layers of the package and the direction of their imports.

    commands / cli         may import everything
    evaluation             benchmarks, replay tables, roofline, reports: imports core, training (heads)
    training               Lightning heads, data, teacher, regeneration: imports core
    core                   types, interfaces, target, decoding, sampling, trees, verifiers, kernels,
                           the drafters that need no training: imports only core
    testing support        exact enumeration, toy models: imports only core

Every module of the package is assigned to one layer below, and its imports (also those inside
functions, which the interpreter would only meet later) are read from its source. A module that is
not in the map fails the test, so a new module has to choose its layer.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"jetspec": REPO / "jetspec", "jetspec.drafters": REPO / "drafters", "jetspec.trees": REPO / "trees",
           "jetspec.verifiers": REPO / "verifiers", "jetspec.kernels": REPO / "kernels"}

CORE = {
    "jetspec", "jetspec.types", "jetspec.interfaces", "jetspec.sampling", "jetspec.target", "jetspec.fast_forward",
    "jetspec.decoding", "jetspec.checks", "jetspec.loading", "jetspec.attention",
    # replay is the decoding loop run against a reference answer (equal to generate round for round),
    # and prompts the JSONL / chat-template reading every layer uses
    "jetspec.replay", "jetspec.prompts", "jetspec.jsonl",
    "jetspec.trees", "jetspec.trees.best_first", "jetspec.trees.builders",
    "jetspec.verifiers", "jetspec.verifiers.greedy", "jetspec.verifiers.sampling",
    "jetspec.kernels", "jetspec.kernels.reference", "jetspec.kernels.tree_attention",
    "jetspec.kernels.packed_linear",
    # drafters/__init__ exports the learned heads lazily (module __getattr__), so importing the package
    # does not import Lightning; the drafters below need no training.
    "jetspec.drafters", "jetspec.drafters.simple", "jetspec.drafters.ngram", "jetspec.drafters.draft_model",
    "jetspec.drafters.lm_runner", "jetspec.drafters.composite", "jetspec.drafters.draft_vocab",
}
TRAINING = {
    "jetspec.training", "jetspec.data", "jetspec.callbacks", "jetspec.regenerate",
    "jetspec.drafters.learned_head", "jetspec.drafters.parallel_head", "jetspec.drafters.eagle_head",
    "jetspec.drafters.eagle_training", "jetspec.drafters.conditioned", "jetspec.drafters.head_layers",
    "jetspec.drafters.head_files", "jetspec.drafters.checkpoints", "jetspec.drafters.layout_rules",
}
EVALUATION = {
    "jetspec.bench", "jetspec.bench_report", "jetspec.replay_tools", "jetspec.roofline",
    "jetspec.plots", "jetspec.splits", "jetspec.precision", "jetspec.threads", "jetspec.drafter_specs",
    "jetspec.report",
}
TESTING = {"jetspec.exact", "jetspec.toy"}
LAYER = {**{m: "core" for m in CORE}, **{m: "training" for m in TRAINING}, **{m: "evaluation" for m in EVALUATION},
         **{m: "testing" for m in TESTING}}
ALLOWED = {"core": {"core"}, "training": {"core", "training"}, "evaluation": {"core", "training", "evaluation"},
           "testing": {"core", "testing"}}
THIRD_PARTY_BANNED = {"core": {"lightning", "matplotlib"}, "testing": {"lightning"}}


def package_modules() -> dict[str, Path]:
    mods = {}
    for package, folder in FOLDERS.items():
        for path in folder.glob("*.py"):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            mods[name] = path
    return mods


def imported_names(path: Path, module: str) -> set[str]:
    """Every module name an import statement in ``path`` names (relative imports resolved)."""
    package = module if path.stem == "__init__" else module.rsplit(".", 1)[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
    return names


def layer_of(name: str, known: dict[str, str]) -> str | None:
    while name:
        if name in known:
            return known[name]
        name = name.rpartition(".")[0]
    return None


def test_every_module_has_a_layer():
    unassigned = sorted(m for m in package_modules() if m not in LAYER and not m.startswith("jetspec.commands")
                        and m not in ("jetspec.cli", "jetspec.__main__"))
    assert not unassigned, f"assign these modules to a layer in tests/test_layers.py: {unassigned}"


@pytest.mark.parametrize("module", sorted(LAYER))
def test_imports_point_down(module):
    path = package_modules().get(module)
    assert path is not None, f"{module} is listed in a layer but does not exist"
    layer, bad = LAYER[module], []
    for name in imported_names(path, module):
        top = name.split(".")[0]
        if top in THIRD_PARTY_BANNED.get(layer, ()):
            bad.append(name)
        if top == "jetspec" and (target := layer_of(name, LAYER)) is not None and target not in ALLOWED[layer]:
            bad.append(f"{name} ({target})")
    assert not bad, f"{module} ({layer}) imports {bad}"


def test_the_core_runs_without_lightning():
    """Negative control for the static check: importing the public decoding API loads no Lightning."""
    code = ("import sys\nimport jetspec\nfrom jetspec import SpeculativeDecoder, autoregressive_generate\n"
            "import jetspec.trees, jetspec.verifiers, jetspec.kernels\nfrom jetspec.drafters import NGramDrafter\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning', 'matplotlib')]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
