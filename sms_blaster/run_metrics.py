"""A sending run's figures as Prometheus metric families, for --metrics-file and --pushgateway.

Pure: the families are built from one `RunSnapshot` (taken on the loop every 10 s and at exit),
never per row. Names follow Prometheus' conventions: the `sms_blaster_` prefix, `_total` for
counters, base units (seconds). Every family has a sample in every write, zeros included, so a
Pushgateway that is pushed the same names replaces all of an earlier run's figures; only the
last success is left out while the run has none to tell (see `RunFigures.last_success_s`).
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import CollectorRegistry

from sms_blaster.models import ErrorKind, Status
from sms_blaster.output import LatencyHistogram
from sms_blaster.run_stats import RunSnapshot

# A provider answers in tens to hundreds of milliseconds; a timeout is 10 s by default.
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A dry run writes no metrics, so its kind never shows.
_ERROR_KINDS = tuple(kind for kind in ErrorKind if kind is not ErrorKind.DRY_RUN)
LAST_SUCCESS = "sms_blaster_last_success_timestamp_seconds"


@dataclass(frozen=True, slots=True)
class LatencyShape:
    """A run's latency histogram in Prometheus' buckets: cumulative counts and their sum."""

    cumulative: tuple[int, ...]  # samples at or under each of LATENCY_BUCKETS_S, then all
    sum_s: float


def latency_shape(histogram: LatencyHistogram) -> LatencyShape:
    """The shape of `histogram` in LATENCY_BUCKETS_S. Its buckets are 1 % wide and each is
    counted at its middle, so a bound and the sum are right to within 1 %."""
    counts = [0] * (len(LATENCY_BUCKETS_S) + 1)
    sum_s = 0.0
    for middle_ms, count in histogram.middles_ms():
        middle_s = middle_ms / 1000
        counts[bisect.bisect_left(LATENCY_BUCKETS_S, middle_s)] += count
        sum_s += middle_s * count
    cumulative, seen = [], 0
    for count in counts:
        seen += count
        cumulative.append(seen)
    return LatencyShape(tuple(cumulative), sum_s)


@dataclass(frozen=True, slots=True)
class RunFigures:
    """Everything one write or push tells: plain values, safe to read from another thread."""

    labels: tuple[tuple[str, str], ...]  # (name, value): the campaign, and a worker's name
    snapshot: RunSnapshot  # its latency is the run's own, read only through `latency`
    latency: LatencyShape
    start_s: float  # unix seconds
    exit_code: int | None  # None while the run goes on
    # The end of the last run that exited 0, this one or an earlier one; None: none known.
    last_success_s: float | None


def families(figures: RunFigures) -> list[Metric]:
    """The metric families of `figures`, each sample labelled with the run's labels."""
    names = [name for name, _ in figures.labels]
    values = [value for _, value in figures.labels]
    snapshot = figures.snapshot

    def gauge(name: str, text: str, value: float) -> Metric:
        family = GaugeMetricFamily(name, text, labels=names)
        family.add_metric(values, value)
        return family

    def counter(name: str, text: str, value: float) -> Metric:
        family = CounterMetricFamily(name, text, labels=names)
        family.add_metric(values, value)
        return family

    def by(name: str, text: str, label: str, counts: Sequence[tuple[str, int]]) -> Metric:
        family = CounterMetricFamily(name, text, labels=[*names, label])
        for key, count in counts:
            family.add_metric([*values, key], count)
        return family

    kinds = dict.fromkeys((kind.value for kind in _ERROR_KINDS), 0)
    for (kind, _code), count in snapshot.errors.items():
        kinds[kind] = kinds.get(kind, 0) + count
    sent = snapshot.rows_by_status.get(Status.SENT.value, 0)
    elapsed_s = snapshot.elapsed_s
    latency = HistogramMetricFamily(
        "sms_blaster_latency_seconds",
        "Time from a row's request leaving to its answer, of the rows sent.",
        labels=names,
    )
    bounds = [*(repr(bound) for bound in LATENCY_BUCKETS_S), "+Inf"]
    shape = figures.latency
    latency.add_metric(values, list(zip(bounds, shape.cumulative, strict=True)), shape.sum_s)
    metrics = [
        by(
            "sms_blaster_rows_total",
            "Rows that got their final record in this run, by status.",
            "status",
            [(status.value, snapshot.rows_by_status.get(status.value, 0)) for status in Status],
        ),
        by(
            "sms_blaster_row_errors_total",
            "Rows that did not end sent, by error kind (failed: invalid_input, rejected, "
            "exhausted, stopped; unknown: ambiguous; skipped: the other kinds).",
            "kind",
            sorted(kinds.items()),
        ),
        counter("sms_blaster_segments_total", "SMS parts of the rows sent.", snapshot.segments),
        counter(
            "sms_blaster_cost_total",
            "What the provider charged for the rows sent, in the provider's currency.",
            float(snapshot.cost),
        ),
        counter(
            "sms_blaster_requests_total",
            "Requests sent to the provider, retries included.",
            snapshot.requests,
        ),
        counter(
            "sms_blaster_throttled_requests_total",
            "Requests the provider answered with a throttle.",
            snapshot.throttled,
        ),
        gauge(
            "sms_blaster_achieved_rate_per_second",
            "Rows sent per second, over the run so far.",
            sent / elapsed_s if elapsed_s > 0 else 0.0,
        ),
        gauge(
            "sms_blaster_rate_ceiling_per_second",
            "The highest rate the run may send at (--rate).",
            snapshot.rate_ceiling_per_s,
        ),
        gauge(
            "sms_blaster_pace_per_second",
            "The rate the flow control sends at now (--rate with --no-adaptive).",
            snapshot.rate_ceiling_per_s if snapshot.pace_per_s is None else snapshot.pace_per_s,
        ),
        gauge(
            "sms_blaster_provider_limit_per_second",
            "The provider's limit as the flow control found it; NaN until a throttle showed it.",
            math.nan if snapshot.limit_per_s is None else snapshot.limit_per_s,
        ),
        gauge(
            "sms_blaster_window_requests",
            "Requests allowed in flight now (the flow control's window).",
            snapshot.window,
        ),
        gauge("sms_blaster_in_flight_requests", "Requests in flight now.", snapshot.in_flight),
        latency,
        gauge(
            "sms_blaster_exit_code",
            "The run's exit code; NaN while it goes on.",
            math.nan if figures.exit_code is None else figures.exit_code,
        ),
        gauge(
            "sms_blaster_start_timestamp_seconds",
            "When the run started, in unix seconds.",
            figures.start_s,
        ),
    ]
    if figures.last_success_s is not None:
        metrics.append(
            gauge(
                LAST_SUCCESS,
                "When the last run that exited 0 ended, in unix seconds (kept across runs).",
                figures.last_success_s,
            )
        )
    return metrics


