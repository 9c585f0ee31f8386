"""What grows with rows in `sms-blaster send`: tracemalloc snapshots at two row counts of one run.

Usage: python -m benchmarks.memory_growth --rows N --at A --at B [send options]

Starts zero-latency nginx, writes a campaign of N rows, and runs `sms-blaster send` in this
process (journal on, records to a file, no pacing) with tracemalloc on, taking a snapshot when
about A and about B records are written (counted from the records file's size over its first
line's: a few per cent high, as line numbers grow longer). Prints the allocation sites whose live
memory grew most between the two, in bytes a row, and the size of the structures kept per row
(the duplicate set, any large array or bytearray, such as the journal's resume arrays) at each
snapshot. tracemalloc makes the run several times slower; its figures are Python allocations
only (not SQLite's page cache, not the allocator's fragmentation), which the RSS of
`benchmarks.memory_tree` includes.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import threading
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

from benchmarks.clients import CREDENTIALS, TEXT, write_campaign
from benchmarks.servers import nginx
from sms_blaster.journal.store import Journal
from sms_blaster.numberset import NumberSet

# The journal's structures indexed by line: the resume arrays, and the sets of rows in play.
JOURNAL_PER_LINE = (
    "_prior_states", "_prior_fingerprints", "_taken", "_marked", "_retryable_failures",
    "_interrupted",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Taken:
    rows: int
    snapshot: tracemalloc.Snapshot
    structures: dict[str, int]  # name -> bytes


def structures() -> dict[str, int]:
    """Bytes of the per-row structures alive now: every NumberSet, and each journal's arrays
    and sets indexed by line (found through their owners: gc does not track arrays)."""
    sizes: dict[str, int] = {}
    for thing in gc.get_objects():
        if isinstance(thing, NumberSet):
            sizes["NumberSet (duplicates)"] = thing.footprint_bytes()
        elif isinstance(thing, Journal):
            for name in JOURNAL_PER_LINE:
                part = getattr(thing, name, None)
                if part is not None:
                    sizes[f"Journal.{name}"] = sys.getsizeof(part)
    return sizes


def watch(records: Path, at: list[int], taken: list[Taken], done: threading.Event) -> None:
    """Snapshot when the records file holds about each of `at` lines (by its size over its
    first line's)."""
    line_bytes = 0
    pending = sorted(at)
    while pending and not done.is_set():
        time.sleep(0.2)
        if not records.exists():
            continue
        size = records.stat().st_size
        if not line_bytes:
            with records.open("rb") as head:
                first = head.readline()
            if not first.endswith(b"\n"):
                continue
            line_bytes = len(first)
        if size // line_bytes >= pending[0]:
            rows = size // line_bytes
            gc.collect()
            taken.append(Taken(rows, tracemalloc.take_snapshot(), structures()))
            pending.pop(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=250_000)
    parser.add_argument("--at", type=int, action="append", required=True)
    parser.add_argument("--top", type=int, default=15)
    args, options = parser.parse_known_args()
    os.environ.update(CREDENTIALS)
    with tempfile.TemporaryDirectory(prefix="bench-growth-") as name, nginx() as server:
        folder = Path(name)
        records = folder / "records.jsonl"
        argv = [
            "send", str(write_campaign(folder / "rows.csv", args.rows)),
            "--base-url", server.url, "--from", "Bench", "--no-progress", "--text", TEXT,
            "--output", str(records), "--rate", "1000000",
            "--journal", str(folder / "growth.journal"), *options,
        ]  # fmt: skip
        taken = run(argv, records, args.at)
    report(taken, args.top)


def run(argv: list[str], records: Path, at: list[int]) -> list[Taken]:
    """`sms-blaster ARGV` in this process under tracemalloc, with the snapshots `watch` takes."""
    from sms_blaster.cli import main as cli_main

    tracemalloc.start(1)
    taken: list[Taken] = []
    done = threading.Event()
    watcher = threading.Thread(target=watch, args=(records, at, taken, done), daemon=True)
    watcher.start()
    try:
        cli_main(argv)
    except SystemExit as exc:  # the CLI exits with its documented code; 1: some rows failed
        if exc.code not in (0, 1, None):
            raise
    finally:
        done.set()
        watcher.join()
        tracemalloc.stop()
    return taken


def report(taken: list[Taken], top: int) -> None:
    for shot in taken:
        print(f"at about {shot.rows:,} rows:")
        for name, size in sorted(shot.structures.items()):
            print(f"  {name}: {size:,} bytes ({size / shot.rows:.2f} a row)")
    if len(taken) < 2:
        print("fewer than two snapshots: the run ended first")
        return
    first, last = taken[0], taken[-1]
    rows = last.rows - first.rows
    diff = last.snapshot.compare_to(first.snapshot, "lineno")
    grown = sum(stat.size_diff for stat in diff)
    print(
        f"Python allocations grew {grown:,} bytes from {first.rows:,} to {last.rows:,} rows: "
        f"{grown / rows:.2f} bytes a row. Largest growth by site:"
    )
    for stat in diff[:top]:
        frame = stat.traceback[0]
        print(
            f"  {stat.size_diff / rows:+8.2f} B/row  {stat.size_diff:+12,} B  "
            f"{stat.count_diff:+9,} blocks  {frame.filename}:{frame.lineno}"
        )


if __name__ == "__main__":
    main()
