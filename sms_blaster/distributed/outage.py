"""Riding out a Redis outage (a restart, a failover) in a worker, for up to `--redis-grace`.

Every Redis call of a running worker goes through one `RedisGate`. The first call that finds Redis
gone (refused, reset, still loading its data, a demoted primary) closes the gate, and calls wait at
it instead of failing: the worker takes no new claims and no rate slots, its requests already in
flight finish, and the writes of their ends wait. One probe pings Redis with a growing backoff;
when Redis answers, the gate runs its `on_back` steps (the queue renews its leases and hands back
claims whose answer was lost) and opens, and each waiting call is tried again. Past the grace the
gate gives up for good: `on_give_up` stops the run (exit 4), and every call, waiting or new, fails
at once with `RedisGone` without going to Redis: a Redis that is frozen rather than down answers
no call, and each would hold the stopping worker for a socket timeout, in turn for a connection.
Once the run is over (`abandon`), a call that finds Redis away fails rather than wait for it.

A call tried again may already have run on Redis (its answer was lost with the connection), so
only calls that may run twice go through the gate; the queue's scripts are written for that.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("sms_blaster.distributed")

T = TypeVar("T")

# Redis is away, not wrong: refused or reset (BusyLoadingError, "loading the dataset", is a
# ConnectionError), no answer in time, or a primary demoted to a replica during a failover.
# OSError covers the socket errors redis-py passes on unwrapped, and the probe's own timeout.
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ReadOnlyError,
    OSError,
)

_FIRST_PROBE_S = 0.05
_MAX_PROBE_S = 1.0  # how late, at most, a worker notices that Redis is back
_MAX_LOOK_S = 5.0  # one ping and the steps after it


class RedisGone(RedisConnectionError):
    """Redis is away and the run is stopping: the call is not tried."""


def error_text(exc: BaseException | None) -> str:
    """What an outage error says; an error with no text (a timeout) says "no answer"."""
    if exc is None:
        return "no answer"
    text = str(exc)
    if text:
        return text
    return "no answer" if isinstance(exc, TimeoutError | RedisTimeoutError) else type(exc).__name__


class RedisShut(RedisError):
    """Redis answers, but lost what the run works on (see `RedisGate.shut`): not tried."""


class RedisGate:
    """Holds a worker's Redis calls while Redis is away, for up to `grace_s` (0: never)."""

    __slots__ = (
        "_abandoned",
        "_back",
        "_clock",
        "_error",
        "_gone",
        "_lost_at_s",
        "_on_back",
        "_on_give_up",
        "_ping",
        "_probe",
        "_say",
        "_shut",
        "_sleep",
        "_stopped",
        "grace_s",
    )

    def __init__(
        self,
        grace_s: float = 0.0,
        ping: Callable[[], Awaitable[object]] | None = None,
        *,
        say: Callable[[str], None] = log.warning,
        on_give_up: Callable[[str], None] = lambda detail: None,
        stopped: Callable[[], Awaitable[object]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        if grace_s > 0 and ping is None:
            raise ValueError("a gate with a grace needs a ping to find Redis back")
        self.grace_s = grace_s
        self._ping = ping
        self._say = say
        self._on_give_up = on_give_up
        self._stopped = stopped  # returns once the run stops: calls for new work wait no more
        self._clock = clock
        self._sleep = sleep
        self._back = asyncio.Event()
        self._back.set()
        self._gone = False
        self._abandoned = False  # the run is over: nothing waits for Redis any more
        self._lost_at_s = 0.0
        self._error: BaseException | None = None
        self._shut: str | None = None
        self._on_back: list[Callable[[], Awaitable[None]]] = []
        self._probe: asyncio.Task[None] | None = None

    @property
    def gone(self) -> bool:
        """The grace ran out: calls fail at once from now on."""
        return self._gone

    @property
    def abandoned(self) -> bool:
        """The run is over: nothing waits for Redis, nor tries a failed write again."""
        return self._abandoned

    @property
    def down(self) -> bool:
        """Redis is away and the gate still waits for it."""
        return not self._back.is_set()

    def on_back(self, step: Callable[[], Awaitable[None]]) -> None:
        """Run `step` when Redis is back, before any waiting call goes on."""
        self._on_back.append(step)

    async def call(self, op: Callable[[], Awaitable[T]], *, new_work: bool = False) -> T:
        """`op()`, waiting out an outage and trying it again after. `new_work` (a claim, a rate
        slot): give up waiting once the run stops, so a drain is not held up by Redis."""
        while True:
            if self.down:
                await self._wait(new_work)
            if self._shut is not None:
                raise RedisShut(self._shut)
            if self._gone:
                raise RedisGone(f"Redis is away ({error_text(self._error)}) past --redis-grace")
            try:
                return await op()
            except OUTAGE_ERRORS as exc:
                if not self.lost(exc):
                    raise

    def lost(self, exc: BaseException) -> bool:
        """Note that a call found Redis away; True when the caller may wait for it to return."""
        if self.grace_s <= 0 or self._gone or self._abandoned:
            return False
        if not self.down:
            self._back.clear()
            self._lost_at_s = self._clock()
            self._error = exc
            self._say(
                f"sms-blaster: Redis lost ({exc}); no new messages are claimed; waiting up to "
                f"{self.grace_s:g} s for it to return (--redis-grace)"
            )
            self._probe = asyncio.get_running_loop().create_task(self._find_back())
        return True

    def shut(self, detail: str) -> None:
        """Redis lost what the run works on (a campaign it restarted without, flushed or
        evicted): no call goes to it from now on, those waiting for it included, so nothing is
        written into a Redis that would take it for the campaign's state."""
        self._shut = detail
        self._gone = True
        self._back.set()

    def abandon(self) -> None:
        """The run is over (or aborted): calls waiting for Redis fail now, and a later call that
        finds Redis away fails with its error: nothing waits for Redis any more."""
        self._abandoned = True
        if self.down:
            self._gone = True
            self._back.set()

    async def close(self) -> None:
        """Stop probing (the run is over)."""
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)

    async def _wait(self, new_work: bool) -> None:
        if not new_work or self._stopped is None:
            await self._back.wait()
            return
        back = asyncio.ensure_future(self._back.wait())
        stopped = asyncio.ensure_future(self._stopped())
        try:
            await asyncio.wait((back, stopped), return_when=asyncio.FIRST_COMPLETED)
        finally:
            back.cancel()
            stopped.cancel()
        if self.down:
            raise RedisGone(f"Redis is away ({error_text(self._error)}) and the run is stopping")

    async def _find_back(self) -> None:
        """Ping with a growing backoff until Redis answers and the `on_back` steps ran, or the
        grace is over."""
        assert self._ping is not None
        delay_s = _FIRST_PROBE_S
        while True:
            left_s = self.grace_s - (self._clock() - self._lost_at_s)
            if left_s <= 0:
                self._give_up()
                return
            await self._sleep(min(delay_s, left_s))
            delay_s = min(delay_s * 2, _MAX_PROBE_S)
            try:
                # A partitioned Redis may not even refuse: bound each look, so the next one
                # tries a new connection and the grace is kept.
                async with asyncio.timeout(min(max(left_s, _FIRST_PROBE_S), _MAX_LOOK_S)):
                    await self._ping()
                    for step in self._on_back:
                        if self._shut is None:  # a step found Redis lost what the run works on
                            await step()
            except OUTAGE_ERRORS as exc:
                self._error = exc
                continue
            except RedisError as exc:  # Redis answers, but a step failed: go on without it
                log.error("after Redis came back: %s", exc)
            except Exception as exc:  # a bug in a step must not leave every call waiting
                log.exception("after Redis came back: %r", exc)
            break
        if self._shut is None:  # else a step found it lost what the run works on: no going on
            self._say(
                f"sms-blaster: Redis is back after {self._clock() - self._lost_at_s:.1f} s; "
                "sending goes on"
            )
        self._back.set()

    def _give_up(self) -> None:
        self._gone = True
        self._on_give_up(
            f"Redis unreachable for longer than --redis-grace ({self.grace_s:g} s; "
            f"{error_text(self._error)}); start it and run the workers again to go on"
        )
        self._back.set()  # the waiting calls fail, without a try
