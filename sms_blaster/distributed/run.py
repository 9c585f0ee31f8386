"""`enqueue` and `worker`: one campaign sent by any number of processes, on any number of hosts.

`enqueue` prepares rows exactly as `send` does (the same checks, the same records for rows that
will not be sent) and adds the rest to the campaign's stream; run again, it adds only rows it has
not added before. `worker` sends what it claims from the stream with the same engine as `send`
(window, adaptive flow control, classification, retries) under the campaign's one global rate
limit, and prints the records of the rows it settles. Every row's record is printed by exactly one
process: rejected rows by `enqueue`, the others by the worker that settled them, which flushes a
row's record before Redis holds its end (see distributed.queue).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO, TextIO, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, AuthorizationError, RedisError, ResponseError

from sms_blaster import logs, metrics_output, preflight, run_parts, validity
from sms_blaster.assembly import SendingRun, open_campaign_input
from sms_blaster.background import cancel
from sms_blaster.distributed import campaign_meta, rate_cap, shared_flow
from sms_blaster.distributed import limiter as shared_limit
from sms_blaster.distributed import queue as work_queue
from sms_blaster.distributed.keys import CampaignKeys
from sms_blaster.distributed.limiter import RedisLimiter, Slot, sender_limit_name
from sms_blaster.distributed.lost import loss_found, never_seen
from sms_blaster.distributed.optouts import RedisOptOuts
from sms_blaster.distributed.outage import RedisGate, error_text
from sms_blaster.distributed.queue import CampaignQueue
from sms_blaster.distributed.rate_cap import RateCap
from sms_blaster.distributed.receipt_applier import ReceiptApplier
from sms_blaster.distributed.redis_client import (
    connect,
    explain,
    ping,
    unavailable,
    unreachable,
)
from sms_blaster.distributed.report import load_summary
from sms_blaster.distributed.row_prints import RowPrints
from sms_blaster.distributed.shared_flow import SharedFlow
from sms_blaster.distributed.timeline import TimelineRecorder, worker_settings
from sms_blaster.engine import Engine, RunControl, StopReason
from sms_blaster.errors import OutputError, UsageError
from sms_blaster.exit_status import code_of_exception
from sms_blaster.flow import FlowSettings
from sms_blaster.inputs import RowSource, stream_rows
from sms_blaster.journal.queries import CampaignSummary
from sms_blaster.models import Encoding, ErrorKind, Message, Outcome, Record, SendResult
from sms_blaster.optouts.screen import (
    OptOutScreen,
    load_screen,
    open_screen,
    watch_unsubscribed,
)
from sms_blaster.output import RecordTotals, RecordWriter
from sms_blaster.pool import parse_pool
from sms_blaster.pool_pacing import SENDER_SPACING, PoolScheduler, send_by_sender
from sms_blaster.prepare import Preparer
from sms_blaster.preparing import prepare_row
from sms_blaster.providers.base import Exchange, Provider
from sms_blaster.records_output import GroupFlush, open_output, output_mode
from sms_blaster.settings import DistributedSettings, RunSettings
from sms_blaster.transport.base import Transport
from sms_blaster.url_text import mask_password
from sms_blaster.work import PlainClaims, PrepaidClaims, first_record

if TYPE_CHECKING:
    from sms_blaster.html_report.model import CampaignView

log = logging.getLogger("sms_blaster.distributed")
T = TypeVar("T")

_ADD_BATCH = 500  # messages per enqueue script call


class _SharedLimit:
    """The Redis limiter with its errors as RedisUnavailable: the run stops, records kept."""

    __slots__ = ("_limiter",)

    def __init__(self, limiter: RedisLimiter) -> None:
        self._limiter = limiter

    async def acquire(self, cost: float = 1.0) -> None:
        await self.wait(await self.take(cost))

    async def take(self, cost: float = 1.0) -> Slot:
        try:
            return await self._limiter.take(cost)
        except RedisError as exc:
            raise unavailable("Redis (the shared rate limit)", exc) from exc

    async def wait(self, slot: Slot) -> None:
        try:
            await self._limiter.wait(slot)
        except RedisError as exc:
            raise unavailable("Redis (the shared rate limit)", exc) from exc

    def set_rate(self, rate_per_s: float) -> None:
        # The campaign's one controller set this pace in Redis already (see shared_flow).
        self._limiter.follow(rate_per_s)

    def pause_until(self, when_s: float) -> None:
        self._limiter.pause_until(when_s)

    def left_off_slot(self, cost: float = 1.0) -> None:
        # The schedule is the campaign's, in Redis, shared by every worker: one worker's send
        # that left late does not move it. Its requests passed by others still take new slots.
        return None


async def run_enqueue(
    settings: RunSettings,
    dist: DistributedSettings,
    *,
    stdout: BinaryIO,
    stderr: TextIO,
    stdin: BinaryIO | None = None,
) -> int:
    """Prepare INPUT into the campaign's stream; 0 when every row was queued, else 1."""
    preflight.check_sender(settings)
    preflight.check_region(settings.default_region)
    preflight.check_ttl_for_workers(settings)
    async with open_campaign_input(settings, stdin) as campaign:
        params = campaign.params
        redis = connect(dist.redis_url)
        try:
            await ping(redis, dist.redis_url)
            queue = CampaignQueue(redis, dist.campaign)
            # A campaign Redis lost is never enqueued again under its name: its rows sent are
            # in no ledger any more, and would all be sent again.
            lost = await loss_found(redis, queue.keys)
            if lost is not None:
                raise lost
            # Every check that may refuse the enqueue comes before its first write to Redis: a
            # refused enqueue leaves the campaign (its settings, rows and workers) as it was.
            wanted = campaign_meta.EnqueueSettings(
                campaign_id=params.campaign_id,
                # The provider is the workers' to choose (the first one's is the campaign's).
                fields={n: v for n, v in params.fields().items() if n != "provider"},
                pool=None if campaign.pool is None else campaign.pool.to_csv(),
                ttl_s=settings.ttl_s,
                quiet_hours=settings.quiet_hours or "",  # the campaign's window, for its workers
            )
            known = await campaign_meta.read(redis, queue.keys)
            campaign_meta.check_enqueue(dist.campaign, known, wanted)
            # Enqueueing more rows into a campaign appends to the records of its refused rows.
            mode = output_mode(settings.output_path, bool(known), settings.force)
            prints = RowPrints(redis, queue.keys, campaign.source.name)
            a_file = await asyncio.to_thread(os.path.isfile, campaign.source.name)
            reread_lines = 0  # of an input read once, the lines an earlier enqueue read
            if known and a_file:
                # A changed file is refused before anything is written, not when its reader
                # gets there.
                await prints.check_file(settings)
            elif known:
                # Stdin or a pipe, read once: each batch is checked before it is queued, and
                # the settings are written only once the lines read before have passed (see
                # _add_rows), so a change refused at any of them leaves them as they were.
                reread_lines = await prints.kept_lines()
            lists = [RedisOptOuts(redis)]  # numbers out already are not queued
            screen = await load_screen(settings.optouts_path, settings.default_region, lists)
            settle = functools.partial(_keep_settings, redis, queue, wanted)
            with open_output(settings.output_path, stdout, mode) as out:
                if reread_lines:
                    await queue.ensure_group()  # there already: the campaign has rows
                    campaign_id = known.get("campaign_id") or params.campaign_id
                    preparer = campaign.preparer(settings, campaign_id)
                else:
                    preparer = campaign.preparer(settings, await settle())
                    await queue.ensure_group()
                tally = RecordTotals()
                writer = RecordWriter(out, tally)
                added, again, rows = await _add_rows(
                    queue,
                    prints,
                    preparer,
                    campaign.source,
                    writer,
                    screen,
                    settle=_Deferred(settle, reread_lines) if reread_lines else None,
                )
                if settings.output_path is None:
                    writer.flush()
                else:
                    writer.close()
            await campaign_meta.finished(redis, queue.keys)
            if writer.error is not None:  # every row is queued all the same: workers go on
                what = settings.output_path or "stdout"
                raise OutputError(
                    f"cannot write the records ({what}: {writer.error.strerror}); the rows "
                    "were queued, the records of those refused are lost"
                )
        except RedisError as exc:
            raise unavailable(f"--redis {mask_password(dist.redis_url)}", exc) from exc
        finally:
            await redis.aclose()
    refused = tally.rows
    logs.say(
        stderr,
        f"sms-blaster: campaign '{dist.campaign}': {rows:,} rows read, {added:,} messages queued"
        + (f", {again:,} queued by an earlier enqueue" if again else "")
        + f", {refused:,} not to be sent (records on stdout)",
        campaign=dist.campaign,
        rows=rows,
        queued=added,
        queued_earlier=again,
        refused=refused,
    )
    return 0 if tally.all_good else 1


