"""The send loop: a bounded queue drained by `window` workers, under one global rate limit.

    rows ─▶ prepare ─▶ queue (bounded) ─▶ window x worker ─▶ limiter ─▶ send ─▶ decide ─▶ sink
              └─────── records for rows that are not sent (invalid, duplicate) ────────────▶ sink

Every row read ends as exactly one record. Stopping (a fatal answer, a first signal, a deadline,
the breaker, a provider nothing can connect to) stops new requests at once and stops reading the
input: rows already read but not sent are recorded `stopped`, requests in flight finish. A row
answered with an account-wide fatal answer is `stopped` too (with the provider's code): the
answer says nothing about the row, which was not accepted, so a resume sends it. Cancelling the
run (a second signal) records the requests in flight as `unknown`: they may have reached the
provider. A request that may have reached the provider makes its row `unknown` for good,
whatever later attempts say.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from sms_blaster.errors import JournalError
from sms_blaster.flow import Advice
from sms_blaster.models import (
    ErrorKind,
    InputRow,
    Message,
    Outcome,
    Record,
    RowError,
    SendResult,
    Status,
)
from sms_blaster.providers.base import Exchange
from sms_blaster.ratelimit import RateLimiter
from sms_blaster.retry import Reachability, RetryPolicy, Step, decide


class Sink(Protocol):
    def emit(self, record: Record) -> None:
        """Take the final record of one row."""


class Preparing(Protocol):
    def prepare(self, row: InputRow) -> Message | Record: ...

    def client_ref(self, line: int) -> str: ...

    def raw_to(self, row: InputRow) -> str: ...


class Ledger(Protocol):
    """Where a run keeps what it did, to resume without sending twice (the journal)."""

    def admit(self, row: InputRow, item: Message | Record) -> Record | None:
        """The record of a row an earlier run settled, or None to handle it now."""

    async def inflight(self, message: Message, attempt: int) -> None:
        """Return once the row is durably marked in flight: the request may then leave.

        Raises JournalError when it cannot be marked (the run stops), Superseded when another
        process owns the row now (this one drops it without a record)."""

    def retrying(self, message: Message, attempts: int) -> None:
        """The last request was not accepted: a retry waits, or a fatal answer stopped the run."""

    def settle(self, record: Record, publish: Callable[[Record], None]) -> None:
        """Keep a row's final record, then `publish` it: a record never tells more than the
        ledger holds, so a run killed in between cannot leave a `sent` record that a resume
        would not honour (and send again)."""


class NoLedger:
    """A run without a journal: nothing to skip, nothing kept."""

    def admit(self, row: InputRow, item: Message | Record) -> Record | None:
        return None

    async def inflight(self, message: Message, attempt: int) -> None:
        return None

    def retrying(self, message: Message, attempts: int) -> None:
        return None

    def settle(self, record: Record, publish: Callable[[Record], None]) -> None:
        publish(record)


class Claims(Protocol):
    """Work handed out one message at a time by a queue shared with other processes."""

    async def claim(self) -> Message | Record | None:
        """The next message to send; or the record of one that must not be sent (settled, or
        maybe sent by a worker that died); or None once no work is left."""


@runtime_checkable
class SlotLimiter(Protocol):
    """A limiter whose slot can be taken before the wait for it (the shared limit of workers)."""

    async def take(self, cost: float = 1.0) -> Any:
        """Reserve the next slot."""

    async def wait(self, slot: Any) -> None:
        """Return at the slot's time (on a new slot if the schedule changed or it was missed)."""


class Flow(Protocol):
    """Adaptive flow control (`flow.FlowController`, or one shared by a campaign's workers)."""

    rate_per_s: float
    known_limit_per_s: float | None
    throttles: int

    @property
    def window(self) -> int: ...

    def observe(
        self,
        outcome: Outcome,
        sent_at_s: float,
        latency_s: float,
        now_s: float,
        wait_s: float | None = None,
        in_flight: int = 0,
    ) -> Advice: ...


class Superseded(Exception):
    """Another process took the message over: it records the row, this one must not."""


class Breaker(Protocol):
    def observe(self, record: Record) -> str | None:
        """Take the record of a row that was sent to the provider; a reason to stop, or None."""


