"""The reads behind `report --html` on a journal: a campaign's figures in time buckets, from SQL.

Every figure is aggregated by SQLite (GROUP BY time bucket; latencies counted in log-spaced bins
per bucket, their percentiles read from the bins), so memory depends on the number of buckets,
never on the number of rows. The totals come from `queries.load_summaries`, so the page and
`report --json` agree to the row.
"""

from __future__ import annotations

import contextlib
import json
import math
import shlex
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal

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
    TimeAxis,
    WorkerSeries,
    choose_axis,
)
from sms_blaster.journal.queries import CampaignSummary, journal_error, load_summaries
from sms_blaster.journal.schema import RowState, connect

# Latency bins: each BIN_RATIO times as wide as the one before, from BIN_BASE_MS (a p99 read
# from them is within 10 %, 150 bins from 0.1 ms to 200 s).
BIN_BASE_MS = 0.1
BIN_RATIO = 1.1
# Time to delivery: the same bins, in seconds from 0.01 s.
DELIVERY_BASE_S = 0.01

_NOT_RECORDED_RUNS = (
    "runs, throttles, the flow control's pace and limit and the --rate ceiling (this journal was "
    "written by an sms-blaster that did not record them)"
)


def load_views(path: str, campaign: str | None = None) -> list[CampaignView]:
    """One view per campaign in the journal at `path` (oldest first), or only `campaign`.

    Raises what `load_summaries` raises: UsageError for a missing file or campaign, JournalError
    for a file that is no readable journal.
    """
    summaries = load_summaries(path, campaign)
    try:
        with contextlib.closing(connect(path, read_only=True)) as connection:
            _add_ln(connection)
            connection.execute("BEGIN")  # one snapshot for every query below
            tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master")}
            return [_view(path, connection, tables, summary) for summary in summaries]
    except sqlite3.Error as exc:
        raise journal_error(path, exc) from exc


def _add_ln(connection: sqlite3.Connection) -> None:
    """SQLite's `ln` where it was built without its math functions (the bins need it)."""
    try:
        connection.execute("SELECT ln(2)").fetchone()
    except sqlite3.OperationalError:
        connection.create_function("ln", 1, math.log, deterministic=True)


def bin_of(value: float, base: float) -> int:
    """The bin a value falls in (as the SQL counts it): 0 below `base`, then log-spaced."""
    return max(0, int(math.log(max(value, base) / base) / math.log(BIN_RATIO)))


def bin_bounds(index: int, base: float) -> tuple[float, float]:
    """Where bin `index` starts and ends."""
    return base * BIN_RATIO**index, base * BIN_RATIO ** (index + 1)


def _bin_sql(column: str, base: float) -> str:
    return f"CAST(ln(MAX({column}, {base!r}) / {base!r}) / {math.log(BIN_RATIO)!r} AS INTEGER)"


def _bucket_sql(column: str) -> str:
    return f"CAST(({column} - :start) / :width AS INTEGER)"


def percentile_of_bins(bins: dict[int, int], fraction: float, base: float) -> float | None:
    """The nearest-rank percentile, as the geometric middle of the bin it falls in."""
    total = sum(bins.values())
    if not total:
        return None
    rank = max(1, math.ceil(fraction * total))
    seen = 0
    for index in sorted(bins):
        seen += bins[index]
        if seen >= rank:
            low, high = bin_bounds(index, base)
            return math.sqrt(low * high)
    raise AssertionError("unreachable: rank is at most the total")


@dataclass(slots=True)
class _BucketFigures:
    """A bucket's figures while the queries fill them."""

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

    def bucket(self, latency_bins: dict[int, int]) -> Bucket:
        return Bucket(
            sent=self.sent,
            failed=self.failed,
            requests=self.requests,
            throttled=self.throttled,
            rate_ceiling_per_s=self.rate_ceiling_per_s,
            pace_per_s=self.pace_per_s,
            limit_per_s=self.limit_per_s,
            window=self.window,
            latency_p50_ms=percentile_of_bins(latency_bins, 0.5, BIN_BASE_MS),
            latency_p99_ms=percentile_of_bins(latency_bins, 0.99, BIN_BASE_MS),
            delivered=self.delivered,
            delivery_failed=self.delivery_failed,
            expired=self.expired,
        )


