"""Branch faithfulness: does the score a drafter gives its best branch agree with the target? (docs/design.md §7.7)

The JetSpec paper argues (arXiv 2606.18394) that a bidirectional parallel head drafts per-depth
marginals that combine into branches each token of which is plausible but whose combination the
target finds implausible ("inconsistent trees"), while a causal head's best branch carries a score
the target agrees with. This module measures that, for any drafter, on reference answers.

Per round of a replay walk (``jetspec.core.replay.replay_sequence``: the rounds greedy decoding
makes along a reference, docs/design.md §7.4), with the tree the builder grew from the proposal:

* the **rank-1 branch**: the tree's highest-scoring root-to-leaf path of depth D, the score being
  the builder's own (cumulative log q, docs/design.md §2.5). A tree shallower than D (a budget too
  small for D levels, an n-gram trie with a short match) gives its deepest level instead: the
  branch is then shorter and the row records its depth. A bare root gives no branch, and the
  round is counted in tau but not in the gap statistics.
* its **draft score** log q(branch) and the **target's joint log-prob** log p(branch | prefix) of
  the same tokens, read from one target forward over the tree against the cached prefix
  (``TargetModel.verify``; the cache then keeps the accepted path, as decoding's commit does);
* the **gap** in nats, ``draft score - target log-prob`` = log q - log p. Positive: the drafter is
  surer of the branch than the target (the paper's inconsistent branches have large positive
  gaps); negative: less sure. ``within_5_nats`` counts gap <= 5 (negative gaps included, the
  paper's "within +5 nats"), ``over_80_nats`` counts gap >= 80;
* **accepted**: the leading tokens of the branch equal to the reference continuation, i.e. what
  the greedy verifier would accept of that branch alone;
* the same for the **top-k** branches at that depth: a round is *inconsistent* when one of them
  has a gap above ``gap_threshold``.

Shapes use the glossary of ``jetspec`` (docs/design.md §8).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from jetspec.core.config import ConfigError, read_tuple_fields
from jetspec.core.interfaces import Drafter, TreeBuilder
from jetspec.core.replay import Reference, as_references, drafter_taps, reference_taps, replay_sequence
from jetspec.core.target import TargetModel, as_target
from jetspec.core.types import DraftTree


@dataclass
class Branch:
    """One root-to-leaf path of a round's tree, scored by the drafter and by the target."""

    rank: int  # 1 = the highest draft score among the branches of its depth
    tokens: list[int]  # drafted tokens, root (anchor) excluded
    draft_score: float  # log q(branch): the builder's cumulative draft log-prob
    target_logprob: float  # log p(branch | prefix): the target's joint log-prob of the same tokens
    accepted: int  # leading tokens equal to the reference continuation (greedy acceptance)

    @property
    def depth(self) -> int:
        return len(self.tokens)

    @property
    def gap(self) -> float:
        """log q - log p in nats; positive = the drafter is surer than the target."""
        return self.draft_score - self.target_logprob


@dataclass
class FaithRound:
    """One round of the walk: the tree's size and its top-k branches (``branches[0]`` is rank 1)."""

    reference: int  # index of the reference in the input
    set: str
    anchor: int  # index of the round's anchor (tree root) in the reference
    tree_nodes: int  # drafted nodes, root excluded
    tree_depth: int
    committed: int = 0  # tokens the round commits (accepted path + bonus), as replay counts them
    branches: list[Branch] = field(default_factory=list)

    def to_row(self) -> dict:
        row = asdict(self)
        for b, d in zip(self.branches, row["branches"]):
            d["gap"] = b.gap
        return row


@dataclass
class FaithSummary:
    """One drafter's faithfulness over all rounds: the row of ``faithfulness.json``."""

    drafter: str
    rounds: int
    branch_rounds: int  # rounds whose tree had a branch (not a bare root)
    branch_depth_mean: float  # tokens in the rank-1 branch, on average
    rank1_gap_median: float
    rank1_gap_mean: float
    within_5_nats: float  # share of rank-1 branches with gap <= 5
    over_80_nats: float  # share of rank-1 branches with gap >= 80
    rank1_accepted_mean: float  # tokens the target accepts of the rank-1 branch alone
    topk: int
    gap_threshold: float
    inconsistent_rounds: float  # share of rounds with a top-k branch whose gap exceeds gap_threshold
    topk_over_threshold: float  # share of all top-k branches whose gap exceeds gap_threshold
    tau: float  # committed tokens per round over the whole tree (docs/design.md §7.1)
    rank1_gaps: list[float] = field(default_factory=list)


