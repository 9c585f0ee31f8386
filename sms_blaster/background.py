"""Ending a run's background tasks (lease renewal, receipts, timeline, opt-out follow), even when
their cancellation is lost.

redis-py sends a command through asyncio.wait_for when the connection has a socket timeout, and on
Python 3.11 wait_for returns normally when it is cancelled just as the command is written (CPython
issue 86296): a task cancelled there carries on as if never asked, and a loop that only a
cancellation ends runs for ever, and whoever waits for it. So the task is cancelled again until
it ends; a loop of the worker's also checks a stop flag of its own where it has one.
"""

from __future__ import annotations

import asyncio
from typing import Any

_AGAIN_S = 0.1  # how long a cancelled task has to end before it is cancelled again


async def cancel(task: asyncio.Future[Any]) -> None:
    """Cancel `task` and return once it ended, cancelling it again while it runs on."""
    while not task.done():
        task.cancel()
        await asyncio.wait((task,), timeout=_AGAIN_S)
    if not task.cancelled():
        task.result()  # the error it ended with, if any, as awaiting it would raise
