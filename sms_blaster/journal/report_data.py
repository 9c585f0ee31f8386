"""The reads behind `report --html` on a journal: a campaign's figures in time buckets, from SQL.

Every figure is aggregated by SQLite (GROUP BY time bucket; latencies counted in log-spaced bins
per bucket, their percentiles read from the bins), so memory depends on the number of buckets,
never on the number of rows. The totals `report --json` also gives (exact latency percentiles,
the delivery funnel) come from the text report's own queries, and the cost by its rule, so the
two agree to the row.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import shlex
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol, TypeVar

from sms_blaster.html_report.figures import (
    BIN_BASE_MS,
    DELIVERY_BASE_S,
    histogram,
    percentile_of_bins,
    senders,
    setting_pairs,
    smart_encoding,
)
from sms_blaster.html_report.model import (
    JOURNAL_WORKER,
    TOTAL,
    Bucket,
    CampaignView,
    CostLine,
    Count,
    Delivery,
    HistogramBin,
    Latency,
    Outcomes,
    RunSpan,
    SenderSent,
    SmartEncoding,
    TimeAxis,
    WorkerSeries,
    choose_axis,
)
from sms_blaster.journal.queries import (
    CampaignRow,
    DeliveryFunnel,
    DeliveryGroup,
    LatencyBin,
    LatencyPercentiles,
    add_ln,
    bin_sql,
    delivery_groups,
    funnel_of,
    latency_percentiles,
    open_campaigns,
    price_of,
    sent_by_sender,
    smart_totals,
)
from sms_blaster.journal.schema import RowState, connect
from sms_blaster.providers.names import canonical

_NOT_RECORDED_RUNS = (
    "runs, throttles, the flow control's pace and limit and the --rate ceiling (this journal was "
    "written by an sms-blaster that did not record them)"
)


def load_views(path: str, campaign: str | None = None) -> list[CampaignView]:
    """One view per campaign in the journal at `path` (oldest first), or only `campaign`.

    Raises what `load_summaries` raises: UsageError for a missing file or campaign, JournalError
    for a file that is no readable journal.

    The two passes run at once, each in a thread with its own connection (SQLite runs a query
    without the interpreter's lock): the pass over the rows (outcomes, cost, latency bins) and
    the text report's own pass over the receipts (its delivery funnel); then the text report's
    exact latency percentiles, from the bins the rows pass counted. So the page and `report
    --json` agree. Each reads its own snapshot: taken while a run writes, the figures may be a
    moment apart.
    """
    with (
        open_campaigns(path, campaign) as (connection, campaigns),
        concurrent.futures.ThreadPoolExecutor(3, thread_name_prefix="sms-blaster-report") as pool,
    ):
        add_ln(connection)
        started = [_start(path, connection, pool, row) for row in campaigns]
        return [_view(path, campaign_started) for campaign_started in started]


def _reader(path: str) -> sqlite3.Connection:
    """A read-only connection in a read transaction, with `ln`."""
    connection = connect(path, read_only=True)
    try:
        add_ln(connection)
        connection.execute("BEGIN")
    except BaseException:
        connection.close()
        raise
    return connection


def _bucket_sql(column: str) -> str:
    return f"CAST(({column} - :start) / :width AS INTEGER)"


@dataclass(slots=True)
class _BucketFigures:
    """A bucket's figures as one pass fills them (each pass fills its own)."""

    sent: int = 0
    failed: int = 0
    requests: int | None = None
    throttled: int | None = None
    rate_ceiling_per_s: float | None = None
    pace_per_s: float | None = None
    limit_per_s: float | None = None
    window: int | None = None
    delivered: int = 0
    delivery_failed: int = 0
    expired: int = 0


def _bucket(
    rows: _BucketFigures, flow: _BucketFigures, receipts: _BucketFigures, bins: dict[int, int]
) -> Bucket:
    return Bucket(
        sent=rows.sent,
        failed=rows.failed,
        requests=flow.requests,
        throttled=flow.throttled,
        rate_ceiling_per_s=flow.rate_ceiling_per_s,
        pace_per_s=flow.pace_per_s,
        limit_per_s=flow.limit_per_s,
        window=flow.window,
        latency_p50_ms=percentile_of_bins(bins, 0.5, BIN_BASE_MS),
        latency_p99_ms=percentile_of_bins(bins, 0.99, BIN_BASE_MS),
        delivered=receipts.delivered,
        delivery_failed=receipts.delivery_failed,
        expired=receipts.expired,
    )


@dataclass(frozen=True, slots=True)
class _Started:
    """One campaign's reads: those done, and those running in the pool."""

    campaign: CampaignRow
    axis: TimeAxis | None
    runs: tuple[RunSpan, ...]
    flow: list[_BucketFigures]  # from the timeline
    rows: concurrent.futures.Future[_RowsPass]
    receipts: concurrent.futures.Future[list[DeliveryGroup] | None]
    recorded_runs: bool  # the journal has the runs and timeline tables
    smart_and_senders: concurrent.futures.Future[tuple[SmartEncoding, tuple[SenderSent, ...]]]


def _start(
    path: str,
    connection: sqlite3.Connection,
    pool: concurrent.futures.Executor,
    campaign: CampaignRow,
) -> _Started:
    """Read the campaign's runs, time axis and timeline; start the rest in the pool, the
    longest first."""
    name, campaign_id, _, _, provider, _ = campaign
    tables = {table for (table,) in connection.execute("SELECT name FROM sqlite_master")}
    has_runs = {"runs", "timeline"} <= tables
    runs = _runs(connection, name) if has_runs else ()
    axis = _axis(connection, name, campaign_id, runs, "deliveries" in tables)
    # Without an axis (nothing sent, no run, no receipt) the rows still have outcomes: one
    # bucket holds them, and no series is drawn.
    params: dict[str, object] = {
        "start": axis.start_s if axis else 0.0,
        "width": axis.bucket_s if axis else 1e18,
        "name": name,
        "campaign_id": campaign_id,
    }
    flow = [_BucketFigures() for _ in range(axis.buckets if axis else 1)]
    if has_runs:
        _fill_timeline(connection, params, flow)
    buckets = len(flow)
    receipts = pool.submit(
        _read, path, delivery_groups, name, campaign_id, provider,
        (params["start"], params["width"]),
    )  # fmt: skip
    rows = pool.submit(_run_pass, _RowsPass(buckets, path, name), path, params)
    smart_and_senders = pool.submit(_read, path, _smart_and_senders, path, name)
    return _Started(
        campaign, axis, runs, flow, rows, receipts, has_runs, smart_and_senders
    )  # fmt: skip


def _smart_and_senders(
    connection: sqlite3.Connection, path: str, name: str
) -> tuple[SmartEncoding, tuple[SenderSent, ...]]:
    """What smart encoding changed, and a pool's sends per sender, as `report` reads them."""
    return smart_encoding(smart_totals(path, connection, name)), senders(
        sent_by_sender(connection, name)
    )


_T = TypeVar("_T")


def _read(path: str, read: Callable[..., _T], *args: object) -> _T:
    """Blocking: `read(connection, *args)` on a connection of its own (run in the pool)."""
    with contextlib.closing(_reader(path)) as connection:
        return read(connection, *args)


class _Pass(Protocol):
    def add(self, connection: sqlite3.Connection, params: dict[str, object]) -> None: ...


_P = TypeVar("_P", bound=_Pass)


def _run_pass(found: _P, path: str, params: dict[str, object]) -> _P:
    """Blocking: `found` filled by its pass, on a connection of its own (run in the pool)."""
    with contextlib.closing(_reader(path)) as connection:
        found.add(connection, params)
    return found


def _view(path: str, started: _Started) -> CampaignView:
    name, campaign_id, _, sender, provider, _ = started.campaign
    rows = started.rows.result()
    # The exact percentiles sort only the bins that hold them: the bins come from the rows pass.
    exact_latency = _read(path, latency_percentiles, name, rows.latency_bins)
    groups = started.receipts.result()
    receipts = _Receipts(len(rows.figures), groups or ())
    outcomes = rows.outcomes()
    smart, pool_senders = started.smart_and_senders.result()
    series: tuple[WorkerSeries, ...] = ()
    if started.axis is not None:
        buckets = tuple(
            _bucket(*figures)
            for figures in zip(rows.figures, started.flow, receipts.figures, rows.bins, strict=True)
        )
        series = (WorkerSeries(TOTAL, buckets),)
    return CampaignView(
        name=name,
        campaign_id=campaign_id,
        source=path,
        sender=sender,
        provider=canonical(provider),
        text_report_command=shlex.join(["sms-blaster", "report", path, "--campaign", name]),
        axis=started.axis,
        series=series,
        runs=started.runs,
        outcomes=outcomes,
        costs=rows.costs(),
        cost=rows.cost,
        latency=_latency(exact_latency, rows.latency_bins),
        delivery=None
        if groups is None
        else _delivery(funnel_of(groups, outcomes.sent), receipts.time_to_delivery()),
        not_recorded=() if started.recorded_runs else (_NOT_RECORDED_RUNS,),
        smart_encoding=smart,
        senders=pool_senders,
    )


def _axis(
    connection: sqlite3.Connection,
    name: str,
    campaign_id: str,
    runs: Sequence[RunSpan],
    has_deliveries: bool,
) -> TimeAxis | None:
    """From the first thing that happened to the campaign to the last: rows settled, runs,
    receipts."""
    times = list(
        connection.execute(
            "SELECT MIN(updated_at), MAX(updated_at) FROM rows WHERE campaign = ? "
            "AND state IN (?, ?)",
            (name, RowState.SENT.value, RowState.FAILED.value),
        ).fetchone()
    )
    for run in runs:
        times += [run.started_at_s, run.ended_at_s]
    if has_deliveries:
        times += connection.execute(
            "SELECT MIN(updated_at), MAX(updated_at) FROM deliveries WHERE campaign_id = ?",
            (campaign_id,),
        ).fetchone()
    known = [t for t in times if t is not None]
    return choose_axis(min(known), max(known)) if known else None


class _RowsPass:
    """One GROUP BY over the campaign's rows, for everything the page takes from them: sent and
    failed rows per bucket, the sent rows' latency bins per bucket and in all, outcomes, cost
    (the sent rows' by segments and encoding, and every priced row's)."""

    __slots__ = (
        "_by_state", "_costs", "_kinds", "_name", "_path", "bins", "cost", "figures",
        "latency_bins",
    )  # fmt: skip

    def __init__(self, buckets: int, path: str, name: str) -> None:
        self._path, self._name = path, name
        self.cost = Decimal(0)  # every priced row, as `report` counts it (failed ones too)
        self.figures = [_BucketFigures() for _ in range(buckets)]
        self.bins: list[dict[int, int]] = [{} for _ in range(buckets)]
        self.latency_bins: dict[int, LatencyBin] = {}
        self._by_state: dict[str, int] = {}
        self._kinds: dict[tuple[str, str], int] = {}  # (state, error kind) -> rows
        self._costs: dict[tuple[int, str], tuple[int, Decimal]] = {}

    def add(self, connection: sqlite3.Connection, params: dict[str, object]) -> None:
        sent, failed = RowState.SENT.value, RowState.FAILED.value
        prices: dict[str, Decimal] = {}
        for (
            bucket,
            state,
            kind,
            segments,
            encoding,
            price,
            latency_bin,
            count,
            min_ms,
            max_ms,
            code,
        ) in connection.execute(
            f"SELECT CASE WHEN state IN (:sent, :failed) THEN {_bucket_sql('updated_at')} END, "
            "state, COALESCE(error_kind, ''), COALESCE(segments, 0), COALESCE(encoding, ''), "
            f"price, CASE WHEN state = :sent THEN "
            f"{bin_sql('latency_ms', BIN_BASE_MS)} END, COUNT(*), MIN(latency_ms), "
            # A pending row's code says why it waits (quiet_hours/<zone>); a settled row's
            # code stays out of the grouping.
            "MAX(latency_ms), CASE WHEN state = :pending THEN COALESCE(error_code, '') END "
            # The bucket and latency bin first: SQLite's sort of every row then compares
            # mostly integers, not the texts that are equal in nearly every row (a fifth less).
            "FROM rows WHERE campaign = :name GROUP BY 1, 7, 2, 3, 4, 5, 6, 11",
            {**params, "sent": sent, "failed": failed, "pending": RowState.PENDING.value},
        ):
            self._by_state[state] = self._by_state.get(state, 0) + count
            if kind and code is not None:
                kind = f"{kind}/{code}" if code else kind
            self._kinds[(state, kind)] = self._kinds.get((state, kind), 0) + count
            if bucket is not None:
                index = _clamp(bucket, self.figures)
                if state == sent:
                    self.figures[index].sent += count
                else:
                    self.figures[index].failed += count
                if latency_bin is not None:
                    bins = self.bins[index]
                    bins[latency_bin] = bins.get(latency_bin, 0) + count
            if latency_bin is not None:
                had = self.latency_bins.get(latency_bin)
                self.latency_bins[latency_bin] = (
                    had.add(count, min_ms, max_ms) if had else LatencyBin(count, min_ms, max_ms)
                )
            cost = Decimal(0)
            if price is not None:
                if price not in prices:
                    prices[price] = price_of(self._path, self._name, price)
                cost = prices[price] * count
                self.cost += cost
            if state == sent:
                messages, sent_cost = self._costs.get((segments, encoding), (0, Decimal(0)))
                self._costs[(segments, encoding)] = (messages + count, sent_cost + cost)

    def outcomes(self) -> Outcomes:
        by_state = self._by_state
        return Outcomes(
            sent=by_state.get(RowState.SENT.value, 0),
            failed_by_kind=self._counts(RowState.FAILED),
            unknown=by_state.get(RowState.UNKNOWN.value, 0),
            skipped_by_reason=self._counts(RowState.SKIPPED),
            not_final=by_state.get(RowState.PENDING.value, 0)
            + by_state.get(RowState.INFLIGHT.value, 0),
            not_final_by_reason=tuple(
                count for count in self._counts(RowState.PENDING) if count.label != "-"
            ),
        )

    def _counts(self, state: RowState) -> tuple[Count, ...]:
        """The rows of `state` by error kind, most first."""
        counts = [Count(kind or "-", n) for (s, kind), n in self._kinds.items() if s == state]
        return tuple(sorted(counts, key=lambda count: (-count.count, count.label)))

    def costs(self) -> tuple[CostLine, ...]:
        return tuple(
            CostLine(segments, encoding, messages, cost)
            for (segments, encoding), (messages, cost) in sorted(self._costs.items())
        )


def _fill_timeline(
    connection: sqlite3.Connection, params: dict[str, object], figures: list[_BucketFigures]
) -> None:
    """Requests and throttles per bucket; the flow state of the bucket's last second (SQLite
    takes the bare columns from the row of MAX(at)). A second is written at its end: it is
    counted in the bucket of its middle."""
    for bucket, requests, throttled, _, ceiling, pace, limit, window in connection.execute(
        f"SELECT {_bucket_sql('t.at - 0.5')} AS bucket, SUM(t.requests), SUM(t.throttled), "
        "MAX(t.at), t.rate_ceiling, t.pace, t.limit_found, t.window FROM timeline AS t "
        "JOIN runs AS r ON r.id = t.run WHERE r.campaign = :name GROUP BY bucket",
        params,
    ):
        figure = figures[_clamp(bucket, figures)]
        figure.requests, figure.throttled = requests, throttled
        figure.rate_ceiling_per_s, figure.pace_per_s = ceiling, pace
        figure.limit_per_s, figure.window = limit, window


class _Receipts:
    """Rows by their delivery outcome, by when their last receipt arrived, and the delivered
    rows' time from their send to that receipt: from the groups the funnel is counted from."""

    __slots__ = ("_delays", "figures")

    def __init__(self, buckets: int, groups: Iterable[DeliveryGroup]) -> None:
        self.figures = [_BucketFigures() for _ in range(buckets)]
        self._delays: dict[int, int] = {}  # bin -> delivered rows
        for group in groups:
            if group.outcome is None or group.bucket is None:  # pending
                continue
            figure = self.figures[_clamp(group.bucket, self.figures)]
            if group.outcome == "failed":
                figure.delivery_failed += group.rows
            elif group.outcome == "expired":
                figure.expired += group.rows
            else:
                figure.delivered += group.rows
                if group.delay_bin is not None:
                    self._delays[group.delay_bin] = (
                        self._delays.get(group.delay_bin, 0) + group.rows
                    )

    def time_to_delivery(self) -> tuple[HistogramBin, ...]:
        return histogram(sorted(self._delays.items()), DELIVERY_BASE_S)


def _clamp(bucket: int, figures: Sequence[object]) -> int:
    return min(max(bucket, 0), len(figures) - 1)


def _runs(connection: sqlite3.Connection, name: str) -> tuple[RunSpan, ...]:
    return tuple(
        RunSpan(JOURNAL_WORKER, started_s, ended_s, code, setting_pairs(settings), last_s)
        for started_s, ended_s, code, settings, last_s in connection.execute(
            "SELECT started_at, ended_at, exit_code, settings, "
            "(SELECT MAX(at) FROM timeline WHERE run = runs.id) FROM runs WHERE campaign = ? "
            "ORDER BY id",
            (name,),
        )
    )


def _latency(exact: LatencyPercentiles | None, bins: dict[int, LatencyBin]) -> Latency | None:
    """The histogram from the bins; the percentiles exact, as `report` gives them."""
    if exact is None or not bins:
        return None
    counts = sorted((index, one.count) for index, one in bins.items())
    return Latency(histogram(counts, BIN_BASE_MS), exact.p50_ms, exact.p99_ms)


def _delivery(funnel: DeliveryFunnel, time_to_delivery: tuple[HistogramBin, ...]) -> Delivery:
    return Delivery(
        sent=funnel.sent,
        delivered=funnel.delivered,
        failed=funnel.failed,
        expired=funnel.expired,
        time_to_delivery_s=time_to_delivery,
    )