def path_logprobs(tree: DraftTree, logits: Float[Tensor, "N V"]) -> Float[Tensor, " N"]:
    """log p of the path root..i for every node i, from the target's logits at every node.

    Row ``parents[i]`` of the logits is the target's law of node i's token given its path, so
    node i adds ``log p(tokens[i] | path to its parent)``; summing over the ancestor mask (self
    included, the root adding 0) gives the joint log-prob of the whole path, in float64.
    """
    logp = torch.log_softmax(logits.double(), -1)
    parents = tree.parents.clamp(min=0).to(logp.device)
    step = logp[parents, tree.tokens.to(logp.device)]
    step[0] = 0.0  # the root is the anchor: committed, not drafted
    return tree.ancestor.to(step) @ step


def top_branches(tree: DraftTree, depth: int, k: int) -> list[int]:
    """The end nodes of the ``k`` best-scoring branches at depth min(depth, tree depth), best first.

    Ties in score keep the builder's order (earlier node first). Empty for a bare root.
    """
    level = min(depth, tree.max_depth)
    if level == 0:
        return []
    nodes = (tree.depth == level).nonzero().flatten().tolist()
    score = tree.score.tolist()
    return sorted(nodes, key=lambda i: (-score[i], i))[:k]


def _leading_matches(tokens: Sequence[int], truth: Sequence[int]) -> int:
    n = 0
    for a, b in zip(tokens, truth):
        if a != b:
            break
        n += 1
    return n


def faithfulness_sequence(drafter: Drafter, builder: TreeBuilder, target: TargetModel, ref: Reference,
                          index: int = 0, taps: Optional[Tensor] = None, topk: int = 4,
                          max_new_tokens: Optional[int] = None) -> list[FaithRound]:
    """The rounds of one reference, each with its top-``topk`` branches scored by drafter and target.

    The target verifies each round's tree against its cache and keeps the root and accepted path
    (``TargetModel.commit``), so every round costs one forward over the tree only, as in decoding.
    """
    ids = torch.tensor(ref.input_ids, dtype=torch.long)
    end = len(ref.input_ids) if max_new_tokens is None else min(len(ref.input_ids),
                                                                 ref.response_start + max_new_tokens)
    target.prefill(ids[: ref.response_start])
    rounds: list[FaithRound] = []

    def observe(a: int, tree: DraftTree, path: list[int]) -> None:
        if target.cache_length != a:  # the walk and the cache must agree on the committed prefix
            raise RuntimeError(f"target cache holds {target.cache_length} tokens at anchor {a}")
        cum = path_logprobs(tree, target.verify(tree).logits).tolist()
        truth = ids[a + 1: end].tolist()
        rnd = FaithRound(index, ref.set, a, tree.budget, tree.max_depth)
        score = tree.score.tolist()
        for rank, node in enumerate(top_branches(tree, builder.depth, topk), 1):
            toks = tree.tokens[tree.path_to(node)].tolist()
            rnd.branches.append(Branch(rank, toks, score[node], cum[node], _leading_matches(toks, truth)))
        target.commit([0] + path, tree.num_nodes)
        rounds.append(rnd)

    lengths = replay_sequence(drafter, builder, ids, ref.response_start, taps, max_new_tokens, on_round=observe)
    for rnd, n in zip(rounds, lengths):
        rnd.committed = n
    return rounds


def measure_faithfulness(drafter: Drafter, builder: TreeBuilder, target, references: Sequence[Reference | dict],
                         taps: Optional[Sequence[Tensor]] = None, topk: int = 4,
                         max_new_tokens: Optional[int] = None, progress: bool = False,
                         desc: str = "faithfulness") -> list[FaithRound]:
    """Every round of every reference (``faithfulness_sequence``).

    ``target``: a Hugging Face causal LM or a ``TargetModel`` (its cache is reset per reference).
    A drafter that reads taps gets them from ``taps`` (``reference_taps``) or from one teacher
    forward per reference.
    """
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    refs = as_references(references)
    tm = as_target(target)
    if drafter.tap_layers and taps is None:
        taps = reference_taps(tm.model, drafter.tap_layers, refs)
    it = enumerate(refs)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, total=len(refs), desc=desc, unit="ref")
    rounds: list[FaithRound] = []
    with torch.no_grad():
        for i, ref in it:
            t = taps[i] if drafter.tap_layers else None
            rounds += faithfulness_sequence(drafter, builder, tm, ref, i, t, topk, max_new_tokens)
    return rounds


