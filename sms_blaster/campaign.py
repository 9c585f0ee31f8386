"""One `send` run, wired end to end: checks, journal, provider, engine, records, signals, summary.

Everything that can be wrong with the flags or the input is found before the first request
leaves (a UsageError, exit 2); a journal that cannot be used is a JournalError (exit 4).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import os
from collections.abc import Iterator
from decimal import Decimal
from typing import BinaryIO, TextIO

from sms_blaster import checks, running
from sms_blaster.engine import Engine, EngineConfig, RunControl, StopReason
from sms_blaster.guards import load_suppressed, parse_deadline
from sms_blaster.inputs import STDIN_NAME, InputFormat, RowSource, open_input, stream_rows
from sms_blaster.journal.store import CampaignParams, Journal
from sms_blaster.models import Status
from sms_blaster.output import Progress, ProgressMode, RecordWriter, Tally, summary_lines
from sms_blaster.prepare import Preparer
from sms_blaster.providers import registry
from sms_blaster.providers.base import send
from sms_blaster.ratelimit import PacedLimiter, RateLimiter, Unlimited
from sms_blaster.settings import SendSettings
from sms_blaster.simulator import SimulatorConfig, start_simulator


async def run_send(
    settings: SendSettings,
    *,
    stdout: BinaryIO,
    stderr: TextIO,
    stdin: BinaryIO | None = None,
    stderr_is_tty: bool = False,
) -> int:
    """Send a campaign; returns 0 (all sent or skipped) or 1 (some failed or unknown, or the
    deadline came). Raises UsageError before anything is sent, JournalError, FatalProviderError,
    OutputError or Interrupted when the run was stopped; records and summary are written anyway.
    """
    sender = checks.check_sender(settings)
    checks.check_region(settings.default_region)
    deadline = _deadline(settings)
    endpoint = None if settings.dry_run else checks.check_endpoint(settings)
    source = open_input(settings.input_path, settings.input_format, settings.input_encoding, stdin)
    with contextlib.closing(source):
        checks.check_output(settings.output_path, source)
        to_column = checks.number_column(settings, source)
        template = checks.message_template(settings, source)
        params = checks.campaign_params(settings, source, sender, to_column)
        suppressed = load_suppressed(settings.suppress_path, settings.default_region)
        control = RunControl()
        async with contextlib.AsyncExitStack() as stack:
            journal = await _open_journal(settings, params, source, control, stack, stderr)
            # Opened last: a run refused above must not truncate the records of another.
            out = stack.enter_context(running.open_output(settings.output_path, stdout))
            preparer = Preparer(
                to_column=to_column,
                template=template,
                campaign=journal.campaign_id if journal else params.campaign_id,
                default_region=settings.default_region,
                max_segments=settings.max_segments,
                suppressed=suppressed,
            )
            base_url, credentials = endpoint or await _simulator(stack)
            provider = registry.make_provider(
                settings.provider,
                sender=sender,
                base_url=base_url,
                credentials=credentials,
                callback_url=settings.callback_url,
            )
            window = settings.effective_window
            session = await stack.enter_async_context(running.session(window, settings.timeout_s))
            tally = Tally()
            writer = RecordWriter(
                out,
                tally,
                lambda exc: control.stop(StopReason.OUTPUT, exc.strerror or str(exc)),
                hide_settled=settings.only_new,
            )
            engine = Engine(
                preparer=preparer,
                send=functools.partial(send, session, provider),
                limiter=_limiter(settings, control),
                sink=writer,
                config=EngineConfig(window, running.policy(settings)),
                cost=provider.cost,
                control=control,
                ledger=journal,
                breaker=running.breaker(settings),
                flow=running.flow(settings, window),
            )
            mode = running.progress_mode(settings.progress, stderr_is_tty)
            progress = Progress(
                stderr,
                mode,
                tally,
                writer.flush,
                live=lambda: running.live(engine),
            )
            if mode is ProgressMode.BAR:
                stack.push_async_callback(
                    running.cancel, asyncio.create_task(_count_rows(source, progress))
                )
            with _deadline_timer(deadline, control):
                batches = stream_rows(source)
                try:
                    aborted = await running.run_with_signals(
                        engine, engine.run(batches), progress, stderr
                    )
                finally:
                    await batches.aclose()
            writer.flush()
            progress.clear()
        elapsed_s = progress.elapsed_s
        sent = tally.by_status[Status.SENT]
        lines = summary_lines(tally, elapsed_s, sent / elapsed_s if elapsed_s else 0.0)
        if settings.dry_run:
            lines = [*lines[:-1], _estimate(tally, settings)]  # the simulator's prices mean nothing
        if (flow_line := running.flow_line(engine)) is not None:
            lines.append(flow_line)
        for line in lines:
            print(line, file=stderr)
    return running.exit_code(control, aborted, tally.all_good, engine.counters.last_line, stderr)


async def _count_rows(source: RowSource, progress: Progress) -> None:
    """Estimate the rows of a file input off the loop, for the progress bar."""
    progress.total_rows = await asyncio.to_thread(_estimate_rows, source)


def _limiter(settings: SendSettings, control: RunControl) -> RateLimiter:
    if settings.dry_run:
        return Unlimited()  # a dry run estimates the duration instead of waiting it out
    # Waiting for a slot ends early when the run stops, so a stop is not held up by the pace.
    return PacedLimiter(settings.rate_per_s, sleep=control.sleep)


def _deadline(settings: SendSettings) -> dt.datetime | None:
    if settings.not_after is None:
        return None
    return parse_deadline(settings.not_after, dt.datetime.now().astimezone())


@contextlib.contextmanager
def _deadline_timer(deadline: dt.datetime | None, control: RunControl) -> Iterator[None]:
    if deadline is None:
        yield
        return
    delay_s = (deadline - dt.datetime.now().astimezone()).total_seconds()
    shown = deadline.isoformat(sep=" ", timespec="seconds")
    timer = asyncio.get_running_loop().call_later(
        max(0.0, delay_s), control.stop, StopReason.DEADLINE, f"--not-after {shown}"
    )
    try:
        yield
    finally:
        timer.cancel()


async def _open_journal(
    settings: SendSettings,
    params: CampaignParams,
    source: RowSource,
    control: RunControl,
    stack: contextlib.AsyncExitStack,
    stderr: TextIO,
) -> Journal | None:
    path = checks.journal_path(settings)
    if path is None:
        if settings.input_path == "-" and settings.use_journal and not settings.dry_run:
            print(
                "sms-blaster: no journal for stdin input, so this run cannot be resumed; "
                "give --journal PATH to keep one",
                file=stderr,
            )
        return None
    journal = Journal.open(
        path, params, retry_unknown=settings.retry_unknown, fsync=settings.journal_fsync
    )
    stack.push_async_callback(journal.close)
    journal.start(lambda message: control.stop(StopReason.JOURNAL, message))
    if journal.has_prior and source.name != STDIN_NAME:
        # A changed file is refused before anything is sent, not when its reader gets there.
        await asyncio.to_thread(_check_input, journal, settings)
    resume = journal.resume
    if resume.settled or resume.were_inflight:
        text = f"sms-blaster: resuming campaign '{params.name}' from {path}: "
        text += f"{resume.settled:,} rows settled earlier are skipped"
        if resume.were_inflight:
            text += f"; {resume.were_inflight:,} rows found in flight are now unknown " + (
                "and resent (--retry-unknown)" if settings.retry_unknown else "(not resent)"
            )
        print(text, file=stderr)
    return journal


def _check_input(journal: Journal, settings: SendSettings) -> None:
    with open_input(settings.input_path, settings.input_format, settings.input_encoding) as again:
        journal.check_input(again)


async def _simulator(stack: contextlib.AsyncExitStack) -> tuple[str, registry.Credentials]:
    """A dry run sends to the simulator, started in this process: nothing leaves the machine."""
    simulator = await start_simulator(SimulatorConfig(keep_messages=False, magic_numbers=False))
    stack.push_async_callback(simulator.close)
    return simulator.url, registry.DRY_RUN_CREDENTIALS


def _estimate(tally: Tally, settings: SendSettings) -> str:
    messages = tally.by_status[Status.SENT]
    duration_s = messages / settings.rate_per_s
    if settings.price is None:
        cost = "give --price (per segment) for the cost"
    else:
        cost = f"cost {Decimal(tally.segments) * settings.price} at {settings.price} a segment"
    return (
        f"  dry run: {messages:,} messages would be sent in {tally.segments:,} segments; {cost}; "
        f"about {_duration(duration_s)} at {settings.rate_per_s:g}/s"
    )


def _duration(seconds: float) -> str:
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def _estimate_rows(source: RowSource) -> int | None:
    """About how many rows a regular input file holds (its lines), for the progress bar."""
    if source.name == STDIN_NAME or not os.path.isfile(source.name):
        return None
    lines = 0
    with open(source.name, "rb") as handle:
        while chunk := handle.read(1 << 20):
            lines += chunk.count(b"\n")
    return max(0, lines - 1) if source.format is InputFormat.CSV else lines