def _view(
    path: str, connection: sqlite3.Connection, tables: set[str], summary: CampaignSummary
) -> CampaignView:
    name = summary.name
    has_runs = {"runs", "timeline"} <= tables
    has_deliveries = "deliveries" in tables
    runs = _runs(connection, name) if has_runs else ()
    axis = _axis(connection, summary, runs, has_deliveries)
    series: tuple[WorkerSeries, ...] = ()
    latency_bins: dict[int, int] = {}
    if axis is not None:
        params: dict[str, object] = {"start": axis.start_s, "width": axis.bucket_s}
        figures = [_BucketFigures() for _ in range(axis.buckets)]
        bins_by_bucket: list[dict[int, int]] = [{} for _ in range(axis.buckets)]
        _fill_rows(connection, name, params, figures, bins_by_bucket)
        if has_runs:
            _fill_timeline(connection, name, params, figures)
        if has_deliveries:
            _fill_deliveries(connection, summary.campaign_id, params, figures)
        for bins in bins_by_bucket:
            for index, count in bins.items():
                latency_bins[index] = latency_bins.get(index, 0) + count
        buckets = tuple(
            figure.bucket(bins) for figure, bins in zip(figures, bins_by_bucket, strict=True)
        )
        series = (WorkerSeries(TOTAL, buckets),)
    return CampaignView(
        name=name,
        campaign_id=summary.campaign_id,
        source=path,
        sender=summary.sender,
        provider=summary.provider,
        text_report_command=shlex.join(["sms-blaster", "report", path, "--campaign", name]),
        axis=axis,
        series=series,
        runs=runs,
        outcomes=_outcomes(connection, name),
        costs=_costs(path, connection, name),
        cost=summary.cost,
        latency=_latency(summary, latency_bins),
        delivery=_delivery(connection, summary, has_deliveries),
        not_recorded=() if has_runs else (_NOT_RECORDED_RUNS,),
    )


def _axis(
    connection: sqlite3.Connection,
    summary: CampaignSummary,
    runs: Sequence[RunSpan],
    has_deliveries: bool,
) -> TimeAxis | None:
    """From the first thing that happened to the campaign to the last: rows settled, runs,
    receipts."""
    first, last = connection.execute(
        "SELECT MIN(updated_at), MAX(updated_at) FROM rows WHERE campaign = ? AND state IN (?, ?)",
        (summary.name, RowState.SENT.value, RowState.FAILED.value),
    ).fetchone()
    times = [t for t in (first, last) if t is not None]
    for run in runs:
        times += [t for t in (run.started_at_s, run.ended_at_s) if t is not None]
    if has_deliveries:
        times += [
            t
            for t in connection.execute(
                "SELECT MIN(updated_at), MAX(updated_at) FROM deliveries WHERE campaign_id = ?",
                (summary.campaign_id,),
            ).fetchone()
            if t is not None
        ]
    if not times:
        return None
    return choose_axis(min(times), max(times))


def _fill_rows(
    connection: sqlite3.Connection,
    name: str,
    params: dict[str, object],
    figures: list[_BucketFigures],
    bins_by_bucket: list[dict[int, int]],
) -> None:
    """Sent and failed rows per bucket, and the sent rows' latency bins: one pass over them."""
    for bucket, state, latency_bin, count in connection.execute(
        f"SELECT {_bucket_sql('updated_at')} AS bucket, state, "
        f"CASE WHEN state = :sent THEN {_bin_sql('latency_ms', BIN_BASE_MS)} END AS bin, "
        "COUNT(*) FROM rows WHERE campaign = :name AND state IN (:sent, :failed) "
        "GROUP BY bucket, state, bin",
        {**params, "name": name, "sent": RowState.SENT.value, "failed": RowState.FAILED.value},
    ):
        figure = figures[_clamp(bucket, figures)]
        if state == RowState.SENT:
            figure.sent += count
            if latency_bin is not None:
                bins = bins_by_bucket[_clamp(bucket, figures)]
                bins[latency_bin] = bins.get(latency_bin, 0) + count
        else:
            figure.failed += count


def _fill_timeline(
    connection: sqlite3.Connection,
    name: str,
    params: dict[str, object],
    figures: list[_BucketFigures],
) -> None:
    """Requests and throttles per bucket; the flow state of the bucket's last second (SQLite
    takes the bare columns from the row of MAX(at)). A second is written at its end: it is
    counted in the bucket of its middle."""
    for bucket, requests, throttled, _, ceiling, pace, limit, window in connection.execute(
        f"SELECT {_bucket_sql('t.at - 0.5')} AS bucket, SUM(t.requests), SUM(t.throttled), "
        "MAX(t.at), t.rate_ceiling, t.pace, t.limit_found, t.window FROM timeline AS t "
        "JOIN runs AS r ON r.id = t.run WHERE r.campaign = :name GROUP BY bucket",
        {**params, "name": name},
    ):
        figure = figures[_clamp(bucket, figures)]
        figure.requests, figure.throttled = requests, throttled
        figure.rate_ceiling_per_s, figure.pace_per_s = ceiling, pace
        figure.limit_per_s, figure.window = limit, window


def _fill_deliveries(
    connection: sqlite3.Connection,
    campaign_id: str,
    params: dict[str, object],
    figures: list[_BucketFigures],
) -> None:
    """Rows whose delivery became final, by when their last final receipt arrived: failed when
    a part failed, else expired when one expired, else delivered."""
    for bucket, outcome, count in connection.execute(
        f"SELECT {_bucket_sql('at')} AS bucket, outcome, COUNT(*) FROM ("
        "  SELECT MAX(updated_at) AS at, CASE WHEN SUM(delivery = 'failed') THEN 'failed' "
        "  WHEN SUM(delivery = 'expired') THEN 'expired' ELSE 'delivered' END AS outcome "
        "  FROM deliveries WHERE campaign_id = :campaign_id GROUP BY line HAVING MIN(final) = 1"
        ") GROUP BY bucket, outcome",
        {**params, "campaign_id": campaign_id},
    ):
        figure = figures[_clamp(bucket, figures)]
        if outcome == "failed":
            figure.delivery_failed += count
        elif outcome == "expired":
            figure.expired += count
        else:
            figure.delivered += count


