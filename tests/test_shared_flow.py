"""One flow controller for all workers of a campaign: reports, the leader's lease, the shared
pace, Redis errors, and workers finding a limit together through the real CLI."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import re
import warnings
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from sms_blaster.distributed.limiter import RedisLimiter, limit_key
from sms_blaster.distributed.shared_flow import SharedFlow, lease_key, marks_key
from sms_blaster.flow import FlowSettings
from sms_blaster.models import Outcome
from tests.cli_helpers import run_cli, start_cli
from tests.test_distributed import (
    CAMPAIGN,
    campaign_csv,
    enqueue_args,
    records_of,
    simulator_with,
    worker_args,
)

NAME = "shared"
SETTINGS = FlowSettings(ceiling_rate_per_s=1000, max_window=32)


class Clock:
    """A monotonic clock a test moves by hand."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


@contextlib.asynccontextmanager
async def clients(redis_url: str, count: int) -> AsyncIterator[list[aioredis.Redis]]:
    opened = [aioredis.from_url(redis_url, decode_responses=True) for _ in range(count)]
    try:
        yield opened
    finally:
        for client in opened:
            await client.aclose()


async def started(client: aioredis.Redis, worker: str, clock: Clock) -> SharedFlow:
    """A worker's shared flow control, started, that ticks only when the test says so."""
    limiter = RedisLimiter(client, NAME, SETTINGS.ceiling_rate_per_s)
    await limiter.start()
    flow = SharedFlow(client, NAME, worker, limiter, SETTINGS, clock=clock)
    await flow.start(ticking=False)
    return flow


def throttled_second(flow: SharedFlow, clock: Clock) -> None:
    """200 answers sent over one second, every other one throttled."""
    start_s = clock.now_s
    for n in range(200):
        sent_at_s = start_s + n * 0.005
        outcome = Outcome.THROTTLED if n % 2 else Outcome.SENT
        flow.observe(outcome, sent_at_s, 0.01, sent_at_s + 0.01)
    clock.now_s = start_s + 2.0  # every answer is past the leader's lag


async def test_throttles_one_worker_reports_move_the_pace_another_worker_reads(
    redis_url: str,
) -> None:
    """A's answers, led by B's controller, reach worker C as the shared pace and estimate."""
    clock = Clock()
    async with clients(redis_url, 3) as (one, two, three):
        leader = await started(one, "leader", clock)
        reporter, reader = (
            await started(two, "reporter", clock),
            await started(three, "reader", clock),
        )
        before_s = reader.rate_per_s
        throttled_second(reporter, clock)
        await reporter.tick()
        await leader.tick()
        await reader.tick()
        stored = float(await one.hget(limit_key(NAME), "rate") or 0)
    assert reader.throttles == 100
    assert reader.known_limit_per_s is not None
    assert reader.rate_per_s == leader.rate_per_s == stored
    assert reader.rate_per_s != before_s


def answers_of_a_second(flow: SharedFlow, start_s: float, offset: int) -> None:
    """One worker's share of a second at 300/s: every third request of the campaign, the
    second half of the second throttled one time in two (a limit crossed midway)."""
    for n in range(offset, 300, 3):
        sent_at_s = start_s + n / 300
        throttled = n >= 150 and n % 2 == 1
        outcome = Outcome.THROTTLED if throttled else Outcome.SENT
        flow.observe(outcome, sent_at_s, 0.002, sent_at_s + 0.002)


async def test_the_leader_feeds_nothing_past_a_late_workers_report(redis_url: str) -> None:
    """Three workers share a second at 300/s whose second half is throttled one time in two.
    Each reports at 0.9 s what it had by then; then two report every 0.1 s, while the third,
    held up by a busy core, next reports at 1.35 s. Until then the leader feeds its controller
    nothing answered after 0.9 s (fed the others' later answers first, it would count the held
    worker's share of them as a gap, and cut on a count short of the limit); then all of it."""
    clock = Clock()
    async with clients(redis_url, 3) as connections:
        await connections[0].delete(lease_key(NAME), marks_key(NAME))
        flows = [await started(c, f"w{n}", clock) for n, c in enumerate(connections)]
        leader = next(flow for flow in flows if flow.leading)
        controller = leader._controller
        assert controller is not None
        for flow in flows:  # one clock (each measured Redis's at its own real moment)
            flow._offset_s = flows[0]._offset_s
        start_s = clock.now_s = clock.now_s + 0.01
        for offset, flow in enumerate(flows):
            answers_of_a_second(flow, start_s, offset)
        clock.now_s = start_s + 0.9
        later = []
        for flow in flows:  # each reports at 0.9 s the answers it had by then (90 of 100)
            answers = list(flow._buffer)
            flow._buffer.clear()
            flow._buffer.extend(answers[:90])
            await flow.tick()
            later.append(answers[90:])
        for flow, answers in zip(flows, later, strict=True):
            flow._buffer.extend(answers)  # the rest, answered since
        held = flows[2]
        fed_while_held = []
        for step in range(1, 4):
            clock.now_s = start_s + 1.0 + 0.1 * step
            for flow in flows:
                if flow is not held:
                    await flow.tick()
            fed_while_held.append(controller.throttles)
        clock.now_s = start_s + 1.35
        await held.tick()
        await leader.tick()
    # Throttled: the odd requests from the 150th; 60 of them answered by 0.9 s, 75 in all.
    assert fed_while_held == [60] * 3
    assert controller.throttles == 75


