"""The journal's tables, states and connection settings.

One row per input row, keyed by campaign and line. A row that is absent was not read by any
run yet (pending). Its state then moves `inflight` (committed before the request leaves) to a
final state:

    inflight ─▶ sent | failed | unknown          skipped / failed (invalid input) without a request

A row found `inflight` when a run starts was interrupted while its request may have left: it
becomes `unknown` and is not resent unless asked (`--retry-unknown`). A row `failed` with the
error kind `exhausted` was never accepted (throttled or refused every time): a later run sends it,
as it sends a `pending` row (one the run stopped before it was accepted, error kind `stopped`).

The webhook receiver (`sms-blaster receive --store JOURNAL`) writes to the same file. `receipts`
holds every callback as it arrived, stored before it is acknowledged; `deliveries` holds the
latest delivery state of each message part, keyed by the provider's message id and tied to a row
by the client ref, so a receipt that arrives before its send is recorded still counts once the
row is written. A delivery receipt for an `unknown` row proves the request was accepted: the
row becomes `sent`.

A sending run with `--output FILE` (or a stdout appending to a file, FILE then) keeps in
`records_out` the size FILE had at each commit that settled rows, their records written just
before it: the records past it are those of the commit a killed run did not make, which the
resume takes as its rows' outcome (`adopt_records`).
A run whose records output failed (a full disk, a closed pipe) still settles the rows it was
writing the records of; `records_owed` keeps those rows, in the commit that settles them, and the
resume writes each one's final record from what `rows` holds, then forgets it.

A sending run records in `opened_as`, in the database file itself (checkpointed at its start),
the real path it opened the journal by and the file's identity, and clears it as it ends: SQLite
keeps the write-ahead log beside that name, so a run that finds the record naming another path
with a log (or kept records) beside it knows the last commits are there, not in this file
(`Journal.open` refuses it: the journal was renamed or copied after a killed run).

A sending run also keeps `runs` (when it started and ended, its exit code, its settings) and
`timeline` (a row a second: requests, throttles, the flow control's pace and limit), for
`report --html`; a dry run and a run without a journal keep neither.
"""

from __future__ import annotations

import sqlite3
from enum import StrEnum

# Tables added later (`runs`, `timeline`, `records_out`, `opened_as`, `records_owed`) leave the
# version as it is: an older sms-blaster reads and resumes a journal that has them (it ignores
# them), and a reader finds them absent in an older journal.
SCHEMA_VERSION = 3

# Columns added to `rows` after its first version, oldest first: a journal written before them
# gets them when a run opens it for writing (`connect`). A reader of an older journal that was
# not opened for writing since finds them absent (`row_columns`).
ADDED_ROW_COLUMNS: tuple[tuple[str, str], ...] = (
    ("sender", "TEXT"),  # the sender id the row was sent from when a pool chose it; NULL: --from
    (
        "plain_segments",
        "INTEGER",
    ),  # segments before smart encoding changed the text; NULL: unchanged
)


class RowState(StrEnum):
    PENDING = "pending"  # a retry waits, or the run stopped: no request of it was accepted
    INFLIGHT = "inflight"
    SENT = "sent"
    FAILED = "failed"
    UNKNOWN = "unknown"
    SKIPPED = "skipped"


