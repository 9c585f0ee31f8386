"""The journal: durable in-flight marks, resume decisions, campaign checks and the lock."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import resource
import shutil
import sqlite3
import stat
import threading
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from sms_blaster.campaign_identity import CampaignParams
from sms_blaster.errors import JournalError
from sms_blaster.journal import schema, unsettled
from sms_blaster.journal.store import InputChanged, Journal, ResumeState, _Checkpointer
from sms_blaster.models import Encoding, ErrorKind, InputRow, Message, Record, RowError, Status
from sms_blaster.output import json_line

PARAMS = CampaignParams(
    name="default",
    campaign_id="c0ffee000000",
    input="/data/c.csv",
    text="Hi {name}",
    sender="Shop",
    provider="vonage",
    to_column="to",
    default_region="",
)


def row(line: int, to: str = "+447911100001", name: str = "Ana") -> InputRow:
    return InputRow(line, {"to": to, "name": name})


def message(line: int, name: str = "Ana") -> Message:
    """The message of `row(line, name=name)`, carrying its fingerprint as a run's does."""
    return Message(line, "447911100001", f"Hi {name}", Encoding.GSM7, 1, f"c0ffee000000-{line}",
                   row(line, name=name).fingerprint())  # fmt: skip


def record(line: int, status: Status, kind: ErrorKind | None = None, code: str = "") -> Record:
    error = None if kind is None else RowError(kind, code, "why")
    return Record(line, "447911100001", status, f"c0ffee000000-{line}", 1, error=error,
                  fingerprint=row(line).fingerprint())  # fmt: skip


def states(path: Path) -> dict[int, str]:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return dict(connection.execute("SELECT line, state FROM rows").fetchall())


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    opened = Journal.open(str(tmp_path / "j"), PARAMS)
    opened.start()
    yield opened
    await opened.close()


async def test_an_inflight_mark_is_committed_before_it_returns(
    journal: Journal, tmp_path: Path
) -> None:
    """Another connection sees the row in flight as soon as inflight() returns."""
    assert journal.admit(message(1)) is None
    await journal.inflight(message(1), 1)
    assert states(tmp_path / "j") == {1: "inflight"}


async def test_settled_records_are_written_and_stopped_rows_stay_pending(
    journal: Journal, tmp_path: Path
) -> None:
    """A final record is kept; a row stopped after its mark (request never left) is pending."""
    for line in (1, 2):
        journal.admit(message(line))
        await journal.inflight(message(line), 1)
    journal.settle(record(1, Status.SENT), _ignore)
    journal.settle(record(2, Status.FAILED, ErrorKind.STOPPED, "interrupted"), _ignore)
    await journal.close()
    assert states(tmp_path / "j") == {1: "sent", 2: "pending"}


def _ignore(record: Record) -> None:
    """A publisher for tests that look at the journal only."""


async def test_a_final_record_is_flushed_out_just_before_the_commit_that_settles_its_row(
    journal: Journal, tmp_path: Path
) -> None:
    """A record still buffered when the journal holds its row settled is lost to a kill, and
    the resume has only `already_settled` for the row (nothing with --only-new). So a final
    record is published and flushed while the journal still holds its row in flight, and the
    commit settles it right after; a stop (which settles nothing) is published after."""
    events: list[tuple[str, int, str]] = []

    def publish(r: Record) -> None:
        events.append(("published", r.line, states(tmp_path / "j")[r.line]))

    def flush() -> None:
        events.append(("flushed", 0, ""))

    journal.write_records_first(flush, None)
    for line in (1, 2):
        journal.admit(message(line))
        await journal.inflight(message(line), 1)
    journal.settle(record(1, Status.SENT), publish)
    journal.settle(record(2, Status.FAILED, ErrorKind.STOPPED, "interrupted"), publish)
    assert events == []  # queued, not committed yet
    await journal.drain()
    assert events == [
        ("published", 1, "inflight"),
        ("flushed", 0, ""),
        ("published", 2, "pending"),
    ]
    assert states(tmp_path / "j") == {1: "sent", 2: "pending"}


async def test_rows_marked_and_settled_in_one_commit_end_settled(
    journal: Journal, tmp_path: Path
) -> None:
    """Marks are written before the settled rows of the same commit, whichever statement
    settles them: an update with an error or without, or the row whole."""
    for line in (1, 2, 3):
        journal.admit(message(line))
    marks = [journal.inflight(message(line), 1) for line in (1, 2, 3)]
    journal.retrying(message(1), 1)  # pending again, then sent, in the same commit
    journal.settle(record(1, Status.SENT), _ignore)
    journal.settle(record(2, Status.FAILED, ErrorKind.REJECTED, "6"), _ignore)
    journal.settle(record(3, Status.FAILED, ErrorKind.STOPPED, "interrupted"), _ignore)
    await journal.drain()
    await asyncio.gather(*marks)
    assert states(tmp_path / "j") == {1: "sent", 2: "failed", 3: "pending"}
    with contextlib.closing(sqlite3.connect(tmp_path / "j")) as connection:
        errors = connection.execute("SELECT line, error_kind, error_code FROM rows").fetchall()
    assert sorted(errors) == [(1, None, None), (2, "rejected", "6"), (3, "stopped", "interrupted")]


