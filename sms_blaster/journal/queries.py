"""The reads behind `report`: one summary per campaign, aggregated in SQL.

Every query runs in one read transaction, so a report taken while a run is writing (WAL) is a
consistent snapshot. Memory stays flat for any journal size: the aggregates are computed by
SQLite, and the percentiles are picked out of a sort that SQLite runs, not Python.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from sms_blaster.errors import JournalError, UsageError
from sms_blaster.html_report.figures import BIN_BASE_MS, BIN_RATIO, DELIVERY_BASE_S
from sms_blaster.journal.schema import SCHEMA_VERSION, RowState, connect, row_columns
from sms_blaster.lookalikes import cost_saved, saved_and_added
from sms_blaster.models import ErrorKind
from sms_blaster.providers.names import canonical, receipts_per_part

_PERCENTILES = (0.5, 0.9, 0.99)

# The primary result codes that mean "could not read it now", as opposed to "it is no journal".
_ACCESS_ERRORS = frozenset({"BUSY", "LOCKED", "CANTOPEN", "PERM", "IOERR", "NOMEM", "AUTH"})


@dataclass(frozen=True, slots=True)
class StateCounts:
    """Journal rows by state: every input row a run read has one; rows not read yet have none."""

    sent: int = 0
    failed: int = 0
    unknown: int = 0
    skipped: int = 0
    inflight: int = 0
    pending: int = 0
    stopped: int = 0  # of the pending rows: a run stopped before they were accepted

    @property
    def total(self) -> int:
        return self.sent + self.failed + self.unknown + self.skipped + self.inflight + self.pending


@dataclass(frozen=True, slots=True)
class ErrorCount:
    kind: str
    code: str
    count: int


@dataclass(frozen=True, slots=True)
class MinuteCount:
    """Rows sent in the minute starting at `minute_s` (unix seconds, a multiple of 60)."""

    minute_s: int
    sent: int


@dataclass(frozen=True, slots=True)
class LatencyPercentiles:
    """Exact nearest-rank percentiles of the sent rows' request latency."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float


@dataclass(frozen=True, slots=True)
class DeliveryFunnel:
    """What the delivery receipts say about the sent rows.

    A row counts as sent when the journal says so or when a receipt proves it (a row left
    `unknown` or `inflight` by a run that lost the answer). It is delivered when every part is,
    failed when any part failed, expired when none failed and any expired (its validity period
    ran out), and pending otherwise (no final receipt yet).
    """

    sent: int
    delivered: int
    failed: int
    with_receipts: int  # sent rows with at least one receipt
    errors: tuple[ErrorCount, ...]  # failed rows by the provider's status and error code
    expired: int = 0

    @property
    def pending(self) -> int:
        return self.sent - self.delivered - self.failed - self.expired


@dataclass(frozen=True, slots=True)
class SenderCount:
    """The rows a pool's sender sent (--from-pool), and their segments."""

    sender: str
    sent: int
    segments: int


@dataclass(frozen=True, slots=True)
class CampaignSummary:
    """What one campaign's journal rows add up to."""

    name: str
    campaign_id: str
    input: str
    sender: str
    provider: str
    created_at_s: float
    rows: StateCounts
    errors: tuple[ErrorCount, ...]  # most frequent first
    segments_sent: int
    cost: Decimal  # every priced row, including failed rows with some parts accepted
    first_sent_at_s: float | None
    last_sent_at_s: float | None
    sent_per_minute: tuple[MinuteCount, ...]  # minutes with no send are absent
    latency: LatencyPercentiles | None  # None when no sent row has a latency
    delivery: DeliveryFunnel | None = None  # None until a receipt for the campaign arrives
    last_line: int | None = None  # the last input row a run read; None when none was
    texts_changed: int = 0  # sent rows whose text smart encoding changed
    segments_saved: int = 0  # by smart encoding, over the sent rows
    cost_saved: Decimal = Decimal(0)  # the same, priced at each row's own price a segment
    sent_by_sender: tuple[SenderCount, ...] = ()  # a pool's senders, most sent first
    segments_added: int = 0  # by smart encoding `always` (kept apart from the parts saved)
    cost_added: Decimal = Decimal(0)  # the same, priced at each row's own price a segment

    @property
    def duration_s(self) -> float | None:
        """From the first send to the last."""
        if self.first_sent_at_s is None or self.last_sent_at_s is None:
            return None
        return self.last_sent_at_s - self.first_sent_at_s

    @property
    def sent_rate_per_s(self) -> float | None:
        """Sent rows per second between the first send and the last."""
        duration_s = self.duration_s
        return self.rows.sent / duration_s if duration_s else None


