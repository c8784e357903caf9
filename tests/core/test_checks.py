"""What the decoding loop refuses from code it does not control: drafters and their proposals.

Every error must name the drafter (or the argument), and nothing a drafter does may change what
is emitted: the verifier alone decides that. Each hostile drafter below is paired with a negative
control (the honest drafter it derives from) that runs through the same path without error.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from jetspec import SpeculativeDecoder, autoregressive_generate
from jetspec.core.interfaces import Drafter
from jetspec.core.types import DraftOutput
from jetspec.drafters import DraftModelDrafter, NGramDrafter
from jetspec.trees import BestFirstBuilder, ChainBuilder

VOCAB = 64
DRAFT_LM = tiny_model("llama", seed=5, hidden=16, layers=1, heads=2, kv_heads=1)


def prompt(length: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(0, VOCAB, (length // 2,), generator=g)
    return torch.cat([base, base])[None]


# --------------------------------------------------------------------------- q of sampled drafts
class EditedQDrafter(DraftModelDrafter):
    """A draft LM that samples honestly but reports an edited q."""

    def __init__(self, edit) -> None:
        super().__init__(DRAFT_LM)
        self.edit = edit

    def draft(self, inp):
        out = super().draft(inp)
        out.node_q = self.edit(out.node_q)  # after construction: only the decoder can see it
        return out


@pytest.mark.parametrize("edit", [
    torch.zeros_like,  # the case: every draft was accepted
    lambda q: q * 2,  # unnormalised
    lambda q: q.index_fill(1, torch.tensor([0]), float("nan")),  # NaN in every row
    lambda q: torch.cat([q, q.new_zeros(q.shape[0], 1)], 1),  # one column too many
])
def test_an_impossible_q_from_a_drafter_is_refused_by_name(llama64, edit):
    dec = SpeculativeDecoder(llama64, EditedQDrafter(edit), ChainBuilder(3))
    with pytest.raises(ValueError, match="EditedQDrafter"):
        dec.generate(prompt(), max_new_tokens=8, temperature=1.0, generator=torch.Generator().manual_seed(0))


def test_an_honest_q_passes_the_same_checks(llama64):
    dec = SpeculativeDecoder(llama64, EditedQDrafter(lambda q: q), ChainBuilder(3))
    res = dec.generate(prompt(), max_new_tokens=8, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert res.num_new_tokens == 8


def test_a_malformed_q_at_construction_names_the_drafter(llama64):
    class ZeroAtTheDraft(DraftModelDrafter):
        def draft(self, inp):
            out = super().draft(inp)
            q = torch.ones_like(out.node_q) / out.node_q.shape[1]
            q[:, out.node_tokens] = 0.0  # normalised, but no mass where the drafts landed
            q = q / q.sum(-1, keepdim=True)
            return DraftOutput(node_tokens=out.node_tokens, node_parents=out.node_parents,
                               node_logprobs=out.node_logprobs, node_q=q)

    dec = SpeculativeDecoder(llama64, ZeroAtTheDraft(DRAFT_LM), ChainBuilder(3))
    with pytest.raises(ValueError, match="ZeroAtTheDraft.*node_q"):
        dec.generate(prompt(), max_new_tokens=4, temperature=1.0)


# --------------------------------------------------------------------------- the drafter's input
class ScribblingDrafter(NGramDrafter):
    """Writes over the committed tokens it is handed (before and after drafting)."""

    def draft(self, inp):
        inp.tokens[0] = 1
        out = super().draft(inp)
        inp.tokens.fill_(7)
        return out


@pytest.mark.parametrize("builder", [ChainBuilder(4), BestFirstBuilder(8, 2, 4)])
def test_a_drafter_cannot_change_the_committed_tokens_or_the_prompt(llama64, builder):
    ids = prompt(16, seed=3)
    before = ids.clone()
    ref = autoregressive_generate(llama64, ids, 20).sequences
    res = SpeculativeDecoder(llama64, ScribblingDrafter(), builder).generate(ids, max_new_tokens=20)
    assert torch.equal(ids, before), "the caller's input_ids were rewritten"
    assert torch.equal(res.sequences, ref)
    # Negative control: the honest n-gram drafter gives the same sequence.
    assert torch.equal(SpeculativeDecoder(llama64, NGramDrafter(), builder).generate(ids, 20).sequences, ref)


# --------------------------------------------------------------------------- token ids
@pytest.mark.parametrize("bad", [VOCAB, VOCAB + 100, -1])
def test_prompt_ids_outside_the_vocabulary_are_refused(llama64, bad):
    ids = prompt()
    ids[0, 3] = bad
    with pytest.raises(ValueError, match=rf"input_ids.*{bad}.*vocabulary"):
        SpeculativeDecoder(llama64, NGramDrafter()).generate(ids, max_new_tokens=4)
    with pytest.raises(ValueError, match=rf"input_ids.*{bad}.*vocabulary"):
        autoregressive_generate(llama64, ids, 4)
    ids[0, 3] = VOCAB - 1  # negative control: the last id is fine
    assert autoregressive_generate(llama64, ids, 2).num_new_tokens == 2


class FixedDrafter(Drafter):
    """Returns whatever ``make(inp)`` builds (hostile proposals for the decoder to refuse)."""

    def __init__(self, make) -> None:
        self.make = make

    def draft(self, inp):
        return self.make(inp)


def table(tokens) -> DraftOutput:
    tokens = torch.as_tensor(tokens)
    return DraftOutput(depth_tokens=tokens, depth_logprobs=torch.zeros(tokens.shape))


def nodes(tokens, parents) -> DraftOutput:
    return DraftOutput(node_tokens=torch.as_tensor(tokens), node_parents=torch.as_tensor(parents),
                       node_logprobs=torch.zeros(len(tokens)))


@pytest.mark.parametrize("make", [
    lambda inp: table([[1, VOCAB]]),
    lambda inp: table([[1, 2], [3, -5]]),
    lambda inp: nodes([VOCAB + 3], [-1]),
    lambda inp: nodes([4, -1], [-1, 0]),
])
def test_drafted_ids_outside_the_vocabulary_are_refused_by_name(llama64, make):
    dec = SpeculativeDecoder(llama64, FixedDrafter(make), BestFirstBuilder(4, 2, 2))
    with pytest.raises(ValueError, match="FixedDrafter.*vocabulary"):
        dec.generate(prompt(), max_new_tokens=4)
    honest = SpeculativeDecoder(llama64, FixedDrafter(lambda inp: table([[1, VOCAB - 1]])), BestFirstBuilder(4, 2, 2))
    assert honest.generate(prompt(), max_new_tokens=4).num_new_tokens == 4


# --------------------------------------------------------------------------- malformed proposals
@pytest.mark.parametrize("make, match", [
    (lambda inp: None, "returned None"),
    (lambda inp: [1, 2], "returned list"),
    (lambda inp: table([1, 2]), "depth_tokens"),  # 1-D
    (lambda inp: table([[[1, 2]]]), "depth_tokens"),  # 3-D
    (lambda inp: table(5), "depth_tokens"),  # 0-D
    (lambda inp: DraftOutput(depth_tokens=torch.tensor([[1.0, 2.0]]), depth_logprobs=torch.zeros(1, 2)),
     "integer"),
    (lambda inp: nodes([[1, 2]], [[-1, 0]]), "node_tokens"),  # 2-D
    (lambda inp: nodes([1, 2], [1, -1]), "parent"),  # a parent after its child
    (lambda inp: nodes([1, 2], [-1, -2]), "parent"),
])
def test_malformed_proposals_are_refused_by_name(llama64, make, match):
    dec = SpeculativeDecoder(llama64, FixedDrafter(make), BestFirstBuilder(4, 2, 2))
    with pytest.raises(ValueError, match=f"FixedDrafter.*{match}"):
        dec.generate(prompt(), max_new_tokens=4)


@pytest.mark.parametrize("kw, match", [
    (dict(depth_tokens=torch.tensor([1, 2]), depth_logprobs=torch.zeros(2)), "depth_tokens"),
    (dict(depth_tokens=torch.tensor(3), depth_logprobs=torch.tensor(0.0)), "depth_tokens"),
    (dict(depth_tokens=torch.zeros(1, 2, 2, dtype=torch.long), depth_logprobs=torch.zeros(1, 2, 2)),
     "depth_tokens"),
    (dict(depth_tokens=torch.zeros(2, 2, dtype=torch.long), depth_logprobs=torch.zeros(2, 2, dtype=torch.long)),
     "depth_logprobs"),
    (dict(node_tokens=torch.tensor([1]), node_parents=torch.tensor([-1]), node_logprobs=torch.zeros(1),
          node_q=torch.ones(2)), "node_q"),
    (dict(node_tokens=[1], node_parents=[-1], node_logprobs=[0.0]), "node_tokens"),
])
def test_draft_output_checks_its_own_shapes(kw, match):
    with pytest.raises(ValueError, match=match):
        DraftOutput(**kw)
    # Negative control: the same forms, well shaped.
    table([[1, 2], [3, 4]])
    nodes([1, 2, 3], [-1, 0, 0])


@pytest.mark.parametrize("head_name", ["JetSpecHead", "EagleHead"])
def test_a_head_built_for_another_target_is_refused_up_front(llama64, head_name):
    """It used to fail at the first draft with a matmul shape error (or, with more layers of the same
    width, to run silently on other layers' features)."""
    import jetspec.drafters as drafters

    options = {"block_size": 4} if head_name == "JetSpecHead" else {}
    make = lambda model: getattr(drafters, head_name)(model, **options)
    wider = tiny_model("llama", seed=2, hidden=48, heads=4, kv_heads=2)
    deeper = tiny_model("llama", seed=3, layers=3)
    for other, what in ((wider, "hidden size"), (deeper, "number of layers")):
        with pytest.raises(ValueError, match=f"{head_name}.*{what}"):
            SpeculativeDecoder(llama64, make(other), ChainBuilder(3))
    # Negative control: on its own target it runs.
    assert SpeculativeDecoder(llama64, make(llama64), ChainBuilder(3)).generate(prompt(), 4).num_new_tokens == 4


def test_tap_layers_beyond_the_target_are_refused(llama64):
    drafter = NGramDrafter()
    drafter.tap_layers = (0, 5)
    with pytest.raises(ValueError, match="NGramDrafter.*tap_layers"):
        SpeculativeDecoder(llama64, drafter)


class _RowEcho(Drafter):
    """Proposes the row index as its only candidate; ``count`` breaks draft_batch's contract on purpose."""

    def __init__(self, count=None, bad_row=None):
        self.count, self.bad_row = count, bad_row

    def draft(self, inp):
        tok = 10_000 if inp.row == self.bad_row else inp.row
        return DraftOutput(depth_tokens=torch.tensor([[tok]]), depth_logprobs=torch.zeros(1, 1))

    def draft_batch(self, inputs):
        outs = [self.draft(i) for i in inputs]
        return outs if self.count is None else outs[: self.count]


def _inputs(rows):
    from jetspec.core.types import DraftInput
    return [DraftInput(tokens=torch.tensor([1, 2]), depth=1, width=1, budget=1, row=r) for r in rows]


def test_draft_batch_by_default_drafts_each_row_in_turn():
    from jetspec.core.checks import run_drafter_batch
    outs = run_drafter_batch(_RowEcho(), _inputs([0, 1, 2]), 64)
    assert [int(o.depth_tokens[0][0]) for o in outs] == [0, 1, 2]


def test_draft_batch_must_return_one_proposal_per_row():
    from jetspec.core.checks import run_drafter_batch
    with pytest.raises(ValueError, match=r"_RowEcho.draft_batch returned 2 proposals for 3 rows"):
        run_drafter_batch(_RowEcho(count=2), _inputs([0, 1, 2]), 64)


def test_a_bad_proposal_in_a_batch_names_its_row():
    from jetspec.core.checks import run_drafter_batch
    with pytest.raises(ValueError, match=r"batch row 1: drafter _RowEcho returned a bad proposal"):
        run_drafter_batch(_RowEcho(bad_row=1), _inputs([0, 1, 2]), 64)