class _BoundValues:
    """The journal's connection, keeping every value its `executemany` calls bind."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection
        self.values: list[object] = []

    def executemany(self, statement: str, rows: list[tuple[object, ...]]) -> sqlite3.Cursor:
        self.values += [value for values in rows for value in values]
        return self._connection.executemany(statement, rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


async def test_rows_are_bound_as_plain_values_not_enums(journal: Journal, tmp_path: Path) -> None:
    """Marks, retries, settled rows and rows recorded whole bind only plain str, int, float and
    None: sqlite3 binds a str subclass (the enums) only after looking for an adapter, about a
    µs a value, on the event loop."""
    spy = _BoundValues(journal._connection)
    journal._connection = spy  # type: ignore[assignment]
    for line in (1, 2, 3):
        journal.admit(message(line))
        await journal.inflight(message(line), 1)
    journal.retrying(message(2), 1)
    journal.settle(record(1, Status.SENT), _ignore)
    journal.settle(record(2, Status.FAILED, ErrorKind.STOPPED, "interrupted"), _ignore)
    journal.settle(record(3, Status.FAILED, ErrorKind.REJECTED, "6"), _ignore)
    journal.admit(record(4, Status.SKIPPED, ErrorKind.DUPLICATE, "duplicate"))
    journal.settle(record(4, Status.SKIPPED, ErrorKind.DUPLICATE, "duplicate"), _ignore)
    await journal.drain()
    assert {type(value) for value in spy.values} <= {str, int, float, type(None)}
    assert {"inflight", "pending", "gsm7", "sent", "failed", "rejected"} <= set(spy.values)
    assert states(tmp_path / "j") == {1: "sent", 2: "pending", 3: "failed", 4: "skipped"}


async def test_a_journal_reached_through_a_symlink_marks_and_locks_its_own_file(
    tmp_path: Path,
) -> None:
    """SQLite writes the WAL beside the file a symlink leads to: the mark's fsync must find it
    there, and a second run through another path to the same journal must meet the lock."""
    real = tmp_path / "j"
    link = tmp_path / "link.journal"
    link.symlink_to(real)
    opened = Journal.open(str(link), PARAMS)
    opened.start()
    try:
        opened.admit(message(1))
        await opened.inflight(message(1), 1)
        assert states(real) == {1: "inflight"}
        for other in (real, link):
            with pytest.raises(JournalError, match="in use"):
                Journal.open(str(other), PARAMS)
    finally:
        await opened.close()


async def test_a_mark_whose_fsync_fails_is_not_given_and_the_journal_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that cannot fsync the WAL: the request must not leave, and the run hears why."""
    heard: list[str] = []
    opened = Journal.open(str(tmp_path / "j"), PARAMS)
    opened.start(heard.append)

    def failing(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing)
    opened.admit(message(1))
    with pytest.raises(JournalError, match="cannot fsync the journal's WAL"):
        await opened.inflight(message(1), 1)
    assert len(heard) == 1
    with pytest.raises(JournalError):
        opened.inflight(message(2), 1)  # nothing more is marked, so nothing more leaves
    monkeypatch.undo()
    await opened.close()


async def test_a_stopped_row_the_failed_journal_holds_in_flight_says_the_resume_keeps_it_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows marked while they waited for a place, whose requests never left, cannot be set
    pending again once the journal fails: their records say the resume records them unknown
    (and how to send them), where a row never marked keeps "not sent" alone."""
    published: list[Record] = []
    opened = Journal.open(str(tmp_path / "j"), PARAMS)
    opened.start()
    for line in (1, 2, 3):
        opened.admit(message(line))
    await opened.inflight(message(1), 1)  # marked ahead: its place never came

    def failing(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fdatasync", failing)
    with pytest.raises(JournalError):
        await opened.inflight(message(2), 1)  # written, then its fsync failed
    monkeypatch.undo()
    for line in (1, 2, 3):
        opened.settle(record(line, Status.FAILED, ErrorKind.STOPPED, "journal"), published.append)
    await opened.close()

    texts = {r.line: r.error.message for r in published if r.error is not None}
    assert set(texts) == {1, 2, 3}
    for line in (1, 2):
        assert "the resume records it unknown" in texts[line]
        assert "--retry-unknown" in texts[line]
    assert texts[3] == "why"  # never marked: the resume sends it, as a stopped row's record says
    resumed = await reopen(tmp_path)
    try:
        found = {line: resumed.admit(message(line)) for line in (1, 2, 3)}
    finally:
        await resumed.close()
    for line in (1, 2):
        outcome = found[line]
        assert outcome is not None
        assert outcome.status is Status.UNKNOWN
    assert found[3] is None  # sent by the resume


async def test_nothing_is_committed_while_the_wal_is_being_fsynced(
    journal: Journal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write to the WAL during its fsync waits for the flush, holding the loop: a mark queued
    meanwhile is committed once the fsync ends, then fsynced in turn."""
    entered, release = threading.Event(), threading.Event()
    fdatasync = os.fdatasync

    def slow(fd: int) -> None:
        entered.set()
        release.wait()
        fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", slow)
    journal.admit(message(1))
    first = journal.inflight(message(1), 1)
    await asyncio.to_thread(entered.wait)  # the first mark's fsync is running
    journal.admit(message(2))
    second = journal.inflight(message(2), 1)
    for _ in range(3):
        await asyncio.sleep(0)  # turns of the loop in which a commit would have run
    assert states(tmp_path / "j") == {1: "inflight"}
    release.set()
    await first
    await second
    assert states(tmp_path / "j") == {1: "inflight", 2: "inflight"}


