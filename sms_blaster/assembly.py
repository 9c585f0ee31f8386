"""A run assembled once for `send`, `enqueue` and `worker`.

`open_campaign_input` checks and reads what `send` and `enqueue` take from the input (the number
column, the template, what identifies the campaign, the opt-out list) and makes their
`Preparer`; `SendingRun` is the sending half of `send` and `worker`: the records' writer and
totals, the engine, the progress line, the stop signals, the summary and the exit code.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, TextIO

from sms_blaster import logs, preflight, run_parts
from sms_blaster.campaign_identity import CampaignParams
from sms_blaster.engine import Engine, EngineConfig, Flow, Ledger, RunControl, SendFn, Sink
from sms_blaster.exit_status import exit_code
from sms_blaster.inputs import RowSource, open_input_off_loop
from sms_blaster.models import Message, Record, Status
from sms_blaster.optout import load_suppressed
from sms_blaster.output import (
    FlowFigures,
    Progress,
    ProgressMode,
    RecordTotals,
    RecordWriter,
    summary_fields,
    summary_lines,
)
from sms_blaster.pool import SenderPool, load_pool
from sms_blaster.prepare import Preparer, Template
from sms_blaster.ratelimit import RateLimiter
from sms_blaster.records_output import on_output_error
from sms_blaster.run_signals import run_with_signals
from sms_blaster.run_stats import RunSnapshot
from sms_blaster.settings import RunSettings

if TYPE_CHECKING:
    from sms_blaster.quiet_hours import QuietHours, QuietWindow, RowZones


@dataclass(frozen=True, slots=True)
class CampaignInput:
    """The input of a campaign, checked, and what the run takes from it."""

    source: RowSource
    sender: str
    to_column: str
    template: Template | None
    params: CampaignParams
    suppressed: set[int]
    quiet_window: QuietWindow | None = None  # --quiet-hours
    pool: SenderPool | None = None  # --from-pool: the senders, chosen per recipient

    def preparer(self, settings: RunSettings, campaign_id: str) -> Preparer:
        """The preparer of this input's rows, for the campaign's id as its backend keeps it."""
        return Preparer(
            to_column=self.to_column,
            template=self.template,
            campaign=campaign_id,
            default_region=settings.default_region,
            max_segments=settings.max_segments,
            suppressed=self.suppressed,
            smart_encoding=settings.smart_encoding,
            time_zones=None if self.quiet_window is None else _row_zones(settings),
            pool=self.pool,
        )

    def quiet_hours(self) -> QuietHours | None:
        """The check of --quiet-hours as rows are taken for sending; None without it."""
        if self.quiet_window is None:
            return None
        from sms_blaster.quiet_hours import QuietHours

        return QuietHours(self.quiet_window)


@contextlib.asynccontextmanager
async def open_campaign_input(
    settings: RunSettings, stdin: BinaryIO | None
) -> AsyncIterator[CampaignInput]:
    """The input opened and checked (UsageError before anything is sent), closed after."""
    source = await open_input_off_loop(
        settings.input_path, settings.input_format, settings.input_encoding, stdin
    )
    with contextlib.closing(source):
        preflight.check_output(settings, source)
        preflight.check_columns(settings, source)
        sender = run_parts.sender_as_sent(settings)
        to_column = run_parts.number_column(settings, source)
        yield CampaignInput(
            source=source,
            sender=sender,
            to_column=to_column,
            template=run_parts.message_template(settings),
            params=run_parts.campaign_params(settings, source, sender, to_column),
            suppressed=load_suppressed(settings.suppress_path, settings.default_region),
            quiet_window=_quiet_window(settings, source),
            pool=None if settings.from_pool is None else load_pool(settings.from_pool),
        )


def _quiet_window(settings: RunSettings, source: RowSource) -> QuietWindow | None:
    if settings.quiet_hours is None and settings.tz_column is None:
        return None  # the module and its zone data are loaded only for runs that use them
    from sms_blaster.quiet_hours import quiet_window

    return quiet_window(settings, source)


def _row_zones(settings: RunSettings) -> RowZones:
    from sms_blaster.quiet_hours import RowZones

    return RowZones(settings.tz_column)


def progress_mode(progress: bool | None, stderr_is_tty: bool) -> ProgressMode:
    if progress is False:
        return ProgressMode.OFF
    # A bar redrawn in place is no log line: JSON logs take plain progress lines.
    return ProgressMode.BAR if stderr_is_tty and not logs.is_json() else ProgressMode.LINES


class SendingRun:
    """The sending half of a run: the records' writer and totals, the engine, the progress line;
    `run` runs the work under the stop signals, `close_records`, `summary` and `exit_code` end
    it. `sink`: what the engine's records go through on their way to the writer."""

    __slots__ = (
        "_rate_ceiling_per_s",
        "_stderr",
        "control",
        "engine",
        "progress",
        "progress_mode",
        "totals",
        "writer",
    )

    def __init__(
        self,
        settings: RunSettings,
        *,
        out: BinaryIO,
        stderr: TextIO,
        stderr_is_tty: bool,
        control: RunControl,
        send: SendFn,
        cost: Callable[[Message], float],
        limiter: RateLimiter,
        ledger: Ledger | None,
        flow: Flow | None,
        sink: Callable[[RecordWriter], Sink] = lambda writer: writer,
        screen: Callable[[Message], Record | None] | None = None,
        ready: int = 0,
    ) -> None:
        self._stderr = stderr
        self._rate_ceiling_per_s = settings.rate_per_s
        self.control = control
        self.totals = RecordTotals()
        self.writer = RecordWriter(
            out,
            self.totals,
            on_output_error(control, settings.output_path, stderr),
            hide_settled=settings.only_new,
            dry_run=settings.dry_run,
        )
        self.engine = Engine(
            send=send,
            limiter=limiter,
            sink=sink(self.writer),
            config=EngineConfig(
                settings.effective_window,
                run_parts.policy(settings),
                ready,
                run_parts.proxy_variable(settings),
            ),
            cost=cost,
            control=control,
            ledger=ledger,
            breaker=run_parts.breaker(settings),
            flow=flow,
            screen=screen,
        )
        self.progress_mode = progress_mode(settings.progress, stderr_is_tty)
        self.progress = Progress(
            stderr, self.progress_mode, self.totals, self.writer.flush, live=self._live
        )

    async def run(self, work: Coroutine[Any, Any, None]) -> bool:
        """Run `work` (the engine's) under the stop signals; True when a second signal aborted."""
        return await run_with_signals(self.control, work, self.progress, self._stderr)

    def close_records(self, output_path: str | None) -> None:
        if output_path is None:
            self.writer.flush()
        else:
            self.writer.close()  # a full disk may show only at the last write
        self.progress.clear()

    def summary(
        self,
        *,
        rate_line: str | None = None,
        notes: Sequence[str] = (),
        fields: Mapping[str, object] | None = None,
    ) -> None:
        """Print the summary: the totals, `rate_line` instead of the rate and latency line when
        given, the `notes`, and what flow control found; `fields`: more figures for JSON."""
        elapsed_s = self.progress.elapsed_s
        sent = self.totals.by_status[Status.SENT]
        rate_per_s = sent / elapsed_s if elapsed_s else 0.0
        lines = summary_lines(self.totals, elapsed_s, rate_per_s)
        if rate_line is not None:
            lines[-1] = rate_line
        lines += notes
        if (line := self._flow_line()) is not None:
            lines.append(line)
        figures = summary_fields(self.totals, elapsed_s, rate_per_s) | self._flow_fields()
        figures |= fields or {}
        logs.say(self._stderr, "\n".join(lines), **figures)  # one summary, one JSON object

    def exit_code(self, aborted: bool, last_line: int | None, *, hands_back: bool = False) -> int:
        """0, 1, or the exception that says why the run stopped (see `exit_status`)."""
        totals, stderr = self.totals, self._stderr
        return exit_code(
            self.control, aborted, totals.all_good, last_line, stderr, hands_back=hands_back
        )

    def snapshot(self) -> RunSnapshot:
        """The run's totals and its flow control's state now (see `run_stats`)."""
        engine, totals = self.engine, self.totals
        counters, flow = engine.counters, engine.flow
        return RunSnapshot(
            at_s=time.time(),
            elapsed_s=self.progress.elapsed_s,
            rows_by_status={status.value: count for status, count in totals.by_status.items()},
            errors=dict(totals.by_error),
            segments=totals.segments,
            cost=totals.cost,
            requests=counters.requests,
            throttled=counters.throttled,
            in_flight=counters.in_flight,
            window=engine.window.limit,
            rate_ceiling_per_s=self._rate_ceiling_per_s,
            pace_per_s=None if flow is None else flow.rate_per_s,
            limit_per_s=None if flow is None else flow.known_limit_per_s,
            latency=totals.latency,
        )

    def _live(self) -> FlowFigures:
        """The flow figures of the progress line."""
        engine = self.engine
        counters = engine.counters
        return FlowFigures(
            in_flight=counters.in_flight,
            window=engine.window.limit,
            pace_per_s=None if engine.flow is None else engine.flow.rate_per_s,
            throttled=counters.throttled,
        )

    def _flow_fields(self) -> dict[str, Any]:
        """The figures of the flow line, for a JSON summary."""
        flow = self.engine.flow
        if flow is None:
            return {"window": self.engine.window.limit}
        limit = flow.known_limit_per_s
        return {
            "throttles": flow.throttles,
            "limit_per_s": None if limit is None else round(limit, 1),
            "pace_per_s": round(flow.rate_per_s, 1),
            "window": self.engine.window.limit,
        }

    def _flow_line(self) -> str | None:
        flow = self.engine.flow
        if flow is None or not flow.throttles:
            return None
        limit = flow.known_limit_per_s
        looked = "was not measured" if limit is None else f"looked like {limit:,.1f}/s"
        return (
            f"  flow: {flow.throttles:,} throttled answers; the provider's limit {looked}; "
            f"ended at {flow.rate_per_s:,.1f}/s, window {self.engine.window.limit}"
        )
