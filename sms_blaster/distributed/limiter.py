"""The global rate limit of a distributed campaign: one schedule in Redis, shared by every worker.

The provider counts the account, not the host, so every worker on every host takes its slots from
one GCRA schedule kept in one hash, `smsb:limit:{name}`:

    tat          the theoretical arrival time: the next free slot (µs on Redis's clock)
    rate         the shared pace, per second (a throttle seen by one worker slows all of them)
    rate_at      when the pace was last set (µs on Redis's clock)
    pause_until  nothing may leave before this (µs on Redis's clock)
    gen          moves on when the schedule changes (a cut or speed-up of 5 % or more, a pause)
    flow_limit   the provider's limit as the campaign's flow controller estimated it, per second
    flow_throttles  throttled answers of all workers, as reported to that controller
    cap          the campaign's rate: the smallest --rate of its workers (`distributed.rate_cap`);
                 no reservation and no pace goes above it

As in `PacedLimiter`, a caller reserves the next slot and sleeps once until it, so no process
polls; slots are `cost / rate` apart from the first send on (no first-second burst); idle time
earns no credit, but slots missed by up to CATCH_UP_S are still used. Every change is one Lua
script on Redis's own clock (`TIME`), so hosts need no synchronised clocks and no caller can
take a slot twice. The key expires a day after its last use, so abandoned limits vanish.

`set_rate` and `pause_until` are synchronous (the engine's flow controller calls them after every
answer): they record the wish and one background task writes it, coalesced, so only the latest
value goes to Redis. Each worker runs its own flow controller, so `set_rate` does not simply
overwrite the shared pace, or a worker still growing its rate would undo another's cut at once:
- a cut sets the shared pace to the lower of it and the cut value (two workers cutting for the
  same overload do not compound);
- a raise adds this worker's growth to the shared pace, up to this worker's --rate.
`pause_until` only ever moves the pause later.
Workers with adaptive flow control share one controller instead (`distributed.shared_flow`):
its holder sets the pace outright with `set_pace` (every change restarts the schedule), and the
others `follow` it, spacing their own sends for it without writing.

Waiters and schedule changes: a caller whose slot is more than _MAX_SLEEP_S away wakes every
_MAX_SLEEP_S and reads `gen`; if it moved, it takes a new slot on the new schedule, so nothing
leaves at the old pace after a cut or inside a pause. A slot at most _MAX_SLEEP_S away is slept
to without a last look, which would cost a round trip per send: so a change keeps the slots of
the next _MAX_SLEEP_S (their holders will use them) and restarts the schedule after them. A
change therefore reaches every worker within _MAX_SLEEP_S. A caller that wakes more than
CATCH_UP_S after its slot (its process was held up: a busy core, a slow start) takes a new slot
rather than leave late together with the next slots' sends, a burst the provider would count.

Redis errors from `reserve` and `acquire` propagate (a worker cannot send without its slot);
errors of the background writes are logged, and the write is tried again on the next call. With a
`RedisGate` of a grace, a Redis outage holds the reservations and the background writes until
Redis is back, and a waiter that cannot read `gen` keeps its slot (taken on the schedule as it
was), so what was reserved before the outage still leaves at its time.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from sms_blaster.distributed.outage import OUTAGE_ERRORS, RedisGate

log = logging.getLogger("sms_blaster.distributed")

CATCH_UP_S = 0.01
TTL_S = 86_400  # a limit unused for a day vanishes
# How long a waiter sleeps before it looks at `gen` again, so how late a change reaches the sends:
# short, as the campaign's flow controller times its probes by it (a look costs one HGET).
_MAX_SLEEP_S = 0.1
_RESCHEDULE_SHARE = 0.05  # a change of pace smaller than this keeps the slots already taken
CHANGE_DELAY_S = _MAX_SLEEP_S  # a new pace set outright reaches the sends within this

# Lua keeps numbers as doubles: µs since 1970 (~1.8e15) are exact below 2^53, but tostring()
# keeps only 14 digits, so every stored number is written with %.17g.
_PRELUDE = """
local function now_us()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000000 + tonumber(time[2])
end
local function str(x) return string.format('%.17g', x) end
"""

# KEYS: the limit. ARGV: cost, default rate per s (the pace the worker followed last: a key
# deleted meanwhile starts again from it, not from the worker's --rate), catch-up µs, TTL ms, the
# campaign's rate as the worker read it last (its `cap`, should the key have lost it).
# Returns {slot µs, wait µs, generation}.
_RESERVE = (
    _PRELUDE
    + """