def is_there(path: str) -> bool:
    return os.path.exists(path)


def size_of(path: str) -> int:
    return os.stat(path).st_size


async def resume_state(path: str) -> ResumeState:
    """What a resume of the journal at `path` finds: rows settled, rows found in flight."""
    resumed = Journal.open(path, PARAMS)
    try:
        return resumed.resume
    finally:
        await resumed.close()


def settled_earlier(journal: Journal, line: int) -> Record:
    """The resume's record of a row an earlier run settled: skipped, `already_settled`."""
    found = journal.admit(message(line))
    assert found is not None
    assert found.error is not None
    assert (found.status, found.error.kind) == (Status.SKIPPED, ErrorKind.ALREADY_SETTLED)
    return found


def found_unknown(journal: Journal, line: int) -> Record:
    """The resume's record of a row an earlier run left in flight: `unknown`."""
    found = journal.admit(message(line))
    assert found is not None
    assert found.status is Status.UNKNOWN
    return found


async def reopen(tmp_path: Path, *, retry_unknown: bool = False) -> Journal:
    return Journal.open(str(tmp_path / "j"), PARAMS, retry_unknown=retry_unknown)


async def test_a_resumed_run_skips_settled_rows_and_reports_inflight_ones_unknown(
    journal: Journal, tmp_path: Path
) -> None:
    """sent: already settled; inflight at the crash: unknown this run, not resent."""
    for line in (1, 2, 3):
        journal.admit(message(line))
        await journal.inflight(message(line), 1)
    journal.settle(record(1, Status.SENT), _ignore)
    journal.settle(record(2, Status.FAILED, ErrorKind.EXHAUSTED, "1"), _ignore)
    await journal.close()  # row 3 stays in flight, as after a crash
    resumed = await reopen(tmp_path)
    try:
        assert resumed.resume.were_inflight == 1
        settled_earlier(resumed, 1)
        assert resumed.admit(message(2)) is None, "exhausted rows are sent again"
        found_unknown(resumed, 3)
    finally:
        await resumed.close()


async def test_a_row_found_in_flight_is_reported_by_the_run_that_reaches_it(
    journal: Journal, tmp_path: Path
) -> None:
    """A resume that stops before reading an interrupted row leaves its `unknown` to the next."""
    journal.admit(message(1))
    await journal.inflight(message(1), 1)
    await journal.close()  # row 1 stays in flight, as after a crash
    stopped_early = await reopen(tmp_path)
    await stopped_early.close()  # a resume stopped before it read line 1
    assert states(tmp_path / "j") == {1: "inflight"}
    resumed = await reopen(tmp_path)
    try:
        found = found_unknown(resumed, 1)
        resumed.start()
        resumed.settle(found, _ignore)
        await resumed.drain()
    finally:
        await resumed.close()
    assert states(tmp_path / "j") == {1: "unknown"}
    last = await reopen(tmp_path)
    try:
        again = last.admit(message(1))
        assert again is not None
        assert (again.status, again.error and again.error.kind) == (
            Status.SKIPPED, ErrorKind.ALREADY_SETTLED,
        )  # fmt: skip
    finally:
        await last.close()


async def test_retry_unknown_resends_rows_found_in_flight(journal: Journal, tmp_path: Path) -> None:
    """With --retry-unknown an interrupted row is handled again."""
    journal.admit(message(1))
    await journal.inflight(message(1), 1)
    await journal.close()
    resumed = await reopen(tmp_path, retry_unknown=True)
    try:
        assert resumed.admit(message(1)) is None
    finally:
        await resumed.close()


async def test_a_row_in_flight_with_a_delivery_receipt_is_sent_even_with_retry_unknown(
    journal: Journal, tmp_path: Path
) -> None:
    """A receipt proves the provider has it: never resent, whatever --retry-unknown says."""
    journal.admit(message(1))
    await journal.inflight(message(1), 1)
    await journal.close()  # in flight at the crash; the receiver stored a receipt for it
    with contextlib.closing(sqlite3.connect(tmp_path / "j")) as connection, connection:
        connection.execute(
            "INSERT INTO deliveries VALUES ('P1', 'c0ffee000000', 1, 'vonage-sms', 'delivered', "
            "1, 'delivered', '', NULL, 0)"
        )
    resumed = await reopen(tmp_path, retry_unknown=True)
    try:
        again = resumed.admit(message(1))
        assert again is not None
        assert (again.status, again.error and again.error.kind) == (
            Status.SKIPPED,
            ErrorKind.ALREADY_SETTLED,
        )
    finally:
        await resumed.close()
    assert states(tmp_path / "j") == {1: "sent"}


