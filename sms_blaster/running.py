"""What every run shares, a campaign from a file (`send`) or from Redis (`worker`): the session,
the records' output, progress, signals, flow control settings and the exit code."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, BinaryIO, Literal, TextIO

import aiohttp

from sms_blaster import stopsignals
from sms_blaster.engine import Engine, RunControl, StopReason
from sms_blaster.errors import (
    FatalProviderError,
    Interrupted,
    JournalError,
    OutputError,
    UsageError,
)
from sms_blaster.flow import FlowController, FlowSettings
from sms_blaster.guards import ErrorRateBreaker
from sms_blaster.output import Progress, ProgressMode
from sms_blaster.providers.base import session_timeout
from sms_blaster.retry import RetryPolicy
from sms_blaster.settings import SendSettings

OutputMode = Literal["wb", "ab"]  # a new file of records, or more records after an earlier run's


def policy(settings: SendSettings) -> RetryPolicy:
    return RetryPolicy(
        retries=settings.retries,
        retry_unknown=settings.retry_unknown,
        unreachable_s=settings.unreachable_timeout_s,
    )


def flow(settings: SendSettings, window: int) -> FlowController | None:
    if not settings.adaptive or settings.dry_run:
        return None
    return FlowController(FlowSettings(settings.rate_per_s, window), time.monotonic())


def live(engine: Engine) -> str:
    """The flow figures of the progress line."""
    counters = engine.counters
    text = f"in flight {counters.in_flight}/{engine.window.limit}"
    if engine.flow is not None:
        text += f" | pace {engine.flow.rate_per_s:,.1f}/s"
    return text + f" | throttled {counters.throttled:,}"


def flow_line(engine: Engine) -> str | None:
    flow = engine.flow
    if flow is None or not flow.throttles:
        return None
    limit = flow.known_limit_per_s
    looked = "was not measured" if limit is None else f"looked like {limit:,.1f}/s"
    return (
        f"  flow: {flow.throttles:,} throttled answers; the provider's limit {looked}; "
        f"ended at {flow.rate_per_s:,.1f}/s, window {engine.window.limit}"
    )


def breaker(settings: SendSettings) -> ErrorRateBreaker | None:
    if settings.max_error_rate is None:
        return None
    return ErrorRateBreaker(settings.max_error_rate)


def exit_code(
    control: RunControl, aborted: bool, all_good: bool, last_line: int | None, stderr: TextIO
) -> int:
    """The exit code of a finished run, or the exception that says why it stopped.

    `last_line`: the last input row read, for a run that reads an input (None for a worker)."""
    reason, detail = control.reason, control.detail
    if aborted:
        unread = "" if last_line is None else f"; rows after line {last_line} were not read"
        raise Interrupted(
            f"interrupted: aborted; requests in flight are recorded 'unknown'{unread}"
        )
    if reason is StopReason.INTERRUPTED:
        raise Interrupted(
            "interrupted: stopped after the requests in flight finished; "
            "rows not sent are recorded 'stopped'"
        )
    if reason is StopReason.OUTPUT:
        raise OutputError(
            f"cannot write the records ({detail}); no new request was sent after that; "
            "the records of rows finished later were lost; make the output writable and re-run "
            "the same command to go on"
        )
    if reason is StopReason.JOURNAL:
        raise JournalError(f"{detail}; no new request was sent after that")
    if reason is StopReason.FATAL:
        raise FatalProviderError(
            f"the run was stopped: {detail}; rows not sent are recorded 'stopped'; "
            "fix the cause and re-run the same command to go on"
        )
    if reason is StopReason.UNREACHABLE:
        raise FatalProviderError(
            f"the run was stopped: {detail}; rows not sent are recorded 'stopped'; "
            "check --base-url and the network, then re-run the same command to go on"
        )
    if reason is StopReason.DEADLINE:
        print(
            f"sms-blaster: {detail} reached: rows not sent are recorded 'stopped' and stay "
            "pending; re-run the same command to go on",
            file=stderr,
        )
        return 1
    return 0 if all_good else 1


async def run_with_signals(
    engine: Engine,
    work: Coroutine[Any, Any, None],
    progress: Progress,
    stderr: TextIO,
) -> bool:
    """Run `work` (the engine's); the first SIGINT/SIGTERM/SIGHUP drains, a second aborts. True
    when aborted."""
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(work)
    signals_seen = 0

    def on_signal() -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            progress.clear()
            print(
                "sms-blaster: stopping: no new requests; waiting for those in flight "
                "(signal again to abort)",
                file=stderr,
            )
            engine.control.stop(StopReason.INTERRUPTED)
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


def progress_mode(progress: bool | None, stderr_is_tty: bool) -> ProgressMode:
    if progress is False:
        return ProgressMode.OFF
    return ProgressMode.BAR if stderr_is_tty else ProgressMode.LINES


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


def on_output_error(
    control: RunControl, path: str | None, stderr: TextIO
) -> Callable[[OSError], None]:
    """What a RecordWriter does when it cannot write: stop sending at once (exit 4)."""

    def stop(exc: OSError) -> None:
        detail = f"{path or 'stdout'}: {exc.strerror or exc}"
        if control.stopping and control.reason is not StopReason.OUTPUT:
            # The run ends for another reason, which its exit code tells; say this loss too.
            print(f"sms-blaster: cannot write the records ({detail}): some are lost", file=stderr)
        control.stop(StopReason.OUTPUT, detail)

    return stop


def session(window: int, timeout_s: float) -> aiohttp.ClientSession:
    """The run's one session: keep-alive connections, as many as the window."""
    connector = aiohttp.TCPConnector(limit=window, limit_per_host=window, ttl_dns_cache=300)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=session_timeout(timeout_s),
        headers={"User-Agent": "sms-blaster"},
    )


async def cancel(task: asyncio.Task[None]) -> None:
    """Cancel a background task of the run and wait for it to end."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
