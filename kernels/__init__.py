"""jetspec.kernels: attention for verifying draft trees, as a Triton kernel and its PyTorch twin.

Importing it has no side effects and does not import triton; the kernel is compiled on first use.

    tree_attention(q, k, v, ancestor, scale=None, backend="auto")
    PackedLinear(weights, biases=None, backend="auto")   # a frozen model's products, prepacked

The ``ancestor`` argument is a mask of ``jetspec.core.masks``, the home of the mask vocabulary;
its three ancestor builders are re-exported here because every call needs one. A drafting head's
block attention is the same call with a chain (causal) or all-True (bidirectional) ancestor mask
(``chain_ancestor``, ``full_ancestor``).

Installed only as ``jetspec.kernels``. Run from the repository root, Python puts the root on
``sys.path`` (``python -m``, the test runner, notebooks), so this folder is also reachable under
its bare name ``kernels``, which belongs to Hugging Face's hub-kernels package that transformers
imports. Imported under that name, this file loads the installed ``kernels`` package in its own
place and defines nothing of jetspec's (docs/design.md §6.8).
"""

if __name__ == "kernels":
    # stdlib only: this runs while transformers is being imported.
    import importlib.machinery as _machinery
    import importlib.util as _util
    import os as _os
    import sys as _sys

    _root = _os.path.dirname(_os.path.dirname(_os.path.realpath(__file__)))
    _elsewhere = [p for p in _sys.path if _os.path.realpath(p or _os.getcwd()) != _root]
    _spec = _machinery.PathFinder.find_spec(__name__, _elsewhere)
    if _spec is None or _spec.loader is None:
        del _sys.modules[__name__]
        raise ModuleNotFoundError(f"No module named {__name__!r}", name=__name__)
    _module = _util.module_from_spec(_spec)
    _sys.modules[__name__] = _module  # the import statement returns this entry, not this file's module
    _spec.loader.exec_module(_module)
else:
    from jetspec.core.masks import ancestor_from_parents, chain_ancestor, full_ancestor

    from .packed_linear import PackedLinear, onednn_available
    from .reference import masked_attention, tree_attention_reference
    from .tree_attention import pack_ancestor_bits, tree_attention, tree_attention_triton, triton_installed

    __all__ = [
        "PackedLinear",
        "onednn_available",
        "ancestor_from_parents",
        "chain_ancestor",
        "full_ancestor",
        "masked_attention",
        "pack_ancestor_bits",
        "tree_attention",
        "tree_attention_reference",
        "tree_attention_triton",
        "triton_installed",
    ]