def _with_enqueued_ttl(settings: RunSettings, name: str, meta: Mapping[str, Any]) -> RunSettings:
    """The worker's settings with the campaign's --ttl, refused (exit 2, before anything is
    sent) when the worker's provider cannot take it."""
    if not meta.get(campaign_meta.TTL_FIELD):
        return settings
    ttl_s = int(meta[campaign_meta.TTL_FIELD])
    problem = validity.BOUNDS[settings.provider].problem(ttl_s)
    if problem is not None:
        raise UsageError(
            f"campaign '{name}' was enqueued with --ttl {validity.duration_text(ttl_s)}: "
            f"{problem} in an `enqueue` of the campaign, or use another --provider"
        )
    return dataclasses.replace(settings, ttl_s=ttl_s)


async def _keep_settings(
    redis: aioredis.Redis, queue: CampaignQueue, wanted: campaign_meta.EnqueueSettings
) -> str:
    """Write the enqueue's settings into its campaign's meta; the campaign's id."""
    kept = await campaign_meta.keep(redis, queue.keys, wanted)
    if kept.window_changed:  # those put off under the old one are judged again
        await queue.release_delayed()
    return kept.campaign_id


@dataclasses.dataclass(frozen=True, slots=True)
class _Deferred:
    """The settings' write of an enqueue that reads a known campaign's input once (stdin, a
    pipe), put off until the lines an earlier enqueue read have passed their check: a changed
    row among them is refused with the settings, and the "enqueue finished" marker, as they
    were. The rows before it are rows read before, unchanged: already queued when that marker
    is set, else queued again as the earlier enqueue would have."""

    keep: Callable[[], Awaitable[str]]
    after_line: int  # the last line read before: a row past it is new


