"""Checks where the decoding core meets code and data it does not control.

A drafter is user code, and whatever it returns flows on to the tree builder and the verifier. A
malformed proposal would crash deep inside torch (``index out of range in self``; on CUDA a
device-side assert that kills the process), and a wrong q would silently bias the sampling law.
So the loop calls every drafter through ``run_drafter``: the drafter gets its own copy of the
committed tokens, and its proposal is checked before anything else reads it, with the drafter
named in every error. ``check_drafter_target`` compares a drafter with the target up front.
"""

from __future__ import annotations

import numbers
from dataclasses import replace
from typing import Optional, Sequence

import torch
from torch import Tensor

from jetspec.core.types import DraftInput, DraftOutput, MalformedDraft


def drafter_name(drafter) -> str:
    """How errors name a drafter: its class name."""
    return type(drafter).__name__


def check_token_ids(ids: Tensor, vocab_size: int, what: str) -> None:
    """Raise a ValueError naming ``what`` if an id lies outside ``[0, vocab_size)``."""
    if ids.numel() == 0:
        return
    flat = ids.flatten()
    bad = (flat < 0) | (flat >= vocab_size)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"{what} holds token id {int(flat[i])} (flat position {i}), outside the target's "
                         f"vocabulary [0, {vocab_size})")


def check_prompt_ids(input_ids, max_new_tokens, vocab_size: int, shape: str) -> Tensor:
    """``input_ids`` as a 2-D ``shape`` ("[1, T]" or "[B, T]") tensor after checking it (integer ids
    inside the target's vocabulary, at least one token) and ``max_new_tokens`` (an integer >= 1)."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.long, torch.int):
        raise ValueError(f"input_ids must be a LongTensor of shape {shape}")
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    if input_ids.dim() != 2 or input_ids.shape[0] < 1:
        raise ValueError(f"input_ids must be {shape}, got shape {tuple(input_ids.shape)}")
    if input_ids.shape[1] < 1:
        raise ValueError("input_ids is empty: the prompt needs at least one token")
    check_token_ids(input_ids, vocab_size, "input_ids")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    return input_ids


def run_drafter(drafter, inp: DraftInput, vocab_size: Optional[int]) -> DraftOutput:
    """``drafter.draft(inp)`` on a private copy of ``inp.tokens``, its output checked.

    The copy means a drafter that writes into ``inp.tokens`` changes neither the committed
    sequence nor the caller's ``input_ids``: only the verifier decides what is emitted. (``taps``
    are not copied: they are only ever read by the drafter itself, and copying them every round
    would cost T x F floats.) Raises a ValueError naming the drafter when it returns something
    other than a well-formed ``DraftOutput`` over the target's vocabulary (``DraftOutput.check``;
    ``vocab_size`` None skips the vocabulary checks, for callers that do not know it).
    """
    name = drafter_name(drafter)
    out = None
    try:
        out = drafter.draft(replace(inp, tokens=inp.tokens.clone()))
    except MalformedDraft as err:
        raise ValueError(f"drafter {name} built a malformed DraftOutput: {err}") from err
    return _checked(name, out, vocab_size)


def run_drafter_batch(drafter, inputs: Sequence[DraftInput], vocab_size: Optional[int]) -> list[DraftOutput]:
    """``drafter.draft_batch(inputs)`` with the guarantees of ``run_drafter`` for every row.

    Each row's tokens are a private copy, the drafter must return one proposal per row, and each
    proposal is checked; errors name the drafter and the row.
    """
    name = drafter_name(drafter)
    outs = None
    try:
        outs = drafter.draft_batch([replace(inp, tokens=inp.tokens.clone()) for inp in inputs])
    except MalformedDraft as err:
        raise ValueError(f"drafter {name} built a malformed DraftOutput: {err}") from err
    if not isinstance(outs, (list, tuple)) or len(outs) != len(inputs):
        got = type(outs).__name__ if not isinstance(outs, (list, tuple)) else f"{len(outs)} proposals"
        raise ValueError(f"drafter {name}.draft_batch returned {got} for {len(inputs)} rows; it must return "
                         "a list with one DraftOutput per row")
    checked = []
    for inp, out in zip(inputs, outs):
        try:
            checked.append(_checked(name, out, vocab_size))
        except ValueError as err:
            raise ValueError(f"batch row {inp.row}: {err}") from err
    return checked


def _checked(name: str, out, vocab_size: Optional[int]) -> DraftOutput:
    """``out`` if it is a well-formed proposal over the target's vocabulary; else a ValueError naming the drafter."""
    if not isinstance(out, DraftOutput):
        got = "None" if out is None else type(out).__name__
        raise ValueError(f"drafter {name} returned {got}, not a DraftOutput")
    try:
        out.check()  # again: fields may have been reassigned after construction
        tokens = out.depth_tokens if out.depth_tokens is not None else out.node_tokens
        if vocab_size is not None:
            check_token_ids(tokens, vocab_size, "the proposal")
        if vocab_size is not None and out.node_q is not None and out.node_q.shape[1] != vocab_size:
            raise MalformedDraft(f"node_q has {out.node_q.shape[1]} columns; the target's vocabulary has "
                                 f"{vocab_size}")
    except ValueError as err:
        raise ValueError(f"drafter {name} returned a bad proposal: {err}") from err
    return out


def check_drafter_target(drafter, target) -> None:
    """Refuse a drafter that cannot run on ``target`` (a ``TargetModel``), naming both sides.

    Learned heads record the target they were built for in ``config.target_hidden_size``,
    ``target_vocab_size`` and ``target_num_layers``; another target would fail later with a
    matmul shape error, or, with equal shapes but more layers, silently read other layers' taps.
    Every drafter's ``tap_layers`` must exist in the target.
    """
    name = drafter_name(drafter)
    c = target.config
    layers = c.num_hidden_layers
    cfg = getattr(drafter, "config", None)
    for label, attr, have in (("hidden size", "target_hidden_size", c.hidden_size),
                              ("vocab size", "target_vocab_size", target.vocab_size),
                              ("number of layers", "target_num_layers", layers)):
        want = getattr(cfg, attr, None)
        if want is not None and want != have:
            raise ValueError(f"drafter {name} was built for a target with {label} {want}; this target has "
                             f"{label} {have}")
    taps = tuple(drafter.tap_layers)
    if any(not isinstance(i, numbers.Integral) or not 0 <= i < layers for i in taps):
        raise ValueError(f"drafter {name} asks for tap_layers {taps}, but the target's layers are "
                         f"0..{layers - 1}")
