"""`report --redis URL --campaign NAME --html`: a distributed campaign's page, drawn from what its
workers recorded (distributed.timeline) and the receipts applied to its rows.

Every worker is a series of its own and the total adds them up. The totals (outcomes, cost, the
delivery funnel) are `load_summary`'s, so the page and `report --redis --json` agree. A receipt
counts in the series of the worker that sent its row, by when `receive` stored it; its time to
delivery is from the second its row was sent in (within half a second).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import redis.asyncio as aioredis

from sms_blaster.distributed.keys import CampaignKeys
from sms_blaster.distributed.report import (
    RowReceipts,
    load_summary,
    read_seconds,
    read_totals,
    send_times,
)
from sms_blaster.distributed.timeline import RunTotals, Second
from sms_blaster.html_report.figures import (
    BIN_BASE_MS,
    DELIVERY_BASE_S,
    bin_of,
    histogram,
    percentile_of_bins,
    senders,
    setting_pairs,
    smart_encoding,
)
from sms_blaster.html_report.model import (
    TOTAL,
    Bucket,
    CampaignView,
    CostLine,
    Count,
    Delivery,
    Latency,
    Outcomes,
    RunSpan,
    TimeAxis,
    WorkerSeries,
    choose_axis,
)
from sms_blaster.journal.queries import CampaignSummary
from sms_blaster.models import ErrorKind

_SKIP_REASONS = frozenset(
    {ErrorKind.DUPLICATE, ErrorKind.SUPPRESSED, ErrorKind.ALREADY_SETTLED, ErrorKind.OPTED_OUT}
)
_NOT_RECORDED = (
    "the workers' timeline: requests, throttles, pace, latency and when rows were sent (its "
    "workers were of an sms-blaster that did not record them)"
)


@dataclass(frozen=True, slots=True)
class Recorded:
    """What a campaign's workers recorded: their runs, and their seconds."""

    runs: tuple[RunSpan, ...]
    totals: tuple[RunTotals, ...]
    seconds: tuple[tuple[str, Second], ...]  # (worker, second), in no order


async def load_view(redis: aioredis.Redis, name: str, url: str) -> CampaignView:
    """The page's view of campaign `name` (`url`: Redis's, its password masked)."""
    receipts = RowReceipts(timed=True)
    recorded = await _read(redis, CampaignKeys(name))
    sends = send_times((second for _, second in recorded.seconds), recorded.totals)
    summary = await load_summary(redis, name, url, receipts, sends)
    return campaign_view(summary, recorded, receipts, url)


async def _read(redis: aioredis.Redis, keys: CampaignKeys) -> Recorded:
    fields: Any = await redis.hgetall(keys.runs)
    seconds = tuple(await read_seconds(redis, keys))
    runs = sorted(_runs(fields), key=lambda run: run.started_at_s)
    return Recorded(
        runs=tuple(with_last_seconds(runs, seconds)),
        totals=await read_totals(redis, keys),
        seconds=seconds,
    )


def with_last_seconds(
    runs: Sequence[RunSpan], seconds: Sequence[tuple[str, Second]]
) -> Iterable[RunSpan]:
    """`runs` (by start) with the last second each recorded, so that a killed worker's band
    ends where it stopped: a worker's second belongs to its latest run started before it."""
    last: dict[int, float] = {}
    for worker, second in seconds:
        at_s = second.figures.at_s
        owner = max(
            (
                index
                for index, run in enumerate(runs)
                if run.worker == worker and run.started_at_s <= at_s + 1
            ),
            key=lambda index: runs[index].started_at_s,
            default=None,
        )
        if owner is not None and at_s > last.get(owner, -math.inf):
            last[owner] = at_s
    for index, run in enumerate(runs):
        yield dataclasses.replace(run, last_at_s=last.get(index))


