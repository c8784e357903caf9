"""The tool subcommands (prepare-data, references, replay-table, benchmarks) on tiny files and a tiny target.

Each command is parsed (flags, defaults and help come from its config dataclass) and run end to end
through ``jetspec.cli.main`` on a tiny random Llama saved to disk with a word-level tokenizer, so
what is checked is the plumbing: files written, rows in the right format, resumption, the Markdown
the commands render. Timings of a random model mean nothing and are not looked at.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from jetspec.cli import build_parser, main
from jetspec.core.prompts import read_jsonl, write_jsonl
from jetspec.evaluation.splits import SOURCES

WORDS = [f"w{i}" for i in range(8, 56)]


def _sentence(i: int, n: int = 4) -> str:
    return " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(n))


@pytest.fixture
def sources(tmp_path):
    """Three tiny source files as prepare-data expects them, with one duplicated prompt."""
    folder = tmp_path / "shared"
    for i, file in enumerate(SOURCES.values()):
        rows = [{"prompt": _sentence(10 * i + j), "response": _sentence(j, 3)} for j in range(6)]
        write_jsonl(folder / file, rows + rows[:1])
    return folder


def test_flags_come_from_the_configs():
    parser = build_parser()
    args = parser.parse_args(["prepare-data", "--distill"])
    assert args.distill is True and args.dev_size == 40 and args.out == "runs/data"
    args = parser.parse_args(["references", "--prompts", "p.jsonl", "--out", "r.jsonl"])
    assert args.per_set == 8 and args.max_new_tokens == 128 and args.threads == 1
    args = parser.parse_args(["replay-table", "--refs", "r.jsonl", "--drafters", "ngram"])
    assert args.budgets == (8, 16, 32) and args.verify_slope == 0.035 and args.head_dir is None
    args = parser.parse_args(["benchmarks", "--quick", "--include", "a.md", "--include", "b.md"])
    assert args.quick is True and args.include == ["a.md", "b.md"] and args.temperatures == (0.0, 1.0)
    assert args.drafters == ("ngram", "jetspec", "dflash", "eagle") and args.budgets == (8, 16, 32, 64)
    from jetspec.evaluation.bench_report import BenchmarksConfig

    # command() writes a comma list back as one flag and the repeatable --include once per file
    cfg = BenchmarksConfig(temperatures=(0.0, 0.5), budgets=(16,), include=("a.md", "b.md"))
    assert cfg.command() == "jetspec benchmarks --temperatures 0,0.5 --budgets 16 --include a.md --include b.md"
    choices = parser._subparsers._group_actions[0].choices
    assert "Held-out prompts per set" in choices["prepare-data"].format_help()
    assert "repeatable" in choices["benchmarks"].format_help()
    with pytest.raises(SystemExit):
        parser.parse_args(["references", "--prompts", "p.jsonl"])  # --out is required


def test_tool_commands_import_no_lightning():
    code = ("import sys; import jetspec.commands.prepare_data, jetspec.commands.references, "
            "jetspec.commands.replay_table, jetspec.commands.benchmarks, jetspec.evaluation.splits, "
            "jetspec.evaluation.replay_tools, jetspec.evaluation.bench_report; print('lightning' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_prepare_data_splits_without_overlap(sources, tmp_path, capsys):
    out = tmp_path / "data"
    assert main(["prepare-data", "--data-dir", str(sources), "--out", str(out), "--dev-size", "2"]) == 0
    dev = list(read_jsonl(out / "dev.jsonl"))
    train = list(read_jsonl(out / "train_prompts.jsonl"))
    assert len(dev) == 6 and len(train) == 3 * 4  # 6 unique prompts per set, 2 held out
    assert not {r["prompt"] for r in dev} & {r["prompt"] for r in train}
    assert json.loads((out / "split.json").read_text())["counts"]["dev"] == {"math": 2, "code": 2, "chat": 2}
    again = tmp_path / "again"
    main(["prepare-data", "--data-dir", str(sources), "--out", str(again), "--dev-size", "2"])
    assert (again / "dev.jsonl").read_text() == (out / "dev.jsonl").read_text()  # a fixed seed, one split
    with pytest.raises(SystemExit, match="leaves no training rows"):
        main(["prepare-data", "--data-dir", str(sources), "--out", str(out), "--dev-size", "6"])
    with pytest.raises(SystemExit, match="missing"):
        main(["prepare-data", "--data-dir", str(tmp_path / "nowhere"), "--out", str(out)])


def test_references_then_replay_table(target_dir, tmp_path):
    prompts = tmp_path / "dev.jsonl"
    write_jsonl(prompts, [{"prompt": _sentence(i), "set": s} for s in ("a", "b") for i in range(3)])
    refs = tmp_path / "refs.jsonl"
    base = ["references", "--target", str(target_dir), "--prompts", str(prompts), "--out", str(refs),
            "--max-new-tokens", "6"]
    assert main(base + ["--per-set", "1"]) == 0
    rows = list(read_jsonl(refs))
    assert [r["set"] for r in rows] == ["a", "b"] and all(len(r["input_ids"]) > r["response_start"] for r in rows)
    assert main(base + ["--per-set", "2"]) == 0  # resumes: the first two are kept, two more are added
    again = list(read_jsonl(refs))
    assert again[:2] == rows and sorted(r["set"] for r in again) == ["a", "a", "b", "b"]

    md, js = tmp_path / "table.md", tmp_path / "table.json"
    assert main(["replay-table", "--target", str(target_dir), "--refs", str(refs), "--drafters", "ngram,typo=/nope",
                 "--budgets", "2,4", "--node-costs", "0,0.05", "--md", str(md), "--out", str(js)]) == 0
    table = json.loads(js.read_text())
    assert [(r["drafter"], r["budget"]) for r in table] == [("ngram", 2), ("ngram(c=0.05)", 2), ("ngram", 4),
                                                             ("ngram(c=0.05)", 4)]
    assert all(r["tau"] >= 1.0 and len(r["taus"]) == 4 for r in table)
    text = md.read_text()
    assert text.startswith("### Replay tau per drafter") and "| ngram(c=0.05) | 4 |" in text
    with pytest.raises(SystemExit, match="--budgets"):
        main(["replay-table", "--refs", str(refs), "--drafters", "ngram", "--budgets", "0"])


def test_benchmarks_writes_the_markdown(target_dir, tmp_path):
    data = tmp_path / "data"
    for i, s in enumerate(("math", "code", "chat")):
        write_jsonl(data / f"dev_{s}.jsonl", [{"prompt": _sentence(10 * i + j)} for j in range(2)])
    extra = tmp_path / "extra.md"
    extra.write_text("## Included section\n\nfrom another command\n")
    out_md = tmp_path / "B.md"
    argv = ["benchmarks", "--target", str(target_dir), "--data", str(data), "--out", str(tmp_path / "raw"),
            "--write", str(out_md), "--temperatures", "0", "--drafters", "ngram", "--budgets", "4",
            "--limit", "1", "--max-new-tokens", "4", "--threads", "1", "--include", str(extra)]
    assert main(argv) == 0
    text = out_md.read_text()
    assert text.startswith("# jetspec benchmarks\n") and "## Greedy (temperature 0)" in text
    assert "Sampling" not in text and "REDUCED" not in text
    assert text.rstrip().endswith("from another command")
    command = next(line for line in text.splitlines() if line.startswith("- Command:"))
    assert command.startswith("- Command: `jetspec benchmarks ") and f"--include {extra}" in command
    assert "--temperatures 0 " in command and "--quick" not in command
    per_set = text.split("Per prompt set:")[1]
    assert "| ngram | 4 |" in per_set and "math tau" in per_set
    assert (tmp_path / "raw" / "t0" / "results.json").is_file()
