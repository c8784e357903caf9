"""The top-level ``kernels/`` folder never stands in for Hugging Face's ``kernels`` package.

Run from the repository root, Python puts the root first on ``sys.path``, so ``import kernels``
finds this folder before the installed package that transformers imports (docs/design.md §6.8).
Each probe runs in a fresh interpreter whose working directory is the root, as a user's
``python -m jetspec ...`` or ``python -m pytest`` would.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
import kernels
import transformers.models.llama
from transformers import LlamaConfig, LlamaForCausalLM
cfg = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=1)
LlamaForCausalLM(cfg)  # building a model is what imported the hub-kernels integration
print(json.dumps({"kernels": kernels.__file__, "has_jetspec_names": hasattr(kernels, "tree_attention")}))
"""


def probe(cwd: Path, code: str = PROBE) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_import_kernels_from_the_root_gets_the_installed_package():
    out = probe(ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert not Path(found["kernels"]).resolve().is_relative_to(ROOT / "kernels"), found
    assert not found["has_jetspec_names"]


def test_jetspec_kernels_still_imports_from_the_root():
    out = probe(ROOT, "import kernels, jetspec.kernels as jk; print(jk.__file__, kernels is not jk, len(jk.__all__))")
    assert out.returncode == 0, out.stderr[-2000:]
    path, distinct, names = out.stdout.split()
    assert Path(path).resolve() == ROOT / "kernels" / "__init__.py" and distinct == "True" and int(names) > 5


def test_without_an_installed_kernels_the_bare_name_is_missing_not_ours():
    """Where no other ``kernels`` exists, the bare import fails as it would anywhere else."""
    code = ("import sys; sys.path = [p for p in sys.path if 'site-packages' not in p]\n"
            "try:\n    import kernels\nexcept ModuleNotFoundError as e:\n    print('missing', e.name)\n"
            "else:\n    print('found', kernels.__file__)")
    out = probe(ROOT, code)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["missing", "kernels"]


def test_control_a_plain_top_level_kernels_folder_does_shadow(tmp_path):
    """Negative control: a folder with an ordinary ``__init__.py`` (the old layout) breaks the probe,
    so the first test can fail."""
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "__init__.py").write_text('"""an unrelated package"""\n')
    out = probe(tmp_path)
    assert out.returncode != 0
    assert "cannot import name" in out.stderr and str(tmp_path / "kernels") in out.stderr
