"""A journal run's own record: when it started and ended, its settings, and a row a second.

`record_run` takes a snapshot of the run (`run_stats`) every second and hands the journal the
difference from the last one; the journal commits it with its next group commit (no fsync is
waited for, and nothing is written on the path of a row). The settings are kept as JSON with
every secret left out, for the HTML report's settings table.

The run's rows go into that commit inside a savepoint of their own: if they cannot be written
(a `runs` or `timeline` table of another shape, a value its columns refuse), only they are
rolled back, the rows' marks and records are committed all the same, no more of the run's rows
are recorded, and one warning on stderr says so. The run's picture never stops the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, TextIO

from sms_blaster import logs
from sms_blaster.exit_status import code_of_exception
from sms_blaster.journal.timeline import TimelineSecond
from sms_blaster.run_stats import RunSnapshot
from sms_blaster.settings import RunSettings
from sms_blaster.url_text import mask_url_password

if TYPE_CHECKING:
    from sms_blaster.journal.store import Journal

INTERVAL_S = 1.0


class RunEnd:
    """How the run ended, as the code learns it: `code` is set once the exit code is known."""

    __slots__ = ("code",)

    def __init__(self) -> None:
        self.code: int | None = None


@contextlib.asynccontextmanager
async def record_run(
    journal: Journal | None,
    settings: RunSettings,
    snapshot: Callable[[], RunSnapshot],
    stderr: TextIO,
    interval_s: float = INTERVAL_S,
) -> AsyncIterator[RunEnd]:
    """Record the run in `journal` while the block runs (nothing without a journal); the block
    sets the exit code on what it is given, or an exception ending it gives its own."""
    end = RunEnd()
    if journal is None:
        yield end
        return

    def dropped(why: str) -> None:
        logs.say(
            stderr,
            f"sms-blaster: {why}; the run goes on, its timeline is not recorded from here",
            logs.Level.WARNING,
        )

    journal.begin_run(time.time(), settings_json(settings), dropped)
    task = asyncio.create_task(_every_second(journal, snapshot, interval_s))
    try:
        yield end
    except BaseException as exc:
        end.code = code_of_exception(exc)
        raise
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        journal.end_run(time.time(), end.code)


async def _every_second(
    journal: Journal, snapshot: Callable[[], RunSnapshot], interval_s: float
) -> None:
    last = snapshot()
    try:
        while True:
            await asyncio.sleep(interval_s)
            now = snapshot()
            journal.record_second(second_between(last, now))
            last = now
    except asyncio.CancelledError:
        # The run's last part second: its sends would be missing from the timeline otherwise.
        now = snapshot()
        if now.requests != last.requests or now.rows_by_status != last.rows_by_status:
            journal.record_second(second_between(last, now))
        raise


def second_between(before: RunSnapshot, after: RunSnapshot) -> TimelineSecond:
    """What the run did from `before` to `after`, and its flow state at `after`."""
    sent = after.rows_by_status.get("sent", 0) - before.rows_by_status.get("sent", 0)
    failed = after.rows_by_status.get("failed", 0) - before.rows_by_status.get("failed", 0)
    return TimelineSecond(
        at_s=after.at_s,
        requests=after.requests - before.requests,
        throttled=after.throttled - before.throttled,
        sent=sent,
        failed=failed,
        in_flight=after.in_flight,
        window=after.window,
        rate_ceiling_per_s=after.rate_ceiling_per_s,
        pace_per_s=after.pace_per_s,
        limit_per_s=after.limit_per_s,
    )


def settings_json(settings: RunSettings) -> str:
    """The settings as JSON, secrets left out: the fields kept out of repr (API key, secret,
    token) are dropped, and a password in a URL is masked."""
    kept: dict[str, object] = {}
    for field in dataclasses.fields(settings):
        if not field.repr:
            continue
        value = getattr(settings, field.name)
        if isinstance(value, str):
            value = mask_url_password(value)
        elif value is not None and not isinstance(value, bool | int | float):
            value = str(value)
        kept[field.name] = value
    return json.dumps(kept, sort_keys=True)
