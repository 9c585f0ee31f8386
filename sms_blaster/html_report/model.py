"""What the HTML report is drawn from: a campaign's figures in time buckets, and its totals.

Plain frozen values, filled by a backend (the journal's SQL in `journal/report_data.py`, or
Redis for a distributed campaign) and drawn by `page`. Every time series comes per worker plus
a total (a journal has one worker), so both backends fill the same model. Nothing here reads a
clock, a file or a database.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal

TOTAL = "total"  # the worker name of the series that adds up every worker
JOURNAL_WORKER = "send"  # the one worker of a journal's campaign
MAX_POINTS = 300  # a chart has at most this many buckets: readable, and small in the page
# Bucket widths a reader counts in easily, in seconds.
NICE_WIDTHS_S = (
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class TimeAxis:
    """The buckets every series shares: `buckets` of `bucket_s` seconds from `start_s`."""

    start_s: float  # unix seconds where the first bucket starts (a multiple of bucket_s)
    bucket_s: int
    buckets: int

    @property
    def end_s(self) -> float:
        return self.start_s + self.bucket_s * self.buckets

    def start_of(self, index: int) -> float:
        return self.start_s + index * self.bucket_s


def choose_axis(first_s: float, last_s: float, max_points: int = MAX_POINTS) -> TimeAxis:
    """The narrowest nice bucket width that covers first_s..last_s in at most `max_points`
    buckets, its buckets starting at a multiple of the width."""
    span_s = max(0.0, last_s - first_s)
    for width_s in NICE_WIDTHS_S:
        start_s = math.floor(first_s / width_s) * width_s
        buckets = math.floor((last_s - start_s) / width_s) + 1
        if buckets <= max_points:
            return TimeAxis(float(start_s), width_s, buckets)
    # Longer than a nice width allows (months): whole days, as many as it takes per bucket.
    width_s = 86400 * math.ceil(span_s / 86400 / max_points + 1e-9)
    start_s = math.floor(first_s / width_s) * width_s
    return TimeAxis(float(start_s), width_s, math.floor((last_s - start_s) / width_s) + 1)


@dataclass(frozen=True, slots=True)
class Bucket:
    """One worker's figures over one time bucket; None where nothing was recorded for it."""

    sent: int = 0  # rows sent, by when they were sent
    failed: int = 0  # rows failed, by when they failed
    requests: int | None = None  # requests made (retries too); None: no timeline recorded
    throttled: int | None = None  # throttled answers
    rate_ceiling_per_s: float | None = None  # --rate
    pace_per_s: float | None = None  # the flow control's pace at the bucket's end
    limit_per_s: float | None = None  # the provider's limit as the flow control found it
    window: int | None = None  # the in-flight window's limit at the bucket's end
    latency_p50_ms: float | None = None  # of the rows sent in it
    latency_p99_ms: float | None = None
    delivered: int = 0  # delivery receipts, by when they arrived
    delivery_failed: int = 0
    expired: int = 0


@dataclass(frozen=True, slots=True)
class WorkerSeries:
    """One worker's buckets (or the total's), one per bucket of the axis."""

    worker: str  # a worker's name, or TOTAL
    buckets: tuple[Bucket, ...]


@dataclass(frozen=True, slots=True)
class RunSpan:
    """One run of the campaign (a resume is another run): when, how it ended, its settings."""

    worker: str
    started_at_s: float
    ended_at_s: float | None  # None: still running, or killed before it could say
    exit_code: int | None  # None: likewise
    settings: tuple[tuple[str, str], ...]  # (option, value as text), secrets left out
    last_at_s: float | None = None  # the last second it recorded; None: none, or not known

    @property
    def drawn_until_s(self) -> float | None:
        """Where its band on a chart ends: its end, else its last recorded second (killed
        runs leave the gaps between runs); None: not known (still running)."""
        return self.ended_at_s if self.ended_at_s is not None else self.last_at_s


@dataclass(frozen=True, slots=True)
class Count:
    """A labelled count: an error kind, a skip reason, a delivery error."""

    label: str
    count: int