async def test_a_changed_row_is_refused(journal: Journal, tmp_path: Path) -> None:
    """The same line with other values means another input: InputChanged names the line."""
    journal.admit(message(7))
    journal.settle(record(7, Status.SENT), _ignore)
    await journal.close()
    resumed = await reopen(tmp_path)
    try:
        with pytest.raises(InputChanged, match="line 7"):
            resumed.admit(message(7, name="Bob"))
    finally:
        await resumed.close()


def test_a_campaign_with_other_settings_is_refused(tmp_path: Path) -> None:
    """Another --from for the same campaign: JournalError naming the option and the way out."""
    first = Journal.open(str(tmp_path / "j"), PARAMS)
    asyncio.run(first.close())
    with pytest.raises(JournalError, match=r"--from 'Shop'.*--campaign NAME"):
        Journal.open(str(tmp_path / "j"), dataclasses.replace(PARAMS, sender="Other"))


async def test_a_number_column_recorded_in_another_case_is_the_same_column(tmp_path: Path) -> None:
    """A journal that recorded --to-column Phone resumes with the column looked up as phone."""
    first = Journal.open(str(tmp_path / "j"), dataclasses.replace(PARAMS, to_column="Phone"))
    first.start()
    first.admit(message(1))
    first.settle(record(1, Status.SENT), _ignore)
    await first.close()
    again = Journal.open(str(tmp_path / "j"), dataclasses.replace(PARAMS, to_column="phone"))
    try:
        resumed = again.admit(message(1))
    finally:
        await again.close()
    assert resumed is not None
    assert resumed.error is not None
    assert (resumed.error.kind, resumed.error.code) == (ErrorKind.ALREADY_SETTLED, "sent")


async def test_a_journal_in_use_is_refused_naming_the_holder(
    journal: Journal, tmp_path: Path
) -> None:
    """A second run on the same journal: JournalError with the holder's pid."""
    with pytest.raises(
        JournalError, match=f"in use by another sms-blaster run \\(pid {os.getpid()}"
    ):
        Journal.open(str(tmp_path / "j"), PARAMS)


@pytest.mark.parametrize("how", ["renamed", "linked, then its first name removed"])
async def test_a_journal_given_another_name_while_a_run_holds_it_is_refused_through_it(
    journal: Journal, tmp_path: Path, how: str
) -> None:
    """A run holds the journal; meanwhile it is renamed (or linked and its first name removed):
    one name again, so it passes the hard-link check, and the lock named after the new path is
    another lock. A second run through the new name is refused as in use (it would send every
    row the first one marks, its WAL kept beside the other name)."""
    old, new = tmp_path / "j", tmp_path / "moved.journal"
    if how == "renamed":
        old.rename(new)
    else:
        new.hardlink_to(old)
        old.unlink()
    with pytest.raises(JournalError, match=r"in use by another sms-blaster run .*another name"):
        Journal.open(str(new), PARAMS)


async def test_a_journal_with_a_second_name_is_refused_through_either(
    journal: Journal, tmp_path: Path
) -> None:
    """A hard link is another name for the same file, with a WAL and a lock of its own beside
    it: a run through it would share the database with the run holding the other name."""
    os.link(tmp_path / "j", tmp_path / "hard.journal")
    for name in ("hard.journal", "j"):
        with pytest.raises(JournalError, match=r"2 names \(hard links\).*remove the extra"):
            Journal.open(str(tmp_path / name), PARAMS)


async def test_a_stale_lock_file_is_taken_over(tmp_path: Path) -> None:
    """A lock file left by a dead process holds no lock: the run goes on."""
    (tmp_path / "j.lock").write_text("pid 999999 on elsewhere since 2020-01-01 00:00:00\n")
    opened = Journal.open(str(tmp_path / "j"), PARAMS)
    opened.start()
    holder = (tmp_path / "j.lock").read_text()
    await opened.close()
    assert holder.startswith(f"pid {os.getpid()} on ")


def test_an_unusable_path_is_a_journal_error(tmp_path: Path) -> None:
    """A journal in a folder that does not exist: exit 4 with the way out."""
    with pytest.raises(JournalError, match="--journal PATH or --no-journal"):
        Journal.open(str(tmp_path / "missing" / "j"), PARAMS)


def test_a_journal_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    """A schema this version does not know is not written to."""
    with contextlib.closing(sqlite3.connect(tmp_path / "j")) as connection:
        connection.execute("PRAGMA user_version = 99")
    with pytest.raises(JournalError, match="newer"):
        Journal.open(str(tmp_path / "j"), PARAMS)


def wal_frames(connection: sqlite3.Connection) -> int:
    frames: int = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
    return frames


class CommitsDuringCheckpoint(sqlite3.Connection):
    """A connection whose PASSIVE checkpoint leaves frames uncopied: the loop committed while
    it ran (made certain here by a reader that holds the snapshot from before that commit)."""

    reader: sqlite3.Connection
    writer: sqlite3.Connection

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        if "PASSIVE" not in sql:
            return super().execute(sql, parameters)
        self.reader.execute("BEGIN")
        self.reader.execute("SELECT count(*) FROM rows").fetchone()
        self.writer.execute("UPDATE rows SET attempts = attempts + 1 WHERE line = 1")
        cursor = super().execute(sql, parameters)
        self.reader.execute("COMMIT")
        return cursor