class LatestFigures:
    """A collector of the newest figures: the one registry the file and the gateway are given.

    `figures` is replaced whole on the loop and read whole by the thread that writes."""

    __slots__ = ("figures",)

    def __init__(self, figures: RunFigures) -> None:
        self.figures = figures

    def collect(self) -> Iterator[Metric]:
        return iter(families(self.figures))

    def registry(self, *, grouped: bool = False) -> CollectorRegistry:
        """A registry of these figures; `grouped`: without their labels, for a Pushgateway,
        whose grouping key gives them (a pushed metric must not carry a grouping label)."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Unlabelled(self) if grouped else self)
        return registry


class _Unlabelled:
    """The newest figures without the run's labels."""

    __slots__ = ("_latest",)

    def __init__(self, latest: LatestFigures) -> None:
        self._latest = latest

    def collect(self) -> Iterator[Metric]:
        return iter(families(dataclasses.replace(self._latest.figures, labels=())))


def last_success_in(text: str, campaign: str) -> float | None:
    """The last success an earlier run of `campaign` wrote in a metrics file's `text`; None when
    it has none (+Inf or NaN is none) or cannot be read. A worker's name is not matched: by
    default it changes with every run (<host>-<pid>)."""
    from prometheus_client.parser import text_string_to_metric_families

    found: float | None = None
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if (
                    sample.name == LAST_SUCCESS
                    and sample.labels.get("campaign") == campaign
                    and math.isfinite(sample.value)  # +Inf or NaN: no time a run ended
                ):
                    found = sample.value if found is None else max(found, sample.value)
    except (ValueError, TypeError, IndexError, KeyError):
        return None  # not a file this program wrote: no earlier success to keep
    return found
