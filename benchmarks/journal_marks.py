"""What the journal's writes cost a row, in one process against a temporary journal.

Each commit carries the in-flight marks of one window of rows and the final records of the
window before it, as `send` at zero latency does. Three ways of writing them, taking turns:

- `row-marks`: an 18-column upsert a row to mark it in flight, an UPDATE a row to settle it (the
  journal of schema 3);
- `interval-marks`: one small row a commit listing the lines it marked (with their attempts and
  fingerprints, and the lines it settled) as `array` blobs, and one INSERT OR REPLACE a row at
  settle;
- `interval-insert`: the same, with a plain INSERT at settle (a row no earlier run wrote).

The Python that builds each statement's values is timed with it. Run:
`python -m benchmarks.journal_marks [--rows N] [--window W] [--rounds R]`.
"""

from __future__ import annotations

import argparse
import array
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from decimal import Decimal

from sms_blaster.journal.schema import RowState, connect
from sms_blaster.journal.store import _SETTLE, _UPSERT, _outcome  # the journal's own
from sms_blaster.models import Encoding, Message, Outcome, Record, SendResult

_COLUMNS = (
    "(campaign, line, state, fingerprint, to_number, client_ref, segments, encoding, attempts, "
    "message_ids, price, latency_ms, error_kind, error_code, error_message, updated_at, "
    "plain_segments, sender) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_MARKS = """
CREATE TABLE IF NOT EXISTS bench_marks (
    id INTEGER PRIMARY KEY, campaign TEXT NOT NULL, marked_at REAL NOT NULL,
    lines BLOB NOT NULL, attempts BLOB NOT NULL, fingerprints BLOB NOT NULL,
    unmarked BLOB NOT NULL, senders TEXT
)
"""
_MARK = (
    "INSERT INTO bench_marks (campaign, marked_at, lines, attempts, fingerprints, unmarked, "
    "senders) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
CAMPAIGN = "default"
Commit = Callable[[list[Message], list[Record]], None]


def messages(count: int) -> list[Message]:
    return [
        Message(line, f"4479{line:08d}", "Hello there, your code is 1234", Encoding.GSM7, 1,
                f"abcdef12-{line}", fingerprint=line * 2654435761 % 2**32)
        for line in range(1, count + 1)
    ]  # fmt: skip


def records(batch: list[Message]) -> list[Record]:
    result = SendResult(Outcome.SENT, "0", "", (f"id-{batch[0].line}",), Decimal("0.0333"))
    return [Record.sent(message, 1, result, 0.0012) for message in batch]


def row_marks(connection: sqlite3.Connection) -> Commit:
    def commit(marked: list[Message], settled: list[Record]) -> None:
        now = time.time()
        batch = [
            (CAMPAIGN, m.line, RowState.INFLIGHT, m.fingerprint, m.to, m.client_ref, m.segments,
             m.encoding, 1, "", None, None, None, None, None, now, m.plain_segments, m.sender)
            for m in marked
        ]  # fmt: skip
        updates = [(RowState.SENT, *_outcome(r), time.time(), CAMPAIGN, r.line) for r in settled]
        connection.execute("BEGIN")
        connection.executemany(_UPSERT, batch)
        connection.executemany(_SETTLE, updates)
        connection.execute("COMMIT")

    return commit


def interval_marks(connection: sqlite3.Connection, insert: str) -> Commit:
    statement = f"{insert} INTO rows {_COLUMNS}"

    def commit(marked: list[Message], settled: list[Record]) -> None:
        lines, attempts, fingerprints = array.array("q"), array.array("H"), array.array("I")
        unmarked = array.array("q")
        for m in marked:  # one append each, as `inflight` would do a row
            lines.append(m.line)
            attempts.append(1)
            fingerprints.append(m.fingerprint)
        rows = []
        for r in settled:
            unmarked.append(r.line)
            rows.append(
                (CAMPAIGN, r.line, RowState.SENT, r.fingerprint, r.to, r.client_ref, r.segments,
                 r.encoding, *_outcome(r), time.time(), r.plain_segments, r.sender)
            )  # fmt: skip
        connection.execute("BEGIN")
        connection.execute(
            _MARK, (CAMPAIGN, time.time(), lines, attempts, fingerprints, unmarked, None)
        )
        connection.executemany(statement, rows)
        connection.execute("COMMIT")

    return commit


def run_once(way: str, all_messages: list[Message], window: int) -> float:
    """µs a row for one pass of `way` over every message, against a new journal."""
    with tempfile.TemporaryDirectory() as folder:
        connection = connect(os.path.join(folder, "journal.db"))
        connection.execute(_MARKS)
        commit = {
            "row-marks": lambda: row_marks(connection),
            "interval-marks": lambda: interval_marks(connection, "INSERT OR REPLACE"),
            "interval-insert": lambda: interval_marks(connection, "INSERT"),
        }[way]()
        batches = [all_messages[i : i + window] for i in range(0, len(all_messages), window)]
        settled_batches = [records(batch) for batch in batches]
        started = time.perf_counter()
        previous: list[Record] = []
        for batch, settled in zip(batches, settled_batches, strict=True):
            commit(batch, previous)
            previous = settled
        commit([], previous)
        elapsed = time.perf_counter() - started
        connection.close()
    return elapsed / len(all_messages) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    all_messages = messages(args.rows)
    ways = ("row-marks", "interval-marks", "interval-insert")
    timings: dict[str, list[float]] = {way: [] for way in ways}
    for _ in range(args.rounds):
        for way in ways:  # taking turns: the machine's load falls on each alike
            timings[way].append(run_once(way, all_messages, args.window))
    base = statistics.median(timings["row-marks"])
    print(f"{args.rows:,} rows, {args.window} a commit, {args.rounds} rounds (µs a row)")
    for way in ways:
        found = timings[way]
        median = statistics.median(found)
        print(
            f"{way:16} {median:6.2f} ({min(found):.2f}-{max(found):.2f})"
            f"  saves {base - median:5.2f}"
        )


if __name__ == "__main__":
    main()
