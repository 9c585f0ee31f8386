"""Which of many like events get a log line: one a kind every interval, the rest counted.

A receiver hears the same thing many times a second (a client sending garbage, a hook failing on
every receipt); a line each would bury the lines that matter and fill the log's disk. The first
event of a kind gets its line; the like ones within `every_s` are counted, and the next line of
that kind (or the receiver's stop) says how many there were. The kinds must come from a fixed
set (a cause, an exception type), never from what a client sent: the counts grow with them.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

_EVERY_S = 10.0


@dataclass(frozen=True, slots=True)
class Line:
    """An event that gets its line: `held` like ones were counted since the last, `ago_s` ago."""

    held: int
    ago_s: float

    def more(self, what: str) -> str:
        """'; N more WHAT since the last line, S s ago', or '' when none was held back."""
        if not self.held:
            return ""
        return f"; {self.held} more {what} since the last line, {self.ago_s:.0f} s ago"


class LogRate:
    """Per kind, at most one line every `every_s`; the others counted until the next one."""

    __slots__ = ("_clock", "_every_s", "_held", "_last_s")

    def __init__(
        self, *, every_s: float = _EVERY_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._every_s = every_s
        self._clock = clock
        self._last_s: dict[str, float] = {}
        self._held: Counter[str] = Counter()

    def note(self, kind: str) -> Line | None:
        """One event of `kind`: its line (what was held back before it), or None: counted."""
        now_s = self._clock()
        last_s = self._last_s.get(kind)
        if last_s is not None and now_s - last_s < self._every_s:
            self._held[kind] += 1
            return None
        self._last_s[kind] = now_s
        return Line(self._held.pop(kind, 0), 0.0 if last_s is None else now_s - last_s)

    def flush(self) -> list[tuple[str, int]]:
        """The counts held back for each kind since its last line, and forget them (at stop)."""
        held = sorted(self._held.items())
        self._held.clear()
        return held
