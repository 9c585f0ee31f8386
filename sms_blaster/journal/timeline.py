"""One second of a sending run as the journal's `timeline` table keeps it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TimelineSecond:
    """A run's figures over one second, in the `timeline` table's column order (after `run`)."""

    at_s: float  # unix seconds at the end of the second
    requests: int  # made in it (retries too)
    throttled: int  # throttled answers in it
    sent: int  # records written in it
    failed: int
    in_flight: int  # at its end, as the rest
    window: int
    rate_ceiling_per_s: float  # --rate
    pace_per_s: float | None  # None: no flow control
    limit_per_s: float | None  # None: no limit found yet
