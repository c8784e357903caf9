"""The jaxtyping import hook is on for the test session (tests/conftest.py), so annotations can fail.

A shape annotation that nothing checks is a comment that can lie. These tests call annotated
functions of the package with a wrongly shaped argument and expect the checker to refuse it,
in both folders of the package mapping (jetspec/ itself and kernels/, installed as jetspec.kernels).
"""

from __future__ import annotations

import pytest
import torch
from jaxtyping import TypeCheckError

from jetspec.core.masks import tree_visibility
from jetspec.core.types import ancestor_mask


def test_a_wrong_rank_is_refused_in_jetspec():
    with pytest.raises(TypeCheckError):
        ancestor_mask(torch.tensor([[-1, 0]]))  # parents must be [N], not [1, N]


def test_a_mismatched_dimension_is_refused_in_kernels():
    with pytest.raises(TypeCheckError):
        tree_visibility(torch.ones(3, 4, dtype=torch.bool), 2)  # ancestor must be square [N, N]


def test_a_wrong_dtype_is_refused():
    with pytest.raises(TypeCheckError):
        ancestor_mask(torch.tensor([-1.0, 0.0]))  # parents are integers


def test_dataclass_fields_are_checked_together():
    from jetspec.core.types import DraftTree

    with pytest.raises(TypeCheckError):  # tokens has N = 3 nodes, parents N = 2
        DraftTree(tokens=torch.tensor([1, 2, 3]), parents=torch.tensor([-1, 0]), depth=torch.tensor([0, 1, 1]),
                  score=torch.zeros(3))


def test_a_drafters_module_is_checked_too():
    from jetspec.drafters.head_layers import attend

    q = torch.zeros(1, 2, 3, 4)
    with pytest.raises(TypeCheckError):  # v must have k's T = 5 keys
        attend(q, torch.zeros(1, 1, 5, 4), torch.zeros(1, 1, 6, 4), torch.zeros(1, 1, 3, 5))


def test_self_validating_entry_points_keep_their_own_errors():
    from jetspec.core.sampling import SamplingConfig

    with pytest.raises(ValueError, match="temperature"):
        SamplingConfig(temperature="1")