SCHEMA = """
CREATE TABLE IF NOT EXISTS campaigns (
    name           TEXT PRIMARY KEY,   -- --campaign, or "default"
    campaign_id    TEXT NOT NULL,      -- the prefix of every client ref
    input          TEXT NOT NULL,      -- the input as given (absolute path, or "-")
    text           TEXT NOT NULL,      -- the --text template, or "" for a text column
    sender         TEXT NOT NULL,
    provider       TEXT NOT NULL,
    to_column      TEXT NOT NULL,
    default_region TEXT NOT NULL,      -- "" when none
    created_at     REAL NOT NULL       -- unix seconds
);
CREATE TABLE IF NOT EXISTS rows (
    campaign       TEXT NOT NULL,
    line           INTEGER NOT NULL,   -- the record's `line`
    state          TEXT NOT NULL,      -- a RowState
    fingerprint    INTEGER NOT NULL,   -- CRC-32 of the input row, to notice a changed input
    to_number      TEXT NOT NULL,      -- E.164 digits, or the value as given
    client_ref     TEXT NOT NULL,
    segments       INTEGER,
    encoding       TEXT,
    attempts       INTEGER NOT NULL,
    message_ids    TEXT NOT NULL,      -- space-separated, one per part
    price          TEXT,               -- decimal string, as the provider gave it
    latency_ms     REAL,
    error_kind     TEXT,
    error_code     TEXT,
    error_message  TEXT,
    updated_at     REAL NOT NULL,      -- unix seconds of the last change (sent row: when sent)
    sender         TEXT,               -- see ADDED_ROW_COLUMNS
    plain_segments INTEGER,
    PRIMARY KEY (campaign, line)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS receipts (
    id             INTEGER PRIMARY KEY,
    provider       TEXT NOT NULL,      -- vonage-sms | vonage-messages | twilio
    kind           TEXT NOT NULL,      -- dlr | inbound | status
    message_id     TEXT NOT NULL,      -- the provider's message id (of one part, for the SMS API)
    status         TEXT NOT NULL,      -- as the provider gave it
    error_code     TEXT NOT NULL,      -- "" when none; part of the duplicate key
    delivery       TEXT,               -- delivered | failed | expired | pending; NULL for inbound
    to_number      TEXT,               -- the recipient (for inbound: our number)
    sender         TEXT,               -- our sender id (for inbound: who wrote to us)
    client_ref     TEXT,
    price          TEXT,
    event_at       TEXT,               -- the provider's timestamp, as given
    received_at    REAL NOT NULL,      -- unix seconds
    payload        TEXT NOT NULL,      -- the fields as received (JSON), signature fields dropped
    processed      INTEGER NOT NULL DEFAULT 0,  -- emitted, and its hook ended (ran or failed)
    applied        INTEGER NOT NULL DEFAULT 0,  -- 1 tied to its row; 2 refused: the row was
                                                -- sent through another provider or account
    UNIQUE (provider, kind, message_id, status, error_code)
);
CREATE INDEX IF NOT EXISTS receipts_to_do ON receipts(id) WHERE processed = 0 OR applied = 0;
CREATE TABLE IF NOT EXISTS deliveries (
    message_id     TEXT PRIMARY KEY,   -- one per message part
    campaign_id    TEXT NOT NULL,      -- the client ref's campaign id
    line           INTEGER NOT NULL,   -- the client ref's line
    provider       TEXT NOT NULL,
    delivery       TEXT NOT NULL,      -- delivered | failed | expired | pending
    final          INTEGER NOT NULL,   -- 1 once not pending: later receipts cannot undo it
    status         TEXT NOT NULL,
    error_code     TEXT NOT NULL,
    event_at       TEXT,
    updated_at     REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_by_row ON deliveries(campaign_id, line);
CREATE TABLE IF NOT EXISTS optouts (
    number         TEXT PRIMARY KEY,   -- E.164 digits
    opted_out      INTEGER NOT NULL,   -- 1 out, 0 back in (the latest by `at` wins)
    at             REAL NOT NULL,      -- unix seconds of what caused it (the message's own time)
    source         TEXT NOT NULL,      -- inbound:<provider> | twilio-21610 | manual | import
    reason         TEXT NOT NULL,      -- the keyword, or a note
    seq            INTEGER NOT NULL    -- grows with each change: a sending run follows them
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS optouts_by_seq ON optouts(seq);
CREATE TABLE IF NOT EXISTS optout_messages (
    message        TEXT PRIMARY KEY    -- <provider>:<message id> of an inbound keyword applied
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS runs (
    id             INTEGER PRIMARY KEY,
    campaign       TEXT NOT NULL,
    started_at     REAL NOT NULL,      -- unix seconds
    ended_at       REAL,               -- NULL: still running, or killed before it could say
    exit_code      INTEGER,            -- likewise
    settings       TEXT NOT NULL       -- the run's settings as JSON, secrets left out
);
CREATE TABLE IF NOT EXISTS records_out (
    campaign       TEXT PRIMARY KEY,   -- the campaign whose last run wrote --output FILE
    device         INTEGER NOT NULL,   -- FILE's identity (st_dev, st_ino)
    inode          INTEGER NOT NULL,
    size           INTEGER NOT NULL    -- FILE's size once the last commit's records were in it
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS opened_as (
    only           INTEGER PRIMARY KEY CHECK (only = 1),  -- one row: the run holding the journal
    path           TEXT NOT NULL,      -- the real path it opened the file by (the WAL is beside it)
    device         INTEGER NOT NULL,   -- the file's identity then (st_dev, st_ino)
    inode          INTEGER NOT NULL,
    holder         TEXT NOT NULL       -- "pid N on HOST since TIME"
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records_owed (
    campaign       TEXT NOT NULL,
    line           INTEGER NOT NULL,   -- a settled row whose final record a run could not write
    PRIMARY KEY (campaign, line)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS timeline (
    run            INTEGER NOT NULL,   -- runs.id
    at             REAL NOT NULL,      -- unix seconds at the end of the second it covers
    requests       INTEGER NOT NULL,   -- requests made in it (retries too)
    throttled      INTEGER NOT NULL,   -- throttled answers in it
    sent           INTEGER NOT NULL,   -- records written in it, by status
    failed         INTEGER NOT NULL,
    in_flight      INTEGER NOT NULL,   -- at its end, as the rest
    window         INTEGER NOT NULL,
    rate_ceiling   REAL NOT NULL,      -- --rate, per second
    pace           REAL,               -- the flow control's pace per second; NULL: none
    limit_found    REAL,               -- the provider's limit per second it found; NULL: none yet
    PRIMARY KEY (run, at)
) WITHOUT ROWID;
"""


