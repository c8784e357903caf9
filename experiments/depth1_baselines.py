"""What a draft head's depth-1 guess is up against: n-gram tables and linear probes of the target's layers.

    python experiments/depth1_baselines.py --train runs/curve/rows-4624.jsonl --refs runs/data/dev_refs.jsonl \\
        --probe-rows 300 --out docs/results/depth1_baselines.md

Depth 1 of a draft block is the token after the anchor: with the target's context up to token t
and the anchor x[t+1] known, guess x[t+2]. On the target's own greedy text that guess is right when
it is the target's next token. Two cheap baselines say how hard that is, on the held-out references
(the target's greedy answers to dev prompts, as in replay):

* **n-gram tables** counted on the training rows' responses: the most frequent follower of the
  anchor (bigram), and of (x[t], anchor) with a back-off to the bigram (trigram). No target at all.
* **linear probes**: one linear map from [RMSNorm of each chosen layer's output at t ; the anchor's
  embedding] to the head's hidden size, then the target's final norm gain and its frozen lm_head
  over the draft vocabulary (the most frequent ``--draft-vocab`` answer tokens), trained with
  cross-entropy on the first ``--probe-rows`` training rows. ``raw`` feeds the layer outputs
  unnormalised and concatenated, as a head's fuse layer reads them.

``--heads name=folder,...`` adds trained parallel heads, scored on the same positions: the top-1
of their depth-1 distribution after every committed prefix of each reference (one round per token,
through the head's context cache). The report gives top-1 accuracy of each. A head no better than
these baselines is not yet using its extra machinery (attention over the whole context, a decoder
layer).
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from jetspec import load_target
from jetspec.core.jsonl import read_jsonl
from jetspec.core.target import Teacher
from jetspec.drafters.parallel_head import ParallelHead


def ngram_accuracy(train: list[dict], refs: list[dict]) -> dict[str, float]:
    """Top-1 accuracy on the references' response tokens of the bigram and back-off trigram tables."""
    big, tri = defaultdict(Counter), defaultdict(Counter)
    for r in train:
        ids, s = r["input_ids"], int(r["response_start"])
        for i in range(max(1, s), len(ids) - 1):
            big[ids[i]][ids[i + 1]] += 1
            tri[ids[i - 1], ids[i]][ids[i + 1]] += 1
    hits, n = Counter(), 0
    for r in refs:
        ids, s = r["input_ids"], int(r["response_start"])
        for i in range(max(1, s), len(ids) - 1):
            n += 1
            b = big.get(ids[i])
            t = tri.get((ids[i - 1], ids[i])) or b
            hits["bigram"] += bool(b) and b.most_common(1)[0][0] == ids[i + 1]
            hits["trigram (back-off)"] += bool(t) and t.most_common(1)[0][0] == ids[i + 1]
    return {k: hits[k] / max(n, 1) for k in ("bigram", "trigram (back-off)")}


@torch.no_grad()
def probe_positions(teacher: Teacher, rows: list[dict], max_length: int) -> tuple[torch.Tensor, ...]:
    """Per response position t: the tapped layers' outputs at t [N, F], the anchor x[t+1] and the target x[t+2]."""
    feats, anchors, targets = [], [], []
    for r in tqdm(rows, desc="target forward", leave=False):
        ids = torch.tensor(r["input_ids"][:max_length])
        taps = teacher(ids[None]).taps[0]
        first = max(int(r["response_start"]) - 1, 0)
        feats.append(taps[first: len(ids) - 2])
        anchors.append(ids[first + 1: len(ids) - 1])
        targets.append(ids[first + 2:])
    return torch.cat(feats), torch.cat(anchors), torch.cat(targets)


def train_probe(x: torch.Tensor, y: torch.Tensor, lm: torch.Tensor, gain: torch.Tensor, epochs: int,
                lr: float, seed: int) -> torch.nn.Linear:
    """A linear map to the hidden size, read through the final norm's gain and the frozen lm_head rows ``lm``."""
    torch.manual_seed(seed)
    proj = torch.nn.Linear(x.shape[1], lm.shape[1], bias=False)
    torch.nn.init.normal_(proj.weight, std=0.02)
    opt = torch.optim.Adam(proj.parameters(), lr=lr)
    for _ in range(epochs):
        for j in torch.randperm(len(y)).split(512):
            logits = (F.rms_norm(proj(x[j]), (lm.shape[1],)) * gain) @ lm.T
            loss = F.cross_entropy(logits, y[j])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return proj


