"""One `send` run, wired end to end: input, checks, provider, engine, records, progress, signals.

Everything that can be wrong with the flags or the input is found here before the first request
leaves, and raised as a UsageError (exit 2).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from typing import BinaryIO, TextIO

import aiohttp

from sms_blaster.engine import Engine, EngineConfig, RunControl, StopReason
from sms_blaster.errors import FatalProviderError, Interrupted, OutputError, UsageError
from sms_blaster.inputs import STDIN_NAME, InputFormat, RowSource, open_input, stream_rows
from sms_blaster.models import InputRow, Status
from sms_blaster.output import Progress, ProgressMode, RecordWriter, Tally, summary_lines
from sms_blaster.prepare import (
    NUMBER_COLUMNS,
    TEXT_COLUMN,
    Preparer,
    Template,
    TemplateError,
    campaign_id,
    compile_template,
    pick_number_column,
)
from sms_blaster.providers.base import send, session_timeout
from sms_blaster.providers.vonage_sms import VonageSms
from sms_blaster.ratelimit import PacedLimiter
from sms_blaster.retry import RetryPolicy
from sms_blaster.settings import SendSettings
from sms_blaster.simulator import SimulatorConfig, start_simulator

DRY_RUN_SENDER = "SMSBlaster"


async def run_send(
    settings: SendSettings,
    *,
    stdout: BinaryIO,
    stderr: TextIO,
    stdin: BinaryIO | None = None,
    stderr_is_tty: bool = False,
) -> int:
    """Send a campaign; returns 0 (all sent or skipped) or 1 (some failed or unknown).

    Raises UsageError before anything is sent, FatalProviderError after a fatal answer stopped the
    run, Interrupted after a signal; the records and the summary are written in every case.
    """
    sender = _check_sender(settings)
    source = open_input(settings.input_path, settings.input_format, settings.input_encoding, stdin)
    with contextlib.closing(source), _open_output(settings.output_path, stdout) as out:
        preparer = _make_preparer(settings, source)
        async with contextlib.AsyncExitStack() as stack:
            base_url, key, secret = await _endpoint(settings, stack)
            provider = VonageSms(key, secret, sender, base_url)
            window = settings.effective_window
            session = await stack.enter_async_context(_session(window, settings.timeout_s))
            tally = Tally()
            control = RunControl()
            writer = RecordWriter(
                out, tally, lambda exc: control.stop(StopReason.OUTPUT, exc.strerror or str(exc))
            )
            engine = Engine(
                preparer=preparer,
                send=functools.partial(send, session, provider),
                limiter=PacedLimiter(settings.rate_per_s),
                sink=writer,
                config=EngineConfig(window, _policy(settings)),
                cost=provider.cost,
                control=control,
            )
            mode = _progress_mode(settings.progress, stderr_is_tty)
            progress = Progress(
                stderr,
                mode,
                tally,
                writer.flush,
                live=lambda: f"in flight {engine.counters.in_flight}/{window}",
                total_rows=_estimate_rows(source) if mode is ProgressMode.BAR else None,
            )
            aborted = await _run_with_signals(engine, stream_rows(source), progress, stderr)
            writer.flush()
            progress.clear()
        elapsed_s = progress.elapsed_s
        sent = tally.by_status[Status.SENT]
        for line in summary_lines(tally, elapsed_s, sent / elapsed_s if elapsed_s else 0.0):
            print(line, file=stderr)
    return _exit(engine.control, aborted, tally.all_good, engine.counters.last_line)


def _policy(settings: SendSettings) -> RetryPolicy:
    return RetryPolicy(retries=settings.retries, retry_unknown=settings.retry_unknown)


def _exit(control: RunControl, aborted: bool, all_good: bool, last_line: int) -> int:
    if aborted:
        raise Interrupted(
            "interrupted: aborted; requests in flight are recorded 'unknown'; "
            f"rows after line {last_line} were not read"
        )
    if control.reason is StopReason.INTERRUPTED:
        raise Interrupted(
            "interrupted: stopped after the requests in flight finished; "
            "rows not sent are recorded 'stopped'"
        )
    if control.reason is StopReason.OUTPUT:
        raise OutputError(
            f"cannot write the records ({control.detail}); no new request was sent after that; "
            "the records of rows finished later were lost"
        )
    if control.reason is StopReason.FATAL:
        raise FatalProviderError(
            f"the provider refused to go on ({control.detail}); the run was stopped, "
            "rows not sent are recorded 'stopped'; fix the account or credentials and re-run"
        )
    return 0 if all_good else 1


async def _run_with_signals(
    engine: Engine,
    batches: AsyncIterator[list[InputRow]],
    progress: Progress,
    stderr: TextIO,
) -> bool:
    """Run the engine; the first SIGINT/SIGTERM drains, a second aborts. True when aborted."""
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(engine.run(batches))
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

    with _signal_handlers(loop, on_signal):
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
            aclose = getattr(batches, "aclose", None)
            if aclose is not None:
                await aclose()
    return False


@contextlib.contextmanager
def _signal_handlers(loop: asyncio.AbstractEventLoop, handler: object) -> Iterator[None]:
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, handler)  # type: ignore[arg-type]
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread (e.g. some test runners): signals stay as they were
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def _progress_mode(progress: bool | None, stderr_is_tty: bool) -> ProgressMode:
    if progress is False:
        return ProgressMode.OFF
    return ProgressMode.BAR if stderr_is_tty else ProgressMode.LINES


def _check_sender(settings: SendSettings) -> str:
    sender = settings.sender or (DRY_RUN_SENDER if settings.dry_run else None)
    if not sender:
        raise UsageError("no sender: give --from (a number or a name) or set SMS_BLASTER_FROM")
    if sender.isdigit():
        if len(sender) > 15:
            raise UsageError(f"--from {sender}: a number sender has at most 15 digits")
    elif len(sender) > 11 or not sender.isascii():
        raise UsageError(
            f"--from {sender!r}: a name sender has at most 11 ASCII letters or digits; "
            "use a shorter name or a number"
        )
    return sender


def _make_preparer(settings: SendSettings, source: RowSource) -> Preparer:
    columns = source.columns
    listed = ", ".join(columns) if columns else "none"
    to_column = pick_number_column(columns, settings.to_column)
    if to_column is None and columns:
        if settings.to_column is not None:
            raise UsageError(
                f"{source.name}: no column '{settings.to_column}' (columns: {listed}); "
                "name the number column with --to-column"
            )
        raise UsageError(
            f"{source.name}: no number column (looked for {', '.join(NUMBER_COLUMNS)}; "
            f"columns: {listed}); name it with --to-column"
        )
    template = _template(settings, source, listed)
    key = settings.campaign or "|".join(
        (_input_identity(settings.input_path), settings.text or "", settings.sender or "")
    )
    return Preparer(
        to_column=to_column or settings.to_column or NUMBER_COLUMNS[0],
        template=template,
        campaign=campaign_id(key),
        default_region=settings.default_region,
        max_segments=settings.max_segments,
    )


def _template(settings: SendSettings, source: RowSource, listed: str) -> Template | None:
    if settings.text is None:
        if source.columns and TEXT_COLUMN not in source.columns:
            raise UsageError(
                f"{source.name}: no '{TEXT_COLUMN}' column (columns: {listed}); "
                "give the message with --text 'Hello {name}'"
            )
        return None
    try:
        template = compile_template(settings.text)
    except TemplateError as exc:
        raise UsageError(f"--text: {exc}") from exc
    if source.columns:
        for name in template.fields:
            if name not in source.columns:
                raise UsageError(
                    f"{source.name}: --text uses {{{name}}} but there is no column '{name}' "
                    f"(columns: {listed}); fix the placeholder or write {{{{ for a brace"
                )
    return template


def _estimate_rows(source: RowSource) -> int | None:
    """About how many rows a regular input file holds (its lines), for the progress bar."""
    if source.name == STDIN_NAME or not os.path.isfile(source.name):
        return None
    lines = 0
    with open(source.name, "rb") as handle:
        while chunk := handle.read(1 << 20):
            lines += chunk.count(b"\n")
    return max(0, lines - 1) if source.format is InputFormat.CSV else lines


def _input_identity(path: str) -> str:
    return "-" if path == "-" else os.path.abspath(path)


@contextlib.contextmanager
def _open_output(path: str | None, stdout: BinaryIO) -> Iterator[BinaryIO]:
    if path is None:
        yield stdout
        return
    try:
        stream = open(path, "wb")  # noqa: SIM115 (closed by this context manager)
    except OSError as exc:
        raise UsageError(
            f"--output {path}: cannot write it ({exc.strerror}); check the path"
        ) from exc
    with stream:
        yield stream


async def _endpoint(
    settings: SendSettings, stack: contextlib.AsyncExitStack
) -> tuple[str, str, str]:
    """Where to send and with which credentials; a dry run starts the simulator in this process."""
    if settings.dry_run:
        simulator = await start_simulator(SimulatorConfig(keep_messages=False))
        stack.push_async_callback(simulator.close)
        return simulator.url, "dry-run", "dry-run"
    _check_base_url(settings.base_url)
    if not settings.api_key:
        raise UsageError("no Vonage API key: set VONAGE_API_KEY or give --api-key")
    if not settings.api_secret:
        raise UsageError("no Vonage API secret: set VONAGE_API_SECRET or give --api-secret")
    return settings.base_url, settings.api_key, settings.api_secret


def _check_base_url(url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--base-url {url}: not an http(s) URL; give e.g. https://rest.nexmo.com")


def _session(window: int, timeout_s: float) -> aiohttp.ClientSession:
    """The run's one session: keep-alive connections, as many as the window."""
    connector = aiohttp.TCPConnector(limit=window, limit_per_host=window, ttl_dns_cache=300)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=session_timeout(timeout_s),
        headers={"User-Agent": "sms-blaster"},
    )
