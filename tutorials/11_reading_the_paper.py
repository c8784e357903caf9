# %% [markdown]
# # 11. Reading the paper with jetspec: branch faithfulness, loss weighting, budget scaling
#
# **What you will learn**: the JetSpec paper (arXiv 2606.18394) argues with more than a speedup
# table. Its claim is about *branches*: a bidirectional (DFlash-style) head drafts one marginal per
# depth, shared by every branch, so the tokens of a high-scoring branch are each plausible but
# together they can be a sequence the target finds implausible (an "inconsistent tree"); a causal
# head conditions every depth on the depths before it, so its best branch carries a score the
# target agrees with, and larger budgets turn into longer accepted prefixes. This notebook runs the
# paper's analyses on SmolLM2-135M with the heads shipped in jetspec:
#
# 1. **branch faithfulness** on one prompt, drawn as the tree: draft score vs target score per branch;
# 2. **the gap histogram** of the causal and the bidirectional head (`jetspec faithfulness`);
# 3. **the loss-weighting (gamma) curve** from the ablation results (`docs/results/ablations.json`);
# 4. **the budget-scaling curve** by replay (`jetspec replay-table --scaling`).
#
# Sign convention (`jetspec/evaluation/faithfulness.py`): gap = draft score - target joint log-prob
# = log q(branch) - log p(branch | prefix), in nats. Positive: the drafter is surer of the branch than
# the target. Our heads are small and trained for under an hour on a CPU: read the numbers as a
# measurement, not a replication (docs/results/paper_faithfulness.md places them beside the paper's).

# %%
import json
from pathlib import Path

import matplotlib.pyplot as plt
import torch

import jetspec
from jetspec import TargetModel
from jetspec.core.checks import run_drafter
from jetspec.core.prompts import builtin_prompts, chat_ids
from jetspec.core.replay import make_references, reference_taps, replay
from jetspec.core.types import DraftInput
from jetspec.drafters import DEFAULT_HEAD_DIR, TargetScoredDrafter
from jetspec.evaluation.faithfulness import measure_faithfulness, path_logprobs, summarize, top_branches
from jetspec.trees import BestFirstBuilder

torch.set_num_threads(1)  # notebooks run two at a time in CI; more threads would oversubscribe the cores
model, tok = jetspec.load_target("smollm2-135m-instruct")
heads = {name: jetspec.DRAFTERS[name].from_pretrained(DEFAULT_HEAD_DIR / name, target=model)
         for name in ("jetspec", "dflash")}  # causal and bidirectional: the same class, one switch apart
rows = builtin_prompts(["math", "code"])
prompts = [chat_ids(tok, r["prompt"]) for r in (rows[0], rows[5])]
refs = make_references(model, prompts, max_new_tokens=32, progress=False)  # the target's greedy answers
taps = {name: reference_taps(model, h.tap_layers, refs) for name, h in heads.items()}
print(f"{len(refs)} references of {[len(r.input_ids) - r.response_start for r in refs]} new tokens")

# %% [markdown]
# ## 1. One round, drawn as a tree
#
# The first round of the first prompt: the head drafts from the prompt, the best-first builder
# grows a tree of 16 nodes (docs/design.md §2.5), and ONE target forward over the tree gives the
# target's log-prob of every node given its path (`path_logprobs`). Each leaf is labelled with its
# branch's draft score q and target score p; the rank-1 branch (best draft score at the deepest
# level) is drawn thick.

# %%
BUDGET, WIDTH, DEPTH = 16, 4, 7  # depth 7: the shipped parallel heads draft blocks of 8 slots
ref = refs[0]
ids = torch.tensor(ref.input_ids)
a = ref.response_start - 1  # the first anchor: the prompt's last token
builder = BestFirstBuilder(budget=BUDGET, width=WIDTH, depth=DEPTH)
target = TargetModel(model)