async def _add_rows(
    queue: CampaignQueue,
    prints: RowPrints,
    preparer: Preparer,
    source: RowSource,
    writer: RecordWriter,
    screen: OptOutScreen | None = None,
    *,
    settle: _Deferred | None = None,
) -> tuple[int, int, int]:
    """(messages added, messages added by an earlier enqueue, rows read). With `settle`, the
    settings are written before the first new row is queued, or at the end."""
    added = again = rows = 0
    pending: list[Message] = []

    async def flush() -> None:
        nonlocal added, again
        if pending:
            new = await queue.add(pending)
            added, again = added + new, again + len(pending) - new
            pending.clear()

    async for batch in stream_rows(source):
        if settle is not None and batch and batch[-1].line > settle.after_line:
            await prints.check(batch)  # its rows read before: checked before the write
            await settle.keep()
            settle = None
        await prints.keep(batch)  # a changed row is refused before its batch is queued
        for row in batch:
            rows += 1
            item = prepare_row(preparer, row)
            if screen is not None and isinstance(item, Message):
                item = screen(item) or item
            if isinstance(item, Record):
                if await queue.record(item):  # printed once, by the first enqueue
                    writer.emit(item)
            else:
                pending.append(item)
                if len(pending) >= _ADD_BATCH:
                    await flush()
    if settle is not None:  # no new rows
        await settle.keep()
    await flush()
    return added, again, rows


