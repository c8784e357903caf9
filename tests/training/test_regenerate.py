"""Regeneration: batched left-padded decoding equals one-by-one decoding (greedy, and sampled with a
generator per row); resume works.

Everything here runs on a tiny random Llama (float64, so argmax ties cannot flip between a padded
batch and a single row) and a tiny word-level tokenizer built offline with ``tokenizers``.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_llama, tiny_tokenizer

from jetspec import autoregressive_generate
from jetspec.core.batched import left_pad
from jetspec.core.jsonl import read_jsonl
from jetspec.core.prompts import chat_ids, prompt_of, read_prompts, write_jsonl
from jetspec.training.regenerate import (
    cut_response,
    distillation_rows,
    length_windows,
    read_done,
    read_regenerated,
    regenerate,
    row_seed,
    write_distillation,
)

EOS = 2


PROMPTS = ["w1 w2 w3", "w4 .", "w5 w6 w7 w8 w9 w10 w11", "w12", "w13 w14 w15 w16", "w17 w18 . w19"]


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama(), tiny_tokenizer()


def test_cut_response_keeps_the_eos_and_drops_what_follows():
    assert cut_response([4, 5, EOS, 0, 0], {EOS}) == ([4, 5, EOS], "eos")
    assert cut_response([4, 5, 6], {EOS}) == ([4, 5, 6], "length")


def test_batched_rows_equal_one_by_one_greedy(tiny, tmp_path):
    model, tok = tiny
    out = tmp_path / "regen.jsonl"
    stats = regenerate(model, tok, PROMPTS, out, max_new_tokens=8, batch_size=4, progress=False)
    assert stats["rows_written"] == len(PROMPTS) and stats["rows_skipped"] == 0
    rows = read_regenerated(out)
    assert [r["prompt"] for r in rows] == PROMPTS
    for row in rows:
        p_ids = chat_ids(tok, row["prompt"])
        assert row["input_ids"][: row["response_start"]] == p_ids
        resp = row["input_ids"][row["response_start"]:]
        assert 1 <= len(resp) <= 8
        assert row["finish_reason"] == ("eos" if resp[-1] == EOS else "length")
        # The padded batch must give exactly what the same target writes for this prompt alone.
        ref = autoregressive_generate(model, torch.tensor([p_ids]), max_new_tokens=8, eos_token_id=EOS)
        assert resp == ref.sequences[0, len(p_ids):].tolist()
        assert row["response"] == tok.decode(resp, skip_special_tokens=True)


def test_length_windows_batch_similar_prompts_and_keep_every_row_in_its_window(tiny):
    _, tok = tiny
    rows = [{"id": i, "prompt": p} for i, p in enumerate(PROMPTS * 3)]  # 18 rows, prompts of 1-7 words
    windows = length_windows(rows, tok, batch_size=2, window=3)
    assert [len(w) for w in windows] == [3, 3, 3] and all(len(b) == 2 for w in windows for b in w)
    for k, w in enumerate(windows):
        ids = [r["id"] for b in w for r in b]
        assert sorted(ids) == list(range(6 * k, 6 * k + 6))  # a window holds its own span, each row once
        lengths = [len(chat_ids(tok, r["prompt"])) for b in w for r in b]
        assert lengths == sorted(lengths)

    def padding(batches):  # prefill columns spent on left padding
        return sum(len(b) * max(n) - sum(n) for b in batches for n in [[len(chat_ids(tok, r["prompt"])) for r in b]])

    in_order = [rows[i: i + 2] for i in range(0, len(rows), 2)]
    assert padding([b for w in windows for b in w]) < padding(in_order)  # what the sorting is for


def test_resume_skips_done_rows_and_repairs_a_cut_line(tiny, tmp_path):
    model, tok = tiny
    out = tmp_path / "regen.jsonl"
    first = regenerate(model, tok, PROMPTS, out, max_new_tokens=5, batch_size=2, limit=3, progress=False)
    assert first["rows_written"] == 3
    with open(out, "a") as f:
        f.write('{"prompt": "w4 ., "resp')  # a job killed in the middle of a write
    second = regenerate(model, tok, PROMPTS, out, max_new_tokens=5, batch_size=2, progress=False)
    assert second["rows_skipped"] == 3 and second["rows_written"] == 3
    rows = read_regenerated(out)  # every line parses again
    assert sorted(r["prompt"] for r in rows) == sorted(PROMPTS)
    assert set(read_done(out)[0]) == set(range(len(PROMPTS)))
    third = regenerate(model, tok, PROMPTS, out, max_new_tokens=5, batch_size=2, progress=False)
    assert third["rows_written"] == 0 and len(read_regenerated(out)) == len(PROMPTS)


def test_sampling_is_seeded(tiny, tmp_path):
    model, tok = tiny
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for path in (a, b):
        regenerate(model, tok, PROMPTS[:3], path, max_new_tokens=6, batch_size=3, temperature=1.0, seed=7,
                   progress=False)
    assert [r["input_ids"] for r in read_regenerated(a)] == [r["input_ids"] for r in read_regenerated(b)]


DUPES = ["w1 w2", "w3 .", "w1 w2", "w4", "w1 w2"]  # the same prompt text three times


def test_resume_keeps_every_row_of_repeated_prompts(tiny, tmp_path):
    model, tok = tiny
    out = tmp_path / "regen.jsonl"
    first = regenerate(model, tok, DUPES, out, max_new_tokens=4, batch_size=2, limit=1, progress=False)
    assert (first["rows_written"], first["rows_skipped"]) == (1, 0)
    second = regenerate(model, tok, DUPES, out, max_new_tokens=4, batch_size=2, progress=False)
    assert (second["rows_written"], second["rows_skipped"]) == (4, 1)  # true counts
    rows = read_regenerated(out)
    assert sorted(r["id"] for r in rows) == list(range(len(DUPES)))
    assert [r["prompt"] for r in sorted(rows, key=lambda r: r["id"])] == DUPES
    third = regenerate(model, tok, DUPES, out, max_new_tokens=4, batch_size=2, progress=False)
    assert (third["rows_written"], third["rows_skipped"]) == (0, len(DUPES))


def test_resume_refuses_a_changed_prompt_list(tiny, tmp_path):
    model, tok = tiny
    out = tmp_path / "regen.jsonl"
    regenerate(model, tok, DUPES, out, max_new_tokens=3, batch_size=2, limit=2, progress=False)
    changed = ["w9"] + DUPES[1:]
    with pytest.raises(ValueError, match=r"regen.jsonl: the row with id 0 .*'w1 w2'.*'w9'"):
        regenerate(model, tok, changed, out, max_new_tokens=3, batch_size=2, progress=False)


def test_resume_of_a_file_written_without_row_ids(tiny, tmp_path):
    """Older files have no ids: their rows count once per occurrence of the prompt text."""
    model, tok = tiny
    out = tmp_path / "regen.jsonl"
    regenerate(model, tok, DUPES, out, max_new_tokens=3, batch_size=2, limit=3, progress=False)
    legacy = [{k: v for k, v in r.items() if k != "id"} for r in read_regenerated(out)]
    write_jsonl(out, legacy)
    stats = regenerate(model, tok, DUPES, out, max_new_tokens=3, batch_size=2, progress=False)
    assert (stats["rows_written"], stats["rows_skipped"]) == (2, 3)
    assert sorted(r["prompt"] for r in read_regenerated(out)) == sorted(DUPES)


def test_sampled_rows_are_the_same_after_an_interruption(tiny, tmp_path):
    """Each row's seed comes from its id: how the job was batched or cut does not change a row."""
    model, tok = tiny
    run = lambda path, **kw: regenerate(model, tok, PROMPTS, path, max_new_tokens=6, temperature=1.0,
                                        progress=False, **{"seed": 7, "batch_size": 2, **kw})
    run(tmp_path / "straight.jsonl")
    run(tmp_path / "cut.jsonl", limit=3)
    run(tmp_path / "cut.jsonl", batch_size=4)
    run(tmp_path / "other.jsonl", seed=8)

    def rows(name):  # in file order, which is prompt order here
        return [r["input_ids"] for r in read_regenerated(tmp_path / name)]

    assert rows("cut.jsonl") == rows("straight.jsonl")
    assert rows("other.jsonl") != rows("straight.jsonl")  # control: the seed does matter


