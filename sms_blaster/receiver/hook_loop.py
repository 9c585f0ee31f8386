"""The receipt hook on an event loop of its own, in a thread of its own.

A hook is the user's code, and async code blocks more often than it should: a `time.sleep`, a
`requests.post`, a synchronous database driver inside an `async def`. On the loop that answers
the providers, each such call froze every acknowledgement and the stop behind it (a hook sleeping
5 s held every callback 5 s, and a SIGTERM waited for it). Here the hooks run on a second loop,
in a daemon thread: a hook that blocks holds up the other hooks only, never an acknowledgement,
and the receiver's loop still hears its signals.

The store does not know: it awaits each hook as before (`apart` gives it a coroutine of its own
loop that waits for the hook's outcome), so its bound on hooks at once, its processed marks and
its stop are unchanged. A hook cancelled at the stop is cancelled on its own loop as soon as that
loop runs again; its receipt stays unprocessed and is handed to the hook at the next start, as
before. The stop waits for the hook loop a bounded time, then leaves a hook that still blocks to
the end of the process (a daemon thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading

from sms_blaster.models import StoredReceipt
from sms_blaster.receiver.stores.base import Hook
from sms_blaster.receiver.stores.worker import settle

log = logging.getLogger("sms_blaster.receiver")


class HookLoop:
    """An event loop in a daemon thread that runs hooks for the receiver's loop."""

    __slots__ = ("_ended", "_loop", "_thread")

    def __init__(self, name: str = "sms-blaster-hooks") -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._ended: asyncio.Future[None] | None = None  # on the receiver's loop

    def start(self) -> None:
        """Start the thread; from the receiver's loop, which `stop` is then awaited on."""
        self._ended = asyncio.get_running_loop().create_future()
        self._thread.start()

    def apart(self, hook: Hook) -> Hook:
        """`hook` as the store awaits it, run on this loop: what it raises is raised to the
        store (SystemExit too, as the store counts it a failed hook), and cancelling the store's
        await cancels the hook."""
        loop = self._loop

        async def on_hook_loop(item: StoredReceipt) -> None:
            outcome = asyncio.run_coroutine_threadsafe(_outcome(hook, item), loop)
            error = await asyncio.wrap_future(outcome)
            if error is not None:
                raise error

        return on_hook_loop

    async def stop(self, grace_s: float) -> bool:
        """Cancel the hooks still running and end the loop, waiting `grace_s` at most; False
        when a hook blocked it that long (it is left to the end of the process)."""
        if self._ended is None:
            return True
        with contextlib.suppress(RuntimeError):  # closed already
            self._loop.call_soon_threadsafe(_begin_stop, self._loop)
        try:
            async with asyncio.timeout(grace_s):
                await asyncio.shield(self._ended)
        except TimeoutError:
            return False
        return True

    def _run(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
            ended = self._ended
            if ended is not None:
                with contextlib.suppress(RuntimeError):  # the receiver's loop is closed
                    ended.get_loop().call_soon_threadsafe(settle, ended, None, None)


async def _outcome(hook: Hook, item: StoredReceipt) -> BaseException | None:
    """Run the hook; what it raised, returned rather than raised: a SystemExit or
    KeyboardInterrupt raised out of a task would stop this loop and every hook after it."""
    try:
        await hook(item)
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        return exc
    return None


def _begin_stop(loop: asyncio.AbstractEventLoop) -> None:
    loop.create_task(_cancel_all_and_stop())


async def _cancel_all_and_stop() -> None:
    """On the hook loop: cancel every other task (hooks cut short by the stop), let them end,
    stop the loop."""
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    asyncio.get_running_loop().stop()