def load_summaries(path: str, campaign: str | None = None) -> list[CampaignSummary]:
    """One summary per campaign in the journal at `path` (oldest first), or only `campaign`.

    Raises UsageError when the file or the campaign does not exist, JournalError when the file
    is not a readable journal.
    """
    with open_campaigns(path, campaign) as (connection, campaigns):
        return [_summarise(path, connection, *row) for row in campaigns]


@contextlib.contextmanager
def open_campaigns(
    path: str, campaign: str | None = None
) -> Iterator[tuple[sqlite3.Connection, list[CampaignRow]]]:
    """The journal at `path` read in one transaction (every query sees the same snapshot), and
    its campaigns (oldest first), or only `campaign`. The block's sqlite3 errors become
    JournalError; UsageError and JournalError as `load_summaries` says."""
    if not os.path.exists(path):
        raise UsageError(
            f"{path}: no such journal; check the path "
            "(journals are written next to the input as <input>.journal)"
        )
    if os.path.isdir(path):
        raise UsageError(f"{path}: is a directory; give the journal file (<input>.journal)")
    try:
        with contextlib.closing(connect(path, read_only=True)) as connection:
            connection.execute("BEGIN")
            _check_version(path, connection)
            yield connection, _campaign_rows(path, connection, campaign)
    except sqlite3.Error as exc:
        raise journal_error(path, exc) from exc


def journal_error(path: str, exc: sqlite3.Error) -> JournalError:
    primary = exc.sqlite_errorname.removeprefix("SQLITE_").split("_")[0]
    if primary in _ACCESS_ERRORS:
        return JournalError(f"{path}: cannot read the journal ({exc})")
    return JournalError(f"{path}: not an sms-blaster journal ({exc})")


def _check_version(path: str, connection: sqlite3.Connection) -> None:
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise JournalError(
            f"{path}: journal schema version {version} is newer than this sms-blaster "
            f"({SCHEMA_VERSION}); read it with the sms-blaster that wrote it"
        )


@dataclass(frozen=True, slots=True)
class ReceiptCounts:
    """The receipts in a file no campaign has written to: what a receiver's store holds."""

    by_delivery: tuple[tuple[str, int], ...]  # delivered, failed, expired, pending; inbound
    first_received_at_s: float | None
    last_received_at_s: float | None

    @property
    def total(self) -> int:
        return sum(count for _, count in self.by_delivery)


def load_receipt_counts(path: str) -> ReceiptCounts:
    """The receipts stored at `path`, by delivery state (most frequent first); JournalError when
    the file cannot be read. Call it after load_summaries, which checks what the file is."""
    try:
        with contextlib.closing(connect(path, read_only=True)) as connection:
            connection.execute("BEGIN")
            if not connection.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'receipts'"
            ).fetchone():  # a journal written before receipts were stored
                return ReceiptCounts((), None, None)
            by_delivery = tuple(
                connection.execute(
                    "SELECT CASE WHEN kind = 'inbound' THEN 'inbound' "
                    "ELSE COALESCE(delivery, 'pending') END AS state, COUNT(*) AS n "
                    "FROM receipts GROUP BY state ORDER BY n DESC, state"
                )
            )
            first_s, last_s = connection.execute(
                "SELECT MIN(received_at), MAX(received_at) FROM receipts"
            ).fetchone()
    except sqlite3.Error as exc:
        raise journal_error(path, exc) from exc
    return ReceiptCounts(by_delivery, first_s, last_s)


# name, campaign_id, input, sender, provider, created_at
CampaignRow = tuple[str, str, str, str, str, float]


def _campaign_rows(
    path: str, connection: sqlite3.Connection, campaign: str | None
) -> list[CampaignRow]:
    rows: list[CampaignRow] = connection.execute(
        "SELECT name, campaign_id, input, sender, provider, created_at FROM campaigns "
        "ORDER BY created_at, name"
    ).fetchall()
    if campaign is None:
        return rows
    chosen = [row for row in rows if row[0] == campaign]
    if not chosen:
        names = ", ".join(row[0] for row in rows)
        has = f"it has: {names}" if names else "it has none yet"
        raise UsageError(
            f"{path}: no campaign '{campaign}' in this journal ({has}); "
            "give one of those to --campaign, or leave it out to report them all"
        )
    return chosen


