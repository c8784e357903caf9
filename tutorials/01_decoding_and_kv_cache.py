# %% [markdown]
# # 1. Autoregressive decoding and the KV cache
#
# **What you will learn**
# * how plain (autoregressive) decoding works with a KV cache, using a real LLM on your CPU;
# * why decoding one token at a time is *memory-bound*: a forward over 16 tokens costs far less
#   than 16 forwards over one token;
# * that this "free width" is exactly what speculative decoding spends (docs/design.md §1).
#
# The target is SmolLM2-135M-Instruct, carried offline by a pip wheel; `load_target` dequantizes it
# once and caches a plain fp32 copy.

# %%
import time

import matplotlib.pyplot as plt
import torch

import jetspec
from jetspec import autoregressive_generate

torch.manual_seed(0)
torch.set_num_threads(1)  # notebooks run two at a time in CI; more threads would oversubscribe the cores
model, tok = jetspec.load_target("smollm2-135m-instruct")
cfg = model.config
print(f"{cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, vocab {cfg.vocab_size}")

# %% [markdown]
# ## Decoding with and without a cache
# Without a cache every step re-reads the whole sequence. With one, each step feeds one token and
# attends to the stored keys and values of all earlier tokens. Both must produce the same tokens.

# %%
msgs = [{"role": "user", "content": "What is the capital of France?"}]
ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]

def greedy_without_cache(ids, n):
    for _ in range(n):
        nxt = model(ids).logits[0, -1].argmax()
        ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    return ids

with torch.no_grad():
    t0 = time.perf_counter()
    slow = greedy_without_cache(ids, 8)
    t_slow = time.perf_counter() - t0
t0 = time.perf_counter()
fast = autoregressive_generate(model, ids, 8).sequences
t_fast = time.perf_counter() - t0
print(tok.decode(fast[0, ids.shape[1]:]))
print(f"no cache {t_slow:.2f}s, with cache {t_fast:.2f}s")
assert torch.equal(slow, fast), "the cache must not change greedy output"

# %% [markdown]
# ## The free width
# Now the measurement behind speculative decoding: the time of one target forward that appends
# M = 1, 16, 64, 256 new tokens to a 256-token cache. On a CPU, as on a GPU, the weights must be
# read once per forward whatever M is, so small M is dominated by that fixed cost.

# %%
def forward_ms(m: int, prefix: int = 256, repeats: int = 2) -> float:
    ctx = torch.randint(0, cfg.vocab_size, (1, prefix))
    new = torch.randint(0, cfg.vocab_size, (1, m))
    best = float("inf")
    with torch.no_grad():
        cache = model(ctx, use_cache=True).cache
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(new, cache=cache, use_cache=True)
            best = min(best, time.perf_counter() - t0)
            cache.crop(-m)  # drop what this forward appended, to measure the same shape again
    return 1000 * best

widths = [1, 16, 64, 256]
times = {m: forward_ms(m) for m in widths}
for m, t in times.items():
    print(f"M = {m:4d}: {t:7.1f} ms   ({t / m:6.2f} ms per token)")

# %%
fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
ax[0].plot(widths, [times[m] for m in widths], "o-")
ax[0].set(xscale="log", xlabel="new tokens per forward (M)", ylabel="ms per forward", title="forward time")
ax[1].plot(widths, [times[m] / m for m in widths], "o-", color="C1")
ax[1].set(xscale="log", yscale="log", xlabel="M", ylabel="ms per token", title="cost per token")
plt.tight_layout()
plt.show()

# %% [markdown]
# A forward over 16 tokens costs only a few times one token, so if a cheap drafter guesses several
# of the next tokens, the target can check all of them in one forward and keep those it agrees with.
# The ratio below is the break-even point: a speculative round that verifies 16 tokens must commit
# more than this many tokens to beat plain decoding.

# %%
ratio = times[16] / times[1]
print(f"16-token forward / 1-token forward = {ratio:.2f}  (16 single-token forwards would be 16.0)")
# No assert on timings: a busy machine can distort any single measurement (benchmarks, not tests,
# make speed claims in jetspec). What must hold regardless is that the numbers are real.
assert all(t > 0 for t in times.values())

# %% [markdown]
# ## Reading the result
# **The number** is how many one-token steps a 16-token forward costs on this CPU. **On a GPU**, the
# setting of the JetSpec paper (an 8B target on an H100), a forward is so dominated by reading the
# weights that a verify of hundreds of tree nodes costs little more than one step; that is what lets
# the paper spend budgets of 256. **On a CPU** the arithmetic per row shows much earlier, so the
# useful width is smaller. The cell below reads the ratio as the price of one drafted node, the
# *node cost* c of tutorial 2's speed model (a verify of n drafted nodes costs about 1 + c n steps).

# %%
c16 = (ratio - 1) / 15  # 16 rows = the root and 15 drafted nodes
widths_free = [m for m in widths if times[m] / times[1] < 2]
print(f"node cost from M = 16: c = {c16:.3f} plain steps per extra row")
print(f"widths that cost less than two steps here: {widths_free}")
print(f"a round verifying 15 drafted nodes pays if it commits more than {ratio:.1f} tokens "
      f"(plain decoding: 1 per step)")
assert c16 == (times[16] / times[1] - 1) / 15

# %% [markdown]
# ## Try this
# * Set `torch.set_num_threads(2)` (on an idle machine): expect every forward to get faster and the
#   ratio to change, since the arithmetic per row is split while the weight read is not.
# * Add `M = 4` and `M = 32` to `widths`: expect the cost per token to keep falling up to a width
#   where the ms-per-forward curve bends upward (the machine's *ridge point*, tutorial 12).
# * Time decoding 64 tokens with and without the cache: expect the no-cache version to slow down as
#   the sequence grows, since each step re-reads it all.
