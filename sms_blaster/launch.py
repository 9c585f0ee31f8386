"""The console command's first lines: the stop signals are taken before the rest is imported.

Importing the command line (click, aiohttp, phonenumbers and the package) takes most of a start-up's
100-200 ms. Until a command installs handlers of its own, a stop signal in that time would kill
the process (SIGTERM, SIGHUP: exit 143 or 129, no word said) or print a KeyboardInterrupt traceback
(Ctrl-C). Here they get what the README promises of a signal before anything was sent: one
`Error:` line and exit 130. Only modules the interpreter has loaded already at start-up are
imported before the handlers are set.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import NoReturn

from sms_blaster import stopsignals


def main() -> None:
    """`sms-blaster`: take the stop signals, then import and run the command line."""
    stopsignals.interrupt_until_handled()
    try:
        from sms_blaster.cli import main as run_command_line
    except KeyboardInterrupt:
        interrupted_while_starting()
    try:
        run_command_line()
    except KeyboardInterrupt:  # in its first lines, before its own catch of it
        interrupted_while_starting()


def interrupted_while_starting() -> NoReturn:
    """One `Error:` line (in the `--log-format` asked for), exit 130: a stop signal came before
    the command took the signals itself (here, or in `cli.main` once it runs).

    `receive` excepted: a stop signal is how a receiver ends, and it exits 0 whenever it comes
    (a service manager stopping a receiver that was still starting did nothing wrong); nothing
    was received, and the line says so."""
    for sig in stopsignals.taken():
        signal.signal(sig, signal.SIG_IGN)  # the line below is said in full, once
    receiver = command_of(sys.argv[1:]) == "receive"
    if sys.stderr is not None:  # None when the caller closed it (`2>&-`)
        from sms_blaster import logs

        logs.use(logs.format_from(sys.argv[1:], os.environ), sys.stderr)
        with contextlib.suppress(OSError):
            if receiver:
                message = "sms-blaster: receiver stopped while starting: nothing was received"
                logs.say(sys.stderr, message, logs.Level.INFO, exit_code=0)
            else:
                message = "Error: interrupted while starting: nothing was done"
                logs.say(sys.stderr, message, logs.Level.ERROR, exit_code=130)
    # Not sys.exit: CPython remembers a KeyboardInterrupt that left an exec() of a string (the
    # methods dataclasses and namedtuple make as a module loads) and, at the end of its exit,
    # kills the process with SIGINT, however the interrupt was caught since. Nothing was done
    # that the interpreter's exit would finish (what the command had opened was closed as the
    # interrupt came through); only the streams' buffers are left to write.
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()
    os._exit(0 if receiver else 130)


def command_of(argv: list[str]) -> str | None:
    """The command a command line names (`receive`, `send`...): its first word that is no option
    nor the value of `--log-format`, the one option taken before the command. Read without click,
    which may not be loaded yet."""
    given = iter(argv)
    for arg in given:
        if arg == "--log-format":
            next(given, None)
        elif not arg.startswith("-"):
            return arg
    return None
