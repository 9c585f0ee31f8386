"""The receiver's store, whatever keeps the receipts: group commits that acknowledgements wait for,
processing after. Here is what every store does; a backend (`sqlite`: a journal file, `redis`: a
stream shared by any number of receivers) only keeps receipts and says which to process.

    handler ──submit──▶ bounded queue ──▶ writer: one commit per batch (durable) ──▶ ack
                                                     │
                                                     ▼  what the backend hands out to process
              processing: (a journal correlates with the campaign rows), emit, user hook
                                                     │
                                                     ▼  every 100 ms or 256 receipts
                                    marked processed once a receipt's hook has ended

A callback is acknowledged once its batch is stored, never later: the batch forms while the
previous one commits, so at low load a receipt waits for one commit and at high load for at most
two, whatever the processing costs. A full queue refuses at once (the handler answers 503 and the
provider retries), so memory stays bounded and nothing acknowledged is ever lost.

Processing is detached, and at least once: a receipt counts as processed only once it was emitted
and its hook ended (successfully or with a logged error). A stop may cut a hook short; that
receipt stays unprocessed and is handed to a hook again (see each backend for when).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Generic, NotRequired, Protocol, TypedDict, TypeVar, Unpack

from sms_blaster.errors import JournalError
from sms_blaster.keywords import DEFAULT_KEYWORDS, KeywordLists
from sms_blaster.models import Receipt, ReceiptKind, StoredReceipt
from sms_blaster.optouts.model import OptOut, change_of
from sms_blaster.receiver.hook_failures import HookFailureLog
from sms_blaster.receiver.log_rate import LogRate
from sms_blaster.receiver.stores.worker import settle

T = TypeVar("T")
Key = TypeVar("Key")  # how a backend names a stored receipt it is told was processed

log = logging.getLogger("sms_blaster.receiver")

Hook = Callable[[StoredReceipt], Awaitable[None]]
Emit = Callable[[Sequence[StoredReceipt]], None]

_MARK_EVERY_S = 0.1  # how long finished receipts wait to be marked processed, unless ...
_MARK_BATCH = 256  # ... this many are waiting
_RETRY_S = 2.0  # how long processing waits after the backend failed, rather than spin
# What the store's rate-limited failures say at the stop, of those held back since their line.
_FAILED = {
    "commit": "could not store receipts",
    "process": "could not process receipts",
    "mark": "could not mark receipts processed",
    "failed": "a batch's processing failed",
    "set aside": "receipts were set aside",
}
_PROCESS_TRIES = 5  # tries of a batch whose processing fails, before each receipt alone
_BATCH_FAILURES_EVERY_S = 60.0  # a batch failing, a receipt set aside: a line a minute at most


@dataclass(slots=True)
class _Held(Generic[Key]):
    """A batch taken off the backend, held until processed: how far its processing got."""

    batch: Sequence[tuple[Key, StoredReceipt]]
    prepared: bool = False
    emitted: bool = False
    dispatched: int = 0  # receipts handed to their hook (or finished, without a hook)
    failures: int = 0


class StoreOptions(TypedDict):
    """What every store is given, whatever its backend (`queue_size` only is required)."""

    queue_size: int  # callbacks waiting for a commit; one more is answered 503
    hook: NotRequired[Hook | None]  # the user's hook, run on each stored receipt
    hook_concurrency: NotRequired[int]  # hooks running at once
    emit: NotRequired[Emit | None]  # --emit: each stored receipt as a line on stdout
    observe_commit: NotRequired[Callable[[float, int], None] | None]  # seconds, receipts
    clock: NotRequired[Callable[[], float]]  # unix seconds: received, applied
    keywords: NotRequired[KeywordLists]  # what inbound messages opt out or in (default Twilio's)
    redact: NotRequired[Callable[[str], str]]  # masks the receiver's secrets in a logged text


class StoreBusy(Exception):
    """The queue is full or the store cannot write: the callback must be retried later."""


@dataclass(slots=True)
class StoreStats:
    """What a store did since it started: counts of receipts, except `commits`."""

    stored: int = 0  # new receipts committed
    duplicates: int = 0  # callbacks already stored (a provider's retry)
    busy: int = 0  # refused because the queue was full
    failed_commits: int = 0  # batches that could not be stored (answered 503)
    commits: int = 0  # insert transactions
    processed: int = 0  # marked processed: emitted, and the hook ended
    matched: int = 0  # tied to their campaign row
    # Not applied for good: their row was sent through another provider (or account) than the
    # one whose route received them (a forged receipt on a route taking callbacks unsigned).
    foreign: int = 0
    hook_errors: int = 0  # hook calls that raised


# A callback waiting for its commit, and the future its handler awaits.
Waiting = tuple[Receipt, "asyncio.Future[bool]"]


def refuse(done: asyncio.Future[bool], reason: str) -> None:
    """Fail a callback's future with StoreBusy (its handler answers 503)."""
    if not done.done():
        done.set_exception(StoreBusy(reason))
        # Retrieved here: a handler whose client hung up no longer awaits it, and its outcome
        # is not worth a warning. Whoever awaits it still gets the exception.
        done.exception()


