"""The receiver's counters, exposed for `/metrics` through prometheus_client's registry.

A callback pays one increment of a plain counter, a third of what a prometheus_client child's
locked `inc()` costs; the counters become metric families only when `/metrics` is read, and
prometheus_client writes the exposition (`generate_latest`).
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

# Commit latency buckets, seconds: a commit is one fsync, so most land in the first few.
_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    """Counts by route and outcome, a histogram of commit latency, and values read when the
    metrics are (queue depth, stored receipts)."""

    __slots__ = (
        "_buckets", "_commit_count", "_commit_sum_s", "_read", "_received", "_refused",
        "_registry",
    )  # fmt: skip

    def __init__(self) -> None:
        self._received: Counter[str] = Counter()
        self._refused: Counter[tuple[str, str]] = Counter()
        self._buckets = [0] * (len(_BUCKETS_S) + 1)
        self._commit_count = 0
        self._commit_sum_s = 0.0
        self._read: dict[
            str, tuple[str, bool, Callable[[], float]]
        ] = {}  # (help, a counter?, read)
        self._registry: CollectorRegistry | None = None  # made at the first read of /metrics

    def received(self, route: str) -> None:
        self._received[route] += 1

    @property
    def received_total(self) -> int:
        """Callbacks received on every route, whatever their answer."""
        return self._received.total()

    def refused(self, route: str, reason: str) -> None:
        """`reason`: signature, unsigned, no_secret, invalid, busy, unsupported_type, malformed
        (a body that cannot be decoded); for route `request` (refused before any route):
        too_long, too_large, timeout, malformed."""
        self._refused[route, reason] += 1

    def refused_total(self, reason: str) -> int:
        """Callbacks refused for `reason` on every route (`busy`: every 503 of the store)."""
        return sum(count for (_, why), count in self._refused.items() if why == reason)

    def observe_commit(self, elapsed_s: float, batch_size: int) -> None:
        del batch_size  # every receipt of a batch waits the same commit
        self._buckets[bisect.bisect_left(_BUCKETS_S, elapsed_s)] += 1
        self._commit_count += 1
        self._commit_sum_s += elapsed_s

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """A value read when the metrics are rendered (queue depth)."""
        self._read[name] = (help_text, False, read)

    def counter(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """A count kept elsewhere (stored receipts), read when the metrics are rendered."""
        self._read[name] = (help_text, True, read)

    def render(self) -> str:
        """Every metric in Prometheus' text format (0.0.4)."""
        # Imported here: the library takes about 50 ms to load, which start-up need not wait.
        from prometheus_client import CollectorRegistry, generate_latest

        if self._registry is None:
            self._registry = CollectorRegistry(auto_describe=False)
            self._registry.register(self)
        return generate_latest(self._registry).decode()

    def collect(self) -> Iterator[Metric]:
        """The metric families now (prometheus_client's collector protocol)."""
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        received = CounterMetricFamily(
            "sms_blaster_receipts_received_total", "Callbacks received, by route.", labels=["route"]
        )
        for route, count in sorted(self._received.items()):
            received.add_metric([route], count)
        yield received
        refused = CounterMetricFamily(
            "sms_blaster_receipts_refused_total",
            "Callbacks refused, by route and reason.",
            labels=["route", "reason"],
        )
        for (route, reason), count in sorted(self._refused.items()):
            refused.add_metric([route, reason], count)
        yield refused
        cumulative, seen = [], 0
        for bound, count in zip((*_BUCKETS_S, None), self._buckets, strict=True):
            seen += count
            cumulative.append(("+Inf" if bound is None else repr(bound), seen))
        yield HistogramMetricFamily(
            "sms_blaster_store_commit_seconds",
            "Time to commit one batch of receipts.",
            buckets=cumulative,
            sum_value=self._commit_sum_s,
        )
        for name, (help_text, counter, read) in sorted(self._read.items()):
            if counter:
                yield CounterMetricFamily(name, help_text, value=read())
            else:
                yield GaugeMetricFamily(name, help_text, value=read())
