"""`enqueue` and `worker`: one campaign sent by any number of processes, on any number of hosts.

`enqueue` prepares rows exactly as `send` does (the same checks, the same records for rows that
will not be sent) and adds the rest to the campaign's stream; run again, it adds only rows it has
not added before. `worker` sends what it claims from the stream with the same engine as `send`
(window, adaptive flow control, classification, retries) under the campaign's one global rate
limit, and prints the records of the rows it settles. Every row's record is printed by exactly one
process: rejected rows by `enqueue`, the others by the worker that settled them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
from typing import Any, BinaryIO, TextIO

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from sms_blaster import checks, running
from sms_blaster.distributed import keys as k
from sms_blaster.distributed import limiter as shared_limit
from sms_blaster.distributed import queue as work_queue
from sms_blaster.distributed import shared_flow
from sms_blaster.distributed.limiter import RedisLimiter, Slot
from sms_blaster.distributed.outage import RedisGate
from sms_blaster.distributed.queue import CampaignQueue
from sms_blaster.distributed.receipt_applier import ReceiptApplier
from sms_blaster.distributed.redis_client import connect, mask_password, ping, unavailable
from sms_blaster.distributed.report import load_summary
from sms_blaster.distributed.shared_flow import SharedFlow
from sms_blaster.engine import Engine, EngineConfig, RunControl, StopReason
from sms_blaster.errors import JournalError, OutputError, UsageError
from sms_blaster.flow import FlowSettings
from sms_blaster.guards import load_suppressed
from sms_blaster.inputs import open_input_off_loop, stream_rows
from sms_blaster.journal.queries import CampaignSummary
from sms_blaster.models import Encoding, ErrorKind, Message, Record, RowError, Status
from sms_blaster.output import Progress, RecordWriter, Tally, summary_lines
from sms_blaster.prepare import Preparer
from sms_blaster.providers import registry
from sms_blaster.providers.base import Provider, send
from sms_blaster.settings import DistributedSettings, SendSettings

log = logging.getLogger("sms_blaster.distributed")

_ADD_BATCH = 500  # messages per enqueue script call

# What `enqueue` records about a campaign; a later enqueue must agree on all of these.
_CHECKED = {
    "input": "input",
    "text": "--text",
    "sender": "--from",
    "to_column": "--to-column",
    "default_region": "--default-region",
}


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


async def run_enqueue(
    settings: SendSettings,
    dist: DistributedSettings,
    *,
    stdout: BinaryIO,
    stderr: TextIO,
    stdin: BinaryIO | None = None,
) -> int:
    """Prepare INPUT into the campaign's stream; 0 when every row was queued, else 1."""
    sender = checks.check_sender(settings)
    checks.check_region(settings.default_region)
    source = await open_input_off_loop(
        settings.input_path, settings.input_format, settings.input_encoding, stdin
    )
    with contextlib.closing(source):
        checks.check_output(settings, source)
        to_column = checks.number_column(settings, source)
        template = checks.message_template(settings, source)
        params = checks.campaign_params(settings, source, sender, to_column)
        suppressed = load_suppressed(settings.suppress_path, settings.default_region)
        redis = connect(dist.redis_url)
        try:
            await ping(redis, dist.redis_url)
            queue = CampaignQueue(redis, dist.campaign)
            # Enqueueing more rows into a campaign appends to the records of its refused rows.
            resuming = bool(await redis.exists(queue.keys.meta))
            mode = running.output_mode(settings.output_path, resuming, settings.force)
            campaign_id = await _register(redis, queue, params.campaign_id, {
                "input": params.input,
                "sender": sender,
                "text": settings.text or "",
                "to_column": to_column,
                "default_region": settings.default_region or "",
            })  # fmt: skip
            await queue.ensure_group()
            preparer = Preparer(
                to_column=to_column,
                template=template,
                campaign=campaign_id,
                default_region=settings.default_region,
                max_segments=settings.max_segments,
                suppressed=suppressed,
            )
            tally = Tally()
            with running.open_output(settings.output_path, stdout, mode) as out:
                writer = RecordWriter(out, tally)
                added, again, rows = await _add_rows(queue, preparer, source, writer)
                if settings.output_path is None:
                    writer.flush()
                else:
                    writer.close()
            await redis.hset(queue.keys.meta, "done", "1")
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
    print(
        f"sms-blaster: campaign '{dist.campaign}': {rows:,} rows read, {added:,} messages queued"
        + (f", {again:,} queued by an earlier enqueue" if again else "")
        + f", {refused:,} not to be sent (records on stdout)",
        file=stderr,
    )
    return 0 if tally.all_good else 1


