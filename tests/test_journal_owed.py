"""Rows a run settled while its records output failed: the journal keeps them owed in the commit
that settles them, and the resume writes each one's final record, once."""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import BinaryIO

from sms_blaster.journal.store import Journal
from sms_blaster.models import ErrorKind, Record, RowError, Status
from sms_blaster.output import json_line
from tests.test_journal import PARAMS, _append, files_capped_at, message, record, states


def _owed(path: Path) -> set[int]:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return {line for (line,) in connection.execute("SELECT line FROM records_owed")}


def _rows(path: Path) -> dict[int, tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        found = connection.execute("SELECT line, state, message_ids, updated_at FROM rows")
        return {line: tuple(rest) for line, *rest in found}


class _Output:
    """A records output that works until `fail` (as a RecordWriter's flush: False once it
    failed); what it wrote, and what it was handed after it failed."""

    def __init__(self, out: BinaryIO | None = None) -> None:
        self.failed = False
        self.written: list[Record] = []
        self.lost: list[Record] = []
        self._out = out

    def publish(self, record: Record) -> None:
        if self.failed:
            self.lost.append(record)
            return
        self.written.append(record)
        if self._out is not None:
            self._out.write(json_line(record))

    def flush(self) -> bool:
        if self._out is not None and not self.failed:
            self._out.flush()
        return not self.failed


def _sent(line: int) -> Record:
    return dataclasses.replace(
        record(line, Status.SENT),
        attempts=2,
        message_ids=(f"0A{line:02d}", f"0B{line:02d}"),
        price=Decimal("0.066"),
        latency_ms=12.5,
    )


def _rejected(line: int) -> Record:
    error = RowError(ErrorKind.REJECTED, "6", "the provider refused it")
    return dataclasses.replace(record(line, Status.FAILED), error=error, latency_ms=3.25)


async def _first_run(path: Path, out: _Output, *, fail_after: int) -> None:
    """Rows 1-4 marked and settled one commit each; the output fails before row
    `fail_after + 1`'s record is flushed (the rows after still settle: their requests were in
    flight)."""
    first = Journal.open(str(path), PARAMS)
    first.write_records_first(out.flush, None)
    first.start()
    for line in (1, 2, 3, 4):
        first.admit(message(line))
        await first.inflight(message(line), 1)
    for line, settled in enumerate((_sent(1), _sent(2), _rejected(3), _sent(4)), start=1):
        out.failed = out.failed or line > fail_after
        first.settle(settled, out.publish)
        await first.drain()
    await first.close()


async def _resume(path: Path, out: _Output, lines: range) -> list[Record]:
    """A resume's admits of `lines`, each record settled and published through `out`."""
    resume = Journal.open(str(path), PARAMS)
    resume.write_records_first(out.flush, None)
    resume.start()
    given: list[Record] = []
    for line in lines:
        found = resume.admit(message(line))
        assert found is not None, line  # every row was settled
        given.append(found)
        resume.settle(found, out.publish)
    await resume.close()
    return given


def _outcome(found: Record) -> tuple[object, ...]:
    """What the run's record said of its row: what the resume's must say again."""
    return (
        found.line, found.status, found.attempts, found.message_ids, found.price,
        found.latency_ms, found.error,
    )  # fmt: skip


async def _dry_run_kind(path: Path, line: int) -> ErrorKind | None:
    """The kind of the record a dry run (the journal peeked at) gives row `line`."""
    peeked = Journal.peek(str(path), PARAMS)
    assert peeked is not None
    try:
        found = peeked.admit(message(line))
        assert found is not None
        return _kind(found)
    finally:
        await peeked.close()


def _kind(found: Record) -> ErrorKind | None:
    return None if found.error is None else found.error.kind


async def test_rows_settled_after_the_output_failed_get_their_whole_records_from_the_resume(
    tmp_path: Path,
) -> None:
    """Rows 2-4 were settled after the flush that failed: kept owed in the commits that settled
    them. The resume gives each the record the first run would have written (not
    `already_settled`), the journal's rows untouched; the next resume `already_settled`."""
    path = tmp_path / "j"
    first = _Output()
    await _first_run(path, first, fail_after=1)
    assert [r.line for r in first.written] == [1]
    assert [r.line for r in first.lost] == [2, 3, 4]
    assert _owed(path) == {2, 3, 4}
    rows = _rows(path)

    opened = Journal.open(str(path), PARAMS)
    assert opened.resume.owed == 3
    await opened.close()
    out = _Output()
    given = await _resume(path, out, range(1, 5))
    assert _kind(given[0]) is ErrorKind.ALREADY_SETTLED
    assert [_outcome(found) for found in given[1:]] == [_outcome(lost) for lost in first.lost]
    assert _outcome(given[1]) == (
        2, Status.SENT, 2, ("0A02", "0B02"), Decimal("0.066"), 12.5, None,
    )  # fmt: skip
    assert given[2].error == RowError(ErrorKind.REJECTED, "6", "the provider refused it")
    assert [found.line for found in out.written] == [1, 2, 3, 4]
    assert _owed(path) == set()
    assert _rows(path) == rows  # written again as they were: state, ids, when sent

    again = await _resume(path, _Output(), range(1, 5))
    assert [_kind(found) for found in again] == [ErrorKind.ALREADY_SETTLED] * 4
    assert [found.error.code for found in again if found.error] == [
        "sent", "sent", "failed", "sent",
    ]  # fmt: skip


async def test_a_resume_whose_output_fails_again_keeps_the_debt(tmp_path: Path) -> None:
    """The owed records the resume could not write stay owed; those it wrote do not."""
    path = tmp_path / "j"
    await _first_run(path, _Output(), fail_after=0)
    assert _owed(path) == {1, 2, 3, 4}

    resume = Journal.open(str(path), PARAMS)
    out = _Output()
    resume.write_records_first(out.flush, None)
    resume.start()
    for line in (1, 2, 3, 4):
        out.failed = line > 2
        found = resume.admit(message(line))
        assert found is not None
        assert _kind(found) is not ErrorKind.ALREADY_SETTLED
        resume.settle(found, out.publish)
        await resume.drain()
    await resume.close()
    assert _owed(path) == {3, 4}

    given = await _resume(path, _Output(), range(1, 5))
    assert [_kind(found) for found in given[:2]] == [ErrorKind.ALREADY_SETTLED] * 2
    assert [found.status for found in given[2:]] == [Status.FAILED, Status.SENT]
    assert _owed(path) == set()


async def test_records_out_whole_before_the_flush_failed_pay_their_debt(tmp_path: Path) -> None:
    """A flush that fails part way leaves some of its records whole in FILE, past the size kept
    at the last flush that worked: the resume's open forgets those debts (no second record),
    not those of a record cut short or not out."""
    path, out_path = tmp_path / "j", tmp_path / "out.jsonl"
    with _append(out_path) as out:
        first = Journal.open(str(path), PARAMS)
        output = _Output(out)
        first.write_records_first(output.flush, out.fileno())
        first.start()
        for line in (1, 2, 3, 4):
            first.admit(message(line))
            await first.inflight(message(line), 1)
        first.settle(_sent(1), output.publish)
        await first.drain()
        # The flush of rows 2-4 failed part way: row 2 whole, row 3 cut short, row 4 not out.
        out.write(json_line(_sent(2)) + json_line(_rejected(3))[:20])
        out.flush()
        output.failed = True
        for settled in (_sent(2), _rejected(3), _sent(4)):
            first.settle(settled, output.publish)
        await first.drain()
        await first.close()
    assert _owed(path) == {2, 3, 4}

    resume = Journal.open(str(path), PARAMS)
    try:
        assert resume.adopt_records(str(out_path)) == 0  # no row was in flight
        assert _owed(path) == {3, 4}
        assert resume.resume.owed == 2
    finally:
        await resume.close()


async def test_a_journal_without_the_owed_table_opens_and_gets_it(tmp_path: Path) -> None:
    """A journal of the previous schema (no `records_owed`) is read by a dry run as it was,
    and given the table when a run opens it."""
    path = tmp_path / "j"
    await _first_run(path, _Output(), fail_after=4)
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute("DROP TABLE records_owed")
        connection.commit()
    assert await _dry_run_kind(path, 1) is ErrorKind.ALREADY_SETTLED
    given = await _resume(path, _Output(), range(1, 5))
    assert [_kind(found) for found in given] == [ErrorKind.ALREADY_SETTLED] * 4
    assert _owed(path) == set()


async def test_a_dry_run_names_owed_rows_already_settled(tmp_path: Path) -> None:
    """A dry run's records never join the campaign's: an owed row is `already_settled` there,
    and still owed after."""
    path = tmp_path / "j"
    await _first_run(path, _Output(), fail_after=2)
    assert await _dry_run_kind(path, 3) is ErrorKind.ALREADY_SETTLED
    assert _owed(path) == {3, 4}


async def test_records_neither_the_output_nor_the_failed_commit_took_are_owed_on_resume(
    tmp_path: Path,
) -> None:
    """One full disk under both: the flush fails, then the COMMIT. The records kept in the
    reserved space say the output did not take them: the resume settles their rows from them
    and writes them (not `already_settled`, not `unknown`), once."""
    path = tmp_path / "j"
    first = Journal.open(str(path), PARAMS)
    out = _Output()
    first.write_records_first(out.flush, None)
    first.start()
    for line in (1, 2):
        first.admit(message(line))
        await first.inflight(message(line), 1)
    out.failed = True
    with files_capped_at(1024):  # the WAL's next frame cannot be written
        first.settle(_sent(1), out.publish)
        await first.drain()
    await first.close()
    assert states(path) == {1: "inflight", 2: "inflight"}

    resume = Journal.open(str(path), PARAMS)
    try:
        assert (resume.resume.owed, resume.resume.were_inflight) == (1, 1)
        assert states(path) == {1: "sent", 2: "inflight"}
        assert _owed(path) == {1}
    finally:
        await resume.close()
    given = await _resume(path, _Output(), range(1, 3))
    assert _outcome(given[0]) == _outcome(_sent(1))
    assert (given[1].status, _kind(given[1])) == (Status.UNKNOWN, ErrorKind.AMBIGUOUS)
    assert _owed(path) == set()
