"""The send loop: claimers take messages from the run's work and send them in a window of places,
under one global rate limit.

    work (rows read and prepared, or claims on a shared queue) ─▶ claimer x N ─▶ window place
        ─▶ limiter ─▶ ledger (in flight) ─▶ send ─▶ next step (retry, or a final record) ─▶ sink

The engine only sends: where the messages come from is `work`'s business (`sms_blaster.work`).

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
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from sms_blaster.errors import JournalError
from sms_blaster.flow import Advice
from sms_blaster.models import (
    ErrorKind,
    Message,
    Outcome,
    Record,
    RowError,
    SendResult,
)
from sms_blaster.providers.base import Exchange
from sms_blaster.providers.rules import NAMED_LATE, TWO_ANSWERS
from sms_blaster.ratelimit import RateLimiter
from sms_blaster.retry import (
    Reachability,
    RetryPolicy,
    SilentStart,
    Step,
    never_connected,
    next_step,
)
from sms_blaster.transport.base import attempt_begins, pace_again_with, was_cancelled_unwritten


class Sink(Protocol):
    def emit(self, record: Record) -> None:
        """Take the final record of one row."""


class Ledger(Protocol):
    """Where a run keeps what it did, to resume without sending twice (the journal)."""

    def admit(self, item: Message | Record) -> Record | None:
        """The record of a row an earlier run settled, or None to handle it now. `item`, what
        this run made of the row, carries the row's line and fingerprint."""

    def inflight(self, message: Message, attempt: int) -> Awaitable[None]:
        """Mark the row in flight: done once the mark is durable, and the request may leave.

        Raises (when called or awaited) JournalError when it cannot be marked (the run stops),
        Superseded when another process owns the row now (this one drops it without a record).
        The journal begins the mark when called: with `EngineConfig.ready` a row is marked while
        it waits in line for its window place."""

    def retrying(self, message: Message, attempts: int) -> None:
        """The last request was not accepted: a retry waits, or a fatal answer stopped the run."""

    def settle(self, record: Record, publish: Callable[[Record], None]) -> None:
        """Keep a row's final record and `publish` it, so that the ledger never holds a row
        settled whose record a killed run lost: the journal hands the record to the kernel
        just before the commit that settles its row; Redis's row ledger, just before it writes
        the row's end. A run killed in between leaves the record out and the row in flight,
        which the resume (or a takeover) records `unknown` and does not resend."""


class _Done:
    """An awaitable that is done already: awaiting it does not suspend."""

    __slots__ = ()

    def __await__(self) -> Generator[None, None, None]:
        return
        yield


_NOTHING_TO_WAIT_FOR = _Done()


class NoLedger:
    """A run without a journal: nothing to skip, nothing kept."""

    def admit(self, item: Message | Record) -> Record | None:
        return None

    def inflight(self, message: Message, attempt: int) -> Awaitable[None]:
        return _NOTHING_TO_WAIT_FOR

    def retrying(self, message: Message, attempts: int) -> None:
        return None

    def settle(self, record: Record, publish: Callable[[Record], None]) -> None:
        publish(record)


@dataclass(frozen=True, slots=True)
class Claim:
    """A message handed to the engine to send.

    `prepaid_cost`: what a rate slot taken before the claim paid of the first attempt's cost;
    `due`: waits for that slot's time (None when nothing was taken before the claim)."""

    message: Message
    prepaid_cost: float = 0.0
    due: Callable[[], Awaitable[None]] | None = None


