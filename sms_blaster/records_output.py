"""Where a run's records go: --output (new, or appended to when a campaign goes on) or stdout,
what a write error does to the run, and a flush shared by the rows that wait for one."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import stat
from collections.abc import Callable, Iterator
from typing import BinaryIO, Literal, TextIO

from sms_blaster import logs
from sms_blaster.engine import RunControl, StopReason
from sms_blaster.errors import UsageError

OutputMode = Literal["wb", "ab"]  # a new file of records, or more records after an earlier run's


def output_mode(path: str | None, resuming: bool, force: bool) -> OutputMode:
    """How to open --output: a resumed campaign appends to its earlier records; a new one
    writes a new file, and refuses to overwrite a file with something in it unless --force."""
    if path is None or resuming:
        return "ab"
    if not force and os.path.isfile(path) and os.path.getsize(path) > 0:
        raise UsageError(
            f"--output {path}: the file exists and is not empty (records of an earlier run?); "
            "give another path, or --force to overwrite it"
        )
    return "wb"


@contextlib.contextmanager
def open_output(path: str | None, stdout: BinaryIO, mode: OutputMode = "wb") -> Iterator[BinaryIO]:
    """--output opened with `mode` ("wb" or "ab"), else stdout.

    A write error at the close is left to the RecordWriter's own close, which reports it: here
    the file is only closed, on every way out."""
    if path is None:
        _start_at_a_line(stdout)
        yield stdout
        return
    try:
        separate = mode == "ab" and os.path.isfile(path) and not _end_at_a_line(path)
        stream = open(path, mode)  # noqa: SIM115 (closed by this context manager)
        if separate:
            stream.write(b"\n")
    except OSError as exc:
        raise UsageError(
            f"--output {path}: cannot write it ({exc.strerror}); check the path"
        ) from exc
    try:
        yield stream
    finally:
        with contextlib.suppress(OSError):
            stream.close()


# Longer than any record: a last line without its newline, and no longer, is one cut short.
_LONGEST_RECORD_BYTES = 1 << 20


def _start_at_a_line(stdout: BinaryIO) -> None:
    """Records appended to a file on stdout (`>> FILE`) whose last line a stopped run cut short
    (a full disk, a file-size limit, a kill) start on a line of their own: glued to the torn
    one, the first would be lost with it. (The file is not FILE's to truncate, as --output's.)"""
    path = stdout_file(stdout)
    if path is None:
        return
    try:
        # Opened for writing only (`>>`): its last byte read through another descriptor.
        with open(path, "rb") as again:
            size = again.seek(0, os.SEEK_END)
            if size == 0:
                return
            again.seek(size - 1)
            last = again.read(1)
        if last != b"\n":
            stdout.write(b"\n")
    except OSError:
        return  # unreadable: nothing to separate


def _end_at_a_line(path: str) -> bool:
    """Make the file end at a line by dropping a last record cut short (a run killed mid-write),
    so appended records stay one a line; False when a last line too long for a record is left."""
    with open(path, "rb") as handle:
        end = handle.seek(0, os.SEEK_END)
        start = handle.seek(max(0, end - _LONGEST_RECORD_BYTES))
        tail = handle.read()
    if not tail or tail.endswith(b"\n"):
        return True
    newline = tail.rfind(b"\n")
    if newline < 0 and start > 0:
        return False
    os.truncate(path, start + newline + 1)
    return True


def stdout_file(stdout: BinaryIO) -> str | None:
    """A path that reads the regular file stdout writes to (`>> FILE`), for the resume to read
    back the records an earlier run left in it as it does --output FILE's; None for a pipe, a
    terminal, a device (nothing to read back)."""
    try:
        fd = stdout.fileno()
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
    except (OSError, ValueError, io.UnsupportedOperation):
        return None
    return f"/proc/self/fd/{fd}"


def on_output_error(
    control: RunControl, path: str | None, stderr: TextIO
) -> Callable[[OSError], None]:
    """What a RecordWriter does when it cannot write: stop sending at once (exit 4)."""

    def stop(exc: OSError) -> None:
        detail = f"{path or 'stdout'}: {exc.strerror or exc}"
        if control.stopping and control.reason is not StopReason.OUTPUT:
            # The run ends for another reason, which its exit code tells; say this loss too.
            logs.say(
                stderr,
                f"sms-blaster: cannot write the records ({detail}): some are lost",
                logs.Level.WARNING,
            )
        control.stop(StopReason.OUTPUT, detail)

    return stop


class GroupFlush:
    """One flush of the records for all the rows that wait for one in the same turn of the event
    loop: once it returns, their records are in the file or pipe, which a process killed after
    cannot take back, at one write for many rows."""

    __slots__ = ("_flush", "_next")

    def __init__(self, flush: Callable[[], bool]) -> None:
        self._flush = flush  # False when the records could not be written
        self._next: asyncio.Future[bool] | None = None

    async def wait(self) -> bool:
        """Return once the records emitted so far were flushed: False when they could not be."""
        if self._next is None:
            loop = asyncio.get_running_loop()
            self._next = loop.create_future()
            loop.call_soon(self._run)
        return await asyncio.shield(self._next)

    def _run(self) -> None:
        done, self._next = self._next, None
        assert done is not None
        try:
            done.set_result(self._flush())
        except Exception as exc:  # every waiter hears of it; none waits for ever
            done.set_exception(exc)
