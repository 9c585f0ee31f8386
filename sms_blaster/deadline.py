"""The --not-after deadline: read from the flag, and the timer that stops the run at it."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Iterator

from sms_blaster.engine import RunControl, StopReason
from sms_blaster.errors import OptionValueError


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
        raise OptionValueError(
            "--not-after", text, "not a time; give HH:MM (today) or e.g. 2026-12-01T18:00"
        ) from None
    if when <= now:
        raise OptionValueError("--not-after", text, "that time has passed; give a later one")
    return when


@contextlib.contextmanager
def deadline_timer(deadline: dt.datetime | None, control: RunControl) -> Iterator[None]:
    """Stop the run at `deadline` (none: never) while the block runs."""
    if deadline is None:
        yield
        return
    delay_s = (deadline - dt.datetime.now().astimezone()).total_seconds()
    shown = deadline.isoformat(sep=" ", timespec="seconds")
    timer = asyncio.get_running_loop().call_later(
        max(0.0, delay_s), control.stop, StopReason.DEADLINE, f"--not-after {shown}"
    )
    try:
        yield
    finally:
        timer.cancel()
