"""The bench's bookkeeping: batches of prompts, the greedy check against plain decoding, each
group's summary numbers and the rows they make (``aggregate``, docs/design.md §7).
``jetspec.evaluation.bench`` runs the methods and uses these; they read run records (dicts) only,
so they never import the bench itself.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from jetspec.core.generation import STAGES, depth_acceptance

# Baselines that are not drafters; every bench runs ar, and the HF ones unless hf=False.
ANCHORS = ("ar", "hf_greedy", "hf_sample", "hf_prompt_lookup")


def cut_at_eos(tokens: list[int], eos) -> list[int]:
    """A right-padded row's new tokens up to and including its first EOS (or all of them)."""
    stop = next((i for i, t in enumerate(tokens) if eos and t in eos), None)
    return tokens if stop is None else tokens[: stop + 1]


def batches_of(n: int, size: int) -> list[list[int]]:
    """Prompt indices 0..n-1 in consecutive groups of ``size`` (the last may be smaller)."""
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


def _row_tokens(run: dict) -> list[tuple[int, list[int]]]:
    """(prompt index, new tokens) of every row of a run (batch 1: one row, its tokens a flat list)."""
    if run["batch_size"] == 1:
        return [(run["prompt_index"], run["tokens"])]
    return list(zip(run["prompt_indices"], run["tokens"]))


def check_greedy(runs: list[dict], rows_in: list[dict], model) -> list[dict]:
    """Set ``matches_ar`` on every run (every row equals ``ar``'s at the same batch size) and return
    the divergences of the rows that do not: lossless greedy decoding must reproduce plain decoding."""
    reference = {(r["batch_size"], pi, r["repeat"]): toks for r in runs if r["drafter"] == "ar"
                 for pi, toks in _row_tokens(r)}
    found = []
    for r in runs:
        r["matches_ar"] = True
        for pi, toks in _row_tokens(r):
            ref = reference[(r["batch_size"], pi, r["repeat"])]
            if toks != ref:
                r["matches_ar"] = False
                found.append({**divergence(model, rows_in[pi]["ids"], ref, {**r, "prompt_index": pi,
                                                                             "tokens": toks}),
                              "batch_size": r["batch_size"]})
    return found


@torch.no_grad()
def divergence(model, prompt: list[int], ar_tokens: list[int], run: dict) -> dict:
    """Where a greedy output first left plain decoding's, and the target's logit gap there.

    Lossless speculative decoding reproduces plain greedy decoding exactly in exact arithmetic.
    In fp32 a verify forward over many tree nodes rounds differently from a one-token forward, so
    when the top two logits are within ~1e-5 the argmax can flip. A tiny ``logit_gap`` here says
    "near-tie"; a large one would point at a bug.
    """
    pos = next((i for i, (a, b) in enumerate(zip(ar_tokens, run["tokens"])) if a != b),
               min(len(ar_tokens), len(run["tokens"])))
    ar_tok = ar_tokens[pos] if pos < len(ar_tokens) else None
    other = run["tokens"][pos] if pos < len(run["tokens"]) else None
    gap = None
    if ar_tok is not None and other is not None:
        ids = torch.tensor([prompt + ar_tokens[:pos]], device=next(model.parameters()).device)
        logits = model(input_ids=ids).logits[0, -1].double()
        gap = float(logits[ar_tok] - logits[other])
    return {"drafter": run["drafter"], "budget": run["budget"], "prompt_set": run["prompt_set"],
            "prompt_index": run["prompt_index"], "position": pos, "ar_token": ar_tok, "token": other,
            "logit_gap": gap}


def _pooled_depth_acceptance(runs: list[dict]) -> list[float]:
    """``depth_acceptance`` pooled over every round of ``runs``, rounded for the tables."""
    rates = depth_acceptance([a for r in runs for a in r["accepted_depths"]],
                             [d for r in runs for d in r["tree_depths"]])
    return [round(x, 4) for x in rates]