class _SettledRowsSink:
    """The worker's sink: passes on the records of rows this worker settled. A row a stop handed
    back to the queue is not settled (another worker sends it), so it has no record here."""

    __slots__ = ("released", "writer")

    def __init__(self) -> None:
        self.writer: RecordWriter | None = None
        self.released = 0

    def passing_to(self, writer: RecordWriter) -> _SettledRowsSink:
        """This sink, passing the records on to `writer`."""
        self.writer = writer
        return self

    def emit(self, record: Record) -> None:
        if record.error is not None and record.error.kind is ErrorKind.STOPPED:
            self.released += 1
            return
        assert self.writer is not None, "passing_to() first"
        self.writer.emit(record)


async def run_worker(
    settings: RunSettings,
    dist: DistributedSettings,
    *,
    stdout: BinaryIO,
    stderr: TextIO,
    stderr_is_tty: bool = False,
) -> int:
    """Send the campaign's messages until it is drained (or forever with --follow)."""
    preflight.check_endpoint(settings)
    metrics = metrics_output.open_output(settings, stderr)
    working = _connected(settings, dist, metrics, stdout, stderr, stderr_is_tty)
    return await metrics_output.published(metrics, working)


async def _connected(
    settings: RunSettings,
    dist: DistributedSettings,
    metrics: metrics_output.MetricsOutput | None,
    stdout: BinaryIO,
    stderr: TextIO,
    stderr_is_tty: bool,
) -> int:
    # Every window place may wait on Redis at once (claims, the limit, the ledger).
    redis = connect(dist.redis_url, settings.effective_window + 8, fail_fast=dist.redis_grace_s > 0)
    try:
        await _first_answer(redis, dist, stderr)
        return await _work(settings, dist, redis, metrics, stdout, stderr, stderr_is_tty)
    except RedisError as exc:
        raise unavailable(f"--redis {mask_password(dist.redis_url)}", exc) from exc
    finally:
        await redis.aclose()


_FIRST_LOOK_S = 0.05  # how soon a worker Redis did not answer at its start looks again (doubling)
_MOST_LOOK_S = 1.0


async def _first_answer(redis: aioredis.Redis, dist: DistributedSettings, stderr: TextIO) -> None:
    """Return once Redis answers. A worker started while Redis restarts or fails over waits for
    it up to --redis-grace, as a running worker would (workers are started again by the same
    unit that restarts Redis); one that cannot log in, or past the grace, is refused (exit 4)."""
    until_s = time.monotonic() + dist.redis_grace_s
    delay_s = _FIRST_LOOK_S
    waiting = False
    while True:
        try:
            await redis.ping()
        except (AuthenticationError, AuthorizationError, ResponseError) as exc:
            raise unreachable(dist.redis_url, exc) from exc  # a fix to make: said at once
        except (RedisError, OSError) as exc:  # refused, loading, no answer: away
            left_s = until_s - time.monotonic()
            if left_s <= 0:
                raise unreachable(dist.redis_url, exc) from exc
            if not waiting:
                waiting = True
                logs.say(
                    stderr,
                    f"sms-blaster: Redis does not answer ({error_text(exc)}); waiting up to "
                    f"{dist.redis_grace_s:g} s for it (--redis-grace)",
                    logs.Level.WARNING,
                    flush=True,
                )
            await asyncio.sleep(min(delay_s, left_s))  # another process: no event to wait on
            delay_s = min(delay_s * 2, _MOST_LOOK_S)
            continue
        if waiting:
            logs.say(stderr, "sms-blaster: Redis answers", logs.Level.WARNING, flush=True)
        return


_ENQUEUED_LOOK_S = 1.0  # how often a --follow worker looks for its campaign's first enqueue


async def _until_enqueued(
    redis: aioredis.Redis, keys: CampaignKeys, where: str, stderr: TextIO
) -> Any:
    """The campaign's settings, once its first `enqueue` wrote them: a `--follow` worker is a
    service, often started before the campaign's rows exist (a unit that starts at boot, the
    export later); it waits for them, as it waits for rows enqueued later. A signal ends the
    wait (nothing was sent)."""
    logs.say(
        stderr,
        f"sms-blaster: no campaign '{keys.name}' at {where} yet: waiting for its enqueue "
        "(--follow)",
        logs.Level.WARNING,
        flush=True,
    )
    while True:
        await asyncio.sleep(_ENQUEUED_LOOK_S)  # another process's write: no event to wait on
        meta: Any = await redis.hgetall(keys.meta)
        if meta.get("campaign_id"):
            return meta
        lost = await loss_found(redis, keys)
        if lost is not None:
            raise lost


