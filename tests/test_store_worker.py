"""The receiver store's worker thread: blocking calls run in order, outcomes back on the loop."""

from __future__ import annotations

import asyncio
import threading

import pytest

from sms_blaster.receiver.stores.worker import WorkerThread


async def test_calls_run_in_the_order_queued_in_one_thread_other_than_the_loops() -> None:
    """Each call sees the ones queued before it done, and none runs on the loop's thread."""
    worker = WorkerThread("test-worker")
    seen: list[tuple[int, str]] = []

    def call(n: int) -> int:
        seen.append((n, threading.current_thread().name))
        return n * 10

    try:
        results = await asyncio.gather(*(worker.run(call, n) for n in range(50)))
    finally:
        worker.stop()
    assert results == [n * 10 for n in range(50)]
    assert seen == [(n, "test-worker") for n in range(50)]


async def test_a_call_that_raises_hands_its_exception_to_the_awaiting_task() -> None:
    """The exception comes back as raised; the thread goes on with the next call."""
    worker = WorkerThread("test-worker")

    def broken() -> None:
        raise ValueError("disk on fire")

    try:
        with pytest.raises(ValueError, match="disk on fire"):
            await worker.run(broken)
        after = await worker.run(len, "abc")
    finally:
        worker.stop()
    assert after == 3


async def test_a_cancelled_wait_does_not_stop_the_call_or_the_thread() -> None:
    """A caller that stops waiting leaves the call to finish; later calls still answer."""
    worker = WorkerThread("test-worker")
    release = threading.Event()
    ran = threading.Event()

    def slow() -> None:
        release.wait(5)
        ran.set()

    try:
        waiting = worker.run(slow)
        waiting.cancel()
        release.set()
        answer = await worker.run(str, 7)
    finally:
        worker.stop()
    assert ran.is_set()
    assert answer == "7"