async def test_only_one_of_several_workers_leads(redis_url: str) -> None:
    """Three workers ticking in turn: exactly one holds the lease each time."""
    clock = Clock()
    async with clients(redis_url, 3) as connections:
        flows = [await started(c, f"w{n}", clock) for n, c in enumerate(connections)]
        leaders = []
        for _ in range(5):
            for flow in flows:
                await flow.tick()
            leaders.append([flow.leading for flow in flows].count(True))
    assert leaders == [1] * 5


async def test_a_stopped_leader_is_replaced_by_one_starting_from_the_stored_estimate(
    redis_url: str,
) -> None:
    """The leader found a limit and stopped: the next leader cruises just under it at once."""
    clock = Clock()
    async with clients(redis_url, 2) as (one, two):
        first, second = await started(one, "first", clock), await started(two, "second", clock)
        throttled_second(second, clock)
        await second.tick()
        await first.tick()
        found = first.known_limit_per_s
        await first.close()
        await second.tick()
    assert found is not None
    assert second.leading
    assert second.known_limit_per_s == found
    assert second.rate_per_s == pytest.approx(found * SETTINGS.margin)


async def test_a_leader_whose_lease_lapsed_steps_down_for_the_one_that_took_it(
    redis_url: str,
) -> None:
    """The lease expired (a leader cut off from Redis): another takes it, the old one yields."""
    clock = Clock()
    async with clients(redis_url, 2) as (one, two):
        first, second = await started(one, "first", clock), await started(two, "second", clock)
        await one.delete(lease_key(NAME))  # as its expiry would
        await second.tick()
        await first.tick()
    assert (first.leading, second.leading) == (False, True)


async def test_a_report_batch_lost_to_a_redis_error_leaves_the_pace_as_it_was(
    redis_url: str,
) -> None:
    """Redis gone mid-run: the tick logs and drops the batch; the worker keeps its pace."""
    clock = Clock()
    async with clients(redis_url, 2) as (one, two):
        leader, worker = await started(one, "leader", clock), await started(two, "worker", clock)
        before_s = worker.rate_per_s
        throttled_second(worker, clock)
        with contextlib.suppress(Exception):
            await one.shutdown(nosave=True)
        await worker.tick()
        advice = worker.observe(Outcome.SENT, clock.now_s, 0.01, clock.now_s + 0.01)
        await leader.tick()
    assert worker.rate_per_s == advice.rate_per_s == before_s


@contextlib.asynccontextmanager
async def redis_dying_at_scripts(redis_url: str) -> AsyncIterator[str]:
    """A loopback proxy to `redis_url` that drops a connection at its first SCRIPT command:
    Redis lost between a pipeline taking a connection and using it."""
    host, port = redis_url.removeprefix("redis://").split("/")[0].split(":")

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))

        async def answers() -> None:
            while data := await upstream_reader.read(65536):
                writer.write(data)
                await writer.drain()

        answering = asyncio.create_task(answers())
        with contextlib.suppress(ConnectionError):
            while (data := await reader.read(65536)) and b"SCRIPT" not in data.upper():
                upstream_writer.write(data)
                await upstream_writer.drain()
        answering.cancel()
        upstream_writer.close()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server:
        yield f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"


async def test_a_tick_that_loses_redis_leaves_no_pipeline_holding_a_connection(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis lost mid-tick: redis-py's "Unclosed Pipeline client" (an error line) never comes."""
    # The tick's warning would keep the error, and through it the pipeline, in the test's log.
    monkeypatch.setattr(logging.getLogger("sms_blaster.distributed"), "disabled", True)
    said: list[str] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: said.append(str(context.get("message"))))
    try:
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always", ResourceWarning)
            async with redis_dying_at_scripts(redis_url) as url, clients(url, 1) as (client,):
                limiter = RedisLimiter(client, NAME, SETTINGS.ceiling_rate_per_s)
                flow = SharedFlow(client, NAME, "w", limiter, SETTINGS, clock=Clock())
                await flow.tick()  # the lost batch is logged and dropped
                gc.collect()  # a pipeline left holding its connection says so when collected
    finally:
        loop.set_exception_handler(None)
    said += [str(warning.message) for warning in warned]
    assert [message for message in said if "Pipeline" in message] == []