async def test_a_long_wal_starts_over_while_the_run_keeps_committing(
    journal: Journal, tmp_path: Path
) -> None:
    """Past its frame limit the checkpointer restarts the WAL, though commits never pause."""
    for line in range(1, 41):
        await journal.inflight(message(line), 1)  # one commit each
    path = tmp_path / "j"
    checkpointer = _Checkpointer(str(path), interval_s=3600, restart_frames=20)
    with (
        contextlib.closing(sqlite3.connect(path, isolation_level=None)) as reader,
        contextlib.closing(sqlite3.connect(path, isolation_level=None)) as writer,
        contextlib.closing(
            sqlite3.connect(path, isolation_level=None, factory=CommitsDuringCheckpoint)
        ) as connection,
    ):
        assert isinstance(connection, CommitsDuringCheckpoint)
        connection.reader, connection.writer = reader, writer
        checkpointer.checkpoint(connection)
        await journal.inflight(message(41), 1)
        after = wal_frames(writer)
    checkpointer.stop()
    assert after < 5  # without the restart: every frame since the first commit
    assert len(states(path)) == 41


async def test_a_retry_of_a_row_an_earlier_run_left_unknown_keeps_it_unknown(
    journal: Journal, tmp_path: Path
) -> None:
    """--retry-unknown resends a row that may have been sent; while its retry waits (a throttle)
    the journal must not call it pending, or a kill then would let a plain resume send it."""
    journal.admit(message(1))
    await journal.inflight(message(1), 1)
    await journal.close()  # in flight at the end, as after a crash: unknown from now on
    resumed = await reopen(tmp_path, retry_unknown=True)
    resumed.start()
    assert resumed.admit(message(1)) is None  # taken on again
    await resumed.inflight(message(1), 1)
    resumed.retrying(message(1), 1)
    await resumed.close()  # killed while the retry waits
    assert states(tmp_path / "j") == {1: "unknown"}


def test_a_journal_of_the_previous_schema_gets_the_added_columns_when_opened(
    tmp_path: Path,
) -> None:
    """A version 2 journal (no `sender`, no `plain_segments`) is given both, keeping its rows."""
    path = str(tmp_path / "old.db")
    with contextlib.closing(sqlite3.connect(path)) as old:
        old.executescript(OLD_ROWS_TABLE)
        old.execute("PRAGMA user_version = 2")
        old.execute("INSERT INTO rows VALUES ('c', 1, 'sent', 0, '4479', 'r-1', 1, 'gsm7', 1, "
                    "'M1', NULL, NULL, NULL, NULL, NULL, 0)")  # fmt: skip
        old.commit()
    with contextlib.closing(schema.connect(path)) as connection:
        assert {"sender", "plain_segments"} <= schema.row_columns(connection)
        found = connection.execute("SELECT message_ids, sender FROM rows").fetchall()
        assert found == [("M1", None)]
        assert connection.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION


OLD_ROWS_TABLE = """
CREATE TABLE rows (
    campaign TEXT NOT NULL, line INTEGER NOT NULL, state TEXT NOT NULL,
    fingerprint INTEGER NOT NULL, to_number TEXT NOT NULL, client_ref TEXT NOT NULL,
    segments INTEGER, encoding TEXT, attempts INTEGER NOT NULL, message_ids TEXT NOT NULL,
    price TEXT, latency_ms REAL, error_kind TEXT, error_code TEXT, error_message TEXT,
    updated_at REAL NOT NULL, PRIMARY KEY (campaign, line)
) WITHOUT ROWID;
"""


async def test_a_row_whose_text_smart_encoding_changed_keeps_its_plain_parts(
    journal: Journal, tmp_path: Path
) -> None:
    """The in-flight mark and the settled row both hold `plain_segments`; an unchanged row NULL."""
    changed = dataclasses.replace(message(1), plain_segments=3)
    journal.admit(changed)
    await journal.inflight(changed, 1)
    with contextlib.closing(sqlite3.connect(tmp_path / "j")) as connection:
        marked = connection.execute("SELECT plain_segments FROM rows WHERE line = 1").fetchone()
    assert marked == (3,)
    journal.settle(dataclasses.replace(record(1, Status.SENT), plain_segments=3), lambda r: None)
    journal.admit(message(2))
    journal.settle(record(2, Status.SKIPPED, ErrorKind.DUPLICATE, "duplicate"), lambda r: None)
    await journal.drain()
    with contextlib.closing(sqlite3.connect(tmp_path / "j")) as connection:
        found = connection.execute("SELECT line, plain_segments FROM rows ORDER BY line").fetchall()
    assert found == [(1, 3), (2, None)]


