"""jetspec: lossless speculative decoding with causal parallel tree drafting, for learning and research.

A round of tree speculative decoding (docs/design.md §1) has five named stages:

    draft (Drafter) -> build tree (TreeBuilder) -> verify (target forward) -> accept (Verifier) -> commit

Shape glossary: one meaning per letter in every annotation, docstring and shape comment of the
package (docs/design.md section 8 mirrors it). Annotations are jaxtyping dimensions, checked at
call time while the tests run (tests/conftest.py), so a wrong one fails; a size derived from others
is written as an expression of them ("T-1", "M+1", "A*S") when jaxtyping can evaluate it (every
name in it is bound by an earlier argument), else under the letter of what it counts (keys: T).
Entry points that validate their own arguments, with errors that name them (``SamplingConfig``,
``DraftOutput``, ``generate``, ``autoregressive_generate``, the tree builders' constructors,
``tree_attention`` and its two backends), are marked ``@no_type_check`` so that the tests see the
errors users get; everything they call is checked.

    B     batch                          T     tokens of a sequence; in attention, the keys (P + N)
    P     cached prefix length           N     tree nodes, root included; in a forward, its new rows
    D     tree depth                     W     tree width: candidates per depth (or per node)
    M     candidate nodes of a DraftOutput (the anchor excluded; M+1 rows when the anchor has one)
    V     target vocabulary              Vd    draft vocabulary (a head's reduced output layer)
    H     hidden size                    Hd    a draft head's hidden size, where it differs from H
    I     a layer's input width          O     a layer's output width (where they differ from H)
    h     attention (query) heads        h_kv  key/value heads (GQA: h is a multiple of h_kv)
    K     head dim                       L     decoder layers
    A     anchors per training sequence  S     slots per anchor: a parallel head's block size
                                               (an EAGLE head's unrolled steps + 1)
    k     tapped target layers (a count, never a top-k)   F     tap features, F = k*H
    R     rows picked from a larger set (the tree nodes a head re-runs, the supervised positions)
    C     teacher entries kept per row (a cached top-C distribution)
    Z     slices of the keys that a split-K attention kernel merges

Beside the letters, annotations use jaxtyping's marks: ``*B`` any number of batch dimensions,
``*shape`` any shape (the same wherever it appears in one call), ``#`` a dimension that
broadcasts, ``_`` one that is not checked, ``...`` any dimensions. tests/test_glossary.py reads
every annotation of the package and refuses a name that is not in this list.

Notation: p is the target's distribution, q the draft's.
"""

from jetspec.core.decoding import SpeculativeDecoder, autoregressive_generate
from jetspec.core.generation import GenerationResult
from jetspec.core.interfaces import (
    DRAFTERS,
    TREE_BUILDERS,
    VERIFIERS,
    Drafter,
    TreeBuilder,
    Verifier,
    register_drafter,
    register_tree_builder,
    register_verifier,
)
from jetspec.core.loading import load_target
from jetspec.core.sampling import SamplingConfig, process_logits
from jetspec.core.target import TargetModel
from jetspec.core.types import Acceptance, DraftInput, DraftOutput, DraftTree, VerifyInput

# Register the shipped parts by name (the CLI and configs look them up in the registries).
import jetspec.drafters  # noqa: E402,F401  isort: skip
import jetspec.trees  # noqa: E402,F401  isort: skip
import jetspec.verifiers  # noqa: E402,F401  isort: skip

__version__ = "0.1.0"

__all__ = [
    "Acceptance", "DRAFTERS", "DraftInput", "DraftOutput", "DraftTree", "Drafter", "GenerationResult",
    "SamplingConfig", "SpeculativeDecoder", "TREE_BUILDERS", "TargetModel", "TreeBuilder", "VERIFIERS",
    "Verifier", "VerifyInput", "autoregressive_generate", "load_target", "process_logits", "register_drafter",
    "register_tree_builder", "register_verifier",
]