def test_a_sampled_row_is_the_row_alone_with_its_own_seed(tiny, tmp_path):
    """Batched sampling gives each row its own generator: row ``id`` is what the target samples for
    that prompt alone from ``row_seed(seed, id)``; with one shared generator (control) it is not."""
    model, tok = tiny
    out = tmp_path / "regen.jsonl"
    regenerate(model, tok, PROMPTS[:4], out, max_new_tokens=6, batch_size=4, temperature=1.0, top_p=0.9, seed=7,
               progress=False)
    rows = sorted(read_regenerated(out), key=lambda r: r["id"])
    alone = []
    for row in rows:
        p_ids = row["input_ids"][: row["response_start"]]
        gen = torch.Generator().manual_seed(row_seed(7, row["id"]))
        ref = autoregressive_generate(model, torch.tensor([p_ids]), 6, temperature=1.0, top_p=0.9, eos_token_id=EOS,
                                      generator=gen)
        alone.append(ref.sequences[0].tolist())
    assert [r["input_ids"] for r in rows] == alone
    ids, mask = left_pad([r["input_ids"][: r["response_start"]] for r in rows], 0)
    shared = autoregressive_generate(model, ids, 6, temperature=1.0, top_p=0.9, eos_token_id=EOS, attention_mask=mask,
                                     pad_token_id=0, generator=torch.Generator().manual_seed(row_seed(7, 0)))
    assert [r.sequences[0].tolist() for r in shared.rows] != alone


