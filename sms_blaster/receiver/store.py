"""The receiver's durable queue: group commits that acknowledgements wait for, processing after.

    handler ──submit──▶ bounded queue ──▶ writer: one transaction per batch (fsync) ──▶ ack
                                                     │
                                                     ▼
              processing: correlate with the campaign rows, emit (from a thread), user hook

A callback is acknowledged once its batch is on disk, never later: the batch forms while the
previous one commits, so at low load a receipt waits for one commit and at high load for at most
two, whatever the processing costs. A full queue refuses at once (the handler answers 503 and the
provider retries), so memory stays bounded and nothing acknowledged is ever lost.

Processing is detached. It may lag or be cut short by a stop: what was stored but not processed
is picked up at the next start, so the user hook runs at least once per stored receipt.
"""

from __future__ import annotations

import asyncio
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
_SWEEP_S = 2.0  # how often receipts waiting for their row are tried again


class StoreBusy(Exception):
    """The queue is full or the store cannot write: the callback must be retried later."""


@dataclass(slots=True)
class StoreStats:
    stored: int = 0
    duplicates: int = 0
    busy: int = 0
    failed_commits: int = 0
    commits: int = 0
    processed: int = 0
    matched: int = 0
    hook_errors: int = 0


_Item = tuple[Receipt, "asyncio.Future[bool]"]


def _refuse(done: asyncio.Future[bool], reason: str) -> None:
    if not done.done():
        done.set_exception(StoreBusy(reason))


def _retrieve(done: asyncio.Future[bool]) -> None:
    if not done.cancelled():
        done.exception()


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
    ) -> None:
        self._path = path
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(queue_size)
        self._hook = hook
        self._hooks_free = asyncio.Semaphore(hook_concurrency)
        self._hook_tasks: set[asyncio.Task[None]] = set()
        self._emit = emit
        self._observe_commit = observe_commit
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="sms-blaster-store")
        self._journal: ReceiptJournal | None = None
        self._to_process: asyncio.Queue[list[StoredReceipt]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._processor: asyncio.Task[None] | None = None
        self._closing = False
        self._changed = asyncio.Event()
        self.committing = 0  # receipts in the commit under way
        self.stats = StoreStats()

    @property
    def depth(self) -> int:
        return self._queue.qsize()

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
        self._writer = asyncio.create_task(self._write_batches(), name="receipt-writer")
        self._processor = asyncio.create_task(self._process_batches(), name="receipt-processor")

    def submit(self, receipt: Receipt) -> asyncio.Future[bool]:
        """A future that is True once the receipt is stored, False when it was a duplicate.

        Raises StoreBusy when the queue is full; the future fails with StoreBusy when the commit
        does.
        """
        if self._closing:
            raise StoreBusy("the receiver is stopping")
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((receipt, done))
        except asyncio.QueueFull:
            self.stats.busy += 1
            raise StoreBusy("the receipt queue is full") from None
        # A handler whose client hung up no longer awaits it: its outcome is not worth a warning.
        done.add_done_callback(_retrieve)
        self._notify()
        return done

    async def close(self, grace_s: float = 5.0) -> None:
        """Store what is queued and let processing finish, within `grace_s`, then stop.

        Callbacks the store could not take by then fail with StoreBusy (their handlers answer 503).
        """
        self._closing = True
        deadline = asyncio.get_running_loop().time() + grace_s
        if self._writer is not None:
            try:
                async with asyncio.timeout_at(deadline):
                    await self._queue.join()
            except TimeoutError:
                log.error(
                    "the store could not take %d queued callbacks within %g s: they get 503",
                    self._queue.qsize(),
                    grace_s,
                )
                while not self._queue.empty():
                    _, done = self._queue.get_nowait()
                    _refuse(done, "the receiver stopped")
                    self._queue.task_done()
                # The commit under way ends within SQLite's busy timeout, and its answer is true.
                await self._queue.join()
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        if self._processor is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await self._to_process.join()
                    await asyncio.gather(*self._hook_tasks, return_exceptions=True)
            self._processor.cancel()
            await asyncio.gather(self._processor, return_exceptions=True)
        for task in self._hook_tasks:
            task.cancel()
        await asyncio.gather(*self._hook_tasks, return_exceptions=True)
        if self._journal is not None:
            await self._run(self._journal.close)
        self._executor.shutdown(wait=True)

    async def _write_batches(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < _MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            self.committing = len(batch)
            self._notify()
            try:
                await self._commit(batch)
            finally:
                self.committing = 0
                for _ in batch:
                    self._queue.task_done()
                self._notify()

    async def _commit(self, batch: list[_Item]) -> None:
        started = time.perf_counter()
        try:
            stored = await self._run(
                self._db.insert, [receipt for receipt, _ in batch], time.time()
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
            self._to_process.put_nowait(new)

    async def _process_batches(self) -> None:
        await self._guarded(self._process_leftovers())
        while True:
            try:
                async with asyncio.timeout(_SWEEP_S):
                    batch = await self._to_process.get()
            except TimeoutError:
                await self._guarded(self._retry_unapplied())
                continue
            try:
                await self._guarded(self._process(batch))
            finally:
                self._to_process.task_done()

    async def _guarded(self, work: Awaitable[None]) -> None:
        try:
            await work
        except JournalError as exc:
            # Stored and acknowledged already: the next start processes what is left.
            log.error("could not process receipts (kept for the next start): %s", exc)

    async def _process_leftovers(self) -> None:
        """Receipts stored by an earlier receiver that stopped before processing them."""
        while True:
            batch = await self._run(self._db.to_process, _MAX_BATCH)
            if not batch:
                return
            await self._process(batch)

    async def _retry_unapplied(self) -> None:
        batch = await self._run(self._db.unapplied, _MAX_BATCH)
        if batch:
            self.stats.matched += await self._run(self._db.apply, batch, time.time())

    async def _process(self, batch: Sequence[StoredReceipt]) -> None:
        if self._emit is not None:
            await _in_daemon_thread(self._emit, batch)
        for item in batch:
            if self._hook is not None:
                await self._hooks_free.acquire()
                task = asyncio.create_task(self._run_hook(self._hook, item))
                self._hook_tasks.add(task)
                task.add_done_callback(self._hook_tasks.discard)
        self.stats.matched += await self._run(self._db.apply, batch, time.time())
        self.stats.processed += len(batch)
        self._notify()

    async def _run_hook(self, hook: Hook, item: StoredReceipt) -> None:
        try:
            await hook(item)
        except Exception:
            self.stats.hook_errors += 1
            log.exception("the receipt hook failed for %s", item.receipt.message_id)
        finally:
            self._hooks_free.release()
            self._notify()

    @property
    def _db(self) -> ReceiptJournal:
        assert self._journal is not None, "start() first"
        return self._journal

    def _run(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Awaitable[T]:
        return asyncio.get_running_loop().run_in_executor(
            self._executor, lambda: function(*args, **kwargs)
        )
