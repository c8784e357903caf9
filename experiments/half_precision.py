"""Measure greedy speculative vs plain decoding of SmolLM2-135M in bf16 (docs/half_precision.md).

Greedy speculative decoding emits exactly the target's argmax after every committed prefix, so
in fp64 its output *is* plain greedy decoding (tests/verifiers), and in fp32 it is up to near-ties
of about 1e-7 relative (the tree forward's attention rounds differently from a one-row step's; the
products of the fast engine are row-invariant). In bf16 the same effect is much larger: plain
decoding computes each token's logits in a one-row forward, speculative decoding in a tree
forward of N rows, and the two round differently (other product shapes, other accumulation
order). Call delta the largest difference between the two logit rows of one position. If plain
decoding prefers token a over token b by a margin ``l[a] - l[b] > 2 * delta``, the tree forward
cannot prefer b; so the outputs can only part at a *near-tie*, where the plain margin is at most
2 * delta.

For each prompt, plain greedy decoding (one-row steps) and speculative decoding with the shipped
JetSpec head (tree forwards) run on the same bf16 target and engine; the script records both runs'
logit rows and writes a Markdown table: whether the outputs are identical and, at the first
differing token, the plain logit margin between the two tokens (also in bf16 spacings), the plain
top-1/top-2 margin, and the largest |plain - tree| logit difference there and over the shared
prefix. ``--dtype fp32`` is the control (the outputs must all be identical). The test
``tests/evaluation/test_half_precision.py`` runs the same comparison on a tiny target.
Shapes use the glossary of ``jetspec`` (docs/design.md §8).

    nice -n 19 python experiments/half_precision.py --threads 1 --out runs/half_precision.md
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from jetspec.core.decoding import SpeculativeDecoder
from jetspec.core.loading import load_target
from jetspec.core.prompts import builtin_prompts, chat_ids, eos_ids
from jetspec.core.target import TargetModel, as_target
from jetspec.evaluation.drafter_specs import DEFAULT_HEAD_DIR, DrafterUnavailable, make_drafter
from jetspec.trees import BestFirstBuilder


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


# ------------------------------------------------------------------------- the run
# Nine more prompts in the built-in sets' style, so that 24 prompts need no data files.
EXTRA_PROMPTS = [
    ("math", "A farmer has 7 rows of 9 apple trees. Each tree gives 15 apples. How many apples is that?"),
    ("math", "Anna saves $12 a week. How many weeks until she can buy a $150 bike? Explain."),
    ("math", "A rectangle is 8 cm wide and 13 cm long. What are its area and perimeter? Step by step."),
    ("code", "Write a Python function that returns the largest and smallest number in a list."),
    ("code", "Write a Python function that removes duplicates from a list while keeping the order."),
    ("code", "Write a Python function that converts a temperature from Celsius to Fahrenheit."),
    ("chat", "Why is the sky blue? Answer in a few sentences."),
    ("chat", "Suggest a simple weekly plan for someone who wants to start running."),
    ("chat", "What should I pack for a weekend camping trip?"),
]


def prompts(n: int) -> list[tuple[str, str]]:
    rows = [(r["set"], r["prompt"]) for r in builtin_prompts()] + EXTRA_PROMPTS
    if n > len(rows):
        raise SystemExit(f"only {len(rows)} prompts are defined")
    return rows[:n]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=24)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--budget", type=int, default=16)
    p.add_argument("--width", type=int, default=4)
    p.add_argument("--out", default="runs/half_precision.md")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    model, tok = load_target("smollm2-135m-instruct", dtype=dtype)
    target = TargetModel(model)  # the default engine
    try:
        head = make_drafter("jetspec", model, DEFAULT_HEAD_DIR)
    except DrafterUnavailable as err:
        raise SystemExit(f"the shipped JetSpec head did not load: {err}") from None
    builder = BestFirstBuilder(budget=args.budget, width=args.width, depth=head.max_depth)
    dec = RecordingDecoder(target, head, builder)
    eos = eos_ids(tok, model)
    rows, labels, t0 = [], [], time.perf_counter()
    for i, (kind, text) in enumerate(prompts(args.prompts)):
        ids = torch.tensor([chat_ids(tok, text)])
        r = compare(plain_trace(target, ids, args.max_new_tokens, eos), dec.trace(ids, args.max_new_tokens, eos))
        rows.append(r)
        labels.append(f"{i} {kind}")
        print(f"[{time.perf_counter() - t0:6.0f}s] {i:2d} {kind:4s} identical={r.identical} "
              f"first diff={r.position} margin={r.margin} spacings={r.margin_spacings}", flush=True)
    s = summary(rows)
    head_line = (f"SmolLM2-135M-Instruct in {args.dtype}, engine `{target.engine}`, shipped JetSpec head "
                 f"(BestFirstBuilder budget {args.budget}, width {args.width}, depth {head.max_depth}), "
                 f"{len(rows)} prompts x up to {args.max_new_tokens} tokens (EOS ends a run), "
                 f"{args.threads} thread(s), {time.perf_counter() - t0:.0f} s.\n\n"
                 f"Identical outputs: {s['identical']}/{s['prompts']} ({100 * s['share_identical']:.0f}%). "
                 f"Largest plain margin at a first divergence: {s['max_margin']} "
                 f"({s['max_margin_spacings']} bf16 spacings). Largest |plain - tree| logit difference at a "
                 f"shared position: {s['max_delta']:.4g}.\n\n")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(head_line + markdown_table(rows, labels) + "\n")
    print(head_line + markdown_table(rows, labels))


if __name__ == "__main__":
    main()
