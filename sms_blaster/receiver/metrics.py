"""The receiver's counters, rendered in Prometheus' text format for `/metrics`."""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable

# Commit latency buckets, seconds: a commit is one fsync, so most land in the first few.
_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    """Counts by route and outcome, and a histogram of commit latency."""

    __slots__ = ("_buckets", "_commit_count", "_commit_sum_s", "_gauges", "_received", "_refused")

    def __init__(self) -> None:
        self._received: Counter[str] = Counter()
        self._refused: Counter[tuple[str, str]] = Counter()
        self._buckets = [0] * (len(_BUCKETS_S) + 1)
        self._commit_count = 0
        self._commit_sum_s = 0.0
        self._gauges: dict[str, tuple[str, Callable[[], float]]] = {}

    def received(self, route: str) -> None:
        self._received[route] += 1

    @property
    def received_total(self) -> int:
        """Callbacks received on every route, whatever their answer."""
        return self._received.total()

    def refused(self, route: str, reason: str) -> None:
        """`reason`: signature, unsigned, invalid, busy, unsupported_type, malformed (a body
        that cannot be decoded); for route `request` (refused before any route): too_long,
        too_large, timeout, malformed."""
        self._refused[route, reason] += 1

    def observe_commit(self, elapsed_s: float, batch_size: int) -> None:
        del batch_size  # every receipt of a batch waits the same commit
        self._buckets[bisect.bisect_left(_BUCKETS_S, elapsed_s)] += 1
        self._commit_count += 1
        self._commit_sum_s += elapsed_s

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """A value read when the metrics are rendered (queue depth, stored receipts)."""
        self._gauges[name] = (help_text, read)

    def render(self) -> str:
        """Every counter, the histogram and the gauges, in Prometheus' text format (0.0.4)."""
        lines = [
            "# HELP sms_blaster_receipts_received_total Callbacks received, by route.",
            "# TYPE sms_blaster_receipts_received_total counter",
        ]
        lines += [
            f'sms_blaster_receipts_received_total{{route="{route}"}} {count}'
            for route, count in sorted(self._received.items())
        ]
        lines += [
            "# HELP sms_blaster_receipts_refused_total Callbacks refused, by route and reason.",
            "# TYPE sms_blaster_receipts_refused_total counter",
        ]
        lines += [
            f'sms_blaster_receipts_refused_total{{route="{route}",reason="{reason}"}} {count}'
            for (route, reason), count in sorted(self._refused.items())
        ]
        lines += [
            "# HELP sms_blaster_store_commit_seconds Time to commit one batch of receipts.",
            "# TYPE sms_blaster_store_commit_seconds histogram",
        ]
        cumulative = 0
        for bound, count in zip((*_BUCKETS_S, None), self._buckets, strict=True):
            cumulative += count
            label = "+Inf" if bound is None else repr(bound)
            lines.append(f'sms_blaster_store_commit_seconds_bucket{{le="{label}"}} {cumulative}')
        lines.append(f"sms_blaster_store_commit_seconds_sum {self._commit_sum_s:.6f}")
        lines.append(f"sms_blaster_store_commit_seconds_count {self._commit_count}")
        for name, (help_text, read) in sorted(self._gauges.items()):
            lines += [
                f"# HELP {name} {help_text}",
                f"# TYPE {name} gauge",
                f"{name} {read():g}",
            ]
        return "\n".join(lines) + "\n"