def _summarise(
    path: str,
    connection: sqlite3.Connection,
    name: str,
    campaign_id: str,
    input_: str,
    sender: str,
    provider: str,
    created_at_s: float,
) -> CampaignSummary:
    counts: dict[str, int] = {}
    segments_sent, first_s, last_s = 0, None, None
    for state, count, segments, first, last in connection.execute(
        "SELECT state, COUNT(*), COALESCE(SUM(segments), 0), MIN(updated_at), MAX(updated_at) "
        "FROM rows WHERE campaign = ? GROUP BY state",
        (name,),
    ):
        counts[state] = count
        if state == RowState.SENT:
            segments_sent, first_s, last_s = segments, first, last
    stopped, last_line = connection.execute(
        "SELECT COALESCE(SUM(state = ? AND error_kind = ?), 0), MAX(line) FROM rows "
        "WHERE campaign = ?",
        (RowState.PENDING.value, ErrorKind.STOPPED.value, name),
    ).fetchone()
    rows = StateCounts(
        **{state.value: counts.get(state.value, 0) for state in RowState}, stopped=stopped
    )
    smart = smart_totals(path, connection, name)
    return CampaignSummary(
        name=name,
        campaign_id=campaign_id,
        input=input_,
        sender=sender,
        provider=canonical(provider),
        created_at_s=created_at_s,
        rows=rows,
        errors=_errors(connection, name),
        segments_sent=segments_sent,
        cost=campaign_cost(path, connection, name),
        first_sent_at_s=first_s,
        last_sent_at_s=last_s,
        sent_per_minute=_sent_per_minute(connection, name),
        latency=latency_percentiles(connection, name),
        delivery=delivery_funnel(
            connection, name, campaign_id, provider, counts.get(RowState.SENT.value, 0)
        ),
        last_line=last_line,
        texts_changed=smart.texts_changed,
        segments_saved=smart.segments_saved,
        cost_saved=smart.cost_saved,
        segments_added=smart.segments_added,
        cost_added=smart.cost_added,
        sent_by_sender=sent_by_sender(connection, name),
    )


def sent_by_sender(connection: sqlite3.Connection, campaign: str) -> tuple[SenderCount, ...]:
    """Sent rows per sender of a pool; none for a campaign sent with --from, or a journal
    older than pools (no `sender` column)."""
    if "sender" not in row_columns(connection):
        return ()
    return tuple(
        SenderCount(sender, count, segments)
        for sender, count, segments in connection.execute(
            "SELECT sender, COUNT(*) AS n, COALESCE(SUM(segments), 0) FROM rows "
            "WHERE campaign = ? AND state = ? AND sender IS NOT NULL "
            "GROUP BY sender ORDER BY n DESC, sender",
            (campaign, RowState.SENT.value),
        )
    )


# Parts a row's message was split into: one per recorded message id; with none recorded (a row
# a receipt proved sent), its segments for the SMS API, which answers and reports per part.
_EXPECTED_PARTS = (
    "CASE WHEN r.message_ids != '' "
    "THEN LENGTH(r.message_ids) - LENGTH(REPLACE(r.message_ids, ' ', '')) + 1 "
    "WHEN :per_part THEN COALESCE(r.segments, 1) ELSE 1 END"
)


# A row's delivery outcome from its parts' receipts: failed when a part failed, else expired
# when one expired, else delivered once every part it was split into is; NULL while pending.
_OUTCOME = (
    "CASE WHEN p.bad THEN 'failed' WHEN p.late THEN 'expired' "
    f"WHEN p.ok >= {_EXPECTED_PARTS} THEN 'delivered' END"
)


