"""The three swappable parts of a speculative round, and their registries.

Each part is a small ABC with one typed input and one typed output (``jetspec.core.types``):

    Drafter.draft(DraftInput) -> DraftOutput          (docs/design.md §4)
    TreeBuilder.build(DraftOutput) -> DraftTree       (docs/design.md §2)
    Verifier.verify(VerifyInput) -> Acceptance        (docs/design.md §1 and §3)

The decoding loop knows only these interfaces. Implementations register themselves by name
(``@register_drafter("ngram")``) so the CLI and configs can pick them with a string.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import Callable, Sequence, TypeVar

from jetspec.core.types import Acceptance, DraftInput, DraftOutput, DraftTree, VerifyInput


class Drafter(ABC):
    """Proposes continuations of the anchor token.

    Attributes a drafter may override:
      * ``vocab_size``: the token space it drafts in; checked against the target's.
      * ``tap_layers``: target decoder layers whose outputs it wants as ``DraftInput.taps``.
      * ``max_depth``: the deepest tree it can draft (None = unlimited).
    """

    vocab_size: int | None = None
    tap_layers: tuple[int, ...] = ()
    max_depth: int | None = None

    @abstractmethod
    def draft(self, inp: DraftInput) -> DraftOutput:
        """Propose per-depth candidate tables or a candidate tree for ``inp.tokens[-1]``.

        The decoding loop calls this through ``jetspec.core.checks.run_drafter``: ``inp.tokens`` is the
        drafter's own copy (writing to it changes nothing that is emitted), and the returned
        ``DraftOutput`` is checked (shapes, ids in the target's vocabulary, q) with errors naming
        the drafter. Drafters built for one target (learned heads) record its shape in
        ``config.target_hidden_size`` / ``target_vocab_size`` / ``target_num_layers``;
        ``SpeculativeDecoder`` refuses another target up front.
        """

    def draft_batch(self, inputs: Sequence[DraftInput]) -> list[DraftOutput]:
        """One proposal per batch row: ``out[i]`` must equal ``self.draft(inputs[i])``.

        ``inputs[i].row`` names the row, so a stateful drafter keeps each row's cache apart. This
        default drafts the rows one after another; drafters that can draft several rows in one
        forward (the learned heads, the draft LM) override it (docs/design.md §4.9).
        """
        return [self.draft(inp) for inp in inputs]


class TreeBuilder(ABC):
    """Spends a budget of drafted nodes (root excluded) on a tree.

    ``depth``, ``width`` and ``budget`` are told to the drafter through ``DraftInput`` so it
    drafts just enough.
    """

    depth: int
    width: int
    budget: int

    @abstractmethod
    def build(self, draft: DraftOutput, anchor: int) -> DraftTree:
        """Turn a proposal into a flat parent-before-child tree rooted at ``anchor``."""


class Verifier(ABC):
    """Decides which drafted path the target accepts and which token follows it."""

    #: True if the verifier's output is only correct at temperature 0.
    greedy_only: bool = False

    @abstractmethod
    def verify(self, inp: VerifyInput) -> Acceptance:
        """Return the accepted path (root excluded) and the bonus token."""


T = TypeVar("T")


class Registry(dict):
    """name -> class, filled by a decorator; ``create(name, **kwargs)`` instantiates.

    ``register_lazy(name, "module:Class")`` lists an implementation without importing it (the
    learned heads pull in Lightning, which the decoding loop itself never needs); the module is
    imported the first time the name is looked up.
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator: register the class under ``name`` (a ``ValueError`` if another class has it)."""
        def deco(cls: type[T]) -> type[T]:
            current = dict.get(self, name)
            if current is not None and not isinstance(current, str) and current is not cls:
                raise ValueError(f"{self.kind} '{name}' is already registered to {current.__name__}")
            self[name] = cls
            cls.registry_name = name
            return cls

        return deco

    def register_lazy(self, name: str, target: str) -> None:
        if name not in self:
            self[name] = target

    def __getitem__(self, name: str):
        value = super().__getitem__(name)
        if isinstance(value, str):
            module, attr = value.split(":")
            value = getattr(importlib.import_module(module), attr)
            self[name] = value
        return value

    def get(self, name: str, default=None):
        return self[name] if name in self else default

    def create(self, name: str, **kwargs):
        if name not in self:
            known = ", ".join(sorted(self)) or "(none loaded)"
            raise KeyError(f"unknown {self.kind} '{name}'; known: {known}")
        return self[name](**kwargs)


DRAFTERS = Registry("drafter")
TREE_BUILDERS = Registry("tree builder")
VERIFIERS = Registry("verifier")

register_drafter = DRAFTERS.register
register_tree_builder = TREE_BUILDERS.register
register_verifier = VERIFIERS.register
