"""jetspec: lossless speculative decoding with causal parallel tree drafting, for learning and research.

A round of tree speculative decoding (docs/design.md §1) has five named stages:

    draft (Drafter) -> build tree (TreeBuilder) -> verify (target forward) -> accept (Verifier) -> commit

Shape glossary used in every docstring and shape comment of this package:

    B  batch                      T  tokens in a sequence         P  cached prefix length
    N  tree nodes (root included) D  tree depth                   W  tree width (candidates/depth)
    V  vocabulary size            H  hidden size                  h  attention heads (h_kv: K/V heads)
    K  head dim                   L  target decoder layers        S  block size of a parallel head
    F  fused tap features (k tapped layers x H)

Notation: p is the target's distribution, q the draft's.
"""

from jetspec.decoding import GenerationResult, SpeculativeDecoder, autoregressive_generate
from jetspec.interfaces import (
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
from jetspec.loading import load_target
from jetspec.sampling import SamplingConfig, process_logits
from jetspec.target import TargetModel
from jetspec.types import Acceptance, DraftInput, DraftOutput, DraftTree, VerifyInput

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
