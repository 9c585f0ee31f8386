"""Campaign guards for unattended runs: an opt-out list, a deadline and an error-rate breaker."""

from __future__ import annotations

import datetime as dt
from collections import deque

from sms_blaster.errors import UsageError
from sms_blaster.inputs import InputFormat, open_input
from sms_blaster.models import ErrorKind, Record, Status
from sms_blaster.prepare import normalise_number, pick_number_column
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


def parse_deadline(text: str, now: dt.datetime) -> dt.datetime:
    """`--not-after`: an ISO 8601 date and time, or HH:MM[:SS] today; local time unless it says.

    Raises UsageError for an unreadable or past time.
    """
    value = text.strip()
    try:
        if len(value) <= 8 and ":" in value:
            clock = dt.time.fromisoformat(value.zfill(5) if len(value) <= 5 else value.zfill(8))
            when = now.replace(
                hour=clock.hour, minute=clock.minute, second=clock.second, microsecond=0
            )
        else:
            when = dt.datetime.fromisoformat(value)
            if when.tzinfo is None:
                when = when.replace(tzinfo=now.tzinfo)
    except ValueError:
        raise UsageError(
            f"--not-after {text}: not a time; give HH:MM (today) or e.g. 2026-12-01T18:00"
        ) from None
    if when <= now:
        raise UsageError(f"--not-after {text}: that time has passed; give a later one")
    return when


def load_suppressed(path: str | None, region: str | None) -> set[int]:
    """The numbers of an opt-out file (none without one), normalised as the campaign's are.

    The file is a plain list (one number a line; blank lines and `#` comments skipped) or a
    CSV/JSONL file with a number column. An entry that is not a valid number is an error: an
    opt-out that cannot be honoured must not pass unnoticed.
    """
    numbers: set[int] = set()
    if path is None:
        return numbers
    with open_input(path, InputFormat.AUTO) as source:
        columns = source.columns
        column = pick_number_column(columns, None)
        if column is None and len(columns) > 1:
            raise UsageError(
                f"{path}: no number column in the opt-out file (columns: "
                f"{', '.join(columns)}); use a plain list, one number a line"
            )
        if column is not None:
            for row in source:
                where = f"row {row.line}"
                if row.fields is None:
                    raise UsageError(f"{path}: {where}: {row.problem}")
                _add(numbers, row.fields.get(column, ""), region, path, where)
            return numbers
    # No number column: a plain list, read line by line so errors name the line in the file.
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as lines:
            for number, text in enumerate(lines, start=1):
                if not text.lstrip().startswith("#"):
                    _add(numbers, text, region, path, f"line {number}")
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the opt-out list ({exc.strerror})") from exc
    return numbers


def _add(numbers: set[int], value: str, region: str | None, path: str, where: str) -> None:
    if not value.strip():
        return
    number = normalise_number(value, region)
    if number is None:
        hint = "" if region else " (a national number needs --default-region)"
        raise UsageError(
            f"{path}: {where}: {value.strip()!r} is not a valid number{hint}; fix or remove it"
        )
    numbers.add(int(number))
