"""The repository is self-contained: it cites its own design document, and only sections that exist.

Docstrings, comments, tutorials and the README cite ``docs/design.md`` by section number (the
section sign followed by ``N`` or ``N.M``). These tests fail when a cited section is missing from
the document, and when any file points to documents that live outside the repository.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DESIGN = ROOT / "docs" / "design.md"
SECTION = "\u00a7"  # the section sign, spelled out so this file cites nothing itself
CITED = re.compile(SECTION + r"(\d+(?:\.\d+)*)")
HEADING = re.compile(r"^#{2,3} (\d+(?:\.\d+)?)[.\s]", re.M)
# Documents that were never part of the repository; built from pieces so this file passes itself.
OUTSIDE = ("METHOD" + ".md", "ENVIRONMENT" + ".md", ".." + "/shared")
SKIP_DIRS = {".git", ".venv", "runs", "build", "dist", "__pycache__", ".pytest_cache", ".ruff_cache"}


def repo_files() -> list[Path]:
    """Tracked files (git), or every file outside build and environment folders without git."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        names = [n for n in out.decode().split("\0") if n]
        if names:
            return [ROOT / n for n in names if (ROOT / n).is_file()]
    except (OSError, subprocess.CalledProcessError):
        pass
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        found.extend(Path(folder) / f for f in files)
    return found


def text_files() -> dict[str, str]:
    """Relative path -> text of every repository file that is UTF-8 text (binaries skipped)."""
    texts = {}
    for path in repo_files():
        data = path.read_bytes()
        if b"\0" in data:
            continue
        try:
            texts[path.relative_to(ROOT).as_posix()] = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
    return texts


def design_sections() -> set[str]:
    return set(HEADING.findall(DESIGN.read_text(encoding="utf-8")))


def test_design_document_has_the_eight_numbered_sections():
    sections = design_sections()
    assert {str(n) for n in range(1, 9)} <= sections, sorted(sections)
    for name in sections:  # every subsection hangs under an existing section
        assert name.split(".")[0] in sections, name


def test_no_file_points_outside_the_repository():
    offenders = [f"{name}: {needle}" for name, text in text_files().items()
                 for needle in OUTSIDE if needle in text]
    assert not offenders, "cite docs/design.md (or state the fact) instead:\n" + "\n".join(offenders)


def test_every_cited_design_section_exists():
    sections = design_sections()
    missing = [f"{name}:{text.count(chr(10), 0, m.start()) + 1}: {SECTION}{m.group(1)}"
               for name, text in text_files().items()
               for m in CITED.finditer(text) if m.group(1) not in sections]
    assert not missing, "sections cited but not in docs/design.md:\n" + "\n".join(missing)


def test_the_package_cites_the_design_document():
    texts = text_files()
    citing = [name for name, text in texts.items() if "docs/design.md " + SECTION in text]
    assert any(name.startswith("jetspec/") for name in citing)
    assert "docs/design.md" in texts["README.md"]