async def _work(
    settings: RunSettings,
    dist: DistributedSettings,
    redis: aioredis.Redis,
    metrics: metrics_output.MetricsOutput | None,
    stdout: BinaryIO,
    stderr: TextIO,
    stderr_is_tty: bool,
) -> int:
    name = dist.campaign
    control = RunControl()
    worker = dist.worker or f"{socket.gethostname()}-{os.getpid()}"
    gate = RedisGate(
        dist.redis_grace_s,
        redis.ping,
        say=lambda line: logs.say(stderr, line, logs.Level.WARNING, flush=True),
        on_give_up=lambda detail: control.stop(StopReason.JOURNAL, detail),
        stopped=control.wait,
    )
    queue = CampaignQueue(
        redis,
        name,
        worker=worker,
        lease_s=dist.lease_s,
        retry_unknown=settings.retry_unknown,
        follow=dist.follow,
        stopping=lambda: control.stopping,
        on_error=lambda message: control.stop(StopReason.JOURNAL, message),
        gate=gate,
    )
    meta: Any = await redis.hgetall(queue.keys.meta)  # str keys: decode_responses
    lost = await loss_found(redis, queue.keys)
    if lost is not None:
        raise lost
    if not meta.get("campaign_id"):
        if not dist.follow:
            raise UsageError(never_seen(name, mask_password(dist.redis_url)))
        meta = await _until_enqueued(redis, queue.keys, mask_password(dist.redis_url), stderr)
    queue.know(meta)
    settings = _with_enqueued_ttl(settings, name, meta)
    await queue.follow_window()  # the campaign's, checked by its enqueue
    provider = run_parts.provider(settings, str(meta["sender"]))
    if meta.get("provider"):  # the first worker chose it: the campaign's answers are its API's
        campaign_meta.check_same(name, meta, {"provider": provider.name}, "sent by workers")
    await queue.ensure_group()
    await redis.hset(queue.keys.meta, "provider", provider.name)
    window = settings.effective_window
    await _warm_up(redis, window)
    # The campaign keeps to the smallest --rate of its workers (see distributed.rate_cap).
    campaign_cap = RateCap(
        redis, name, worker, settings.rate_per_s, lease_s=dist.lease_s, gate=gate
    )
    campaign_rate = await campaign_cap.join(
        lambda line: logs.say(stderr, line, logs.Level.WARNING, flush=True)
    )
    settings = dataclasses.replace(settings, rate_per_s=campaign_rate)
    queue.take_over_after(lambda: campaign_cap.takeover_lease_s)
    limiter = RedisLimiter(
        redis, queue.keys.limit, settings.rate_per_s, sleep=control.sleep, gate=gate
    )
    await limiter.start()
    recorder = TimelineRecorder(redis, queue.keys, worker, skip=lambda: gate.down or gate.gone)
    async with contextlib.AsyncExitStack() as stack:
        # Last out: an exception that ends the run, in it or in closing its parts, is how the
        # timeline says it ended (see `_ended` for the other ways out).
        stack.push_async_exit(functools.partial(_ended_by, recorder))
        # Redis's opt-out list, followed while sending (and --optouts PATH besides).
        screen = await stack.enter_async_context(
            open_screen(settings.optouts_path, settings.default_region, [RedisOptOuts(redis)])
        )
        watch = watch_unsubscribed(screen, settings)
        # Appended to: workers of one campaign come and go, each adding the rows it settles.
        out = stack.enter_context(open_output(settings.output_path, stdout, "ab"))
        transport = run_parts.transport(settings, window, stderr)
        stack.push_async_callback(transport.close)
        flow = None
        if run_parts.flow(settings, window) is not None:  # adaptive: the campaign's one controller
            flow_settings = FlowSettings(settings.rate_per_s, window)
            flow = SharedFlow(redis, name, worker, limiter, flow_settings, gate=gate)
            await flow.start()
            stack.push_async_callback(flow.close)
        shared = _SharedLimit(limiter)
        pool = None
        if meta.get("pool"):
            pool = await _pool_scheduler(
                settings, redis, queue, str(meta["pool"]), transport, control, gate
            )
        sink = _SettledRowsSink()
        run = SendingRun(
            settings,
            out=out,
            stderr=stderr,
            stderr_is_tty=stderr_is_tty,
            control=control,
            send=functools.partial(transport.send, provider) if pool is None else pool.send,
            cost=provider.cost,
            limiter=shared,
            ledger=queue,
            flow=flow,
            sink=lambda writer: watch(recorder.tapping(sink.passing_to(writer))),
            # Quiet hours judged again just before a row leaves (see queue.held_record).
            screen=(
                first_record(queue.held_record, screen)
                if pool is None
                else pool.screened(first_record(queue.held_record, screen))
            ),
        )
        if metrics is not None:
            metrics.start(run.snapshot, {"campaign": name, "worker": worker})
        # A row's record is out before its end reaches Redis (see distributed.queue).
        queue.write_records_first(GroupFlush(functools.partial(_flushed, run.writer)).wait)
        queue.start()
        applying = asyncio.create_task(_apply_receipts(ReceiptApplier(redis, worker), gate))
        stack.push_async_callback(cancel, applying)
        stack.push_async_callback(campaign_cap.leave)
        following = campaign_cap.run(campaign_rate, functools.partial(_lowered, limiter, stderr))
        stack.push_async_callback(cancel, asyncio.create_task(following))
        await recorder.start(run.snapshot, worker_settings(settings, dist))
        stack.push_async_callback(cancel, asyncio.create_task(recorder.run()))
        logs.say(
            stderr,
            f"sms-blaster: worker {worker} on campaign '{name}' "
            f"({settings.rate_per_s:g}/s for all workers, window {window})",
            worker=worker,
            campaign=name,
            rate_per_s=settings.rate_per_s,
            window=window,
        )
        work: PrepaidClaims | PoolScheduler
        if pool is None:
            work = PrepaidClaims(queue, shared, control, _claim_cost(provider, meta))
        else:  # each message pays its global slot when its sender's turn came
            work = pool.over(PlainClaims(queue, control))
        aborted = False
        try:
            claims_then_writes = _claims_then_writes(run.engine, work, queue, gate, control)
            aborted = await run.run(claims_then_writes)
            # The run is over: the stop signals are ignored from here on, so nothing may wait
            # for a lost Redis any more (after a second signal, writes waiting for it fail).
            gate.abandon()
            # The rows put off in Redis (by this worker or an earlier one) for the summary.
            waiting = None if queue.quiet is None else await _waiting(queue)
        finally:
            gate.abandon()
            await queue.close()
            await limiter.close()
            await gate.close()
            await queue.check_kept()
        run.close_records(settings.output_path)
    if queue.lost is not None and queue.lost != control.detail:
        # Stopped for another reason (a full Redis that evicted the campaign's keys): the loss
        # and its advice are said as well, before the line of that reason.
        logs.say(stderr, f"sms-blaster: {queue.lost}", logs.Level.ERROR)
    notes = []
    never_sent, ends_left = queue.left
    if queue.lost is not None:  # nothing was handed back nor taken over: the Error line says
        if sink.released:
            notes.append(f"  {sink.released:,} claimed messages not sent (no record)")
    else:
        if sink.released > never_sent:
            notes.append(
                f"  {sink.released - never_sent:,} claimed messages handed back unsent (stopped)"
            )
        if never_sent:
            notes.append(
                f"  {never_sent:,} claimed messages never sent not handed back (Redis did not "
                "answer): another worker takes them over after --lease and records them "
                "'unknown' (worker_lost), though no request left"
            )
    if waiting is not None and queue.quiet and (held := queue.quiet.summary_line(waiting=waiting)):
        notes.append(held)
    if queue.dropped:
        notes.append(
            f"  {queue.dropped:,} claimed messages not sent: another worker took them over after "
            "--lease (this worker was held up past it) and records them"
        )
    if queue.taken_first:
        notes.append(
            f"  {queue.taken_first:,} rows taken over by another worker after --lease before "
            "their end was written here (this worker or Redis held up past it): that worker "
            "recorded them too ('unknown', worker_lost); Redis holds its record"
        )
    if (unwritten := queue.unwritten + ends_left) and queue.lost is None:
        notes.append(
            f"  {unwritten:,} rows' ends not written to Redis: another worker takes them "
            "over after --lease (one whose request may have left is recorded 'unknown')"
        )
    run.summary(notes=notes)
    return await _ended(recorder, run, aborted)