class Work(Protocol):
    """Where the engine's messages come from: rows read from an input (`work.RowFeed`), or a
    queue shared with other processes (`work.PrepaidClaims` over the campaign's Redis stream)."""

    def claimers(self, window: int) -> int:
        """How many tasks claim at once for a window of `window` places."""

    async def claim(self) -> Claim | Record | None:
        """The next message to send; or the record of a row that must not be sent (settled, or
        maybe sent by a worker that died); or None once no work is left (or the run stops).

        Raises JournalError when the work cannot be reached: the run stops."""


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
    THROTTLED = "throttled"  # every answer for --unreachable-timeout was a throttle
    INTERRUPTED = "interrupted"  # SIGINT, SIGTERM or SIGHUP
    DEADLINE = "deadline"  # --not-after
    JOURNAL = "journal"  # the journal cannot be written, or the input does not match it
    OUTPUT = "output"  # the records cannot be written
    INPUT = "input"  # the input cannot be read on (its preparing process died, a read failed)


class RunControl:
    """The run's stop switch: thrown by a fatal answer or a signal, checked before every send."""

    __slots__ = ("_event", "_signalled", "detail", "reason")

    def __init__(self) -> None:
        self.reason: StopReason | None = None
        self.detail = ""
        self._event = asyncio.Event()
        self._signalled = asyncio.Event()

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

    def signal(self) -> None:
        """A stop signal came (whatever stopped the run before it)."""
        self._signalled.set()

    async def signalled(self) -> None:
        """Return once a stop signal came: a wait the run added after it stopped (a worker's
        last look for Redis) ends there, though the run was stopping already."""
        await self._signalled.wait()

    async def sleep(self, delay_s: float) -> bool:
        """Sleep for `delay_s` unless the run stops first; True when it stopped."""
        if delay_s > 0 and not self.stopping:
            try:
                async with asyncio.timeout(delay_s):
                    await self._event.wait()
            except TimeoutError:
                pass
        return self.stopping

    def stopped_error(self) -> RowError:
        """Why a row was not sent: the run stopped (for this reason)."""
        code = self.reason.value if self.reason else "aborted"
        return RowError(ErrorKind.STOPPED, code, "not sent: the run was stopped")


@dataclass(slots=True)
class Counters:
    """Live figures for the progress line."""

    requests: int = 0
    in_flight: int = 0
    throttled: int = 0
    retries: int = 0
    last_line: int = 0  # the last input row taken from the input


