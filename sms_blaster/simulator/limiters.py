"""The shapes a provider's rate limiter takes, told the time so their arithmetic is testable.

Providers do not publish how they limit, and they differ; a client that finds the limit of one
shape may miss another's. Each shape here answers `admit(now_s, cost)` with a `Verdict`: accepted
(perhaps after waiting in a queue) or refused with the true time until the same request would
pass. `done(now_s)` tells it an accepted request was answered (only the cap on requests in
service cares).

    bucket:RATE[:BURST]      a token bucket: RATE/s, BURST tokens banked (default max(2, RATE/20))
    sliding:LIMIT[:SECONDS]  a sliding log: at most LIMIT accepted in any trailing SECONDS (1)
    fixed:LIMIT[:SECONDS]    a fixed window: at most LIMIT per window of SECONDS (1) on the clock
    leaky:RATE[:BURST]       as nginx's limit_req (nodelay): one request per 1/RATE on a clock of
                             whole milliseconds, BURST (0) more; strict about spacing
    concurrency:CAP          at most CAP requests in service at once
    random:SHARE             no limit, but SHARE (0-1) of the requests refused at random
    queue:RATE:DEPTH         served in order at RATE/s; up to DEPTH wait, more are refused
    A@SECONDS,B@SECONDS,C    a schedule: shape A for SECONDS from the first request, then B, ...

Refused requests never count against a limit (only accepted ones do).
"""

from __future__ import annotations

import collections
import math
import random
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Verdict:
    accepted: bool
    wait_s: float | None = None  # refused: when the same request would pass (None: unknown)
    queued_s: float = 0.0  # accepted: how long it waits at the provider before it is served


ACCEPTED = Verdict(True)
MIN_NUMBER, MAX_NUMBER = 1e-6, 1e9  # what a spec's numbers may be


class Limiter(Protocol):
    def admit(self, now_s: float, cost: float = 1.0) -> Verdict: ...

    def done(self, now_s: float) -> None: ...


class TokenBucket:
    """RATE tokens a second, at most BURST banked; a send takes `cost` tokens. A cost above
    BURST is taken from a full bucket, which then owes the rest."""

    __slots__ = ("_burst", "_rate_per_s", "_tokens", "_updated_s")

    def __init__(self, rate_per_s: float, burst: float | None = None) -> None:
        self._rate_per_s = rate_per_s
        self._burst = max(2.0, rate_per_s / 20) if burst is None else burst
        self._tokens = self._burst
        self._updated_s: float | None = None

    def admit(self, now_s: float, cost: float = 1.0) -> Verdict:
        if self._updated_s is not None:
            elapsed_s = max(0.0, now_s - self._updated_s)
            self._tokens = min(self._burst, self._tokens + elapsed_s * self._rate_per_s)
        self._updated_s = now_s
        needed = min(cost, self._burst)
        # The tolerance absorbs float error, so a client that waits exactly as told gets through.
        if self._tokens >= needed - 1e-9:
            self._tokens -= cost
            if self._tokens > -1e-9:
                self._tokens = max(0.0, self._tokens)
            return ACCEPTED
        return Verdict(False, (needed - self._tokens) / self._rate_per_s)

    def done(self, now_s: float) -> None:
        return None


class SlidingLog:
    """At most LIMIT units accepted in any trailing window of `window_s` (an exact log)."""

    __slots__ = ("_limit", "_log", "_used", "_window_s")

    def __init__(self, limit: float, window_s: float = 1.0) -> None:
        self._limit = limit
        self._window_s = window_s
        self._log: collections.deque[tuple[float, float]] = collections.deque()
        self._used = 0.0

    def admit(self, now_s: float, cost: float = 1.0) -> Verdict:
        log = self._log
        # The tolerance lets a client that waits exactly as told find the old entry gone.
        while log and log[0][0] <= now_s - self._window_s + 1e-9:
            self._used -= log.popleft()[1]
        if self._used + cost <= self._limit + 1e-9 or not log:
            log.append((now_s, cost))
            self._used += cost
            return ACCEPTED
        # Wait until enough of the oldest entries leave the window.
        excess = self._used + cost - self._limit
        for at_s, entry_cost in log:
            excess -= entry_cost
            if excess <= 1e-9:
                return Verdict(False, max(0.0, at_s + self._window_s - now_s))
        return Verdict(False, max(0.0, log[-1][0] + self._window_s - now_s))

    def done(self, now_s: float) -> None:
        return None