async def _register(
    redis: aioredis.Redis, queue: CampaignQueue, campaign_id: str, fields: dict[str, str]
) -> str:
    """Record the campaign's settings, or check them against an earlier enqueue; its id."""
    meta = queue.keys.meta
    created = await redis.hsetnx(meta, "campaign_id", campaign_id)
    if created:
        mapping: dict[Any, Any] = {**fields, "created_at": str(time.time()), "done": "0"}
        await redis.hset(meta, mapping=mapping)
    else:
        known = await redis.hgetall(meta)
        for field, option in _CHECKED.items():
            if known.get(field, "") != fields[field]:
                raise JournalError(
                    f"campaign '{queue.keys.name}' was enqueued with another {option} "
                    f"({known.get(field, '')!r}, now {fields[field]!r}); "
                    "give a new --campaign NAME for a different campaign"
                )
        campaign_id = str(known["campaign_id"])
        await redis.hset(meta, "done", "0")
    await redis.hset(k.CAMPAIGNS, campaign_id, queue.keys.name)
    return campaign_id


async def _add_rows(
    queue: CampaignQueue, preparer: Preparer, source: object, writer: RecordWriter
) -> tuple[int, int, int]:
    """(messages added, messages added by an earlier enqueue, rows read)."""
    added = again = rows = 0
    pending: list[Message] = []

    async def flush() -> None:
        nonlocal added, again
        if pending:
            new = await queue.add(pending)
            added, again = added + new, again + len(pending) - new
            pending.clear()

    async for batch in stream_rows(source):  # type: ignore[arg-type]
        for row in batch:
            rows += 1
            try:
                item = preparer.prepare(row)
            except Exception as exc:  # a bad row is a record with a reason, never a crash
                error = RowError(ErrorKind.INVALID_INPUT, "unreadable_row", repr(exc))
                item = Record(row.line, preparer.raw_to(row), Status.FAILED,
                              preparer.client_ref(row.line), error=error)  # fmt: skip
            if isinstance(item, Record):
                if await queue.record(item):  # printed once, by the first enqueue
                    writer.emit(item)
            else:
                pending.append(item)
                if len(pending) >= _ADD_BATCH:
                    await flush()
    await flush()
    return added, again, rows


class _Settled:
    """The worker's sink: records of rows this worker settled. A row a stop handed back to the
    queue is not settled (another worker sends it), so it has no record here."""

    __slots__ = ("released", "writer")

    def __init__(self, writer: RecordWriter) -> None:
        self.writer = writer
        self.released = 0

    def emit(self, record: Record) -> None:
        if record.error is not None and record.error.kind is ErrorKind.STOPPED:
            self.released += 1
            return
        self.writer.emit(record)


async def run_worker(
    settings: SendSettings,
    dist: DistributedSettings,
    *,
    stdout: BinaryIO,
    stderr: TextIO,
    stderr_is_tty: bool = False,
) -> int:
    """Send the campaign's messages until it is drained (or forever with --follow)."""
    base_url, credentials = checks.check_endpoint(settings)
    # Every window place may wait on Redis at once (claims, the limit, the ledger).
    redis = connect(dist.redis_url, settings.effective_window + 8, fail_fast=dist.redis_grace_s > 0)
    try:
        await ping(redis, dist.redis_url)
        return await _work(settings, dist, redis, base_url, credentials, stdout, stderr,
                           stderr_is_tty)  # fmt: skip
    except RedisError as exc:
        raise unavailable(f"--redis {mask_password(dist.redis_url)}", exc) from exc
    finally:
        await redis.aclose()