def summarize(group: list[dict]) -> dict:
    """A group's numbers. tau pools the rows' rounds; the stage split is per target forward (one
    forward serves every row of a batch); tokens/s is all rows' tokens over the calls' decode time,
    and per row it is the tokens over row-seconds (the same at batch 1)."""
    new = sum(r["new_tokens"] for r in group)
    decode_tokens = sum(r["decode_tokens"] for r in group)
    rounds = sum(r["rounds"] for r in group)
    forwards = sum(r["forwards"] for r in group)
    decode_s = sum(r["decode_s"] for r in group)
    row_s = sum(r["decode_s"] * r["rows"] for r in group)
    total_s = sum(r["total_s"] for r in group)
    per_round = {}
    for stage in STAGES:
        secs = [r["stages"].get(stage) for r in group]
        per_round[f"{stage}_ms"] = (None if any(s is None for s in secs)
                                    else round(1000 * sum(secs) / max(forwards, 1), 3))
    matches = [r["matches_ar"] for r in group if r.get("matches_ar") is not None]
    return {
        "n_prompts": len({(r["prompt_set"], i) for r in group for i in r["prompt_indices"]}),
        "runs": len(group), "new_tokens": new, "rounds": rounds, "forwards": forwards,
        "tau": round(new / rounds, 4) if rounds else None,
        "tokens_per_s": round(decode_tokens / decode_s, 3) if decode_s > 0 else None,
        "tokens_per_s_per_row": round(decode_tokens / row_s, 3) if row_s > 0 else None,
        "tokens_per_s_e2e": round(new / total_s, 3) if total_s > 0 else None,
        "draft_forwards_per_round": round(sum(r["draft_forwards"] for r in group) / max(rounds, 1), 3),
        **per_round,
        "prefill_ms": round(1000 * sum(r["prefill_s"] for r in group) / len(group), 3),
        "mean_tree_size": round(sum(r["tree_nodes"] for r in group) / max(rounds, 1), 3),
        "depth_acceptance": _pooled_depth_acceptance(group),
        "matches_ar": round(sum(matches) / len(matches), 4) if matches else None,
    }


def ratio(a, b):
    """a / b rounded for the tables; None when either is missing or zero."""
    return round(a / b, 4) if a and b else None


def aggregate(runs: list[dict], temperature: float) -> list[dict]:
    """One row per (drafter, tree, budget, batch size, prompt_set) plus prompt_set 'all', with
    speedups and ``verify_ratio`` over ``ar`` at the same batch size. A batch that mixes prompt
    sets counts towards 'all' only."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in runs:
        key = (r["drafter"], r["tree"], r["budget"], r["batch_size"])
        if r["prompt_set"] != "mixed":
            groups[key + (r["prompt_set"],)].append(r)
        groups[key + ("all",)].append(r)
    rows = []
    for (drafter, tree, budget, batch, pset), group in groups.items():
        rows.append({"drafter": drafter, "tree": tree, "budget": budget, "width": group[0]["width"],
                     "depth": group[0]["depth"], "temperature": temperature, "batch_size": batch,
                     "prompt_set": pset, **summarize(group)})
    hf_name = "hf_greedy" if temperature == 0 else "hf_sample"
    by_set = {(r["drafter"], r["batch_size"], r["prompt_set"]): r for r in rows}
    for r in rows:
        at = (r["batch_size"], r["prompt_set"])
        ar, hf = by_set.get(("ar",) + at), by_set.get((hf_name,) + at)
        r["speedup_vs_ar"] = ratio(r["tokens_per_s"], ar and ar["tokens_per_s"])
        r["speedup_vs_ar_e2e"] = ratio(r["tokens_per_s_e2e"], ar and ar["tokens_per_s_e2e"])
        r["speedup_vs_hf"] = ratio(r["tokens_per_s"], hf and hf["tokens_per_s"])
        # the verify forward over B trees against a plain batched step over the same B rows
        r["verify_ratio"] = ratio(r["verify_ms"], ar and ar["verify_ms"])
    order = {name: i for i, name in enumerate(ANCHORS)}
    rows.sort(key=lambda r: (r["prompt_set"] != "all", r["prompt_set"], r["batch_size"],
                             order.get(r["drafter"], len(order)), r["drafter"], r["budget"] or 0))
    return rows