def one_round(name):
    head = heads[name]
    inp = DraftInput(tokens=ids[: a + 1], depth=DEPTH, width=WIDTH, budget=BUDGET, taps=taps[name][0][:a])
    tree = builder.build(run_drafter(head, inp, head.vocab_size), int(ids[a]))
    target.prefill(ids[: a + 1])
    return tree, path_logprobs(tree, target.verify(tree).logits)


def draw(ax, tree, logp, title):
    depth, parents = tree.depth.tolist(), tree.parents.tolist()
    slot, ys = {}, []
    for i, d in enumerate(depth):  # nodes of one depth spread vertically, in builder order
        ys.append(slot.get(d, 0))
        slot[d] = ys[-1] + 1
    ys = [y - (slot[d] - 1) / 2 for y, d in zip(ys, depth)]
    best = top_branches(tree, DEPTH, 1)
    on_best = set(tree.path_to(best[0])) | {0} if best else {0}
    kids = tree.children()
    for i, p in enumerate(parents):
        if p >= 0:
            ax.plot([depth[p], depth[i]], [ys[p], ys[i]], color="k", lw=3 if i in on_best else 0.8)
    for i in range(tree.num_nodes):
        ax.text(depth[i], ys[i], repr(tok.decode([int(tree.tokens[i])])), fontsize=7, ha="center", va="bottom")
        if not kids[i] and i:
            ax.text(depth[i] + 0.1, ys[i], f"q {float(tree.score[i]):.1f} | p {float(logp[i]):.1f}", fontsize=7,
                    va="top", color="tab:red" if float(tree.score[i] - logp[i]) > 5 else "tab:green")
    ax.set_title(title)
    ax.set_xlabel("depth")
    ax.set_yticks([])


fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
for ax, name in zip(axes, heads):
    tree, logp = one_round(name)
    draw(ax, tree, logp, f"{name}: first round, budget {BUDGET}")
plt.tight_layout()
plt.show()

# %% [markdown]
# The labels are the two scores of each branch: green where the gap is at most 5 nats, red above.
# A faithful drafter's q and p move together; an inconsistent branch has a high q and a low p.
#
# **The metric has a known zero.** `TargetScoredDrafter` proposes the target's greedy chain and, at
# each chain node, the target's top-W alternatives, each scored with the *target's own* log-prob.
# Its every branch must have gap 0 (up to float32 rounding here; the tests check 1e-9 in float64)
# and its rank-1 branch is the greedy path, accepted in full: a check that the measurement itself
# is right before it is used on a head.

# %%
oracle = measure_faithfulness(TargetScoredDrafter(model), BestFirstBuilder(budget=12, width=3, depth=4), target,
                              refs, topk=3)
worst = max(abs(b.gap) for r in oracle for b in r.branches)
print(f"target-scored drafter: {len(oracle)} rounds, largest |gap| {worst:.2e} nats")
assert worst < 1e-3
# the rank-1 branch is accepted in full, except where it runs past the end of the reference
assert all(r.branches[0].accepted == min(len(r.branches[0].tokens), len(refs[r.reference].input_ids) - r.anchor - 1)
           for r in oracle)

# %% [markdown]
# ## 2. The gap histogram: causal vs bidirectional
#
# Every round of both references, budget 16 (what `jetspec faithfulness --budget 16` runs on a
# whole reference set). The paper (Qwen3-8B, MATH-500, branches of a 16-slot block) finds the
# causal head's rank-1 branch within +5 nats of the target in 42% of rounds against 6% for the
# diffusion head, and 26% of the latter's branches 80 nats or more away.

