"""Ending a run's background tasks when a cancellation is lost."""

from __future__ import annotations

import asyncio
import contextlib

from sms_blaster.background import cancel

CLOSE_S = 10  # a bound for a hang, not a measurement


async def test_a_task_whose_cancellation_is_lost_is_cancelled_again() -> None:
    """A loop that swallows one cancellation (as a redis-py call does on Python 3.11, CPython
    issue 86296) still ends: it is cancelled again."""
    entered = asyncio.Event()
    turns = 0

    async def loop() -> None:
        nonlocal turns
        while True:
            turns += 1
            entered.set()
            with contextlib.suppress(asyncio.CancelledError):
                if turns == 1:
                    await asyncio.Event().wait()  # the cancellation is lost here
            await asyncio.sleep(3600)

    task = asyncio.create_task(loop())
    await entered.wait()
    # Waited for without a timeout's cancellation, which would end the task itself.
    cancelling = asyncio.create_task(cancel(task))
    await asyncio.wait((cancelling,), timeout=CLOSE_S)
    try:
        assert cancelling.done(), "the task ran on after its cancellation was lost"
        assert task.cancelled()
        assert turns == 1
    finally:
        task.cancel()
        cancelling.cancel()
        await asyncio.gather(task, cancelling, return_exceptions=True)
