"""mkdocs hooks of the jetspec site: executed tutorials, the generated API reference, strictness checks.

- Tutorials: the site shows the executed copies in ``build/tutorials/`` (written by the test suite, see
  ``jetspec/testing/notebooks.py``); missing or stale ones are executed here first. Their pages and
  the "Tutorials" section of the navigation come from a glob, so a new ``tutorials/NN_name.ipynb``
  appears without editing this file or ``mkdocs.yml``; its overview page opens with the syllabus of
  ``tutorials/README.md``, which must hold a row for every tutorial. A copy with an error output
  fails the build.
- API reference: one page per public module, one entry per name of its ``__all__`` (the pinned API).
  A public name without its own docstring, or a public method of a public class without one (its own or
  that of the method it overrides), fails the build.
"""

from __future__ import annotations

import importlib
import inspect
import posixpath
import re
import shutil
from pathlib import Path

import nbformat
from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

from jetspec.testing import notebooks as nbexec

# The pinned public API: module -> page title. Each module's __all__ lists its public names.
PUBLIC_MODULES = {
    "jetspec": "jetspec",
    "jetspec.drafters": "jetspec.drafters",
    "jetspec.trees": "jetspec.trees",
    "jetspec.verifiers": "jetspec.verifiers",
    "jetspec.kernels": "jetspec.kernels",
}
TUTORIALS_ENTRY = "Tutorials"
ASSETS = nbexec.REPO / "jetspec" / "assets"
SHIPPED_HEADS_PAGES = ("MODEL_CARD.md", "loss_curves.png")
API_ENTRY = "API reference"


# ----------------------------------------------------------------------------------------- tutorials
def _title(notebook: Path) -> str:
    """The notebook's first markdown heading, e.g. '1. Autoregressive decoding and the KV cache'."""
    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            match = re.search(r"^#\s+(.+)$", cell.source, re.M)
            if match:
                return match.group(1).strip()
    return notebook.stem


def _summary(notebook: Path) -> str:
    """The first paragraph after the title, flattened to one line (what the tutorial teaches)."""
    nb = nbformat.read(notebook, as_version=4)
    first = next((c.source for c in nb.cells if c.cell_type == "markdown"), "")
    text = re.sub(r"^#.*$", "", first, flags=re.M).strip()
    text = re.sub(r"^\*\*What you will learn\*\*\s*(\([^)]*\))?\s*:?", "", text).strip()
    text = re.split(r"\n\s*\n(?!\s*\* )", text)[0]  # the first paragraph, with its bullet list
    text = " ".join(re.sub(r"^\s*\* ", "", line) for line in text.splitlines())
    text = " ".join(text.split())
    return text if len(text) <= 320 else text[:320].rsplit(" ", 1)[0] + " ..."


SYLLABUS = nbexec.TUTORIALS / "README.md"


def tutorials_index(notebooks: list[Path], syllabus: Path = SYLLABUS) -> str:
    """The tutorials' overview page: the hand-written syllabus (``tutorials/README.md``: paths,
    prerequisites, minutes, here vs the paper, glossary), then every tutorial with its summary.
    A tutorial without its row in the syllabus table (a link to ``NN_name.ipynb``) fails the build."""
    text = syllabus.read_text(encoding="utf-8")
    missing = [nb.name for nb in notebooks if not re.search(rf"^\|[^\n]*\]\({re.escape(nb.name)}\)", text, re.M)]
    if missing:
        raise PluginError(f"{syllabus.name} (tutorials/): no syllabus row for {', '.join(missing)}")
    lines = [text.rstrip(), "", "## Every tutorial", "",
             "Executed notebooks: prose, code, printed results and figures, as the test suite ran them "
             "(on a 2-core CPU, no GPU).", ""]
    lines += [f"- **[{_title(nb)}]({nb.name})**: {_summary(nb)}" for nb in notebooks]
    return "\n".join(lines) + "\n"


def ensure_executed(notebooks: list[Path], out: Path = nbexec.BUILD) -> None:
    """Execute the notebooks whose copy in ``out`` is missing or stale, then fail on any copy holding an error."""
    stale = [nb for nb in notebooks if nbexec.is_stale(nb, out)]
    if stale:
        print(f"docs: executing {len(stale)} tutorial(s) missing from or stale in {out}", flush=True)
        nbexec.execute_all(stale, out)
    errors = []
    for nb in notebooks:
        error = nbexec.first_error(nbformat.read(nbexec.executed_path(nb, out), as_version=4))
        if error is not None:
            errors.append(error.describe(nb.name))
    if errors:
        raise PluginError("a tutorial cell raised:\n" + "\n\n".join(errors))