def _lowered(limiter: RedisLimiter, stderr: TextIO, rate_per_s: float) -> None:
    """A worker started since with a smaller --rate lowered the campaign's: kept to from now."""
    limiter.cap(rate_per_s)
    logs.say(
        stderr,
        f"sms-blaster: a worker of the campaign started with --rate {rate_per_s:g}/s: the "
        f"campaign keeps to the smallest --rate of its workers, {rate_per_s:g}/s for all of them "
        "together, from now on",
        logs.Level.WARNING,
        flush=True,
    )


async def _ended_by(
    recorder: TimelineRecorder,
    exc_type: type[BaseException] | None,
    exc: BaseException | None,
    traceback: TracebackType | None,
) -> bool:
    """Keep in the timeline the code of the exception that ends the run, if one does (nothing
    before the recorder started); the exception goes on."""
    if exc is not None:
        await recorder.finish(code_of_exception(exc))
    return False


async def _ended(recorder: TimelineRecorder, run: SendingRun, aborted: bool) -> int:
    """The run's exit code (or the error that says why it stopped), kept in its timeline."""
    try:
        code = run.exit_code(aborted, None, hands_back=True)
    except BaseException as exc:
        await recorder.finish(code_of_exception(exc))
        raise
    await recorder.finish(code)
    return code


