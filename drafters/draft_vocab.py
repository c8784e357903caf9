"""A reduced draft vocabulary: the head scores only the V' most frequent target tokens.

On a CPU the frozen lm_head is most of a draft head's cost: for SmolLM2 it is a 576 x 49,152
matrix, applied to every drafted slot in inference and to every supervised slot (forward and
backward) in training. Most of those 49k tokens never occur in the text a head drafts, so, as
EAGLE-3 does, the head can score only the V' tokens that are most frequent in its training data:
the output layer becomes the rows ``W[ids]`` of the target's lm_head (ids sorted, V' of them).

Drafting maps the chosen draft ids back to target ids (``to_target``); a token outside the
vocabulary can then never be drafted, which costs acceptance but never correctness: the target
verifies with its full vocabulary, so every verifier stays lossless (p is untouched; q simply
puts zero mass outside ``ids``).

Training compares the head with the teacher on the draft vocabulary only: the teacher's top-k
(or full) distribution is restricted to ``ids`` and renormalised there (``restrict_teacher``), and
slots whose data token is outside it get no cross-entropy loss.

Shapes use the glossary of ``jetspec`` (docs/design.md §8).
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from jetspec.kernels import PackedLinear


def token_counts(sequences: Iterable, vocab_size: int) -> Int[Tensor, " V"]:
    """How often each token id occurs in the *response* part of the sequences.

    ``sequences``: ``jetspec.training.data.Example`` objects, dicts with ``input_ids`` (and optionally
    ``response_start``) or plain id lists. Only response tokens count: they are what a head drafts.
    """
    counts: Counter = Counter()
    for s in sequences:
        if isinstance(s, dict):
            ids, start = s["input_ids"], int(s.get("response_start", 0))
        elif hasattr(s, "input_ids"):
            ids, start = s.input_ids, s.response_start
        else:
            ids, start = s, 0
        counts.update(int(t) for t in ids[max(start, 1):])
    out = torch.zeros(vocab_size, dtype=torch.long)
    for t, c in counts.items():
        if not 0 <= t < vocab_size:
            raise ValueError(f"token id {t} is outside the target vocabulary of {vocab_size}")
        out[t] = c
    return out


def frequent_tokens(counts: Int[Tensor, " V"], size: int, always: Sequence[int] = ()) -> Int[Tensor, " Vd"]:
    """The ``size`` most frequent token ids (ties: lower id first), ``always`` included, sorted.

    ``always``: ids that must be draftable whatever their count (e.g. the EOS tokens).
    """
    v = counts.shape[0]
    if not 1 <= size <= v:
        raise ValueError(f"draft vocabulary size must be in 1..{v} (the target's vocabulary), got {size}")
    always = sorted({int(t) for t in always})
    if any(not 0 <= t < v for t in always) or len(always) > size:
        raise ValueError(f"'always' ids {always} must be valid ids and no more than size={size}")
    # Stable descending sort: equal counts keep ascending id order.
    order = torch.sort(-counts, stable=True).indices.tolist()
    chosen = list(always)
    seen = set(always)
    for t in order:
        if len(chosen) == size:
            break
        if t not in seen:
            chosen.append(t)
            seen.add(t)
    return torch.tensor(sorted(chosen), dtype=torch.long)


def coverage(counts: Int[Tensor, " V"], ids: Int[Tensor, " Vd"]) -> float:
    """Share of counted tokens that the draft vocabulary ``ids`` holds."""
    total = int(counts.sum())
    return float(counts[ids].sum()) / total if total else float("nan")


class DraftVocabulary(nn.Module):
    """The ids of a reduced draft vocabulary, saved with the head (buffer ``ids``) and its lookups.

    ``ids[j]`` is the target id of draft id j (sorted ascending, distinct). The inverse table and
    the sliced lm_head weight are derived, not saved.
    """

    def __init__(self, ids: Int[Tensor, " Vd"], vocab_size: int) -> None:
        super().__init__()
        ids = torch.as_tensor(ids, dtype=torch.long).flatten()
        if ids.numel() == 0 or int(ids.min()) < 0 or int(ids.max()) >= vocab_size:
            raise ValueError(f"draft vocabulary ids must be non-empty and within 0..{vocab_size - 1}")
        if torch.unique(ids).numel() != ids.numel():
            raise ValueError("draft vocabulary ids must be distinct")
        self.vocab_size = vocab_size
        self.register_buffer("ids", ids.sort().values)
        self._weight_key = None
        self._weight: Optional[Tensor] = None
        self._packed: Optional[PackedLinear] = None  # self._weight packed for drafting (no autograd)
        # Loading a state dict copies new ids into the buffer in place: the slice must follow.
        self.register_load_state_dict_post_hook(lambda module, _keys: module.invalidate())

    def invalidate(self) -> None:
        """Forget the sliced lm_head weight; the next ``logits`` call slices it again.

        Needed only after changing the target's lm_head weight or ``ids`` in place by hand (the
        target is frozen and loading a state dict already calls this); moving either to another
        device or dtype, or replacing the tensors, is noticed without it.
        """
        self._weight_key = None
        self._weight = None
        self._packed = None

    @property
    def size(self) -> int:
        return self.ids.shape[0]

    def inverse(self) -> Int[Tensor, " V"]:
        """Target id -> draft id, -1 for tokens outside the draft vocabulary."""
        inv = torch.full((self.vocab_size,), -1, dtype=torch.long, device=self.ids.device)
        inv[self.ids] = torch.arange(self.size, device=self.ids.device)
        return inv

    def to_target(self, draft_ids: Tensor) -> Tensor:
        return self.ids.to(draft_ids.device)[draft_ids]

    def from_target(self, target_ids: Tensor) -> Tensor:
        """Draft ids of ``target_ids`` (any shape), -1 where the draft vocabulary lacks the token."""
        return self.inverse().to(target_ids.device)[target_ids.long()]

    def logits(self, hidden: Float[Tensor, "... H"], lm_head: nn.Module) -> Float[Tensor, "... Vd"]:
        """``lm_head`` restricted to the draft vocabulary (its sliced weight is cached, never trained).

        The cache is keyed on which tensors these are (storage, device, dtype), not on their
        contents: after an in-place edit of the weight call ``invalidate`` (see there).
        """
        w = lm_head.weight
        key = (w.data_ptr(), w.device, w.dtype, self.ids.data_ptr(), self.ids.device)
        if key != self._weight_key:
            # A normal tensor even when first built under inference_mode, so training can reuse it.
            with torch.inference_mode(False):
                self._weight = w.detach()[self.ids.to(w.device)]
            self._weight_key = key
            self._packed = None
        bias = getattr(lm_head, "bias", None)
        bias = None if bias is None else bias[self.ids.to(bias.device)]
        if bias is None and not (torch.is_grad_enabled() and hidden.requires_grad):
            # Drafting: a few rows against V' x H. The prepacked product (PackedLinear) took 0.4 ms
            # where F.linear took 2.4 ms on the CPU of BENCHMARKS.md; it has no backward, so
            # training keeps F.linear.
            if self._packed is None:
                self._packed = PackedLinear([self._weight])
            return self._packed(hidden.to(w.dtype))
        return F.linear(hidden.to(w.dtype), self._weight, bias)

    def restrict_teacher(self, data_tokens: Int[Tensor, " R"],
                         teacher_logits: Optional[Float[Tensor, "R V"]] = None,
                         top_values: Optional[Float[Tensor, "R C"]] = None,
                         top_indices: Optional[Int[Tensor, "R C"]] = None):
        """Training targets in draft-vocabulary terms, and which rows keep a target at all.

        Returns ``(data, teacher_logits, top_values, top_indices, row_ok)``: the data token as a
        draft id (-1 outside), the full teacher logits gathered on ``ids`` [R, Vd], the top-k values
        with -inf where the token is outside the vocabulary and its index as a draft id (0 there, its
        probability being zero), and ``row_ok`` [R]: the row has some teacher mass inside the vocabulary.
        """
        inv = self.inverse().to(data_tokens.device)
        data = inv[data_tokens]
        row_ok = torch.ones_like(data, dtype=torch.bool)
        if teacher_logits is not None:
            teacher_logits = teacher_logits[:, self.ids.to(teacher_logits.device)]
        if top_indices is not None:
            mapped = inv[top_indices.long()]
            inside = mapped >= 0
            top_values = top_values.masked_fill(~inside, float("-inf"))
            top_indices = mapped.clamp_min(0)
            row_ok = inside.any(-1)
        return data, teacher_logits, top_values, top_indices, row_ok


class OwnLMHead(DraftVocabulary):
    """A draft vocabulary with its own output matrix: an imported head's trained lm_head.

    Published EAGLE-3 heads score a reduced vocabulary with their own ``lm_head`` [V', H], and map
    draft id j to target id ``ids[j]``. ``weight[j]`` scores draft id j; the target's lm_head is
    not used. Rows are reordered with the ids, which are kept sorted like any draft vocabulary's.
    """

    def __init__(self, ids: Int[Tensor, " Vd"], vocab_size: int, weight: Float[Tensor, "Vd H"]) -> None:
        ids = torch.as_tensor(ids, dtype=torch.long).flatten()
        if weight.dim() != 2 or weight.shape[0] != ids.numel():
            raise ValueError(f"an own lm_head needs one row per draft id: {ids.numel()} ids, weight "
                             f"{tuple(weight.shape)}")
        super().__init__(ids, vocab_size)
        self.weight = nn.Parameter(weight.detach()[ids.argsort()].clone())

    def logits(self, hidden: Float[Tensor, "... H"], lm_head: Optional[nn.Module] = None) -> Float[Tensor, "... Vd"]:
        return F.linear(hidden.to(self.weight.dtype), self.weight)


def saved_vocabulary(state: dict, vocab_size: int) -> DraftVocabulary:
    """The vocabulary module a saved head state holds (``vocab.ids``, and ``vocab.weight`` if its own)."""
    if "vocab.weight" in state:
        return OwnLMHead(state["vocab.ids"], vocab_size, state["vocab.weight"])
    return DraftVocabulary(state["vocab.ids"], vocab_size)
