"""Group commits by a thread of their own: each group is what came while the previous one was
committed, so a commit starts the moment the disk is free, and no timer holds a callback.

    handler ──submit──▶ waiting (a list and a lock) ──▶ thread: write a group (fsync) ─┐
                          ▲ woken only when asleep                                    │
                          └──── next group: what came meanwhile ◀─────────────────────┤
                                        event loop ◀── one call a group: answer them ◀┘

The loop wakes the thread only when it sleeps (a busy thread finds the newcomers itself when its
commit ends), and the thread wakes the loop once a group, whatever the group holds; a writer task
fed by an asyncio queue, awaiting an executor, cost the loop a task step, a timer and a future
for every commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence

from sms_blaster.models import Receipt, StoredReceipt
from sms_blaster.receiver.stores.base import StoreBusy, StoreStats, Waiting, refuse

log = logging.getLogger("sms_blaster.receiver")

# Blocking, in the thread: store a group durably; None for each receipt stored before.
Write = Callable[[list[Receipt]], Sequence[StoredReceipt | None]]
# What became of a group: stored (None for each duplicate), or the error that stopped it.
Outcome = Sequence[StoredReceipt | None] | Exception
# On the event loop: a group's outcome, and how long its commit took.
Settle = Callable[[list[Waiting], Outcome, float], None]


class CommitThread:
    """An intake (see base.Intake) whose groups a thread writes with `write`; `settle` answers
    each group on the event loop."""

    def __init__(
        self,
        size: int,
        stats: StoreStats,
        write: Write,
        settle: Settle,
        *,
        most: int,
        name: str,
        on_change: Callable[[], None] = lambda: None,
        watched: Callable[[], bool] = lambda: False,
    ) -> None:
        self._size = size
        self._stats = stats
        self._write = write
        self._settle = settle
        self._most = most
        self._on_change = on_change  # called on the loop only
        self._watched = watched  # whether anything waits for on_change (a test, a stop)
        self._lock = threading.Lock()  # guards _waiting and _asleep, shared with the thread
        self._waiting: list[Waiting] = []
        self._asleep = True  # the thread waits for a wake-up, not for the disk
        self._wakes: queue.SimpleQueue[bool] = queue.SimpleQueue()  # True: look; False: end
        self._taken = 0  # callbacks the thread took (written by the thread only)
        self._answered = 0  # callbacks settled (written by the loop only)
        self._progress = asyncio.Event()  # set at each group settled
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self.closing = False

    def __len__(self) -> int:
        return len(self._waiting)

    @property
    def committing(self) -> int:
        return self._taken - self._answered

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread.start()

    def submit(self, receipt: Receipt) -> asyncio.Future[bool]:
        if self.closing:
            raise StoreBusy("the receiver is stopping")
        if len(self._waiting) >= self._size:
            self._stats.busy += 1
            raise StoreBusy("the receipt queue is full")
        assert self._loop is not None, "start() first"
        done: asyncio.Future[bool] = self._loop.create_future()
        with self._lock:
            self._waiting.append((receipt, done))
            wake, self._asleep = self._asleep, False
        if wake:
            self._wakes.put(True)
        self._on_change()
        return done

    async def drain(self, deadline: float, commit_s: float = 10.0) -> int:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await self._idle()
        with self._lock:
            left, self._waiting = self._waiting, []
        for _, done in left:
            refuse(done, "the receiver stopped")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(commit_s):
                await self._idle()
        return len(left)

    async def stop(self) -> None:
        """Blocking for as long as a commit under way takes (none, once drained)."""
        if self._thread.is_alive():
            self._wakes.put(False)
            self._thread.join()

    async def _idle(self) -> None:
        while self._waiting or self.committing:
            self._progress.clear()
            await self._progress.wait()

    # --- in the thread ------------------------------------------------------------------------

    def _work(self) -> None:
        while self._wakes.get():
            while group := self._take():
                started = time.perf_counter()
                outcome: Outcome
                try:
                    outcome = self._write([receipt for receipt, _ in group])
                except Exception as exc:  # settled on the loop: 503, and the thread goes on
                    outcome = exc
                elapsed_s = time.perf_counter() - started
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                    assert self._loop is not None
                    self._loop.call_soon_threadsafe(self._answer, group, outcome, elapsed_s)

    def _take(self) -> list[Waiting]:
        """The next group (empty: the thread goes to sleep, to be woken by a submit)."""
        with self._lock:
            group = self._waiting[: self._most]
            del self._waiting[: self._most]
            self._asleep = not group
            self._taken += len(group)
        if group:
            self._tell_loop()
        return group

    def _tell_loop(self) -> None:
        """Let the loop see a group was taken, if anything there waits for a change; otherwise
        the loop is not woken for it."""
        if self._watched():
            with contextlib.suppress(RuntimeError):
                assert self._loop is not None
                self._loop.call_soon_threadsafe(self._on_change)

    # --- back on the loop ---------------------------------------------------------------------

    def _answer(self, group: list[Waiting], outcome: Outcome, elapsed_s: float) -> None:
        self._answered += len(group)
        try:
            self._settle(group, outcome, elapsed_s)
        except Exception:
            # A bug after the commit: the intake must outlive it. Receipts it stored are
            # processed later; those not answered yet get 503 and come again.
            log.exception("the receipt writer failed after a commit")
            for _, done in group:
                refuse(done, "the store failed")
        self._progress.set()
        self._on_change()
