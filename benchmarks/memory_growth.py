"""What grows with rows in `sms-blaster send`: tracemalloc snapshots at two row counts of one run.

Usage: python -m benchmarks.memory_growth URL ROWS_CSV FOLDER --at N --at M [send options]

Runs `sms-blaster send` in this process (journal in FOLDER, records to FOLDER/records.jsonl)
with tracemalloc on, and takes a snapshot when about N and about M records are written (counted
from the records file's size, one line a row). Prints the allocation sites whose live memory
grew most between the two, in bytes per row, and the size of the structures kept per row (the
duplicate set, the journal's resume arrays) at each snapshot. tracemalloc makes the run about
three times slower; its figures are Python allocations only (not SQLite's page cache, not the
allocator's fragmentation), which the RSS of `benchmarks.memory_tree` includes.
"""

from __future__ import annotations

import argparse
import array
import gc
import os
import threading
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

from benchmarks.clients import CREDENTIALS, TEXT
from sms_blaster.numberset import NumberSet


@dataclass(frozen=True, slots=True)
class Taken:
    rows: int
    snapshot: tracemalloc.Snapshot
    structures: dict[str, int]  # name -> bytes


def structures() -> dict[str, int]:
    """Bytes of the per-row structures alive now: every NumberSet, and every array or bytearray
    of more than 64 kB (the journal's resume arrays are of these)."""
    sizes: dict[str, int] = {}
    for thing in gc.get_objects():
        if isinstance(thing, NumberSet):
            sizes["NumberSet (duplicates)"] = sizes.get("NumberSet (duplicates)", 0) + (
                thing.footprint_bytes()
            )
        elif isinstance(thing, array.array | bytearray) and len(thing) * 1 > 65536:
            name = f"{type(thing).__name__} of {len(thing):,}"
            sizes[name] = thing.__sizeof__()
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
    parser.add_argument("url")
    parser.add_argument("campaign")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--at", type=int, action="append", required=True)
    parser.add_argument("--top", type=int, default=15)
    args, options = parser.parse_known_args()
    os.environ.update(CREDENTIALS)
    records = args.folder / "records.jsonl"
    records.unlink(missing_ok=True)
    argv = [
        "send", args.campaign, "--base-url", args.url, "--from", "Bench", "--no-progress",
        "--text", TEXT, "--output", str(records), "--rate", "1000000",
        "--journal", str(args.folder / f"growth-{time.time_ns()}.journal"), *options,
    ]  # fmt: skip
    from sms_blaster.cli import main as cli_main

    tracemalloc.start(1)
    taken: list[Taken] = []
    done = threading.Event()
    watcher = threading.Thread(target=watch, args=(records, args.at, taken, done), daemon=True)
    watcher.start()
    try:
        cli_main(argv)
    except SystemExit as exc:  # the CLI exits with its documented code; 1: some rows failed
        if exc.code not in (0, 1, None):
            raise
    finally:
        done.set()
        watcher.join()
    report(taken, args.top)


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