# %%
summaries = {}
for name, head in heads.items():
    rounds = measure_faithfulness(head, builder, target, refs, taps=taps[name], topk=4)
    summaries[name] = summarize(name, rounds, topk=4, gap_threshold=20.0)
    s = summaries[name]
    print(f"{name:8s} rounds {s.rounds:3d}  rank-1 depth {s.branch_depth_mean:.1f}  gap median "
          f"{s.rank1_gap_median:6.2f}  within +5 {100 * s.within_5_nats:3.0f}%  >= 80 {100 * s.over_80_nats:3.0f}%  "
          f"inconsistent rounds {100 * s.inconsistent_rounds:3.0f}%  tau {s.tau:.2f}")
    # the walk is replay's: the same rounds and the same tau
    rep = replay(head, builder, refs, taps=taps[name])
    assert s.rounds == sum(map(len, rep.lengths)) and abs(s.tau - rep.pooled_tau()) < 1e-12

fig, axes = plt.subplots(1, 2, figsize=(11, 3.2), sharey=True)
for ax, (name, s) in zip(axes, summaries.items()):
    ax.hist(s.rank1_gaps, bins=20, color="tab:blue")
    ax.axvline(5, color="tab:red", ls="--")
    ax.set_title(f"{name}: rank-1 gap (nats)")
    ax.set_xlabel("draft score - target log-prob")
plt.tight_layout()
plt.show()

# %% [markdown]
# ### Reading the result
# What the two rows above say, compared with the paper's 42% vs 6% (rank-1 branch within +5 nats):

# %%
causal, bidir = summaries["jetspec"], summaries["dflash"]
more = "jetspec" if causal.within_5_nats > bidir.within_5_nats else "dflash" if bidir.within_5_nats > \
    causal.within_5_nats else "neither"
print(f"within +5 nats: jetspec {causal.within_5_nats:.0%}, dflash {bidir.within_5_nats:.0%} (paper: 42% vs 6%); "
      f"more often faithful here: {more}")
print(f"rank-1 branch depth: jetspec {causal.branch_depth_mean:.1f}, dflash {bidir.branch_depth_mean:.1f} tokens "
      "(paper: branches of a 16-slot block)")
paper_like = causal.within_5_nats - bidir.within_5_nats >= 0.2
print(f"the paper's contrast (a lead of 20 points or more for the causal head) "
      f"{'is' if paper_like else 'is not'} reproduced on these {causal.rounds} rounds")
assert 0 <= causal.within_5_nats <= 1 and 0 <= bidir.within_5_nats <= 1
assert causal.branch_depth_mean <= DEPTH and bidir.branch_depth_mean <= DEPTH

# %% [markdown]
# Read the rows with the branch depth in mind: a gap is a sum over the branch's tokens, and at
# budget 16 with width 4 a best-first tree is only 2-3 levels deep, so our branches are far shorter
# than the paper's 16-token blocks, and 80-nat gaps are rare. A branch that leaves the target's path
# at depth 1 pays the target's surprise at every later token, so the gap mostly tells how early the
# branches leave the path. Whether the causal head is more faithful than the bidirectional one on
# SmolLM2 is what the numbers above say, not what the paper says (docs/results/paper_faithfulness.md
# measures it on 12 references). What still holds at any scale: the metric's zero (the target-scored
# drafter, gap 0) and that a gap is a sum over a branch, so only equal depths compare.
#
# ## 3. Loss weighting: the gamma curve
#
# DFlash trains block slot k with weight exp(-(k-1)/gamma) (docs/design.md §5.4): the early slots,
# whose tokens are accepted most often, count more. The paper reports MATH-500 speedups of 8.29 /
# 8.50 / 8.40 / 8.41 (causal) and 5.46 / 8.16 / 8.36 / 6.17 (diffusion) at gamma 0 / 3 / 7 / 15:
# the weighting matters much more for the bidirectional head. The seed-level ablation
# (`docs/results/ablations.json`, short training runs with several seeds) gives ours.

# %%
ABLATIONS = Path(jetspec.__file__).parents[1] / "docs" / "results" / "ablations.json"  # the repository's copy
if not ABLATIONS.is_file():
    raise FileNotFoundError(f"{ABLATIONS} is missing: the training ablations (gamma, objective, tree "
                            "scoring; see BENCHMARKS.md) write it, and this section only reads it")
