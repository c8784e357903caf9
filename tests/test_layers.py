"""The layers of the package, the folders that hold them and the direction of their imports.

    commands / cli         may import everything
    evaluation             benchmarks, replay tables, roofline, reports: imports core, training (heads)
    training               Lightning heads, data, teacher, regeneration: imports core
    core                   types, interfaces, target, decoding, sampling, trees, verifiers, kernels,
                           the drafters that need no training: imports only core
    testing support        exact enumeration, toy models: imports only core

The layers of the package proper are its sub-packages jetspec/core, jetspec/training,
jetspec/evaluation and jetspec/testing; the fixed top-level folders (drafters/, trees/, verifiers/,
kernels/, installed as jetspec.*) keep their place and list their modules' layers here. Every module
is assigned to one layer below, and its imports (also those inside functions, which the interpreter
would only meet later) are read from its source. A module that is not in the map fails the test, so
a new module has to choose its layer; a module of a layer sub-package must sit in its layer's folder.
No two modules may import each other, directly or around a loop, not even inside a function (an
import moved into a function to dodge a cycle is still a cycle for the reader).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYER_PACKAGES = ("core", "training", "evaluation", "testing")  # jetspec/<layer>/ holds that layer's modules
FOLDERS = {"jetspec": REPO / "jetspec", "jetspec.drafters": REPO / "drafters", "jetspec.trees": REPO / "trees",
           "jetspec.verifiers": REPO / "verifiers", "jetspec.kernels": REPO / "kernels",
           **{f"jetspec.{layer}": REPO / "jetspec" / layer for layer in LAYER_PACKAGES}}

CORE = {
    "jetspec", "jetspec.core", "jetspec.core.types", "jetspec.core.interfaces", "jetspec.core.sampling",
    "jetspec.core.target", "jetspec.core.compact_engine", "jetspec.core.decoding", "jetspec.core.generation",
    "jetspec.core.checks",
    "jetspec.core.batched", "jetspec.core.batched_target",
    "jetspec.core.loading", "jetspec.core.attention", "jetspec.core.masks", "jetspec.core.config",
    "jetspec.core.target_support",
    # replay is the decoding loop run against a reference answer (equal to generate round for round),
    # and prompts the JSONL / chat-template reading every layer uses
    "jetspec.core.replay", "jetspec.core.prompts", "jetspec.core.jsonl",
    "jetspec.trees", "jetspec.trees.best_first", "jetspec.trees.builders", "jetspec.trees.scoring",
    "jetspec.verifiers", "jetspec.verifiers.greedy", "jetspec.verifiers.sampling",
    "jetspec.kernels", "jetspec.kernels.reference", "jetspec.kernels.tree_attention",
    "jetspec.kernels.packed_linear",
    # drafters/__init__ exports the learned heads lazily (module __getattr__), so importing the package
    # does not import Lightning; the drafters below need no training.
    "jetspec.drafters", "jetspec.drafters.simple", "jetspec.drafters.ngram", "jetspec.drafters.draft_model",
    "jetspec.drafters.lm_runner", "jetspec.drafters.composite", "jetspec.drafters.draft_vocab",
}
TRAINING = {
    "jetspec.training", "jetspec.training.recipe", "jetspec.training.data", "jetspec.training.callbacks",
    "jetspec.training.regenerate",
    # the compatibility module for the public jetspec.data.TokenDataModule (re-exports jetspec.training.data)
    "jetspec.data",
    "jetspec.drafters.learned_head", "jetspec.drafters.parallel_head", "jetspec.drafters.eagle_head",
    "jetspec.drafters.head_config", "jetspec.drafters.parallel_net",
    "jetspec.drafters.eagle_training", "jetspec.drafters.eagle_drafting", "jetspec.drafters.conditioned",
    "jetspec.drafters.head_layers", "jetspec.drafters.context_cache",
    "jetspec.drafters.head_format", "jetspec.drafters.engine_layouts", "jetspec.drafters.engine_layout_rules",
}
EVALUATION = {
    "jetspec.evaluation", "jetspec.evaluation.bench", "jetspec.evaluation.benchmarks_md",
    "jetspec.evaluation.replay_tools", "jetspec.evaluation.roofline", "jetspec.evaluation.plots",
    "jetspec.evaluation.splits", "jetspec.evaluation.threads",
    "jetspec.evaluation.drafter_specs", "jetspec.evaluation.bench_outputs",
    "jetspec.evaluation.faithfulness",
    "jetspec.evaluation.batching", "jetspec.evaluation.bench_stats",
}
TESTING = {"jetspec.testing", "jetspec.testing.exact", "jetspec.testing.toy", "jetspec.testing.notebooks"}
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


def test_every_layer_folder_holds_only_its_layer():
    """jetspec/core/ holds core modules, jetspec/training/ training modules, and so on; no layer module
    is left flat in jetspec/ but the package itself and the jetspec.data compatibility module."""
    misplaced = []
    for module in package_modules():
        parts = module.split(".")
        if len(parts) >= 2 and parts[1] in LAYER_PACKAGES and LAYER.get(module) != parts[1]:
            misplaced.append(f"{module} (listed as {LAYER.get(module)})")
        if len(parts) == 2 and parts[1] not in LAYER_PACKAGES and module in LAYER and parts[1] not in (
                "drafters", "trees", "verifiers", "kernels", "data"):
            misplaced.append(f"{module} (flat in jetspec/; move it to jetspec/{LAYER[module]}/)")
    assert not misplaced, misplaced


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


def import_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module of the graph ``edges`` (module ->
    the modules it imports): each is a set of modules that import one another around a loop."""
    order, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:
        order[v] = low[v] = len(order)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in order:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], order[w])
        if low[v] == order[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in order:
            visit(v)
    return cycles


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules its source imports (a name resolved to the module that holds it)."""
    mods = package_modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    return {m: {r for n in imported_names(p, m) if (r := resolve(n)) is not None and r != m} for m, p in mods.items()}


def test_no_import_cycle():
    cycles = import_cycles(import_graph())
    assert not cycles, f"these modules import each other (give the shared piece its own module): {cycles}"


def test_import_cycles_finds_a_loop():
    """Negative control for test_no_import_cycle: a loop of three is found, a chain is not."""
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_core_runs_without_lightning():
    """Negative control for the static check: importing the public decoding API loads no Lightning."""
    code = ("import sys\nimport jetspec\nfrom jetspec import SpeculativeDecoder, autoregressive_generate\n"
            "import jetspec.trees, jetspec.verifiers, jetspec.kernels\nfrom jetspec.drafters import NGramDrafter\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning', 'matplotlib')]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
