"""Where an engine's messages come from: rows read from an input and prepared (`RowFeed`, for
`send`), or claims on a queue shared with other processes (`PrepaidClaims`, for `worker`). Both
hand out work through one interface, `engine.Work`; the engine only sends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import AsyncIterator
from typing import Any, Protocol

from sms_blaster.engine import Claim, Engine, RunControl, StopReason
from sms_blaster.errors import JournalError
from sms_blaster.models import ErrorKind, InputRow, Message, Record, RowError

FEED_SLICE = 16  # rows prepared between two turns of the event loop


class Preparing(Protocol):
    def prepare(self, row: InputRow) -> Message | Record: ...

    def client_ref(self, line: int) -> str: ...

    def raw_to(self, row: InputRow) -> str: ...


def prepare_row(preparer: Preparing, row: InputRow) -> Message | Record:
    """The row's message, or the record of a row that will not be sent (a row that breaks
    preparation is a record with a reason, never a crash); either carries the row's
    fingerprint."""
    try:
        item = preparer.prepare(row)
    except Exception as exc:
        return _unsendable(preparer, row, ErrorKind.INVALID_INPUT, "unreadable_row",
                           f"cannot prepare the row: {exc!r}")  # fmt: skip
    return dataclasses.replace(item, fingerprint=row.fingerprint())


def _unsendable(preparer: Preparing, row: InputRow, kind: ErrorKind, code: str, why: str) -> Record:
    to, ref = preparer.raw_to(row), preparer.client_ref(row.line)
    return Record.unsendable(row, to, ref, RowError(kind, code, why))


class RowFeed:
    """Reads input rows, prepares them and hands out their messages from a bounded queue; the
    records of rows not to be sent (invalid, duplicate, settled earlier) it emits itself.

    Every row read ends as exactly one record. Once the run stops the input is read no further:
    rows read but not queued are recorded `stopped`, and so are queued ones (by the claimers, or
    here when the run is cancelled)."""

    __slots__ = ("_batches", "_control", "_engine", "_ledger", "_preparer", "_queue", "last_line")

    def __init__(
        self, batches: AsyncIterator[list[InputRow]], preparer: Preparing, engine: Engine
    ) -> None:
        self._batches = batches
        self._preparer = preparer
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

    async def claim(self) -> Claim | None:
        message = await self._queue.get()
        if message is None:
            self._queue.put_nowait(None)  # the end, for every other claimer too
            return None
        return Claim(message)

    async def run(self) -> None:
        """Read the rows while the engine sends their messages, until the input ends or the run
        stops."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._read())
                group.create_task(self._engine.run(self))
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
        await self._queue.put(None)

    async def _feed(self, stopped: asyncio.Future[None]) -> None:
        batch: list[InputRow] = []
        index = 0
        try:
            while (following := await self._next_batch(stopped)) is not None:
                batch, index = following, 0
                self.last_line = batch[-1].line
                # `index`: the rows taken so far; a row counts as taken once admitted, so a
                # cancel at the yield below cannot record it a second time as stopped.
                while index < len(batch) and not self._control.stopping:
                    await self._admit(batch[index])
                    index += 1
                    if index % FEED_SLICE == 0:
                        # Preparing a row takes ~30 us and queue.put only waits when the queue
                        # is full: without this, a refill would hold the loop for milliseconds
                        # while answers wait, which shows as latency and a window not kept full.
                        await asyncio.sleep(0)
                if self._control.stopping:
                    break
        except JournalError as exc:
            # The input is not the one the journal knows: read no further.
            self._control.stop(StopReason.JOURNAL, str(exc))
        except asyncio.CancelledError:
            self._stop_rows(batch[index:])
            raise
        # Rows read but not queued end as stopped; the input is not read further.
        self._stop_rows(batch[index:])

    async def _next_batch(self, stopped: asyncio.Future[None]) -> list[InputRow] | None:
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
                self.last_line = arrived[-1].line
                self._stop_rows(arrived)
            raise
        if following.done():
            return following.result()
        following.cancel()
        return None

    async def _admit(self, row: InputRow) -> None:
        item = prepare_row(self._preparer, row)
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

    def _stop_rows(self, rows: list[InputRow]) -> None:
        """Record rows read but not sent as stopped; a row an earlier run settled keeps that
        record instead, so the ledger never turns a settled row back into a pending one."""
        for row in rows:
            error = self._control.stopped_error()
            stopped = _unsendable(self._preparer, row, error.kind, error.code, error.message)
            try:
                settled = self._ledger.admit(stopped)
            except JournalError:  # the input differs from the journal: the ledger keeps nothing
                settled = None
            self._engine.emit(settled or stopped)


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