@pytest.mark.slow
async def test_closing_ends_the_ticks_even_when_a_cancel_comes_out_as_a_redis_error(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel that lands in a Redis call may surface as that call's error, which a tick
    shrugs off: closing must still end the ticking (a worker once hung there after a stop)."""
    async with clients(redis_url, 1) as (client,):
        limiter = RedisLimiter(client, NAME, SETTINGS.ceiling_rate_per_s)
        await limiter.start()
        flow = SharedFlow(client, NAME, "w", limiter, SETTINGS)
        ticking = asyncio.Event()
        calls = 0

        async def tick_that_swallows_a_cancel(self: SharedFlow) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                return  # the start's own tick
            ticking.set()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)

        monkeypatch.setattr(SharedFlow, "tick", tick_that_swallows_a_cancel)
        await flow.start(ticking=True)
        await ticking.wait()
        closing = asyncio.create_task(flow.close())
        done, _ = await asyncio.wait([closing], timeout=10)
        assert closing in done, "closing hung on a tick that swallowed its cancel"
        await limiter.close()


@pytest.mark.slow
async def test_two_workers_find_an_unknown_limit_together_and_send_every_row_once(
    redis_url: str, tmp_path: Path
) -> None:
    """Against 100/s they are not told: every row accepted once, each summary names an estimate,
    one of them the shared one Redis holds at the end. How near 100/s it comes depends on the
    machine's load: the distributed-unknown-limit benchmark measures it."""
    rows = 600
    assert (await run_cli(*enqueue_args(redis_url, campaign_csv(tmp_path, rows)))).code == 0
    async with simulator_with(latency_ms=5, rate_per_s=100) as simulator:
        options = ("--rate", "1000", "--window", "16")
        workers = [await start_cli(*worker_args(redis_url, simulator, *options)) for _ in range(2)]
        try:
            async with asyncio.timeout(90):
                outputs = await asyncio.gather(*(worker.communicate() for worker in workers))
        finally:
            for worker in workers:
                if worker.returncode is None:
                    worker.kill()
                    await worker.wait()
        stats = await simulator.stats()
    async with clients(redis_url, 1) as (client,):
        stored = float(await client.hget(limit_key(CAMPAIGN), "flow_limit") or 0)
    for worker, (_, stderr) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, stderr.decode()
    records = records_of(*(stdout for stdout, _ in outputs))
    assert Counter(r["line"] for r in records) == Counter(range(1, rows + 1))
    assert stats["accepted"] == rows
    assert all(r["accepted"] == 1 for r in stats["recipients"].values())
    estimates = [
        match.group(1)
        for _, stderr in outputs
        if (match := re.search(r"limit looked like ([\d,.]+)/s", stderr.decode()))
    ]
    assert len(estimates) == 2
    assert f"{stored:,.1f}" in estimates


@pytest.mark.slow
async def test_a_worker_whose_window_was_cut_still_retries_its_last_throttled_rows(
    redis_url: str, tmp_path: Path
) -> None:
    """A provider capping requests in service throttles, and the flow may cut the window below
    the claimers: the throttled rows left when the queue runs dry are retried (claims waiting
    for new rows hold no place). Whether the cap is seen as a cap or as a rate limit depends on
    how fast this machine answers; either way every row is sent once."""
    rows = 200
    assert (await run_cli(*enqueue_args(redis_url, campaign_csv(tmp_path, rows)))).code == 0
    async with simulator_with(latency_ms=5, max_concurrency=2) as simulator:
        options = ("--rate", "1000", "--window", "16")
        worker = await start_cli(*worker_args(redis_url, simulator, *options))
        try:
            async with asyncio.timeout(60):  # stuck: the retries wait for a place for ever
                stdout, stderr = await worker.communicate()
        finally:
            if worker.returncode is None:
                worker.kill()
                await worker.wait()
        stats = await simulator.stats()
    assert worker.returncode == 0, stderr.decode()
    assert Counter(r["line"] for r in records_of(stdout)) == Counter(range(1, rows + 1))
    assert stats["accepted"] == rows
    assert re.search(r"flow: [1-9]\d* throttled", stderr.decode()), "the provider throttled"