def probe_accuracy(model, train: list[dict], refs: list[dict], layer_sets: dict[str, tuple[list[int], bool]],
                   draft_vocab: int, epochs: int, lr: float, max_length: int, seed: int) -> dict[str, float]:
    """Top-1 accuracy on the references of one probe per named (layers, raw) feature set."""
    layers = sorted({i for cols, _ in layer_sets.values() for i in cols})
    teacher = Teacher(model, layers)
    xtr, atr, ytr = probe_positions(teacher, train, max_length)
    xdv, adv, ydv = probe_positions(teacher, refs, max_length)
    emb = model.get_input_embeddings().weight.detach()
    lm_full = model.get_output_embeddings().weight.detach()
    gain = model.get_decoder().norm.weight.detach()
    h = emb.shape[1]
    counts = torch.bincount(ytr, minlength=lm_full.shape[0])
    vocab = counts.topk(min(draft_vocab, lm_full.shape[0])).indices.sort().values
    remap = torch.full((lm_full.shape[0],), -1)
    remap[vocab] = torch.arange(len(vocab))
    keep = remap[ytr] >= 0  # a target outside the draft vocabulary cannot be learned (as in the heads)

    def features(x, a, cols, raw):
        parts = [x[:, layers.index(c) * h:(layers.index(c) + 1) * h] for c in cols]
        parts = parts if raw else [F.rms_norm(p, (h,)) for p in parts]
        return torch.cat(parts + [emb[a]], -1)

    out = {}
    for name, (cols, raw) in layer_sets.items():
        x = features(xtr, atr, cols, raw)[keep]
        proj = train_probe(x, remap[ytr][keep], lm_full[vocab], gain, epochs, lr, seed)
        with torch.no_grad():
            pred = vocab[((F.rms_norm(proj(features(xdv, adv, cols, raw)), (h,)) * gain) @ lm_full[vocab].T).argmax(-1)]
        out[name] = (pred == ydv).float().mean().item()
    return out


@torch.no_grad()
def head_accuracy(head: ParallelHead, model, refs: list[dict]) -> float:
    """Top-1 of a parallel head's depth-1 guess after every committed prefix of the references' answers."""
    teacher = Teacher(model, head.tap_layers)
    hits = n = 0
    for r in tqdm(refs, desc="head depth 1", leave=False):
        ids, s = torch.tensor(r["input_ids"]), int(r["response_start"])
        taps = teacher(ids[None]).taps[0]
        for k, i in enumerate(range(max(1, s), len(ids) - 1)):  # anchor ids[i], guess ids[i + 1]
            logits = head.draft_logits(ids[: i + 1], taps[:i], round_index=k, depth=1)
            hits += int(head.to_target_ids(logits[0].argmax()[None])[0]) == int(ids[i + 1])
            n += 1
    return hits / max(n, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", required=True, help="training rows (jetspec regenerate rows, input_ids + response_start)")
    p.add_argument("--refs", required=True, help="held-out references (jetspec references)")
    p.add_argument("--target", default="smollm2-135m-instruct")
    p.add_argument("--probe-rows", type=int, default=300, help="training rows the probes learn from")
    p.add_argument("--layers", default="1,8,14,21,27",
                   help="the head's tapped layers (the default of a 30-layer target)")
    p.add_argument("--draft-vocab", type=int, default=8192)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-length", type=int, default=320)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--heads", default="", metavar="NAME=FOLDER,...", help="trained parallel heads to score too")
    p.add_argument("--out", default=None, help="Markdown file for the table")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    train, refs = list(read_jsonl(a.train)), list(read_jsonl(a.refs))
    model, _ = load_target(a.target)
    taps = [int(x) for x in a.layers.split(",")]
    last = model.config.num_hidden_layers - 1
    sets = {"anchor embedding only": ([], False), f"+ layer {taps[-1]}": ([taps[-1]], False),
            f"+ layer {last} (the last)": ([last], False), f"+ the {len(taps)} taps": (taps, False),
            f"+ the {len(taps)} taps, raw": (taps, True)}
    acc = {**{f"{k} table": v for k, v in ngram_accuracy(train, refs).items()},
           **{f"linear probe: {k}": v for k, v in probe_accuracy(model, train[: a.probe_rows], refs, sets,
                                                                 a.draft_vocab, a.epochs, a.lr, a.max_length,
                                                                 a.seed).items()}}
    for spec in filter(None, a.heads.split(",")):
        name, folder = spec.split("=", 1)
        acc[f"head: {name}"] = head_accuracy(ParallelHead.from_pretrained(folder, target=model), model, refs)
    lines = [f"Depth-1 top-1 accuracy on {len(refs)} held-out references; tables from {len(train):,} training "
             f"rows, probes from the first {a.probe_rows:,} ({a.epochs} epochs, draft vocabulary {a.draft_vocab:,}).",
             "", "| baseline | top-1 |", "|---|---|"] + [f"| {k} | {v:.3f} |" for k, v in acc.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
