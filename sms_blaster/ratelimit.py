"""The global rate limit, taken at the moment of sending.

Each caller reserves the next free slot on an evenly spaced schedule and sleeps once until it, so:
- there is no first-second burst: slots are `1 / rate` apart from the first send on, and idle time
  earns no credit, so any one-second window holds at most `rate` (+1 at the edge) sends;
- no caller polls: one timer per send, not a wake-up per tick per waiter (a bucket that wakes all
  waiters can take a whole core at thousands of sends per second under uvloop);
- the schedule is kept in theoretical time, so a late wake-up does not slow the rate that follows.
A send may cost more than one slot (e.g. a provider that counts segments).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol


class RateLimiter(Protocol):
    async def acquire(self, cost: float = 1.0) -> None:
        """Return when a send of `cost` units may leave."""


class PacedLimiter:
    """Evenly spaced sends at `rate_per_s`, shared by every worker of a run."""

    __slots__ = ("_clock", "_interval_s", "_next_s", "_sleep")

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
        self._sleep = sleep
        self._next_s = float("-inf")

    @property
    def rate_per_s(self) -> float:
        return 1.0 / self._interval_s

    async def acquire(self, cost: float = 1.0) -> None:
        now = self._clock()
        slot = max(self._next_s, now)
        self._next_s = slot + cost * self._interval_s
        if slot > now:
            await self._sleep(slot - now)


class Unlimited:
    """No rate limit (for a simulator run or a benchmark of the bare pipeline)."""

    __slots__ = ()

    async def acquire(self, cost: float = 1.0) -> None:
        return None
