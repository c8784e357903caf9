# %% [markdown]
# # 10. Cheaper and stronger heads: replay, a reduced draft vocabulary, the tau curve
#
# **What you will learn**: on a CPU a learned drafter only pays off if it accepts more than the
# extra cost of a multi-token verify (break-even tau is about 2.5 for SmolLM2 here, see
# BENCHMARKS.md). Getting there takes many training steps and many measurements, so this notebook
# shows the three tools jetspec uses to make both cheap:
#
# 1. **Replay** (`jetspec.core.replay`): the exact greedy tau of a drafter, measured without running the
#    target once per round, from a prompt and the target's greedy answer.
# 2. **A reduced draft vocabulary** (`drafters/draft_vocab.py`, as EAGLE-3 does): the head scores
#    only the V' most frequent target tokens. Its lm_head shrinks by V / V'; verification still uses
#    the full vocabulary, so decoding stays lossless.
# 3. **The tau curve** (`jetspec.training.callbacks.TauCurve`): replay tau logged during training, against
#    the tokens the head has seen and the wall time.
#
# Everything runs on the tiny peaked target of notebook 5 in a minute or two.

# %%
import logging
import time
import warnings

import lightning as L
import matplotlib.pyplot as plt
import torch

from jetspec import SpeculativeDecoder
from jetspec.core.replay import make_references, replay
from jetspec.drafters import JetSpecHead, NGramDrafter
from jetspec.drafters.draft_vocab import coverage, frequent_tokens, token_counts
from jetspec.testing.toy import peaked_tiny_target
from jetspec.training.callbacks import TauCurve
from jetspec.training.data import TokenDataModule, sample_continuations
from jetspec.trees import BestFirstBuilder

torch.set_num_threads(1)  # notebooks run two at a time in CI; more threads would oversubscribe the cores
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*LeafSpec.*")
warnings.filterwarnings("ignore", ".*Total length of .* across ranks is zero.*")  # no validation set here

target = peaked_tiny_target(seed=0)
V = target.config.vocab_size
gen = torch.Generator().manual_seed(1)
train_prompts = torch.randint(0, V, (384, 8), generator=gen).tolist()
held_out = torch.randint(0, V, (10, 8), generator=gen).tolist()
rows = sample_continuations(target, train_prompts, max_new_tokens=32, temperature=0.3, seed=0)
print(f"{len(rows)} target-written training rows; vocabulary {V}")

# %% [markdown]
# ## 1. Replay = decoding, without the target in the loop
#
# Greedy speculative decoding commits exactly the target's greedy tokens. So once plain decoding
# has written the answer to a prompt (a *reference*), every round can be replayed: give the drafter
# the committed prefix (and the target's features of it, from ONE forward over the whole reference),
# build the tree, and accept the longest root path that spells the next reference tokens. The
# accepted lengths are those `SpeculativeDecoder.generate` reports (tests/core/test_replay.py checks
# equality in float64); the cost is the drafter's alone.

# %%
refs = make_references(target, held_out, max_new_tokens=32, progress=False)
builder = BestFirstBuilder(budget=16, width=4, depth=6)
drafter = NGramDrafter()

t0 = time.perf_counter()
report = replay(drafter, builder, refs, model=target)
t_replay = time.perf_counter() - t0
t0 = time.perf_counter()
decoded = [SpeculativeDecoder(target, drafter, builder).generate(torch.tensor([r.input_ids[: r.response_start]]),
                                                                 max_new_tokens=32) for r in refs]
t_decode = time.perf_counter() - t0
print("replay accepted lengths, first reference:", report.lengths[0][:12])
print("decode accepted lengths, first reference:", decoded[0].accepted_lengths[:12])
identical = all(a == d.accepted_lengths for a, d in zip(report.lengths, decoded))
print(f"identical for all {len(refs)} references:", identical)
print(f"n-gram tau {report.pooled_tau():.2f}; replay {t_replay:.2f}s vs decoding {t_decode:.2f}s")
assert identical  # replay is decoding's own walk (in fp32 a near-tie could part them; none here)
assert abs(report.pooled_tau() - sum(map(sum, report.lengths)) / sum(map(len, report.lengths))) < 1e-12

# %% [markdown]
# ## 2. How many tokens does a head need to score?
#
# `token_counts` counts the *response* tokens of the training rows (what a head drafts);
# `frequent_tokens` keeps the V' most frequent. The coverage curve says what share of the drafted
# text a head with V' outputs could ever propose. On SmolLM2's own answers 8,192 of 49,152 tokens
# cover 99.3% of the counted responses (and 93% of held-out target answers; `jetspec train` prints it).

