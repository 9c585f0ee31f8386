"""Refused requests, logged at a rate no client can raise: one line per cause per interval.

Anyone who can reach the receiver can send it garbage; a log line (let alone a traceback) per bad
request would let them fill the disk and bury the lines that matter. Each cause gets at most one
line every `every_s` seconds, and that line counts the ones held back since the last.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from sms_blaster.receiver.log_rate import LogRate

_EVERY_S = 10.0
_DETAIL_CHARS = 120  # a detail may quote what the client sent: kept short and printable


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is not taken, and how it is answered."""

    status: int
    kind: str  # the metrics label: invalid, too_large, unsupported_type, too_long, malformed, ...
    cause: str  # fixed words, the log's rate-limit key: never anything the client chose
    detail: str = ""  # what varies (a position, a size, a content type as sent)

    @property
    def text(self) -> str:
        """The answer's body and the log line's reason: one printable line."""
        return f"{self.cause} ({printable(self.detail)})" if self.detail else self.cause


class RefusalLog:
    """Log refusals by cause, at most one line per cause every `every_s` seconds."""

    __slots__ = ("_log", "_rate")

    def __init__(
        self,
        log: logging.Logger,
        *,
        every_s: float = _EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        # Keyed by route and cause, both from fixed sets: the counts cannot grow with traffic.
        self._rate = LogRate(every_s=every_s, clock=clock)

    def refused(self, where: str, refusal: Refusal, remote: str | None) -> bool:
        """Note one refusal at `where` (a route); True when it was logged, False when counted."""
        line = self._rate.note(f"{where}: {refusal.cause}")
        if line is None:
            return False
        self._log.warning(
            "refused %s from %s with %d: %s%s",
            where,
            remote,
            refusal.status,
            refusal.text,
            line.more("like it"),
        )
        return True

    def flush(self) -> None:
        """Log the count held back for each cause since its last line (at stop: none is lost)."""
        for key, held in self._rate.flush():
            self._log.warning("refused %s: %d more like it since the last line", key, held)


def printable(text: str, limit: int = _DETAIL_CHARS) -> str:
    """`text` made safe for one log line: control characters escaped, cut at `limit`."""
    safe = "".join(char if char.isprintable() else repr(char)[1:-1] for char in text[:limit])
    return safe + ("..." if len(text) > limit else "")
