"""Where an engine's messages come from: rows read from an input and prepared (by `preparing`)
handed out by `RowFeed`, for `send`; or claims on a queue shared with other processes
(`PrepaidClaims`, for `worker`). Both hand out work through one interface, `engine.Work`; the
engine only sends.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from sms_blaster.engine import Claim, Engine, RunControl, StopReason
from sms_blaster.errors import JournalError, SmsBlasterError
from sms_blaster.models import Message, Record, Status
from sms_blaster.pool_pacing import PoolScheduler
from sms_blaster.preparing import PreparedBatch

# Rows admitted between two turns of the event loop: admitting one (the ledger's check, the queue)
# takes a few µs, and a batch handed over at once would hold the loop while answers wait.
FEED_SLICE = 64


class PreparedBatches(Protocol):
    """Prepared rows in input order (`preparing.PreparingProcess`); `close` ends the reading."""

    def __aiter__(self) -> AsyncIterator[PreparedBatch]: ...

    async def __anext__(self) -> PreparedBatch: ...

    def close(self) -> None: ...


class RowFeed:
    """Hands out the messages of prepared rows from a bounded queue; the records of rows not to
    be sent (invalid, duplicate, settled earlier) it emits itself.

    Every row taken from the batches ends as exactly one record. Once the run stops the batches
    are closed and read no further: rows taken but not queued are recorded `stopped`, and so are
    queued ones (by the claimers, or here when the run is cancelled)."""

    __slots__ = (
        "_batches", "_control", "_engine", "_hold", "_ledger", "_pool", "_queue", "last_line",
    )  # fmt: skip

    def __init__(
        self,
        batches: PreparedBatches,
        engine: Engine,
        hold: Callable[[Message], Record | None] | None = None,
        pool: PoolScheduler | None = None,
    ) -> None:
        self._pool = pool  # each sender of a pool at its rate, between this feed and the engine
        self._batches = batches
        self._hold = hold  # the record of a message that must wait now (quiet hours), or None
        self._engine = engine
        self._control = engine.control
        self._ledger = engine.ledger
        self._queue: asyncio.Queue[Message | None] = asyncio.Queue(max(2 * engine.window.limit, 64))
        self.last_line = 0  # the last input row taken from the input

    def claimers(self, window: int) -> int:
        # Twice as many claimers as window places: a row sleeping before its retry holds a
        # claimer but no place, and must not leave the window short (a provider's "Retry-After:
        # 1" would otherwise idle a claimer per throttle for a second).
        return 2 * window

    async def claim(self) -> Claim | Record | None:
        message = await self._queue.get()
        if message is None:
            self._queue.put_nowait(None)  # the end, for every other claimer too
            return None
        if self._hold is not None and (held := self._hold(message)) is not None:
            return held  # judged as it is taken (no rate slot spent), and again as it leaves
        return Claim(message)

    async def run(self) -> None:
        """Read the rows while the engine sends their messages, until the input ends or the run
        stops."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._read())
                if self._pool is None:
                    group.create_task(self._engine.run(self))
                else:
                    group.create_task(self._pool.over(self).run(self._engine))
        except BaseException:
            # Cancelled, or a bug: rows still queued get their record all the same.
            self._record_queued()
            raise

    async def _read(self) -> None:
        stopped = asyncio.ensure_future(self._control.wait())
        try:
            await self._feed(stopped)
        finally:
            stopped.cancel()
            self._batches.close()  # the input is read no further: its reader stops at once
        await self._queue.put(None)

    async def _feed(self, stopped: asyncio.Future[None]) -> None:
        batch = _NO_ROWS
        index = 0
        try:
            while (following := await self._next_batch(stopped)) is not None:
                batch, index = following, 0
                items = batch.items
                self.last_line = items[-1].line
                # `index`: the rows taken so far; a row counts as taken once admitted, so a
                # cancel at the yield below cannot record it a second time as stopped.
                while index < len(items) and not self._control.stopping:
                    await self._admit(items[index])
                    index += 1
                    if index % FEED_SLICE == 0:
                        await asyncio.sleep(0)
                if self._control.stopping:
                    break
        except JournalError as exc:
            # The input is not the one the journal knows: read no further.
            self._control.stop(StopReason.JOURNAL, str(exc))
        except SmsBlasterError as exc:
            # The input cannot be read on (its preparing process died): the requests in flight
            # finish, as at any other stop.
            self._control.stop(StopReason.INPUT, str(exc))
        except asyncio.CancelledError:
            self._stop_rows(batch, index)
            raise
        # Rows read but not queued end as stopped; the input is not read further.
        self._stop_rows(batch, index)

    async def _next_batch(self, stopped: asyncio.Future[None]) -> PreparedBatch | None:
        """The next batch, or None at the end of the input or once the run stops (a slow pipe
        must not hold up a stop)."""
        if self._control.stopping:
            return None
        following = asyncio.ensure_future(anext(self._batches, None))
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
                self.last_line = arrived.items[-1].line
                self._stop_rows(arrived, 0)
            raise
        if following.done():
            return following.result()
        following.cancel()
        return None

    async def _admit(self, item: Message | Record) -> None:
        settled = self._ledger.admit(item)
        if settled is not None:
            self._engine.emit(settled)
        elif isinstance(item, Record):
            self._engine.emit(item)
        else:
            await self._queue.put(item)

    def _record_queued(self) -> None:
        while not self._queue.empty():
            message = self._queue.get_nowait()
            if message is not None:
                self._engine.emit(Record.failed(message, 0, self._control.stopped_error()))

    def _stop_rows(self, batch: PreparedBatch, start: int) -> None:
        """Record the rows of `batch` from `start` on, taken but not sent, as stopped; a row an
        earlier run settled keeps that record instead, so the ledger never turns a settled row
        back into a pending one."""
        for item, raw_to in zip(batch.items[start:], batch.raw_tos[start:], strict=True):
            error = self._control.stopped_error()
            # As for a row never prepared: the number as given, the row's ref and fingerprint.
            stopped = Record(item.line, raw_to, Status.FAILED, item.client_ref, error=error,
                             fingerprint=item.fingerprint)  # fmt: skip
            try:
                settled = self._ledger.admit(stopped)
            except JournalError:  # the input differs from the journal: the ledger keeps nothing
                settled = None
            self._engine.emit(settled or stopped)