# %%
counts = token_counts(rows, V)
sizes = [8, 16, 32, 48, 64, 96, 128]
cover = [coverage(counts, frequent_tokens(counts, n)) for n in sizes]
plt.figure(figsize=(4.5, 3))
plt.plot(sizes, cover, marker="o")
plt.xlabel("draft vocabulary V'"); plt.ylabel("share of response tokens")  # noqa: E702
plt.title("coverage of the training responses"); plt.grid(alpha=0.3); plt.show()  # noqa: E702
for n, c in zip(sizes, cover):
    print(f"V' = {n:3d}: {c:.1%}")

# %% [markdown]
# ## 3. Train three heads and watch their tau curves
#
# Same data, same steps, same seed; they differ in one switch each: the paper's design with the
# full vocabulary, the same head scoring only the 48 most frequent tokens, and that plus the
# *direct path* (the anchor's embedding and the last context feature added to every block slot, an
# EAGLE-style shortcut; it starts at zero, i.e. as the paper's design). `TauCurve` replays the held-out
# references every 40 steps.

# %%
ids48 = frequent_tokens(counts, 48)
variants = {"full vocabulary": {}, "V'=48": {"draft_vocab": ids48},
            "V'=48 + direct path": {"draft_vocab": ids48, "direct_path": True}}
curves, heads = {}, {}
for name, options in variants.items():
    torch.manual_seed(0)
    head = JetSpecHead(target, block_size=7, num_layers=1, anchors_per_seq=24, lr=3e-3, warmup_steps=10,
                       **options)
    curve = TauCurve([r.to_row() for r in refs], budgets=(16,), every_n_steps=40, width=4)
    trainer = L.Trainer(max_steps=240, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[curve])
    t0 = time.perf_counter()
    trainer.fit(head, datamodule=TokenDataModule(rows, batch_size=8))
    curves[name], heads[name] = curve, head
    print(f"{name:22s} trained in {time.perf_counter() - t0:5.1f}s, lm_head rows: "
          f"{head.config.draft_vocab_size or V}")

# %% [markdown]
# Each callback kept its rows (`curve.history`; with `out_file` they are also appended as JSON lines,
# which is what `jetspec train --eval-data refs.jsonl --eval-every N` does, and `--resume last`
# keeps counting tokens and time). `eval_s` is the time one replay of the held-out set took: the
# drafter's cost, which is where the reduced vocabulary saves.

# %%
fig, ax = plt.subplots(figsize=(5.5, 3.4))
for name, curve in curves.items():
    xs = [r["tokens_seen"] for r in curve.history]
    ax.plot(xs, [r["tau_b16"] for r in curve.history], marker="o", label=name)
ax.set_xlabel("training tokens seen"); ax.set_ylabel("replay tau @ budget 16")  # noqa: E702
ax.legend(); ax.grid(alpha=0.3); plt.show()  # noqa: E702
for name, curve in curves.items():
    last = curve.history[-1]
    print(f"{name:22s} final tau {last['tau_b16']:.2f}, replay of {len(refs)} references took {last['eval_s']:.1f}s")

# %% [markdown]
# ### Reading the result
# **The paper** trains on the full vocabulary; EAGLE-3 introduced the reduced draft vocabulary to
# make the head's lm_head cheap. **Here** the three heads differ by one switch each on a toy target,
# one seed each, so differences of a few hundredths are noise (the seed-level comparisons in
# BENCHMARKS.md use 3 seeds and confidence intervals). The cell says which variant ended highest and
# whether its lead is beyond that noise.

# %%
final = {name: curve.history[-1]["tau_b16"] for name, curve in curves.items()}
top = max(final, key=final.get)
runner_up = max((n for n in final if n != top), key=final.get)
margin = final[top] - final[runner_up]
print(f"highest final replay tau: {top} ({final[top]:.2f}), {margin:+.2f} over {runner_up} "
      f"({'beyond' if margin > 0.05 else 'within'} the ~0.05 a single seed can move)")
cut = final["V'=48"] - final["full vocabulary"]
print(f"the reduced vocabulary changed tau by {cut:+.2f} with an lm_head {V / 48:.1f}x smaller "
      f"(it covers {coverage(counts, ids48):.0%} of the training responses)")
assert all(r["tau_b16"] >= 1.0 for curve in curves.values() for r in curve.history)

