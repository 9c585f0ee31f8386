"""The journal of a running campaign: what to skip on resume, and writes in group commits.

Writes are queued and committed together in one transaction (a group commit). A sender waits for
one write only: the `inflight` mark, which must be on disk before its request leaves; every other
write joins the next commit without anyone waiting.

Commits run on the loop itself, once per turn, with synchronous=NORMAL: the WAL is written into
the OS's cache (it survives the process being killed), tens of microseconds for a batch. A commit
that carries marks someone waits for is then made durable by an fsync of the WAL file in a thread
of its own (the `syncer`), so not even a power cut can lose a mark whose request left: an fsync
takes 0.3 ms on a quiet disk and several on a busy one, and on the loop it would hold every
request that long. One fsync covers every commit written before it started. Settled rows need no
fsync: their records are published once committed, and reach the disk with the next fsync.

Commits and fsyncs take turns: nothing is committed while an fsync of the WAL runs. A write to
the WAL while it is being flushed waits for the flush (on ext4, a commit that met an fsync took
1-10 ms instead of 0.2, and at full speed those waits were a quarter of the run). What is queued
meanwhile is committed as soon as the fsync ends, in one bigger commit, and its marks fsynced in
turn: they wait no longer than they did when committed at once (for the fsync after the running
one), and records wait for their commit at most one fsync more.

Why not synchronous=FULL in a writer thread (as before): the thread then binds every row's
values itself, and takes the interpreter's lock back from the busy loop for each row; a batch of
64 rows took 2-3 ms where the same writes on the loop take 0.5, and the fsync waited behind it.

With `fsync=False` (`--no-fsync`) the same commits run and nothing is fsynced. The fsync of a
checkpoint runs in a thread of its own either way.
"""

from __future__ import annotations

import array
import asyncio
import bisect
import contextlib
import errno
import fcntl
import functools
import json
import os
import queue
import socket
import sqlite3
import stat
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import astuple, dataclass, fields, replace
from decimal import Decimal, InvalidOperation
from typing import TextIO

from sms_blaster.campaign_identity import NEW_CAMPAIGN_ADVICE, CampaignParams, mismatch
from sms_blaster.errors import JournalError
from sms_blaster.journal import files, unsettled
from sms_blaster.journal.deliveries import promote_proven_sent, proven_sent_lines
from sms_blaster.journal.schema import RowState, check_version, connect, row_columns
from sms_blaster.journal.timeline import TimelineSecond
from sms_blaster.models import Encoding, ErrorKind, InputRow, Message, Record, RowError, Status
from sms_blaster.output import json_line

MAX_BATCH = 10_000

_COLUMNS = """
INSERT INTO rows (campaign, line, state, fingerprint, to_number, client_ref, segments, encoding,
                  attempts, message_ids, price, latency_ms, error_kind, error_code, error_message,
                  updated_at, plain_segments, sender)
"""
_ON_CONFLICT = """
ON CONFLICT (campaign, line) DO UPDATE SET
    state = excluded.state, fingerprint = excluded.fingerprint, to_number = excluded.to_number,
    client_ref = excluded.client_ref, segments = excluded.segments, encoding = excluded.encoding,
    attempts = excluded.attempts, message_ids = excluded.message_ids, price = excluded.price,
    latency_ms = excluded.latency_ms, error_kind = excluded.error_kind,
    error_code = excluded.error_code, error_message = excluded.error_message,
    updated_at = excluded.updated_at, plain_segments = excluded.plain_segments,
    sender = excluded.sender
"""
# A row whole: a record (the row not marked by this run), or ...
_UPSERT = f"{_COLUMNS}VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?){_ON_CONFLICT}"
# ...a mark (in flight, or pending again): no outcome yet, its columns written as constants
# rather than bound, six values a row fewer (half the journal's statements are marks).
_MARK = (
    f"{_COLUMNS}VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, '', NULL, NULL, NULL, NULL, NULL, ?, ?, ?)"
    f"{_ON_CONFLICT}"
)

# A settled row that was marked in flight: what changed, with its error...
_SETTLE = """
UPDATE rows SET state = ?, attempts = ?, message_ids = ?, price = ?, latency_ms = ?,
                error_kind = ?, error_code = ?, error_message = ?, updated_at = ?
WHERE campaign = ? AND line = ?
"""
# ...or without one (a sent row, the usual case): the mark left no error to clear, but a
# constant costs nothing to write again.
_SETTLE_CLEAN = """
UPDATE rows SET state = ?, attempts = ?, message_ids = ?, price = ?, latency_ms = ?,
                error_kind = NULL, error_code = NULL, error_message = NULL, updated_at = ?
WHERE campaign = ? AND line = ?
"""

_RECORDS_OUT_SIZE = "UPDATE records_out SET size = ? WHERE campaign = ?"
# A settled row whose final record the run could not write (`Journal._records_first`), and its
# debt forgotten once a later run wrote that record.
_OWE = "INSERT OR IGNORE INTO records_owed (campaign, line) VALUES (?, ?)"
_PAID = "DELETE FROM records_owed WHERE campaign = ? AND line = ?"
# A row found in flight whose record a killed run wrote (`Journal.adopt_records`).
_ADOPT = """
UPDATE rows SET state = ?, attempts = ?, message_ids = ?, price = ?, latency_ms = ?,
                error_kind = ?, error_code = ?, error_message = ?, updated_at = ?
WHERE campaign = ? AND line = ? AND state = ?
"""
_ADOPTED_STATUSES = frozenset(status.value for status in Status)
_NOT_ADOPTED_KINDS = frozenset(
    kind.value for kind in (ErrorKind.STOPPED, ErrorKind.QUIET_HOURS, ErrorKind.ALREADY_SETTLED)
)
# Past the size kept at a commit: the records of one commit, and stops published after it.
_LONGEST_TAIL = 64 << 20

