"""The opt-out list in a journal (the `optouts` table): written by the receiver, `optouts` and a
send answered 21610; read by every run given `--optouts JOURNAL`.

One entry per number, replaced only by a change that supersedes it (`OptOut.supersedes`), in one
transaction per batch. Each change takes the next `seq`: write transactions take turns, so `seq`
grows in the order changes are committed and a reader follows them from the last one it saw
(`changes_since`) without reading the whole list again.
"""

from __future__ import annotations

import os
import sqlite3
import urllib.request
from collections.abc import Iterable, Sequence

from sms_blaster.errors import JournalError
from sms_blaster.journal.schema import check_version, connect
from sms_blaster.optouts.model import Changes, OptOut

_SELECT = "SELECT number, opted_out, at, source, reason FROM optouts"
_UPSERT = """
INSERT INTO optouts (number, opted_out, at, source, reason, seq)
VALUES (?, ?, ?, ?, ?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM optouts))
ON CONFLICT (number) DO UPDATE SET
    opted_out = excluded.opted_out, at = excluded.at, source = excluded.source,
    reason = excluded.reason, seq = excluded.seq
"""


class NotAJournal(JournalError):
    """The file is no journal, or one SQLite cannot read (not a database, damaged): the wrong
    file was named, so a usage error where it is named; while a run follows the list, a failure
    to read it like any other."""

    exit_code = 2


class OptOutJournal:
    """The opt-out list of the journal at `path`, on one connection (use it from one thread at a
    time). `open` creates the table when missing; `open_read_only` reads a journal another
    process writes, and finds an empty list in one written before the table existed."""

    __slots__ = ("_connection", "_has_table", "path")

    def __init__(self, connection: sqlite3.Connection, path: str, has_table: bool) -> None:
        self._connection = connection
        self._has_table = has_table
        self.path = path

    @classmethod
    def open(cls, path: str, *, durable: bool = False) -> OptOutJournal:
        """For writing; `durable`: each commit fsynced (what an acknowledgement waits for)."""
        try:
            connection = connect(path)
            if durable:
                connection.execute("PRAGMA synchronous = FULL")
        except sqlite3.Error as exc:
            raise JournalError(f"{path}: cannot open the opt-out list ({exc})") from exc
        return cls(connection, path, has_table=True)

    @classmethod
    def open_read_only(cls, path: str, *, follow: bool = True) -> OptOutJournal:
        """`follow`: to see what other processes commit later (SQLite then creates the WAL's
        files beside a journal that has none); without it (a dry run) nothing is created."""
        mode = "mode=ro" if follow or os.path.exists(path + "-wal") else "immutable=1"
        uri = f"file:{urllib.request.pathname2url(os.path.abspath(path))}?{mode}"
        try:
            # Used from whichever thread reads next (one at a time).
            connection = sqlite3.connect(
                uri, uri=True, isolation_level=None, check_same_thread=False
            )
            connection.execute("PRAGMA busy_timeout = 5000")
            check_version(connection)
            tables = {
                name
                for (name,) in connection.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                    " AND name IN ('optouts', 'rows', 'receipts')"
                )
            }
        except sqlite3.Error as exc:
            raise _failure(path, exc) from exc
        if not tables:
            connection.close()
            raise NotAJournal(
                f"{path}: not a journal or an opt-out list (an SQLite database without their "
                "tables); give the receiver's store or an exported list"
            )
        return cls(connection, path, has_table="optouts" in tables)

    def record(self, changes: Iterable[OptOut]) -> int:
        """Apply changes in one transaction; how many changed the list (the others were older
        than its entries, already there, or caused by an inbound message applied before: a
        retried or replayed callback, whatever time it was received at)."""
        try:
            return _record(self._connection, changes)
        except sqlite3.Error as exc:
            raise JournalError(f"{self.path}: cannot write the opt-out list ({exc})") from exc

    def changes_since(self, seq: int) -> Changes:
        """The numbers whose entry changed after `seq` (0: all of them)."""
        if not self._has_table:
            return Changes(frozenset(), frozenset(), seq)
        try:
            rows = self._connection.execute(
                "SELECT number, opted_out, seq FROM optouts WHERE seq > ?", (seq,)
            ).fetchall()
        except sqlite3.Error as exc:
            raise _failure(self.path, exc) from exc
        out = frozenset(int(number) for number, opted_out, _ in rows if opted_out)
        back_in = frozenset(int(number) for number, opted_out, _ in rows if not opted_out)
        return Changes(out, back_in, max((row[2] for row in rows), default=seq))

    def entries(self, *, opted_out_only: bool = False) -> list[OptOut]:
        """Every entry, by number; only the numbers out with `opted_out_only`."""
        if not self._has_table:
            return []
        where = " WHERE opted_out = 1" if opted_out_only else ""
        try:
            rows = self._connection.execute(f"{_SELECT}{where} ORDER BY number").fetchall()
        except sqlite3.Error as exc:
            raise _failure(self.path, exc) from exc
        return [_entry(row) for row in rows]

    def close(self) -> None:
        self._connection.close()


_NOT_A_JOURNAL = frozenset({"SQLITE_NOTADB", "SQLITE_CORRUPT"})


def _failure(path: str, exc: sqlite3.Error) -> JournalError:
    """What a failed read says: the file's own fault (not a database, damaged) or the moment's
    (locked, busy: a run following the list tries again)."""
    if getattr(exc, "sqlite_errorname", None) in _NOT_A_JOURNAL:
        return NotAJournal(
            f"{path}: cannot read it as a journal ({exc}); give the receiver's store or an "
            "exported list"
        )
    return JournalError(f"{path}: cannot read the opt-out list ({exc})")


def _record(connection: sqlite3.Connection, changes: Iterable[OptOut]) -> int:
    changed = 0
    connection.execute("BEGIN IMMEDIATE")
    try:
        for change in changes:
            if change.message and not _first_time(connection, change.message):
                continue  # applied already: a retry, or a replayed request
            row = connection.execute(f"{_SELECT} WHERE number = ?", (change.number,)).fetchone()
            if row is not None:
                current = _entry(row)
                if current == change or not change.supersedes(current):
                    continue
            connection.execute(
                _UPSERT,
                (change.number, int(change.opted_out), change.at_s, change.source, change.reason),
            )
            changed += 1
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    return changed


def _first_time(connection: sqlite3.Connection, message: str) -> bool:
    """Remember an inbound message as applied; whether it was not before."""
    cursor = connection.execute(
        "INSERT OR IGNORE INTO optout_messages (message) VALUES (?)", (message,)
    )
    return cursor.rowcount == 1


def _entry(row: Sequence[object]) -> OptOut:
    number, opted_out, at_s, source, reason = row
    return OptOut(str(number), bool(opted_out), float(str(at_s)), str(source), str(reason))
