"""What a sending run has done so far, read in one piece: for the metrics file, the journal's
timeline and anything else that reports a run while it goes on.

A snapshot is plain values, taken on the loop; readers diff two of them for per-interval
figures (sent in the last second, throttles since the last write).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from sms_blaster.output import LatencyHistogram


@dataclass(frozen=True, slots=True)
class RunSnapshot:
    """A run's totals and its flow control's state at one moment."""

    at_s: float  # unix seconds
    elapsed_s: float  # since the run started
    rows_by_status: Mapping[str, int]  # records written, by status
    errors: Mapping[tuple[str, str], int]  # (error kind, code) -> records
    segments: int  # of the rows sent
    cost: Decimal  # as the provider priced them
    requests: int  # requests sent (retries included)
    throttled: int  # throttled answers
    in_flight: int
    window: int  # the in-flight window's limit now
    rate_ceiling_per_s: float  # --rate
    pace_per_s: float | None  # the flow control's pace; None without flow control
    limit_per_s: float | None  # the limit the flow control found; None when none was seen
    latency: LatencyHistogram  # of the rows sent (the run's own: read, do not keep)