# ----------------------------------------------------------------------------------------------- API
def _public_names(module_name: str) -> list[str]:
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    if not names:
        raise PluginError(f"{module_name} has no __all__: the API reference documents only pinned names")
    return list(names)


def _own_doc(obj) -> str:
    """The object's own docstring ('' when missing; a dataclass's generated signature does not count)."""
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    doc = (doc or "").strip()
    if inspect.isclass(obj) and doc.startswith(obj.__name__ + "("):
        return ""  # dataclass default: the signature, not a description
    return doc


def missing_docstrings(module_name: str) -> list[str]:
    """Public names of ``module_name`` (and public methods of its public classes) without a docstring."""
    module = importlib.import_module(module_name)
    missing = []
    for name in _public_names(module_name):
        obj = getattr(module, name)
        if inspect.isclass(obj) or inspect.isroutine(obj):
            if not _own_doc(obj):
                missing.append(f"{module_name}.{name}")
        else:
            # an instance (a registry): its class carries the contract
            if not _own_doc(type(obj)):
                missing.append(f"{module_name}.{name} (type {type(obj).__name__})")
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_") or not (inspect.isfunction(member) or isinstance(member, property)):
                    continue
                # an override inherits the contract of the method it overrides (Drafter.draft, ...)
                if not (inspect.getdoc(getattr(obj, attr)) or "").strip():
                    missing.append(f"{module_name}.{name}.{attr}")
    return missing


def _target_path(module_name: str, name: str) -> str:
    """Where griffe finds the definition: the defining module for classes and functions."""
    obj = getattr(importlib.import_module(module_name), name)
    if inspect.isclass(obj) or inspect.isroutine(obj):
        return f"{obj.__module__}.{obj.__qualname__}"
    return f"{module_name}.{name}"


def _api_page(module_name: str) -> str:
    module = importlib.import_module(module_name)
    lines = [f"# `{module_name}`", "", inspect.getdoc(module) or "", ""]
    for name in _public_names(module_name):
        lines += [f"::: {_target_path(module_name, name)}", "    options:", f"      heading: {name}",
                  "      show_root_full_path: false", ""]
    return "\n".join(lines)


def _api_index() -> str:
    lines = ["# API reference", "",
             "Every name that the public modules pin in their `__all__`, with the docstring it carries. "
             "The site build fails when one of them, or a public method of a public class, has none.", ""]
    for module_name in PUBLIC_MODULES:
        names = ", ".join(f"`{n}`" for n in _public_names(module_name))
        lines += [f"- [`{module_name}`]({_api_uri(module_name).split('/', 1)[1]}): {names}"]
    return "\n".join(lines) + "\n"


def _api_uri(module_name: str) -> str:
    return f"api/{module_name.replace('.', '_')}.md"


