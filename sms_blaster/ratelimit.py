"""The global rate limit, taken at the moment of sending.

Each caller reserves the next free slot on an evenly spaced schedule and sleeps once until it, so:
- there is no first-second burst: slots are `1 / rate` apart from the first send on, and idle time
  earns no credit, so any one-second window holds at most `rate` (+1 at the edge) sends;
- no caller polls: one timer per send, not a wake-up per tick per waiter (a bucket that wakes all
  waiters can take a whole core at thousands of sends per second under uvloop);
- the schedule is kept in theoretical time, so a late wake-up does not slow the rate that follows:
  slots missed by up to CATCH_UP_S (a busy loop, a coarse timer) are still used, later ones are
  not (idle time earns no credit), so any second carries at most 1 % over the rate at 1,000/s.
  A waiter woken late still leaves: on a process held up for tens of milliseconds (a saturated
  core) the slots that came due meanwhile leave together. Taking new slots instead (as the
  distributed limiter does, where several processes share one schedule) cost 0.7 % of the rate at
  5,000/s here, below the 0.99 a single run is held to.
A send may cost more than one slot (e.g. a provider that counts segments). When the pace is cut
or paused, callers already waiting take a new slot on the new schedule when they wake: nothing
leaves at the old pace after a cut.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol


class RateLimiter(Protocol):
    async def acquire(self, cost: float = 1.0) -> None:
        """Return when a send of `cost` units may leave."""

    def set_rate(self, rate_per_s: float) -> None:
        """Pace the sends reserved from now on at `rate_per_s`."""

    def pause_until(self, when_s: float) -> None:
        """Let nothing more leave before `when_s` (on the limiter's clock)."""

    def left_off_slot(self, cost: float = 1.0) -> None:
        """A send of `cost` units leaves now, long after its slot (it waited for a connection):
        the slots from now on are spaced from it, not from the schedule it fell behind."""


class PacedLimiter:
    """Evenly spaced sends at `rate_per_s`, shared by every worker of a run."""

    __slots__ = (
        "_clock",
        "_generation",
        "_interval_s",
        "_left_s",
        "_next_s",
        "_paused_until_s",
        "_sleep",
    )

    # A waiter wakes at least this often, to notice a schedule change (a cut, a speed-up or a
    # pause); between changes it sleeps to its own slot: no polling while nothing changes.
    _MAX_SLEEP_S = 0.25
    # A change of pace smaller than this keeps the slots already taken.
    _RESCHEDULE_SHARE = 0.05
    CATCH_UP_S = 0.01

    def __init__(
        self,
        rate_per_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be positive")
        self._interval_s = 1.0 / rate_per_s
        self._clock = clock
        self._sleep = sleep  # may return True to say the run stopped: acquire returns then
        self._next_s = float("-inf")
        self._left_s = float("-inf")  # the slot of the last send that left
        self._paused_until_s = float("-inf")
        self._generation = 0  # moves on when the schedule changes; waiters then take new slots

    @property
    def rate_per_s(self) -> float:
        return 1.0 / self._interval_s

    def set_rate(self, rate_per_s: float) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be positive")
        change = rate_per_s * self._interval_s  # new rate / old rate
        self._interval_s = 1.0 / rate_per_s
        if abs(change - 1.0) >= self._RESCHEDULE_SHARE:
            # Slots taken at the old pace are void: the schedule starts again from now (or
            # from the end of a pause), and waiters take new slots on it.
            self._generation += 1
            self._restart(max(self._clock(), self._paused_until_s))

    def pause_until(self, when_s: float) -> None:
        if when_s > self._paused_until_s:
            self._paused_until_s = when_s
            self._generation += 1
            # Every waiter takes a new slot: the schedule starts again at the pause's end (kept,
            # the slots already taken would push the new ones a waiter's worth further out each).
            self._restart(when_s)

    def _restart(self, from_s: float) -> None:
        """Start the schedule again at `from_s`, but never closer to the last send than one
        interval: a limiter with no burst (nginx's limit_req, a strict GCRA) refuses a pair
        of sends closer than that, whatever the average rate."""
        self._next_s = max(min(self._next_s, from_s), self._left_s + self._interval_s)

    def left_off_slot(self, cost: float = 1.0) -> None:
        now = self._clock()
        self._left_s = max(self._left_s, now)
        # The schedule starts again one send after it, and waiters take new slots on it (a slot
        # held since would leave close behind it): as many slots as before, none taken twice.
        self._generation += 1
        self._next_s = now + cost * self._interval_s

    async def acquire(self, cost: float = 1.0) -> None:
        while True:
            now = self._clock()
            slot = self._next_s if self._next_s >= now - self.CATCH_UP_S else now
            slot = max(slot, self._paused_until_s)
            self._next_s = slot + cost * self._interval_s
            generation = self._generation
            while slot > now:
                if await self._sleep(min(slot - now, self._MAX_SLEEP_S)) is True:
                    return  # the run stopped; the caller checks that
                if generation != self._generation:
                    break  # the schedule changed: take a new slot on it
                now = self._clock()
            else:
                self._left_s = max(self._left_s, slot)
                return


class Unlimited:
    """No rate limit (for a simulator run or a benchmark of the bare pipeline)."""

    __slots__ = ()

    async def acquire(self, cost: float = 1.0) -> None:
        return None

    def set_rate(self, rate_per_s: float) -> None:
        return None

    def pause_until(self, when_s: float) -> None:
        return None

    def left_off_slot(self, cost: float = 1.0) -> None:
        return None