def summarize(label: str, rounds: Sequence[FaithRound], topk: int = 4, gap_threshold: float = 20.0) -> FaithSummary:
    """The summary row of one drafter's rounds (statistics over rounds that have a branch)."""
    with_branch = [r for r in rounds if r.branches]
    rank1 = [r.branches[0] for r in with_branch]
    gaps = [b.gap for b in rank1]
    top = [b for r in with_branch for b in r.branches[:topk]]
    n = len(rank1)

    def share(count: float, total: int) -> float:
        return count / total if total else float("nan")

    return FaithSummary(
        drafter=label, rounds=len(rounds), branch_rounds=n,
        branch_depth_mean=share(sum(b.depth for b in rank1), n),
        rank1_gap_median=statistics.median(gaps) if gaps else float("nan"),
        rank1_gap_mean=share(sum(gaps), n),
        within_5_nats=share(sum(g <= 5.0 for g in gaps), n),
        over_80_nats=share(sum(g >= 80.0 for g in gaps), n),
        rank1_accepted_mean=share(sum(b.accepted for b in rank1), n),
        topk=topk, gap_threshold=gap_threshold,
        inconsistent_rounds=share(sum(any(b.gap > gap_threshold for b in r.branches[:topk]) for r in with_branch), n),
        topk_over_threshold=share(sum(b.gap > gap_threshold for b in top), len(top)),
        tau=share(sum(r.committed for r in rounds), len(rounds)),
        rank1_gaps=gaps,
    )


def faithfulness_markdown(rows: Sequence[FaithSummary], title: str, setting: str) -> str:
    """The summaries as a Markdown section: a heading, what was measured, one row per drafter."""
    k = rows[0].topk if rows else 4
    thr = rows[0].gap_threshold if rows else 20.0
    md = [f"### {title}", "", setting + " Gap = draft score - target joint log-prob of the rank-1 branch, "
          f"in nats (positive: the drafter is surer than the target). Inconsistent: a round whose top-{k} "
          f"branches include one with gap > {thr:g} nats. Accepted: tokens of the rank-1 branch alone that "
          "greedy verification accepts; tau: committed tokens per round with the whole tree.", "",
          "| drafter | rounds | branch depth | rank-1 gap median | gap mean | within +5 nats | >= 80 nats "
          f"| rank-1 accepted | inconsistent rounds (top-{k}) | tau |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r.drafter} | {r.rounds} | {r.branch_depth_mean:.2f} | {r.rank1_gap_median:.2f} | "
                  f"{r.rank1_gap_mean:.2f} | {100 * r.within_5_nats:.0f}% | {100 * r.over_80_nats:.0f}% | "
                  f"{r.rank1_accepted_mean:.2f} | {100 * r.inconsistent_rounds:.0f}% | {r.tau:.3f} |")
    return "\n".join(md)