@dataclass(frozen=True, slots=True)
class Outcomes:
    """The campaign's rows by final outcome."""

    sent: int
    failed_by_kind: tuple[Count, ...]  # most frequent first
    unknown: int
    skipped_by_reason: tuple[Count, ...]  # most frequent first
    not_final: int = 0  # pending or in flight: a later run settles them
    # Of the not final rows, those held for a reason, as `kind/code` (quiet_hours/<zone>).
    not_final_by_reason: tuple[Count, ...] = ()

    @property
    def failed(self) -> int:
        return sum(count.count for count in self.failed_by_kind)

    @property
    def skipped(self) -> int:
        return sum(count.count for count in self.skipped_by_reason)

    @property
    def total(self) -> int:
        return self.sent + self.failed + self.unknown + self.skipped + self.not_final


@dataclass(frozen=True, slots=True)
class CostLine:
    """The sent rows of one segment count and encoding, and what they cost."""

    segments: int  # segments a message
    encoding: str  # gsm7 | ucs2 | "" when not recorded
    messages: int
    cost: Decimal


@dataclass(frozen=True, slots=True)
class HistogramBin:
    """Samples from `low` (included) to `high` (excluded), in the unit the field names."""

    low: float
    high: float
    count: int


@dataclass(frozen=True, slots=True)
class Delivery:
    """What the delivery receipts say about the sent rows, and how long delivery took."""

    sent: int
    delivered: int
    failed: int
    expired: int
    time_to_delivery_s: tuple[HistogramBin, ...]  # from the send to the delivered receipt

    @property
    def pending(self) -> int:
        return self.sent - self.delivered - self.failed - self.expired


@dataclass(frozen=True, slots=True)
class Latency:
    """The sent rows' request latency: a histogram and its percentiles (within a bin's width)."""

    bins_ms: tuple[HistogramBin, ...]
    p50_ms: float
    p99_ms: float


@dataclass(frozen=True, slots=True)
class SmartEncoding:
    """What smart encoding changed over the sent rows, as `report --json` gives it."""

    texts_changed: int
    segments_saved: int
    cost_saved: Decimal
    segments_added: int  # by `always`, kept apart from the segments saved
    cost_added: Decimal


@dataclass(frozen=True, slots=True)
class SenderSent:
    """What one sender of a --from-pool campaign sent."""

    sender: str
    sent: int
    segments: int


@dataclass(frozen=True, slots=True)
class CampaignView:
    """Everything one campaign's page shows."""

    name: str
    campaign_id: str
    source: str  # the journal's path, or the Redis campaign (password masked)
    sender: str
    provider: str
    text_report_command: str  # the command that prints the text report of the same campaign
    axis: TimeAxis | None  # None: nothing was sent, failed or received yet
    series: tuple[WorkerSeries, ...]  # one per worker, then the TOTAL (alone for a journal)
    runs: tuple[RunSpan, ...]  # oldest first
    outcomes: Outcomes
    costs: tuple[CostLine, ...]
    cost: Decimal  # every priced row, as `report` counts it
    latency: Latency | None  # None: no sent row has a latency
    delivery: Delivery | None  # None: no receipt yet
    not_recorded: tuple[str, ...] = ()  # what the source did not keep (an older journal)
    smart_encoding: SmartEncoding | None = None
    senders: tuple[SenderSent, ...] = ()  # a pool's senders, most sent first; none for --from

    @property
    def total(self) -> WorkerSeries | None:
        """The series of every worker together."""
        return next((series for series in self.series if series.worker == TOTAL), None)


@dataclass(frozen=True, slots=True)
class ReceiptsOnly:
    """What a file holds when no campaign has written to it: a receiver's store."""

    by_delivery: tuple[Count, ...]  # receipts by delivery state (inbound messages too)
    first_received_at_s: float | None
    last_received_at_s: float | None

    @property
    def total(self) -> int:
        return sum(count.count for count in self.by_delivery)