class FixedWindow:
    """At most LIMIT units per window of `window_s`, the windows aligned on the clock (whole
    seconds of it): a burst at the start of each window, nothing once it is used up."""

    __slots__ = ("_index", "_limit", "_used", "_window_s")

    def __init__(self, limit: float, window_s: float = 1.0) -> None:
        self._limit = limit
        self._window_s = window_s
        self._index = -1
        self._used = 0.0

    def admit(self, now_s: float, cost: float = 1.0) -> Verdict:
        # The tolerance puts a client that waits exactly as told in the next window.
        index = math.floor(now_s / self._window_s + 1e-9)
        if index != self._index:
            self._index, self._used = index, 0.0
        if self._used + cost <= self._limit + 1e-9 or self._used == 0:
            self._used += cost
            return ACCEPTED
        return Verdict(False, (index + 1) * self._window_s - now_s)

    def done(self, now_s: float) -> None:
        return None


class LeakyBucket:
    """nginx's `limit_req` with `nodelay`: an excess that drains at RATE a second, each
    accepted request adding one; a request that would lift it above BURST is refused. Time is
    counted in whole milliseconds, as nginx does, so with BURST 0 two requests closer than
    1/RATE (rounded up to the millisecond) never both pass, however low their average rate."""

    __slots__ = ("_burst", "_excess", "_last_ms", "_rate_per_s")

    def __init__(self, rate_per_s: float, burst: float = 0.0) -> None:
        self._rate_per_s = rate_per_s
        self._burst = burst
        self._excess = 0.0
        self._last_ms: int | None = None

    def admit(self, now_s: float, cost: float = 1.0) -> Verdict:
        now_ms = math.floor(now_s * 1000 + 1e-9)
        if self._last_ms is None:  # the first request finds nothing in excess
            self._last_ms = now_ms
            return ACCEPTED
        elapsed_ms = max(0, now_ms - self._last_ms)
        excess = max(0.0, self._excess - self._rate_per_s * elapsed_ms / 1000 + cost)
        if excess > self._burst + 1e-9:
            return Verdict(False, (excess - self._burst) / self._rate_per_s)
        self._excess, self._last_ms = excess, now_ms
        return ACCEPTED

    def done(self, now_s: float) -> None:
        return None


class RandomRefusals:
    """No limit at all, but a share of the requests refused at random (a carrier's transient
    throttles): a client must not take them for a limit. Seeded, so a run repeats."""

    __slots__ = ("_random", "_share")

    def __init__(self, share: float, seed: int = 7) -> None:
        self._share = share
        self._random = random.Random(seed)

    def admit(self, now_s: float, cost: float = 1.0) -> Verdict:
        if self._random.random() < self._share:
            return Verdict(False, None)
        return ACCEPTED

    def done(self, now_s: float) -> None:
        return None


class InService:
    """At most CAP accepted requests in service at once; `done` ends one's service. How long
    a place stays taken is the server's latency, which this shape does not know: no wait hint."""

    __slots__ = ("_cap", "_in_service")

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._in_service = 0

    def admit(self, now_s: float, cost: float = 1.0) -> Verdict:
        if self._in_service < self._cap:
            self._in_service += 1
            return ACCEPTED
        return Verdict(False)

    def done(self, now_s: float) -> None:
        self._in_service = max(0, self._in_service - 1)


class ServiceQueue:
    """One server working in order at RATE units/s: an accepted request waits its turn (its
    answer is that much later), and a request finding more than DEPTH units waiting is refused."""

    __slots__ = ("_depth", "_free_at_s", "_rate_per_s")

    def __init__(self, rate_per_s: float, depth: float) -> None:
        self._rate_per_s = rate_per_s
        self._depth = depth
        self._free_at_s = -math.inf  # when the work accepted so far is done

    def admit(self, now_s: float, cost: float = 1.0) -> Verdict:
        free_at_s = max(self._free_at_s, now_s)
        waiting = (free_at_s - now_s) * self._rate_per_s
        # Room for this request's units beyond the first; one bigger than the queue goes when
        # nothing waits.
        room = max(0.0, self._depth + 1 - cost)
        if waiting > room + 1e-9:
            return Verdict(False, (waiting - room) / self._rate_per_s)
        self._free_at_s = free_at_s + cost / self._rate_per_s
        return Verdict(True, queued_s=self._free_at_s - now_s)

    def done(self, now_s: float) -> None:
        return None


