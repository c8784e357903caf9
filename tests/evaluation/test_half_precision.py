"""Half precision, measured (docs/half_precision.md).

In bf16 a tree forward and a one-row step round differently, so greedy speculative decoding may
part from plain bf16 decoding -- but only at a near-tie of the plain logits. The measured bound:
at every first differing position seen (tiny targets here; SmolLM2-135M with the shipped head in
``experiments/half_precision.py``) the plain margin between the two tokens was at most one bf16
spacing of the logit, and by construction it is at most twice that position's tree-vs-step logit
difference. The tests hold decoding to both, and show with a lossy verifier that a real loss breaks
the bound. A second test trains every head kind with ``precision="bf16-mixed"`` on the CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import tiny_model

from jetspec.core.target import TargetModel
from jetspec.core.types import Acceptance
from jetspec.drafters import DFlashHead, EagleHead, JetSpecHead, RandomDrafter
from jetspec.testing.toy import peaked_tiny_target
from jetspec.training.data import TokenDataModule
from jetspec.trees import BestFirstBuilder
from jetspec.verifiers import GreedyVerifier

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))
from half_precision import RecordingDecoder, compare, plain_trace, summary  # noqa: E402

BOUND_SPACINGS = 1.0  # measured: the largest plain margin at a divergence, in bf16 spacings


def bf16_runs(seed: int, verifier=None, prompts: int = 40, tokens: int = 32):
    """Plain and speculative (random drafts, 9-row trees) greedy runs of a peaked bf16 target."""
    target = TargetModel(peaked_tiny_target(seed).to(torch.bfloat16))  # the default engine
    dec = RecordingDecoder(target, RandomDrafter(128, seed=1), BestFirstBuilder(budget=8, width=2, depth=4),
                           verifier=verifier)
    gen = torch.Generator().manual_seed(seed)
    runs = []
    for _ in range(prompts):
        prompt = torch.randint(0, 128, (1, 6), generator=gen)
        runs.append((plain_trace(target, prompt, tokens), dec.trace(prompt, tokens)))
    return runs


def test_bf16_outputs_part_only_at_near_ties():
    runs = bf16_runs(0) + bf16_runs(1)
    rows = [compare(plain, spec) for plain, spec in runs]
    for plain, spec in runs:  # each run emits its own rows' argmax: the verifier is exact in bf16
        assert spec.tokens == spec.logits.argmax(-1).tolist()
        assert plain.tokens == plain.logits.argmax(-1).tolist()
    parted = [r for r in rows if r.position is not None]
    assert parted, "no divergence at all: the test would not test anything"
    assert summary(rows)["divergences"] == len(parted) < len(rows) / 2
    for r in parted:
        assert 0 <= r.margin <= 2 * r.delta_there  # a tree row cannot flip a margin above 2 delta
        assert r.margin_spacings <= BOUND_SPACINGS, r


class TopTwoVerifier(GreedyVerifier):
    """Lossy on purpose: a drafted token is accepted if it is the target's first *or second* choice."""

    def verify(self, inp):
        top2 = inp.logits.topk(2, dim=-1).indices  # [N, 2]
        tree, path, node = inp.tree, [], 0
        while True:
            kids = [i for i in range(1, tree.num_nodes) if int(tree.parents[i]) == node
                    and int(tree.tokens[i]) in top2[node].tolist()]
            if not kids:
                break
            node = kids[0]
            path.append(node)
        return Acceptance(accepted_nodes=path, bonus_token=int(top2[node, 0]), draft_tokens=tree.tokens[path].tolist())


def test_a_lossy_verifier_breaks_the_bound():
    rows = [compare(plain, spec) for plain, spec in bf16_runs(0, verifier=TopTwoVerifier(), prompts=20)]
    assert max(r.margin_spacings for r in rows if r.position is not None) > 4 * BOUND_SPACINGS


def test_fp32_speculative_equals_plain_on_the_same_prompts():
    """The control: the same runs in fp32 never part."""
    target = TargetModel(peaked_tiny_target(0))
    dec = RecordingDecoder(target, RandomDrafter(128, seed=1), BestFirstBuilder(budget=8, width=2, depth=4))
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        prompt = torch.randint(0, 128, (1, 6), generator=gen)
        assert compare(plain_trace(target, prompt, 32), dec.trace(prompt, 32)).identical


# ------------------------------------------------------------------------------ bf16-mixed training
def sequences(n: int, seed: int = 0) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 64, (16,), generator=gen).tolist(), "response_start": 4} for _ in range(n)]


def fit(head, precision: str):
    seen = []
    probe = head.net.fc if hasattr(head.net, "fc") else head.net.fuse
    handle = probe.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    torch.manual_seed(0)
    L.Trainer(max_steps=4, precision=precision, accelerator="cpu", logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False).fit(
        head, datamodule=TokenDataModule(sequences(16), batch_size=4, val_fraction=0.0))
    handle.remove()
    return {k: v.detach().clone() for k, v in head.net.state_dict().items()}, set(seen)


FAST = dict(anchors_per_seq=4, lr=1e-2, warmup_steps=0)


@pytest.mark.parametrize("make", [lambda t: JetSpecHead(t, block_size=4, **FAST),
                                  lambda t: DFlashHead(t, block_size=4, **FAST),
                                  lambda t: EagleHead(t, tap_layers=(0, 1), ttt_steps=2, **FAST)],
                         ids=["jetspec", "dflash", "eagle"])
def test_bf16_mixed_training_on_cpu_tracks_fp32(make):
    target = tiny_model("llama", seed=2, dtype=torch.float32)
    torch.manual_seed(1)
    head = make(target)
    start = {k: v.clone() for k, v in head.net.state_dict().items()}
    mixed, dtypes = fit(head, "bf16-mixed")
    exact, exact_dtypes = fit(_reset(head, start), "32-true")
    assert dtypes == {torch.bfloat16} and exact_dtypes == {torch.float32}  # autocast really ran in bf16
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in mixed.values())  # fp32 master weights
    step_mixed = torch.cat([(mixed[k] - start[k]).flatten() for k in start])
    step_exact = torch.cat([(exact[k] - start[k]).flatten() for k in start])
    assert float(step_exact.abs().max()) > 1e-2  # training happened
    # bf16 rounding shows (the runs differ), yet the bf16 run moves the weights as the fp32 one does.
    assert 0 < float((step_mixed - step_exact).norm() / step_exact.norm()) < 0.3
    assert float(torch.nn.functional.cosine_similarity(step_mixed, step_exact, 0)) > 0.95


def _reset(head, state):
    head.net.load_state_dict(state)
    return head
