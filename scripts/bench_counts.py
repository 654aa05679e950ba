"""What a measured cell of ``bench_instructions.py`` left behind, read: a callgrind
file's totals by event (with ``--cache-sim`` / ``--branch-sim``, the simulated misses
and mispredictions), and the top functions of a ``--cprofile`` or ``--opcodes`` dump."""

from __future__ import annotations

import argparse
import json
import pstats
import re
import shutil
import time
from pathlib import Path

#: ``--cache-sim``'s columns: callgrind's miss events summed (I1/D1: the first level,
#: LL: the last; r and w, reads and writes)
CACHE_MISSES = {"I1 miss": ("I1mr",), "D1 miss": ("D1mr", "D1mw"),
                "LL miss": ("ILmr", "DLmr", "DLmw")}

#: ``--branch-sim``'s columns: mispredicted conditional and indirect branches (an
#: interpreter's dispatch of each bytecode is an indirect one)
BRANCH_MISSES = {"cond. mispredicts": ("Bcm",), "indirect mispredicts": ("Bim",)}


def totals(dump: Path) -> dict[str, int]:
    """A callgrind file's totals by event (``Ir``, and with ``--cache-sim`` the misses)."""
    text = dump.read_text()
    names = re.search(r"^events: (.+)$", text, re.M)
    found = re.search(r"^(?:summary|totals): ([\d ]+)$", text, re.M)
    assert names is not None and found is not None, f"no totals in {dump}"
    return dict(zip(names.group(1).split(), map(int, found.group(1).split()),
                    strict=True))


def print_profile(dump: Path, cell: str, args: argparse.Namespace) -> float:
    """Print the top functions of a cell's profile; return Python calls per request."""
    deadline = time.monotonic() + 30
    while not dump.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)  # written in full
    stats = pstats.Stats(str(dump))
    calls = sum(v[1] for v in stats.stats.values()) / args.requests  # type: ignore[attr-defined]
    print(f"\n### {cell}: {calls:,.0f} Python calls per request\n", flush=True)
    stats.sort_stats(args.sort).print_stats(args.top)
    if args.keep:
        shutil.copy(dump, Path(args.keep) / f"{cell}.prof")
    return calls


def print_opcodes(dump: Path, cell: str, args: argparse.Namespace) -> float:
    """Print the functions that executed the most bytecodes in a cell; return bytecodes
    per request."""
    deadline = time.monotonic() + 30
    while not dump.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)  # written in full
    rows = json.loads(dump.read_text())
    total = sum(n for *_, n in rows) / args.requests
    print(f"\n### {cell}: {total:,.0f} Python bytecodes per request\n", flush=True)
    print("| bytecodes/req | function |\n|---:|---|")
    for filename, line, name, n in sorted(rows, key=lambda r: -r[3])[:args.top]:
        print(f"| {n / args.requests:,.1f} | {filename}:{line}({name}) |")
    if args.keep:
        shutil.copy(dump, Path(args.keep) / f"{cell}.opcodes.json")
    return total
