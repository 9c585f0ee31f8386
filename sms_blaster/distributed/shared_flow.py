"""One flow controller for all workers of a campaign: they find the provider's limit together.

The provider counts the account, so the limit is one number for the campaign, and only the
answers of every worker together show it: a worker that sees a third of the traffic measures a
third of the limit. So no worker steers the shared pace from its own answers. Each worker's
`SharedFlow` (the engine's flow control, with `FlowController`'s interface):

- reports. Every answer that says something of the limit (accepted, refused for the row,
  throttled) is kept as "outcome sent_at latency in_flight", its send time on Redis's clock,
  and every _TICK_S the batch goes to the list `smsb:flow:{name}:answers`, in the same
  pipelined round trip as the rest of the tick.
- elects. The same round trip runs one script: the lease `smsb:flow:{name}:leader` is renewed
  by its holder, or taken (SET NX PX) when it lapsed; for the holder the script also takes every
  answer reported since its last tick. A worker that stops hands the lease back, so another
  takes over at its next tick; one that dies loses it after _LEASE_S.
- leads. The holder runs the real `FlowController` over everyone's answers, in the order they
  were answered, and only once every worker has reported up to then: each report also sets the
  worker's mark in the hash `smsb:flow:{name}:marks`, the time (Redis's) up to which its answers
  are in. Fed an answer before every worker's report of that moment is in, the controller counts
  gaps where a worker's report was late (a busy core holds a tick back by 100-300 ms), cuts on
  a count short of the limit and judges probes before their answers are in. A worker whose mark
  is older than _SILENT_S holds nobody back (stopped, stuck, or cut off from Redis); one that
  stops removes its mark. With no marks (workers of an earlier release) the holder waits
  _LAG_S. It writes the pace outright into the shared limit
  (`RedisLimiter.set_pace`, which waiters re-take their slots on), with the estimated limit, the
  throttle count and any blind pause. A new holder starts its controller from the estimate
  stored there, cruising under it, not from a slow start.
- follows. Every worker reads the pace and the estimate in the same round trip and gives the
  pace as its advice (and spaces its own sends for it); its window stays its own (requests in
  flight are local): a local `FlowController` sees only this worker's answers and sets it.

Why a leader, not the controller in a Lua script or a merge of each worker's wishes: the
controller keeps seconds of history and is tuned in one place (`sms_blaster.flow`); one process
running it over all answers finds the limit exactly as `send` does, where merged wishes of
controllers that each see a share of the traffic cut too deep (each measures its share).

Times: each worker measures the offset of its monotonic clock to Redis's TIME once at start, so
the send times of workers on several hosts line up on one clock. The leader acts on answers a
few ticks old, and its pace reaches the sends only once waiters look again (CHANGE_DELAY_S), so
each answer is fed to the controller as if sent _SHIFT_S earlier: a probe's pace is counted from
when it took effect, and a slow start doubles only once the previous pace came back clean.

Failure modes: a tick that meets a Redis error drops its batch of answers (they only inform an
estimate; old ones would mislead after an outage), logs, and leaves the pace as it was; while
the gate of `--redis-grace` holds Redis for lost, ticks wait. A leader cut off from Redis loses
its lease after _LEASE_S and another worker takes over from the stored estimate; a deposed leader
cannot write (the pace script checks the lease). With no leader for a moment (between a crash
and the lease's end) the pace stays where it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import logging
import time
from collections import deque
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from sms_blaster.distributed.limiter import CHANGE_DELAY_S, TTL_S, Pace, RedisLimiter, pace_from
from sms_blaster.distributed.outage import OUTAGE_ERRORS, RedisGate
from sms_blaster.distributed.redis_client import explain
from sms_blaster.flow import Advice, FlowController, FlowSettings
from sms_blaster.models import Outcome

log = logging.getLogger("sms_blaster.distributed")

_TICK_S = 0.025  # how often a worker reports, reads the pace and (leading) steers it
_LAG_S = 0.05  # without marks, the leader takes answers this long after they came
_SILENT_S = 0.5  # a worker whose mark is older than this holds no answers back
# A pace the leader sets reaches the sends this long after the answers it acts on: they are fed
# _LAG_S late, written within a tick, and slots already taken are kept for CHANGE_DELAY_S. The
# controller assumes its pace holds from the answer it acts on; each answer is fed as if sent
# this much earlier (and answered after as long), so what it counts as sent at a pace was.
_SHIFT_S = _LAG_S + _TICK_S + CHANGE_DELAY_S
_LEASE_S = 1.0  # a leader silent this long is replaced
# The leader probes after half a second of cruise, not two: its first estimate, from a slow
# start that the delay above stretches, is rougher than one process's, and only probes raise it.
_PROBE_EVERY_S = 0.5
_STALE_S = 2.0  # a new leader ignores answers older than this: sent at a pace long gone
_MAX_BUFFERED = 10_000  # answers a worker keeps while it cannot report (the oldest go first)
_MAX_REPORTED = 50_000  # answers the list keeps while no leader takes them
_CLOSE_S = 2.0  # the last report and the lease's release, at most

_ERRORS: tuple[type[BaseException], ...] = (RedisError, *OUTAGE_ERRORS)
_CODES = {Outcome.SENT: "s", Outcome.PERMANENT: "p", Outcome.THROTTLED: "t"}
_OUTCOMES = {code: outcome for outcome, code in _CODES.items()}

# KEYS: the lease, the answers. ARGV: this worker, lease ms. Returns {state, answers...}:
# state 0 another worker leads, 1 this one goes on leading, 2 this one just took the lease.
_LEAD = """
local holder = redis.call('GET', KEYS[1])
local state = 0
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  state = 1
elseif not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  state = 2
end
if state == 0 then return {0} end
local answers = redis.call('LRANGE', KEYS[2], 0, -1)
redis.call('DEL', KEYS[2])
table.insert(answers, 1, state)
return answers
"""

# KEYS: the lease. ARGV: this worker. Hands the lease back if this worker holds it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
"""

