"""A failing receipt hook, logged at a bounded rate: one traceback per kind of failure per interval.

A hook with a bug fails on every receipt: at 1,000 receipts a second, a traceback each would bury
every other line of the log and fill its disk. The first failure of each exception type gets its
traceback; the ones like it within the interval are counted (`log_rate`), and the next line of
that type, or the receiver's stop, says how many there were. `stats.hook_errors` still counts
every one.

A hook's exception may quote anything its code holds, the API secret of a client it called
included: its text and traceback pass through the receiver's redactor (providers/redact.py)
before they are logged, and the line carries the masked text only, never the exception itself.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable

from sms_blaster.receiver.log_rate import LogRate


class HookFailureLog:
    """Log hook failures by exception type (a fixed set: a hook raises from its own code's few
    places), at most one traceback a type every `every_s`."""

    __slots__ = ("_log", "_rate", "_redact")

    def __init__(
        self,
        log: logging.Logger,
        *,
        every_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        redact: Callable[[str], str] = str,
    ) -> None:
        self._log = log
        self._rate = LogRate(every_s=every_s, clock=clock)
        self._redact = redact  # masks the receiver's secrets in a text

    def failed(self, message_id: str, exc: BaseException) -> bool:
        """Note the hook's failure on one receipt; True when logged (with its traceback),
        False when counted for a later line."""
        kind = f"{type(exc).__module__}.{type(exc).__qualname__}"
        line = self._rate.note(kind)
        if line is None:
            return False
        if self._log.isEnabledFor(logging.ERROR):
            message = f"the receipt hook failed for {message_id}{line.more(f'{kind} failures')}"
            record = self._log.makeRecord(
                self._log.name, logging.ERROR, __file__, 0, self._redact(message), (), None
            )
            # The traceback as every formatter shows it (they take `exc_text` as it is), masked;
            # `exc_info` stays empty, so that no formatter renders the exception unmasked.
            record.exc_text = self._redact("".join(traceback.format_exception(exc)).rstrip("\n"))
            self._log.handle(record)
        return True

    def flush(self) -> None:
        """Log the count held back for each type since its last line (at stop: none is lost)."""
        for kind, held in self._rate.flush():
            self._log.error(
                "the receipt hook failed %d more times with %s since the last line", held, kind
            )
