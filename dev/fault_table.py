#!/usr/bin/env python3
"""Copy the fault table of the last integration run into README.md, so the README shows what was measured
rather than a hand-copied table.

    dev/fault_table.py [TABLE [README]]   (defaults: bench/results/faults.txt, README.md)

tests/integration/conftest.py writes TABLE at the end of every run that ran a fault test; this replaces what
stands between the README's two markers (`<!-- fault-table:start -->`, `<!-- fault-table:end -->`) with the
table in a code block, and leaves everything else as it was.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- fault-table:start -->", "<!-- fault-table:end -->"


def replace_table(text: str, table: str) -> str:
    """`text` with the part between START and END (each exactly once, in that order) replaced by `table` in a
    fenced code block; the markers stay, so the script can run again."""
    if text.count(START) != 1 or text.count(END) != 1:
        raise ValueError(f"expected {START} and {END} once each")
    head, rest = text.split(START)
    if END not in rest:
        raise ValueError(f"{END} comes before {START}")
    _, tail = rest.split(END)
    body = table.strip("\n")
    if not body:
        raise ValueError("the fault table is empty")
    return f"{head}{START}\n```\n{body}\n```\n{END}{tail}"


def main(argv: list[str]) -> int:
    table = Path(argv[0]) if argv else ROOT / "bench" / "results" / "faults.txt"
    readme = Path(argv[1]) if len(argv) > 1 else ROOT / "README.md"
    if not table.exists():
        print(f"{table} does not exist: run the fault tests first (make test)", file=sys.stderr)
        return 1
    try:
        new = replace_table(readme.read_text(), table.read_text())
    except ValueError as exc:
        print(f"{readme}: {exc}", file=sys.stderr)
        return 1
    readme.write_text(new)
    print(f"{readme}: fault table replaced from {table}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
