"""experiments/depth1_baselines.py: the n-gram tables count what they should, and the probes learn.

Hand-built rows give the tables' accuracies exactly; a tiny random target shows that a probe which
sees the layer outputs beats one that sees only the anchor when the next token is a function of
the context (the negative control is the anchor-only probe on the same data).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from conftest import tiny_llama

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))
from depth1_baselines import head_accuracy, ngram_accuracy, probe_accuracy  # noqa: E402

from jetspec.drafters import JetSpecHead  # noqa: E402


def test_ngram_tables_count_followers_and_back_off():
    # responses (after response_start 1): 5 6 7 | 5 6 8 | 9 6 8 -> bigram 6 -> 8 (2 of 3), trigram (5, 6) -> 7/8 tie
    train = [{"input_ids": [0, 5, 6, 7], "response_start": 1}, {"input_ids": [0, 5, 6, 8], "response_start": 1},
             {"input_ids": [0, 9, 6, 8], "response_start": 1}]
    refs = [{"input_ids": [0, 9, 6, 8, 3], "response_start": 1}]  # anchors 9, 6, 8 -> next 6, 8, 3
    acc = ngram_accuracy(train, refs)
    # bigram: 9 -> 6 right, 6 -> 8 right, 8 -> (never seen) wrong: 2 / 3
    assert acc["bigram"] == 2 / 3
    # trigram: (0, 9) unseen -> back-off 9 -> 6 right; (9, 6) -> 8 right; (6, 8) unseen, 8 unseen: 2 / 3
    assert acc["trigram (back-off)"] == 2 / 3


def test_a_probe_that_reads_the_layers_beats_the_anchor_alone():
    model = tiny_llama(seed=0, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    # The token after the anchor repeats the token two before it: only the context can tell it.
    rows = []
    for _ in range(60):
        ids = torch.randint(3, 40, (4,), generator=gen).tolist()
        for _ in range(10):
            ids.append(ids[-2])
        rows.append({"input_ids": ids, "response_start": 2})
    acc = probe_accuracy(model, rows[:50], rows[50:], {"anchor": ([], False), "layers": ([0, 1], False)},
                         draft_vocab=64, epochs=30, lr=1e-2, max_length=32, seed=0)
    assert acc["layers"] > acc["anchor"] + 0.2


def test_a_heads_depth_1_accuracy_is_its_argmax_after_every_prefix():
    from jetspec.core.target import Teacher

    model = tiny_llama(seed=0, dtype=torch.float32)
    torch.manual_seed(0)
    head = JetSpecHead(model, block_size=3)
    teacher = Teacher(model, head.tap_layers)
    ids = list(range(3, 8))  # response_start 4: the first anchor is ids[4]
    for step in range(6):  # a reference whose next token is the head's own guess 3 times, then not
        taps = teacher(torch.tensor(ids)[None]).taps[0]
        head.reset_cache()
        guess = int(head.to_target_ids(head.draft_logits(torch.tensor(ids), taps[:-1], depth=1)[0].argmax()[None])[0])
        ids.append(guess if step < 3 else (guess + 1) % 64)
    # cached rounds (one per token) must guess what a fresh cache guessed for each prefix
    assert head_accuracy(head, model, [{"input_ids": ids, "response_start": 4}]) == 3 / 6