def _runs(fields: Mapping[str, str]) -> Iterable[RunSpan]:
    for key, value in fields.items():
        if key.endswith(("|totals", "|end")):
            continue
        start = json.loads(value)
        end = json.loads(fields.get(f"{key}|end", "{}"))
        yield RunSpan(
            start["worker"],
            start["started_at"],
            end.get("ended_at"),
            end.get("exit_code"),
            setting_pairs(start["settings"]),
        )


def campaign_view(
    summary: CampaignSummary, recorded: Recorded, receipts: RowReceipts, url: str
) -> CampaignView:
    """The view from what was read: pure, so it is tested without Redis."""
    name = summary.name
    decided = receipts.decided or {}
    final_at_s = receipts.final_at_s or {}
    times = [t for run in recorded.runs for t in (run.started_at_s, run.ended_at_s) if t]
    times += [t for _, second in recorded.seconds for t in (second.from_s, second.figures.at_s)]
    times += [final_at_s[line] for line in decided if line in final_at_s]
    axis = choose_axis(min(times), max(times)) if times else None
    series: tuple[WorkerSeries, ...] = ()
    time_to_delivery: Counter[int] = Counter()
    if axis is not None:
        series = _series(axis, recorded.seconds, decided, final_at_s, time_to_delivery)
    latency_bins: Counter[int] = Counter()
    for totals in recorded.totals:
        latency_bins.update(totals.latency)
    return CampaignView(
        name=name,
        campaign_id=summary.campaign_id,
        source=f"{url} campaign {name}",
        sender=summary.sender,
        provider=summary.provider,
        text_report_command=shlex.join(
            ["sms-blaster", "report", "--redis", url, "--campaign", name]
        ),
        axis=axis,
        series=series,
        runs=recorded.runs,
        outcomes=_outcomes(summary),
        costs=_costs(recorded.totals, summary),
        cost=summary.cost,
        latency=_latency(latency_bins, summary),
        delivery=_delivery(summary, time_to_delivery),
        not_recorded=_not_recorded(summary, recorded, time_to_delivery),
        smart_encoding=smart_encoding(summary),
        senders=senders(summary.sent_by_sender),
    )


def _series(
    axis: TimeAxis,
    seconds: Sequence[tuple[str, Second]],
    decided: Mapping[int, str],
    final_at_s: Mapping[int, float],
    time_to_delivery: Counter[int],
) -> tuple[WorkerSeries, ...]:
    """One series per worker, then the total; the delivered rows' times to delivery are
    counted into `time_to_delivery` on the way.

    A receipt counts no earlier than the bucket its row was sent in: `receive` may store it
    before the worker's second ends (and is written)."""
    workers = sorted({worker for worker, _ in seconds})
    figures = {worker: [_Figures() for _ in range(axis.buckets)] for worker in workers}
    sent_in: dict[int, int] = {}  # line -> the bucket it was sent in
    for worker, second in seconds:
        sent_index = _index(axis, second.figures.at_s)
        figures[worker][sent_index].add_second(second)
        sent_at_s = (second.from_s + second.figures.at_s) / 2
        for line in second.lines:
            sent_in[line] = sent_index
            if (outcome := decided.get(line)) is None or (at_s := final_at_s.get(line)) is None:
                continue
            figures[worker][max(_index(axis, at_s), sent_index)].add_delivery(outcome)
            if outcome == "delivered":
                time_to_delivery[bin_of(max(0.0, at_s - sent_at_s), DELIVERY_BASE_S)] += 1
    # The total's deliveries are every row's, also those of a second whose write was dropped.
    total = [_Figures() for _ in range(axis.buckets)]
    for line, outcome in decided.items():
        if (at_s := final_at_s.get(line)) is not None:
            total[max(_index(axis, at_s), sent_in.get(line, 0))].add_delivery(outcome)
    for worker_figures in figures.values():
        for bucket, one in zip(total, worker_figures, strict=True):
            bucket.add_worker(one)
    return (
        *(
            WorkerSeries(worker, tuple(one.bucket() for one in figures[worker]))
            for worker in workers
        ),
        WorkerSeries(TOTAL, tuple(one.bucket() for one in total)),
    )