# ---------------------------------------------------------------------------- the command's run
@dataclass
class FaithfulnessConfig:
    """Everything ``jetspec faithfulness`` can vary. The CLI flags are generated from these fields."""

    prompts: str
    """A reference file (``jetspec references``: rows with input_ids and response_start) or a prompt
    file (rows with 'prompt' and optional 'set'), whose references the target then writes first."""
    out: str
    """Output folder: faithfulness.json, faithfulness.md, gaps.png, rounds.jsonl (and references.jsonl)."""
    drafters: tuple[str, ...] = ("jetspec", "dflash", "eagle")
    """Drafter specs, comma list: names, label=folder, a+b composites, name:key=value options."""
    target: str = "smollm2-135m-instruct"
    """Target model: built-in name, local folder or Hub id."""
    head_dir: Optional[str] = None
    """Folder with trained heads in <dir>/<drafter name>; default: jetspec/assets/heads."""
    budget: int = 16
    """Drafted nodes per round, root excluded."""
    width: int = 4
    """Candidates per depth (or per node) the best-first tree may use."""
    depth: int = 8
    """Depth D of the tree and of the rank-1 branch (clamped to what a drafter can draft)."""
    topk: int = 4
    """Branches per round checked for inconsistency (the k best-scoring at the rank-1 branch's depth)."""
    gap_threshold: float = 20.0
    """A top-k branch with a gap above this many nats makes its round inconsistent."""
    per_set: int = 4
    """Prompt file only: first N prompts of every prompt set."""
    max_new_tokens: int = 96
    """Prompt file only: longest greedy answer the target writes per prompt."""
    threads: int = 1
    """torch CPU threads (set by the command, not by the library)."""

    def __post_init__(self) -> None:
        read_tuple_fields(self)
        for name in ("budget", "width", "depth", "topk", "per_set", "max_new_tokens", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not self.gap_threshold >= 0:
            raise ValueError(f"--gap-threshold must be >= 0, got {self.gap_threshold}")
        if not self.drafters:
            raise ConfigError("drafters", "names no drafter")


def _check_reference_row(path: str, line: int, row: dict, vocab_size: int) -> Reference:
    ids, start = row.get("input_ids"), row.get("response_start")
    where = f"{path}:{line}"
    if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
        raise ValueError(f"{where}: input_ids must be a list of token ids")
    if not isinstance(start, int) or not 1 <= start < len(ids):
        raise ValueError(f"{where}: response_start must be an integer in 1..{len(ids) - 1} (the sequence has "
                         f"{len(ids)} tokens), got {start!r}")
    bad = [t for t in ids if not 0 <= t < vocab_size]
    if bad:
        raise ValueError(f"{where}: token id {bad[0]} is outside the target's vocabulary of {vocab_size}")
    return Reference(ids, start, str(row.get("set") or "default"))


def load_references(cfg: FaithfulnessConfig, model, tokenizer) -> list[Reference]:
    """The references ``cfg.prompts`` holds, or those the target writes for its prompts (into ``cfg.out``).

    A file whose first row has ``input_ids`` is a reference file, else a prompt file; a row that
    does not fit the file's kind is an error naming ``path:line``.
    """
    from jetspec.core.jsonl import numbered_rows
    from jetspec.core.prompts import prompt_of
    from jetspec.evaluation.replay_tools import ReferencesConfig, write_references

    rows = list(numbered_rows(cfg.prompts))
    if not rows:
        raise ValueError(f"--prompts {cfg.prompts} holds no rows")
    vocab = model.get_output_embeddings().weight.shape[0]
    if "input_ids" in rows[0][1]:
        return [_check_reference_row(cfg.prompts, i, r, vocab) for i, r in rows]
    for i, r in rows:
        try:
            prompt_of(r)
        except ValueError as err:
            raise ValueError(f"{cfg.prompts}:{i}: {err}") from None
    refs_path = f"{cfg.out}/references.jsonl"
    write_references(model, tokenizer, ReferencesConfig(prompts=cfg.prompts, out=refs_path, target=cfg.target,
                                                        per_set=cfg.per_set, max_new_tokens=cfg.max_new_tokens,
                                                        threads=cfg.threads))
    return [_check_reference_row(refs_path, i, r, vocab) for i, r in numbered_rows(refs_path)]


def run_faithfulness(cfg: FaithfulnessConfig, model, tokenizer) -> list[FaithSummary]:
    """Measure every drafter of ``cfg`` and write the files of ``cfg.out``; returns the summaries."""
    import json
    from pathlib import Path

    from jetspec.core.jsonl import write_jsonl
    from jetspec.evaluation.drafter_specs import DEFAULT_HEAD_DIR, DrafterUnavailable, make_drafter, spec_label
    from jetspec.evaluation.plots import gap_histogram
    from jetspec.trees import BestFirstBuilder

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    refs = load_references(cfg, model, tokenizer)
    head_dir = Path(cfg.head_dir) if cfg.head_dir else DEFAULT_HEAD_DIR
    target = TargetModel(model)
    taps_by_layers: dict = {}
    summaries, round_rows = [], []
    for spec in cfg.drafters:
        try:
            drafter = make_drafter(spec, model, head_dir)
        except DrafterUnavailable as err:
            raise ValueError(f"--drafters: '{spec}': {err}") from None
        taps = drafter_taps(drafter, model, refs, taps_by_layers)
        depth = min(cfg.depth, drafter.max_depth or cfg.depth)
        builder = BestFirstBuilder(budget=cfg.budget, width=cfg.width, depth=depth)
        label = spec_label(spec)
        rounds = measure_faithfulness(drafter, builder, target, refs, taps, cfg.topk, progress=True, desc=label)
        summaries.append(summarize(label, rounds, cfg.topk, cfg.gap_threshold))
        round_rows += [{"drafter": label, **r.to_row()} for r in rounds]
    (out / "faithfulness.json").write_text(json.dumps([asdict(s) for s in summaries], indent=1))
    write_jsonl(out / "rounds.jsonl", round_rows)
    setting = (f"{len(refs)} references ({', '.join(sorted({r.set for r in refs}))}), greedy, best-first trees of "
               f"budget {cfg.budget}, width {cfg.width}, depth D <= {cfg.depth} (clamped to each drafter's deepest); "
               "rank-1 branch at depth D, or at the tree's deepest level where the tree is shallower.")
    md = faithfulness_markdown(summaries, f"Branch faithfulness (budget {cfg.budget})", setting)
    (out / "faithfulness.md").write_text(md + "\n")
    gap_histogram({s.drafter: s.rank1_gaps for s in summaries}, out / "gaps.png")
    return summaries