@pytest.mark.parametrize(
    ("kind", "code"), [(ErrorKind.OPTED_OUT, "opted_out"), (ErrorKind.SUPPRESSED, "suppressed")]
)
async def test_a_retried_unknown_row_skipped_since_stays_unknown(
    journal: Journal, tmp_path: Path, kind: ErrorKind, code: str
) -> None:
    """--retry-unknown takes on a row an earlier request may have sent; if its number opted out
    since, this run sends nothing, but a `skipped` record (and row) would claim it was never
    sent, and `report` would count it so. It stays unknown, its record saying why it was not
    resent; the next resume skips it as unknown."""
    journal.admit(message(1))
    await journal.inflight(message(1), 1)
    journal.settle(record(1, Status.UNKNOWN, ErrorKind.AMBIGUOUS, "timeout"), _ignore)
    await journal.close()
    resumed = await reopen(tmp_path, retry_unknown=True)
    published: list[Record] = []
    try:
        resumed.start()
        assert resumed.admit(message(1)) is None  # taken on again
        skip = Record(1, "447911100001", Status.SKIPPED, "c0ffee000000-1", 0,
                      error=RowError(kind, code, "the number opted out (STOP); not sent"),
                      fingerprint=row(1).fingerprint())  # fmt: skip
        resumed.settle(skip, published.append)
        await resumed.drain()
    finally:
        await resumed.close()
    [kept] = published
    assert kept.status is Status.UNKNOWN
    assert kept.error is not None
    assert (kept.error.kind, kept.error.code) == (kind, code)
    assert kept.error.message == (
        "the number opted out (STOP); not resent, but an earlier run's request may have sent it"
    )
    assert states(tmp_path / "j") == {1: "unknown"}
    last = await reopen(tmp_path)
    try:
        again = last.admit(message(1))
        assert again is not None
        assert again.error is not None
        assert (again.error.kind, again.error.code) == (ErrorKind.ALREADY_SETTLED, "unknown")
    finally:
        await last.close()


async def test_a_row_first_skipped_by_a_retry_unknown_run_stays_skipped(
    journal: Journal, tmp_path: Path
) -> None:
    """Only a row an earlier request may have sent stays unknown: a new row opted out is a
    skip, as in any run."""
    await journal.close()
    resumed = await reopen(tmp_path, retry_unknown=True)
    published: list[Record] = []
    try:
        resumed.start()
        assert resumed.admit(message(1)) is None
        resumed.settle(
            record(1, Status.SKIPPED, ErrorKind.OPTED_OUT, "opted_out"), published.append
        )
        await resumed.drain()
    finally:
        await resumed.close()
    assert [r.status for r in published] == [Status.SKIPPED]
    assert states(tmp_path / "j") == {1: "skipped"}


def _write_to(out: BinaryIO, record: Record) -> None:
    out.write(json_line(record))


def _append(path: Path) -> BinaryIO:
    """A records file opened as `send --output` opens a campaign's (a test's, off the loop)."""
    return open(path, "ab")


async def test_records_a_killed_run_wrote_past_its_last_commit_settle_their_rows(
    tmp_path: Path,
) -> None:
    """A run killed between the flush of a commit's records and its COMMIT leaves the records
    out and the rows in flight: the resume takes each such record as its row's outcome (one
    record, not `unknown` beside it), and only those past the size kept at the last commit, of
    a row in flight, with its number and client ref, that settle it."""
    out_path = tmp_path / "out.jsonl"
    first = Journal.open(str(tmp_path / "j"), PARAMS)
    with _append(out_path) as out:
        first.write_records_first(out.flush, out.fileno())
        first.start()
        for line in (1, 2, 3, 4):
            first.admit(message(line))
            await first.inflight(message(line), 1)
        first.settle(record(1, Status.SENT), functools.partial(_write_to, out))
        await first.drain()
        # The killed run's next flush, its COMMIT never made: row 2 sent, row 3 stopped (not
        # final), row 4 of another number, and a record cut short.
        sent = dataclasses.replace(
            record(2, Status.SENT), message_ids=("0A02",), price=Decimal("0.033")
        )
        out.write(json_line(sent))
        out.write(json_line(record(3, Status.FAILED, ErrorKind.STOPPED, "interrupted")))
        out.write(json_line(dataclasses.replace(record(4, Status.SENT), to="447911100002")))
        out.write(json_line(record(1, Status.SENT))[:30])
    await first.close()

    resume = Journal.open(str(tmp_path / "j"), PARAMS)
    try:
        assert resume.resume.were_inflight == 3
        assert resume.adopt_records(str(out_path)) == 1
        assert resume.resume.were_inflight == 2
        assert states(tmp_path / "j") == {1: "sent", 2: "sent", 3: "inflight", 4: "inflight"}
        settled = resume.admit(message(2))
        assert settled is not None
        assert settled.error is not None
        assert (settled.status, settled.error.kind, settled.error.code) == (
            Status.SKIPPED, ErrorKind.ALREADY_SETTLED, "sent",
        )  # fmt: skip
        assert (settled.message_ids, settled.price) == (("0A02",), Decimal("0.033"))
        for line in (3, 4):
            found = resume.admit(message(line))
            assert found is not None
            assert found.status is Status.UNKNOWN
    finally:
        await resume.close()


