# %% [markdown]
# # 7. Sampling without changing the distribution
#
# **What you will learn** (docs/design.md §3): the sample-and-match rule that verifies a tree of
# drafted tokens when sampling; how to *prove* it exact by enumerating every random choice on a
# tiny vocabulary; and what goes wrong with a tempting shortcut: sampling once per path row.

# %%
import hashlib

import matplotlib.pyplot as plt
import torch

from jetspec import Acceptance, DraftTree, SamplingConfig, VerifyInput, process_logits
from jetspec.testing.exact import enumerate_law
from jetspec.verifiers import SamplingVerifier

VOCAB, CFG = 4, SamplingConfig(temperature=1.0)

def target_logits(ctx):
    """A made-up target: a fixed random next-token distribution for every context."""
    seed = int.from_bytes(hashlib.sha256(repr(ctx).encode()).digest()[:8], "little")
    return torch.randn(VOCAB, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2

# %% [markdown]
# ## A fixed draft tree
# Root = the anchor (token 0). Two branches: [1, 2] and [3].

# %%
tree = DraftTree(tokens=torch.tensor([0, 1, 3, 2]), parents=torch.tensor([-1, 0, 0, 1]),
                 depth=torch.tensor([0, 1, 1, 2]), score=torch.zeros(4))
ctx = (2, 0)
logits = torch.stack([target_logits(ctx + tuple(tree.tokens[tree.path_to(i)].tolist())) for i in range(4)])
p_root = process_logits(logits[0], CFG)
print("target's law of the next token:", [round(x, 4) for x in p_root.tolist()])

# %% [markdown]
# ## Sample-and-match
# Walk from the root: at node i draw one token y from the target's p_i. If a child carries y, move
# there; otherwise stop and emit y. The draw at node i *is* the target's sample for that position,
# so every emitted token is an exact sample. `enumerate_law` runs the verifier down every branch of
# its random choices and sums the probabilities: an exact law, not an estimate.

# %%
def first_token_law(verify):
    return enumerate_law(lambda rng: verify(VerifyInput(tree=tree, logits=logits, sampling=CFG, rng=rng)).tokens[0])

law = first_token_law(SamplingVerifier().verify)
gap = max(abs(law.get(t, 0.0) - float(p_root[t])) for t in range(VOCAB))
print("law of the first emitted token:", {t: round(v, 4) for t, v in sorted(law.items())})
print(f"largest difference from the target: {gap:.1e}")
assert gap < 1e-12

# %% [markdown]
# ## The shortcut that breaks it: one draw per path row
# Flatten the tree into its root-to-leaf paths and run sample-and-match on each path separately,
# keeping the longest acceptance. The shared root now gets *two* chances to match a drafted token,
# so drafted tokens are over-sampled.

# %%
def per_path_row(inp):
    p = process_logits(inp.logits, inp.sampling)
    kids = inp.tree.children()
    best = None
    for leaf in [i for i in range(inp.tree.num_nodes) if not kids[i]]:
        node, accepted = 0, []
        for nxt in inp.tree.path_to(leaf):
            y = inp.rng.categorical(p[node])
            if y != int(inp.tree.tokens[nxt]):
                break
            accepted.append(nxt)
            node = nxt
        else:
            y = inp.rng.categorical(p[node])
        if best is None or len(accepted) > len(best[0]):
            best = (accepted, y)
    return Acceptance(best[0], best[1], inp.tree.tokens[best[0]].tolist())

wrong = first_token_law(per_path_row)
wrong_gap = max(abs(wrong.get(t, 0.0) - float(p_root[t])) for t in range(VOCAB))
print("per-path-row law:", {t: round(v, 4) for t, v in sorted(wrong.items())})
print(f"largest difference from the target: {wrong_gap:.3f}")
assert wrong_gap > 1e-3

# %%
xs = torch.arange(VOCAB)
plt.bar(xs - 0.25, p_root, 0.25, label="target p")
plt.bar(xs, [law.get(t, 0) for t in range(VOCAB)], 0.25, label="sample-and-match")
plt.bar(xs + 0.25, [wrong.get(t, 0) for t in range(VOCAB)], 0.25, label="per path row (wrong)")
plt.xlabel("first emitted token")
plt.ylabel("probability")
plt.legend()
plt.show()

# %% [markdown]
# ### Reading the result
# These are exact laws, not estimates, so the numbers mean what they say: sample-and-match differs
# from the target by float64 rounding, the shortcut by a real amount. *Which* tokens the shortcut
# gets wrong is the lesson: the root is drawn once per path, so a drafted token is emitted first
# whenever any path's draw matches it, and when several match, the longest acceptance wins. So the
# shortcut can only over-sample drafted tokens, above all the one that starts the deepest branch.

# %%
drafted = {int(tree.tokens[i]) for i in range(1, tree.num_nodes) if int(tree.depth[i]) == 1}
over = {t for t in range(VOCAB) if wrong.get(t, 0.0) > float(p_root[t]) + 1e-12}
under = {t for t in range(VOCAB) if wrong.get(t, 0.0) < float(p_root[t]) - 1e-12}
print(f"drafted at depth 1: {sorted(drafted)}; over-sampled by the shortcut: {sorted(over)}; "
      f"under-sampled: {sorted(under)}")
deepest = max(range(tree.num_nodes), key=lambda i: int(tree.depth[i]))
first_of_deepest = int(tree.tokens[tree.path_to(deepest)[0]])
most = max(over, key=lambda t: wrong.get(t, 0.0) - float(p_root[t]))
print(f"most over-sampled: token {most}; first token of the deepest branch: {first_of_deepest}")
assert over and over <= drafted and not (under & over) and most == first_of_deepest

# %% [markdown]
# ## Drafts sampled from q: rejection sampling
# A draft LM that *samples* its draft from q is verified by accepting x with probability
# min(1, p(x)/q(x)) and otherwise sampling from normalize(max(p - q, 0)). Here q is another random
# table; the enumeration covers the draft's random choice too.

# %%
def draft_q(c):
    return torch.softmax(target_logits(("q",) + c), -1)

def one_round(rng):
    q0 = draft_q(ctx)
    x = rng.categorical(q0)  # the drafted token
    t = DraftTree(tokens=torch.tensor([0, x]), parents=torch.tensor([-1, 0]), depth=torch.tensor([0, 1]),
                  score=torch.zeros(2), q=torch.stack([q0, draft_q(ctx + (x,))]))
    lg = torch.stack([target_logits(ctx), target_logits(ctx + (x,))])
    return SamplingVerifier().verify(VerifyInput(tree=t, logits=lg, sampling=CFG, rng=rng)).tokens[0]

law_q = enumerate_law(one_round)
gap_q = max(abs(law_q.get(t, 0.0) - float(p_root[t])) for t in range(VOCAB))
print(f"rejection sampling: largest difference {gap_q:.1e}")
assert gap_q < 1e-12

# %% [markdown]
# ## Reading the result, and the real model
# **What the paper reports**: its sampling results (temperature 1) keep most of the greedy
# speedup (MATH-500 7.83x, tau 9.01, against 9.64x and 10.76 greedy). **Here** nothing is timed:
# the tutorial proves the *law* exact, which no amount of sampling could show. **What still holds
# on a real model** is this same verifier: tutorial 9 runs the shipped JetSpec head on SmolLM2 with
# `SamplingVerifier()` at temperature 0.7 (its tau is usually lower than greedy's, because a sampled
# token matches a drafted one less often than the argmax does), and the test suite compares
# speculative and plain sampling on a tiny model statistically (`tests/core/test_sampling_e2e.py`).
#
# On SmolLM2 yourself:
#
# ```python
# dec = SpeculativeDecoder(model, head, BestFirstBuilder(16, 4, 7), verifier=SamplingVerifier())
# res = dec.generate(ids, max_new_tokens=64, temperature=0.7, top_p=0.95,
#                    generator=torch.Generator().manual_seed(0))
# ```
#
# ## Try this
# * Set `CFG = SamplingConfig(temperature=0.5)`: both correct laws still match to ~1e-16; expect the
#   shortcut's error to change size, because a sharper p changes how often the shared root matches.
# * Add a third child under the root (tokens `[0, 1, 3, 2, 0]`, parents `[-1, 0, 0, 1, 0]`, depths
#   `[0, 1, 1, 2, 1]`): the shortcut gives the root three chances; expect a larger error.
# * Make `draft_q` return the target's own law, `torch.softmax(target_logits(c), -1)` (q = p): expect
#   every draft to be accepted (min(1, p/q) = 1) and the law still exact.
