"""A failing receipt hook, logged at a bounded rate: one traceback per kind of failure per interval.

A hook with a bug fails on every receipt: at 1,000 receipts a second, a traceback each would bury
every other line of the log and fill its disk. The first failure of each exception type gets its
traceback; the ones like it within the interval are counted (`log_rate`), and the next line of
that type, or the receiver's stop, says how many there were. `stats.hook_errors` still counts
every one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sms_blaster.receiver.log_rate import LogRate


class HookFailureLog:
    """Log hook failures by exception type (a fixed set: a hook raises from its own code's few
    places), at most one traceback a type every `every_s`."""

    __slots__ = ("_log", "_rate")

    def __init__(
        self,
        log: logging.Logger,
        *,
        every_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._rate = LogRate(every_s=every_s, clock=clock)

    def failed(self, message_id: str, exc: BaseException) -> bool:
        """Note the hook's failure on one receipt; True when logged (with its traceback),
        False when counted for a later line."""
        kind = f"{type(exc).__module__}.{type(exc).__qualname__}"
        line = self._rate.note(kind)
        if line is None:
            return False
        self._log.error(
            "the receipt hook failed for %s%s",
            message_id,
            line.more(f"{kind} failures"),
            exc_info=(type(exc), exc, exc.__traceback__),
        )
        return True

    def flush(self) -> None:
        """Log the count held back for each type since its last line (at stop: none is lost)."""
        for kind, held in self._rate.flush():
            self._log.error(
                "the receipt hook failed %d more times with %s since the last line", held, kind
            )