class _Figures:
    """One bucket's figures while the seconds are added: of a worker, or of the total."""

    __slots__ = ("at_s", "latency", "so_far")

    def __init__(self) -> None:
        self.so_far = Bucket()  # without its latency, kept in bins until the end
        self.latency: Counter[int] = Counter()  # rows sent, by latency bin
        self.at_s = 0.0  # of the last second added: the flow state is that second's

    def add_second(self, second: Second) -> None:
        one, was = second.figures, self.so_far
        self.so_far = dataclasses.replace(
            was,
            sent=was.sent + one.sent,
            failed=was.failed + one.failed,
            requests=(was.requests or 0) + one.requests,
            throttled=(was.throttled or 0) + one.throttled,
        )
        if one.at_s >= self.at_s:
            self.at_s = one.at_s
            self.so_far = dataclasses.replace(
                self.so_far,
                rate_ceiling_per_s=one.rate_ceiling_per_s,
                window=one.window,
                pace_per_s=one.pace_per_s,
                limit_per_s=one.limit_per_s,
            )
        self.latency.update(second.latency)

    def add_delivery(self, outcome: str) -> None:
        was = self.so_far
        if outcome == "delivered":
            self.so_far = dataclasses.replace(was, delivered=was.delivered + 1)
        elif outcome == "failed":
            self.so_far = dataclasses.replace(was, delivery_failed=was.delivery_failed + 1)
        else:
            self.so_far = dataclasses.replace(was, expired=was.expired + 1)

    def add_worker(self, worker: _Figures) -> None:
        """Add a worker's bucket to the total's (its deliveries are the total's already): the
        workers share one rate, pace and limit, and their windows add up."""
        one, was = worker.so_far, self.so_far
        self.so_far = dataclasses.replace(
            was, sent=was.sent + one.sent, failed=was.failed + one.failed
        )
        if one.requests is not None:
            self.so_far = dataclasses.replace(
                self.so_far,
                requests=(was.requests or 0) + one.requests,
                throttled=(was.throttled or 0) + (one.throttled or 0),
                window=(was.window or 0) + (one.window or 0),
                rate_ceiling_per_s=_most(was.rate_ceiling_per_s, one.rate_ceiling_per_s),
                pace_per_s=_most(was.pace_per_s, one.pace_per_s),
                limit_per_s=_most(was.limit_per_s, one.limit_per_s),
            )
        self.latency.update(worker.latency)

    def bucket(self) -> Bucket:
        bins = dict(self.latency)
        return dataclasses.replace(
            self.so_far,
            latency_p50_ms=percentile_of_bins(bins, 0.5, BIN_BASE_MS),
            latency_p99_ms=percentile_of_bins(bins, 0.99, BIN_BASE_MS),
        )


def _most(one: float | None, other: float | None) -> float | None:
    known = [value for value in (one, other) if value is not None]
    return max(known) if known else None