async def _waiting(queue: CampaignQueue) -> tuple[int, list[float]] | None:
    try:
        return await queue.waiting()
    except RedisError:
        return None  # Redis is gone: the summary says nothing of them


async def _claims_then_writes(
    engine: Engine,
    claims: PrepaidClaims | PoolScheduler,
    queue: CampaignQueue,
    gate: RedisGate,
    control: RunControl,
) -> None:
    """Send, then wait for the rows' ends to be written while a second signal can still abort
    (a lost Redis may hold them for up to --redis-grace). Past the grace, look for Redis until
    the lease of the messages held runs out (another --redis-grace at most), to hand back those
    never sent and write the ends left; a stop signal ends that look at once."""
    if isinstance(claims, PoolScheduler):
        await claims.run(engine)
    else:
        await engine.run(claims)
    await queue.writes_done()
    never_sent, ends = queue.left
    if gate.gone and (never_sent or ends):
        look_s = queue.hand_back_s(gate.grace_s)
        log.warning(
            "Redis gone past --redis-grace: %d claimed messages never sent and %d rows' ends "
            "wait for it %.0f s more, until their --lease runs out (a stop signal ends the wait)",
            never_sent,
            ends,
            look_s,
        )
        await queue.hand_back(control.signalled, look_s)


async def _pool_scheduler(
    settings: RunSettings,
    redis: aioredis.Redis,
    queue: CampaignQueue,
    pool_text: str,
    transport: Transport,
    control: RunControl,
    gate: RedisGate,
) -> PoolScheduler:
    """The pacing of a pool's senders for a worker: in this worker, each sender's messages wait
    for its turn in a look-ahead (as in `send`); across workers, each sender takes its slots
    from its own schedule in Redis beside the global one, so all workers together keep it at
    its rate."""
    pool = parse_pool(pool_text.splitlines(), f"campaign '{queue.keys.name}' pool")
    providers = {
        member.sender: run_parts.provider(settings, member.sender) for member in pool.senders
    }
    limits = {}
    for member in pool.senders:
        # The sender's pace a little under its rate, as in `send`: a strict provider's clock
        # must not see two of its requests closer than its interval.
        limit = RedisLimiter(
            redis, sender_limit_name(queue.keys.limit, member.sender),
            member.rate_per_s / SENDER_SPACING, sleep=control.sleep, gate=gate,
        )  # fmt: skip
        await limit.start()
        limits[member.sender] = limit
    members = pool.by_sender
    send_one = send_by_sender(providers, transport.send)

    async def send_in_turn(message: Message) -> Exchange:
        assert message.sender is not None
        try:
            await limits[message.sender].acquire(members[message.sender].cost(message.segments))
        except RedisError as exc:  # no request left: a transient failure, retried
            return Exchange(SendResult(Outcome.TRANSIENT, "redis", f"sender's limit: {exc}"), 0.0)
        left_s = time.monotonic()  # after the wait for the sender's slot: when it left
        return dataclasses.replace(await send_one(message), left_s=left_s)

    window = settings.effective_window
    return PoolScheduler(
        pool, send_in_turn, control, lookahead=max(run_parts.POOL_LOOKAHEAD, 4 * window)
    )