class Schedule:
    """One shape after another: each phase runs `seconds` from the first request the schedule
    saw (the last phase for ever), and starts fresh. `done` goes to the phase that accepted the
    request, the oldest first (requests are answered about in the order they were accepted), so
    a request still in service when its phase ends does not free a place in the next."""

    __slots__ = ("_in_service", "_phases", "_start_s")

    def __init__(self, phases: list[tuple[Limiter, float | None]]) -> None:
        self._phases = phases
        self._start_s: float | None = None
        self._in_service = [0] * len(phases)  # accepted, not yet done, per phase

    def _current(self, now_s: float) -> int:
        if self._start_s is None:
            self._start_s = now_s
        elapsed_s = now_s - self._start_s
        for index, (_, seconds) in enumerate(self._phases):
            if seconds is None or elapsed_s < seconds:
                return index
            elapsed_s -= seconds
        return len(self._phases) - 1

    def admit(self, now_s: float, cost: float = 1.0) -> Verdict:
        index = self._current(now_s)
        verdict = self._phases[index][0].admit(now_s, cost)
        if verdict.accepted:
            self._in_service[index] += 1
        return verdict

    def done(self, now_s: float) -> None:
        for index, count in enumerate(self._in_service):
            if count:
                self._in_service[index] -= 1
                self._phases[index][0].done(now_s)
                return


def parse(spec: str) -> Limiter:
    """A limiter from its spec (see the module docstring); ValueError names what is wrong."""
    parts = [part.strip() for part in spec.split(",")]
    if len(parts) == 1 and "@" not in parts[0]:
        return _shape(parts[0])
    phases: list[tuple[Limiter, float | None]] = []
    for index, part in enumerate(parts):
        shape, _, seconds = part.partition("@")
        last = index == len(parts) - 1
        if not seconds and not last:
            raise ValueError(f"{part!r}: every phase but the last needs @SECONDS")
        duration = _number(seconds, part) if seconds else None
        if duration is not None and duration <= 0:
            raise ValueError(f"{part!r}: SECONDS must be above 0")
        phases.append((_shape(shape), duration))
    return Schedule(phases)


_SHAPES = {
    "bucket": (1, 2),
    "sliding": (1, 2),
    "fixed": (1, 2),
    "leaky": (1, 2),
    "concurrency": (1, 1),
    "queue": (2, 2),
    "random": (1, 1),
}


def _shape(spec: str) -> Limiter:
    name, _, rest = spec.partition(":")
    arity = _SHAPES.get(name)
    if arity is None:
        raise ValueError(f"{spec!r}: the shape must be one of {', '.join(_SHAPES)}")
    values = [_number(value, spec) for value in rest.split(":")] if rest else []
    if not arity[0] <= len(values) <= arity[1]:
        counts = f"{arity[0]}" if arity[0] == arity[1] else f"{arity[0]} or {arity[1]}"
        raise ValueError(f"{spec!r}: {name} takes {counts} numbers, separated by ':'")
    if any(value <= 0 for value in values):
        raise ValueError(f"{spec!r}: every number must be above 0")
    if name == "bucket":
        return TokenBucket(values[0], values[1] if len(values) > 1 else None)
    if name == "sliding":
        return SlidingLog(*values)
    if name == "fixed":
        return FixedWindow(*values)
    if name == "leaky":
        return LeakyBucket(*values)
    if name == "concurrency":
        if not values[0].is_integer():
            raise ValueError(f"{spec!r}: CAP must be a whole number")
        return InService(int(values[0]))
    if name == "random":
        if values[0] >= 1:
            raise ValueError(f"{spec!r}: SHARE must be below 1")
        return RandomRefusals(values[0])
    return ServiceQueue(values[0], values[1])


def _number(text: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{spec!r}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{spec!r}: {text!r} is not a finite number")
    # Bounded, so every wait and delay a shape computes stays a finite number of seconds.
    if value > 0 and not MIN_NUMBER <= value <= MAX_NUMBER:
        raise ValueError(f"{spec!r}: {text!r} is out of range ({MIN_NUMBER:g} to {MAX_NUMBER:g})")
    return value