def test_a_generator_list_needs_one_per_row(tiny):
    model, _ = tiny
    ids, mask = left_pad([[5, 6], [7]], 0)
    with pytest.raises(ValueError, match=r"generator: .*one torch.Generator per row \(2\), got 1"):
        autoregressive_generate(model, ids, 3, temperature=1.0, attention_mask=mask, pad_token_id=0,
                                generator=[torch.Generator()])


def test_prompt_formats_of_the_shared_data():
    assert prompt_of({"question": "q?", "answer": "a"}) == ("q?", "math", "a")
    assert prompt_of({"instruction": "Do x.", "input": "5", "output": "y"}) == ("Do x.\n\n5", "code", "y")
    assert prompt_of({"instruction": "Say hi.", "input": "", "output": "hi"})[0] == "Say hi."
    seed = {"instruction": "Rate it.", "instances": [{"input": "a film", "output": "7/10"}]}
    assert prompt_of(seed) == ("Rate it.\n\na film", "chat", "7/10")
    assert prompt_of({"prompt": "p", "set": "s"}) == ("p", "s", None)
    with pytest.raises(ValueError, match="prompt"):
        prompt_of({"text": "nope"})


def test_read_prompts_and_distillation(tiny, tmp_path):
    _, tok = tiny
    path = tmp_path / "mix.jsonl"
    write_jsonl(path, [{"question": "w1 w2", "answer": "w3 w4"}, {"prompt": "w5", "set": "chat"},
                       {"instruction": "w6", "input": "w7", "output": "w8 w9"}])
    rows = read_prompts(path)
    assert [r["set"] for r in rows] == ["math", "chat", "code"]
    assert len(read_prompts(path, limit=2)) == 2
    dist = list(distillation_rows(tok, rows))
    assert len(dist) == 2  # the row without a reference is skipped
    first = dist[0]
    assert first["input_ids"][: first["response_start"]] == chat_ids(tok, "w1 w2")
    assert first["input_ids"][first["response_start"]:] == [11, 12, EOS]  # w3 w4 </s> (w_i has id 8 + i)
    assert write_distillation(tok, rows, tmp_path / "d.jsonl") == 2
    assert json.loads(open(tmp_path / "d.jsonl").readline())["response"] == "w3 w4"


