"""One `send` run, wired end to end: checks, journal, provider, engine, records, signals, summary.

Everything that can be wrong with the flags or the input is found before the first request
leaves (a UsageError, exit 2); a journal that cannot be used is a JournalError (exit 4). A dry run
goes the same way with the journal read only and no provider: `sms_blaster.dryrun`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import os
from collections.abc import Callable, Iterator
from typing import BinaryIO, TextIO

from sms_blaster import checks, running
from sms_blaster.dryrun import DryRun, Estimate
from sms_blaster.engine import Engine, EngineConfig, Ledger, RunControl, SendFn, StopReason
from sms_blaster.guards import load_suppressed, parse_deadline
from sms_blaster.inputs import (
    STDIN_NAME,
    InputFormat,
    RowSource,
    open_input,
    open_input_off_loop,
    stream_rows,
)
from sms_blaster.journal.store import CampaignParams, Journal
from sms_blaster.models import Message, Status
from sms_blaster.output import Progress, ProgressMode, RecordWriter, Tally, summary_lines
from sms_blaster.prepare import Preparer
from sms_blaster.providers import registry
from sms_blaster.providers.base import Exchange, send
from sms_blaster.ratelimit import PacedLimiter, RateLimiter, Unlimited
from sms_blaster.settings import SendSettings


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
    source = await open_input_off_loop(
        settings.input_path, settings.input_format, settings.input_encoding, stdin
    )
    with contextlib.closing(source):
        checks.check_output(settings, source)
        to_column = checks.number_column(settings, source)
        template = checks.message_template(settings, source)
        params = checks.campaign_params(settings, source, sender, to_column)
        suppressed = load_suppressed(settings.suppress_path, settings.default_region)
        control = RunControl()
        async with contextlib.AsyncExitStack() as stack:
            journal = await _open_journal(settings, params, source, control, stack, stderr)
            # Opened last: a run refused above must not truncate the records of another.
            # A dry run's records never join the real results of a campaign it resumes.
            resuming = journal is not None and journal.has_prior and not settings.dry_run
            out_mode = running.output_mode(settings.output_path, resuming, settings.force)
            out = stack.enter_context(running.open_output(settings.output_path, stdout, out_mode))
            preparer = Preparer(
                to_column=to_column,
                template=template,
                campaign=journal.campaign_id if journal else params.campaign_id,
                default_region=settings.default_region,
                max_segments=settings.max_segments,
                suppressed=suppressed,
            )
            window = settings.effective_window
            dry_run = DryRun(journal) if settings.dry_run else None
            ledger: Ledger | None = dry_run or journal
            send_one: SendFn = _send_nothing
            cost: Callable[[Message], float] = _costs_nothing
            if endpoint is not None:
                base_url, credentials = endpoint
                provider = registry.make_provider(
                    settings.provider,
                    sender=sender,
                    base_url=base_url,
                    credentials=credentials,
                    callback_url=settings.callback_url,
                )
                session = await stack.enter_async_context(
                    running.session(window, settings.timeout_s)
                )
                send_one, cost = functools.partial(send, session, provider), provider.cost
            tally = Tally()
            writer = RecordWriter(
                out,
                tally,
                running.on_output_error(control, settings.output_path, stderr),
                hide_settled=settings.only_new,
                dry_run=settings.dry_run,
            )
            engine = Engine(
                preparer=preparer,
                send=send_one,
                limiter=_limiter(settings, control),
                sink=writer,
                config=EngineConfig(window, running.policy(settings)),
                cost=cost,
                control=control,
                ledger=ledger,
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
                    try:
                        await batches.aclose()
                    finally:
                        if journal is not None:
                            await journal.drain()  # the last records wait for their commit
            if settings.output_path is None:
                writer.flush()
            else:
                writer.close()  # a full disk may show only at the last write
            progress.clear()
        elapsed_s = progress.elapsed_s
        sent = tally.by_status[Status.SENT]
        lines = summary_lines(tally, elapsed_s, sent / elapsed_s if elapsed_s else 0.0)
        if dry_run is not None:
            estimate = Estimate(
                dry_run.messages, dry_run.segments, settings.price, settings.rate_per_s
            )
            lines = [*lines[:-1], estimate.line()]  # nothing was sent: no rate, no latency
        if (flow_line := running.flow_line(engine)) is not None:
            lines.append(flow_line)
        for line in lines:
            print(line, file=stderr)
    return running.exit_code(control, aborted, tally.all_good, engine.counters.last_line, stderr)


async def _send_nothing(message: Message) -> Exchange:
    raise AssertionError("a dry run sends nothing")  # its ledger admits no message to send


def _costs_nothing(message: Message) -> float:
    return 0.0


async def _count_rows(source: RowSource, progress: Progress) -> None:
    """Estimate the rows of a file input off the loop, for the progress bar."""
    progress.total_rows = await asyncio.to_thread(_estimate_rows, source)


def _limiter(settings: SendSettings, control: RunControl) -> RateLimiter:
    if settings.dry_run:
        return Unlimited()  # a dry run sends nothing: it estimates the duration
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
    if settings.dry_run:
        # Read only: the real run's decisions, without writing, creating or locking anything.
        journal = Journal.peek(path, params, retry_unknown=settings.retry_unknown)
        if journal is None:
            return None
        stack.push_async_callback(journal.close)
    else:
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
        if settings.dry_run:
            text = (
                f"sms-blaster: dry run: the run would resume campaign '{params.name}' from {path}: "
            )
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


def _estimate_rows(source: RowSource) -> int | None:
    """About how many rows a regular input file holds (its lines), for the progress bar."""
    if source.name == STDIN_NAME or not os.path.isfile(source.name):
        return None
    lines = 0
    with open(source.name, "rb") as handle:
        while chunk := handle.read(1 << 20):
            lines += chunk.count(b"\n")
    return max(0, lines - 1) if source.format is InputFormat.CSV else lines