local now = now_us()
local state = redis.call('HMGET', KEYS[1], 'tat', 'rate', 'pause_until', 'gen', 'cap')
local rate = tonumber(state[2]) or tonumber(ARGV[2])
local cap = tonumber(state[5]) or tonumber(ARGV[5])
if rate > cap then rate = cap end
local slot = tonumber(state[1]) or now
if slot < now - tonumber(ARGV[3]) then slot = now end  -- idle time earns no credit
local pause = tonumber(state[3]) or 0
if slot < pause then slot = pause end
redis.call('HSET', KEYS[1], 'tat', str(slot + tonumber(ARGV[1]) * 1000000 / rate))
if not state[2] then redis.call('HSET', KEYS[1], 'rate', ARGV[2]) end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {math.floor(slot), math.max(0, math.ceil(slot - now)), tonumber(state[4]) or 0}
"""
)

# Restart the schedule after a change: keep the slots of the next keep µs (their holders send
# without looking again), and the ones before the pause's end; later slots are taken anew.
_RESCHEDULE = """
local function reschedule(key, now, keep, pause)
  local tat = tonumber(redis.call('HGET', key, 'tat')) or now
  redis.call('HSET', key, 'tat', str(math.min(tat, math.max(now + keep, pause))))
  redis.call('HINCRBY', key, 'gen', 1)
end
"""

# KEYS: the limit. ARGV: this worker's new rate, its previous rate, its ceiling, reschedule
# share, keep µs, TTL ms. Returns the shared rate.
_SET_RATE = (
    _PRELUDE
    + _RESCHEDULE
    + """
local new, old, ceiling = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'rate', 'pause_until', 'cap')
local stored = tonumber(state[1]) or ceiling
local rate
if new < old then
  rate = math.min(stored, new)
else
  rate = math.min(ceiling, stored + new - old)
end
if state[3] then rate = math.min(rate, tonumber(state[3])) end
redis.call('HSET', KEYS[1], 'rate', str(rate), 'rate_at', str(now_us()))
if math.abs(rate / stored - 1) >= tonumber(ARGV[4]) then
  reschedule(KEYS[1], now_us(), tonumber(ARGV[5]), tonumber(state[2]) or 0)
end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return str(rate)
"""
)

# KEYS: the limit. ARGV: the pause's length from now in µs, keep µs, TTL ms.
_PAUSE = (
    _PRELUDE
    + _RESCHEDULE
    + """
local now = now_us()
local pause = now + tonumber(ARGV[1])
if pause > (tonumber(redis.call('HGET', KEYS[1], 'pause_until')) or 0) then
  redis.call('HSET', KEYS[1], 'pause_until', str(pause))
  reschedule(KEYS[1], now, tonumber(ARGV[2]), pause)
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
"""
)

# KEYS: the limit. ARGV: this worker's ceiling, TTL ms. A pace set by other workers is kept
# (they may have cut it), unless it is above this worker's --rate.
_START = (
    _PRELUDE
    + """