# %% [markdown]
#
# ## The same on SmolLM2
#
# ```bash
# # the teacher (taps + top-64 logits) once, on both cores; training then never runs the target
# jetspec train --target smollm2-135m-instruct --data train.jsonl --out runs/x --kl-topk 64 \
#     --teacher-cache runs/teacher_cache --cache-only 0/2 &   # and 1/2 in a second shell
# jetspec references --prompts runs/data/dev.jsonl --per-set 8 --out runs/data/dev_refs.jsonl
# jetspec train --head jetspec --target smollm2-135m-instruct --data train.jsonl --out runs/jetspec \
#     --kl-topk 64 --teacher-cache runs/teacher_cache --draft-vocab 8192 --vocab-data more_text.jsonl \
#     --eval-data runs/data/dev_refs.jsonl --eval-every 100 --max-time 00:02:00:00 --resume last
# python experiments/compare_heads.py --help   # several seeds per variant, intervals over seeds and prompts
# ```

# %% [markdown]
# ## 4. Verify only what pays: cost-aware trees
#
# A bigger tree is not free: on the 2-core CPU of BENCHMARKS.md a verify forward over n drafted
# nodes costs about 1 + 0.035 n plain decoding steps. If the drafter's q were calibrated, the
# expected number of committed tokens would be 1 + (sum of the path probabilities of the verified
# nodes), so one more node pays only if its path probability q exceeds
# c * (1 + sum q so far) / (1 + c n). `BestFirstBuilder(node_cost=c)` stops growing at the first
# node that fails the test (the budget becomes a cap). It chooses which nodes are verified, never
# what is committed: output is unchanged.
#
# Replay reports the drafted nodes of every round, and `modelled_speedup` turns tokens and nodes
# into a speed under that cost model (a ranking tool; `jetspec bench --node-costs` times it for real).
# The tiny target's verify is cheap per node, so we pretend it costs c = 0.05 per node.

# %%
head = heads["V'=48 + direct path"]
cost_aware = {}  # node_cost -> (tau, nodes per round, modelled speedup)
for c in (0.0, 0.05, 0.2):
    rep = replay(head, BestFirstBuilder(budget=16, width=4, depth=6, node_cost=c), refs, model=target)
    nodes = sum(map(sum, rep.sizes)) / sum(map(len, rep.sizes))
    print(f"node_cost {c:4.2f}: tau {rep.pooled_tau():.2f}, {nodes:4.1f} nodes/round, "
          f"modelled speedup {rep.modelled_speedup(0.05):.2f}x")
    cost_aware[c] = (rep.pooled_tau(), nodes, rep.modelled_speedup(0.05))
best_c = max(cost_aware, key=lambda c: cost_aware[c][2])
if best_c > 0:
    print(f"best modelled speedup at node_cost {best_c}: fewer nodes lose some tau "
          f"({cost_aware[0.0][0]:.2f} -> {cost_aware[best_c][0]:.2f}) and save more verify cost")
else:
    print("best modelled speedup with the full tree (node_cost 0): every node paid for its verify cost here")
assert all(cost_aware[c][1] <= cost_aware[0.0][1] for c in cost_aware)  # a cost-aware tree never grows larger

# %% [markdown]
# A count-based drafter is not calibrated out of the box: prompt lookup gives a lone match q = 1 at
# every depth, so no cost rule can tell a sure continuation from a guess. `NGramDrafter(smoothing=1)`
# adds one pseudo-count for "the target writes something else here" (a lone match then scores 1/2
# per step), which is close to the acceptance rates measured on SmolLM2's answers.

# %%
for s in (0.0, 1.0):
    rep = replay(NGramDrafter(smoothing=s), BestFirstBuilder(budget=16, width=4, depth=6, node_cost=0.05), refs)
    nodes = sum(map(sum, rep.sizes)) / sum(map(len, rep.sizes))
    print(f"n-gram smoothing {s}: tau {rep.pooled_tau():.2f}, {nodes:4.1f} nodes/round, "
          f"modelled speedup {rep.modelled_speedup(0.05):.2f}x")

# %% [markdown]
# **Reading the result.** The modelled speedup is tutorial 2's model with the draft left out,
# tokens / (rounds + c x nodes): a cost-aware tree trades a little tau for many fewer verified
# nodes, and the printout above says which node cost ranked best here. The ranking, not the digits,
# is what carries over to another machine; `jetspec bench --node-costs` times the same trees.
#
# ## Try this
# * In section 3 train for `max_steps=480`: expect every curve to keep rising slowly, and the
#   direct-path variant's lead (if any) to persist or shrink; one seed cannot tell.
# * Use `frequent_tokens(counts, 16)`: coverage falls to about half (section 2's table), so expect
#   tau to drop, since tokens outside the draft vocabulary can never be proposed.
# * In section 4 try `node_cost=0.02`: expect a tree between the two extremes, and a modelled speedup
#   close to the best one printed.
