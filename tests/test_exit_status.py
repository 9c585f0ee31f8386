"""The exit code of what ended a run, as the process exits with it."""

from __future__ import annotations

import asyncio

from sms_blaster.errors import FatalProviderError, Interrupted, JournalError
from sms_blaster.exit_status import code_of_exception


def test_an_error_of_sms_blaster_gives_its_own_code() -> None:
    """A fatal answer is 3, a journal that cannot be used 4, an interrupted run 130."""
    codes = [code_of_exception(exc) for exc in (FatalProviderError("x"), JournalError("x"),
                                                Interrupted("x"))]  # fmt: skip
    assert codes == [3, 4, 130]


def test_ctrl_c_and_a_cancelled_run_give_130() -> None:
    """KeyboardInterrupt and the loop's cancel of the run on Ctrl-C end the process with 130."""
    assert [code_of_exception(KeyboardInterrupt()), code_of_exception(asyncio.CancelledError())] \
        == [130, 130]  # fmt: skip


def test_a_crash_gives_1() -> None:
    """An exception sms-blaster does not know ends the process with Python's 1."""
    assert code_of_exception(RuntimeError("bug")) == 1
