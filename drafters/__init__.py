"""Drafters: everything that proposes tokens for the target to verify (docs/design.md §4).

The training-free drafters import eagerly. The learned heads are LightningModules, and the decoding
core must not pull in Lightning, so they are listed in the drafter registry lazily and imported the
first time they are used (``DRAFTERS["jetspec"]`` or ``from jetspec.drafters import JetSpecHead``).

The heads shipped with the package load by name, as on the Hugging Face Hub::

    head = JetSpecHead.from_pretrained("smollm2-135m-instruct/jetspec", target=model)

(``DEFAULT_HEAD_DIR`` is their folder: ``DEFAULT_HEAD_DIR / "jetspec"`` is the same head.)
"""

import importlib

from jetspec.core.interfaces import DRAFTERS
from jetspec.core.loading import DEFAULT_HEAD_DIR
from jetspec.drafters.draft_model import DraftModelDrafter
from jetspec.drafters.ngram import NGramDrafter
from jetspec.drafters.simple import OracleDrafter, RandomDrafter, TargetScoredDrafter

_LAZY = {
    "ParallelHead": "parallel_head", "JetSpecHead": "parallel_head", "DFlashHead": "parallel_head",
    "HeadConfig": "parallel_net",
    "LearnedHead": "learned_head",
    "EagleHead": "eagle_head", "EagleConfig": "eagle_head",
    "CompositeDrafter": "composite",
    "load_dflash_checkpoint": "engine_layouts", "export_dflash_checkpoint": "engine_layouts",
    "load_eagle3_checkpoint": "engine_layouts", "export_eagle3_checkpoint": "engine_layouts",
}
for _name, _target in (("jetspec", "parallel_head:JetSpecHead"), ("dflash", "parallel_head:DFlashHead"),
                       ("eagle", "eagle_head:EagleHead"), ("composite", "composite:CompositeDrafter")):
    DRAFTERS.register_lazy(_name, f"jetspec.drafters.{_target}")


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"jetspec.drafters.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'jetspec.drafters' has no attribute '{name}'")


__all__ = ["DEFAULT_HEAD_DIR", "DraftModelDrafter", "NGramDrafter", "OracleDrafter", "RandomDrafter",
           "TargetScoredDrafter", *_LAZY]