# The campaign's sent rows with receipts (also those left unknown or in flight, which a receipt
# proves sent): each row's outcome, when its last receipt arrived, when it was sent. The OFFSET
# keeps SQLite from flattening it into the query that reads it, which would compute `outcome`
# again at every use.
_ROW_OUTCOMES = (
    f"SELECT p.at, r.updated_at AS sent_at, r.state != :sent AS proved, {_OUTCOME} AS outcome "
    "FROM ("
    "  SELECT line, SUM(delivery = 'delivered') AS ok, SUM(delivery = 'failed') AS bad,"
    "  SUM(delivery = 'expired') AS late, MAX(updated_at) AS at"
    "  FROM deliveries WHERE campaign_id = :campaign_id GROUP BY line"
    ") AS p JOIN rows AS r ON r.campaign = :name AND r.line = p.line "
    "AND r.state IN (:sent, :unknown, :inflight) LIMIT -1 OFFSET 0"
)


@dataclass(frozen=True, slots=True)
class DeliveryGroup:
    """Rows with receipts of one outcome (and, on a time axis, one bucket and time to
    delivery)."""

    outcome: str | None  # delivered | failed | expired; None: pending
    bucket: int | None  # of the row's last receipt; None without an axis
    delay_bin: int | None  # of a delivered row's time from its send to that receipt
    rows: int
    proved: int  # of them, rows the journal left unknown or in flight: a receipt proved them sent


def delivery_groups(
    connection: sqlite3.Connection,
    name: str,
    campaign_id: str,
    provider: str,
    axis: tuple[float, float] | None = None,
) -> list[DeliveryGroup] | None:
    """The campaign's sent rows that have receipts, by outcome; None before its first receipt.

    With `axis` (start and width of its buckets, in seconds) also by the bucket of the row's
    last receipt and, for a delivered row, the bin (from DELIVERY_BASE_S) of its time from its
    send to that receipt. The text report's funnel and the page's delivery charts both count
    from these, by one rule.
    """
    has_table = connection.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'deliveries'"
    ).fetchone()
    if not has_table:  # a journal written before receipts were stored
        return None
    if not connection.execute(
        "SELECT 1 FROM deliveries WHERE campaign_id = ? LIMIT 1", (campaign_id,)
    ).fetchone():
        return None
    params = {
        "campaign_id": campaign_id,
        "name": name,
        "per_part": receipts_per_part(provider),
        "sent": RowState.SENT.value,
        "unknown": RowState.UNKNOWN.value,
        "inflight": RowState.INFLIGHT.value,
    }
    if axis is None:
        # Sums in one row: a GROUP BY would sort every row with receipts.
        sums = ", ".join(
            f"SUM(outcome IS {value}), SUM(outcome IS {value} AND proved)"
            for value in ("'delivered'", "'failed'", "'expired'", "NULL")
        )
        found = connection.execute(f"SELECT {sums} FROM ({_ROW_OUTCOMES})", params).fetchone()
        return [
            DeliveryGroup(outcome, None, None, found[2 * i], found[2 * i + 1])
            for i, outcome in enumerate(("delivered", "failed", "expired", None))
            if found[2 * i]
        ]
    add_ln(connection)
    delay_bin = bin_sql("at - sent_at", DELIVERY_BASE_S)
    return [
        DeliveryGroup(*group)
        for group in connection.execute(
            "SELECT outcome, CAST((at - :start) / :width AS INTEGER), CASE WHEN outcome = "
            f"'delivered' THEN {delay_bin} END, COUNT(*), SUM(proved) FROM ({_ROW_OUTCOMES}) "
            "GROUP BY 2, 3, 1",  # integers first: SQLite's sort of every row compares less text
            {**params, "start": axis[0], "width": axis[1]},
        )
    ]


def funnel_of(
    groups: Iterable[DeliveryGroup], sent_rows: int, errors: tuple[ErrorCount, ...] = ()
) -> DeliveryFunnel:
    """The funnel of `delivery_groups`, given the rows the journal says were sent."""
    outcomes: dict[str | None, int] = {}
    proved = 0
    for group in groups:
        outcomes[group.outcome] = outcomes.get(group.outcome, 0) + group.rows
        proved += group.proved
    return DeliveryFunnel(
        sent=sent_rows + proved,
        delivered=outcomes.get("delivered", 0),
        failed=outcomes.get("failed", 0),
        with_receipts=sum(outcomes.values()),
        errors=errors,
        expired=outcomes.get("expired", 0),
    )


