"""The tool subcommands (prepare-data, references, replay-table, benchmarks) on tiny files and a tiny target.

Each command is parsed (flags, defaults and help come from its config dataclass) and run end to end
through ``jetspec.cli.main`` on a tiny random Llama saved to disk with a word-level tokenizer, so
what is checked is the plumbing: files written, rows in the right format, resumption, the Markdown
the commands render. Timings of a random model mean nothing and are not looked at.
"""

from __future__ import annotations

import json
import re
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
    from jetspec.evaluation.benchmarks_md import BenchmarksConfig

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
            "jetspec.evaluation.replay_tools, jetspec.evaluation.benchmarks_md; print('lightning' in sys.modules)")
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
    with pytest.raises(SystemExit, match="cannot use drafter 'typo=/nope'"):  # refused, not left out
        main(["replay-table", "--target", str(target_dir), "--refs", str(refs), "--drafters", "ngram,typo=/nope",
              "--budgets", "2,4", "--md", str(md), "--out", str(js)])
    assert not md.exists() and not js.exists()
    assert main(["replay-table", "--target", str(target_dir), "--refs", str(refs), "--drafters", "ngram",
                 "--budgets", "2,4", "--node-costs", "0,0.05", "--md", str(md), "--out", str(js)]) == 0
    table = json.loads(js.read_text())
    assert [(r["drafter"], r["budget"]) for r in table] == [("ngram", 2), ("ngram(c=0.05)", 2), ("ngram", 4),
                                                             ("ngram(c=0.05)", 4)]
    assert all(r["tau"] >= 1.0 and len(r["taus"]) == 4 for r in table)
    text = md.read_text()
    assert text.startswith("### Replay tau per drafter") and "| ngram(c=0.05) | 4 |" in text
    with pytest.raises(SystemExit, match="--budgets"):
        main(["replay-table", "--refs", str(refs), "--drafters", "ngram", "--budgets", "0"])


def test_benchmarks_writes_the_markdown(target_dir, tmp_path, monkeypatch):
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

    # --render-only: an included section changed; the decode sections come back byte for byte from
    # results.json with no decoding (loading a target or decoding would raise), the new section at the end
    import jetspec.core.loading
    import jetspec.evaluation.benchmarks_md

    def no_decoding(*args, **kwargs):
        raise AssertionError("--render-only decoded")

    monkeypatch.setattr(jetspec.core.loading, "load_target", no_decoding)
    monkeypatch.setattr(jetspec.evaluation.benchmarks_md, "run_benchmarks", no_decoding)
    extra.write_text("## Included section\n\nrewritten\n")
    again = tmp_path / "B2.md"
    render_argv = [str(again) if a == str(out_md) else a for a in argv] + ["--render-only"]
    assert main(render_argv) == 0
    before, after = text.split("## Included section")[0], again.read_text().split("## Included section")[0]
    assert after == before.replace(f"--write {out_md}", f"--write {again}")  # the run's command line
    assert again.read_text().rstrip().endswith("rewritten") and "--render-only" not in after

    def flag(name, value):
        return render_argv[:render_argv.index(name) + 1] + [value] + render_argv[render_argv.index(name) + 2:]

    with pytest.raises(SystemExit, match=r"written with other flags: --budgets \(the run: \[4\], asked: \[8\]\)"):
        main(flag("--budgets", "8"))  # the report would name flags the run did not use
    elsewhere = tmp_path / "elsewhere" / "t0" / "results.json"
    with pytest.raises(SystemExit, match=re.escape(f"--render-only: no {elsewhere}")):
        main(flag("--out", str(tmp_path / "elsewhere")))
    (tmp_path / "broken" / "t0").mkdir(parents=True)
    (tmp_path / "broken" / "t0" / "results.json").write_text("{not json")
    with pytest.raises(SystemExit, match=re.escape(f"{tmp_path / 'broken' / 't0' / 'results.json'} is not")):
        main(flag("--out", str(tmp_path / "broken")))
    with pytest.raises(SystemExit, match=re.escape(f"--include {tmp_path / 'nope.md'}: no such file")):
        main(flag("--include", str(tmp_path / "nope.md")))


@pytest.mark.parametrize("text, error", [
    ("", "no references"),
    ("\n\n", "no references"),
    ('"just a string"\n', ":1: a reference must be a JSON object, got str"),
    ('[1, 2]\n', ":1: a reference must be a JSON object, got list"),
    ('{"input_ids": [5, 6, 7], "response_start": 1}\n{"response_start": 1}\n', ":2: input_ids must be a list"),
    ('{"input_ids": "5 6 7", "response_start": 1}\n', ":1: input_ids must be a list"),
    ('{"input_ids": [5, 6, 7]}\n', ":1: response_start must be an integer in 1..2"),
    ('{"input_ids": [5, 6, 7], "response_start": 3}\n', ":1: response_start must be an integer in 1..2"),
    ('{"input_ids": [5, 6, 700], "response_start": 1}\n', ":1: input_ids hold ids outside"),
    ('{"input_ids": [5, 6, 7], "response_start": 1, "set": 3}\n', ":1: set must be a string"),
])
def test_replay_table_refuses_empty_or_malformed_references(target_dir, tmp_path, text, error):
    refs = tmp_path / "refs.jsonl"
    refs.write_text(text)
    with pytest.raises(SystemExit, match=re.escape(error)):
        main(["replay-table", "--target", str(target_dir), "--refs", str(refs), "--drafters", "ngram"])