async def _work(
    settings: SendSettings,
    dist: DistributedSettings,
    redis: aioredis.Redis,
    base_url: str,
    credentials: registry.Credentials,
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
        say=lambda line: print(line, file=stderr, flush=True),
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
    if not meta:
        raise UsageError(
            f"no campaign '{name}' at {mask_password(dist.redis_url)}: run "
            f"`sms-blaster enqueue INPUT --redis URL --campaign {name}` first"
        )
    provider = registry.make_provider(
        settings.provider,
        sender=str(meta["sender"]),
        base_url=base_url,
        credentials=credentials,
        callback_url=settings.callback_url,
    )
    await queue.ensure_group()
    await redis.hset(queue.keys.meta, "provider", provider.name)
    window = settings.effective_window
    await _warm_up(redis, window)
    limiter = RedisLimiter(
        redis, queue.keys.limit, settings.rate_per_s, sleep=control.sleep, gate=gate
    )
    await limiter.start()
    tally = Tally()
    async with contextlib.AsyncExitStack() as stack:
        # Appended to: workers of one campaign come and go, each adding the rows it settles.
        out = stack.enter_context(running.open_output(settings.output_path, stdout, "ab"))
        session = await stack.enter_async_context(running.session(window, settings.timeout_s))
        writer = RecordWriter(
            out, tally, running.on_output_error(control, settings.output_path, stderr)
        )
        sink = _Settled(writer)
        flow = None
        if running.flow(settings, window) is not None:  # adaptive: the campaign's one controller
            flow_settings = FlowSettings(settings.rate_per_s, window)
            flow = SharedFlow(redis, name, worker, limiter, flow_settings, gate=gate)
            await flow.start()
            stack.push_async_callback(flow.close)
        engine = Engine(
            send=functools.partial(send, session, provider),
            limiter=_SharedLimit(limiter),
            sink=sink,
            config=EngineConfig(window, running.policy(settings)),
            cost=provider.cost,
            claim_cost=_claim_cost(provider, meta),
            control=control,
            ledger=queue,
            breaker=running.breaker(settings),
            flow=flow,
        )
        progress = Progress(
            stderr,
            running.progress_mode(settings.progress, stderr_is_tty),
            tally,
            writer.flush,
            live=lambda: running.live(engine),
        )
        queue.start()
        applying = asyncio.create_task(_apply_receipts(ReceiptApplier(redis, worker), gate))
        stack.push_async_callback(running.cancel, applying)
        print(
            f"sms-blaster: worker {worker} on campaign '{name}' "
            f"({settings.rate_per_s:g}/s for all workers, window {window})",
            file=stderr,
        )
        aborted = False
        try:
            aborted = await running.run_with_signals(
                engine, _claims_then_writes(engine, queue), progress, stderr
            )
        finally:
            if aborted:  # a second signal: writes waiting for a lost Redis wait no more
                gate.abandon()
            await queue.close()
            await limiter.close()
            await gate.close()
        if settings.output_path is None:
            writer.flush()
        else:
            writer.close()  # a full disk may show only at the last write
        progress.clear()
    elapsed_s = progress.elapsed_s
    sent = tally.by_status[Status.SENT]
    lines = summary_lines(tally, elapsed_s, sent / elapsed_s if elapsed_s else 0.0)
    if sink.released:
        lines.append(f"  {sink.released:,} claimed messages handed back unsent (stopped)")
    if queue.unwritten:
        lines.append(
            f"  {queue.unwritten:,} rows' ends not written to Redis: another worker takes them "
            "over after --lease (one whose request may have left is recorded 'unknown')"
        )
    if (flow_line := running.flow_line(engine)) is not None:
        lines.append(flow_line)
    for line in lines:
        print(line, file=stderr)
    return running.exit_code(control, aborted, tally.all_good, None, stderr)


async def _claims_then_writes(engine: Engine, queue: CampaignQueue) -> None:
    """Send, then wait for the rows' ends to be written while a second signal can still abort
    (a lost Redis may hold them for up to --redis-grace)."""
    await engine.run_claims(queue)
    await queue.writes_done()


async def load_report(redis_url: str, campaign: str) -> CampaignSummary:
    """The summary of a distributed campaign (receipts waiting are applied first)."""
    redis = connect(redis_url)
    try:
        await ping(redis, redis_url)
        return await load_summary(redis, campaign, mask_password(redis_url))
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
                log.error("could not apply receipts: %s", exc)
            await asyncio.sleep(5)


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
    for script in (*work_queue.SCRIPTS, *shared_limit.SCRIPTS, *shared_flow.SCRIPTS):
        await redis.script_load(script)
