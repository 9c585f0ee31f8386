"""The receiver's durable queue: group commits that acknowledgements wait for, processing after.

    handler ──submit──▶ bounded queue ──▶ writer: one transaction per batch (fsync) ──▶ ack
                                                     │
                                                     ▼  batches in memory, or read back
              processing: correlate with the campaign rows, emit (from a thread), user hook
                                                     │
                                                     ▼  every 100 ms or 256 receipts
                                      `processed = 1` once a receipt's hook has ended

A callback is acknowledged once its batch is on disk, never later: the batch forms while the
previous one commits, so at low load a receipt waits for one commit and at high load for at most
two, whatever the processing costs. A full queue refuses at once (the handler answers 503 and the
provider retries), so memory stays bounded and nothing acknowledged is ever lost.

Processing is detached, and at least once: a receipt counts as processed only once it was emitted
and its hook ended (successfully or with a logged error). A stop may cut a hook short; that
receipt stays unprocessed and the next start hands it to the hook again. That start covers only
the receipts stored before it (`id <=` the highest at start): what arrives meanwhile is processed
once, in order after them. On a store shared by several receivers, a receiver that starts also
re-runs the hooks the others have under way at that moment.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from sms_blaster.errors import JournalError
from sms_blaster.journal.receipts import ReceiptJournal, StoredReceipt
from sms_blaster.models import Receipt

P = ParamSpec("P")
T = TypeVar("T")

log = logging.getLogger("sms_blaster.receiver")

Hook = Callable[[StoredReceipt], Awaitable[None]]

_MAX_BATCH = 512
_SWEEP_EVERY_S = 2.0  # how often receipts waiting for their row are tried again
_SWEEP_PAGES = 4  # pages per sweep: its share of the store thread stays small
_PAGE = 256  # receipts read back or correlated in one transaction
_PROCESSING_QUEUE = 64  # stored batches held in memory for processing; more are read back
_MARK_EVERY_S = 0.1  # how long finished receipts wait to be marked processed, unless ...
_MARK_BATCH = 256  # ... this many are waiting


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
    hook_errors: int = 0  # hook calls that raised


# A callback waiting for its commit, and the future its handler awaits.
Waiting = tuple[Receipt, "asyncio.Future[bool]"]


def _refuse(done: asyncio.Future[bool], reason: str) -> None:
    if not done.done():
        done.set_exception(StoreBusy(reason))


def _retrieve(done: asyncio.Future[bool]) -> None:
    if not done.cancelled():
        done.exception()


class CallbackQueue:
    """Callbacks waiting for their commit, shared by both stores: bounded, so a full queue (or a
    stopping receiver) refuses at once and the handler answers 503; a batch is what waits."""

    __slots__ = ("_on_change", "_queue", "_stats", "closing")

    def __init__(
        self, size: int, stats: StoreStats, on_change: Callable[[], None] = lambda: None
    ) -> None:
        self._queue: asyncio.Queue[Waiting] = asyncio.Queue(size)
        self._stats = stats
        self._on_change = on_change
        self.closing = False

    def __len__(self) -> int:
        return self._queue.qsize()

    def submit(self, receipt: Receipt) -> asyncio.Future[bool]:
        """A future that is True once the receipt is stored, False when it was a duplicate.

        Raises StoreBusy when the queue is full; the future fails with StoreBusy when the commit
        does.
        """
        if self.closing:
            raise StoreBusy("the receiver is stopping")
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((receipt, done))
        except asyncio.QueueFull:
            self._stats.busy += 1
            raise StoreBusy("the receipt queue is full") from None
        # A handler whose client hung up no longer awaits it: its outcome is not worth a warning.
        done.add_done_callback(_retrieve)
        self._on_change()
        return done

    async def batch(self, most: int) -> list[Waiting]:
        """The callbacks waiting now (at least one, at most `most`); `taken` once answered."""
        batch = [await self._queue.get()]
        while len(batch) < most and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        return batch

    def taken(self, batch: list[Waiting]) -> None:
        for _ in batch:
            self._queue.task_done()

    async def drain(self, deadline: float, commit_s: float = 10.0) -> int:
        """Wait until `deadline` (loop time) for every callback to be committed; refuse those
        still queued then (503) and return how many, after the commit under way (`commit_s` at
        most)."""
        try:
            async with asyncio.timeout_at(deadline):
                await self._queue.join()
            return 0
        except TimeoutError:
            pass
        refused = 0
        while not self._queue.empty():
            _, done = self._queue.get_nowait()
            _refuse(done, "the receiver stopped")
            self._queue.task_done()
            refused += 1
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(commit_s):
                await self._queue.join()
        return refused


async def _in_daemon_thread(function: Callable[[T], None], argument: T) -> None:
    """`function(argument)` in a thread of its own, for a write that may block for long.

    A daemon thread, not asyncio.to_thread's pool: Python 3.11 waits for the pool's threads at
    exit without a limit, so a write blocked on a stdout nobody reads would keep the process from
    ever exiting. What the thread had not written is emitted again at the next start.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if done.done():
            return
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)

    def run() -> None:
        error: BaseException | None = None
        try:
            function(argument)
        except BaseException as exc:  # handed to the awaiting task, as to_thread would
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(settle, error)

    threading.Thread(target=run, name="sms-blaster-emit", daemon=True).start()
    await done