gamma_rows = json.loads(ABLATIONS.read_text())["gamma"]
GAMMAS = [0, 3, 7, 15]
budget = max(r["budget"] for r in gamma_rows)  # one budget, should the file hold several
gamma_rows = [r for r in gamma_rows if r["budget"] == budget and r["gamma"] in GAMMAS]
for r in gamma_rows:  # each mean is the mean of its seeds' taus
    assert abs(r["tau_mean"] - sum(r["taus"]) / len(r["taus"])) < 1e-3, r
fig, ax = plt.subplots(figsize=(5.5, 3.2))
for head in ("jetspec", "dflash"):
    pts = sorted((r["gamma"], r["tau_mean"], r["tau_ci"]) for r in gamma_rows if r["head"] == head)
    assert [g for g, _, _ in pts] == GAMMAS, f"{head}: gammas {[g for g, _, _ in pts]} at budget {budget}"
    ax.errorbar(range(4), [t for _, t, _ in pts], yerr=[c if c is not None and c == c else 0 for _, _, c in pts],
                marker="o", capsize=3, label=head)
    spread = max(t for _, t, _ in pts) - min(t for _, t, _ in pts)
    print(f"{head}: tau at gamma 0/3/7/15 = {[round(t, 3) for _, t, _ in pts]}, spread {spread:.3f}")
best = {}
for head in ("jetspec", "dflash"):
    pts = {r["gamma"]: r["tau_mean"] for r in gamma_rows if r["head"] == head}
    best[head] = max(GAMMAS, key=lambda g: pts[g])
    spread = max(pts.values()) - min(pts.values())
    print(f"{head}: best gamma {best[head]}; the weighting moves tau by {spread:.3f} (paper: the speedup "
          f"moves by {8.36 - 5.46:.2f}x for the bidirectional head, {8.50 - 8.29:.2f}x for the causal one)")
ax.set_xticks(range(4), ["0", "3", "7", "15"])
ax.set_xlabel("gamma (0 = uniform weights)")
ax.set_ylabel(f"replay tau at budget {budget} (95% CI)")
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# **Reading the result.** A gap between gamma values matters only where it exceeds the error bars
# (95% intervals over seeds, plotted); the printout names each head's best gamma. The paper's
# lesson, that the weighting matters much more for the bidirectional head, holds here only if the
# dflash curve moves clearly more than the jetspec curve.
#
# ## 4. Budget scaling by replay
#
# Replay gives the exact greedy tau without a target forward per round (docs/design.md §7.4), so
# budgets up to 256 fit on a CPU. A best-first tree of a larger budget *contains* the tree of a
# smaller one (growth pops candidates in the same order and only stops later), so from the same
# prefix a larger budget never accepts less. The paper's causal head reaches tau 7.42 / 9.95 / 10.76
# at budgets 64 / 128 / 256 on MATH-500; `docs/results/paper_faithfulness.md` has ours for every
# shipped drafter on 12 references.

# %%
small, big = one_round("jetspec")[0], None
big_builder = BestFirstBuilder(budget=64, width=WIDTH, depth=DEPTH)
head = heads["jetspec"]
inp = DraftInput(tokens=ids[: a + 1], depth=DEPTH, width=WIDTH, budget=64, taps=taps["jetspec"][0][:a])
big = big_builder.build(run_drafter(head, inp, head.vocab_size), int(ids[a]))
n = small.num_nodes
assert torch.equal(big.tokens[:n], small.tokens) and torch.equal(big.parents[:n], small.parents)
print(f"the budget-{BUDGET} tree is the first {n} nodes of the budget-64 tree")