async def load_report(redis_url: str, campaign: str) -> CampaignSummary:
    """The summary of a distributed campaign (receipts waiting are applied first)."""
    return await _read_campaign(redis_url, campaign, load_summary)


async def load_page(redis_url: str, campaign: str) -> CampaignView:
    """The HTML page's view of a distributed campaign (receipts waiting are applied first)."""
    from sms_blaster.distributed.report_view import load_view

    return await _read_campaign(redis_url, campaign, load_view)


async def _read_campaign(
    redis_url: str, campaign: str, load: Callable[[aioredis.Redis, str, str], Awaitable[T]]
) -> T:
    redis = connect(redis_url)
    try:
        await ping(redis, redis_url)
        keys = CampaignKeys(campaign)
        if not await redis.hexists(keys.meta, "campaign_id"):  # never enqueued, or lost
            lost = await loss_found(redis, keys)
            if lost is not None:
                raise lost
        return await load(redis, campaign, mask_password(redis_url))
    except RedisError as exc:
        raise unavailable(f"--redis {mask_password(redis_url)}", exc) from exc
    finally:
        await redis.aclose()


async def _apply_receipts(applier: ReceiptApplier, gate: RedisGate) -> None:
    """Apply receipts as `receive --redis` stores them, for as long as the worker runs."""
    await gate.call(applier.ensure_group)
    while True:
        try:
            # Applying a receipt twice changes nothing, so a batch cut by an outage is redone.
            await gate.call(lambda: applier.apply_waiting(block_ms=1000))
        except RedisError as exc:  # the sending goes on; the next worker or report applies them
            if not gate.gone:  # past the grace the run stops, and says why
                log.error("could not apply receipts: %s", explain(exc))
            await asyncio.sleep(5)


def _flushed(writer: RecordWriter) -> bool:
    """Flush the records written so far; False when they could not be written."""
    writer.flush()
    return writer.error is None


def _claim_cost(provider: Provider, meta: dict[str, Any]) -> float:
    """What a worker reserves before it claims: the cost of the campaign's longest message, so
    the slot taken covers the whole send (a provider counting segments) and sends never
    bunch. A shorter message leaves part of its slot unused."""
    segments = int(meta.get("segments_max") or 1)
    longest = Message(0, "", "", Encoding.GSM7, segments, "")
    return provider.cost(longest)


async def _warm_up(redis: aioredis.Redis, window: int) -> None:
    """Open a connection for every window place and load the scripts before the first send: set
    up on the way, they would make the first sends late for their rate slots and leave together,
    a burst the provider counts."""
    await asyncio.gather(*(redis.ping() for _ in range(window)))
    for script in (
        *work_queue.SCRIPTS,
        *shared_limit.SCRIPTS,
        *shared_flow.SCRIPTS,
        *rate_cap.SCRIPTS,
    ):
        await redis.script_load(script)
