"""A thread of the store's own that runs blocking calls in order for the event loop.

What `loop.run_in_executor` does with a pool of one, for less: a call is queued on a SimpleQueue
(no lock, no pool bookkeeping, no concurrent future to chain), and its outcome wakes the loop
once, with `call_soon_threadsafe`. A commit that answers a batch of callbacks costs the loop one
wake-up, whatever the batch holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]


def settle(future: asyncio.Future[T], result: T, error: BaseException | None) -> None:
    """Give `future` the outcome of a call made in another thread, unless it is done already."""
    if future.done():  # cancelled: nobody waits for it any more
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class WorkerThread:
    """Runs `function(*args)` calls one after another in one thread, oldest first."""

    __slots__ = ("_jobs", "_thread")

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def run(self, function: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """A future of `function(*args)`, called in the thread after those queued before."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((loop, future, function, args))
        return future

    def stop(self) -> None:
        """Blocking: run what is queued, then end the thread."""
        self._jobs.put(None)
        self._thread.join()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            loop, future, function, args = job
            result: Any = None
            error: BaseException | None = None
            try:
                result = function(*args)
            except BaseException as exc:  # handed to the awaiting task, as an executor would
                error = exc
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(settle, future, result, error)
