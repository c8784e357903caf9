"""One glossary of shape letters for the whole package (jetspec/__init__.py and docs/design.md §8).

jaxtyping binds a letter afresh in every call, so the runtime checks cannot see a module that gives
a letter its own meaning (``k`` for a top-k, ``W`` for packed words) or brings a letter the
glossary lacks. This test reads every jaxtyping annotation of the package from source and checks
each name in it against the glossary; the package docstring and the design document must list the
same letters; and no module repeats or redefines the glossary in a "Shapes:" paragraph of its own.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from test_layers import package_modules

REPO = Path(__file__).resolve().parents[1]
POINTER = "Shapes use the glossary of ``jetspec`` (docs/design.md §8)."
MARKS = ("...", "_")  # jaxtyping's "any dimensions" and "unchecked dimension"
IDENT = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")


def design_letters() -> set[str]:
    """The letters of the table in docs/design.md §8."""
    text = (REPO / "docs" / "design.md").read_text()
    section = text.split("## 8. Shape glossary", 1)[1].split("\n## ", 1)[0]
    return {m.group(1) for m in re.finditer(r"^\| (\S+) \| .* \|$", section, re.M)} - {"letter"}


def docstring_letters() -> set[str]:
    """The letters of the table in the package docstring (entries are a letter and 2+ spaces)."""
    doc = ast.get_docstring(ast.parse((REPO / "jetspec" / "__init__.py").read_text()))
    table = doc.split("Shape glossary", 1)[1].split("\n\n", 2)[1]
    return {m.group(1) for line in table.splitlines()
            for m in re.finditer(r"(?:^ {4}| {2,})([A-Za-z](?:[a-z]|_kv)?)(?= {2,})", line)}


def annotation_dims(source: str) -> list[tuple[int, str]]:
    """(line, dimension string) of every ``Dtype[Tensor, "dims"]`` whose Dtype comes from jaxtyping."""
    tree = ast.parse(source)
    dtypes = {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
              and node.module == "jaxtyping" for a in node.names}
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id in dtypes
                and isinstance(node.slice, ast.Tuple) and len(node.slice.elts) == 2
                and isinstance(node.slice.elts[1], ast.Constant) and isinstance(node.slice.elts[1].value, str)):
            found.append((node.lineno, node.slice.elts[1].value))
    return found


def unknown_names(dims: str, letters: set[str]) -> list[str]:
    """The names in one dimension string that are not glossary letters (marks and numbers allowed)."""
    bad = []
    for tok in dims.split():
        if tok.startswith("*"):  # a variadic dimension: a letter, or "shape" for any shape
            if tok[1:] not in letters | {"shape"}:
                bad.append(tok)
            continue
        tok = tok.removeprefix("#")
        if tok in MARKS:
            continue
        bad += [name for name in IDENT.findall(tok) if name not in letters]  # also inside "T-1", "(N+31)//32"
    return bad


def reglossaries(source: str) -> list[int]:
    """Lines of module, class and function docstrings that open a "Shapes" paragraph other than the pointer."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc and any(ln.strip().startswith("Shapes") and ln.strip() != POINTER for ln in doc.splitlines()):
                lines.append(getattr(node, "lineno", 1))
    return lines


def test_the_package_docstring_and_the_design_list_the_same_letters():
    assert design_letters() == docstring_letters()
    assert {"B", "T", "N", "M", "k", "R", "C", "Vd", "h_kv", "O"} <= design_letters()  # the parsers read the tables


def test_every_annotation_uses_only_glossary_letters():
    letters, bad = design_letters(), []
    for module, path in sorted(package_modules().items()):
        for line, dims in annotation_dims(path.read_text()):
            if names := unknown_names(dims, letters):
                bad.append(f"{path.relative_to(REPO)}:{line} {dims!r}: {names}")
    assert not bad, "letters outside the glossary (jetspec/__init__.py):\n" + "\n".join(bad)


def test_no_module_brings_its_own_glossary():
    bad = [f"{path.relative_to(REPO)}:{line}" for module, path in sorted(package_modules().items())
           for line in reglossaries(path.read_text())]
    assert not bad, f"a Shapes paragraph that redefines letters (write {POINTER!r}): {bad}"


def test_the_checks_can_fail():
    """Negative control: the checks find a stray letter, a stray variadic, a local glossary."""
    letters = design_letters()
    source = ('"""A module.\n\nShapes: B batch, M rows, k top-k.\n"""\nfrom jaxtyping import Float as Fl\n'
              'def f(x: Fl["Tensor", "B Q"], y: Fl["Tensor", "*rows T-1"], z: Fl["Tensor", "N (N+W2)//32"]): ...\n')
    found = {dims: unknown_names(dims, letters) for _, dims in annotation_dims(source)}
    assert found == {"B Q": ["Q"], "*rows T-1": ["*rows"], "N (N+W2)//32": ["W2"]}
    assert unknown_names("#B 1 N T _ ... *shape M+1", letters) == []
    assert reglossaries(source) == [1]
    assert reglossaries(f'"""A module.\n\n{POINTER}\n"""\n') == []
