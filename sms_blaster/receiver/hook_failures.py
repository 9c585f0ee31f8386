"""A failing receipt hook, logged at a bounded rate: one traceback per kind of failure per interval.

A hook with a bug fails on every receipt: at 1,000 receipts a second, a traceback each would bury
every other line of the log and fill its disk. The first failure of each exception type gets its
traceback; the ones like it within `every_s` are counted, and the next line of that type (or the
receiver's stop) says how many there were. `stats.hook_errors` still counts every one.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

_EVERY_S = 10.0


class HookFailureLog:
    """Log hook failures by exception type, at most one traceback per type every `every_s`."""

    __slots__ = ("_clock", "_every_s", "_held", "_last_s", "_log")

    def __init__(
        self,
        log: logging.Logger,
        *,
        every_s: float = _EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._every_s = every_s
        self._clock = clock
        # Keyed by the exception's type: a hook raises from a fixed set of places, so the
        # dicts grow with the kinds of bug, not with the traffic.
        self._last_s: dict[str, float] = {}
        self._held: Counter[str] = Counter()

    def failed(self, message_id: str, exc: BaseException) -> bool:
        """Note the hook's failure on one receipt; True when logged (with its traceback),
        False when counted for a later line. Call from the `except` block that caught `exc`."""
        kind = f"{type(exc).__module__}.{type(exc).__qualname__}"
        now_s = self._clock()
        last_s = self._last_s.get(kind)
        if last_s is not None and now_s - last_s < self._every_s:
            self._held[kind] += 1
            return False
        self._last_s[kind] = now_s
        held = self._held.pop(kind, 0)
        more = ""
        if held and last_s is not None:
            more = f" ({held} more {kind} failures since the last line, {now_s - last_s:.0f} s ago)"
        self._log.error(
            "the receipt hook failed for %s%s",
            message_id,
            more,
            exc_info=(type(exc), exc, exc.__traceback__),
        )
        return True

    def flush(self) -> None:
        """Log the count held back for each type since its last line (at stop: none is lost)."""
        for kind, held in sorted(self._held.items()):
            self._log.error(
                "the receipt hook failed %d more times with %s since the last line", held, kind
            )
        self._held.clear()
