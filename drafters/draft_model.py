"""Classic speculative decoding with a separate small draft LM (docs/design.md §4.7 and §3.4).

Greedy decoding: the draft LM follows its own greedy path for D steps and offers its top-W
tokens at every depth (a per-depth table, so any tree builder can branch on it).

Sampling: the draft LM *samples* a chain of D tokens from q, its distribution processed exactly
as the target's is (temperature, top-k, top-p); the q rows travel with the draft so the verifier
can accept with min(1, p/q). Using any other q here would silently break losslessness.
"""

from __future__ import annotations

import torch

from jetspec.core.interfaces import Drafter, register_drafter
from jetspec.core.sampling import TorchRng, process_logits
from jetspec.core.types import DraftInput, DraftOutput
from jetspec.drafters.lm_runner import CachedLM, RowLMs


@register_drafter("draft_model")
class DraftModelDrafter(Drafter):
    """A separate Hugging Face causal LM sharing the target's tokenizer."""

    def __init__(self, draft_model: torch.nn.Module) -> None:
        self.lms = RowLMs(draft_model)  # one KV cache per batch row
        self.vocab_size = self.lms.vocab_size

    def reset_cache(self) -> None:
        """Forget every batch row's KV cache."""
        self.lms.reset()

    def draft(self, inp: DraftInput) -> DraftOutput:
        lm = self.lms[inp.row]
        logits = lm.sync(inp.tokens.tolist())
        if inp.sampling.greedy:
            return self._greedy_table(lm, logits, inp)
        return self._sampled_chain(lm, logits, inp)

    def _greedy_table(self, lm: CachedLM, logits, inp: DraftInput) -> DraftOutput:
        toks, lps = [], []
        for d in range(inp.depth):
            top = torch.topk(torch.log_softmax(logits.double(), -1), min(inp.width, logits.shape[-1]))
            toks.append(top.indices)
            lps.append(top.values.float())
            if d + 1 < inp.depth:
                logits = lm.step(int(top.indices[0]))
        return DraftOutput(depth_tokens=torch.stack(toks), depth_logprobs=torch.stack(lps), forwards=inp.depth)

    def _sampled_chain(self, lm: CachedLM, logits, inp: DraftInput) -> DraftOutput:
        rng = inp.rng if inp.rng is not None else TorchRng()
        q_rows, toks, lps = [], [], []
        for d in range(inp.depth):
            q = process_logits(logits, inp.sampling)  # [V] float64: the law the token is drawn from
            tok = rng.categorical(q)
            q_rows.append(q)
            toks.append(tok)
            lps.append(float(torch.log(q[tok])))
            if d + 1 < inp.depth:
                logits = lm.step(tok)
        # The last drafted node has no children, so its q row is never read; zeros make that plain.
        q_rows.append(torch.zeros_like(q_rows[0]))
        d = len(toks)
        return DraftOutput(node_tokens=torch.tensor(toks, dtype=torch.long),
                           node_parents=torch.arange(-1, d - 1, dtype=torch.long),
                           node_logprobs=torch.tensor(lps, dtype=torch.float32),
                           node_q=torch.stack(q_rows), forwards=inp.depth)
