# %% [markdown]
# # 2. One speculative round by hand, with a chain
#
# **What you will learn**: the five stages of a round (docs/design.md §1.2) run one by one with
# jetspec's parts: draft, build tree, verify, accept, commit; why greedy output cannot change; and
# what tau (tokens committed per target forward) measures.

# %%
import torch

import jetspec
from jetspec import DraftInput, SpeculativeDecoder, TargetModel, VerifyInput, autoregressive_generate
from jetspec.drafters import NGramDrafter
from jetspec.trees import ChainBuilder
from jetspec.verifiers import GreedyVerifier

torch.set_num_threads(1)  # notebooks run two at a time in CI; more threads would oversubscribe the cores
model, tok = jetspec.load_target("smollm2-135m-instruct")
text = "Repeat this list exactly: apples, pears, plums, cherries, grapes. Repeat it again."
msgs = [{"role": "user", "content": text}]
ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]

# %% [markdown]
# ## State before the round
# The target's cache holds every committed token but the last; the last one, the *anchor*, is the
# root of the draft tree and is fed in the verify forward.

# %%
target = TargetModel(model)
tokens = ids[0]
target.prefill(tokens)
print("cached:", target.cache_length, "tokens; anchor:", repr(tok.decode(tokens[-1:])))
assert target.cache_length == tokens.numel() - 1

# %% [markdown]
# ## 1. Draft and 2. build the tree
# A prompt-lookup (n-gram) drafter proposes what followed earlier occurrences of the last tokens.
# Let's first generate a few tokens so the answer starts repeating the list.

# %%
warm = autoregressive_generate(model, ids, 8).sequences[0]
target.prefill(warm)
drafter, builder = NGramDrafter(), ChainBuilder(depth=6)
proposal = drafter.draft(DraftInput(tokens=warm, depth=builder.depth, width=1, budget=builder.budget))
tree = builder.build(proposal, anchor=int(warm[-1]))
print("so far:", repr(tok.decode(warm[ids.shape[1]:])))
print("drafted chain:", [tok.decode([t]) for t in tree.tokens[1:].tolist()])

# %% [markdown]
# ## 3. Verify: one forward over every drafted token
# Row i of the logits is the target's next-token distribution after the path up to node i.

# %%
out = target.verify(tree)
argmax = out.logits.argmax(-1)
print("target's own choices after each node:", [tok.decode([t]) for t in argmax.tolist()])

# %% [markdown]
# ## 4. Accept
# Node i is accepted when its token equals the target's argmax after its parent, and all its
# ancestors are accepted. The argmax after the last accepted node is the *bonus* token: every
# round commits at least one token, so speculation never makes decoding produce fewer tokens.

# %%
acc = GreedyVerifier().verify(VerifyInput(tree=tree, logits=out.logits))
print("accepted drafts:", [tok.decode([t]) for t in acc.draft_tokens], "+ bonus", repr(tok.decode([acc.bonus_token])))
manual = []
for i in range(1, tree.num_nodes):
    if int(tree.tokens[i]) != int(argmax[i - 1]):
        break
    manual.append(int(tree.tokens[i]))
assert acc.draft_tokens == manual

# %% [markdown]
# ## 5. Commit
# Keep the cache rows of the root and the accepted nodes, drop the rest; the bonus becomes the
# next anchor.

# %%
target.commit([0] + acc.accepted_nodes, tree.num_nodes)
committed = torch.cat([warm, torch.tensor(acc.tokens)])
assert target.cache_length == committed.numel() - 1
print(f"this round committed {acc.num_committed} tokens for one target forward")

# %% [markdown]
# ## Why greedy output cannot change
# Each committed token is the target's argmax after exactly the committed tokens before it: the
# verify forward computes the same logits plain decoding would. So the whole generation equals
# plain greedy decoding, whatever the drafter proposes.

# %%
dec = SpeculativeDecoder(model, NGramDrafter(), ChainBuilder(depth=6))
spec = dec.generate(ids, max_new_tokens=48)
plain = autoregressive_generate(model, ids, 48)
print(tok.decode(spec.sequences[0, ids.shape[1]:]))
print(f"tau = {spec.tau:.2f} tokens per target forward over {len(spec.accepted_lengths)} rounds (plain: 1.0)")
assert torch.equal(spec.sequences, plain.sequences)
assert spec.tau > 1.0
