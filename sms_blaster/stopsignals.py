"""The signals that stop sms-blaster, and which of them this process takes.

SIGINT (Ctrl-C), SIGTERM (a service manager, `kill`) and SIGHUP (a dropped ssh session, a closed
terminal) all stop a run the same way: the first drains, a second aborts. A signal that was
ignored when sms-blaster started stays ignored: `nohup sms-blaster send ...` must go on after a
hang-up, as its user asked.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def taken() -> list[signal.Signals]:
    """The stop signals this process answers: those not ignored (nohup ignores SIGHUP)."""
    return [sig for sig in STOP_SIGNALS if signal.getsignal(sig) is not signal.SIG_IGN]


def interrupt_until_handled() -> None:
    """Until a command installs its own handlers, SIGTERM and SIGHUP end the process as Ctrl-C
    does (KeyboardInterrupt: exit 130, nothing was sent yet) rather than by death."""
    for sig in taken():
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, signal.default_int_handler)


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