def check_version(connection: sqlite3.Connection) -> None:
    """Refuse a journal written by a newer sms-blaster (closing the connection)."""
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        connection.close()
        raise sqlite3.DatabaseError(
            f"journal schema {version} is newer than this sms-blaster's ({SCHEMA_VERSION})"
        )


def connect(path: str, *, read_only: bool = False) -> sqlite3.Connection:
    """A connection with the journal's settings; creates the tables unless `read_only`.

    WAL lets `report` read while a run writes; synchronous=NORMAL makes a commit survive the
    process being killed (the data is in the OS), fsyncing only at checkpoints. What must survive
    a power cut as well is made durable by its writer: the send journal fsyncs the WAL after
    the commit, the receipt store commits its inserts with synchronous=FULL.
    """
    if read_only:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    else:
        connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA busy_timeout = 5000")
    if not read_only:
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = NORMAL")
        check_version(connection)
        # One transaction: a new journal's tables cost the WAL one commit, not one each.
        connection.executescript(f"BEGIN;\n{SCHEMA}COMMIT;")
        _add_row_columns(connection)
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    return connection


def row_columns(connection: sqlite3.Connection) -> set[str]:
    """The columns the journal's `rows` table has (an older journal lacks the added ones)."""
    return {name for _, name, *_ in connection.execute("PRAGMA table_info(rows)")}


def _add_row_columns(connection: sqlite3.Connection) -> None:
    """Give a journal written by an older sms-blaster the columns added since, in one
    transaction (a receiver and a run opening it at once: the second finds them added)."""
    if row_columns(connection) >= {name for name, _ in ADDED_ROW_COLUMNS}:
        return
    connection.execute("BEGIN IMMEDIATE")
    try:
        present = row_columns(connection)
        for name, kind in ADDED_ROW_COLUMNS:
            if name not in present:
                connection.execute(f"ALTER TABLE rows ADD COLUMN {name} {kind}")
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