class StopReason(StrEnum):
    FATAL = "fatal"  # a fatal provider answer, or the error-rate breaker
    UNREACHABLE = "unreachable"  # no attempt could connect for --unreachable-timeout
    INTERRUPTED = "interrupted"  # SIGINT, SIGTERM or SIGHUP
    DEADLINE = "deadline"  # --not-after
    JOURNAL = "journal"  # the journal cannot be written, or the input does not match it
    OUTPUT = "output"  # the records cannot be written


class RunControl:
    """The run's stop switch: thrown by a fatal answer or a signal, checked before every send."""

    __slots__ = ("_event", "detail", "reason")

    def __init__(self) -> None:
        self.reason: StopReason | None = None
        self.detail = ""
        self._event = asyncio.Event()

    @property
    def stopping(self) -> bool:
        return self.reason is not None

    def stop(self, reason: StopReason, detail: str = "") -> None:
        """Stop feeding new requests; the first reason given is kept."""
        if self.reason is None:
            self.reason, self.detail = reason, detail
            self._event.set()

    async def wait(self) -> None:
        """Return once the run is stopping."""
        await self._event.wait()

    async def sleep(self, delay_s: float) -> bool:
        """Sleep for `delay_s` unless the run stops first; True when it stopped."""
        if delay_s > 0 and not self.stopping:
            try:
                async with asyncio.timeout(delay_s):
                    await self._event.wait()
            except TimeoutError:
                pass
        return self.stopping


@dataclass(slots=True)
class Counters:
    """Live figures for the progress line."""

    requests: int = 0
    in_flight: int = 0
    throttled: int = 0
    retries: int = 0
    last_line: int = 0  # the last input row taken from the input