def benchmark_images() -> list[str]:
    """Relative paths of the existing images BENCHMARKS.md links to (``![alt](path)`` or ``![alt](/path)``,
    from the repository root)."""
    text = (nbexec.REPO / "BENCHMARKS.md").read_text(encoding="utf-8")
    links = [link.lstrip("/") for link in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", text)]
    return sorted({link for link in links if "://" not in link and (nbexec.REPO / link).is_file()})


SNIPPET = re.compile(r'^--8<-- "([^"]+)"$', re.M)
ROOT_LINK = re.compile(r"(\]\()/([^)\s]+)\)")


def inline_snippets(markdown: str, page_src: str) -> str:
    """Inline each ``--8<-- "FILE"`` line (FILE from the repository root) with its links from the
    repository root (``](/docs/results/img/x.png)``: what the reports included into BENCHMARKS.md write,
    so they resolve on the code host wherever they are read) made relative to the page ``page_src``;
    mkdocs would leave a root link as it is, which breaks on a site served under a sub-path."""
    base = posixpath.dirname(page_src) or "."

    def relative(m: re.Match) -> str:
        target = m.group(2)
        if not (nbexec.REPO / target).is_file():
            return m.group(0)  # not a repository file: left for the strict build to report
        return f"{m.group(1)}{posixpath.relpath(target, base)})"

    def include(m: re.Match) -> str:
        path = nbexec.REPO / m.group(1)
        if not path.is_file():
            raise PluginError(f"{page_src}: the included file {m.group(1)} does not exist")
        return ROOT_LINK.sub(relative, path.read_text(encoding="utf-8"))

    return SNIPPET.sub(include, markdown)


# --------------------------------------------------------------------------------------------- hooks
def _expand(nav: list, entry: str, pages: list) -> None:
    for i, item in enumerate(nav):
        if isinstance(item, dict) and entry in item:
            nav[i] = {entry: pages}
            return
    raise PluginError(f"mkdocs.yml: the nav has no '{entry}' entry for the generated pages")


def _mirror_package(dest: Path) -> None:
    """Copy the package's sources laid out as Python imports them, for griffe to read statically:
    pyproject.toml maps drafters/ to jetspec.drafters (and trees/, verifiers/, kernels/ alike), which
    griffe does not follow (it resolves symlinks too), so ``dest/jetspec/drafters`` is a copy."""
    mapping = {"jetspec": "jetspec", "jetspec/drafters": "drafters", "jetspec/trees": "trees",
               "jetspec/verifiers": "verifiers", "jetspec/kernels": "kernels"}
    shutil.rmtree(dest, ignore_errors=True)
    for inside, folder in mapping.items():
        shutil.copytree(nbexec.REPO / folder, dest / inside, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "assets", "*.cpp"))


@event_priority(100)  # before mkdocstrings' on_config, which drops search paths that do not exist yet
def on_config(config):
    """Check the docstrings, make sure the tutorials are executed, and fill the two generated nav sections."""
    _mirror_package(nbexec.REPO / "build" / "api_src")
    missing = [m for module in PUBLIC_MODULES for m in missing_docstrings(module)]
    if missing:
        raise PluginError("public names without a docstring:\n  " + "\n  ".join(missing))
    notebooks = nbexec.tutorial_notebooks()
    ensure_executed(notebooks)
    _expand(config["nav"], TUTORIALS_ENTRY,
            [{"Overview": "tutorials/index.md"}] + [{_title(nb): f"tutorials/{nb.name}"} for nb in notebooks])
    _expand(config["nav"], API_ENTRY,
            [{"Overview": "api/index.md"}] + [{title: _api_uri(m)} for m, title in PUBLIC_MODULES.items()])
    return config


@event_priority(50)  # before mkdocs-jupyter's on_files, which turns the .ipynb files into pages
def on_files(files, config):
    """Add the executed tutorials (from build/tutorials), the tutorials' overview (``tutorials_index``) and the
    API pages."""
    for nb in nbexec.tutorial_notebooks():
        copy = nbexec.executed_path(nb)
        files.append(File(f"tutorials/{nb.name}", src_dir=str(copy.parent.parent), dest_dir=config["site_dir"],
                          use_directory_urls=config["use_directory_urls"]))
    files.append(File.generated(config, "tutorials/index.md", content=tutorials_index(nbexec.tutorial_notebooks())))
    # the shipped heads' model card and its figure live with the heads (jetspec/assets/heads/)
    for name in SHIPPED_HEADS_PAGES:
        files.append(File(f"heads/{name}", src_dir=str(ASSETS), dest_dir=config["site_dir"],
                          use_directory_urls=config["use_directory_urls"]))
    # images that BENCHMARKS.md (included by benchmarks.md) links relative to the repository root are
    # published under the same path, so its links work on the site as on the code host; a link to a
    # file that does not exist stays unresolved and fails the strict build
    for image in benchmark_images():
        files.append(File(image, src_dir=str(nbexec.REPO), dest_dir=config["site_dir"],
                          use_directory_urls=config["use_directory_urls"]))
    files.append(File.generated(config, "api/index.md", content=_api_index()))
    for module_name in PUBLIC_MODULES:
        files.append(File.generated(config, _api_uri(module_name), content=_api_page(module_name)))
    return files


def on_page_markdown(markdown, page, config, files):
    """Included reports (``--8<--`` lines) with their root links made page-relative (``inline_snippets``)."""
    return inline_snippets(markdown, page.file.src_uri)