_RUN_STARTED = "INSERT INTO runs (id, campaign, started_at, settings) VALUES (?, ?, ?, ?)"
_RUN_ENDED = "UPDATE runs SET ended_at = ?, exit_code = ? WHERE id = ?"
_SECOND = (
    "INSERT OR REPLACE INTO timeline (run, at, requests, throttled, sent, failed, in_flight, "
    "window, rate_ceiling, pace, limit_found) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

_STATE_CODES = {state: code for code, state in enumerate(RowState, start=1)}
_STATES = {code: state for state, code in _STATE_CODES.items()}
_FINAL_STATES = {status: RowState(status.value) for status in Status}
# A row in one of these states with no attempt ended before any request: its line may take
# another row on a resume (a settled row from earlier runs' requests never does).
_ENDED_UNSENT = (RowState.FAILED, RowState.SKIPPED)
# The text of each enum value the journal writes, as a plain str (see `Journal._message_row`).
_TEXT: dict[object, str | None] = {
    None: None,
    **{value: value.value for kind in (RowState, Encoding, ErrorKind) for value in kind},
}
_INTERRUPTED_TEXT = "an earlier run ended while the request was in flight; it may have been sent"
_LEFT_IN_FLIGHT_TEXT = (
    "not sent: the run stopped, and the journal it could no longer write holds the row in "
    "flight (marked before its request would leave, which it never did): the resume records it "
    "unknown and does not send it; a resume with --retry-unknown sends it, and every other "
    "unknown row too, some of which may have been sent"
)


class InputChanged(JournalError):
    """An input row differs from the row the journal recorded for the same line."""


@dataclass(frozen=True, slots=True)
class ResumeState:
    """What earlier runs left: how many rows are settled, how many were found in flight, and how
    many settled rows' final records an earlier run could not write (this run writes them)."""

    settled: int
    were_inflight: int
    owed: int = 0


class Journal:
    """One campaign's journal for one run. Open with `Journal.open`, then `start` in the loop."""

    def __init__(
        self,
        path: str,
        connection: sqlite3.Connection,
        lock: _Lock,
        params: CampaignParams,
        retry_unknown: bool,
        fsync: bool = True,
        *,
        read_only: bool = False,
    ) -> None:
        self.path = path
        self._read_only = read_only  # a dry run's view: nothing is written
        self._connection = connection
        self._fsync = fsync
        self._lock = lock
        self._params = params
        self._retry_unknown = retry_unknown
        # Earlier runs, indexed by line: a state code (0: no row) and the row's fingerprint.
        self._prior_states = bytearray()
        self._prior_fingerprints = array.array("I")  # CRC-32s: 4 bytes each
        # 1 at a line whose row ended with no request (invalid input, skipped): another row may
        # take that line (an input read again with --encoding, a fixed number) without a
        # double send, so its fingerprint need not match.
        self._prior_unsent = bytearray()
        # The numbers earlier runs made a request to (sorted, as integers), read when a row first
        # takes such a line: a row moved there from a line sent earlier is refused, not resent.
        self._requested_numbers: array.array[int] | None = None
        self._taken: set[int] = set()  # rows this run took on, not yet settled
        self._marked: set[int] = set()  # rows marked inflight, not yet settled
        self._retryable_failures: set[int] = set()  # failed as exhausted: never accepted
        self._interrupted: set[int] = set()  # found in flight: unknown from this run on
        # Settled rows whose final record no run could write yet (`records_owed`): this run
        # writes each (`_owed_record`), and forgets the debt in the commit after the record
        # is out. Those admitted so far, whose record is on its way; the debts the commit
        # being written forgets.
        self._owed: set[int] = set()
        self._repaying: set[int] = set()
        self._paying: list[int] = []
        self._prior_senders: dict[int, str] = {}  # a pool's choice for rows not settled yet
        # Queued for the next commit, written in this order: marks, rows whole, settled rows
        # marked in flight (with an error, without). A row's mark always comes before its row
        # whole or its update, and a run writes nothing of a row after either.
        self._marks: list[tuple[object, ...]] = []
        self._batch: list[tuple[object, ...]] = []
        self._updates: list[tuple[object, ...]] = []
        self._clean_updates: list[tuple[object, ...]] = []
        self._repaid: list[tuple[object, ...]] = []  # owed records published: a commit is due
        self._run_rows: list[tuple[str, tuple[object, ...]]] = []  # runs, timeline: statements
        self._run_id: int | None = None  # this run's row in `runs`, once begun
        # Hears once why the run's rows could not be written; None: they are not recorded.
        self._on_run_rows_dropped: Callable[[str], None] | None = None
        self._waiters: list[asyncio.Future[None]] = []
        # Records whose row's write is queued: a final one is published and handed to the
        # kernel just before the commit that settles its row, a stop or hold once it is in.
        self._published: list[tuple[Callable[[Record], None], Record]] = []
        self._records_out: Callable[[], bool | None] = _all_out  # see write_records_first
        self._records_fd: int | None = None  # --output FILE's: its size is kept at each commit
        # Where the records of a commit that failed are kept for the resume (`unsettled`).
        self._unsettled: unsettled.Reserved | None = None
        self._finals_owed = False  # the commit's records not taken by the output (flush failed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._commit_due: asyncio.Handle | None = None  # the commit of what is queued
        self._syncer: _WalSyncer | None = None  # fsyncs the WAL in a thread of its own
        self._syncing: asyncio.Future[None] | None = None  # the fsync running: done when it ends
        self._syncing_waiters: list[asyncio.Future[None]] = []  # the marks it makes durable
        self._checkpointer: _Checkpointer | None = None
        # The file this run opened and the name SQLite keeps its WAL beside (`_hold`); None for
        # a dry run's view, which holds nothing.
        self._opened: _Opened | None = None
        self._moved_said = False  # the run heard that the journal left that name
        self.error: sqlite3.Error | None = None
        self._closed = False
        self._on_error: Callable[[str], None] = lambda message: None
        self.resume = ResumeState(0, 0)

    @classmethod
    def open(
        cls, path: str, params: CampaignParams, *, retry_unknown: bool = False, fsync: bool = True
    ) -> Journal:
        """Lock the journal, check the campaign, and load what earlier runs settled.

        With `fsync` (the default) each `inflight` mark is on disk when `inflight` returns; without
        it, in the OS's cache only (it survives the process, not a power cut or an OS crash).
        Raises JournalError when the journal is in use, unreadable, or holds this campaign with
        other parameters.
        """
        _check_regular(path)
        lock = _Lock.take(_lock_path(path), path)
        try:
            if os.path.exists(path):
                lock.hold_file(path)  # before SQLite opens it through this name
                _check_opened_as(path, params.name)  # read only, before SQLite writes through it
            connection = _connect(path)
            try:
                lock.hold_file(path)  # a journal SQLite just made
                journal = cls(path, connection, lock, params, retry_unknown, fsync)
                journal._check_campaign()
                journal._load_prior()
                journal._adopt_unsettled()
                journal._hold()
            except sqlite3.Error as exc:  # a damaged journal, a full disk
                connection.close()
                raise _unusable(path, exc) from exc
            except BaseException:
                connection.close()
                raise
        except BaseException:
            lock.release()
            raise
        return journal

    @classmethod
    def peek(
        cls, path: str, params: CampaignParams, *, retry_unknown: bool = False
    ) -> Journal | None:
        """The journal as `open` would find it, for a dry run; None when there is none yet.

        Nothing is written or created and no lock is taken: a lock held by a run is refused as
        `open` refuses it (JournalError), as are an unreadable journal and other parameters.
        """
        if not os.path.exists(path):
            return None
        _check_regular(path)
        _Lock.probe(_lock_path(path), path)
        _Lock.probe(_file_lock_path(path), path)
        _check_opened_as(path, params.name)
        try:
            connection = _connect_read_only(path)
        except sqlite3.Error as exc:
            raise _unusable(path, exc) from exc
        try:
            if not {"campaigns", "rows"} <= _tables(connection):
                connection.close()
                return None  # an empty file: the real run makes it a journal
            journal = cls(path, connection, _Lock(None), params, retry_unknown, read_only=True)
            journal._check_campaign()
            journal._load_prior()
        except sqlite3.Error as exc:
            connection.close()
            raise _unusable(path, exc) from exc
        except BaseException:
            connection.close()
            raise
        return journal

    # --- resume decisions (event loop) ------------------------------------------------------

    def admit(self, item: Message | Record) -> Record | None:
        """The record for a row an earlier run settled, or None when this run must handle it.

        Raises InputChanged when the row (by the fingerprint `item` carries) is not the one the
        journal recorded for its line, unless no request was made for that line's row (it failed
        or was skipped before sending): this row is then sent in its place, unless a request
        went to its number before (a row moved there from another line).
        """
        line = item.line
        if line < len(self._prior_states) and self._prior_states[line]:
            if self._prior_fingerprints[line] != item.fingerprint:
                if not self._prior_unsent[line]:
                    raise InputChanged(self._changed_text(line))
                if isinstance(item, Message) and self._was_requested(item.to):
                    raise InputChanged(self._moved_text(line))
                self._taken.add(line)  # a new row at a line that sent nothing
                return None
            state = _STATES[self._prior_states[line]]
            if self._is_settled(state, line):
                if line in self._interrupted:
                    self._taken.add(line)  # written again, as unknown
                    return _found_in_flight(item, self._prior_senders.get(line, item.sender))
                if line in self._owed and not self._read_only:
                    self._repaying.add(line)  # its settle forgets the debt (`_settle_write`)
                    return self._owed_record(item, state)
                return self._already_settled(item, state)
        self._taken.add(line)
        return None

    def _already_settled(self, item: Message | Record, state: RowState) -> Record:
        """The record of a row an earlier run settled, carrying what the journal holds of its
        outcome (message ids, price): the whole record again, should that run's have been lost
        to a power cut (a run whose records could not be written keeps its rows owed instead:
        `_owed_record`). Read when asked: one row a line, by its key. `attempts` and
        `latency_ms` stay this run's (none)."""
        ids: tuple[str, ...] = ()
        price = None
        if state is not RowState.SKIPPED:  # a skip had no request: nothing to read
            found = self._connection.execute(
                "SELECT message_ids, price FROM rows WHERE campaign = ? AND line = ?",
                (self._params.name, item.line),
            ).fetchone()
            if found is not None:
                ids, price = tuple(found[0].split()), _decimal(found[1])
        return _already_settled(item, state, self._settled_sender(item), ids, price)

    def _owed_record(self, item: Message | Record, state: RowState) -> Record:
        """The final record of a row an earlier run settled but could not write (its output
        failed): the record that run would have printed, from what the journal holds of the
        row (status, attempts, message ids, price, latency, error), not `already_settled`.
        Read when asked: one row a line, by its key."""
        found = self._connection.execute(
            "SELECT attempts, message_ids, price, latency_ms, error_kind, error_code, "
            "error_message, segments, encoding, plain_segments, sender FROM rows "
            "WHERE campaign = ? AND line = ?",
            (self._params.name, item.line),
        ).fetchone()
        if found is None:  # never so: a settled row has its row
            return self._already_settled(item, state)
        attempts, ids, price, latency_ms, kind, code, message, segments, encoding = found[:9]
        plain_segments, sender = found[9:]
        error = None if kind is None else RowError(ErrorKind(kind), code or "", message or "")
        return Record(
            item.line, item.to, Status(state.value), item.client_ref, attempts,
            tuple(ids.split()), segments, None if encoding is None else Encoding(encoding),
            price=_decimal(price), latency_ms=latency_ms, error=error,
            fingerprint=item.fingerprint, plain_segments=plain_segments, sender=sender,
        )  # fmt: skip

    def _settled_sender(self, item: Message | Record) -> str | None:
        """The sender a pool run recorded for a settled row (its record names it); None
        without a pool. Read when asked: a resume of a pool campaign reads one row a line."""
        if item.sender is None:
            return None
        found = self._connection.execute(
            "SELECT sender FROM rows WHERE campaign = ? AND line = ?",
            (self._params.name, item.line),
        ).fetchone()
        return found[0] if found and found[0] else item.sender

    @property
    def has_prior(self) -> bool:
        """Whether an earlier run of this campaign left rows."""
        return any(self._prior_states)

    def check_input(self, rows: Iterable[InputRow]) -> None:
        """Raise InputChanged at the first row that differs from the one recorded (a pass over
        the whole input before anything is sent), unless its line sent nothing."""
        states, fingerprints, unsent = (
            self._prior_states,
            self._prior_fingerprints,
            self._prior_unsent,
        )
        other_rows = 0  # rows other than those recorded, at lines that sent nothing
        for row in rows:
            line = row.line
            if line >= len(states):
                break
            if states[line] and fingerprints[line] != row.fingerprint():
                if not unsent[line]:
                    raise InputChanged(self._changed_text(line))
                other_rows += 1
        # They were counted settled; this run handles them.
        self.resume = replace(self.resume, settled=self.resume.settled - other_rows)

    def _changed_text(self, line: int) -> str:
        return (
            f"line {line} of the input differs from the row the journal recorded for campaign "
            f"'{self._params.name}' ({self.path}); resume with the same input (a row that was "
            f"not sent may change, one that was may not). {NEW_CAMPAIGN_ADVICE}"
        )

    def _moved_text(self, line: int) -> str:
        return (
            f"line {line} of the input differs from the row the journal recorded for campaign "
            f"'{self._params.name}' ({self.path}), and an earlier run made a request to its "
            f"number: rows moved between lines; resume with the same input. "
            f"{NEW_CAMPAIGN_ADVICE}"
        )

    def _was_requested(self, number: str) -> bool:
        """Whether an earlier run of the campaign made a request to `number` (at any line)."""
        if self._requested_numbers is None:
            self._requested_numbers = _requested_numbers(self._connection, self._params.name)
        if not (number.isascii() and number.isdigit()):
            return False  # not a number a request could go to
        numbers, wanted = self._requested_numbers, int(number)
        at = bisect.bisect_left(numbers, wanted)
        return at < len(numbers) and numbers[at] == wanted

    def _is_settled(self, state: RowState, line: int) -> bool:
        if state in (RowState.PENDING, RowState.INFLIGHT):
            return False
        if state is RowState.UNKNOWN:
            return not self._retry_unknown
        return state is not RowState.FAILED or line not in self._retryable_failures

    # --- writes (event loop, committed there or in the writer thread) -----------------------

    def start(self, on_error: Callable[[str], None] = lambda message: None) -> None:
        """Start committing; call from the running event loop.

        `on_error` hears once that a commit failed: the run must stop. Later writes are
        dropped (records still reach the output); `inflight` raises, so nothing more is sent.
        """
        self._on_error = on_error
        loop = self._loop = asyncio.get_running_loop()

        def moved() -> None:  # called from the checkpointer's thread
            with contextlib.suppress(RuntimeError):  # the loop closed without closing us
                loop.call_soon_threadsafe(self._heard_moved)

        self._checkpointer = _Checkpointer(self.path, opened=self._opened, moved=moved)
        if self._fsync:
            self._syncer = _WalSyncer(self.path, self._loop, self._synced)

    def write_records_first(self, flush: Callable[[], bool | None], records_fd: int | None) -> None:
        """Call `flush` (write the records published so far to the file or pipe: write(2)) just
        before each commit that settles rows, after publishing their final records: once the
        journal holds a row settled, its record is in the kernel, which a process killed after
        cannot take back. So a killed run never leaves a row settled without its record, which
        a resume (`--only-new` the more) would print only as `already_settled`.

        `flush` returns False when the records could not be written (a full disk, a closed
        pipe: the run stops): the commit settles the rows all the same (their requests are
        over) and keeps them owed (`records_owed`), as it does every later commit's, so the
        resume writes each one's final record rather than `already_settled` or nothing.

        `records_fd`, the descriptor of the records' file (--output FILE, or the file stdout
        appends to), else None: each such commit keeps the size FILE has once its records are
        in, so the records a run killed between the flush and the commit left past it are
        found by the resume (`adopt_records`) instead of recorded again. Written now: a run to
        a pipe leaves no size of another run's FILE behind. Call before the run's first
        commit."""
        self._records_out = flush
        name = self._params.name
        if not unsettled.holds_other(self.path, name):
            self._unsettled = unsettled.Reserved.make(self.path, name, self._fsync)
        connection = self._connection
        if records_fd is None or not stat.S_ISREG(os.fstat(records_fd).st_mode):
            connection.execute("DELETE FROM records_out WHERE campaign = ?", (name,))
            return
        self._records_fd = records_fd
        found = os.fstat(records_fd)
        connection.execute(
            "INSERT OR REPLACE INTO records_out (campaign, device, inode, size) "
            "VALUES (?, ?, ?, ?)",
            (name, found.st_dev, found.st_ino, found.st_size),
        )

    def adopt_records(self, path: str) -> int:
        """Settle the rows found in flight whose records a killed run wrote to `path` (--output,
        appended to by this run) past the size the journal kept at its last commit: their
        commit never came, but their records are out, so the resume gives them no second
        record (`unknown`) but takes their outcome. Before `start`; returns the rows settled so.

        Only a complete line counts (a record cut short is dropped as the file is opened), only
        a final record (not a stop or a hold, not `already_settled`), and only for a row the
        journal holds in flight with the record's number and client ref."""
        if self._read_only or not (self._interrupted or self._owed):
            return 0
        kept = self._connection.execute(
            "SELECT device, inode, size FROM records_out WHERE campaign = ?", (self._params.name,)
        ).fetchone()
        if kept is None:
            return 0
        device, inode, size = kept
        try:
            with open(path, "rb") as handle:
                found = os.fstat(handle.fileno())
                past = found.st_size - size
                if (found.st_dev, found.st_ino) != (device, inode) or not 0 < past <= _LONGEST_TAIL:
                    return 0
                handle.seek(size)
                tail = handle.read(past)
        except OSError:
            return 0
        self._forget_written(tail)
        return self._adopt(tail)

    def _adopt_unsettled(self) -> None:
        """Settle the rows whose records a run whose commit failed kept beside the journal
        (`unsettled`), durably, then remove what kept them."""
        try:
            kept = unsettled.read(self.path, self._params.name)
        except OSError as exc:
            raise JournalError(
                f"{self.path}: cannot read the records its last run kept when the journal could "
                f"not be written ({exc.strerror or exc}); without them a resume would record "
                "those rows unknown (or resend them with --retry-unknown): make the file "
                "readable and run again"
            ) from exc
        if not kept:
            return
        owed = [text for text in kept.split(b"\n") if text.startswith(unsettled.OWED)]
        out = b"".join(text + b"\n" for text in kept.split(b"\n")[:-1] if text not in owed)
        forgot = self._forget_written(out)
        adopted = self._adopt(out)
        if owed:  # records the output did not take: the rows are settled, and owed
            owed_tail = b"".join(text.removeprefix(unsettled.OWED) + b"\n" for text in owed)
            adopted += self._adopt(owed_tail, owed=True)
        if (adopted or forgot) and self._fsync:
            try:
                fd = os.open(files.wal_path(self.path), os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise JournalError(self._error_text(exc)) from exc
        unsettled.remove(self.path)

    def _forget_written(self, tail: bytes) -> int:
        """Forget the debts of the owed rows whose final record is among the complete record
        lines of `tail`: records a run wrote out in part before its output failed (the flush
        that failed wrote some of them), which FILE past the size kept at the last flush that
        worked holds, or which a failed commit kept (`unsettled`). The debts forgotten."""
        if not self._owed:
            return 0
        name = self._params.name
        written: list[int] = []
        for text in tail.split(b"\n")[:-1]:  # complete lines only
            try:
                fields = json.loads(text)
            except ValueError:
                continue
            if not isinstance(fields, dict) or fields.get("line") not in self._owed:
                continue
            line, error = fields["line"], fields.get("error")
            kind = error.get("kind") if isinstance(error, dict) else None
            if type(line) is not int or kind in _NOT_ADOPTED_KINDS:
                continue
            row = self._connection.execute(
                "SELECT state, to_number, client_ref FROM rows WHERE campaign = ? AND line = ?",
                (name, line),
            ).fetchone()
            found = (fields.get("status"), fields.get("to"), fields.get("client_ref"))
            if row is not None and found == tuple(row):
                written.append(line)
        if not written:
            return 0
        connection = self._connection
        connection.execute("BEGIN")
        try:
            connection.executemany(_PAID, [(name, line) for line in written])
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        self._owed.difference_update(written)
        self.resume = replace(self.resume, owed=len(self._owed))
        return len(written)

    def _adopt(self, tail: bytes, *, owed: bool = False) -> int:
        """Settle the rows in flight that the record lines in `tail` give an outcome (see
        `adopt_records`); the rows settled so. `owed`: records that never reached the output,
        whose rows are kept owed in the same commit (`records_owed`)."""
        name = self._params.name
        connection = self._connection
        outcomes: dict[int, tuple[RowState, tuple[object, ...]]] = {}
        for text in tail.split(b"\n")[:-1]:  # complete lines only
            adopted = self._adoptable(text)
            if adopted is not None:
                line, state, outcome = adopted
                outcomes[line] = (state, outcome)
        if not outcomes:
            return 0
        now_s = time.time()
        connection.execute("BEGIN")
        try:
            for line, (state, outcome) in outcomes.items():
                connection.execute(
                    _ADOPT, (_TEXT[state], *outcome, now_s, name, line, RowState.INFLIGHT.value)
                )
            if owed:
                connection.executemany(_OWE, [(name, line) for line in outcomes])
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        settled = 0
        for line, (state, outcome) in outcomes.items():
            self._interrupted.discard(line)
            self._prior_states[line] = _STATE_CODES[state]
            self._prior_unsent[line] = outcome[0] == 0 and state in _ENDED_UNSENT
            if state is RowState.FAILED and outcome[4] == ErrorKind.EXHAUSTED.value:
                self._retryable_failures.add(line)
            elif self._is_settled(state, line):
                settled += 1
        if owed:
            self._owed.update(outcomes)
        self.resume = replace(
            self.resume,
            settled=self.resume.settled + settled,
            were_inflight=self.resume.were_inflight - len(outcomes),
            owed=len(self._owed),
        )
        return len(outcomes)

    def _adoptable(self, text: bytes) -> tuple[int, RowState, tuple[object, ...]] | None:
        """The line, final state and outcome (`_outcome`'s columns) a record's JSON line gives
        a row the journal holds in flight; None when it gives none."""
        try:
            fields = json.loads(text)
        except ValueError:
            return None
        if not isinstance(fields, dict):
            return None
        line, status, error = fields.get("line"), fields.get("status"), fields.get("error")
        if type(line) is not int or line not in self._interrupted:
            return None
        if status not in _ADOPTED_STATUSES or not (error is None or isinstance(error, dict)):
            return None
        kind = None if error is None else error.get("kind")
        if kind in _NOT_ADOPTED_KINDS or (kind is None) != (status == Status.SENT.value):
            return None
        row = self._connection.execute(
            "SELECT to_number, client_ref FROM rows WHERE campaign = ? AND line = ? AND state = ?",
            (self._params.name, line, RowState.INFLIGHT.value),
        ).fetchone()
        if row is None or (fields.get("to"), fields.get("client_ref")) != tuple(row):
            return None
        ids, price = fields.get("message_ids"), fields.get("price")
        attempts, latency = fields.get("attempts"), fields.get("latency_ms")
        if not (isinstance(ids, list) and all(isinstance(i, str) for i in ids)):
            return None
        if type(attempts) is not int or not (price is None or isinstance(price, str)):
            return None
        if not (latency is None or isinstance(latency, (int, float))):
            return None
        outcome = (
            attempts, " ".join(ids), price, latency,
            kind, None if error is None else error.get("code"),
            None if error is None else error.get("message"),
        )  # fmt: skip
        return line, RowState(status), outcome

    def inflight(self, message: Message, attempt: int) -> asyncio.Future[None]:
        """Mark the row in flight: done once that is on disk (in the OS's cache with
        fsync=False), and the request may then leave. Raises JournalError when nothing can be
        written any more.

        A future, not a coroutine: one object a row, where the engine awaits it."""
        if self.error is not None:
            raise JournalError(self._error_text(self.error))
        self._marked.add(message.line)
        self._put_nowait(self._marks, self._message_row(message, RowState.INFLIGHT, attempt))
        assert self._loop is not None  # _put_nowait checked it
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        return waiter

    def retrying(self, message: Message, attempts: int) -> None:
        """The last request was not accepted (a retry waits, or the run stops): pending again,
        unless an earlier run left the row unknown (it may have been sent then)."""
        state = self._stopped_state(message.line)
        self._put_nowait(self._marks, self._message_row(message, state, attempts))

    def settle(self, record: Record, publish: Callable[[Record], None]) -> None:
        """Write a row's final record (a stopped row pending, with why it stopped), and
        `publish` the record with that write: a final record just before the commit, and
        flushed to the kernel (`write_records_first`), so the journal never holds a row settled
        whose record a killed run lost; a stop or a hold once the commit is in (the row stays
        pending or in flight: its record says which, and the resume gives it its final one).
        A run killed between the flush and the commit (the commit's own fraction of a
        millisecond) leaves the record out and the row in flight: the resume records it
        `unknown` beside it and does not resend it (unless --retry-unknown), as for a request
        whose answer came as the run was killed.

        A row an earlier run left unknown that this run skips without a request (its number
        opted out since, or is suppressed) stays unknown, and its record says so: a skip would
        claim it was not sent, and the earlier request may have sent it."""
        if record.status is Status.SKIPPED and self._maybe_sent_before(record):
            record = _still_unknown(record)
        if not self._settle_write(record):
            publish(record)  # nothing to wait for
        elif self.error is None:
            self._published.append((publish, record))
        elif not _final_in_journal(record):
            publish(self._left_as_found(record))  # stopped, or held: the resume settles it
        # Else the journal can no longer settle the row: its record is left to the resume,
        # which reports what the journal holds (unknown, for a row marked in flight), so the
        # row still ends with one final record, not this one and then the resume's.

    def _maybe_sent_before(self, record: Record) -> bool:
        """Whether an earlier run's request for this row, which this run took on again
        (--retry-unknown), may have sent it: the row was unknown, or in flight at a crash."""
        kind = record.error.kind if record.error else None
        return (
            record.line in self._taken
            and kind is not ErrorKind.ALREADY_SETTLED
            and _final_in_journal(record)
            and self._stopped_state(record.line) is RowState.UNKNOWN
        )

    def _settle_write(self, record: Record) -> bool:
        """Queue the write of a row's final record; False when the record changes nothing."""
        line = record.line
        if record.error is not None and record.error.kind is ErrorKind.ALREADY_SETTLED:
            return False
        if line in self._repaying:
            # An earlier run's final record, written now: the row stays as the journal holds
            # it, and the commit just after the record is out forgets the debt.
            self._repaying.discard(line)
            self._put_nowait(self._repaid, (line,))
            return True
        if not _final_in_journal(record):
            # (Held for quiet hours, a row is pending too: the next run judges it again.)
            # Never accepted: pending, so the resume sends it, and `report` counts it as the
            # records do. Only rows this run took on are written: a row an earlier run settled,
            # or one whose input differs from the journal's, keeps its row as it is.
            written = line in self._marked or line in self._taken
            if written:
                self._put_nowait(self._batch, self._record_row(record, self._stopped_state(line)))
            self._marked.discard(line)
            self._taken.discard(line)
            return written
        state = _FINAL_STATES[record.status]
        if line in self._marked:
            # Its row exists (marked in flight): an UPDATE of what changed costs less.
            self._marked.discard(line)
            if record.error is None:
                self._put_nowait(self._clean_updates, self._clean_update(record, state))
            else:
                self._put_nowait(self._updates, self._settled_update(record, state))
        else:
            self._put_nowait(self._batch, self._record_row(record, state))
        self._taken.discard(line)
        return True

    # --- the run's own rows (runs, timeline): they join the next commit, no one waits ---------

    def begin_run(
        self, started_at_s: float, settings_json: str, on_dropped: Callable[[str], None]
    ) -> None:
        """Record that this run started, with its settings (JSON, no secrets in it).

        The run's rows never stop the ledger: if they cannot be written (a `runs` or `timeline`
        table of another shape, say), `on_dropped` hears why once and no more are recorded."""
        self._on_run_rows_dropped = on_dropped
        try:
            (last,) = self._connection.execute("SELECT MAX(id) FROM runs").fetchone()
        except sqlite3.Error as exc:
            self._drop_run_rows(exc)
            return
        self._run_id = (last or 0) + 1  # the lock keeps other runs of this journal out
        self._queue_run_row(
            _RUN_STARTED, (self._run_id, self._params.name, started_at_s, settings_json)
        )

    def record_second(self, second: TimelineSecond) -> None:
        """Record one second of the run (after `begin_run`)."""
        self._queue_run_row(_SECOND, (self._run_id, *astuple(second)))

    def end_run(self, ended_at_s: float, exit_code: int | None) -> None:
        """Record how this run ended (after `begin_run`)."""
        self._queue_run_row(_RUN_ENDED, (ended_at_s, exit_code, self._run_id))

    def _queue_run_row(self, statement: str, values: tuple[object, ...]) -> None:
        if self._loop is None:
            raise RuntimeError("Journal.start() was not called")
        if self.error is None and self._on_run_rows_dropped is not None:
            self._run_rows.append((statement, values))
            self._commit_soon(self._loop)

    def _stopped_state(self, line: int) -> RowState:
        # A row unknown from an earlier run (taken on again by --retry-unknown) that this run
        # stopped before resending stays unknown: it may have been sent.
        prior = self._prior_states[line] if line < len(self._prior_states) else 0
        return RowState.UNKNOWN if prior == _STATE_CODES[RowState.UNKNOWN] else RowState.PENDING

    async def close(self) -> None:
        """Commit what is queued, stop committing, release the lock; later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._commit_due is not None:
                self._commit_due.cancel()
                self._commit_due = None
            await self._commit_all()
            if self._checkpointer is not None:
                await asyncio.to_thread(self._checkpointer.stop)
        finally:
            if self._syncer is not None:
                # Blocking, for one fsync at most (when this task was cancelled while waiting
                # for it): the file must not close under the syncer.
                self._syncer.stop()
            try:
                try:
                    self._let_go()
                finally:
                    self._connection.close()
                    if self._unsettled is not None:
                        self._unsettled.close()
            finally:
                self._lock.release()

    # --- the journal's name: SQLite keeps the WAL beside it ---------------------------------

    def _hold(self) -> None:
        """Record in the database file itself the name this run opened it by, and the file's
        identity (`opened_as`), checkpointed into the file at once: a journal renamed or copied
        after this run was killed carries it without the WAL, and the next run through the new
        name finds it (`_check_opened_as`). Blocking, at open (one checkpoint: it also moves a
        killed run's WAL into the file)."""
        real_path = os.path.realpath(self.path)
        found = os.stat(real_path)
        self._opened = _Opened(real_path, found.st_dev, found.st_ino)
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        holder = f"pid {os.getpid()} on {socket.gethostname()} since {started}"
        self._connection.execute(
            "INSERT OR REPLACE INTO opened_as (only, path, device, inode, holder) "
            "VALUES (1, ?, ?, ?, ?)",
            (real_path, found.st_dev, found.st_ino, holder),
        )
        # Busy (a reader held on for the busy timeout): the record is in the WAL only until the
        # checkpointer's next pass, a second or so.
        self._connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()

    def _heard_moved(self) -> None:
        """The checkpointer found the journal's name no longer leads to the file this run
        opened (called on the loop): the run stops; `_let_go` makes the file whole as it ends."""
        if self._closed or self._moved_said or self._opened is None:
            return
        self._moved_said = True
        self._on_error(self._renamed_text(self._opened))

    def _renamed_text(self, opened: _Opened) -> str:
        now = _name_now(opened)
        if now is None:
            return (
                f"{self.path}: the journal is no longer at {opened.path}, the name this run "
                "opened it by (renamed or removed while the run held it); SQLite keeps its "
                "write-ahead log beside that name, so the run stops, and as it ends writes that "
                "log into the file it opened: resume with --journal and the journal's new name"
            )
        if not now:
            return (
                f"{self.path}: the journal was removed while this run held it; the run stops. "
                "The records written say what it sent: a run with a new journal sends every "
                "row of the input again, so give it only the rows not sent yet"
            )
        return (
            f"{self.path}: the journal was renamed to {now} while this run held it; SQLite "
            f"keeps its write-ahead log beside the name the run opened it by ({opened.path}), "
            f"so the run stops, and as it ends writes that log into {now}: resume with "
            f"--journal {now}"
        )

    def _let_go(self) -> None:
        """As the run ends: clear `opened_as` (unless records are kept beside the journal for
        the resume: `unsettled`), and when the journal's name no longer leads to the file
        (renamed while the run held it), write the WAL into the file through this connection,
        which reads it by its open descriptor: SQLite's own close leaves a moved database's
        WAL where it is, and a run through the new name would not read it. A rename the
        checkpointer had not noticed yet stops the run here all the same (exit 4, with the
        name to resume with).

        Raises JournalError when the WAL of a renamed journal cannot be written into it."""
        opened = self._opened
        if opened is None:
            return
        if self.error is None and not (self._unsettled is not None and self._unsettled.kept):
            # Else the record stays: a run through another name is refused while the WAL or
            # the kept records are beside this one, a run through this name reads them.
            with contextlib.suppress(sqlite3.Error):
                self._connection.execute("DELETE FROM opened_as")
        if opened.still_there():
            return  # SQLite's close writes the WAL into the file, as ever
        try:
            busy = self._connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            why = "another connection kept reading it" if busy else ""
        except sqlite3.Error as exc:
            why = str(exc)
        if not why:
            if not self._moved_said:
                self._moved_said = True
                self._on_error(self._renamed_text(opened))
            return
        now = _name_now(opened) or "the new name"
        raise JournalError(
            f"{self.path}: the journal was renamed while this run held it, and its last commits "
            f"could not be written into it ({why}): they are in {opened.path}-wal. Rename the "
            f"journal back to {opened.path} and resume with that name, or move "
            f"{opened.path}-wal beside it as {now}-wal"
        )

    async def drain(self) -> None:
        """Commit what is queued and wait for it: every record settled so far is published."""
        if self._commit_due is not None:
            self._commit_due.cancel()
            self._commit_due = None
        await self._commit_all()

    async def _commit_all(self) -> None:
        self._commit()
        while self._syncing is not None:
            # Its done callback (_synced) runs before this task resumes: it commits what was
            # queued meanwhile, and starts the next fsync if marks wait for one.
            await asyncio.wait([self._syncing])

    # --- internals --------------------------------------------------------------------------

    def _put_nowait(self, queued: list[tuple[object, ...]], values: tuple[object, ...]) -> None:
        if self._loop is None:
            raise RuntimeError("Journal.start() was not called")
        if self.error is None:  # after a failed commit the run is stopping: nothing is kept
            queued.append(values)
            self._commit_soon(self._loop)

    def _commit_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        """Commit on the next turn of the loop (every write queued until then joins it); while
        an fsync runs, when it ends (`_synced`)."""
        if self._commit_due is None and self._syncing is None:
            self._commit_due = loop.call_soon(self._commit)

    def _error_text(self, error: sqlite3.Error | OSError) -> str:
        return f"{self.path}: cannot write the journal ({error})"

    def _commit(self) -> None:
        """Commit what is queued, on the loop; marks then wait for an fsync of the WAL. Not
        while one runs: `_synced` calls again when it ends."""
        self._commit_due = None
        if self._syncing is not None:
            return
        queued = (self._marks, self._batch, self._updates, self._clean_updates)
        if not any(queued) and not self._run_rows and not self._repaid:
            return
        waiters, published = self._waiters, self._published
        self._forget_queued()
        # Final records go out inside the commit, before its COMMIT; the others once it is in.
        finals, published = _finals_apart(published)
        error, committing = self._write(*queued, functools.partial(self._records_first, finals))
        paid, self._paying = self._paying, []
        owed, self._finals_owed = self._finals_owed, False
        if error is not None:
            # A failed COMMIT comes after the finals were published: they are kept (marked owed
            # when the output did not take them either).
            unkept = self._keep_unsettled(finals, owed=owed) if committing and finals else 0
            self._committed(waiters, published, error, unkept)
            return
        self._owed.difference_update(paid)
        if self._syncer is None:
            self._committed(waiters, published, None)
            return
        self._committed([], published, None)  # settled rows need the commit, not the fsync
        if waiters:
            self._start_sync(waiters)

    def _records_first(self, finals: list[tuple[Callable[[Record], None], Record]]) -> None:
        """Publish the final records of the rows the commit settles and flush them to the
        kernel, its statements run and its COMMIT next (see `write_records_first`).

        One flush a commit: a write(2) for the records of a turn of the loop. A flush that
        fails stops the run (exit 4, `records_output.on_output_error`); the commit still
        settles the rows (their requests are over) and keeps them owed, as every later
        commit keeps its own: the records of that flush may be out in part, the later ones are
        not. The resume writes each owed row's final record (`_owed_record`), except those
        FILE holds whole past the size kept at the last flush that worked, which is why that
        size is not moved by a flush that failed (`_forget_written`). A commit whose
        statements fail publishes none of them: they are left to the resume."""
        if not finals:
            return
        for publish, record in finals:
            publish(record)
        name, connection = self._params.name, self._connection
        if self._records_out() is False:
            self._finals_owed = True  # kept owed, then
            connection.executemany(_OWE, [(name, record.line) for _, record in finals])
            return
        if self._owed:  # a record owed by an earlier run, or a row's new final one: paid
            self._paying = [record.line for _, record in finals if record.line in self._owed]
            connection.executemany(_PAID, [(name, line) for line in self._paying])
        if self._records_fd is not None:  # the size past which the records are not settled
            size = os.fstat(self._records_fd).st_size
            connection.execute(_RECORDS_OUT_SIZE, (size, name))

    def _keep_unsettled(
        self, finals: list[tuple[Callable[[Record], None], Record]], *, owed: bool
    ) -> int:
        """The commit settling the rows of these records failed after they were published:
        keep them for the resume, which takes them as the rows' outcomes (`unsettled`); `owed`
        when the output failed to take them first, so the resume writes them too. How many
        found no room, and will have a second record (`unknown`) from the resume: none with
        --output FILE, whose records the resume reads back (`adopt_records`), nor of records
        the output did not take (their one record is then that `unknown`)."""
        prefix = unsettled.OWED if owed else b""
        lines = [prefix + json_line(record) for _, record in finals]
        kept = 0 if self._unsettled is None else self._unsettled.keep(lines)
        return 0 if owed or self._records_fd is not None else len(lines) - kept

    def _start_sync(self, waiters: list[asyncio.Future[None]]) -> None:
        """fsync the WAL in the syncer: it covers every commit written so far."""
        assert self._loop is not None
        assert self._syncer is not None
        self._syncing = self._loop.create_future()
        self._syncing_waiters = waiters
        self._syncer.sync()

    def _synced(self, error: sqlite3.Error | None) -> None:
        """The fsync ended (the syncer calls on the loop): its marks are durable, or failed."""
        assert self._syncing is not None
        self._syncing.set_result(None)
        self._syncing, waiters, self._syncing_waiters = None, self._syncing_waiters, []
        self._committed(waiters, [], error)
        if self.error is None:
            self._commit()  # what was queued meanwhile, and its marks' fsync

    def _forget_queued(self) -> None:
        """Start the next commit's lists (the queued ones are being written, or dropped)."""
        self._marks, self._batch, self._updates, self._clean_updates = [], [], [], []
        self._waiters, self._published, self._repaid = [], [], []

    def _write(
        self,
        marks: list[tuple[object, ...]],
        batch: list[tuple[object, ...]],
        updates: list[tuple[object, ...]],
        clean_updates: list[tuple[object, ...]],
        before_commit: Callable[[], None],
    ) -> tuple[sqlite3.Error | None, bool]:
        """One transaction, into the OS's cache, `before_commit` called just before its COMMIT
        (which writes the WAL). The error or None, and whether the COMMIT was reached."""
        connection = self._connection
        committing = False
        try:
            connection.execute("BEGIN")
            # Marks first: a row whole or an update may be for a row marked in this commit.
            if marks:
                connection.executemany(_MARK, marks)
            if batch:
                connection.executemany(_UPSERT, batch)
            if updates:
                connection.executemany(_SETTLE, updates)
            if clean_updates:
                connection.executemany(_SETTLE_CLEAN, clean_updates)
            run_rows, self._run_rows = self._run_rows, []
            if run_rows:
                self._write_run_rows(run_rows)
            before_commit()
            committing = True
            connection.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
            return exc, committing
        return None, committing

    def _write_run_rows(self, run_rows: list[tuple[str, tuple[object, ...]]]) -> None:
        """The run's rows, in the open transaction; if they fail, the rows written with them
        are committed without them (the run's picture never stops the ledger)."""
        connection = self._connection
        connection.execute("SAVEPOINT run_rows")
        try:
            for statement, values in run_rows:
                connection.execute(statement, values)
        except sqlite3.Error as exc:
            connection.execute("ROLLBACK TO run_rows")
            connection.execute("RELEASE run_rows")
            self._drop_run_rows(exc)
            return
        connection.execute("RELEASE run_rows")

    def _drop_run_rows(self, error: sqlite3.Error) -> None:
        """Record no more of the run's rows, and say why once."""
        on_dropped, self._on_run_rows_dropped = self._on_run_rows_dropped, None
        self._run_rows = []
        if on_dropped is not None:
            on_dropped(f"{self.path}: cannot record the run ({error})")

    def _committed(
        self,
        waiters: list[asyncio.Future[None]],
        published: list[tuple[Callable[[Record], None], Record]],
        error: sqlite3.Error | None,
        unkept: int = 0,
    ) -> None:
        """`unkept`: records of the failed commit out but not kept (`_keep_unsettled`)."""
        if error is not None:
            self.error = error
            # The run is stopping: nothing more is kept, and no mark queued meanwhile is written.
            waiters += self._waiters
            published += self._published
            self._forget_queued()
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(JournalError(self._error_text(error)))
            second = (
                f" ({unkept} of them, whose records are out, will have a second, `unknown` record)"
                if unkept
                else ""
            )
            self._on_error(
                f"{self._error_text(error)}; the rows it could not settle get their records "
                f"from the resume{second}"
            )
        else:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
        for publish, record in published:
            if error is None:
                publish(record)
            elif not _final_in_journal(record):
                publish(self._left_as_found(record))
            # A final record queued for a later commit is left to the resume, as in `settle`.
            # Those of the commit that failed are out already (`_records_first`), and kept for
            # the resume (`_keep_unsettled`), which takes them as their rows' outcomes.

    def _left_as_found(self, record: Record) -> Record:
        """A stopped row's record once the journal can no longer be written, saying what the
        resume will do with the row as the journal holds it.

        A row whose in-flight mark was committed before the write that failed (a row marked
        while it waited for its window place, or whose mark's fsync failed) stays in flight:
        the mark cannot be taken back, so the resume records the row unknown and sends it only
        with --retry-unknown, though its request never left. The record says so, rather than
        "a resume sends it" (which holds for a row the journal holds pending, or not at all)."""
        try:
            found = self._connection.execute(
                "SELECT state FROM rows WHERE campaign = ? AND line = ?",
                (self._params.name, record.line),
            ).fetchone()
        except sqlite3.Error:
            found = None  # unreadable too: the resume cannot open it either
        if found is None or found[0] != RowState.INFLIGHT.value:
            return record
        error = record.error
        assert error is not None  # a stopped row's record says why
        return replace(record, error=RowError(error.kind, error.code, _LEFT_IN_FLIGHT_TEXT))

    # The enums are bound as their text (`_TEXT`), a plain str: sqlite3 binds a str subclass
    # only after asking for an adapter, which costs about 1 µs a value (an AttributeError made
    # and cleared each time), three of them a row.

    def _message_row(self, message: Message, state: RowState, attempts: int) -> tuple[object, ...]:
        """A mark's values, for `_MARK`."""
        return (
            self._params.name, message.line, _TEXT[state],
            message.fingerprint, message.to, message.client_ref,
            message.segments, _TEXT[message.encoding], attempts,
            time.time(), message.plain_segments, message.sender,
        )  # fmt: skip

    def _settled_update(self, record: Record, state: RowState) -> tuple[object, ...]:
        return (_TEXT[state], *_outcome(record), time.time(), self._params.name, record.line)

    def _clean_update(self, record: Record, state: RowState) -> tuple[object, ...]:
        """`_settled_update` of a record without an error, for `_SETTLE_CLEAN`."""
        price = record.price
        return (
            _TEXT[state], record.attempts, " ".join(record.message_ids),
            None if price is None else str(price), record.latency_ms, time.time(),
            self._params.name, record.line,
        )  # fmt: skip

    def _record_row(self, record: Record, state: RowState) -> tuple[object, ...]:
        return (
            self._params.name, record.line, _TEXT[state], record.fingerprint, record.to,
            record.client_ref, record.segments, _TEXT[record.encoding], *_outcome(record),
            time.time(), record.plain_segments, record.sender,
        )  # fmt: skip

    def _check_campaign(self) -> None:
        params = self._params
        columns = [f.name for f in fields(CampaignParams)]
        found = self._connection.execute(
            f"SELECT {', '.join(columns)} FROM campaigns WHERE name = ?", (params.name,)
        ).fetchone()
        if found is None:
            if self._read_only:
                return
            self._connection.execute(
                f"INSERT INTO campaigns ({', '.join(columns)}, created_at) "
                f"VALUES ({', '.join('?' * len(columns))}, ?)",
                (*(getattr(params, name) for name in columns), time.time()),
            )
            return
        stored = dict(zip(columns, found, strict=True))
        differs = mismatch(stored, params.fields())
        if differs is not None:
            raise JournalError(
                f"{self.path}: campaign '{params.name}' was started with {differs.option} "
                f"{differs.recorded!r}, this run has {differs.now!r}; re-run with the "
                f"same settings. {NEW_CAMPAIGN_ADVICE}"
            )
        # The stored id keeps client refs stable across runs, whatever else derived it.
        self._params = params.with_id(stored["campaign_id"])

    def _load_prior(self) -> None:
        connection = self._connection
        name = self._params.name
        # A delivery receipt proves the provider accepted a row whose answer a run lost.
        # Read only, the rows are taken as these updates would leave them.
        delivered: set[int] = set()
        maybe_sent = (RowState.INFLIGHT, RowState.UNKNOWN)
        if self._read_only and "deliveries" in _tables(connection):
            delivered = proven_sent_lines(connection, self._params.campaign_id, maybe_sent)
        else:
            promote_proven_sent(
                connection, self._params.campaign_id, time.time(), states=maybe_sent
            )
        self._interrupted = {
            line
            for (line,) in connection.execute(
                "SELECT line FROM rows WHERE campaign = ? AND state = ?",
                (name, RowState.INFLIGHT.value),
            )
        } - delivered
        # They stay in flight in the journal until this run writes their `unknown` record (the
        # settle of `_found_in_flight`): a run stopped before its reading reaches one leaves it
        # to the next run to report, so no row ends without its record.
        settled = 0
        states, fingerprints = self._prior_states, self._prior_fingerprints
        unsent = self._prior_unsent
        for line, state, fingerprint, kind, attempts in connection.execute(
            "SELECT line, state, fingerprint, error_kind, attempts FROM rows WHERE campaign = ?",
            (name,),
        ):
            if line in delivered:
                state = RowState.SENT
            elif line in self._interrupted:
                state = RowState.UNKNOWN
            if line >= len(states):
                grow = line + 1 - len(states)
                states.extend(bytes(grow))
                unsent.extend(bytes(grow))
                fingerprints.frombytes(bytes(fingerprints.itemsize * grow))
            states[line] = _STATE_CODES[RowState(state)]
            fingerprints[line] = fingerprint
            unsent[line] = attempts == 0 and state in _ENDED_UNSENT
            if state == RowState.FAILED and kind == ErrorKind.EXHAUSTED:
                self._retryable_failures.add(line)
            elif self._is_settled(RowState(state), line) and line not in self._interrupted:
                settled += 1
        if not self._read_only:  # a dry run says `already_settled`, as it always did
            self._owed = {
                line
                for (line,) in connection.execute(
                    "SELECT line FROM records_owed WHERE campaign = ?", (name,)
                )
            }
        self.resume = ResumeState(settled, len(self._interrupted), len(self._owed))
        if "sender" in row_columns(connection):  # a journal older than pools has none
            self._prior_senders = dict(
                connection.execute(
                    "SELECT line, sender FROM rows WHERE campaign = ? AND sender IS NOT NULL "
                    "AND state IN (?, ?, ?, ?)",
                    (name, RowState.PENDING.value, RowState.INFLIGHT.value,
                     RowState.FAILED.value, RowState.UNKNOWN.value),
                )
            )  # fmt: skip

    def recorded_sender(self, line: int) -> str | None:
        """The sender a pool chose for the row in an earlier run that did not settle it: a
        resend goes from the same sender, even when the pool changed since."""
        return self._prior_senders.get(line)

    @property
    def campaign_id(self) -> str:
        return self._params.campaign_id


def _requested_numbers(connection: sqlite3.Connection, campaign: str) -> array.array[int]:
    """The numbers (E.164 digits, as integers, sorted) of a campaign's rows that had a request,
    or may have had one (in flight, unknown): 8 bytes each."""
    found = array.array("Q")
    for (number,) in connection.execute(
        "SELECT to_number FROM rows WHERE campaign = ? AND (attempts > 0 OR state IN (?, ?, ?))",
        (campaign, RowState.SENT.value, RowState.UNKNOWN.value, RowState.INFLIGHT.value),
    ):
        if number.isascii() and number.isdigit():
            found.append(int(number))
    return array.array("Q", sorted(found))


def _check_regular(path: str) -> None:
    """Refuse a journal that exists and is no regular file (a symlink to one is fine), before
    anything is created: SQLite and the lock would put their files beside it (`/dev/null` left
    `/dev/null-journal` and `/dev/null.lock`), and a device or a pipe cannot hold a journal.

    Refuse one with more than one name (a hard link) too: SQLite keeps the WAL beside the name
    it was given, and the lock is taken beside it as well, so two runs through two names would
    share one database through two WALs and two locks (each sends every row the other marked
    since it started), and a run after a killed one would not see the marks the killed one left
    in its WAL. Refused rather than locked by the file's identity: a lock could keep the first
    apart, not the second."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return  # created as a regular file
    except OSError as exc:
        raise _cannot_use(path, exc.strerror or str(exc), full=_is_full(exc)) from None
    mode = found.st_mode
    if not stat.S_ISREG(mode):
        what = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise _cannot_use(path, what)
    if found.st_nlink > 1:
        raise JournalError(
            f"{path}: the journal has {found.st_nlink} names (hard links), and SQLite keeps a "
            "write-ahead log beside each, so runs through different names could send rows "
            "twice; remove the extra links (keep the one the campaign's runs use) and run again"
        )


def _lock_path(journal_path: str) -> str:
    """The lock beside the file the journal's path leads to: two runs given two symlinks to one
    journal (or a symlink and the file) take the same lock."""
    return os.path.realpath(journal_path) + ".lock"


def _file_lock_path(journal_path: str) -> str:
    """A second lock, named by the journal file's identity (device and inode) in its directory:
    a journal renamed, or linked and its first name removed, while a run holds it keeps one
    name, which `_check_regular` lets pass, and a lock named after the new path would be another
    lock; a run through the new name would then send every row the first one marks. (Named
    beside the file, not a lock on the database file itself: closing any descriptor of it would
    drop SQLite's own locks, and on NFS an flock is a byte-range lock SQLite's would meet.)"""
    return files.by_identity(journal_path, ".lock")


@dataclass(frozen=True, slots=True)
class _Opened:
    """The file a run opened, by its identity, and the real path it opened it by: the name
    SQLite keeps its WAL beside, as long as the connection lives."""

    path: str
    device: int
    inode: int

    def still_there(self) -> bool:
        """Whether the path still leads to the file. An error other than a name gone says
        nothing of a rename: taken as still there."""
        try:
            found = os.stat(self.path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError:
            return True
        return (found.st_dev, found.st_ino) == (self.device, self.inode)


def _name_now(opened: _Opened) -> str | None:
    """Where the file a run opened is now, read from the process's own descriptors of it
    (SQLite's; Linux names each in /proc/self/fd, after any rename): its path, "" when it has no
    name left (removed), None when that cannot be told."""
    try:
        descriptors = os.listdir("/proc/self/fd")
    except OSError:
        return None
    for fd in descriptors:
        link = f"/proc/self/fd/{fd}"
        try:
            found = os.stat(link)
            if (found.st_dev, found.st_ino) != (opened.device, opened.inode):
                continue
            if found.st_nlink == 0:
                return ""
            name = os.readlink(link)
        except OSError:
            continue  # closed meanwhile
        if name.startswith("/"):
            return name
    return None


def _check_opened_as(path: str, campaign: str) -> None:
    """Refuse a journal that a run opened by another name and left its WAL beside (or records
    kept for the resume, `unsettled`): renamed or copied after that run was killed, the file
    lacks those commits, and a run through this name would send their rows again
    (`Journal._hold` writes the record, a clean end clears it). Read only: nothing is written
    through this name before the check. A record naming this very path is the usual resume
    after a kill: SQLite reads the WAL beside it."""
    real_path = os.path.realpath(path)
    try:
        connection = _connect_read_only(path)
    except sqlite3.Error:
        return  # unreadable: the open refuses it in its own words
    try:
        if "opened_as" not in _tables(connection):
            return  # a journal no run of this version held
        found = connection.execute("SELECT path, device, inode, holder FROM opened_as").fetchone()
    except sqlite3.Error:
        return
    finally:
        connection.close()
    if found is None or found[0] == real_path:
        return
    before, device, inode, holder = found
    # What the run left beside the name it opened the journal by, and where this run would
    # find it: its WAL, and the records a failed commit kept (named by the file's identity in
    # its folder: a rename within the folder keeps finding them).
    left: list[tuple[str, str]] = []
    with contextlib.suppress(OSError):
        if os.path.getsize(before + "-wal") > 0:
            left.append((before + "-wal", real_path + "-wal"))
    kept = files.named_by_identity(os.path.dirname(before), device, inode, unsettled.SUFFIX)
    kept_here = unsettled.path_of(real_path)
    if kept != kept_here and os.path.exists(kept):
        try:
            holds = bool(unsettled.read_at(kept, campaign))
        except OSError:
            holds = True  # unreadable: it may
        if holds:
            left.append((kept, kept_here or real_path + unsettled.SUFFIX))
    if not left:
        return  # ended with its WAL written into the file, or moved with it
    names_left = " and ".join(name for name, _ in left)
    moves = ", ".join(f"{name} to {here}" for name, here in left)
    try:
        _Lock.probe(before + ".lock", before)
    except JournalError:
        raise JournalError(
            f"{path}: a copy of {before}, which a run holds ({holder}): the copy lacks that "
            f"run's last commits ({names_left}), and a run through it would send their rows again; "
            f"resume with --journal {before} once that run ends"
        ) from None
    found_now = os.stat(real_path)
    renamed = (found_now.st_dev, found_now.st_ino) == (device, inode)
    what = "was renamed from" if renamed else "is a copy of (or was moved from)"
    if os.path.exists(before):
        way = f"resume with --journal {before}"
    else:
        way = f"rename it back to {before} and resume with that name, or move {moves} too"
    raise JournalError(
        f"{path}: the journal {what} {before}, whose last run did not end ({holder}): its last "
        f"commits are in {names_left}, which only a run through that name reads, so a run "
        f"through {path} would send their rows again; {way}"
    )


def _outcome(record: Record) -> tuple[object, ...]:
    """A record's outcome as the journal's columns hold it: attempts, message_ids, price,
    latency_ms, error_kind, error_code, error_message."""
    error = record.error
    return (
        record.attempts, " ".join(record.message_ids),
        None if record.price is None else str(record.price), record.latency_ms,
        _TEXT[error.kind] if error else None, error.code if error else None,
        error.message if error else None,
    )  # fmt: skip


def _already_settled(
    item: Message | Record,
    state: RowState,
    sender: str | None,
    message_ids: tuple[str, ...] = (),
    price: Decimal | None = None,
) -> Record:
    error = RowError(ErrorKind.ALREADY_SETTLED, state.value, f"{state.value} in an earlier run")
    segments = item.segments
    encoding = item.encoding
    return Record(item.line, item.to, Status.SKIPPED, item.client_ref, 0, message_ids, segments,
                  encoding, price=price, error=error, fingerprint=item.fingerprint,
                  plain_segments=item.plain_segments, sender=sender)  # fmt: skip


def _decimal(text: str | None) -> Decimal | None:
    """A price as the journal holds it (the provider's decimal string); None when it holds none
    it can read."""
    if not text:
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


def _still_unknown(record: Record) -> Record:
    """A skip of a row an earlier request may have sent, as an `unknown` record that keeps why
    this run sent nothing (`opted_out`, `suppressed`)."""
    error = record.error
    assert error is not None  # a skip always says why
    why = error.message.removesuffix("; not sent")
    text = f"{why}; not resent, but an earlier run's request may have sent it"
    return replace(record, status=Status.UNKNOWN, error=RowError(error.kind, error.code, text))


def _found_in_flight(item: Message | Record, sender: str | None) -> Record:
    """A row an earlier run left in flight: reported unknown by this run, once, naming the
    sender its request may have left from."""
    error = RowError(ErrorKind.AMBIGUOUS, "interrupted", _INTERRUPTED_TEXT)
    return Record(
        item.line, item.to, Status.UNKNOWN, item.client_ref, 0, (), item.segments, item.encoding,
        error=error, fingerprint=item.fingerprint, plain_segments=item.plain_segments,
        sender=sender,
    )  # fmt: skip


def _connect_read_only(path: str) -> sqlite3.Connection:
    """A connection that writes nothing and creates no file: without a WAL (the last run closed
    it) the file is read as it is; with one (a run was killed) through it, as `open` would."""
    mode = "mode=ro" if os.path.exists(path + "-wal") else "immutable=1"
    uri = f"file:{urllib.request.pathname2url(os.path.abspath(path))}?{mode}"
    connection = sqlite3.connect(uri, uri=True, isolation_level=None)
    try:
        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error:
        connection.close()
        raise
    check_version(connection)
    return connection


def _tables(connection: sqlite3.Connection) -> set[str]:
    return {name for (name,) in connection.execute("SELECT name FROM sqlite_master")}


def _unusable(path: str, exc: sqlite3.Error) -> JournalError:
    return _cannot_use(path, str(exc), full=_is_full(exc))


def _cannot_use(
    path: str, why: str, *, full: bool = False, what: str = "cannot use it as a journal"
) -> JournalError:
    """The refusal of a journal that cannot be opened, and the ways on.

    Another journal, or none, knows nothing of the rows this one recorded: a run with either
    sends every row of its input again. When this one holds rows, the advice says so (as the
    refusal of another campaign's settings does); when the disk is full, it says to free space
    first, after which this journal serves again."""
    text = f"{path}: {what} ({why}); "
    if full:
        text += "free space on its filesystem (or raise the file size limit) and run again"
        if not _holds_rows(path):
            return JournalError(text + ", or give another --journal PATH or --no-journal")
        return JournalError(
            text + ": it knows what earlier runs sent. Another --journal PATH or --no-journal "
            "would send every row of the input again: give such a run only the rows not sent "
            "yet (the earlier runs' records say which)"
        )
    if not _holds_rows(path):
        return JournalError(text + "give another --journal PATH or --no-journal")
    return JournalError(
        text + "another --journal PATH or --no-journal knows nothing of the rows earlier runs "
        "sent, and would send every row of the input again: give such a run only the rows not "
        "sent yet (the earlier runs' records say which)"
    )


def _holds_rows(path: str) -> bool:
    """Whether a journal (or its WAL) at `path` may hold rows: it exists and is not empty."""
    for name in (path, path + "-wal"):
        try:
            if os.path.getsize(name) > 0:
                return True
        except OSError:
            pass
    return False


def _is_full(exc: sqlite3.Error | OSError) -> bool:
    """Whether a failure is a full disk (or quota, or the file size limit): freeing space fixes
    it."""
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    return exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _connect(path: str) -> sqlite3.Connection:
    try:
        connection = connect(path)
        # Checkpoints fsync: _Checkpointer runs them off the event loop.
        connection.execute("PRAGMA wal_autocheckpoint = 0")
        return connection
    except sqlite3.Error as exc:
        raise _unusable(path, exc) from exc


class _Lock:
    """An exclusive lock on a file next to the journal: one run at a time per journal.

    flock is released by the OS when its process dies, however it dies, so a lock left by a
    killed run never blocks the next one; the file only says who holds it.
    """

    def __init__(self, handle: TextIO | None) -> None:
        self._handle = handle  # None: a dry run's, which holds nothing
        self._file_handle: TextIO | None = None  # the lock by the file's identity

    def hold_file(self, journal_path: str) -> None:
        """Also take the lock named by the journal file's identity (`_file_lock_path`), once the
        file exists: refused as in use when a run holds it through another name."""
        if self._file_handle is not None:
            return
        handle = _open_lock(_file_lock_path(journal_path), journal_path)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise _in_use(
                journal_path, "under another name: renamed or linked while that run held it"
            ) from None
        self._file_handle = handle

    @classmethod
    def take(cls, lock_path: str, journal_path: str) -> _Lock:
        handle = _open_lock(lock_path, journal_path)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            raise _in_use(journal_path, holder) from None
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {started}\n")
            handle.flush()
        except OSError as exc:  # a full disk: the lock is not kept, nothing was written
            with contextlib.suppress(OSError):  # its buffer cannot be flushed either
                handle.close()
            raise _cannot_use(
                journal_path,
                exc.strerror or str(exc),
                full=_is_full(exc),
                what="cannot write its lock file",
            ) from exc
        return cls(handle)

    @staticmethod
    def probe(lock_path: str, journal_path: str) -> None:
        """Raise what `take` raises when a run holds the lock; creates nothing and holds nothing.

        A shared lock is taken and dropped at once: a run that starts in that instant is refused
        as if another run held the journal, never let in beside one."""
        try:
            handle = open(lock_path)  # noqa: SIM115 (closed below)
        except OSError:
            return  # no lock file: no run ever held this journal
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                raise _in_use(journal_path, handle.read().strip()) from None

    def release(self) -> None:
        if self._file_handle is not None:
            self._file_handle.close()
            self._file_handle = None
        if self._handle is None:
            return
        with contextlib.suppress(OSError):
            self._handle.truncate(0)
        self._handle.close()  # closing releases the flock


def _open_lock(lock_path: str, journal_path: str) -> TextIO:
    """A lock file, opened (made when missing) to be locked and written; refused as the journal
    that cannot be used when it cannot be (a read-only folder, a full disk)."""
    try:
        return open(lock_path, "a+")  # closed by the lock's release
    except OSError as exc:
        raise _cannot_use(
            journal_path,
            exc.strerror or str(exc),
            full=_is_full(exc),
            what="cannot create its lock file",
        ) from exc


def _in_use(journal_path: str, holder: str) -> JournalError:
    return JournalError(
        f"{journal_path} is in use by another sms-blaster run ({holder or 'another process'}); "
        "wait for it to finish or stop it"
    )


class _WalSyncer:
    """fsyncs a journal's WAL in a thread of its own, one fsync at a time, and tells the loop
    when each ends (`synced(error)`, error None when it worked).

    A thread of its own, not an executor's: a pool's future and the asyncio future chained to
    it cost the loop two turns and a dozen Python calls an fsync, at hundreds of fsyncs a
    second; here the loop puts one item on a queue and hears back in one callback.
    """

    def __init__(
        self,
        path: str,
        loop: asyncio.AbstractEventLoop,
        synced: Callable[[sqlite3.Error | None], None],
    ) -> None:
        self._path = path
        self._loop = loop
        self._synced = synced
        self._wanted: queue.SimpleQueue[bool] = queue.SimpleQueue()  # False: stop
        self._wal_fd: int | None = None
        self._thread = threading.Thread(target=self._run, name="sms-blaster-journal", daemon=True)
        self._thread.start()

    def sync(self) -> None:
        """Start an fsync covering every commit written so far (one at a time)."""
        self._wanted.put(True)

    def stop(self) -> None:
        """Blocking: end the thread (after the fsync running, if one is) and close the WAL."""
        self._wanted.put(False)
        self._thread.join()
        if self._wal_fd is not None:
            os.close(self._wal_fd)

    def _run(self) -> None:
        while self._wanted.get():
            try:
                error = self._sync_wal()
            except Exception as exc:  # not ours: the marks' waiters must hear all the same
                error = sqlite3.Error(f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(RuntimeError):  # the loop closed without closing us
                self._loop.call_soon_threadsafe(self._synced, error)

    def _sync_wal(self) -> sqlite3.Error | None:
        """Blocking: the WAL's written frames on disk. The error, or None."""
        try:
            if self._wal_fd is None:
                # The WAL exists once a commit wrote it, and stays the same file while the
                # journal's connection is open (a checkpoint writes it again from its start).
                # Its directory entry is made durable once, as SQLite does for a new file.
                # SQLite names it after the file a symlinked path leads to.
                wal = files.wal_path(self._path)
                self._wal_fd = os.open(wal, os.O_RDONLY | os.O_CLOEXEC)
                files.sync_directory(os.path.dirname(wal))
            os.fdatasync(self._wal_fd)
        except OSError as exc:
            return sqlite3.OperationalError(f"cannot fsync the journal's WAL: {exc}")
        return None


class _Checkpointer:
    """Moves the WAL into the database file now and then, from a thread of its own.

    Commits on the event loop never fsync (WAL, synchronous=NORMAL: those that do run in the
    journal's writer thread); the checkpoint does, so it runs here, where a slow disk cannot
    stall the loop. PASSIVE never blocks the writer, but it
    never lets the WAL start over either: a writer that commits on every turn of the loop always
    has frames the checkpoint has not copied yet, so the WAL (and its index, mapped into memory)
    would grow with every row, about 1 kB a row (a gigabyte for a million rows). Once it holds
    `restart_frames`, a RESTART checkpoint follows the PASSIVE one: it holds the writer only while
    it copies the few frames written since and fsyncs, and the next commit writes the WAL from its
    start again. Measured at full speed: a restart every few seconds, and the commit that meets
    one takes 2-5 ms instead of 0.2 ms.
    """

    def __init__(
        self,
        path: str,
        interval_s: float = 1.0,
        restart_frames: int = 4096,
        *,
        opened: _Opened | None = None,
        moved: Callable[[], None] = lambda: None,
    ) -> None:
        self._path = path
        self._interval_s = interval_s
        self._restart_frames = restart_frames
        # The file a sending run opened: at each pass, one stat says whether the journal's
        # name still leads to it, and `moved` hears once (from this thread) when it does not.
        self._opened = opened
        self._moved = moved
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="sms-blaster-checkpoint", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        # Opened by name, but never made: a plain connect would create an empty database at a
        # name the journal was renamed from.
        uri = f"file:{urllib.request.pathname2url(os.path.abspath(self._path))}?mode=rw"
        try:
            connection = sqlite3.connect(uri, uri=True, isolation_level=None)
        except sqlite3.Error:
            self._moved()  # no file at the name any more
            return
        with contextlib.closing(connection):
            if not self._still_there():
                self._moved()
                return  # another file at the name: not this run's to checkpoint
            # Short: while RESTART waits for a reader (`report`), it holds up the writer.
            connection.execute("PRAGMA busy_timeout = 20")
            told = False
            while not self._stopped.wait(self._interval_s):
                if not told and not self._still_there():
                    told = True
                    self._moved()
                # After a rename too: this connection reads the WAL, and writes the file, by
                # the descriptors it opened, so the run's commits keep reaching the file.
                with contextlib.suppress(sqlite3.Error):
                    self.checkpoint(connection)

    def _still_there(self) -> bool:
        """Whether the journal's name still leads to the file the run opened (one stat)."""
        return self._opened is None or self._opened.still_there()

    def checkpoint(self, connection: sqlite3.Connection) -> None:
        """Copy the WAL into the database; start it over once it is long."""
        _, frames, _ = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if frames >= self._restart_frames:
            # Busy (a reader held on): it acted as PASSIVE; the next interval tries again.
            connection.execute("PRAGMA wal_checkpoint(RESTART)")

    def stop(self) -> None:
        """Blocking: end the thread."""
        self._stopped.set()
        self._thread.join()


def _finals_apart(
    published: list[tuple[Callable[[Record], None], Record]],
) -> tuple[
    list[tuple[Callable[[Record], None], Record]], list[tuple[Callable[[Record], None], Record]]
]:
    """The final records (published before the commit), and the stops and holds (after)."""
    if all(_final_in_journal(record) for _, record in published):
        return published, []  # the usual case: one pass, no new lists
    finals = [item for item in published if _final_in_journal(item[1])]
    return finals, [item for item in published if not _final_in_journal(item[1])]


def _all_out() -> bool:
    """Records published without a file to flush (a journal's own tests): all out."""
    return True


def _final_in_journal(record: Record) -> bool:
    """Whether the record settles its row for good: not a stop or a hold (the row stays
    pending, and a resume sends it)."""
    kind = record.error.kind if record.error else None
    return kind is not ErrorKind.STOPPED and kind is not ErrorKind.QUIET_HOURS