def delivery_funnel(
    connection: sqlite3.Connection, name: str, campaign_id: str, provider: str, sent_rows: int
) -> DeliveryFunnel | None:
    """What the receipts say about the campaign's sent rows (`sent_rows` of them by the
    journal); None before its first receipt."""
    groups = delivery_groups(connection, name, campaign_id, provider)
    if groups is None:
        return None
    errors = tuple(
        ErrorCount(status, code, count)
        for status, code, count in connection.execute(
            "SELECT status, error_code, COUNT(DISTINCT line) AS n FROM deliveries "
            "WHERE campaign_id = ? AND delivery = 'failed' GROUP BY 1, 2 ORDER BY n DESC, 1, 2",
            (campaign_id,),
        )
    )
    return funnel_of(groups, sent_rows, errors)


def _errors(connection: sqlite3.Connection, campaign: str) -> tuple[ErrorCount, ...]:
    return tuple(
        ErrorCount(kind, code, count)
        for kind, code, count in connection.execute(
            "SELECT error_kind, COALESCE(error_code, ''), COUNT(*) AS n FROM rows "
            "WHERE campaign = ? AND error_kind IS NOT NULL "
            "GROUP BY 1, 2 ORDER BY n DESC, 1, 2",
            (campaign,),
        )
    )


def campaign_cost(path: str, connection: sqlite3.Connection, campaign: str) -> Decimal:
    """Every priced row's price, summed (JournalError for a price that is not a number)."""
    # Prices are decimal strings; summing them in SQL would go through floats. A campaign has
    # few distinct prices, so grouping first keeps the Python side small.
    total = Decimal(0)
    for price, count in connection.execute(
        "SELECT price, COUNT(*) FROM rows WHERE campaign = ? AND price IS NOT NULL GROUP BY price",
        (campaign,),
    ):
        total += price_of(path, campaign, price) * count
    return total


def price_of(path: str, campaign: str, price: str) -> Decimal:
    """A row's price as a number (JournalError for one that is not)."""
    try:
        return Decimal(price)
    except InvalidOperation:
        raise _bad_price(path, campaign, price) from None


def _bad_price(path: str, campaign: str, price: str) -> JournalError:
    return JournalError(
        f"{path}: campaign '{campaign}' has a price that is not a number ({price!r})"
    )


@dataclass(slots=True)
class SmartTotals:
    """Smart encoding's running totals over a campaign's sent rows."""

    texts_changed: int = 0
    segments_saved: int = 0
    cost_saved: Decimal = Decimal(0)
    segments_added: int = 0
    cost_added: Decimal = Decimal(0)


def smart_totals(path: str, connection: sqlite3.Connection, campaign: str) -> SmartTotals:
    """The sent rows smart encoding changed, and the segments and cost it saved on them, and
    added to them (`always`): none on a journal older than the column."""
    totals = SmartTotals()
    if "plain_segments" not in row_columns(connection):
        return totals
    for price, sent, plain, count in connection.execute(
        "SELECT price, segments, plain_segments, COUNT(*) FROM rows WHERE campaign = ? "
        "AND state = ? AND plain_segments IS NOT NULL GROUP BY 1, 2, 3",
        (campaign, RowState.SENT.value),
    ):
        totals.texts_changed += count
        saved, added = saved_and_added(plain - (sent or 0))
        totals.segments_saved += saved * count
        totals.segments_added += added * count
        if price is not None:
            try:
                cost_saving = cost_saved(Decimal(price), sent or 0, plain)
            except InvalidOperation:
                raise _bad_price(path, campaign, price) from None
            saved_cost, added_cost = saved_and_added(cost_saving)
            if saved_cost:  # a zero would show its exponent: 0E-8
                totals.cost_saved += saved_cost * count
            if added_cost:
                totals.cost_added += added_cost * count
    return totals


def _sent_per_minute(connection: sqlite3.Connection, campaign: str) -> tuple[MinuteCount, ...]:
    return tuple(
        MinuteCount(minute_s, sent)
        for minute_s, sent in connection.execute(
            "SELECT CAST(updated_at AS INTEGER) / 60 * 60 AS minute, COUNT(*) FROM rows "
            "WHERE campaign = ? AND state = ? GROUP BY minute ORDER BY minute",
            (campaign, RowState.SENT.value),
        )
    )