local stored = tonumber(redis.call('HGET', KEYS[1], 'rate'))
local changed = tonumber(redis.call('HGET', KEYS[1], 'rate_at')) or 0
-- A pace cut more than a minute ago (by a worker gone since, or an earlier run) is stale.
if not stored or stored > tonumber(ARGV[1]) or now_us() - changed > 60000000 then
  redis.call('HSET', KEYS[1], 'rate', ARGV[1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""
)

# The pace a campaign's one flow controller chose, set outright (see distributed.shared_flow),
# only while KEYS[2] holds ARGV[1] (the controller's lease): a deposed holder writes nothing.
# KEYS: the limit, the lease. ARGV: holder, rate, limit ('' unknown), throttles, a pause from now
# in µs (0: none), reschedule share, keep µs, TTL ms. Returns 1 if written.
_SET_PACE = (
    _PRELUDE
    + _RESCHEDULE
    + """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
local now = now_us()
local rate = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'rate', 'pause_until', 'cap')
if state[3] then rate = math.min(rate, tonumber(state[3])) end
local stored = tonumber(state[1]) or rate
local pause = tonumber(state[2]) or 0
local changed = rate ~= stored and math.abs(rate / stored - 1) >= tonumber(ARGV[6])
redis.call('HSET', KEYS[1], 'rate', str(rate), 'rate_at', str(now), 'flow_throttles', ARGV[4])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'flow_limit', ARGV[3]) end
local wait = tonumber(ARGV[5])
if wait > 0 and now + wait > pause then
  pause = now + wait
  redis.call('HSET', KEYS[1], 'pause_until', str(pause))
  changed = true
end
if changed then reschedule(KEYS[1], now, tonumber(ARGV[7]), pause) end
redis.call('PEXPIRE', KEYS[1], ARGV[8])
return 1
"""
)

# Every script, for loading them before the first send.
SCRIPTS = (_RESERVE, _SET_RATE, _PAUSE, _START, _SET_PACE)


def pace_from(fields: list[str | None]) -> Pace | None:
    """The pace `RedisLimiter.read_pace` read; None before any was set."""
    rate, limit, throttles = fields
    if rate is None:
        return None
    return Pace(float(rate), None if limit is None else float(limit), int(throttles or 0))


def sender_limit_name(name: str, sender: str) -> str:
    """The name of the limit of one sender of a campaign's pool, beside its global limit `name`
    (every worker paces that sender on it)."""
    return f"{name}:sender:{sender}"


def limit_key(name: str) -> str:
    """The hash of the limit `name` (braces: one Redis Cluster slot with its campaign's keys)."""
    return f"smsb:limit:{{{name}}}"


@dataclass(frozen=True, slots=True)
class Pace:
    """The pace every worker keeps, and what the campaign's flow controller found."""

    rate_per_s: float
    limit_per_s: float | None  # the provider's limit as estimated; None: not measured yet
    throttles: int  # throttled answers of all workers
    pause_s: float = 0.0  # when set: nothing leaves for this long from now


@dataclass(frozen=True, slots=True)
class Slot:
    """A slot taken, as this process waits for it."""

    deadline_s: float  # on this process's monotonic clock
    generation: int
    cost: float
    ahead: bool = True  # in the future when taken: the pace was holding sends back


@dataclass(frozen=True, slots=True)
class Reservation:
    """A slot taken on the shared schedule."""

    slot_us: int  # on Redis's clock
    wait_s: float  # from the reservation until the slot
    generation: int  # of the schedule it was taken on


class RedisLimiter:
    """Evenly spaced sends at a pace shared by every worker of a campaign, on any host."""

    __slots__ = (
        "_cap_per_s",
        "_ceiling_per_s",
        "_gate",
        "_key",
        "_last_send_s",
        "_pause",
        "_pause_s",
        "_rate_per_s",
        "_redis",
        "_reserve",
        "_set_pace",
        "_set_rate",
        "_sleep",
        "_start",
        "_writer",
        "_written_pause_s",
        "_written_rate_per_s",
    )

    def __init__(
        self,
        redis: aioredis.Redis,
        name: str,
        rate_per_s: float,
        *,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        gate: RedisGate | None = None,
    ) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be positive")
        self._redis = redis
        self._gate = gate or RedisGate()
        self._key = limit_key(name)
        self._ceiling_per_s = rate_per_s
        self._cap_per_s = rate_per_s  # the campaign's rate as read last (`cap`)
        self._sleep = sleep  # may return True to say the run stopped: acquire returns then
        self._reserve = redis.register_script(_RESERVE)
        self._set_rate = redis.register_script(_SET_RATE)
        self._pause = redis.register_script(_PAUSE)
        self._start = redis.register_script(_START)
        self._set_pace = redis.register_script(_SET_PACE)
        # What this worker wants, and what it last wrote: the writer sends the difference.
        self._rate_per_s = self._written_rate_per_s = rate_per_s
        self._pause_s = self._written_pause_s = float("-inf")
        self._writer: asyncio.Task[None] | None = None
        self._last_send_s = float("-inf")  # when this process's last send left (monotonic)

    async def start(self) -> None:
        """Set the shared pace to this worker's rate, unless others have set it (lower)."""
        await self._start(keys=[self._key], args=[self._ceiling, TTL_S * 1000])

    @property
    def _ceiling(self) -> float:
        """The most this worker's pace may be: its --rate, or the campaign's smaller one."""
        return min(self._ceiling_per_s, self._cap_per_s)

    def cap(self, rate_per_s: float) -> None:
        """The campaign's rate now (the smallest --rate of its workers; see
        `distributed.rate_cap`): Redis holds every pace to it, and this worker's reservations
        are held to it too when the limit's key lost it."""
        self._cap_per_s = rate_per_s
        # Redis holds the shared pace to it (`rate_cap`): this worker's own spacing follows.
        self._rate_per_s = min(self._rate_per_s, self._ceiling)
        self._written_rate_per_s = min(self._written_rate_per_s, self._ceiling)

    async def close(self) -> None:
        """Wait for the pending writes of `set_rate` and `pause_until`."""
        while self._writer is not None and not self._writer.done():
            await self._writer

    async def reserve(self, cost: float = 1.0) -> Reservation:
        """Take the next slot for a send of `cost` units."""
        args = [cost, min(self._rate_per_s, self._ceiling), CATCH_UP_S * 1e6, TTL_S * 1000]
        args.append(self._ceiling)
        slot_us, wait_us, generation = await self._gate.call(
            lambda: self._reserve(keys=[self._key], args=args), new_work=True
        )
        return Reservation(int(slot_us), int(wait_us) / 1e6, int(generation))

    async def take(self, cost: float = 1.0) -> Slot:
        """Reserve the next slot; `wait` for it later (a worker claims its message between)."""
        asked_s = time.monotonic()
        reservation = await self.reserve(cost)
        # On this process's clock the slot is at most this: the script ran after `asked_s`.
        deadline_s = asked_s + reservation.wait_s
        return Slot(deadline_s, reservation.generation, cost, reservation.wait_s > 0)

    async def wait(self, slot: Slot) -> None:
        """Return at `slot`'s time, or on a new slot when the schedule changed or it was missed."""
        while True:
            remaining_s = slot.deadline_s - time.monotonic()
            while remaining_s > _MAX_SLEEP_S:
                if await self._sleep(_MAX_SLEEP_S) is True:
                    return  # the run stopped; the caller checks that
                if await self._generation(slot.generation) != slot.generation:
                    break  # the schedule changed: take a new slot on it
                remaining_s = slot.deadline_s - time.monotonic()
            else:
                if remaining_s > 0 and await self._sleep(remaining_s) is True:
                    return
                # A slot that was due when taken (the pace is not what holds the sends back)
                # is not missed by a late claim: there is no schedule to burst ahead of.
                if not slot.ahead or time.monotonic() - slot.deadline_s <= CATCH_UP_S:
                    await self._space(slot.cost)
                    return
                # Woken too late (this process was held up): the slot is gone. Leaving now
                # would go out together with the next slots' sends, a burst the provider
                # counts; take a new slot instead.
            slot = await self.take(slot.cost)

    async def acquire(self, cost: float = 1.0) -> None:
        await self.wait(await self.take(cost))

    async def _space(self, cost: float) -> None:
        """Keep this process's own sends at least one global interval apart.

        Its slots are that far apart on the shared schedule; sends closer than that are slots
        that came due together while the process was held up (by less than CATCH_UP_S), and
        going out at once they would add to the other workers' sends a burst the provider
        counts. They leave one interval apart instead, a few milliseconds late."""
        now = time.monotonic()
        at = max(now, self._last_send_s + cost / self._rate_per_s)
        self._last_send_s = at
        if at > now:
            await self._sleep(at - now)

    def set_rate(self, rate_per_s: float) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be positive")
        self._rate_per_s = min(rate_per_s, self._ceiling)
        self._write_soon()

    def follow(self, rate_per_s: float) -> None:
        """Space this process's own sends for a shared pace another process set (writes nothing)."""
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be positive")
        rate_per_s = min(rate_per_s, self._cap_per_s)  # Redis holds the pace to it too
        self._rate_per_s = self._written_rate_per_s = rate_per_s

    async def set_pace(self, pace: Pace, holder: tuple[str, str]) -> bool:
        """Set the shared pace outright (not merged with other wishes), and the estimate behind
        it, while the lease `holder` (key, value) is held; False if it is not."""
        lease_key, holder_id = holder
        limit = "" if pace.limit_per_s is None else repr(pace.limit_per_s)
        args: list[str | float] = [holder_id, repr(pace.rate_per_s), limit, pace.throttles]
        # Every change restarts the schedule (a share of 0): the controller times its probes
        # from the moment it sets them, and slots taken ahead at the old pace would eat a probe.
        args += [pace.pause_s * 1e6, 0.0, _MAX_SLEEP_S * 1e6, TTL_S * 1000]
        written = await self._set_pace(keys=[self._key, lease_key], args=args)
        if written:
            self.follow(pace.rate_per_s)
        return bool(written)

    def read_pace(self, pipe: Pipeline) -> None:
        """Queue the read of the shared pace on `pipe`; `pace_from` its result."""
        pipe.hmget(self._key, ["rate", "flow_limit", "flow_throttles"])

    def pause_until(self, when_s: float) -> None:
        """Let no worker send before `when_s` on this process's monotonic clock."""
        self._pause_s = max(self._pause_s, when_s)
        self._write_soon()

    async def _generation(self, known: int) -> int:
        """The schedule's generation; `known` while Redis is away."""
        if self._gate.down:
            return known
        try:
            return int(await self._redis.hget(self._key, "gen") or 0)
        except OUTAGE_ERRORS as exc:
            if self._gate.lost(exc):
                return known
            raise

    def _write_soon(self) -> None:
        dirty = (
            self._rate_per_s != self._written_rate_per_s or self._pause_s > self._written_pause_s
        )
        if dirty and (self._writer is None or self._writer.done()):
            self._writer = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        """Write what changed, the latest value only, until nothing is left; stop on an error."""
        try:
            while True:
                if self._pause_s > self._written_pause_s:
                    pause_s = self._pause_s
                    delay_us = (pause_s - time.monotonic()) * 1e6
                    if delay_us > 0:
                        args = [delay_us, _MAX_SLEEP_S * 1e6, TTL_S * 1000]
                        await self._gate.call(functools.partial(self._pause, [self._key], args))
                    self._written_pause_s = pause_s
                elif self._rate_per_s != self._written_rate_per_s:
                    new, old = self._rate_per_s, self._written_rate_per_s
                    args = [new, old, self._ceiling, _RESCHEDULE_SHARE]
                    args += [_MAX_SLEEP_S * 1e6, TTL_S * 1000]
                    await self._gate.call(functools.partial(self._set_rate, [self._key], args))
                    self._written_rate_per_s = new
                else:
                    return
        except RedisError as exc:
            # Kept as wished: the next set_rate or pause_until (after the next answer) tries again.
            log.warning("could not update the shared rate limit %s: %s", self._key, exc)