class Window:
    """The in-flight window: at most `limit` attempts at once; the limit may change any time."""

    __slots__ = ("_waiters", "active", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def enter(self) -> None:
        if self.active < self.limit and not self._waiters:
            self.active += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # the one who wakes us counted us in
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.leave()  # woken just before the cancel: give the place back
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def leave(self) -> None:
        self.active -= 1
        self._wake()

    def resize(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.active < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.active += 1
                waiter.set_result(None)


@dataclass(frozen=True, slots=True)
class EngineConfig:
    window: int
    policy: RetryPolicy = field(default_factory=RetryPolicy)


SendFn = Callable[[Message], Awaitable[Exchange]]

FEED_SLICE = 16  # rows prepared between two turns of the event loop


class Engine:
    """One campaign run; `run` returns when every row read has its record."""

    def __init__(
        self,
        *,
        preparer: Preparing | None = None,  # None in pull mode (run_claims): messages come ready
        send: SendFn,
        limiter: RateLimiter,
        sink: Sink,
        config: EngineConfig,
        control: RunControl | None = None,
        ledger: Ledger | None = None,
        breaker: Breaker | None = None,
        flow: Flow | None = None,
        clock: Callable[[], float] = time.monotonic,
        cost: Callable[[Message], float] = lambda message: 1.0,
        claim_cost: float = 1.0,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self._preparer = preparer
        self._ledger = ledger or NoLedger()
        self._breaker = breaker
        self.flow = flow
        if flow is not None:
            limiter.set_rate(flow.rate_per_s)  # a run starts at the controller's pace
        self._clock = clock
        self.window = Window(config.window)
        self._send = send
        self._limiter = limiter
        self._sink = sink
        self._config = config
        self._cost = cost
        # Pull mode: what a slot taken before a claim covers (the message is not known yet).
        self._claim_cost = claim_cost
        self._slot_limiter = limiter if isinstance(limiter, SlotLimiter) else None
        self._draw = draw
        self.control = control or RunControl()
        self.counters = Counters()
        limit_s = config.policy.unreachable_s
        self._reachability = None if limit_s is None else Reachability(limit_s)
        # Twice as many workers as window places: a row sleeping before its retry holds a
        # worker but no place, and must not leave the window short (a provider's "Retry-After:
        # 1" would otherwise idle a worker per throttle for a second).
        self._workers = 2 * config.window
        self._queue: asyncio.Queue[Message | None] = asyncio.Queue(max(2 * config.window, 64))

    @property
    def _rows(self) -> Preparing:
        assert self._preparer is not None, "reading rows needs a preparer"
        return self._preparer

    async def run(self, batches: AsyncIterator[list[InputRow]]) -> None:
        """Prepare and send input rows until the input ends or the run stops."""
        stopped = asyncio.ensure_future(self.control.wait())
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._feed(batches, stopped))
                for _ in range(self._workers):
                    group.create_task(self._work())
        except BaseException:
            # Cancelled, or a bug: rows still queued get their record all the same.
            self._record_queued()
            raise
        finally:
            stopped.cancel()

    async def run_claims(self, claims: Claims) -> None:
        """Send what `claims` hands out until it has no more or the run stops."""
        async with asyncio.TaskGroup() as group:
            for _ in range(self._config.window):
                group.create_task(self._pull(claims))

    async def _pull(self, claims: Claims) -> None:
        while not self.control.stopping:
            # The first rate slot is taken before the claim, so a claimed message never waits
            # for the limiter while the lease other workers honour runs out. The window place
            # is taken after it: a claim waiting for new messages must not hold a place that a
            # retry of a claimed one needs (with the window cut below the claimers, they would
            # wait on each other for ever).
            try:
                item = await self._claim_on_a_slot(claims)
            except JournalError as exc:  # the shared queue or limit cannot be reached
                self.control.stop(StopReason.JOURNAL, str(exc))
                return
            if item is None:
                return
            if isinstance(item, Record):
                self._emit(item)
                continue
            try:
                self._finish(await self._deliver(item, holding=True))
            except Superseded:
                continue

    async def _claim_on_a_slot(self, claims: Claims) -> Message | Record | None:
        """Take a rate slot, then claim: a claimed message never waits on a limiter that may
        slow down for long. A limiter that can reserve the slot before its wait lets the claim's
        round trip happen during that wait, so the request leaves right at its slot."""
        limiter = self._limiter
        if self._slot_limiter is not None:
            slot = await self._slot_limiter.take(self._claim_cost)
            item = None if self.control.stopping else await claims.claim()
            if item is not None and not isinstance(item, Record):
                await self.window.enter()
                try:
                    await self._slot_limiter.wait(slot)
                except BaseException:
                    self.window.leave()
                    raise
            return item
        await limiter.acquire(self._claim_cost)
        item = None if self.control.stopping else await claims.claim()
        if item is not None and not isinstance(item, Record):
            await self.window.enter()
        return item

    async def _feed(
        self, batches: AsyncIterator[list[InputRow]], stopped: asyncio.Future[None]
    ) -> None:
        batch: list[InputRow] = []
        index = 0
        try:
            while (following := await self._next_batch(batches, stopped)) is not None:
                batch, index = following, 0
                self.counters.last_line = batch[-1].line
                # `index`: the rows taken so far; a row counts as taken once admitted, so a
                # cancel at the yield below cannot record it a second time as stopped.
                while index < len(batch) and not self.control.stopping:
                    await self._admit(batch[index])
                    index += 1
                    if index % FEED_SLICE == 0:
                        # Preparing a row takes ~30 us and queue.put only waits when the queue
                        # is full: without this, a refill would hold the loop for milliseconds
                        # while answers wait, which shows as latency and a window not kept full.
                        await asyncio.sleep(0)
                if self.control.stopping:
                    break
        except JournalError as exc:
            # The input is not the one the journal knows: read no further.
            self.control.stop(StopReason.JOURNAL, str(exc))
        except asyncio.CancelledError:
            self._stop_rows(batch[index:])
            raise
        # Rows read but not queued end as stopped; the input is not read further.
        self._stop_rows(batch[index:])
        for _ in range(self._workers):
            await self._queue.put(None)

    async def _next_batch(
        self, batches: AsyncIterator[list[InputRow]], stopped: asyncio.Future[None]
    ) -> list[InputRow] | None:
        """The next batch, or None at the end of the input or once the run stops (a slow pipe
        must not hold up a stop)."""
        if self.control.stopping:
            return None
        following = asyncio.ensure_future(anext(batches, None))
        try:
            await asyncio.wait((following, stopped), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # Aborted: the input's reader must be idle before the input is closed, and a batch
            # that came in the same turn gets its records (stopped) like every row read.
            following.cancel()
            await asyncio.wait([following])
            arrived = None
            if not following.cancelled() and following.exception() is None:
                arrived = following.result()
            if arrived:
                self.counters.last_line = arrived[-1].line
                self._stop_rows(arrived)
            raise
        if following.done():
            return following.result()
        following.cancel()
        return None

    async def _admit(self, row: InputRow) -> None:
        try:
            item = self._rows.prepare(row)
        except Exception as exc:  # a bad row is a record with a reason, never a crash
            item = self._invalid_row(row, f"cannot prepare the row: {exc!r}")
        settled = self._ledger.admit(row, item)
        if settled is not None:
            self._emit(settled)
        elif isinstance(item, Record):
            self._emit(item)
        else:
            await self._queue.put(item)

    async def _work(self) -> None:
        while (message := await self._queue.get()) is not None:
            self._finish(await self._deliver(message))

    def _finish(self, record: Record) -> None:
        self._emit(record)
        if self._breaker is not None and record.attempts:
            reason = self._breaker.observe(record)
            if reason is not None:
                self.control.stop(StopReason.FATAL, reason)

    def _adapt(
        self, result: SendResult, sent_at_s: float, latency_s: float, in_flight: int
    ) -> None:
        assert self.flow is not None
        now_s = self._clock()
        advice = self.flow.observe(
            result.outcome, sent_at_s, latency_s, now_s, result.wait_s, in_flight
        )
        self._limiter.set_rate(advice.rate_per_s)
        if advice.pause_until_s is not None:
            self._limiter.pause_until(advice.pause_until_s)
        if advice.window != self.window.limit:
            self.window.resize(advice.window)

    def _check_reach(
        self, reachability: Reachability, result: SendResult, sent_at_s: float
    ) -> None:
        unreachable_s = reachability.observe(result, sent_at_s, self._clock())
        if unreachable_s is not None:
            self.control.stop(
                StopReason.UNREACHABLE,
                f"no connection to the provider for {unreachable_s:.1f} s "
                f"(--unreachable-timeout {self._config.policy.unreachable_s:g}): {result.detail}",
            )

    def _emit(self, record: Record) -> None:
        self._ledger.settle(record, self._sink.emit)

    async def _deliver(self, message: Message, *, holding: bool = False) -> Record:
        """Send until a final record. `holding`: the caller took a window place and one rate
        slot for the first attempt."""
        attempts = throttles = 0
        last: SendResult | None = None
        maybe_sent: SendResult | None = None  # an attempt that may have reached the provider
        in_flight = False
        try:
            while True:
                if self.control.stopping:
                    if holding:
                        self.window.leave()
                    return self._unsent(message, attempts, maybe_sent)
                cost = self._cost(message)
                if holding:  # the slot taken before the claim covers part or all of it
                    holding, cost = False, cost - self._claim_cost
                else:
                    await self.window.enter()
                try:
                    try:
                        if cost > 0:
                            await self._limiter.acquire(cost)
                        if self.control.stopping:
                            return self._unsent(message, attempts, maybe_sent)
                        await self._ledger.inflight(message, attempts + 1)
                    except JournalError as exc:  # the journal (or a shared limit) is unusable
                        self.control.stop(StopReason.JOURNAL, str(exc))
                        return self._unsent(message, attempts, maybe_sent)
                    if self.control.stopping:
                        return self._unsent(message, attempts, maybe_sent)
                    attempts += 1
                    in_flight = True
                    self.counters.requests += 1
                    others_in_flight = self.counters.in_flight
                    self.counters.in_flight += 1
                    sent_at_s = self._clock()
                    try:
                        exchange = await self._send(message)
                    except Exception as exc:  # a bug below: the request may have left
                        failure = SendResult(
                            Outcome.AMBIGUOUS, "error", f"unexpected error: {exc!r}"
                        )
                        exchange = Exchange(failure, 0.0)
                    finally:
                        self.counters.in_flight -= 1
                    in_flight = False
                finally:
                    self.window.leave()
                last = exchange.result
                if self.flow is not None:
                    self._adapt(last, sent_at_s, exchange.latency_s, others_in_flight)
                if self._reachability is not None:
                    self._check_reach(self._reachability, last, sent_at_s)
                if last.outcome is Outcome.AMBIGUOUS:
                    maybe_sent = last
                elif last.outcome is Outcome.THROTTLED:
                    self.counters.throttled += 1
                    throttles += 1
                decision = decide(last, attempts, self._config.policy, self._draw, throttles)
                if decision.step is Step.RETRY:
                    if maybe_sent is None:
                        self._ledger.retrying(message, attempts)  # else it stays in flight
                    self.counters.retries += 1
                    if await self.control.sleep(decision.delay_s):
                        return self._unsent(message, attempts, maybe_sent)
                    continue
                if decision.step is Step.FATAL:
                    self.control.stop(StopReason.FATAL, f"{last.code}: {last.detail}")
                if maybe_sent is not None and decision.step is not Step.SENT:
                    return _maybe_sent(message, attempts, maybe_sent, exchange.latency_s)
                if decision.step is Step.FATAL:
                    # An account-wide refusal says nothing about the row: it was not accepted,
                    # so it is stopped (pending in the ledger) and the resume sends it.
                    self._ledger.retrying(message, attempts)
                    error = RowError(ErrorKind.STOPPED, last.code, last.detail)
                    return _record(
                        message, Status.FAILED, attempts, latency_s=exchange.latency_s, error=error
                    )
                return _final(message, decision.step, last, attempts, exchange.latency_s)
        except asyncio.CancelledError:
            if in_flight:
                error = RowError(
                    ErrorKind.AMBIGUOUS, "interrupted", "aborted while the request was in flight"
                )
                self._emit(_record(message, Status.UNKNOWN, attempts, error=error))
            else:
                self._emit(self._unsent(message, attempts, maybe_sent))
            raise

    def _record_queued(self) -> None:
        while not self._queue.empty():
            message = self._queue.get_nowait()
            if message is not None:
                self._emit(self._unsent(message, 0, None))

    def _stop_error(self) -> RowError:
        code = self.control.reason.value if self.control.reason else "aborted"
        return RowError(ErrorKind.STOPPED, code, "not sent: the run was stopped")

    def _unsent(self, message: Message, attempts: int, maybe_sent: SendResult | None) -> Record:
        if maybe_sent is not None:
            return _maybe_sent(message, attempts, maybe_sent, None)
        return _record(message, Status.FAILED, attempts, error=self._stop_error())

    def _invalid_row(self, row: InputRow, why: str) -> Record:
        error = RowError(ErrorKind.INVALID_INPUT, "unreadable_row", why)
        to, ref = self._rows.raw_to(row), self._rows.client_ref(row.line)
        return Record(row.line, to, Status.FAILED, ref, error=error)

    def _stop_rows(self, rows: list[InputRow]) -> None:
        """Record rows read but not sent as stopped; a row an earlier run settled keeps that
        record instead, so the ledger never turns a settled row back into a pending one."""
        for row in rows:
            stopped = Record(
                row.line,
                self._rows.raw_to(row),
                Status.FAILED,
                self._rows.client_ref(row.line),
                error=self._stop_error(),
            )
            try:
                settled = self._ledger.admit(row, stopped)
            except JournalError:  # the input differs from the journal: the ledger keeps nothing
                settled = None
            self._emit(settled or stopped)


def _record(
    message: Message,
    status: Status,
    attempts: int,
    result: SendResult | None = None,
    latency_s: float | None = None,
    error: RowError | None = None,
) -> Record:
    return Record(
        line=message.line,
        to=message.to,
        status=status,
        client_ref=message.client_ref,
        attempts=attempts,
        message_ids=result.message_ids if result else (),
        segments=message.segments,
        encoding=message.encoding,
        price=result.price if result else None,
        latency_ms=None if latency_s is None else round(latency_s * 1000, 1),
        error=error,
    )


_FINAL = {
    Step.REJECTED: (Status.FAILED, ErrorKind.REJECTED),
    Step.EXHAUSTED: (Status.FAILED, ErrorKind.EXHAUSTED),
    Step.UNKNOWN: (Status.UNKNOWN, ErrorKind.AMBIGUOUS),
}


def _maybe_sent(
    message: Message, attempts: int, maybe_sent: SendResult, latency_s: float | None
) -> Record:
    """An earlier attempt may have reached the provider: unknown, whatever came after."""
    error = RowError(ErrorKind.AMBIGUOUS, maybe_sent.code, maybe_sent.detail)
    return _record(message, Status.UNKNOWN, attempts, latency_s=latency_s, error=error)


def _final(
    message: Message, step: Step, result: SendResult, attempts: int, latency_s: float
) -> Record:
    if step is Step.SENT:
        return _record(message, Status.SENT, attempts, result, latency_s)
    status, kind = _FINAL[step]
    error = RowError(kind, result.code, result.detail)
    return _record(message, status, attempts, result, latency_s, error)