def _nearest_ranks(count: int) -> tuple[int, ...]:
    """The 1-based nearest ranks of _PERCENTILES among `count` sorted samples."""
    return tuple(max(1, math.ceil(fraction * count)) for fraction in _PERCENTILES)


def add_ln(connection: sqlite3.Connection) -> None:
    """SQLite's `ln` where it was built without its math functions (the bins need it)."""
    try:
        connection.execute("SELECT ln(2)").fetchone()
    except sqlite3.OperationalError:
        connection.create_function("ln", 1, math.log, deterministic=True)


def bin_sql(column: str, base: float) -> str:
    """The bin `figures.bin_of` puts `column` in, in SQL (NULL for NULL); needs `add_ln`."""
    return f"CAST(ln(MAX({column}, {base!r}) / {base!r}) / {math.log(BIN_RATIO)!r} AS INTEGER)"


@dataclass(frozen=True, slots=True)
class LatencyBin:
    """The sent rows whose latency falls in one bin: how many, the least and the most."""

    count: int
    min_ms: float
    max_ms: float

    def add(self, count: int, min_ms: float, max_ms: float) -> LatencyBin:
        return LatencyBin(self.count + count, min(self.min_ms, min_ms), max(self.max_ms, max_ms))


def latency_bins(connection: sqlite3.Connection, campaign: str) -> dict[int, LatencyBin]:
    """The campaign's sent rows with a latency, by latency bin."""
    add_ln(connection)
    return {
        index: LatencyBin(count, min_ms, max_ms)
        for index, count, min_ms, max_ms in connection.execute(
            f"SELECT {bin_sql('latency_ms', BIN_BASE_MS)} AS bin, COUNT(*), MIN(latency_ms), "
            "MAX(latency_ms) FROM rows WHERE campaign = ? AND state = ? "
            "AND latency_ms IS NOT NULL GROUP BY bin",
            (campaign, RowState.SENT.value),
        )
    }


def latency_percentiles(
    connection: sqlite3.Connection, campaign: str, bins: Mapping[int, LatencyBin] | None = None
) -> LatencyPercentiles | None:
    """The sent rows' exact percentiles, from their latency bins (`latency_bins`, read here
    when not given).

    Only the rows of the bins that hold the ranks are sorted, not every sent row: the bins
    are counted in order, so a rank's bin and its rank within the bin are known. That holds
    while the bins' ranges are in the bins' order (ln is monotonic); if a libm's rounding ever
    broke that, every row is sorted instead.
    """
    if bins is None:
        bins = latency_bins(connection, campaign)
    ordered = [bins[index] for index in sorted(bins)]
    if not ordered:
        return None
    ranks = _nearest_ranks(sum(one.count for one in ordered))
    chosen: dict[int, None] = {}  # the bins holding a rank, lowest first
    offsets: list[tuple[int, int]] = []  # (chosen bin's position in `ordered`, rank within it)
    below = 0
    position = 0
    for rank in ranks:
        while below + ordered[position].count < rank:
            below += ordered[position].count
            position += 1
        chosen[position] = None
        offsets.append((position, rank - below))
    if all(low.max_ms < high.min_ms for low, high in itertools.pairwise(ordered)):
        ranges = [(ordered[position].min_ms, ordered[position].max_ms) for position in chosen]
        # A rank within the chosen bins' rows: the rows of the chosen bins below it first.
        start = {}
        seen = 0
        for position in chosen:
            start[position] = seen
            seen += ordered[position].count
        within = [start[position] + rank for position, rank in offsets]
    else:
        ranges, within = [], list(ranks)
    where = " OR ".join("latency_ms BETWEEN ? AND ?" for _ in ranges) or "latency_ms IS NOT NULL"
    by_rank = dict(
        connection.execute(
            "SELECT rank, latency_ms FROM ("
            "  SELECT latency_ms, ROW_NUMBER() OVER (ORDER BY latency_ms) AS rank FROM rows"
            f"  WHERE campaign = ? AND state = ? AND ({where})"
            f") WHERE rank IN ({', '.join('?' * len(within))})",
            (campaign, RowState.SENT.value, *itertools.chain(*ranges), *within),
        )
    )
    p50_ms, p90_ms, p99_ms = (float(by_rank[rank]) for rank in within)
    return LatencyPercentiles(p50_ms, p90_ms, p99_ms, float(max(one.max_ms for one in ordered)))
