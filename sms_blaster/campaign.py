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
from collections.abc import Callable
from typing import BinaryIO, TextIO

from sms_blaster import logs, metrics_output, preflight, run_parts
from sms_blaster.assembly import SendingRun, open_campaign_input
from sms_blaster.background import cancel
from sms_blaster.campaign_identity import CampaignParams
from sms_blaster.deadline import deadline_timer, parse_deadline
from sms_blaster.dryrun import DryRun, Estimate
from sms_blaster.engine import RunControl, SendFn, StopReason
from sms_blaster.errors import JournalError, UsageError
from sms_blaster.exit_status import code_of
from sms_blaster.inputs import STDIN_NAME, InputFormat, RowSource, open_input
from sms_blaster.journal.store import Journal
from sms_blaster.models import Message
from sms_blaster.optouts.screen import open_screen, watch_unsubscribed
from sms_blaster.output import Progress, ProgressMode
from sms_blaster.pool_pacing import PoolScheduler
from sms_blaster.preparing import PreparingProcess
from sms_blaster.providers.base import Exchange
from sms_blaster.ratelimit import PacedLimiter, RateLimiter, Unlimited
from sms_blaster.records_output import open_output, output_mode, stdout_file
from sms_blaster.run_timeline import record_run
from sms_blaster.settings import RunSettings
from sms_blaster.validity import as_sent
from sms_blaster.work import RowFeed, first_record


