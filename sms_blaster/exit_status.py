"""The exit code of a finished run, or the exception that says why it stopped."""

from __future__ import annotations

import asyncio
import io
from typing import TextIO

from sms_blaster import logs
from sms_blaster.engine import RunControl, StopReason
from sms_blaster.errors import (
    FatalProviderError,
    InputUnreadable,
    Interrupted,
    JournalError,
    OutputError,
    SmsBlasterError,
)

# What a user does about each stop the provider caused (exit 3).
_PROVIDER_STOP_FIX = {
    StopReason.FATAL: "fix the cause and re-run the same command to go on",
    StopReason.UNREACHABLE: (
        "check --base-url and the network, then re-run the same command to go on"
    ),
    StopReason.THROTTLED: (
        "re-run the same command later to go on (a higher --unreachable-timeout waits longer)"
    ),
}


def exit_code(
    control: RunControl,
    aborted: bool,
    all_good: bool,
    last_line: int | None,
    stderr: TextIO,
    *,
    hands_back: bool = False,
) -> int:
    """The exit code of a finished run, or the exception that says why it stopped.

    `last_line`: the last input row read, for a run that reads an input (None for a worker).
    `hands_back`: a worker's, whose claimed messages not sent go back to the campaign's queue
    (no record here: the worker that sends them prints theirs)."""
    reason, detail = control.reason, control.detail
    unsent = (
        "claimed messages not sent are handed back to the queue, for the campaign's workers"
        if hands_back
        else "rows not sent are recorded 'stopped'"
    )
    if aborted:
        unread = "" if last_line is None else f"; rows after line {last_line} were not read"
        raise Interrupted(
            f"interrupted: aborted; requests in flight are recorded 'unknown'{unread}"
        )
    if reason is StopReason.INTERRUPTED:
        raise Interrupted(f"interrupted: stopped after the requests in flight finished; {unsent}")
    if reason is StopReason.OUTPUT:
        raise OutputError(
            f"cannot write the records ({detail}); no new request was sent after that; the "
            "journal keeps the rows finished since without their records, and the next run "
            "writes them (--only-new too; without a journal they are lost); make the output "
            "writable and re-run the same command to go on"
        )
    if reason is StopReason.INPUT:
        raise InputUnreadable(
            f"{detail}; no new request was sent after that; the requests in flight finished and "
            "rows not sent are recorded 'stopped'; re-run the same command to go on"
        )
    if reason is StopReason.JOURNAL:
        raise JournalError(f"{detail}; no new request was sent after that")
    if reason in _PROVIDER_STOP_FIX:
        raise FatalProviderError(
            f"the run was stopped: {detail}; {unsent}; {_PROVIDER_STOP_FIX[reason]}"
        )
    if reason is StopReason.DEADLINE:
        logs.say(
            stderr,
            f"sms-blaster: {detail} reached: "
            + (f"{unsent}" if hands_back else f"{unsent} and stay pending")
            + "; re-run the same command to go on",
            logs.Level.WARNING,
            exit_code=1,
        )
        return 1
    return 0 if all_good else 1


def code_of(control: RunControl, aborted: bool, all_good: bool) -> int:
    """The exit code `exit_code` gives or its exception carries, without a word on stderr."""
    try:
        return exit_code(control, aborted, all_good, None, io.StringIO())
    except SmsBlasterError as exc:
        return exc.exit_code


def code_of_exception(exc: BaseException) -> int:
    """The exit code the process ends with when `exc` ends the run: an error's own code, 130
    for Ctrl-C (the event loop cancels the run, then raises KeyboardInterrupt, which the entry
    point turns into 130), 1 for a crash (Python's own code for an uncaught exception)."""
    if isinstance(exc, SmsBlasterError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt | asyncio.CancelledError):
        return 130
    return 1