def test_cli_regenerate_from_a_local_folder(tiny, tmp_path):
    from jetspec.cli import main

    model, tok = tiny
    model.save_pretrained(tmp_path / "target")
    tok.save_pretrained(tmp_path / "target")
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": p} for p in PROMPTS])
    out = tmp_path / "o.jsonl"
    argv = ["regenerate", "--target", str(tmp_path / "target"), "--prompts", str(tmp_path / "p.jsonl"),
            "--out", str(out), "--max-new-tokens", "4", "--batch-size", "3", "--limit", "4"]
    assert main(argv) == 0
    assert len(read_regenerated(out)) == 4


@pytest.mark.parametrize("kw, name", [(dict(temperature=1.0, top_p=5.0), "top_p"), (dict(top_p=0.0), "top_p"),
                                      (dict(temperature=-1.0), "temperature")])
def test_regenerate_refuses_what_generate_refuses(tiny, tmp_path, kw, name):
    """The same SamplingConfig rules as generate; --top-p 5 used to be accepted."""
    model, tok = tiny
    with pytest.raises(ValueError, match=name):
        regenerate(model, tok, PROMPTS[:1], tmp_path / "o.jsonl", max_new_tokens=2, progress=False, **kw)
    assert not (tmp_path / "o.jsonl").exists()  # refused before anything is written


def test_cli_regenerate_refuses_a_bad_top_p_before_loading(tmp_path):
    from jetspec.cli import main

    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "w1"}])
    argv = ["regenerate", "--target", str(tmp_path / "no-such-target"), "--prompts", str(tmp_path / "p.jsonl"),
            "--out", str(tmp_path / "o.jsonl"), "--temperature", "0.8", "--top-p", "5"]
    with pytest.raises(SystemExit, match="top_p"):
        main(argv)


def test_an_archive_restores_the_rows_it_was_made_from(tiny, tmp_path):
    """Archive parts hold only what the target wrote; restoring them with the prompt list gives back the
    regeneration file row for row, and a run resumed on the restored file writes only what is missing."""
    from jetspec.training.regenerate import archive_rows, archived_ids, restore_rows

    model, tok = tiny
    out, arch = tmp_path / "regen.jsonl", tmp_path / "archive"
    regenerate(model, tok, PROMPTS, out, max_new_tokens=5, batch_size=2, limit=5, progress=False)
    assert [p.name for p in archive_rows(out, arch, part_rows=2)] == ["part-00000.jsonl.gz", "part-00001.jsonl.gz"]
    assert archived_ids(arch) == {0, 1, 2, 3}  # the fifth row waits for a full part
    assert archive_rows(out, arch, part_rows=2) == []
    assert [p.name for p in archive_rows(out, arch, part_rows=2, final=True)] == ["part-00002.jsonl.gz"]
    first = (arch / "part-00000.jsonl.gz").read_bytes()
    archive_rows(out, tmp_path / "again", part_rows=2)
    assert (tmp_path / "again" / "part-00000.jsonl.gz").read_bytes() == first  # same rows, same bytes
    assert all("prompt" not in row for row in read_jsonl(arch / "part-00000.jsonl.gz"))
    back = tmp_path / "restored.jsonl"
    assert restore_rows(tok, PROMPTS, arch, back) == 5
    assert read_regenerated(back) == sorted(read_regenerated(out), key=lambda r: r["id"])
    stats = regenerate(model, tok, PROMPTS, back, max_new_tokens=5, batch_size=2, progress=False)
    assert (stats["rows_written"], stats["rows_skipped"]) == (1, 5)
    with pytest.raises(ValueError, match=r"part-00000.jsonl.gz: row id 0 was written for another prompt"):
        restore_rows(tok, ["other"] + PROMPTS[1:], arch, tmp_path / "bad.jsonl")