class ReceiptStore:
    """Durable storage of callbacks, and their processing after the acknowledgement."""

    def __init__(
        self,
        path: str,
        *,
        queue_size: int,
        hook: Hook | None = None,
        hook_concurrency: int = 256,
        emit: Callable[[Sequence[StoredReceipt]], None] | None = None,
        observe_commit: Callable[[float, int], None] | None = None,
        processing_queue: int = _PROCESSING_QUEUE,
        sweep_every_s: float = _SWEEP_EVERY_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._path = path
        self._clock = clock  # unix seconds: when a receipt was received, when it was applied
        self._sweep_every_s = sweep_every_s
        self.stats = StoreStats()
        self._changed = asyncio.Event()
        self._callbacks = CallbackQueue(queue_size, self.stats, lambda: self._notify())
        self._hook = hook
        self._hooks_free = asyncio.Semaphore(hook_concurrency)
        self._hook_tasks: set[asyncio.Task[None]] = set()
        self._emit = emit
        self._observe_commit = observe_commit
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="sms-blaster-store")
        self._journal: ReceiptJournal | None = None
        self._to_process: asyncio.Queue[list[StoredReceipt]] = asyncio.Queue(processing_queue)
        # Ranges of ids (first, last) stored but never handed over in memory: the leftovers of
        # an earlier receiver, and what arrived while they or a full processing queue waited.
        # Read back in order once the queue is empty; never handed over twice.
        self._backlog: collections.deque[tuple[int, int]] = collections.deque()
        self._processing = False
        self._finished: list[int] = []  # receipts whose hook ended, to be marked processed
        self._some_finished = asyncio.Event()
        self._many_finished = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._processor: asyncio.Task[None] | None = None
        self._marker: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.committing = 0  # receipts in the commit under way

    @property
    def depth(self) -> int:
        """Callbacks waiting for a commit."""
        return len(self._callbacks)

    @property
    def processing_depth(self) -> int:
        """Stored batches waiting in memory for processing (those beyond wait in the store)."""
        return self._to_process.qsize()

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Return once `condition()` holds; it is checked after every change of state."""
        while not condition():
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def start(self) -> None:
        """Open the store (JournalError when it cannot) and start writing and processing."""
        self._journal = await self._run(ReceiptJournal.open, self._path)
        last_id = await self._run(self._journal.last_id)  # before the writer adds any
        if last_id:
            self._backlog.append((1, last_id))
        self._writer = asyncio.create_task(self._write_batches(), name="receipt-writer")
        self._processor = asyncio.create_task(self._process_batches(), name="receipt-processor")
        self._marker = asyncio.create_task(self._mark_processed(), name="receipt-marker")
        self._sweeper = asyncio.create_task(self._sweep(), name="receipt-sweeper")

    def submit(self, receipt: Receipt) -> asyncio.Future[bool]:
        """See CallbackQueue.submit."""
        return self._callbacks.submit(receipt)

    async def close(self, grace_s: float = 5.0) -> None:
        """Store what is queued and let processing finish, within `grace_s`, then stop.

        Callbacks the store could not take by then fail with StoreBusy (their handlers answer 503).
        """
        self._callbacks.closing = True
        deadline = asyncio.get_running_loop().time() + grace_s
        if self._writer is not None:
            refused = await self._callbacks.drain(deadline)
            if refused:
                log.error(
                    "the store could not take %d queued callbacks within %g s: they get 503",
                    refused,
                    grace_s,
                )
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        if self._processor is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await self.wait_until(self._idle)
            self._processor.cancel()
            await asyncio.gather(self._processor, return_exceptions=True)
        # Cut short: these receipts stay unprocessed, and the next start runs their hooks.
        for task in self._hook_tasks:
            task.cancel()
        await asyncio.gather(*self._hook_tasks, return_exceptions=True)
        if self._marker is not None:
            self._marker.cancel()
            await asyncio.gather(self._marker, return_exceptions=True)
            await self._mark_finished()
        if self._journal is not None:
            await self._run(self._journal.close)
        self._executor.shutdown(wait=True)

    async def _write_batches(self) -> None:
        while True:
            batch = await self._callbacks.batch(_MAX_BATCH)
            self.committing = len(batch)
            self._notify()
            try:
                await self._commit(batch)
            except Exception:
                # A bug after the commit: the writer must outlive it. Receipts it stored are
                # processed at the next start; those not answered yet get 503 and come again.
                log.exception("the receipt writer failed after a commit")
                for _, done in batch:
                    _refuse(done, "the store failed")
            finally:
                self.committing = 0
                self._callbacks.taken(batch)
                self._notify()

    async def _commit(self, batch: list[Waiting]) -> None:
        started = time.perf_counter()
        try:
            stored = await self._run(
                self._db.insert, [receipt for receipt, _ in batch], self._clock()
            )
        except Exception as exc:
            # Whatever the failure, the writer lives on: this batch gets 503 and is retried.
            self.stats.failed_commits += 1
            log.error(
                "could not store %d receipts, answering 503: %s",
                len(batch),
                exc,
                exc_info=not isinstance(exc, JournalError),
            )
            for _, done in batch:
                _refuse(done, "the store could not write")
            return
        elapsed_s = time.perf_counter() - started
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
            self._hand_over(new)

    def _hand_over(self, new: list[StoredReceipt]) -> None:
        """Give a stored batch to processing in memory, or leave it to be read back in order."""
        if not self._backlog and not self._to_process.full():
            self._to_process.put_nowait(new)
            return
        first, last = new[0].id, new[-1].id
        if self._backlog and self._backlog[-1][1] + 1 == first:  # right after the last: extend
            self._backlog[-1] = (self._backlog[-1][0], last)
        else:
            self._backlog.append((first, last))
        self._notify()

    def _idle(self) -> bool:
        return (
            self._to_process.empty()
            and not self._backlog
            and not self._processing
            and not self._hook_tasks
        )

    async def _process_batches(self) -> None:
        while True:
            if self._to_process.empty() and self._backlog:
                page = await self._guarded(self._read_backlog())
                if page is None:
                    await asyncio.sleep(_SWEEP_EVERY_S)  # the store failed: retry, not spin
                if not page:
                    continue
                batch, from_memory = page, False
            else:
                batch, from_memory = await self._to_process.get(), True
            self._processing = True
            try:
                await self._guarded(self._process(batch))
            finally:
                self._processing = False
                if from_memory:
                    self._to_process.task_done()
                self._notify()

    async def _guarded(self, work: Awaitable[T]) -> T | None:
        try:
            return await work
        except Exception as exc:
            # Stored and acknowledged already: what is not processed is picked up at next start.
            log.error(
                "could not process receipts (kept for the next start): %s",
                exc,
                exc_info=not isinstance(exc, JournalError),
            )
            return None

    async def _read_backlog(self) -> list[StoredReceipt]:
        """The next page of the oldest backlog range; the range shrinks by what was read."""
        first, last = self._backlog[0]
        page = await self._run(self._db.to_process, first, last, _PAGE)
        resume = page[-1].id + 1 if len(page) == _PAGE else last + 1
        _, last = self._backlog[0]  # the writer may have extended the range meanwhile
        if resume > last:
            self._backlog.popleft()
        else:
            self._backlog[0] = (resume, last)
        return page

    async def _sweep(self) -> None:
        """Try again, every few seconds, the receipts still waiting for their row.

        On a timer of its own, so a steady flow of callbacks does not put it off; a page at a time
        from a cursor that wraps at the end, so receipts that never match cannot hold up newer
        ones. A receipt before its send is recorded is matched within a sweep or two of the row.
        """
        cursor = 0
        while True:
            await asyncio.sleep(self._sweep_every_s)
            for _ in range(_SWEEP_PAGES):
                page = await self._guarded(self._run(self._db.unapplied, cursor, _PAGE))
                if page is None:
                    break
                if page:
                    matched = await self._guarded(self._run(self._db.apply, page, self._clock()))
                    self.stats.matched += matched or 0
                    self._notify()
                if len(page) < _PAGE:
                    cursor = 0  # the pass is over: the next one starts from the oldest again
                    break
                cursor = page[-1].id

    async def _process(self, batch: Sequence[StoredReceipt]) -> None:
        """Correlate, emit, then hand each receipt to the hook; marked processed once it ended."""
        to_apply = [item for item in batch if not item.applied]
        for start in range(0, len(to_apply), _PAGE):
            chunk = to_apply[start : start + _PAGE]
            # A failure leaves them unapplied: the sweep tries them again once processed.
            matched = await self._guarded(self._run(self._db.apply, chunk, self._clock()))
            self.stats.matched += matched or 0
        if self._emit is not None:
            await _in_daemon_thread(self._emit, batch)
        if self._hook is None:
            self._finish([item.id for item in batch])
            return
        for item in batch:
            await self._hooks_free.acquire()
            task = asyncio.create_task(self._run_hook(self._hook, item))
            self._hook_tasks.add(task)
            task.add_done_callback(self._hook_tasks.discard)

    async def _run_hook(self, hook: Hook, item: StoredReceipt) -> None:
        try:
            await hook(item)
        except Exception:
            self.stats.hook_errors += 1
            log.exception("the receipt hook failed for %s", item.receipt.message_id)
        finally:
            self._hooks_free.release()
            self._notify()
        self._finish([item.id])  # not reached when cancelled: the next start runs it again

    def _finish(self, ids: Sequence[int]) -> None:
        self._finished.extend(ids)
        self._some_finished.set()
        if len(self._finished) >= _MARK_BATCH:
            self._many_finished.set()

    async def _mark_processed(self) -> None:
        """Mark finished receipts processed in batches: every 100 ms, or at once when many."""
        while True:
            await self._some_finished.wait()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_MARK_EVERY_S):
                    await self._many_finished.wait()
            await self._mark_finished()

    async def _mark_finished(self) -> None:
        while self._finished:
            ids = self._finished[:_MARK_BATCH]
            del self._finished[:_MARK_BATCH]
            try:
                await self._run(self._db.mark_processed, ids)
            except Exception as exc:
                log.error(
                    "could not mark %d receipts processed (their hooks run again at the next "
                    "start): %s",
                    len(ids),
                    exc,
                    exc_info=not isinstance(exc, JournalError),
                )
            else:
                self.stats.processed += len(ids)
            self._notify()
        self._some_finished.clear()
        self._many_finished.clear()

    @property
    def _db(self) -> ReceiptJournal:
        assert self._journal is not None, "start() first"
        return self._journal

    def _run(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Awaitable[T]:
        return asyncio.get_running_loop().run_in_executor(
            self._executor, lambda: function(*args, **kwargs)
        )