BUDGETS = [4, 8, 16, 32, 64, 128]
curves = {}
for name, h in heads.items():
    reports = [replay(h, BestFirstBuilder(budget=b, width=WIDTH, depth=DEPTH), refs, taps=taps[name])
               for b in BUDGETS]
    curves[name] = [r.pooled_tau() for r in reports]
    print(f"{name:8s} tau", [round(t, 3) for t in curves[name]])
    print(f"{'':8s} per-depth acceptance at budget {BUDGETS[-1]}:",
          [round(x, 2) for x in reports[-1].depth_acceptance()])
    # On these references tau does not fall as the budget grows (measured; per round it is a theorem,
    # over a whole walk the rounds start from different prefixes, so it is checked, not assumed)
    assert all(x <= y + 1e-12 for x, y in zip(curves[name], curves[name][1:])), curves[name]

fig, ax = plt.subplots(figsize=(5.5, 3.2))
for name, taus in curves.items():
    ax.plot(BUDGETS, taus, marker="o", label=name)
ax.set_xscale("log", base=2)
ax.set_xticks(BUDGETS, [str(b) for b in BUDGETS])
ax.set_xlabel("budget (drafted nodes)")
ax.set_ylabel("replay tau")
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ### Reading the result
# The paper's causal head goes from tau 7.42 to 10.76 between budgets 64 and 256 (x1.45). The cell
# below computes the same kind of ratio for ours, and per-depth acceptance says why it differs.

# %%
for name, taus in curves.items():
    ratio = taus[BUDGETS.index(128)] / taus[BUDGETS.index(32)]
    shape = "flat" if ratio < 1.1 else "slower than the paper's" if ratio < 10.76 / 7.42 else "as steep as the paper's"
    print(f"{name}: tau {taus[0]:.2f} at budget {BUDGETS[0]} -> {taus[-1]:.2f} at {BUDGETS[-1]}; "
          f"x{ratio:.2f} from budget 32 to 128 (paper, 64 to 256: x{10.76 / 7.42:.2f}): {shape}")
lead = {b: ("jetspec" if curves["jetspec"][i] > curves["dflash"][i] else "dflash") for i, b in enumerate(BUDGETS)}
same_leader = len(set(lead.values())) == 1
print("higher tau at each budget:", lead,
      f"-> {'the same head at every budget' if same_leader else 'the lead changes with the budget'}")
assert all(curves[n][-1] >= curves[n][0] for n in curves)  # a bigger best-first tree contains the smaller

# %% [markdown]
# Why a curve grows slowly here: a round's accepted depth is capped by the first level where the
# target's token is missing, and for small heads the per-depth acceptance printed above falls fast
# with depth, so more budget mostly widens levels that are already decided. The paper's heads
# accept most of a 16-token block, so their extra budget buys depth. What still holds: tau never
# falls as the budget grows (the nesting shown above), and replay gives exactly decoding's tau.
#
# ## What to take away
#
# * Faithfulness is measured per round on the rounds decoding really makes, with one target
#   forward over the tree; its zero is checked with a drafter that scores with the target itself.
# * The gap is a sum over tokens: compare drafters at equal branch depth. A branch the target
#   accepts has a gap near or below 0; one that leaves the target's path early has a large one, so
#   weak heads look unfaithful whatever their block structure.
# * The curves here are small-scale measurements. To run the paper's setting, see the GPU commands
#   in docs/results/paper_faithfulness.md.
#
# ## Try this
# * In section 2 pass `gap_threshold=5.0` to `summarize`: expect the same rank-1 numbers and a larger
#   "inconsistent rounds" share (a round counts when one of its top-4 branches is over the threshold).
# * Replace the two references with `rows[:4]` (four math prompts): expect taus to change by a
#   few tenths and the curves to stay flat; replay makes this cheap.
# * Add `BestFirstBuilder(budget=b, width=8, depth=DEPTH)` in section 4: with 8 candidates per
#   depth a large budget can buy more at the shallow levels; expect a slightly steeper curve.