def test_replay_table_refuses_a_head_for_another_target(target_dir, tmp_path):
    """The shipped heads belong to SmolLM2: on the tiny target they cannot run, and the command says so."""
    refs = tmp_path / "refs.jsonl"
    write_jsonl(refs, [{"input_ids": [5, 6, 7, 8], "response_start": 2}])
    with pytest.raises(SystemExit, match="cannot use drafter 'jetspec'"):
        main(["replay-table", "--target", str(target_dir), "--refs", str(refs), "--drafters", "ngram,jetspec"])


@pytest.mark.parametrize("command", ["regenerate", "references"])
def test_out_may_not_be_the_prompts_file(target_dir, tmp_path, command):
    """Resuming into the prompts file took its rows for finished ones: nothing written, exit 0."""
    prompts = tmp_path / "p.jsonl"
    write_jsonl(prompts, [{"prompt": _sentence(i)} for i in range(3)])
    before = prompts.read_text()
    alias = tmp_path / "sub" / ".." / "p.jsonl"  # the same file by another spelling
    (tmp_path / "sub").mkdir()
    with pytest.raises(SystemExit, match="--out .* is the --prompts file"):
        main([command, "--target", str(target_dir), "--prompts", str(prompts), "--out", str(alias),
              "--max-new-tokens", "3"])
    assert prompts.read_text() == before


def test_regenerate_names_the_line_of_a_bad_prompt_row(target_dir, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "w1 w2"}\n"w3"\n')
    with pytest.raises(SystemExit, match=re.escape(f"{prompts}:2: a prompt row must be a JSON object")):
        main(["regenerate", "--target", str(target_dir), "--prompts", str(prompts), "--out",
              str(tmp_path / "o.jsonl"), "--max-new-tokens", "3"])


@pytest.mark.parametrize("argv, error", [
    (["regenerate", "--prompts", "{prompts}", "--out", "{tmp}/o.jsonl", "--threads", "0"], "--threads must be >= 1"),
    (["replay-table", "--refs", "{prompts}", "--drafters", "ngram", "--threads", "0"], "--threads: must be >= 1"),
    (["demo", "--prompts-per-set", "0", "--out", "{tmp}/demo"], "--prompts-per-set must be >= 1"),
    (["train", "--data", "{prompts}", "--out", "{tmp}/head", "--max-steps", "0"], "--max-steps must be >= 1"),
    (["train", "--data", "{prompts}", "--out", "{tmp}/head", "--max-steps", "-1"], "--max-steps must be >= 1"),
])
def test_nonsense_counts_are_refused_by_name(target_dir, tmp_path, argv, error):
    prompts = tmp_path / "p.jsonl"
    write_jsonl(prompts, [{"prompt": _sentence(1)}])
    argv = [a.format(prompts=prompts, tmp=tmp_path) for a in argv] + ["--target", str(target_dir)]
    with pytest.raises(SystemExit, match=re.escape(error)):
        main(argv)
    assert not (tmp_path / "head").exists() and not (tmp_path / "o.jsonl").exists()


def test_benchmarks_without_dev_splits_names_its_own_flags(target_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./data source folder here
    with pytest.raises(SystemExit) as err:
        main(["benchmarks", "--target", str(target_dir), "--data", str(tmp_path / "empty"), "--out",
              str(tmp_path / "raw"), "--write", str(tmp_path / "B.md")])
    text = str(err.value)
    assert "jetspec prepare-data --data-dir" in text and "pass --data with a folder" in text
    assert "pass --data-dir" not in text  # benchmarks has no such flag


def _cli(*argv, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jetspec", *argv], capture_output=True, text=True, cwd=cwd,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})


def test_log_lines_are_shown_once_and_refusals_without_a_traceback(target_dir, tmp_path):
    refs = tmp_path / "refs.jsonl"
    write_jsonl(refs, [{"input_ids": [5, 6, 7, 8, 9, 10], "response_start": 2}])
    run = _cli("replay-table", "--target", str(target_dir), "--refs", str(refs), "--drafters", "ngram",
               "--budgets", "2")
    assert run.returncode == 0, run.stderr
    lines = [line for line in (run.stdout + run.stderr).splitlines() if "b=  2 tau" in line]
    assert len(lines) == 1, lines
    # a library refusal (ValueError) that no command catches: its message, no traceback, exit 2
    bad = ["regenerate", "--target", str(target_dir), "--prompts", str(refs.with_name("p.jsonl")), "--out",
           str(tmp_path / "o.jsonl"), "--batch-size", "0"]
    write_jsonl(refs.with_name("p.jsonl"), [{"prompt": _sentence(1)}])
    run = _cli(*bad)
    assert run.returncode == 2 and "batch_size must be >= 1" in run.stderr and "Traceback" not in run.stderr
    run = _cli("--debug", *bad)
    assert run.returncode != 0 and "Traceback" in run.stderr and "batch_size must be >= 1" in run.stderr


def test_replay_table_refuses_a_drafter_list_that_names_none():
    from jetspec.core.config import ConfigError
    from jetspec.evaluation.replay_tools import ReplayTableConfig

    with pytest.raises(ConfigError, match="drafters: names no drafter"):
        ReplayTableConfig(refs="r.jsonl", drafters=(" ", ""))
    assert ReplayTableConfig(refs="r.jsonl", drafters=("ngram", " jetspec")).drafters == ("ngram", "jetspec")