def _index(axis: TimeAxis, at_s: float) -> int:
    return min(max(int((at_s - axis.start_s) // axis.bucket_s), 0), axis.buckets - 1)


def _outcomes(summary: CampaignSummary) -> Outcomes:
    """The rows by state, the failed ones by error kind and the skipped ones by reason, as the
    workers and the enqueue counted their records."""
    by_kind: Counter[str] = Counter()
    for error in summary.errors:
        by_kind[error.kind] += error.count
    failed = [Count(kind, n) for kind, n in by_kind.most_common() if _status_of(kind) == "failed"]
    skipped = [Count(kind, n) for kind, n in by_kind.most_common() if _status_of(kind) == "skipped"]
    rows = summary.rows
    # Rows failed with no error kind counted (none today) still add up to the rows failed.
    if (rest := rows.failed - sum(count.count for count in failed)) > 0:
        failed.append(Count("-", rest))
    return Outcomes(
        sent=rows.sent,
        failed_by_kind=tuple(failed),
        unknown=rows.unknown,
        skipped_by_reason=tuple(skipped),
        not_final=rows.pending + rows.inflight,
    )


def _status_of(kind: str) -> str:
    if kind in _SKIP_REASONS:
        return "skipped"
    return "unknown" if kind == ErrorKind.AMBIGUOUS else "failed"


def _costs(totals: Iterable[RunTotals], summary: CampaignSummary) -> tuple[CostLine, ...]:
    """The runs' cost lines, then what they miss of the campaign's (a killed worker's last
    second) as lines of no encoding, so the table adds up to `report --json`'s totals."""
    lines: dict[tuple[int, str], tuple[int, Decimal]] = {}
    for run in totals:
        for line, (messages, cost) in run.costs.items():
            was_messages, was_cost = lines.get(line, (0, Decimal(0)))
            lines[line] = (was_messages + messages, was_cost + cost)
    recorded = tuple(
        CostLine(segments, encoding, messages, cost)
        for (segments, encoding), (messages, cost) in sorted(lines.items())
    )
    return recorded + _unrecorded_costs(recorded, summary)


def _unrecorded_costs(
    recorded: Sequence[CostLine], summary: CampaignSummary
) -> tuple[CostLine, ...]:
    """The sent rows, segments and cost the runs' lines miss: their segments a message spread
    as evenly as whole segments go (the cost on the first line), none when nothing is missed."""
    messages = summary.rows.sent - sum(line.messages for line in recorded)
    segments = summary.segments_sent - sum(line.segments * line.messages for line in recorded)
    cost = summary.cost - sum((line.cost for line in recorded), Decimal(0))
    if messages <= 0 or segments < 0:
        return ()
    each, more = divmod(segments, messages)
    spread = [(each, messages - more), (each + 1, more)]
    lines = [(parts, count) for parts, count in spread if count]
    return tuple(
        CostLine(parts, "", count, cost if n == 0 else Decimal(0))
        for n, (parts, count) in enumerate(lines)
    )


def _not_recorded(
    summary: CampaignSummary, recorded: Recorded, time_to_delivery: Mapping[int, int]
) -> tuple[str, ...]:
    """What the page cannot show exactly, and why: the timeline is a picture, not the ledger."""
    if not recorded.runs:
        return (_NOT_RECORDED,)
    notes = []
    in_timeline = sum(second.figures.sent for _, second in recorded.seconds)
    if (missed := summary.rows.sent - in_timeline) > 0:
        notes.append(
            f"when {missed:,} of the {summary.rows.sent:,} sent rows were sent (a worker killed "
            "before it wrote its last seconds, or a write Redis did not take): the charts over "
            "time and the latency miss them, the cost lines of no encoding hold them, and every "
            "total is the campaign's"
        )
    if soonest := time_to_delivery.get(bin_of(0.0, DELIVERY_BASE_S), 0):
        notes.append(
            "each row's own send time: its time to delivery is from the middle of the second it "
            "was sent in, so a receipt stored within that half second counts in the first bin "
            f"(it holds {soonest:,})"
        )
    return tuple(notes)


def _latency(bins: Mapping[int, int], summary: CampaignSummary) -> Latency | None:
    """The histogram of `bins`, with the summary's percentiles (of the same bins, rounded)."""
    if not bins or summary.latency is None:
        return None
    latency = summary.latency
    return Latency(histogram(sorted(bins.items()), BIN_BASE_MS), latency.p50_ms, latency.p99_ms)


def _delivery(summary: CampaignSummary, time_to_delivery: Mapping[int, int]) -> Delivery | None:
    funnel = summary.delivery
    if funnel is None:
        return None
    return Delivery(
        sent=funnel.sent,
        delivered=funnel.delivered,
        failed=funnel.failed,
        expired=funnel.expired,
        time_to_delivery_s=histogram(sorted(time_to_delivery.items()), DELIVERY_BASE_S),
    )