class Window:
    """The in-flight window: at most `limit` attempts at once; the limit may change any time.

    A place is taken before an attempt waits for anything (its rate slot, a claim's due time);
    the gate, passed once its rate slot came, keeps to the limit as it is now. A cut
    applies at once to places taken before it: the provider sees at most the new limit, not the
    attempts that were already waiting (a cut to a cap in service would otherwise let a whole old
    window through, each one refused).

    Places are given in turn, oldest waiter first. The first `ready` waiters in line get a head
    start (`place(head_start)`): their rows are marked in flight while they wait, so each leaves
    as soon as a place frees instead of waiting for its mark's commit and fsync then (a few
    milliseconds a cycle, 5-15 % of a 50 ms exchange). A head start counts until its attempt says
    it is over (`head_start_over`: the request left, or the row ended without one): at most
    `ready` rows are ever marked ahead of their place, and so at most that many a run killed
    meanwhile leaves marked whose request never left."""

    __slots__ = (
        "_ahead", "_gate_waiters", "_head_starts", "_passed", "_started", "_waiters", "active",
        "limit", "ready",
    )  # fmt: skip

    def __init__(self, limit: int, ready: int = 0) -> None:
        self.limit = limit
        self.ready = ready
        self.active = 0  # places taken
        self._passed = 0  # ...of which past the gate
        self._ahead = 0  # head starts begun and not over
        # The line for places, oldest first: those whose head start began (or had none to
        # begin) are in `_started`, the rest after them in `_waiters`.
        self._started: collections.deque[asyncio.Future[None]] = collections.deque()
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._head_starts: dict[asyncio.Future[None], Callable[[], None]] = {}
        self._gate_waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def take(self) -> bool:
        """Take a place if one is free now, with nobody ahead; False when `enter` must wait."""
        if self.active < self.limit and not self._started and not self._waiters:
            self.active += 1
            return True
        return False

    async def enter(self) -> None:
        waiter = self.place()
        if waiter is not None:
            try:
                await waiter
            except asyncio.CancelledError:
                self.give_up_place(waiter)
                raise

    def place(self, head_start: Callable[[], None] | None = None) -> asyncio.Future[None] | None:
        """Take a place now (None), or the future that gives one in turn: whoever sets it counted
        the place taken. A wait cancelled must be given up with `give_up_place`.

        `head_start`: called once the waiter is among the first `ready` of the line (at once,
        or as those ahead get their places), never after its place is given; it must not raise.
        """
        if self.take():
            return None
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        if head_start is not None:
            self._head_starts[waiter] = head_start
        self._start_heads()
        return waiter

    def head_start_over(self) -> None:
        """An attempt whose head start began sent its request, or ended without one."""
        self._ahead -= 1
        self._start_heads()

    def _start_heads(self) -> None:
        """Begin the head starts of the line's first waiters, in turn, while fewer than `ready`
        are under way."""
        while self._waiters:
            waiter = self._waiters[0]
            head_start = self._head_starts.get(waiter)
            if head_start is not None:
                if self._ahead >= self.ready:
                    return
                del self._head_starts[waiter]
                self._ahead += 1
                head_start()
            self._started.append(self._waiters.popleft())

    def give_up_place(self, waiter: asyncio.Future[None]) -> None:
        """The wait for `waiter`'s place was cancelled: leave the line, or give the place back.
        (A head start that began is the waiter's to end, with `head_start_over`.)"""
        self._head_starts.pop(waiter, None)
        if waiter.done() and not waiter.cancelled():
            self.leave(passed=False)  # woken just before the cancel: the next one's turn
        elif waiter in self._started:
            self._started.remove(waiter)
        elif waiter in self._waiters:
            self._waiters.remove(waiter)
            self._start_heads()

    def pass_now(self) -> bool:
        """Holding a place: pass the gate if that is within the limit now, with nobody ahead;
        False when `gate` must wait."""
        if self._passed < self.limit and not self._gate_waiters:
            self._passed += 1
            return True
        return False

    async def gate(self) -> None:
        """Holding a place: wait until it is within the limit as it is now."""
        if not self.pass_now():
            await self._turn(self._gate_waiters, self._pass_back)

    async def _turn(
        self, waiters: collections.deque[asyncio.Future[None]], give_back: Callable[[], None]
    ) -> None:
        """Wait in line; the one who wakes us counted us."""
        waiter = asyncio.get_running_loop().create_future()
        waiters.append(waiter)
        await self._wait_turn(waiter, waiters, give_back)

    @classmethod
    async def _wait_turn(
        cls,
        waiter: asyncio.Future[None],
        waiters: collections.deque[asyncio.Future[None]],
        give_back: Callable[[], None],
    ) -> None:
        try:
            await waiter
        except asyncio.CancelledError:
            cls._give_up(waiter, waiters, give_back)
            raise

    @staticmethod
    def _give_up(
        waiter: asyncio.Future[None],
        waiters: collections.deque[asyncio.Future[None]],
        give_back: Callable[[], None],
    ) -> None:
        """A wait in line cancelled. Woken just before the cancel, the turn is given back
        (`give_back`) for the next in line."""
        if waiter.done() and not waiter.cancelled():
            give_back()
        elif waiter in waiters:
            waiters.remove(waiter)

    def _pass_back(self) -> None:
        self._passed -= 1
        self._wake()

    def leave(self, *, passed: bool) -> None:
        """Give a place back; `passed`: whether it went through the gate."""
        self.active -= 1
        if passed:
            self._passed -= 1
        self._wake()

    def resize(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._wake()

    def _wake(self) -> None:
        while self._gate_waiters and self._passed < self.limit:
            waiter = self._gate_waiters.popleft()
            if not waiter.done():
                self._passed += 1
                waiter.set_result(None)
        while self.active < self.limit and (self._started or self._waiters):
            if self._started:
                waiter = self._started.popleft()
            else:
                waiter = self._waiters.popleft()
                self._head_starts.pop(waiter, None)  # its turn came before its head start
            if not waiter.done():
                self.active += 1
                waiter.set_result(None)
        self._start_heads()


class _HeadStart:
    """The in-flight mark of a claimed row's first attempt, begun while the row waits in line for
    a window place (`Window.place`); awaited once it has the place and its rate slot."""

    __slots__ = ("_error", "_ledger", "_mark", "_message", "_over", "_window", "begun")

    def __init__(self, ledger: Ledger, message: Message, window: Window) -> None:
        self._ledger = ledger
        self._message = message
        self._window = window
        self._mark: Awaitable[None] = _NOTHING_TO_WAIT_FOR
        self._error: Exception | None = None
        self._over = False
        self.begun = False

    def begin(self) -> None:
        """Called by the window, from whichever task freed the line: never raises."""
        self.begun = True
        try:
            self._mark = self._ledger.inflight(self._message, 1)
        except Exception as exc:  # JournalError: raised where the row's own task awaits it
            self._error = exc
            return
        if isinstance(self._mark, asyncio.Future):
            # A row that never awaits it (the run stopped first) leaves the failure unheard
            # here: the journal stops the run for it.
            self._mark.add_done_callback(_heard)

    async def marked(self) -> None:
        if self._error is not None:
            raise self._error
        await self._mark

    def over(self) -> None:
        """The request left, or the row ended without one: the window may begin another."""
        if self.begun and not self._over:
            self._over = True
            self._window.head_start_over()


def _heard(future: asyncio.Future[None]) -> None:
    """Take a mark's failure that its row may never await, so asyncio does not log it unheard."""
    if not future.cancelled():
        future.exception()


@dataclass(frozen=True, slots=True)
class EngineConfig:
    window: int
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    # Rows at the head of the window's line marked in flight while they wait (`Window.ready`):
    # as many rows at most that a kill leaves marked, beyond those of free places, whose
    # request never left (0: a row is marked once it has its place and rate slot).
    ready: int = 0
    # The environment variable naming the proxy requests go through, for what a stop says.
    proxy_variable: str | None = None


SendFn = Callable[[Message], Awaitable[Exchange]]


class Engine:
    """Sends the messages of one campaign run; `run` returns when its work has no more, or the
    run stopped and every message claimed has its record."""

    def __init__(
        self,
        *,
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
        draw: Callable[[], float] = random.random,
        screen: Callable[[Message], Record | None] | None = None,
    ) -> None:
        self.ledger: Ledger = ledger or NoLedger()
        # Asked just before a message's first request leaves (the opt-out list): a record
        # instead of the request, or None.
        self._screen = screen
        self._breaker = breaker
        self.flow = flow
        if flow is not None:
            limiter.set_rate(flow.rate_per_s)  # a run starts at the controller's pace
        self._clock = clock
        self.window = Window(config.window, config.ready)
        self._send = send
        self._limiter = limiter
        self._sink = sink
        self._config = config
        self._cost = cost
        self._draw = draw
        self.control = control or RunControl()
        self.counters = Counters()
        limit_s = config.policy.unreachable_s
        self._reachability = None if limit_s is None else Reachability(limit_s)
        self._silent_start: SilentStart | None = SilentStart(config.proxy_variable)

    async def run(self, work: Work) -> None:
        """Send what `work` hands out until it has no more or the run stops."""
        async with asyncio.TaskGroup() as group:
            for _ in range(work.claimers(self._config.window)):
                group.create_task(self._claim_and_send(work))

    def emit(self, record: Record) -> None:
        """Keep a row's final record in the ledger, then pass it to the sink."""
        self.ledger.settle(record, self._sink.emit)

    async def _claim_and_send(self, work: Work) -> None:
        pace_again_with(self._pace_again)  # this task's sends: see transport.base.LATE_S
        while True:
            claim: Claim | Record | None = None
            try:
                claim = await work.claim()
                if claim is None:
                    return
                if isinstance(claim, Record):
                    self.emit(claim)
                    continue
                head = None
                if claim.due is not None or not self.window.take():
                    head = await self._enter(claim)
            except JournalError as exc:  # the shared queue or limit cannot be reached
                self.control.stop(StopReason.JOURNAL, str(exc))
                if isinstance(claim, Claim):
                    # Claimed, but its slot could not be had: never sent, so handed back (a
                    # claim left held would be taken over after the lease and called unknown).
                    self.emit(self._unsent(claim.message, 0, None))
                return
            try:
                self._finish(await self._deliver(claim.message, claim.prepaid_cost, head))
            except Superseded:
                continue

    async def _enter(self, claim: Claim) -> _HeadStart | None:
        """Take a window place for a claimed message, then wait for the slot paid before the
        claim. The place is taken after the claim: a claim waiting for new messages must not
        hold a place that a retry of a claimed one needs (with the window cut below the
        claimers, they would wait on each other for ever). The mark begun in line, if any."""
        head = None
        if self._config.ready and claim.due is None:
            head = _HeadStart(self.ledger, claim.message, self.window)
        waiter = self.window.place(None if head is None else head.begin)  # awaited here
        if waiter is not None:
            try:
                await waiter
            except asyncio.CancelledError:
                self.window.give_up_place(waiter)
                if head is not None:
                    head.over()
                self.emit(self._unsent(claim.message, 0, None))  # aborted: claimed, never sent
                raise
        if claim.due is not None:
            try:
                await claim.due()
            except BaseException:
                self.window.leave(passed=False)
                raise
        return head

    async def _pace_again(self, message: Message, passed: bool) -> bool:
        """Asked by the transport for a request whose slot passed while it waited for a
        connection, before a byte of it is written: the provider must see the pace, not the
        requests that waited together. Passed by others written meanwhile (`passed`), it takes
        a new slot; else it leaves now and the slots after it are spaced from it. False when
        the run stopped meanwhile."""
        if self.control.stopping:
            return False
        cost = self._cost(message)
        if cost > 0:
            if passed:
                await self._limiter.acquire(cost)
            else:
                self._limiter.left_off_slot(cost)
        return not self.control.stopping

    def _finish(self, record: Record) -> None:
        self.emit(record)
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
        stall = reachability.observe(result, sent_at_s, self._clock())
        if stall is not None:
            reason, what = (
                (StopReason.THROTTLED, "the provider throttled every request")
                if stall.throttled
                else (StopReason.UNREACHABLE, "no connection to the provider")
            )
            self.control.stop(
                reason,
                f"{what} for {stall.seconds:.1f} s "
                f"(--unreachable-timeout {self._config.policy.unreachable_s:g}): {result.detail}",
            )

    def _check_silent_start(self, silent: SilentStart, request: int, result: SendResult) -> None:
        reason = silent.observe(request, result)
        if silent.answered:
            self._silent_start = None
        elif reason is not None:
            self.control.stop(StopReason.FATAL, f"{reason}: {result.detail}")

    async def _deliver(
        self, message: Message, prepaid_cost: float, head: _HeadStart | None = None
    ) -> Record:
        """Send until a final record. Called holding a window place for the first attempt, whose
        rate cost `prepaid_cost` was partly or wholly paid before the claim, and whose mark
        `head` began while it waited for the place."""
        attempts = throttles = connect_errors = 0
        last: SendResult | None = None
        maybe_sent: SendResult | None = None  # an attempt that may have reached the provider
        in_flight = False
        unconfirmed = False  # its answer would have it sent again, but is not trusted yet
        named_late: Callable[[], bool] | None = None  # see Exchange.named_late
        cost = self._cost(message) - prepaid_cost
        try:
            while True:
                passed = False
                try:  # holding a window place
                    if self.control.stopping:
                        return self._unsent(message, attempts, maybe_sent, named_late)
                    try:
                        if cost > 0:
                            await self._limiter.acquire(cost)
                        if not self.window.pass_now():
                            await self.window.gate()
                        passed = True
                        if self.control.stopping:
                            return self._unsent(message, attempts, maybe_sent, named_late)
                        if not attempts and self._screen and (screened := self._screen(message)):
                            return screened
                        if not attempts and head is not None and head.begun:
                            await head.marked()  # marked while it waited for its place
                        else:
                            await self.ledger.inflight(message, attempts + 1)
                    except JournalError as exc:  # the journal (or a shared limit) is unusable
                        self.control.stop(StopReason.JOURNAL, str(exc))
                        return self._unsent(message, attempts, maybe_sent, named_late)
                    if self.control.stopping:
                        return self._unsent(message, attempts, maybe_sent, named_late)
                    attempts += 1
                    in_flight = True
                    if head is not None:
                        head.over()  # leaving: its place in the count of marks ahead is free
                    self.counters.requests += 1
                    request = self.counters.requests  # the run's how-manyth request
                    others_in_flight = self.counters.in_flight
                    self.counters.in_flight += 1
                    sent_at_s = self._clock()
                    attempt_begins()
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
                    self.window.leave(passed=passed)
                last = exchange.result
                named_late = exchange.named_late
                if exchange.left_s is not None:  # the send waited for its sender's turn first
                    sent_at_s = exchange.left_s
                if self.flow is not None and not exchange.senders_own:
                    self._adapt(last, sent_at_s, exchange.latency_s, others_in_flight)
                if self._reachability is not None:
                    self._check_reach(self._reachability, last, sent_at_s)
                if self._silent_start is not None:
                    self._check_silent_start(self._silent_start, request, last)
                if last.outcome is Outcome.AMBIGUOUS:
                    maybe_sent = last
                elif last.outcome is Outcome.THROTTLED:
                    self.counters.throttled += 1
                    throttles += 1
                elif never_connected(last):
                    connect_errors += 1
                decision = next_step(
                    last, attempts, self._config.policy, self._draw, throttles, connect_errors
                )
                if decision.step is Step.FATAL:
                    # Whichever request's answer it was, it refuses the account: the run stops
                    # now, not once the row's witness below is in (requests would leave meanwhile).
                    self.control.stop(StopReason.FATAL, f"{last.code}: {last.detail}")
                if (
                    exchange.in_sync is not None
                    and maybe_sent is None
                    and decision.step in _SENT_AGAIN
                ):
                    # Sent again (now or by the resume) only if the answer was its own: a
                    # second answer on its connection may be its own, and say it was accepted.
                    unconfirmed = True
                    in_sync = await exchange.in_sync
                    unconfirmed = False
                    if not in_sync:
                        return Record.maybe_sent(message, attempts, TWO_ANSWERS, exchange.latency_s)
                if (
                    decision.step in _LEFT_TO_RESUME
                    and maybe_sent is None
                    and named_late is not None
                ):
                    # A fatal answer is judged at once: a run that stops on bad credentials
                    # must not wait a --timeout for a late answer only a hostile server sends.
                    by_s = exchange.late_by_s if decision.step is Step.EXHAUSTED else None
                    unconfirmed = True
                    late = await self._named_late_by(named_late, by_s)
                    unconfirmed = False
                    if late:
                        return Record.maybe_sent(message, attempts, NAMED_LATE, exchange.latency_s)
                if decision.step is Step.RETRY:
                    if maybe_sent is None:
                        self.ledger.retrying(message, attempts)  # else it stays in flight
                    self.counters.retries += 1
                    if await self.control.sleep(decision.delay_s):
                        return self._unsent(message, attempts, maybe_sent, named_late)
                    cost = self._cost(message)
                    await self.window.enter()
                    continue
                if maybe_sent is not None and decision.step is not Step.SENT:
                    return Record.maybe_sent(message, attempts, maybe_sent, exchange.latency_s)
                if decision.step is Step.FATAL:
                    # An account-wide refusal says nothing about the row: it was not accepted,
                    # so it is stopped (pending in the ledger) and the resume sends it.
                    self.ledger.retrying(message, attempts)
                    error = RowError(ErrorKind.STOPPED, last.code, last.detail)
                    return Record.failed(message, attempts, error, latency_s=exchange.latency_s)
                return _final(
                    message, decision.step, last, attempts, exchange.latency_s, connect_errors
                )
        except asyncio.CancelledError:
            # A request cancelled before a byte of it was written (waiting for a connection or
            # a proxy's tunnel) was never sent: stopped, the resume sends it.
            if (in_flight and not was_cancelled_unwritten()) or unconfirmed:
                error = RowError(
                    ErrorKind.AMBIGUOUS, "interrupted", "aborted while the request was in flight"
                )
                self.emit(Record.unknown(message, attempts, error))
            else:
                self.emit(self._unsent(message, attempts, maybe_sent, named_late))
            raise
        finally:
            if head is not None:
                head.over()  # ended without a request (stopped, screened): idempotent otherwise

    async def _named_late_by(self, named_late: Callable[[], bool], by_s: float | None) -> bool:
        """Whether a late answer named the row, asked once its own answer would have come (the
        request's --timeout): a row left to the resume cannot be judged again by this run. The
        wait holds this row's record only (a fatal stop drains meanwhile); a cancel during it
        records the row unknown (see `_deliver`)."""
        if by_s is not None:
            delay_s = by_s - asyncio.get_running_loop().time()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
        return named_late()

    def _unsent(
        self,
        message: Message,
        attempts: int,
        maybe_sent: SendResult | None,
        named_late: Callable[[], bool] | None = None,
    ) -> Record:
        """The record of a row the run stopped before it was sent (again): pending for the
        resume, unless a request for it may have been accepted (an ambiguous attempt, or an
        answer too many named it since its last one was refused)."""
        if maybe_sent is None and named_late is not None and named_late():
            maybe_sent = NAMED_LATE
        if maybe_sent is not None:
            return Record.maybe_sent(message, attempts, maybe_sent, None)
        return Record.failed(message, attempts, self.control.stopped_error())


_FAILED = {Step.REJECTED: ErrorKind.REJECTED, Step.EXHAUSTED: ErrorKind.EXHAUSTED}
# The steps after which the row's request goes again: a retry, a fatal answer that stops the
# run and leaves the row pending for the resume, or retries used up (the resume sends the row).
_SENT_AGAIN = frozenset({Step.RETRY, Step.FATAL, Step.EXHAUSTED})
# Of those, the steps that leave the row to a later run, which cannot know what this run read.
_LEFT_TO_RESUME = frozenset({Step.FATAL, Step.EXHAUSTED})


def _final(
    message: Message,
    step: Step,
    result: SendResult,
    attempts: int,
    latency_s: float,
    connect_errors: int,
) -> Record:
    if step is Step.SENT:
        return Record.sent(message, attempts, result, latency_s)
    if step is Step.UNKNOWN:
        error = RowError(ErrorKind.AMBIGUOUS, result.code, result.detail)
        return Record.unknown(message, attempts, error, result, latency_s)
    if step is Step.EXHAUSTED and never_connected(result):
        # Past the cap of failed connections (retry.RetryPolicy.connect_cap): the provider was
        # unreachable for this row all along, which --unreachable-timeout says first as a rule.
        detail = f"no connection to the provider in {connect_errors} attempts: {result.detail}"
        error = RowError(ErrorKind.EXHAUSTED, "unreachable", detail)
        return Record.failed(message, attempts, error, result, latency_s)
    error = RowError(_FAILED[step], result.code, result.detail)
    return Record.failed(message, attempts, error, result, latency_s)
