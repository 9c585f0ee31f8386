"""Refused requests, logged at a rate no client can raise: one line per cause per interval.

Anyone who can reach the receiver can send it garbage; a log line (let alone a traceback) per bad
request would let them fill the disk and bury the lines that matter. Each cause gets at most one
line every `every_s` seconds, and that line counts the ones held back since the last.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

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
        # Keyed by route and cause, both from fixed sets: the dicts cannot grow with traffic.
        self._last_s: dict[str, float] = {}
        self._held: Counter[str] = Counter()

    def refused(self, where: str, refusal: Refusal, remote: str | None) -> bool:
        """Note one refusal at `where` (a route); True when it was logged, False when counted."""
        key = f"{where}: {refusal.cause}"
        now_s = self._clock()
        last_s = self._last_s.get(key)
        if last_s is not None and now_s - last_s < self._every_s:
            self._held[key] += 1
            return False
        self._last_s[key] = now_s
        held = self._held.pop(key, 0)
        more = ""
        if held and last_s is not None:
            more = f"; {held} more like it since the last line, {now_s - last_s:.0f} s ago"
        self._log.warning(
            "refused %s from %s with %d: %s%s", where, remote, refusal.status, refusal.text, more
        )
        return True

    def flush(self) -> None:
        """Log the count held back for each cause since its last line (at stop: none is lost)."""
        for key, held in sorted(self._held.items()):
            self._log.warning("refused %s: %d more like it since the last line", key, held)
        self._held.clear()


def printable(text: str, limit: int = _DETAIL_CHARS) -> str:
    """`text` made safe for one log line: control characters escaped, cut at `limit`."""
    safe = "".join(char if char.isprintable() else repr(char)[1:-1] for char in text[:limit])
    return safe + ("..." if len(text) > limit else "")