_NO_ROWS = PreparedBatch((), ())


class SlotLimiter(Protocol):
    """A limiter whose slot can be taken before the wait for it (the shared limit of workers)."""

    async def take(self, cost: float = 1.0) -> Any:
        """Reserve the next slot."""

    async def wait(self, slot: Any) -> None:
        """Return at the slot's time (on a new slot if the schedule changed or it was missed)."""


class Claims(Protocol):
    """Work handed out one message at a time by a queue shared with other processes."""

    async def claim(self) -> Message | Record | None:
        """The next message to send; or the record of one that must not be sent (settled, or
        maybe sent by a worker that died); or None once no work is left."""


class PrepaidClaims:
    """Claims on a shared queue, each made on a rate slot taken before it: a claimed message
    never waits on a limiter that may slow down for long while the lease other workers honour
    runs out. The slot is reserved before the claim and waited for after it (once the engine
    holds a window place), so the claim's round trip happens during that wait and the request
    leaves right at its slot.

    `cost`: what a slot taken before a claim covers (the message is not known yet)."""

    __slots__ = ("_claims", "_control", "_cost", "_limiter")

    def __init__(
        self, claims: Claims, limiter: SlotLimiter, control: RunControl, cost: float = 1.0
    ) -> None:
        self._claims = claims
        self._limiter = limiter
        self._control = control
        self._cost = cost

    def claimers(self, window: int) -> int:
        # One claimer a window place: each holds a slot reserved before its claim.
        return window

    async def claim(self) -> Claim | Record | None:
        if self._control.stopping:
            return None
        slot = await self._limiter.take(self._cost)
        item = None if self._control.stopping else await self._claims.claim()
        if item is None or isinstance(item, Record):
            return item
        return Claim(item, self._cost, functools.partial(self._limiter.wait, slot))


class PlainClaims:
    """Claims on a shared queue whose rate slot is taken when they are sent, for a pool's
    look-ahead (`pool_pacing`): it holds a message until its sender's turn, and a slot taken
    before the claim would pass unused meanwhile, lost to every worker. The queue keeps the
    lease of a held message, as of any it holds."""

    __slots__ = ("_claims", "_control")

    def __init__(self, claims: Claims, control: RunControl) -> None:
        self._claims = claims
        self._control = control

    def claimers(self, window: int) -> int:
        return window

    async def claim(self) -> Claim | Record | None:
        if self._control.stopping:
            return None
        item = await self._claims.claim()
        if item is None or isinstance(item, Record):
            return item
        return Claim(item)


# A check of a message just before it is sent: the record that replaces its sending, or None.
Check = Callable[[Message], Record | None]


def first_record(*checks: Check | None) -> Check | None:
    """One check of a message that asks `checks` in turn (quiet hours, then the opt-out list:
    the order a dry run asks them in) and gives the first record; None without any."""
    given = [check for check in checks if check is not None]
    if len(given) < 2:
        return given[0] if given else None

    def first(message: Message) -> Record | None:
        for check in given:
            if (record := check(message)) is not None:
                return record
        return None

    return first
