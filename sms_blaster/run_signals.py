"""A run under the stop signals: the first drains, a second aborts, and once the run is over
they are ignored so its last writes are not cut off."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TextIO

from sms_blaster import logs, stopsignals
from sms_blaster.engine import RunControl, StopReason
from sms_blaster.output import Progress


async def run_with_signals(
    control: RunControl,
    work: Coroutine[Any, Any, None],
    progress: Progress,
    stderr: TextIO,
) -> bool:
    """Run `work` (the engine's, stopped by `control`); the first SIGINT/SIGTERM/SIGHUP drains,
    a second aborts. True when aborted."""
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(work)
    signals_seen = 0

    def on_signal() -> None:
        nonlocal signals_seen
        signals_seen += 1
        control.signal()
        if signals_seen == 1:
            progress.clear()
            logs.say(
                stderr,
                "sms-blaster: stopping: no new requests; waiting for those in flight "
                "(signal again to abort)",
                logs.Level.WARNING,
            )
            control.stop(StopReason.INTERRUPTED)
        else:
            task.cancel()

    with signal_handlers(loop, on_signal):
        ticker = asyncio.create_task(progress.run())
        try:
            await task
        except asyncio.CancelledError:
            if signals_seen < 2:
                raise
            return True
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
    return False


@contextlib.contextmanager
def signal_handlers(loop: asyncio.AbstractEventLoop, handler: Callable[[], None]) -> Iterator[None]:
    """`handler` for the stop signals while the block runs; after it they are ignored for the
    rest of the process: the run is winding down, and its last journal commit, record flush and
    exit code must not be cut off by a signal's default action (death)."""
    installed = []
    for sig in stopsignals.taken():
        try:
            loop.add_signal_handler(sig, handler)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread (e.g. some test runners): signals stay as they were
    try:
        yield
    finally:
        # The run is over; what is left (the journal's last commit, the last records, the
        # summary, the exit code) is short and must finish: a signal now is ignored.
        stopsignals.ignore(installed)