class Intake(Protocol):
    """Where callbacks wait for their commit, and what commits them: bounded, so a full intake
    (or a stopping receiver) refuses at once and the handler answers 503."""

    closing: bool  # set at a stop: every later submit is refused

    def __len__(self) -> int:
        """Callbacks waiting, not yet in a commit."""

    @property
    def committing(self) -> int:
        """Callbacks in the commit under way."""

    def submit(self, receipt: Receipt) -> asyncio.Future[bool]:
        """A future that is True once the receipt is stored, False when it was a duplicate.

        Raises StoreBusy when the intake is full; the future fails with StoreBusy when the commit
        does.
        """

    def start(self) -> None:
        """Start committing; from the running event loop."""

    async def drain(self, deadline: float, commit_s: float = 10.0) -> int:
        """Wait until `deadline` (loop time) for every callback to be committed; refuse those
        still waiting then (503) and return how many, after the commit under way (`commit_s` at
        most)."""

    async def stop(self) -> None:
        """Stop committing, once drained."""


class CallbackQueue:
    """An intake a task of the event loop commits from, a batch at a time (`commit`)."""

    __slots__ = ("_commit", "_gather_s", "_most", "_on_change", "_queue", "_stats", "_stopping",
                 "_writer", "closing", "committing")  # fmt: skip

    def __init__(
        self,
        size: int,
        stats: StoreStats,
        commit: Callable[[list[Waiting]], Awaitable[None]],
        *,
        most: int,
        gather_s: float = 0.0,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._queue: asyncio.Queue[Waiting] = asyncio.Queue(size)
        self._stats = stats
        self._commit = commit
        self._most = most
        self._gather_s = gather_s
        self._on_change = on_change
        self._writer: asyncio.Task[None] | None = None
        self._stopping = False  # the writer ends at its next turn (see _stop)
        self.closing = False
        self.committing = 0

    def __len__(self) -> int:
        return self._queue.qsize()

    def submit(self, receipt: Receipt) -> asyncio.Future[bool]:
        if self.closing:
            raise StoreBusy("the receiver is stopping")
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((receipt, done))
        except asyncio.QueueFull:
            self._stats.busy += 1
            raise StoreBusy("the receipt queue is full") from None
        self._on_change()
        return done

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_batches(), name="receipt-writer")

    async def stop(self) -> None:
        self._stopping = True
        await _stop(self._writer)

    async def _batch(self) -> list[Waiting]:
        """The callbacks waiting `gather_s` after the first came (at least one, at most
        `most`)."""
        batch = [await self._queue.get()]
        if self._gather_s > 0 and self._queue.qsize() < self._most - 1:
            self._on_change()  # the queue is shorter by the one held
            await asyncio.sleep(self._gather_s)
        while len(batch) < self._most and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        return batch

    async def _write_batches(self) -> None:
        while not self._stopping:
            batch = await self._batch()
            self.committing = len(batch)
            self._on_change()
            try:
                await self._commit(batch)
            except Exception:
                # A bug after the commit: the writer must outlive it. Receipts it stored are
                # processed later; those not answered yet get 503 and come again.
                log.exception("the receipt writer failed after a commit")
                for _, done in batch:
                    refuse(done, "the store failed")
            finally:
                self.committing = 0
                for _ in batch:
                    self._queue.task_done()
                self._on_change()

    async def drain(self, deadline: float, commit_s: float = 10.0) -> int:
        if self._writer is None:
            return 0
        try:
            async with asyncio.timeout_at(deadline):
                await self._queue.join()
            return 0
        except TimeoutError:
            pass
        refused = 0
        while not self._queue.empty():
            _, done = self._queue.get_nowait()
            refuse(done, "the receiver stopped")
            self._queue.task_done()
            refused += 1
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(commit_s):
                await self._queue.join()
        return refused