async def test_records_of_a_file_cut_shorter_settle_nothing(tmp_path: Path) -> None:
    """The size kept is FILE's: a file shorter than that since (truncated, replaced by another)
    is not read, nor one of another identity."""
    out_path = tmp_path / "out.jsonl"
    first = Journal.open(str(tmp_path / "j"), PARAMS)
    with _append(out_path) as out:
        first.write_records_first(out.flush, out.fileno())
        first.start()
        for line in (1, 2):
            first.admit(message(line))
            await first.inflight(message(line), 1)
        first.settle(record(1, Status.SENT), functools.partial(_write_to, out))
        await first.drain()
    await first.close()
    out_path.write_bytes(json_line(record(2, Status.SENT)))  # shorter than record 1's line
    other = tmp_path / "other.jsonl"
    other.write_bytes(json_line(record(1, Status.SENT)) + json_line(record(2, Status.SENT)))
    resume = Journal.open(str(tmp_path / "j"), PARAMS)
    try:
        assert resume.adopt_records(str(out_path)) == 0
        assert resume.adopt_records(str(other)) == 0
        assert states(tmp_path / "j") == {1: "sent", 2: "inflight"}
    finally:
        await resume.close()


@contextlib.contextmanager
def files_capped_at(size: int) -> Iterator[None]:
    """No write past `size` bytes into any file, in this process (Python ignores SIGXFSZ: the
    write fails, as on a full disk); the limit as it was after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


@pytest.mark.parametrize(
    ("fsync", "reached"),
    [(True, "as is"), (False, "as is"), (True, "by a link"), (True, "renamed")],
)
async def test_records_out_whose_commit_failed_settle_their_rows_on_resume(
    tmp_path: Path, fsync: bool, reached: str
) -> None:
    """A commit that fails after its records were published (to stdout, which the resume cannot
    read) keeps them in the space reserved beside the journal at start: the resume takes each
    as its row's outcome, so the row has one record, not an `unknown` beside it. (Through a
    symlink, the file and the WAL are beside the journal file itself; a journal renamed after
    the failed run finds them by its identity.)"""
    heard: list[str] = []
    published: list[Record] = []
    path = tmp_path / "j"
    if reached == "by a link":
        path = tmp_path / "link"
        path.symlink_to(tmp_path / "j")
    first = Journal.open(str(path), PARAMS, fsync=fsync)
    kept = unsettled.path_of(str(path)) or ""
    first.write_records_first(lambda: None, None)
    first.start(heard.append)
    for line in (1, 2):
        first.admit(message(line))
        await first.inflight(message(line), 1)
    sent = dataclasses.replace(
        record(1, Status.SENT), message_ids=("0A01",), price=Decimal("0.033")
    )
    with files_capped_at(1024):  # the WAL's next frame cannot be written
        first.settle(sent, published.append)
        await first.drain()
    assert published == [sent]  # out before its COMMIT failed
    assert len(heard) == 1
    assert "cannot write the journal" in heard[0]
    assert "second" not in heard[0]  # every record out was kept
    await first.close()
    assert states(tmp_path / "j") == {1: "inflight", 2: "inflight"}
    assert is_there(kept)
    if reached == "renamed":
        path = tmp_path / "moved"
        (tmp_path / "j").rename(path)

    resume = Journal.open(str(path), PARAMS, fsync=fsync)
    try:
        assert not is_there(kept)  # settled in the journal, durably: nothing left
        assert resume.resume.were_inflight == 1
        assert states(path) == {1: "sent", 2: "inflight"}
        settled = settled_earlier(resume, 1)
        assert (settled.message_ids, settled.price) == (("0A01",), Decimal("0.033"))
        found_unknown(resume, 2)
    finally:
        await resume.close()


async def test_the_space_reserved_for_records_is_removed_by_a_run_that_did_not_need_it(
    tmp_path: Path,
) -> None:
    """The reserved file lives while the run does, with the journal's permissions (whoever may
    resume the journal must read it); a clean end leaves only the journal's own files."""
    opened = Journal.open(str(tmp_path / "j"), PARAMS)
    (tmp_path / "j").chmod(0o660)  # a journal its group resumes too
    kept = unsettled.path_of(str(tmp_path / "j")) or ""
    opened.write_records_first(lambda: None, None)
    opened.start()
    assert size_of(kept) > 0
    assert stat.S_IMODE(os.stat(kept).st_mode) == 0o660
    opened.admit(message(1))
    await opened.inflight(message(1), 1)
    opened.settle(record(1, Status.SENT), _ignore)
    await opened.close()
    assert not is_there(kept)
    assert states(tmp_path / "j") == {1: "sent"}


def _alone(path: Path) -> dict[int, str]:
    """The rows the database file holds by itself, without any WAL (as a run through a name
    with none beside it reads it)."""
    uri = f"file:{path}?immutable=1"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as connection:
        return dict(connection.execute("SELECT line, state FROM rows").fetchall())


