"""The error-rate breaker (--max-error-rate): an unattended run stops when too many sends fail."""

from __future__ import annotations

from collections import deque

from sms_blaster.models import ErrorKind, Record, Status
from sms_blaster.settings import BREAKER_WINDOW, MIN_BREAKER_SAMPLES


class ErrorRateBreaker:
    """Trips when more than `max_rate` of the last `window` sends failed or are unknown (of
    the sends so far while there are fewer).

    Only rows that reached the provider count (not invalid input, not rows stopped before
    sending), and not before `min_samples` of them, so a few early failures cannot trip it.
    """

    __slots__ = ("_max_rate", "_min_samples", "_recent")

    def __init__(
        self,
        max_rate: float,
        window: int = BREAKER_WINDOW,
        min_samples: int = MIN_BREAKER_SAMPLES,
    ) -> None:
        self._max_rate = max_rate
        self._min_samples = min(min_samples, window)
        self._recent: deque[bool] = deque(maxlen=window)

    def observe(self, record: Record) -> str | None:
        if record.error is not None and record.error.kind is ErrorKind.STOPPED:
            return None
        self._recent.append(record.status in (Status.FAILED, Status.UNKNOWN))
        count = len(self._recent)
        if count < self._min_samples:
            return None
        rate = sum(self._recent) / count
        if rate <= self._max_rate:
            return None
        sends = (
            f"the last {count} sends"
            if count == self._recent.maxlen
            else f"the {count} sends so far"
        )
        return f"error rate {rate:.0%} over {sends} is above --max-error-rate {self._max_rate:.0%}"