async def in_daemon_thread(function: Callable[[T], None], argument: T) -> None:
    """`function(argument)` in a thread of its own, for a write that may block for long.

    A daemon thread, not asyncio.to_thread's pool: Python 3.11 waits for the pool's threads at
    exit without a limit, so a write blocked on a stdout nobody reads would keep the process from
    ever exiting. What the thread had not written is emitted again at the next start.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def run() -> None:
        error: BaseException | None = None
        try:
            function(argument)
        except BaseException as exc:  # handed to the awaiting task, as to_thread would
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(settle, done, None, error)

    threading.Thread(target=run, name="sms-blaster-emit", daemon=True).start()
    await done


async def _stop(task: asyncio.Task[None] | None) -> None:
    """Cancel one of the store's tasks and wait for it to end.

    The cancellation alone may not end it: on Python 3.11, asyncio.wait_for returns normally when
    it is cancelled just as what it waits for ends (CPython issue 86296), and redis-py writes every
    command through it when the connection has a socket timeout (redis-py 8.2 sets 5 s unless told
    otherwise). A task cancelled there carries on as if never asked; it would then block in its
    next read or wait, and a stopping receiver with it. So the caller sets the task's stop flag
    first, and every loop of the store checks that flag each turn, before it waits for anything
    new: a task that lost its cancellation ends at its next turn, after the Redis call under way at
    worst.
    """
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class ReceiptStore(abc.ABC, Generic[Key]):
    """Durable storage of callbacks, and their processing after the acknowledgement.

    A backend implements the methods marked abstract: open and close its storage, say what
    commits callbacks (its intake, which stores each receipt durably and once, then hands the
    batch to `_committed`), hand out receipts to process, and mark them processed.
    """

    _MAX_BATCH: ClassVar[int]  # callbacks in one commit
    _WHERE: ClassVar[str]  # where the receipts are kept, as the log names it
    _SET_ASIDE: ClassVar[str] = ", processed at the next start"  # see _set_aside

    def __init__(self, **options: Unpack[StoreOptions]) -> None:
        clock = options.get("clock", time.time)
        self._clock = clock  # unix seconds: when a receipt was received, when it was applied
        self.stats = StoreStats()
        self._changed = asyncio.Event()
        self._watchers = 0  # tasks in wait_until: without any, a change notifies nobody
        self._callbacks = self._intake(options["queue_size"])
        self._hook = options.get("hook")
        self._hooks_free = asyncio.Semaphore(options.get("hook_concurrency", 256))
        self._hook_tasks: set[asyncio.Task[None]] = set()
        self._hook_failures = HookFailureLog(log, redact=options.get("redact", str))
        self._commit_failures = LogRate()  # failed commits, foreign receipts: a line a kind
        self._foreign_held = 0  # foreign receipts not logged yet
        self._batch_failures = LogRate(every_s=_BATCH_FAILURES_EVERY_S)
        self._emit = options.get("emit")
        self._observe_commit = options.get("observe_commit")
        self._processing = False
        self._finished: list[Key] = []  # receipts whose hook ended, to be marked processed
        self._some_finished = asyncio.Event()
        self._many_finished = asyncio.Event()
        self._processor: asyncio.Task[None] | None = None
        self._marker: asyncio.Task[None] | None = None
        self._stopping = False  # processing and marking end at their next turn (see _stop)
        self._keywords = options.get("keywords", DEFAULT_KEYWORDS)

    @property
    def depth(self) -> int:
        """Callbacks waiting for a commit."""
        return len(self._callbacks)

    @property
    def committing(self) -> int:
        """Callbacks in the commit under way."""
        return self._callbacks.committing

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Return once `condition()` holds; it is checked after every change of state."""
        while not condition():
            self._watchers += 1
            try:
                await self._changed.wait()
            finally:
                self._watchers -= 1

    def _notify(self) -> None:
        if self._watchers:
            self._changed.set()
            self._changed = asyncio.Event()

    async def start(self) -> None:
        """Open the store (JournalError when it cannot) and start writing and processing."""
        await self._open()
        self._callbacks.start()
        if self._processes:
            self._processor = asyncio.create_task(self._process_batches(), name="receipt-processor")
        self._marker = asyncio.create_task(self._mark_processed(), name="receipt-marker")

    def submit(self, receipt: Receipt) -> asyncio.Future[bool]:
        """See Intake.submit."""
        return self._callbacks.submit(receipt)

    async def close(self, grace_s: float = 5.0) -> None:
        """Store what is queued and let processing finish, within `grace_s`, then stop.

        Callbacks the store could not take by then fail with StoreBusy (their handlers answer 503).
        """
        self._callbacks.closing = True
        deadline = asyncio.get_running_loop().time() + grace_s
        refused = await self._callbacks.drain(deadline)
        if refused:
            log.error(
                "the store could not take %d queued callbacks within %g s: they get 503",
                refused,
                grace_s,
            )
        await self._callbacks.stop()
        await self._stop_helpers()
        if self._processor is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await self.wait_until(self._idle)
        self._stopping = True
        if self._processor is not None:
            await _stop(self._processor)
        # Cut short: these receipts stay unprocessed, and a later start runs their hooks.
        for task in self._hook_tasks:
            task.cancel()
        await asyncio.gather(*self._hook_tasks, return_exceptions=True)
        self._hook_failures.flush()
        for kind, held in [*self._commit_failures.flush(), *self._batch_failures.flush()]:
            if kind in _FAILED:
                log.error("%s %d more times since the last line", _FAILED[kind], held)
        if self._foreign_held:
            log.warning(
                "%d more receipts named rows sent through another provider or account: kept, "
                "not applied",
                self._foreign_held,
            )
        if self._marker is not None:
            await _stop(self._marker)
            await self._mark_finished()
        await self._close()

    # --- what a backend implements ----------------------------------------------------------

    @abc.abstractmethod
    async def _open(self) -> None:
        """Open the storage; JournalError when it cannot."""

    @abc.abstractmethod
    async def _close(self) -> None:
        """Close the storage; nothing uses it after."""

    @abc.abstractmethod
    def _intake(self, size: int) -> Intake:
        """What holds at most `size` callbacks until their commit, and commits them."""

    @abc.abstractmethod
    async def _next_to_process(self) -> Sequence[tuple[Key, StoredReceipt]]:
        """Stored receipts to process next, each with its key, oldest first; may be empty.

        One that awaits more than one call returns early once `_stopping` is set (see _stop)."""

    @abc.abstractmethod
    async def _mark(self, keys: Sequence[Key]) -> None:
        """Record that these receipts were emitted and their hooks ended."""

    @property
    def _processes(self) -> bool:
        """Whether stored receipts are processed at all."""
        return True

    def _stored(self, new: list[StoredReceipt]) -> None:
        """A batch was committed (the new receipts only): a backend may hand it out in memory."""

    async def _prepare(self, batch: Sequence[StoredReceipt]) -> None:
        """Whatever the backend does to a batch before it is emitted."""

    def _caught_up(self) -> bool:
        """Whether the backend holds nothing more to hand out now."""
        return True

    async def _stop_helpers(self) -> None:
        """Stop the backend's own tasks, once nothing more is stored."""

    # --- storing ------------------------------------------------------------------------------

    def _settle(
        self,
        batch: Sequence[Waiting],
        outcome: Sequence[StoredReceipt | None] | Exception,
        elapsed_s: float,
    ) -> None:
        """A batch's commit ended: stored (None for each duplicate) or failed; answer it."""
        if isinstance(outcome, Exception):
            self._not_committed(batch, outcome)
        else:
            self._committed(batch, outcome, elapsed_s)

    def _committed(
        self, batch: Sequence[Waiting], stored: Sequence[StoredReceipt | None], elapsed_s: float
    ) -> None:
        """A batch is stored (None for each duplicate): answer its callbacks, hand it on."""
        self.stats.commits += 1
        if self._observe_commit is not None:
            self._observe_commit(elapsed_s, len(batch))
        new = [item for item in stored if item is not None]
        self.stats.stored += len(new)
        self.stats.duplicates += len(stored) - len(new)
        for (_, done), item in zip(batch, stored, strict=True):
            if not done.done():
                done.set_result(item is not None)
        if new:
            self._stored(new)

    def _not_committed(self, batch: Sequence[Waiting], exc: Exception) -> None:
        """A batch could not be stored: whatever the failure, it gets 503 and is retried.

        Logged at a bounded rate (log_rate.py): a full disk fails every commit, and the providers'
        retries come as fast as they are refused, a line each (20,000 in 35 s) would fill what
        disk the log has; the next line, or the stop, counts the ones held back."""
        self.stats.failed_commits += 1
        line = self._commit_failures.note("commit")
        if line is not None:
            log.error(
                "could not store %d receipts%s, answering 503: %s%s",
                len(batch),
                self._WHERE,
                exc,
                line.more("failed commits"),
                exc_info=not isinstance(exc, JournalError),
            )
        for _, done in batch:
            refuse(done, "the store could not write")

    def _optout_changes(self, receipts: Sequence[Receipt]) -> list[OptOut]:
        """The opt-out changes a batch's inbound messages make, written before the batch:
        acknowledged means kept."""
        inbound = [receipt for receipt in receipts if receipt.kind is ReceiptKind.INBOUND]
        if not inbound:  # a batch of receipts: nothing to look at
            return []
        now_s = self._clock()
        return [
            change
            for receipt in inbound
            if (change := change_of(receipt, now_s, self._keywords)) is not None
        ]

    # --- processing ---------------------------------------------------------------------------

    def _foreign(self, count: int) -> None:
        """Receipts whose row was sent through another provider or account: kept, not applied;
        one line every 10 s at most (a forger may send many), the next one counting the rest."""
        self.stats.foreign += count
        self._foreign_held += count
        line = self._commit_failures.note("foreign")
        if line is None:
            return
        log.warning(
            "%d receipts name rows sent through another provider or account than the route that "
            "received them: kept in the store, not applied to their rows",
            self._foreign_held,
        )
        self._foreign_held = 0

    def _idle(self) -> bool:
        return self._caught_up() and not self._processing and not self._hook_tasks

    async def _process_batches(self) -> None:
        """Take batches off the backend and process them, one at a time, in order.

        A batch taken off stays held here until it is processed: whatever its processing raises
        (a correlation, an emit, a hook's dispatch), it is tried again, from the step it had not
        finished (nothing emitted twice, no hook run twice), every 2 s, `_PROCESS_TRIES` times.
        Then each of its receipts is tried alone, once, and those that fail alone too are set
        aside (left unprocessed in the store, which hands them out again: see `_set_aside`), so
        neither the rest of the batch nor newer receipts are held up behind one that cannot be
        processed. Acknowledgements never wait for any of this: they take another path.
        """
        held: _Held[Key] | None = None
        while not self._stopping:
            if held is None:
                batch = await self._guarded(self._next_to_process())
                if self._stopping:
                    return  # what was handed out stays unprocessed: a later start takes it
                if batch is None:
                    await asyncio.sleep(_RETRY_S)  # the store failed: retry, not spin
                    continue
                if not batch:
                    continue
                held = _Held(batch)
            self._processing = True
            try:
                await self._process(held)
            except Exception as exc:
                held.failures += 1
                self._process_failed(held, exc)
                if held.failures >= _PROCESS_TRIES:
                    await self._one_by_one(held)
                    held = None
                else:
                    await asyncio.sleep(_RETRY_S)
                continue
            finally:
                self._processing = False
                self._notify()
            if held.failures:
                log.warning(
                    "processed %d receipts after %d failed tries",
                    len(held.batch),
                    held.failures,
                )
            held = None

    async def _one_by_one(self, held: _Held[Key]) -> None:
        """A batch that failed every try: its receipts not dispatched yet, each alone, once. One
        that cannot be processed (a bug its content meets) no longer holds up the others of its
        batch; those that fail alone too are set aside."""
        failed: list[Key] = []
        for pair in held.batch[held.dispatched :]:
            alone = _Held([pair], prepared=held.prepared, emitted=held.emitted)
            try:
                await self._process(alone)
            except Exception:
                failed.append(pair[0])
        if failed:
            self._set_aside(failed)
        # A receipt set aside fails again each time it is handed out: a line a minute at most.
        line = self._batch_failures.note("set aside")
        if line is not None:
            log.error(
                "could not process %d receipts in %d tries; each alone: %d processed, %d left in "
                "the store%s%s",
                len(held.batch) - held.dispatched,
                held.failures,
                len(held.batch) - held.dispatched - len(failed),
                len(failed),
                self._SET_ASIDE if failed else "",
                line.more("batches like it"),
            )

    def _process_failed(self, held: _Held[Key], exc: Exception) -> None:
        """One line when a batch first fails (with the traceback of a bug), one when it ends
        (`_one_by_one`, or processed at a later try); the tries between are not a line each."""
        if held.failures != 1:
            return
        line = self._batch_failures.note("failed")
        if line is not None:
            log.error(
                "could not process %d receipts (tried again every %g s, %d times at most): %s%s",
                len(held.batch) - held.dispatched,
                _RETRY_S,
                _PROCESS_TRIES - 1,
                exc,
                line.more("batches failing"),
                exc_info=not isinstance(exc, JournalError),
            )

    def _set_aside(self, keys: Sequence[Key]) -> None:
        """Receipts whose processing failed every try: left unprocessed in the store, to be
        handed out again later (each backend says when: `_SET_ASIDE`)."""

    async def _guarded(self, work: Awaitable[T]) -> T | None:
        try:
            return await work
        except Exception as exc:
            # Stored and acknowledged already: what is not processed is picked up later. One
            # line every 10 s at most: a store failing for minutes fails every try.
            line = self._commit_failures.note("process")
            if line is not None:
                log.error(
                    "could not process receipts (tried again, at the latest at the next start): "
                    "%s%s",
                    exc,
                    line.more("failures"),
                    exc_info=not isinstance(exc, JournalError),
                )
            return None

    async def _process(self, held: _Held[Key]) -> None:
        """Prepare, emit, then hand each receipt to the hook; marked processed once it ended.

        Each step once: a batch tried again starts at the step that failed."""
        batch = held.batch
        items = [item for _, item in batch]
        if not held.prepared:
            await self._prepare(items)
            held.prepared = True
        if self._emit is not None and not held.emitted:
            await in_daemon_thread(self._emit, items)
            held.emitted = True
        if self._hook is None:
            self._finish([key for key, _ in batch])
            held.dispatched = len(batch)
            return
        while held.dispatched < len(batch):
            key, item = batch[held.dispatched]
            await self._hooks_free.acquire()
            try:
                task = asyncio.create_task(self._run_hook(self._hook, key, item))
            except BaseException:
                self._hooks_free.release()
                raise
            held.dispatched += 1
            self._hook_tasks.add(task)
            task.add_done_callback(self._hook_tasks.discard)

    async def _run_hook(self, hook: Hook, key: Key, item: StoredReceipt) -> None:
        try:
            await hook(item)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            # SystemExit or KeyboardInterrupt from a hook (a `sys.exit()` in it, or in a library
            # it calls) is its failure too: raised out of this task, it would stop the receiver,
            # and a restart would run the same hook again and stop again.
            self.stats.hook_errors += 1
            self._hook_failures.failed(item.receipt.message_id, exc)
        finally:
            self._hooks_free.release()
            self._notify()
        self._finish([key])  # not reached when cancelled: a later start runs it again

    def _finish(self, keys: Sequence[Key]) -> None:
        self._finished.extend(keys)
        self._some_finished.set()
        if len(self._finished) >= _MARK_BATCH:
            self._many_finished.set()

    async def _mark_processed(self) -> None:
        """Mark finished receipts processed in batches: every 100 ms, or at once when many.

        Once stopping, close marks what is left."""
        while not self._stopping:
            await self._some_finished.wait()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_MARK_EVERY_S):
                    await self._many_finished.wait()
            if not await self._mark_finished():
                await asyncio.sleep(_RETRY_S)  # the store failed (a full disk): try again, not spin

    async def _mark_finished(self) -> bool:
        """Mark what has finished; False when the store failed, the receipts kept to be marked
        at the next try. Dropped, they would stay unprocessed (and, their correlation failed
        too, unapplied) until a restart: the sweep takes only receipts marked processed."""
        while self._finished:
            keys = self._finished[:_MARK_BATCH]
            try:
                await self._mark(keys)
            except Exception as exc:
                line = self._commit_failures.note("mark")  # a full disk fails every 2 s
                if line is not None:
                    log.error(
                        "could not mark %d receipts processed (tried again every %g s, or at "
                        "the next start): %s%s",
                        len(keys),
                        _RETRY_S,
                        exc,
                        line.more("failures"),
                        exc_info=not isinstance(exc, JournalError),
                    )
                return False
            finally:
                self._notify()
            del self._finished[: len(keys)]
            self.stats.processed += len(keys)
        self._some_finished.clear()
        self._many_finished.clear()
        return True


