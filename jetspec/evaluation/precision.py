"""Half precision, measured: where speculative and plain decoding part ways, and by how much.

Greedy speculative decoding emits exactly the target's argmax after every committed prefix, so
in fp64 its output *is* plain greedy decoding (tests/verifiers), and in fp32 it is up to near-ties
of about 1e-7 relative (the tree forward's attention rounds differently from a one-row step's; the
products of the fast engine are row-invariant). In bf16 the same effect is much larger: plain
decoding computes each token's logits in a one-row forward, speculative decoding in a tree
forward of N rows, and the two round differently (other product shapes, other accumulation
order). Call delta the largest difference between the two logit rows of one position. If plain
decoding prefers token a over token b by a margin ``l[a] - l[b] > 2 * delta``, the tree forward
cannot prefer b; so the outputs can only part at a *near-tie*, where the plain margin is at most
2 * delta. This module records both runs' logit rows and reports, per prompt, whether the
outputs are identical and, at the first differing position, the plain margin between the two
tokens and that position's delta (``experiments/half_precision.py`` runs it on SmolLM2; the test
``tests/evaluation/test_half_precision.py`` on a tiny target).

Shapes use the glossary of ``jetspec`` (docs/design.md §8).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from jetspec.core.decoding import SpeculativeDecoder
from jetspec.core.target import TargetModel, as_target


@dataclass
class Trace:
    """One greedy run: the generated tokens and, row t, the logits token t was chosen from."""

    tokens: list[int]
    logits: Float[Tensor, "T V"]
    tau: float = 1.0


@torch.no_grad()
def plain_trace(target, prompt: Tensor, max_new_tokens: int, eos: Sequence[int] = ()) -> Trace:
    """Plain greedy decoding with the very calls ``autoregressive_generate`` makes (prefill, then one
    ``step`` per token), keeping each step's logits."""
    tgt: TargetModel = as_target(target)
    tgt.set_taps(())
    tokens = prompt.flatten().cpu().tolist()
    tgt.prefill(prompt.flatten().cpu())
    out, rows = [], []
    for _ in range(max_new_tokens):
        logits = tgt.step(tokens[-1])
        rows.append(logits.float().cpu())
        out.append(int(logits.argmax()))
        tokens.append(out[-1])
        if out[-1] in set(eos):
            break
    tgt.reset()
    return Trace(out, torch.stack(rows))


class RecordingDecoder(SpeculativeDecoder):
    """A ``SpeculativeDecoder`` that keeps, for every committed token, the verify-logits row it
    was chosen from (row i of a round's accepted path [root, accepted nodes...] gives token i)."""

    def accept(self, verifier, tree, logits, cfg, rng):
        acc = super().accept(verifier, tree, logits, cfg, rng)
        self.rows.append(logits[[0] + list(acc.accepted_nodes)].float().cpu())
        return acc

    @torch.no_grad()
    def trace(self, prompt: Tensor, max_new_tokens: int, eos: Sequence[int] = ()) -> Trace:
        """Greedy speculative decoding of ``prompt`` [1, T] with the logits of every emitted token."""
        self.rows: list[Tensor] = []
        res = self.generate(prompt, max_new_tokens=max_new_tokens, eos_token_id=list(eos) or None)
        new = res.sequences[0, prompt.shape[-1]:].tolist()
        rows = torch.cat(self.rows)
        # Rounds may emit more than is kept (max_new_tokens, EOS): the kept tokens come first.
        return Trace(new, rows[: len(new)], res.tau)


def bf16_spacing(x: float) -> float:
    """The gap between neighbouring bf16 numbers at magnitude |x| (8 significant bits)."""
    x = abs(float(x))
    return torch.finfo(torch.bfloat16).eps * 2.0 ** torch.tensor(x).log2().floor().item() if x else 0.0


@dataclass
class Comparison:
    """Speculative vs plain decoding of one prompt (margins and deltas in logits)."""

    compared: int  # tokens compared: the shorter run's length
    identical: bool
    position: Optional[int] = None  # first differing generated token
    plain_token: Optional[int] = None
    spec_token: Optional[int] = None
    margin: Optional[float] = None  # plain logits: l[plain_token] - l[spec_token] (>= 0)
    margin_spacings: Optional[float] = None  # the margin in bf16 spacings at l[plain_token]
    top2_margin: Optional[float] = None  # plain logits at that position: top-1 minus top-2
    delta_there: Optional[float] = None  # max |plain row - tree row| at that position
    max_delta: float = 0.0  # max |plain row - tree row| over the shared positions
    tau: float = 1.0


def compare(plain: Trace, spec: Trace) -> Comparison:
    """Where two greedy runs of the same prompt first differ, and the logit margins there."""
    n = min(len(plain.tokens), len(spec.tokens))
    first = next((t for t in range(n) if plain.tokens[t] != spec.tokens[t]), None)
    shared = n if first is None else first + 1
    deltas = (plain.logits[:shared] - spec.logits[:shared]).abs().amax(-1)
    res = Comparison(compared=n, identical=first is None and len(plain.tokens) == len(spec.tokens),
                     max_delta=float(deltas.max()) if shared else 0.0, tau=spec.tau)
    if first is not None:
        row = plain.logits[first]
        a, b = plain.tokens[first], spec.tokens[first]
        top = row.topk(2).values
        res.position, res.plain_token, res.spec_token = first, a, b
        res.margin, res.top2_margin = float(row[a] - row[b]), float(top[0] - top[1])
        res.margin_spacings = res.margin / bf16_spacing(float(row[a]))
        res.delta_there = float(deltas[first])
    return res


def summary(rows: Sequence[Comparison]) -> dict:
    """Share identical, and the largest margin at which outputs parted (None if none did)."""
    parted = [r for r in rows if r.position is not None]
    return {"prompts": len(rows), "identical": sum(r.identical for r in rows),
            "share_identical": sum(r.identical for r in rows) / max(1, len(rows)),
            "divergences": len(parted), "max_margin": max((r.margin for r in parted), default=None),
            "max_margin_spacings": max((r.margin_spacings for r in parted), default=None),
            "max_delta": max((r.max_delta for r in rows), default=0.0)}


def markdown_table(rows: Sequence[Comparison], labels: Sequence[str]) -> str:
    """One line per prompt: identical or where it parted, with the margins (logits)."""
    fmt = lambda x: "-" if x is None else f"{x:.4g}"  # noqa: E731
    lines = ["| prompt | tokens | identical | first diff | margin a-b | in bf16 spacings | top1-top2 | "
             "delta there | max delta | tau |", "|---|---:|:---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, r in zip(labels, rows):
        lines.append(f"| {label} | {r.compared} | {'yes' if r.identical else 'no'} | {fmt(r.position)} | "
                     f"{fmt(r.margin)} | {fmt(r.margin_spacings)} | {fmt(r.top2_margin)} | {fmt(r.delta_there)} | "
                     f"{fmt(r.max_delta)} | {r.tau:.2f} |")
    return "\n".join(lines)
