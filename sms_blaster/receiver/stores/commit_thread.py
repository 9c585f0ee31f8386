"""Group commits by a thread of their own: each group is what came while the previous one was
committed, so a commit starts the moment the disk is free; a thread woken from sleep by a first
callback lets a few more join it first, when they come fast enough to be worth the wait.

    handler ──submit──▶ waiting (a list and a lock) ──▶ thread: write a group (fsync) ─┐
                          ▲ woken only when asleep                                    │
                          └──── next group: what came meanwhile ◀─────────────────────┤
                                        event loop ◀── one call a group: answer them ◀┘

The loop wakes the thread only when it sleeps (a busy thread finds the newcomers itself when its
commit ends), and the thread wakes the loop once a group, whatever the group holds; a writer task
fed by an asyncio queue, awaiting an executor, cost the loop a task step, a timer and a future
for every commit.

A commit costs its fsync, its wake-ups and its trips through the GIL whatever it holds: about
130 µs of CPU on a small VM, so at 1,000 callbacks/s a thread that commits each callback on its
own (a fast disk ends each commit before the next callback comes) spends more than all the rest
of the receiver. So a thread woken from sleep waits up to `gather_s` first, as long as the
callbacks of late come fast enough to bring `group` of them together in that time; a callback that
waited for a commit under way does not wait again (the thread was not asleep), and sparse
callbacks (fewer than one expected within `gather_s`) are committed at once.
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

_RATE_WEIGHT = 0.25  # of each group in the recent rate (see CommitThread._count)


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
        gather_s: float = 0.0,
        group: int = 3,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
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
        # The gather (in the thread only): how long at most, for how many, and the rate the
        # callbacks came at of late (an average over groups, per second), from when and how
        # many each group took.
        self._gather_s = gather_s
        self._group = group
        self._clock = clock
        self._sleep = sleep
        self._rate = 0.0
        self._last_take_s: float | None = None
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
            # At the end of this turn of the loop, not now: woken while the loop holds the GIL, the
            # thread would find it taken, sleep again and be woken a second time for it.
            self._loop.call_soon(self._wakes.put, True)
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
            wait_s = self._gather_wait_s()
            if wait_s > 0:
                self._sleep(wait_s)
            group = self._take()
            while group:
                started = time.perf_counter()
                outcome: Outcome
                try:
                    outcome = self._write([receipt for receipt, _ in group])
                except Exception as exc:  # settled on the loop: 503, and the thread goes on
                    outcome = exc
                elapsed_s = time.perf_counter() - started
                # The next group is taken before this one is answered, so that the loop, woken
                # by the answer, finds the GIL free: the thread holds it no longer than the call,
                # then sleeps (nothing waits) or writes (SQLite lets the GIL go).
                answered, group = group, self._take()
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                    assert self._loop is not None
                    self._loop.call_soon_threadsafe(self._answer, answered, outcome, elapsed_s)

    def _gather_wait_s(self) -> float:
        """How long a thread just woken by a first callback waits for others to join it: long
        enough for `group` at the recent rate, `gather_s` at most; none when fewer than one more
        is expected in `gather_s`, or when the receiver stops."""
        rate = self._rate
        if self.closing or rate * self._gather_s < 1.0:
            return 0.0
        return min(self._gather_s, (self._group - 1) / rate)

    def _take(self) -> list[Waiting]:
        """The next group (empty: the thread goes to sleep, to be woken by a submit)."""
        with self._lock:
            group = self._waiting[: self._most]
            del self._waiting[: self._most]
            self._asleep = not group
            self._taken += len(group)
        if group:
            self._count(len(group))
            self._tell_loop()
        return group

    def _count(self, taken: int) -> None:
        """Fold a group into the recent rate: what it took over the time since the last group
        (a group holds what came meanwhile). A quarter of the weight each, so a burst or a lull
        moves the rate within a few groups."""
        now_s = self._clock()
        if self._last_take_s is not None and now_s > self._last_take_s:
            rate = taken / (now_s - self._last_take_s)
            self._rate += (rate - self._rate) * _RATE_WEIGHT
        self._last_take_s = now_s

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