def _clamp(bucket: int, figures: Sequence[object]) -> int:
    return min(max(bucket, 0), len(figures) - 1)


def _runs(connection: sqlite3.Connection, name: str) -> tuple[RunSpan, ...]:
    return tuple(
        RunSpan(JOURNAL_WORKER, started_s, ended_s, code, _settings(settings))
        for started_s, ended_s, code, settings in connection.execute(
            "SELECT started_at, ended_at, exit_code, settings FROM runs WHERE campaign = ? "
            "ORDER BY id",
            (name,),
        )
    )


def _settings(text: str) -> tuple[tuple[str, str], ...]:
    try:
        settings = json.loads(text)
    except ValueError:
        return ()
    if not isinstance(settings, dict):
        return ()
    return tuple((key, _setting_text(value)) for key, value in sorted(settings.items()))


def _setting_text(value: object) -> str:
    """A setting as a flag would give it: `true`, `30.0`, `` for none."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _outcomes(connection: sqlite3.Connection, name: str) -> Outcomes:
    counts: dict[str, list[Count]] = {}
    by_state: dict[str, int] = {}
    for state, kind, count in connection.execute(
        "SELECT state, COALESCE(error_kind, ''), COUNT(*) AS n FROM rows WHERE campaign = ? "
        "GROUP BY 1, 2 ORDER BY n DESC, 2",
        (name,),
    ):
        counts.setdefault(state, []).append(Count(kind or "-", count))
        by_state[state] = by_state.get(state, 0) + count
    return Outcomes(
        sent=by_state.get(RowState.SENT.value, 0),
        failed_by_kind=tuple(counts.get(RowState.FAILED.value, ())),
        unknown=by_state.get(RowState.UNKNOWN.value, 0),
        skipped_by_reason=tuple(counts.get(RowState.SKIPPED.value, ())),
        not_final=by_state.get(RowState.PENDING.value, 0)
        + by_state.get(RowState.INFLIGHT.value, 0),
    )


def _costs(path: str, connection: sqlite3.Connection, name: str) -> tuple[CostLine, ...]:
    """The sent rows by segment count and encoding, and their cost (prices summed as decimals,
    a group per distinct price)."""
    lines: dict[tuple[int, str], tuple[int, Decimal]] = {}
    for segments, encoding, price, count in connection.execute(
        "SELECT COALESCE(segments, 0), COALESCE(encoding, ''), price, COUNT(*) FROM rows "
        "WHERE campaign = ? AND state = ? GROUP BY 1, 2, 3",
        (name, RowState.SENT.value),
    ):
        messages, cost = lines.get((segments, encoding), (0, Decimal(0)))
        if price is not None:  # a number: load_summaries refused the journal otherwise
            cost += Decimal(price) * count
        lines[(segments, encoding)] = (messages + count, cost)
    return tuple(
        CostLine(segments, encoding, messages, cost)
        for (segments, encoding), (messages, cost) in sorted(lines.items())
    )


def _latency(summary: CampaignSummary, bins: dict[int, int]) -> Latency | None:
    """The histogram from the bins; the percentiles exact, as `report` gives them."""
    if summary.latency is None or not bins:
        return None
    histogram = tuple(
        HistogramBin(*bin_bounds(index, BIN_BASE_MS), count)
        for index, count in sorted(bins.items())
    )
    return Latency(histogram, summary.latency.p50_ms, summary.latency.p99_ms)


def _delivery(
    connection: sqlite3.Connection, summary: CampaignSummary, has_deliveries: bool
) -> Delivery | None:
    funnel = summary.delivery
    if funnel is None or not has_deliveries:
        return None
    times = connection.execute(
        f"SELECT {_bin_sql('d.at - r.updated_at', DELIVERY_BASE_S)} AS bin, COUNT(*) FROM ("
        "  SELECT line, MAX(updated_at) AS at FROM deliveries WHERE campaign_id = ? "
        "  GROUP BY line HAVING MIN(final) = 1 AND MIN(delivery = 'delivered') = 1"
        ") AS d JOIN rows AS r ON r.campaign = ? AND r.line = d.line GROUP BY bin ORDER BY bin",
        (summary.campaign_id, summary.name),
    )
    return Delivery(
        sent=funnel.sent,
        delivered=funnel.delivered,
        failed=funnel.failed,
        expired=funnel.expired,
        time_to_delivery_s=_histogram(times, DELIVERY_BASE_S),
    )


def _histogram(rows: Iterable[tuple[int, int]], base: float) -> tuple[HistogramBin, ...]:
    return tuple(HistogramBin(*bin_bounds(index, base), count) for index, count in rows)
