"""The signals that stop sms-blaster, and which of them this process takes.

SIGINT (Ctrl-C), SIGTERM (a service manager, `kill`) and SIGHUP (a dropped ssh session, a closed
terminal) all stop a run the same way: the first drains, a second aborts. A signal that was
ignored when sms-blaster started stays ignored: `nohup sms-blaster send ...` must go on after a
hang-up, as its user asked.
"""

from __future__ import annotations

import signal
import types
from collections.abc import Iterable

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def taken() -> list[signal.Signals]:
    """The stop signals this process answers: those not ignored (nohup ignores SIGHUP)."""
    return [sig for sig in STOP_SIGNALS if signal.getsignal(sig) is not signal.SIG_IGN]


def interrupt_until_handled() -> None:
    """Until a command installs its own handlers, SIGTERM and SIGHUP stop the process as Ctrl-C
    does at that moment (exit 130, nothing was sent yet) rather than by death.

    As Ctrl-C does *at that moment*: before the event loop runs, a KeyboardInterrupt; once
    `asyncio.Runner` runs the command, its own SIGINT handler, which cancels the command's task
    so that what it had opened (the journal, the preparing process, connections) is closed on
    the way out. A KeyboardInterrupt raised at any line inside the loop could leave a task half
    made and end the process with exit 1 and the loop's complaints."""
    for sig in taken():
        if sig is not signal.SIGINT and signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _as_ctrl_c)


def _as_ctrl_c(signum: int, frame: types.FrameType | None) -> None:
    """Whatever Ctrl-C's handler is now (Python's, or `asyncio.Runner`'s while it runs)."""
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:  # SIGINT ignored (a background job) or left to the system: as Python's own would
        raise KeyboardInterrupt


def ignore(signals: Iterable[signal.Signals]) -> None:
    """Ignore `signals` from now on, however the loop that handled them is closed later.

    Set directly, not through the loop's remove_signal_handler: that resets the default action
    first, and a SIGTERM or SIGHUP landing in between would kill the process. uvloop leaves the
    disposition alone when it closes; asyncio's own loop resets it, so `_run` sets it again.
    """
    for sig in signals:
        signal.signal(sig, signal.SIG_IGN)
        _ignored.add(sig)


def keep_ignored() -> None:
    """Ignore again what `ignore` ignored, once the loop is closed (asyncio's resets them)."""
    for sig in _ignored:
        signal.signal(sig, signal.SIG_IGN)


_ignored: set[signal.Signals] = set()
