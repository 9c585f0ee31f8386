"""Receipts in the journal: store each callback once, and tie delivery states to campaign rows.

Two connections, each used from one thread at a time: the inserts, which acknowledgements wait
for, on one whose every commit is fsynced (synchronous=FULL, set once); the rest (correlation,
marks, reads) on another with synchronous=NORMAL, which in WAL mode does not fsync at commit (the
WAL is synced at checkpoints, and the next insert syncs it too). So an acknowledgement never waits
behind the fsync of a correlation, and no transaction changes a connection's level. A crash of
the machine may undo the last of those: they are redone from the stored receipts (`processed` and
`applied` stay 0). Their write transactions take turns on a lock of this process, not on SQLite's
busy handler, which sleeps a millisecond or more before it looks again.

Storing (`insert`) is what a callback's acknowledgement waits for: one transaction per batch,
duplicates (the provider retries for up to 72 h) ignored by the unique key. The rest comes after
and may lag, in two independent steps, each with its flag:

    applied     `apply` tied the receipt to its campaign row: it wrote the message part's latest
                delivery state and promoted an `unknown` row the receipt proves was accepted
                (1); or found that row sent through another provider, or another Twilio
                account, than the receipt came from, and left the row alone for good (2,
                REFUSED: a receipt for provider X never touches a row of provider Y)
    processed   the receipt was emitted and its hook ended (`mark_processed`); until then a
                start of the receiver hands it to the hook again (`to_process`)
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Concatenate, ParamSpec, TypeVar

from sms_blaster.errors import JournalError
from sms_blaster.journal.deliveries import promote_proven_sent, record_deliveries
from sms_blaster.journal.schema import connect
from sms_blaster.journal.store import _check_regular as check_regular
from sms_blaster.journal.store import _Checkpointer as Checkpointer
from sms_blaster.models import Delivery, Receipt, ReceiptKind, StoredReceipt
from sms_blaster.prepare import parse_client_ref
from sms_blaster.providers.names import ProviderName, canonical

_COLUMNS = (
    "provider, kind, message_id, status, error_code, delivery, to_number, sender, client_ref, "
    "price, event_at, payload"
)
_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_KEY = "provider, kind, message_id, status, error_code"  # what makes a callback a duplicate
_INSERT = f"INSERT OR IGNORE INTO receipts ({_COLUMNS}, received_at, applied) VALUES {_ROW}"
# A batch in one statement: one step of SQLite (each gives up and takes back the GIL), not one a
# row; its id is the statement's last rowid. Larger batches are split (SQLite's default cap is
# 32,766 bound values), and each size is a statement of its own in the connection's cache.
_ROWS_A_STATEMENT = 64
# Values in one `IN (...)` list of a correlation's statements, well under SQLite's bound values.
_IN_LIST = 500
# `applied` of a receipt whose row was sent through another provider or account: never retried.
REFUSED = 2


@dataclass(frozen=True, slots=True)
class Applied:
    """What a correlation did with a batch: receipts tied to their rows, and receipts whose row
    was sent through another provider or account (kept, never applied)."""

    matched: int = 0
    refused: int = 0

    def __add__(self, other: Applied) -> Applied:
        return Applied(self.matched + other.matched, self.refused + other.refused)


P = ParamSpec("P")
T = TypeVar("T")


def _journal_errors(
    function: Callable[Concatenate[ReceiptJournal, P], T],
) -> Callable[Concatenate[ReceiptJournal, P], T]:
    def wrapper(self: ReceiptJournal, /, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return function(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise JournalError(f"{self.path}: {exc}") from exc

    return wrapper


class ReceiptJournal:
    """The receiver's side of a journal: inserts on `durable`, the rest on `after`.

    Each connection is used from one thread at a time (they may be two threads).
    """

    __slots__ = ("_after", "_checkpointer", "_durable", "_writing", "path")

    def __init__(self, durable: sqlite3.Connection, after: sqlite3.Connection, path: str) -> None:
        self._durable = durable
        self._after = after
        self._writing = threading.Lock()  # one write transaction at a time, of either connection
        self._checkpointer: Checkpointer | None = None
        self.path = path

    @classmethod
    def open(cls, path: str) -> ReceiptJournal:
        """The receiver's connections to the journal at `path` (created when missing). One that
        is no regular file, or has a second name, is refused before SQLite puts a file beside it
        (as a sending run's journal is)."""
        check_regular(path)
        try:
            durable = connect(path)
            after = connect(path)
            for connection in (durable, after):
                # A checkpoint inside an acknowledged commit would hold its callbacks for 3-6
                # ms: checkpoints run from a thread of their own, as for a sending run.
                connection.execute("PRAGMA wal_autocheckpoint = 0")
            durable.execute("PRAGMA synchronous = FULL")
            # Receipts without a client ref are matched on the message ids a run recorded: the
            # id of a single-part message, the first part's of a multi-part one (see _place).
            after.execute("CREATE INDEX IF NOT EXISTS rows_by_message_ids ON rows(message_ids)")
        except sqlite3.Error as exc:
            raise JournalError(f"{path}: cannot open the store ({exc})") from exc
        journal = cls(durable, after, path)
        journal._checkpointer = Checkpointer(path)
        return journal

    @_journal_errors
    def insert(
        self, receipts: Sequence[Receipt], received_at_s: float
    ) -> list[StoredReceipt | None]:
        """Store a batch in one transaction; None for each receipt already stored (a duplicate).

        On disk when it returns (synchronous=FULL): a callback is acknowledged after this.
        """
        with self._writing:
            return insert(self._durable, receipts, received_at_s)

    @_journal_errors
    def apply(self, batch: Sequence[StoredReceipt], now_s: float, page: int = 0) -> Applied:
        """Correlate a batch with the campaign rows and mark the matched ones applied.

        A transaction for each `page` receipts (0: one for all): an insert waits for the one
        under way only, not for the batch.
        """
        page = page or len(batch) or 1
        matched = Applied()
        for start in range(0, len(batch), page):
            with self._writing:
                matched += apply(self._after, batch[start : start + page], now_s)
        return matched

    @_journal_errors
    def mark_processed(self, ids: Sequence[int]) -> None:
        """Record that these receipts were emitted and their hooks ended."""
        with self._writing:
            mark_processed(self._after, ids)

    @_journal_errors
    def last_id(self) -> int:
        """The highest receipt id stored so far, 0 for none."""
        row = self._after.execute("SELECT MAX(id) FROM receipts").fetchone()
        return int(row[0] or 0)

    @_journal_errors
    def to_process(self, first_id: int, last_id: int, limit: int) -> list[StoredReceipt]:
        """Receipts with ids in [first_id, last_id] not processed yet, oldest first."""
        return to_process(self._after, first_id, last_id, limit)

    @_journal_errors
    def unapplied(self, after_id: int, limit: int) -> list[StoredReceipt]:
        """Processed receipts still waiting for their campaign row, from `after_id` on."""
        return unapplied(self._after, after_id, limit)

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
        self._durable.close()
        self._after.close()


def insert(
    connection: sqlite3.Connection, receipts: Sequence[Receipt], received_at_s: float
) -> list[StoredReceipt | None]:
    """Store a batch in one transaction; None for each receipt already stored (a duplicate).

    A batch of one statement's rows (the usual one) is that statement alone, its own transaction:
    SQLite begins, writes and commits (fsyncs) in one step, where BEGIN and COMMIT were two more
    steps, each a trip through the GIL for the thread that commits.
    """
    rows = [(*_values(receipt), received_at_s, int(_applied(receipt))) for receipt in receipts]
    if not rows:
        return []
    if len(rows) > _ROWS_A_STATEMENT:
        return _insert_in_statements(connection, receipts, rows, received_at_s)
    cursor = connection.execute(
        _INSERT + f", {_ROW}" * (len(rows) - 1), [value for row in rows for value in row]
    )
    return _stored(connection, receipts, cursor.rowcount, cursor.lastrowid or 0, received_at_s)


def _insert_in_statements(
    connection: sqlite3.Connection,
    receipts: Sequence[Receipt],
    rows: Sequence[tuple[object, ...]],
    received_at_s: float,
) -> list[StoredReceipt | None]:
    """A batch too long for one statement: a statement a part, in one transaction."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        added = last_id = 0
        for start in range(0, len(rows), _ROWS_A_STATEMENT):
            part = rows[start : start + _ROWS_A_STATEMENT]
            cursor = connection.execute(
                _INSERT + f", {_ROW}" * (len(part) - 1), [value for row in part for value in row]
            )
            added += cursor.rowcount
            last_id = cursor.lastrowid or 0
        stored = _stored(connection, receipts, added, last_id, received_at_s)
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    return stored


def _stored(
    connection: sqlite3.Connection,
    receipts: Sequence[Receipt],
    added: int,
    last_id: int,
    received_at_s: float,
) -> list[StoredReceipt | None]:
    """Each receipt of a batch just written as stored (its id) or a duplicate (None).

    A new row's id is the highest so far plus one (no AUTOINCREMENT), and the writes held the
    write lock: the batch's new rows have the last `added` ids, in the batch's order. When some
    were duplicates (a provider's retry, rare), the new rows' keys tell which receipts they are:
    the first of the batch with each key, in order.
    """
    first_id = last_id - added + 1
    if added == len(receipts):
        return [
            StoredReceipt(first_id + n, receipt, received_at_s, _applied(receipt))
            for n, receipt in enumerate(receipts)
        ]
    new = (
        connection.execute(
            f"SELECT id, {_KEY} FROM receipts WHERE id BETWEEN ? AND ? ORDER BY id",
            (first_id, last_id),
        ).fetchall()
        if added
        else []
    )
    stored: list[StoredReceipt | None] = []
    for receipt in receipts:
        if new and tuple(new[0][1:]) == _key(receipt):
            stored.append(StoredReceipt(new.pop(0)[0], receipt, received_at_s, _applied(receipt)))
        else:
            stored.append(None)
    return stored


def _applied(receipt: Receipt) -> bool:
    """Whether a receipt is applied once stored: an inbound message has no campaign row."""
    return receipt.kind is ReceiptKind.INBOUND


def apply(connection: sqlite3.Connection, batch: Iterable[StoredReceipt], now_s: float) -> Applied:
    """Correlate a batch with the campaign rows and mark the matched ones applied.

    A receipt that cannot be tied to a row yet (no client ref, and no recorded message id) stays
    unapplied, to be tried again: its send may not be recorded yet. A receipt whose row's
    campaign was sent through another provider (or, for Twilio, another account) than the route
    that received it is marked REFUSED and changes nothing: a forged receipt taken unsigned on
    one provider's route (`--accept-unsigned`) cannot fail or prove sent another provider's row,
    whose callbacks are signed. A statement for the batch's
    deliveries, one for each campaign's rows and one for the flags, not three a receipt: each
    statement costs the thread a trip through the GIL, which it shares with the event loop.
    """
    connection.execute("BEGIN IMMEDIATE")
    try:
        placed: list[tuple[Receipt, str, int]] = []
        ids: list[int] = []
        refused: list[int] = []
        senders: dict[str, _Sender | None] = {}
        for item in batch:
            if item.applied:
                continue
            place = _place(connection, item.receipt)
            if place is None:
                continue
            if not _same_sender(connection, item.receipt, place[0], senders):
                refused.append(item.id)
                continue
            placed.append((item.receipt, *place))
            ids.append(item.id)
        _set_applied(connection, refused, REFUSED)
        if placed:
            record_deliveries(connection, placed, now_s)
            lines: dict[str, set[int]] = {}
            for _, campaign_id, line in placed:
                lines.setdefault(campaign_id, set()).add(line)
            for campaign_id, of_campaign in lines.items():
                ordered = sorted(of_campaign)
                for start in range(0, len(ordered), _IN_LIST):
                    chunk = ordered[start : start + _IN_LIST]
                    promote_proven_sent(connection, campaign_id, now_s, lines=chunk)
            _set_applied(connection, ids, 1)
        connection.execute("COMMIT")
    except BaseException:
        _roll_back(connection)
        raise
    return Applied(len(ids), len(refused))


def _set_applied(connection: sqlite3.Connection, ids: Sequence[int], value: int) -> None:
    for start in range(0, len(ids), _IN_LIST):
        chunk = ids[start : start + _IN_LIST]
        connection.execute(
            f"UPDATE receipts SET applied = ? WHERE id IN ({', '.join('?' * len(chunk))})",
            (value, *chunk),
        )


@dataclass(frozen=True, slots=True)
class _Sender:
    """Who sent a campaign's messages, as the journal knows it: the provider, and the Twilio
    accounts its runs used (empty when none is recorded)."""

    provider: str
    accounts: frozenset[str]


def _same_sender(
    connection: sqlite3.Connection,
    receipt: Receipt,
    campaign_id: str,
    senders: dict[str, _Sender | None],
) -> bool:
    """Whether the receipt came from the provider (and account, where both are known) that sent
    the campaign `campaign_id`. A campaign this journal does not hold cannot be judged: its
    receipt is kept as before, tied to its line by the client ref alone."""
    if campaign_id not in senders:
        senders[campaign_id] = _sender(connection, campaign_id)
    sender = senders[campaign_id]
    if sender is None:
        return True
    if canonical(receipt.provider) != sender.provider:
        return False
    if receipt.provider != ProviderName.TWILIO or not sender.accounts:
        return True
    account = _payload_field(receipt.payload, "AccountSid")
    return account is None or account in sender.accounts


def _sender(connection: sqlite3.Connection, campaign_id: str) -> _Sender | None:
    found = connection.execute(
        "SELECT name, provider FROM campaigns WHERE campaign_id = ?", (campaign_id,)
    ).fetchone()
    if found is None:
        return None
    name, provider = found
    accounts = set()
    for (settings,) in connection.execute("SELECT settings FROM runs WHERE campaign = ?", (name,)):
        account = _payload_field(settings, "account_sid")
        if account:
            accounts.add(account)
    return _Sender(canonical(provider), frozenset(accounts))


def _payload_field(text: str, name: str) -> str | None:
    """A string field of a JSON object as stored (a receipt's payload, a run's settings)."""
    try:
        value = json.loads(text).get(name)
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None


def mark_processed(connection: sqlite3.Connection, ids: Sequence[int]) -> None:
    """Set `processed` on these receipts, in one transaction."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        connection.executemany(
            "UPDATE receipts SET processed = 1 WHERE id = ?", ((i,) for i in ids)
        )
        connection.execute("COMMIT")
    except BaseException:
        _roll_back(connection)
        raise


def _roll_back(connection: sqlite3.Connection) -> None:
    """Undo the transaction a failure left open, if SQLite has not undone it already (it does on
    a full disk, where a ROLLBACK of ours would fail with "no transaction is active" and hide
    the failure that matters)."""
    if connection.in_transaction:
        connection.execute("ROLLBACK")


def to_process(
    connection: sqlite3.Connection, first_id: int, last_id: int, limit: int
) -> list[StoredReceipt]:
    """Receipts with ids in [first_id, last_id] not processed yet (their hook has not ended)."""
    return _select(connection, "processed = 0 AND id BETWEEN ? AND ?", (first_id, last_id), limit)


def unapplied(connection: sqlite3.Connection, after_id: int, limit: int) -> list[StoredReceipt]:
    """Processed receipts still waiting for their row with ids above `after_id`, in id order.

    A caller pages through them with a cursor: receipts that never match (another application's
    on the same account) would otherwise fill every page and hold up the newer ones.
    """
    return _select(connection, "processed = 1 AND applied = 0 AND id > ?", (after_id,), limit)


def _place(connection: sqlite3.Connection, receipt: Receipt) -> tuple[str, int] | None:
    """The (campaign id, line) a receipt belongs to: by client ref, else by message id.

    The message id is a fallback, for receipts that come without the client ref (sms-blaster
    sends one with every message, for all three providers). A row records its parts' ids
    space-separated, and the index on that column finds a single-part message by its id and a
    multi-part one by its first part's id only: a receipt for a later part without a client ref
    stays unapplied.
    """
    place = parse_client_ref(receipt.client_ref)
    if place is not None:
        return place
    message_id = receipt.message_id
    found = connection.execute(
        "SELECT c.campaign_id, r.line FROM rows AS r JOIN campaigns AS c ON c.name = r.campaign "
        "WHERE r.message_ids = ? OR (r.message_ids > ? AND r.message_ids < ?) LIMIT 1",
        (message_id, message_id + " ", message_id + "!"),
    ).fetchone()
    return (found[0], found[1]) if found else None


def _key(receipt: Receipt) -> tuple[object, ...]:
    """The receipt's values of _KEY, the table's unique key."""
    return _values(receipt)[:5]


def _values(receipt: Receipt) -> tuple[object, ...]:
    return (
        receipt.provider,
        receipt.kind.value,
        receipt.message_id,
        receipt.status,
        receipt.error_code,
        receipt.delivery.value if receipt.delivery else None,
        receipt.to,
        receipt.sender,
        receipt.client_ref,
        receipt.price,
        receipt.event_at,
        receipt.payload,
    )


def _select(
    connection: sqlite3.Connection, where: str, args: tuple[object, ...], limit: int
) -> list[StoredReceipt]:
    return [
        StoredReceipt(
            row[0],
            Receipt(
                provider=row[1],
                kind=ReceiptKind(row[2]),
                message_id=row[3],
                status=row[4],
                error_code=row[5],
                delivery=Delivery(row[6]) if row[6] else None,
                to=row[7],
                sender=row[8],
                client_ref=row[9],
                price=row[10],
                event_at=row[11],
                payload=row[12],
            ),
            row[13],
            bool(row[14]),
        )
        for row in connection.execute(
            f"SELECT id, {_COLUMNS}, received_at, applied FROM receipts WHERE {where} "
            "ORDER BY id LIMIT ?",
            (*args, limit),
        )
    ]