class QueuedStore(ReceiptStore[Key]):
    """A store whose commits are awaited on the event loop (a network store): a task takes a
    batch from a queue and awaits `_insert`."""

    # How long a commit waits for more callbacks to join its first.
    _GATHER_S: ClassVar[float] = 0.0

    def _intake(self, size: int) -> Intake:
        return CallbackQueue(
            size,
            self.stats,
            self._commit,
            most=self._MAX_BATCH,
            gather_s=self._GATHER_S,
            on_change=self._notify,
        )

    @abc.abstractmethod
    async def _insert(
        self, receipts: Sequence[Receipt], received_at_s: float
    ) -> Sequence[StoredReceipt | None]:
        """Store a batch durably; None for each receipt stored before (a duplicate)."""

    @abc.abstractmethod
    async def _record_optouts(self, changes: Sequence[OptOut]) -> None:
        """Write opt-out changes durably (they may have been written before: a retry)."""

    async def _commit(self, batch: list[Waiting]) -> None:
        started = time.perf_counter()
        receipts = [receipt for receipt, _ in batch]
        outcome: Sequence[StoredReceipt | None] | Exception
        try:
            changes = self._optout_changes(receipts)
            if changes:
                await self._record_optouts(changes)
            outcome = await self._insert(receipts, self._clock())
        except Exception as exc:
            outcome = exc
        self._settle(batch, outcome, time.perf_counter() - started)
