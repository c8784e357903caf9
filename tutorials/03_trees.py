# %% [markdown]
# # 3. Draft trees: build, draw, verify every branch in one forward
#
# **What you will learn** (docs/design.md §1 and §2): how a tree builder spends a budget of drafted
# nodes (root excluded) on a tree; the flat parent-before-child encoding and its ancestor mask; how
# one target forward with that mask verifies every branch at once; how the deepest matching path is
# accepted and the KV cache is compacted back to a plain prefix.

# %%
import matplotlib.pyplot as plt
import torch

import jetspec
from jetspec import DraftInput, TargetModel, VerifyInput
from jetspec.core.target import tree_attention_mask
from jetspec.drafters import OracleDrafter
from jetspec.trees import BestFirstBuilder, ChainBuilder, FanoutCapBuilder
from jetspec.verifiers import GreedyVerifier

torch.set_num_threads(1)  # notebooks run two at a time in CI; more threads would oversubscribe the cores
model, tok = jetspec.load_target("smollm2-135m-instruct")
msgs = [{"role": "user", "content": "Name three primary colors."}]
ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"][0]

# %% [markdown]
# ## One proposal, three builders
# We use the *oracle* drafter: it runs the target itself and offers, at every depth, the target's
# top-W tokens along its greedy path. (It is a test drafter: it costs D target forwards.)

# %%
builders = {"chain": ChainBuilder(depth=4), "best-first": BestFirstBuilder(budget=10, width=3, depth=4),
            "fan-out cap": FanoutCapBuilder(budget=10, width=3, depth=4, beta=1.0, gap0=1.0)}
proposal = OracleDrafter(model).draft(DraftInput(tokens=ids, depth=4, width=3, budget=10))
print("per-depth candidates:")
for d in range(4):
    print(d + 1, [(tok.decode([t]), round(lp, 2)) for t, lp in
                  zip(proposal.depth_tokens[d].tolist(), proposal.depth_logprobs[d].tolist())])
trees = {name: b.build(proposal, anchor=int(ids[-1])) for name, b in builders.items()}
for name, tr in trees.items():
    print(f"{name:12s} nodes={tr.num_nodes} (budget {builders[name].budget}) parents={tr.parents.tolist()}")
    assert tr.budget <= builders[name].budget

# %% [markdown]
# ## Draw the best-first tree and its ancestor mask
# `A[i, j]` is true when node j is node i or one of its ancestors: it is exactly what node i may
# attend to inside the tree.

# %%
def draw(tree, ax, title):
    xs, counters = {}, {}
    for i in range(tree.num_nodes):
        d = int(tree.depth[i])
        counters[d] = counters.get(d, 0) + 1
        xs[i] = (counters[d], -d)
    for i in range(1, tree.num_nodes):
        p = int(tree.parents[i])
        ax.plot([xs[p][0], xs[i][0]], [xs[p][1], xs[i][1]], "k-", lw=0.8)
    for i, (x, y) in xs.items():
        ax.annotate(tok.decode([int(tree.tokens[i])]).strip() or "\u2423", (x, y), ha="center",
                    bbox=dict(boxstyle="round", fc="w"))
    ax.set_title(title)
    ax.axis("off")

tree = trees["best-first"]
fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
draw(tree, ax[0], "best-first tree (depth downwards)")
ax[1].imshow(tree.ancestor, cmap="Greys")
ax[1].set_title("ancestor mask A[i, j]")
ax[1].set_xlabel("key node j")
ax[1].set_ylabel("query node i")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Verify every branch in one forward
# Node i sits at position P + depth[i]; the mask shows the whole cached prefix plus the ancestors.
# Each row of the result must equal what sequential decoding of that branch gives.

# %%
target = TargetModel(model)
target.prefill(ids)
P = target.cache_length
mask = tree_attention_mask(tree.ancestor, P, torch.float32, "cpu")
print("mask shape [1, 1, N, P + N] =", tuple(mask.shape))
out = target.verify(tree)
with torch.no_grad():
    for i in range(tree.num_nodes):
        path = torch.cat([ids, tree.tokens[tree.path_to(i)]])
        ref = model(path[None]).logits[0, -1]
        assert torch.allclose(out.logits[i], ref, atol=1e-3), i
print("every branch matches sequential decoding")

# %% [markdown]
# ## Accept the deepest matching path and compact the cache

# %%
acc = GreedyVerifier().verify(VerifyInput(tree=tree, logits=out.logits))
print("accepted:", [tok.decode([t]) for t in acc.draft_tokens], "bonus:", repr(tok.decode([acc.bonus_token])))
assert len(acc.accepted_nodes) == 4  # the oracle's greedy chain is in the tree and fully accepted
target.commit([0] + acc.accepted_nodes, tree.num_nodes)
committed = torch.cat([ids, torch.tensor(acc.draft_tokens)])
with torch.no_grad():
    fresh = model(committed[None], use_cache=True).cache
for got, ref in zip(target.cache.layers, fresh.layers):
    assert torch.allclose(got.keys, ref.keys, atol=1e-4) and torch.allclose(got.values, ref.values, atol=1e-4)
print("compacted cache == fresh prefill of the committed tokens:", target.cache_length, "rows")

# %% [markdown]
# ## Reading the result
# The oracle is the target itself, so its greedy chain is in every tree and is accepted in full:
# this tutorial measures the *mechanics* (one forward verifies every branch; the cache ends as if
# only the accepted path had ever been fed), not a drafter. What the three builders differ in is
# how they spend the budget, and that is what decides tau once the drafter can be wrong:

# %%
for name, tr in trees.items():
    widths_at = [int((tr.depth == d).sum()) for d in range(1, int(tr.depth.max()) + 1)]
    print(f"{name:12s} {tr.budget:2d} drafted nodes, nodes per depth {widths_at}")
shallow = max(trees, key=lambda n: int((trees[n].depth == 1).sum()))
print(f"the widest first level: {shallow} (it bets most on the depth-1 guess being wrong)")
assert all(int((tr.depth == 1).sum()) <= 3 for tr in trees.values())  # width 3 at most per level

# %% [markdown]
# With a real drafter the first level matters most: depth 2 can only be accepted after depth 1.
# Tutorial 9 compares a chain and a tree on the shipped head; tutorial 6 grows the budget.
#
# ## Try this
# * Use `BestFirstBuilder(budget=20, width=3, depth=4)`: expect the tree to fill more of the levels
#   and still contain the chain of the oracle, so the accepted path is unchanged.
# * Replace `OracleDrafter(model)` with `NGramDrafter()` (from `jetspec.drafters`): on this prompt
#   expect few or no candidates and a tree of the root alone; the assert on 4 accepted nodes fails.
# * Draw `trees["fan-out cap"]` instead: expect fewer children under low-probability nodes.
