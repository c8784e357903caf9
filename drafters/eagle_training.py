"""Training an EAGLE head with training-time test, on the parallel heads' recipe (docs/design.md §5.8).

The EAGLE head trains through exactly the pipeline of the parallel heads (``LearnedHead``):
the same ``TokenDataModule`` batches, the same frozen-target teacher (taps + soft labels, optional
disk cache), the same anchors, the same per-slot loss (forward KL by default) and the same
validation metrics. Only the head's forward differs, and it is written to look like a parallel
head's packed blocks: ``unrolled_hidden`` returns [B, A, S, H] where slot k (1..S-1) is the head's
prediction of depth k after anchor a (the token x_{a+k}), so slot k is supervised with the
teacher's distribution at position a+k-1, exactly as for a parallel head.

Training-time test (EAGLE-3): at inference, depth-1 rows read the target's features but deeper
rows read the head's *own* outputs. Training only on target features would never show the head
its own outputs, so the forward is unrolled ``ttt_steps`` = S-1 times (7 by default, as EAGLE-3):

    step 0     every row j of the sequence at once: feature fc(taps_j), embedding of x_{j+1},
               causal attention. Row a-1 (the anchor's *root*) predicts depth 1.
    step k     (k = 1..S-2) one row per anchor: the head's own output of step k-1 for that anchor,
               the embedding of the ground-truth token x_{a+k}, position a+k-1. It attends to
               the step-0 rows j < a and to this anchor's own rows of steps 1..k, never to another
               anchor's: exactly the rows a depth-k tree node sees when drafting (context, its
               ancestors, itself). It predicts depth k+1.

Gradients flow through the whole unroll. Anchors are sampled by the recipe
(``jetspec.drafters.learned_head``); an EAGLE anchor needs a context row before it, so
``EagleHead.min_anchor`` is 1 and the supervised span starts no earlier than position 2.

Shapes use the glossary of ``jetspec`` (docs/design.md §8).
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from jetspec.core.masks import additive_mask


def causal_mask(rows: int, prefix: int, dtype: torch.dtype, device=None) -> Float[Tensor, "1 1 N T"]:
    """Additive mask of ``rows`` new rows after ``prefix`` cached ones: prefix visible, causal after."""
    ok = torch.ones(rows, prefix + rows, dtype=torch.bool, device=device)
    ok[:, prefix:] = torch.ones(rows, rows, dtype=torch.bool, device=device).tril()
    return additive_mask(ok, dtype)[None, None]


def ttt_mask(anchors: Int[Tensor, "B A"], num_context: int, step: int,
             dtype: torch.dtype) -> Float[Tensor, "B 1 A _"]:
    """Mask [B, 1, A, T + step*A] of unrolled step ``step`` (>= 1): keys = [T step-0 rows, steps 1..step, A rows each].

    Anchor a's query sees step-0 rows j < a and, in every step block, only its own row.
    """
    b, a = anchors.shape
    dev = anchors.device
    ctx_ok = torch.arange(num_context, device=dev) < anchors[..., None]  # [B, A, T]
    own = torch.eye(a, dtype=torch.bool, device=dev).repeat(1, step)  # [A, step*A]
    ok = torch.cat([ctx_ok, own.expand(b, a, step * a)], dim=-1)  # [B, A, T + step*A]
    return additive_mask(ok, dtype)[:, None]


def unrolled_hidden(head, input_ids: Int[Tensor, "B T"], taps: Float[Tensor, "B T F"],
                    anchors: Int[Tensor, "B A"]) -> Float[Tensor, "B A S H"]:
    """Final-normed outputs of every anchor's teacher-forced chain (slot 0 is unused: zeros)."""
    net = head.net
    b, t = input_ids.shape
    dtype = net.fc.weight.dtype
    # Step 0: all rows. The last row has no next token; it is never visible to a supervised query
    # (anchors are <= length - 2), so any token will do there.
    nxt = torch.cat([input_ids[:, 1:], input_ids[:, -1:]], dim=1)  # [B, T]
    positions = torch.arange(t, device=input_ids.device).expand(b, t)
    h0, ctx_kv = net(net.fc(taps.to(dtype)), head.embed(nxt), positions,
                     causal_mask(t, 0, dtype, input_ids.device))  # [B, T, H]
    roots = (anchors - 1).clamp(min=0)  # invalid (padding) anchors are 0; their slots are unsupervised
    h = h0.gather(1, roots[..., None].expand(-1, -1, h0.shape[-1]))  # [B, A, H]
    slots = [torch.zeros_like(h), net.norm(h)]
    steps: list[list] = [[] for _ in net.layers]  # per layer, the K/V of each unrolled step
    for k in range(1, head.config.ttt_steps):
        tok = input_ids.gather(1, (anchors + k).clamp(max=t - 1))  # ground-truth x_{a+k}
        prefix = [(torch.cat([ck] + [s[0] for s in st], 2), torch.cat([cv] + [s[1] for s in st], 2))
                  for (ck, cv), st in zip(ctx_kv, steps)]
        h, kv = net(h, head.embed(tok), anchors + k - 1, ttt_mask(anchors, t, k, dtype), prefix)
        for st, layer_kv in zip(steps, kv):
            st.append(layer_kv)
        slots.append(net.norm(h))
    return torch.stack(slots, dim=2)
