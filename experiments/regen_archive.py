"""Keep the target-written training rows in the repository, and rebuild them on a new machine.

Regenerating the training answers takes hours on a CPU; the archive under ``data/regen/`` keeps what
the target wrote (response token ids keyed by prompt id, no prompt text) in gzip parts that a growing
run only adds to (``jetspec.training.regenerate.archive_rows``). ``restore`` rebuilds the full rows
from the prompt file of the run (``jetspec prepare-data``), after which the same ``jetspec
regenerate`` command resumes where the archive ends.

    python experiments/regen_archive.py pack --regen runs/regen/greedy.jsonl --archive data/regen/greedy
    python experiments/regen_archive.py restore --prompts runs/data/train_prompts.jsonl \\
        --archive data/regen/greedy --out runs/regen/greedy.jsonl
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def write_summary(archive: Path) -> dict:
    """``stats.json`` (rows and response tokens per set, stop reasons) and ``SHA256SUMS`` of the parts."""
    import hashlib
    import json
    from collections import Counter

    from jetspec.core.jsonl import read_jsonl

    rows, tokens, reasons = Counter(), Counter(), Counter()
    sums = []
    for part in sorted(archive.glob("part-*.jsonl.gz")):
        sums.append(f"{hashlib.sha256(part.read_bytes()).hexdigest()}  {part.name}")
        for row in read_jsonl(part):
            rows[row["set"]] += 1
            tokens[row["set"]] += len(row["response_ids"])
            reasons[row["finish_reason"]] += 1
    summary = {"rows": sum(rows.values()), "response_tokens": sum(tokens.values()), "rows_per_set": dict(rows),
               "response_tokens_per_set": dict(tokens), "finish_reasons": dict(reasons)}
    (archive / "stats.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    (archive / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    pack = sub.add_parser("pack", help="move new rows of a regeneration file into whole archive parts")
    pack.add_argument("--regen", required=True, help="the regeneration file a run appends to")
    pack.add_argument("--archive", required=True, help="archive folder (parts part-NNNNN.jsonl.gz)")
    pack.add_argument("--part-rows", type=int, default=2000, help="rows per part (default: 2000)")
    pack.add_argument("--final", action="store_true", help="also write the last, smaller part")
    rest = sub.add_parser("restore", help="rebuild a regeneration file from an archive and its prompt file")
    rest.add_argument("--prompts", required=True, help="the prompt file the run used")
    rest.add_argument("--archive", required=True)
    rest.add_argument("--out", required=True, help="regeneration file to write (replaced)")
    rest.add_argument("--target", default="smollm2-135m-instruct", help="whose tokenizer (default: %(default)s)")
    args = ap.parse_args(argv)

    from jetspec.training.regenerate import archive_rows, restore_rows

    if args.cmd == "pack":
        if not Path(args.regen).is_file():
            sys.exit(f"regen_archive: --regen {args.regen}: no such file")
        parts = archive_rows(args.regen, args.archive, args.part_rows, args.final)
        summary = write_summary(Path(args.archive))
        print(f"wrote {len(parts)} part(s); the archive holds {summary['rows']} rows, "
              f"{summary['response_tokens']} response tokens")
        return 0
    from jetspec.core.loading import load_tokenizer
    from jetspec.core.prompts import read_prompts

    if Path(args.out).exists():
        sys.exit(f"regen_archive: --out {args.out} exists; restore writes a new file")
    n = restore_rows(load_tokenizer(args.target), read_prompts(args.prompts), args.archive, args.out)
    print(f"restored {n} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