async def run_send(
    settings: RunSettings,
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
    preflight.check_sender(settings)
    preflight.check_journal(settings)
    preflight.check_region(settings.default_region)
    preflight.check_ttl(settings)
    _check_quiet_hours_journal(settings)
    deadline = _deadline(settings)
    if not settings.dry_run:
        preflight.check_endpoint(settings)
    metrics = metrics_output.open_output(settings, stderr)
    sending = _send(settings, deadline, metrics, stdout, stderr, stdin, stderr_is_tty)
    return await metrics_output.published(metrics, sending)


async def _send(
    settings: RunSettings,
    deadline: dt.datetime | None,
    metrics: metrics_output.MetricsOutput | None,
    stdout: BinaryIO,
    stderr: TextIO,
    stdin: BinaryIO | None,
    stderr_is_tty: bool,
) -> int:
    async with open_campaign_input(settings, stdin) as campaign:
        params, source = campaign.params, campaign.source
        control = RunControl()
        async with contextlib.AsyncExitStack() as stack:
            # Read before the journal is: a list that cannot be used ends the run before it.
            screen = await stack.enter_async_context(
                open_screen(
                    settings.optouts_path, settings.default_region, dry_run=settings.dry_run
                )
            )
            journal = await _open_journal(
                settings, params, source, control, stack, stderr, stdout_file(stdout)
            )
            # Opened last: a run refused above must not truncate the records of another.
            # A dry run's records never join the real results of a campaign it resumes.
            resuming = journal is not None and journal.has_prior and not settings.dry_run
            out_mode = output_mode(settings.output_path, resuming, settings.force)
            out = stack.enter_context(open_output(settings.output_path, stdout, out_mode))
            preparer = campaign.preparer(
                settings, journal.campaign_id if journal else params.campaign_id
            )
            quiet = campaign.quiet_hours()
            hold = None if quiet is None else quiet.held_record
            # Quiet hours, then the opt-out list: judged again just before a row leaves (it may
            # have waited for a rate slot and a window place since it was taken, while a window
            # opened); a dry run judges at once.
            check = first_record(hold, screen)
            dry_run = DryRun(journal, check) if settings.dry_run else None
            send_one: SendFn = _send_nothing
            cost: Callable[[Message], float] = _costs_nothing
            pool: PoolScheduler | None = None
            if not settings.dry_run:
                transport = run_parts.transport(settings, settings.effective_window, stderr)
                stack.push_async_callback(transport.close)
                if campaign.pool is None:
                    provider = run_parts.provider(settings, campaign.sender)
                    send_one, cost = functools.partial(transport.send, provider), provider.cost
                else:
                    pool, cost = run_parts.pool_scheduler(
                        settings, campaign.pool, transport, control, journal
                    )
                    send_one = pool.send
            run = SendingRun(
                settings,
                out=out,
                stderr=stderr,
                stderr_is_tty=stderr_is_tty,
                control=control,
                send=send_one,
                cost=cost,
                limiter=_limiter(settings, control),
                ledger=dry_run or journal,
                flow=run_parts.flow(settings, settings.effective_window),
                sink=watch_unsubscribed(screen, settings),
                screen=check if pool is None else pool.screened(check),
                # Rows marked ahead of a free place: only a journal's marks take time.
                ready=0 if journal is None else run_parts.ready_places(settings.effective_window),
            )
            if journal is not None and not settings.dry_run:
                # A row's record reaches the kernel before the commit that settles it.
                records_fd = None if stdout_file(out) is None else out.fileno()
                journal.write_records_first(run.writer.flush, records_fd)
            if metrics is not None:
                metrics.start(run.snapshot, {"campaign": params.name})
            if run.progress_mode is ProgressMode.BAR:
                stack.push_async_callback(
                    cancel, asyncio.create_task(_count_rows(source, run.progress))
                )
            # A dry run's journal is read only: it records no run.
            timeline = None if settings.dry_run else journal
            end = await stack.enter_async_context(
                record_run(timeline, settings, run.snapshot, stderr)
            )
            with deadline_timer(deadline, control):
                # From here the input is the preparing process's: it reads on, in parallel.
                batches = await PreparingProcess.start(source, preparer)
                feed = RowFeed(batches, run.engine, hold, pool)
                try:
                    aborted = await run.run(feed.run())
                finally:
                    try:
                        batches.close()
                    finally:
                        if journal is not None:
                            await journal.drain()  # the last records wait for their commit
            run.close_records(settings.output_path)
            end.code = code_of(control, aborted, run.totals.all_good)
        rate_line, figures = None, None
        if dry_run is not None:
            estimate = Estimate(
                dry_run.messages,
                dry_run.segments,
                settings.price,
                settings.rate_per_s,
                None if settings.ttl_s is None else as_sent(settings.provider, settings.ttl_s),
                dry_run.segments_saved,
                dry_run.segments_added,
            )
            rate_line = estimate.line()  # nothing was sent: no rate, no latency
            figures = {"dry_run": estimate.fields()}
        held = None if quiet is None else quiet.summary_line(dry_run=settings.dry_run)
        run.summary(rate_line=rate_line, notes=[held] if held else [], fields=figures)
    return run.exit_code(aborted, feed.last_line)


def _check_quiet_hours_journal(settings: RunSettings) -> None:
    """Held rows wait in the journal for the next run: without one, that run would resend every
    row. A dry run holds nothing; distributed runs keep held rows in Redis."""
    if settings.quiet_hours is None or settings.dry_run or run_parts.journal_path(settings):
        return
    no_journal = settings.spelled("no_journal", "--no-journal")
    if settings.use_journal:
        fix = "give --journal PATH"
    elif no_journal == "--no-journal":
        fix = "drop --no-journal"
    else:  # the environment gave it: the user never typed the flag
        fix = f"the environment gives {no_journal}: unset it"
    quiet = settings.spelled("quiet_hours", "--quiet-hours")
    raise UsageError(f"{quiet} needs a journal: held rows wait in it for the next run; {fix}")


async def _send_nothing(message: Message) -> Exchange:
    raise AssertionError("a dry run sends nothing")  # its ledger admits no message to send


def _costs_nothing(message: Message) -> float:
    return 0.0


async def _count_rows(source: RowSource, progress: Progress) -> None:
    """Estimate the rows of a file input off the loop, for the progress bar."""
    progress.total_rows = await asyncio.to_thread(_estimate_rows, source)


def _limiter(settings: RunSettings, control: RunControl) -> RateLimiter:
    if settings.dry_run:
        return Unlimited()  # a dry run sends nothing: it estimates the duration
    # Waiting for a slot ends early when the run stops, so a stop is not held up by the pace.
    return PacedLimiter(settings.rate_per_s, sleep=control.sleep)


def _deadline(settings: RunSettings) -> dt.datetime | None:
    if settings.not_after is None:
        return None
    return parse_deadline(settings.not_after, dt.datetime.now().astimezone())


async def _open_journal(
    settings: RunSettings,
    params: CampaignParams,
    source: RowSource,
    control: RunControl,
    stack: contextlib.AsyncExitStack,
    stderr: TextIO,
    stdout_path: str | None,
) -> Journal | None:
    """The campaign's journal, open and started (read only for a dry run); None without one.
    `stdout_path` reads the file stdout appends to, None when it is no file."""
    path = run_parts.journal_path(settings)
    if path is None:
        if settings.input_path == "-" and settings.use_journal and not settings.dry_run:
            logs.say(
                stderr,
                "sms-blaster: no journal for stdin input, so this run cannot be resumed; "
                "give --journal PATH to keep one",
                logs.Level.WARNING,
            )
        return None
    try:
        if settings.dry_run:
            # Read only: the real run's decisions, without writing, creating or locking anything.
            journal = Journal.peek(path, params, retry_unknown=settings.retry_unknown)
        else:
            journal = Journal.open(
                path, params, retry_unknown=settings.retry_unknown, fsync=settings.journal_fsync
            )
    except JournalError as exc:
        if settings.journal_path is None or "journal_path" not in settings.from_environment:
            raise
        # The path came from SMS_BLASTER_JOURNAL: the line names it, not a flag never typed.
        raise type(exc)(f"{settings.spelled('journal_path', '--journal')}: {exc}") from exc
    if journal is None:
        return None
    stack.push_async_callback(journal.close)
    if not settings.dry_run:
        records = settings.output_path or stdout_path
        if records is not None:
            # Records a killed run wrote just before the commit that never came: their rows
            # take them as their outcome, rather than an `unknown` record beside them. (The
            # file stdout appends to, too: the size the journal kept is that file's.)
            journal.adopt_records(records)
        journal.start(lambda message: control.stop(StopReason.JOURNAL, message))
    if journal.has_prior and source.name != STDIN_NAME:
        # A changed file is refused before anything is sent, not when its reader gets there.
        await asyncio.to_thread(_check_input, journal, settings)
    resume = journal.resume
    if resume.settled or resume.were_inflight or resume.owed:
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
        if resume.owed and not settings.dry_run:
            text += (
                f"; {resume.owed:,} rows whose records an earlier run could not write get them now"
            )
        logs.say(
            stderr,
            text,
            campaign=params.name,
            journal=path,
            settled=resume.settled,
            were_inflight=resume.were_inflight,
            owed=resume.owed,
        )
    return journal


def _check_input(journal: Journal, settings: RunSettings) -> None:
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