SCRIPTS = (_LEAD, _RELEASE)


def lease_key(name: str) -> str:
    return f"smsb:flow:{{{name}}}:leader"


def answers_key(name: str) -> str:
    return f"smsb:flow:{{{name}}}:answers"


def marks_key(name: str) -> str:
    return f"smsb:flow:{{{name}}}:marks"


class SharedFlow:
    """A worker's flow control, steered by the campaign's one controller (see the module)."""

    __slots__ = (
        "_answers_key",
        "_buffer",
        "_clock",
        "_controller",
        "_failing",
        "_gate",
        "_lead",
        "_lease_key",
        "_limiter",
        "_local",
        "_loop",
        "_marks_key",
        "_offset_s",
        "_pending",
        "_redis",
        "_release",
        "_settings",
        "_since_s",
        "_throttles_before",
        "_worker",
        "_written",
        "known_limit_per_s",
        "rate_per_s",
        "throttles",
    )

    def __init__(
        self,
        redis: aioredis.Redis,
        name: str,
        worker: str,
        limiter: RedisLimiter,
        settings: FlowSettings,
        *,
        gate: RedisGate | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._worker = worker
        self._limiter = limiter
        self._settings = settings
        self._gate = gate or RedisGate()
        self._clock = clock
        self._lease_key, self._answers_key = lease_key(name), answers_key(name)
        self._marks_key = marks_key(name)
        self._lead = redis.register_script(_LEAD)
        self._release = redis.register_script(_RELEASE)
        self._local = FlowController(settings, clock())  # this worker's window
        self._offset_s = 0.0  # Redis's clock minus this process's
        self._buffer: deque[str] = deque(maxlen=_MAX_BUFFERED)
        self._controller: FlowController | None = None  # while this worker leads
        self._throttles_before = 0  # counted by earlier leaders
        self._pending: list[tuple[float, float, float, str, int]] = []  # a heap, by answer time
        self._written: Pace | None = None
        self._since_s = 0.0  # a leader ignores answers older than this (left while none led)
        self._failing = False  # the last tick met a Redis error (said once, not every tick)
        self._loop: asyncio.Task[None] | None = None
        self.rate_per_s = self._local.rate_per_s
        self.known_limit_per_s: float | None = None
        self.throttles = 0

    @property
    def window(self) -> int:
        return self._local.window

    @property
    def leading(self) -> bool:
        return self._controller is not None

    def observe(
        self,
        outcome: Outcome,
        sent_at_s: float,
        latency_s: float,
        now_s: float,
        wait_s: float | None = None,
        in_flight: int = 0,
    ) -> Advice:
        """Note one answer for the next report; the shared pace and this worker's window."""
        window = self._local.observe(outcome, sent_at_s, latency_s, now_s, wait_s, in_flight).window
        code = _CODES.get(outcome)
        if code is not None:
            sent_at = sent_at_s + self._offset_s
            self._buffer.append(f"{code} {sent_at:.6f} {latency_s:.6f} {in_flight}")
        return Advice(self.rate_per_s, window)

    async def start(self, *, ticking: bool = True) -> None:
        """Line this process's clock up with Redis's, then report, elect and read once (a first
        leader sets the starting pace before anything is sent). `ticking`: and every _TICK_S
        from now on (else only when `tick` is called)."""
        before_s = self._clock()
        seconds, micros = await self._redis.time()
        after_s = self._clock()
        self._offset_s = seconds + micros / 1e6 - (before_s + after_s) / 2
        await self.tick()
        if ticking:
            self._loop = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Stop ticking; report the last answers and hand the lease back, if Redis answers."""
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.wait([self._loop], timeout=_CLOSE_S)
        if self._gate.down or self._gate.gone:
            return
        with contextlib.suppress(TimeoutError, *_ERRORS):
            async with asyncio.timeout(_CLOSE_S):
                await self.tick()
                await self._release(keys=[self._lease_key], args=[self._worker])
                await self._redis.hdel(self._marks_key, self._worker)
        self._controller = None

    async def tick(self) -> None:
        """One round trip: report, elect, read the pace; a leader then steers it. A Redis error
        drops the batch and leaves the pace as it was."""
        if self._gate.down or self._gate.gone:
            # The gate probes Redis; the pace stays as it was, and answers from before the
            # outage would only mislead the leader after it. Gone: the run stops (past the
            # grace, or Redis lost the campaign: nothing is written into it).
            self._buffer.clear()
            return
        batch = list(self._buffer)
        self._buffer.clear()
        reported_s = self._redis_now_s()  # every answer taken up to now is in the batch
        try:
            state, answers, marks, stored = await self._exchange(batch, reported_s)
            if state == 0:
                self._step_down()
            else:
                if state == 2 or self._controller is None:
                    self._take_over(stored)
                await self._steer(answers, marks)
            if self._controller is None and stored is not None:
                self._follow(stored)
        except _ERRORS as exc:
            if isinstance(exc, OUTAGE_ERRORS):
                self._gate.lost(exc)
            if not self._failing:
                log.warning("flow control: answers not reported, the pace kept (%s)", explain(exc))
            self._failing = True
        else:
            self._failing = False

    async def _run(self) -> None:
        task = asyncio.current_task()
        while task is None or not task.cancelling():
            await asyncio.sleep(_TICK_S)
            # A cancel that lands in a Redis call may come out as that call's error, which a
            # tick takes in its stride: the loop must still end, or `close` waits for ever.
            await self.tick()

    async def _exchange(
        self, batch: list[str], reported_s: float
    ) -> tuple[int, list[str], list[float], Pace | None]:
        """Report the batch and this worker's mark; elect; the answers taken (leading), every
        worker's mark, the pace. The marks are read before the answers are taken: a worker's
        batch goes in before its mark, so every mark read has its answers among those taken."""
        # As a context: a failure before `execute` (loading the script) would otherwise leave
        # the pipeline holding its connection, which redis-py reports as an error when collected.
        async with self._redis.pipeline(transaction=False) as pipe:
            if batch:
                pipe.rpush(self._answers_key, *batch)
                pipe.ltrim(self._answers_key, -_MAX_REPORTED, -1)
                pipe.pexpire(self._answers_key, TTL_S * 1000)
            pipe.hset(self._marks_key, self._worker, f"{reported_s:.6f}")
            pipe.pexpire(self._marks_key, TTL_S * 1000)
            pipe.hvals(self._marks_key)
            await self._lead(
                keys=[self._lease_key, self._answers_key],
                args=[self._worker, int(_LEASE_S * 1000)],
                client=pipe,
            )
            self._limiter.read_pace(pipe)
            *_, marks, (state, *answers), fields = await pipe.execute()
        return int(state), answers, [float(mark) for mark in marks], pace_from(fields)

    def _take_over(self, stored: Pace | None) -> None:
        """Lead from the estimate the last leader stored (a new campaign: a slow start)."""
        limit = None if stored is None else stored.limit_per_s
        settings = dataclasses.replace(
            self._settings, probe_every_s=_PROBE_EVERY_S, horizon_slowest=True
        )
        self._controller = FlowController(settings, self._redis_now_s(), limit)
        self._throttles_before = 0 if stored is None else stored.throttles
        self._pending.clear()
        self._since_s = self._redis_now_s() - _STALE_S
        self._written = None  # the first pace is written at once
        log.debug("flow control: worker %s leads, from %s/s", self._worker, limit)

    def _step_down(self) -> None:
        self._controller = None
        self._pending.clear()

    async def _steer(self, answers: list[str], marks: list[float]) -> None:
        controller = self._controller
        assert controller is not None
        for answer in answers:
            code, sent, latency, others = answer.split()
            sent_at_s, latency_s = float(sent), float(latency)
            answered_s = sent_at_s + latency_s
            if answered_s < self._since_s:
                continue
            entry = (answered_s, sent_at_s - _SHIFT_S, latency_s + _SHIFT_S, code, int(others))
            heapq.heappush(self._pending, entry)
        ripe_s = self._ripe_s(marks)
        pause_s = 0.0
        while self._pending and self._pending[0][0] <= ripe_s:
            answered_s, sent_at_s, latency_s, code, in_flight = heapq.heappop(self._pending)
            outcome = _OUTCOMES[code]
            advice = controller.observe(outcome, sent_at_s, latency_s, answered_s, None, in_flight)
            if advice.pause_until_s is not None:
                # From now, not from the answer's time (it came a tick or two ago), and as long
                # as the answer's own round trip asked, not the shifted one.
                wait_s = advice.pause_until_s - answered_s - _SHIFT_S
                pause_s = max(pause_s, self._settings.first_backoff_s, wait_s)
        pace = Pace(
            controller.rate_per_s,
            controller.known_limit_per_s,
            self._throttles_before + controller.throttles,
            pause_s,
        )
        if pace != self._written:
            holder = (self._lease_key, self._worker)
            if not await self._limiter.set_pace(pace, holder):
                self._step_down()
                return
            self._written = Pace(pace.rate_per_s, pace.limit_per_s, pace.throttles)
        self._follow(pace)

    def _ripe_s(self, marks: list[float]) -> float:
        """Answers up to this time are all in: the oldest mark of the workers reporting."""
        now_s = self._redis_now_s()
        live = [mark for mark in marks if now_s - mark <= _SILENT_S]
        return min(live) if live else now_s - _LAG_S

    def _follow(self, pace: Pace) -> None:
        self.rate_per_s = pace.rate_per_s
        self.known_limit_per_s = pace.limit_per_s
        self.throttles = pace.throttles
        self._limiter.follow(pace.rate_per_s)

    def _redis_now_s(self) -> float:
        return self._clock() + self._offset_s