async def test_a_journal_renamed_while_a_run_holds_it_is_whole_under_its_new_name_and_stops_the_run(
    tmp_path: Path,
) -> None:
    """SQLite keeps the WAL beside the name a run opened the journal by, and its close leaves a
    moved database's WAL there: the file under its new name lacked the last commits, and a
    resume through that name sent their rows again. The run hears of the rename (one line
    naming the new name: it stops), and its close writes the WAL into the renamed file, so the
    file is whole alone and records no run holding it."""
    old, new = tmp_path / "j", tmp_path / "moved.journal"
    opened = Journal.open(str(old), PARAMS)
    heard: list[str] = []
    opened.start(heard.append)
    for line in (1, 2):
        opened.admit(message(line))
        await opened.inflight(message(line), 1)
    old.rename(new)
    for line in (3, 4):
        opened.admit(message(line))
        await opened.inflight(message(line), 1)
    for line in (1, 2, 3):
        opened.settle(record(line, Status.SENT), _ignore)
    await opened.close()
    assert _alone(new) == {1: "sent", 2: "sent", 3: "sent", 4: "inflight"}
    assert len(heard) == 1
    assert f"renamed to {new} while this run held it" in heard[0]
    assert f"resume with --journal {new}" in heard[0]
    with contextlib.closing(sqlite3.connect(f"file:{new}?immutable=1", uri=True)) as connection:
        assert connection.execute("SELECT count(*) FROM opened_as").fetchone() == (0,)
    assert await resume_state(str(new)) == ResumeState(
        3, 1
    )  # nothing left beside the old name: no refusal


async def test_the_checkpointer_hears_a_rename_while_the_run_goes_on_and_makes_no_file(
    tmp_path: Path,
) -> None:
    """The rename is noticed while the run goes on (a stat of the name at each checkpoint
    pass), not only as it ends; the checkpointer, which opened the journal by name, never makes
    a new empty journal at the old one."""
    old, new = tmp_path / "j", tmp_path / "moved.journal"
    opened = Journal.open(str(old), PARAMS)
    stopped = asyncio.Event()
    heard: list[str] = []

    def on_error(message: str) -> None:
        heard.append(message)
        stopped.set()

    opened.start(on_error)
    try:
        opened.admit(message(1))
        await opened.inflight(message(1), 1)
        old.rename(new)
        async with asyncio.timeout(30):
            await stopped.wait()
        assert not old.exists()
        assert len(heard) == 1
        assert f"renamed to {new}" in heard[0]
    finally:
        await opened.close()
    assert heard == [heard[0]]  # said once
    assert _alone(new) == {1: "inflight"}


async def test_a_copy_of_a_journal_a_run_holds_is_refused_naming_the_original(
    journal: Journal, tmp_path: Path
) -> None:
    """Copied while a run holds it (or after it was killed), the file lacks what only the WAL
    beside the original holds: a run through the copy is refused, naming the journal to use."""
    journal.admit(message(1))
    await journal.inflight(message(1), 1)
    shutil.copyfile(tmp_path / "j", tmp_path / "copy.journal")
    with pytest.raises(JournalError, match=r"a copy of .*j, which a run holds \(pid"):
        Journal.open(str(tmp_path / "copy.journal"), PARAMS)
    with pytest.raises(JournalError, match=r"resume with --journal .*/j once that run ends"):
        Journal.peek(str(tmp_path / "copy.journal"), PARAMS)


async def test_a_journal_that_ended_cleanly_may_be_renamed_and_resumed_by_its_new_name(
    journal: Journal, tmp_path: Path
) -> None:
    """A clean end writes the WAL into the file and clears the record: nothing to refuse."""
    journal.admit(message(1))
    await journal.inflight(message(1), 1)
    journal.settle(record(1, Status.SENT), _ignore)
    await journal.close()
    (tmp_path / "j").rename(tmp_path / "moved.journal")
    assert await resume_state(str(tmp_path / "moved.journal")) == ResumeState(1, 0)


async def test_records_kept_beside_a_journal_then_moved_to_another_folder_refuse_it_there(
    tmp_path: Path,
) -> None:
    """The records a failed commit kept for the resume are named by the journal file's identity
    in its folder: a journal moved to another folder after the failed run would not find them,
    and would record their rows `unknown` beside the records out. A run there is refused, saying
    which file to move; moved back, the resume takes them."""
    old, new = tmp_path / "j", tmp_path / "elsewhere" / "moved.journal"
    new.parent.mkdir()
    first = Journal.open(str(old), PARAMS)
    first.write_records_first(lambda: None, None)
    first.start()
    first.admit(message(1))
    await first.inflight(message(1), 1)
    with files_capped_at(1024):  # the WAL's next frame cannot be written
        first.settle(record(1, Status.SENT), _ignore)
        await first.drain()
    await first.close()
    kept = unsettled.path_of(str(old))
    assert kept is not None
    old.rename(new)
    moves = f"move {kept} to {new.parent / Path(kept).name}"
    with pytest.raises(JournalError, match=f"was renamed from {old}.*{moves}"):
        Journal.open(str(new), PARAMS)
    new.rename(old)
    resume = Journal.open(str(old), PARAMS)
    try:
        assert resume.resume == ResumeState(1, 0)
        assert states(old) == {1: "sent"}
    finally:
        await resume.close()


async def test_a_journal_removed_while_a_run_holds_it_stops_the_run_saying_so(
    tmp_path: Path,
) -> None:
    """No name left to resume through: the line says the journal was removed, and that a run
    with a new journal sends every row again, not a name to resume with."""
    opened = Journal.open(str(tmp_path / "j"), PARAMS)
    heard: list[str] = []
    opened.start(heard.append)
    opened.admit(message(1))
    await opened.inflight(message(1), 1)
    (tmp_path / "j").unlink()
    await opened.close()
    assert len(heard) == 1
    assert "the journal was removed while this run held it" in heard[0]
    assert not (tmp_path / "j").exists()  # nothing made at its name
