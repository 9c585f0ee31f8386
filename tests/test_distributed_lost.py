"""A campaign Redis lost (restarted empty, flushed, evicted, its queue deleted): the workers stop
with one line that says what is gone and what to do, write nothing of the campaign into that
Redis but the marker of the loss, and neither a later worker nor an `enqueue` takes the campaign
for one never enqueued: following the advice never sends a row twice."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from sms_blaster.distributed.keys import CampaignKeys
from sms_blaster.distributed.receipt_applier import ReceiptApplier
from tests.cli_helpers import run_cli, start_cli
from tests.redis_helpers import RestartableRedis, add_dlrs
from tests.test_distributed import (
    CAMPAIGN,
    Watched,
    campaign_csv,
    enqueue_args,
    records_of,
    simulator_with,
    worker_args,
)

KEYS = CampaignKeys(CAMPAIGN)
ADVICE = "enqueue again, as a new --campaign, only the rows that no worker's records show sent"


async def keys_in(url: str) -> set[str]:
    client = aioredis.from_url(url, decode_responses=True)
    try:
        return {str(key) for key in await client.keys("*")}
    finally:
        await client.aclose()


async def redis_do(url: str, *command: str) -> object:
    client = aioredis.from_url(url, decode_responses=True)
    try:
        return await client.execute_command(*command)  # type: ignore[no-untyped-call]
    finally:
        await client.aclose()


def assert_no_contradiction(stderr: str) -> None:
    """Nothing was handed back nor will be taken over: the campaign's queue is gone."""
    assert "handed back" not in stderr, stderr
    assert "takes them over" not in stderr, stderr


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("Error:")]


def assert_refused_as_lost(code: int, stderr: str, what: str) -> None:
    """Exit 4, one Error line naming what was lost and the advice, never 'run enqueue first'."""
    assert code == 4, stderr
    (line,) = error_lines(stderr)
    assert what in line, stderr
    assert ADVICE in line, stderr
    assert "first" not in line, stderr
    assert "script:" not in stderr, stderr
    assert "Traceback" not in stderr, stderr


async def wiped_under_a_worker(redis: RestartableRedis, simulator: Any) -> Watched:
    """A worker sending the campaign, and Redis restarted without its data a third of the way:
    the worker, once it noticed and Redis is up again (empty)."""
    worker = Watched(await start_cli(*worker_args(redis.url, simulator, "--rate", "100")))
    await simulator.wait_for_accepted(30)
    redis.wipe()
    assert await worker.wait_for("Redis lost"), "".join(worker.lines)
    redis.start()
    return worker


@pytest.mark.slow
async def test_redis_back_empty_a_worker_writes_nothing_and_no_one_sends_a_row_again(
    restartable_redis: RestartableRedis, tmp_path: Path
) -> None:
    """Redis restarted without its data mid-campaign: the worker stops (exit 4) with the advice
    and leaves only the marker of the loss; a worker started after it and an `enqueue` of the
    same input refuse (exit 4), so no row is ever sent twice."""
    url = restartable_redis.url
    path = campaign_csv(tmp_path, 90)
    assert (await run_cli(*enqueue_args(url, path))).code == 0
    async with simulator_with(latency_ms=100) as simulator:
        async with asyncio.timeout(60):
            worker = await wiped_under_a_worker(restartable_redis, simulator)
            code, _, stderr = await worker.finish()
        assert_refused_as_lost(code, stderr, f"Redis lost campaign '{CAMPAIGN}'")
        assert "Redis is back after" not in stderr, stderr
        assert await keys_in(url) == {KEYS.lost}, "nothing of the campaign written back"
        later = await run_cli(*worker_args(url, simulator))
        again = await run_cli(*enqueue_args(url, path))
        stats = await simulator.stats()
    assert_refused_as_lost(later.code, later.stderr, f"Redis lost campaign '{CAMPAIGN}'")
    assert_refused_as_lost(again.code, again.stderr, f"Redis lost campaign '{CAMPAIGN}'")
    assert await keys_in(url) == {KEYS.lost}, "the refused enqueue wrote nothing"
    assert all(r["accepted"] == 1 for r in stats["recipients"].values()), "sent twice"


@pytest.mark.slow
async def test_a_campaign_enqueued_again_while_its_worker_waits_for_redis_is_not_sent_again(
    restartable_redis: RestartableRedis, tmp_path: Path
) -> None:
    """Redis back empty and the same input enqueued again within the worker's --redis-grace:
    whichever of the two sees Redis first, the worker stops (exit 4) and no later worker sends
    a row twice: the enqueue is refused, or the worker marks the campaign it came back to."""
    url = restartable_redis.url
    path = campaign_csv(tmp_path, 90)
    assert (await run_cli(*enqueue_args(url, path))).code == 0
    async with simulator_with(latency_ms=100) as simulator:
        async with asyncio.timeout(60):
            worker = await wiped_under_a_worker(restartable_redis, simulator)
            again = await run_cli(*enqueue_args(url, path))
            code, _, stderr = await worker.finish()
            later = await run_cli(*worker_args(url, simulator))
        stats = await simulator.stats()
    assert again.code in (0, 4), again.stderr
    assert_refused_as_lost(code, stderr, f"Redis lost campaign '{CAMPAIGN}'")
    assert_refused_as_lost(later.code, later.stderr, f"Redis lost campaign '{CAMPAIGN}'")
    assert all(r["accepted"] == 1 for r in stats["recipients"].values()), "sent twice"


async def test_a_campaign_flushed_mid_run_stops_the_worker_and_is_never_written_back(
    redis_url: str, tmp_path: Path
) -> None:
    """FLUSHALL while a worker sends: it stops with one Error line (exit 4), writes no rows,
    counts or runs into the emptied Redis, and the next worker refuses the campaign."""
    assert (await run_cli(*enqueue_args(redis_url, campaign_csv(tmp_path, 60)))).code == 0
    async with simulator_with(latency_ms=100) as simulator:
        worker = Watched(await start_cli(*worker_args(redis_url, simulator, "--rate", "50")))
        async with asyncio.timeout(60):
            await simulator.wait_for_accepted(10)
            await redis_do(redis_url, "FLUSHALL")
            code, stdout, stderr = await worker.finish()
        later = await run_cli(*worker_args(redis_url, simulator))
    report = await run_cli("report", "--redis", redis_url, "--campaign", CAMPAIGN)
    assert_refused_as_lost(code, stderr, f"Redis lost campaign '{CAMPAIGN}'")
    assert_no_contradiction(stderr)
    # The shared limit, the flow control's lease and the workers' rates and leases (which
    # expire) may be written by the worker between the flush and its next write to the
    # campaign, which finds the loss.
    transient = {
        "smsb:c:{spring}:rates",
        "smsb:c:{spring}:leases",
        "smsb:limit:{spring}",
        "smsb:flow:{spring}:leader",
        "smsb:flow:{spring}:answers",
        "smsb:flow:{spring}:marks",
    }
    assert await keys_in(redis_url) - transient <= {KEYS.lost}
    assert {r["status"] for r in records_of(stdout)} <= {"sent", "unknown"}
    assert_refused_as_lost(later.code, later.stderr, f"Redis lost campaign '{CAMPAIGN}'")
    assert_refused_as_lost(report.code, report.stderr, f"Redis lost campaign '{CAMPAIGN}'")


async def test_a_deleted_consumer_group_stops_the_workers_and_no_later_one_ends_well(
    redis_url: str, tmp_path: Path
) -> None:
    """XGROUP DESTROY mid-run: the worker says the group is gone and what to do, in one line
    and no other contradicting it (exit 4); a later worker does not exit 0 leaving the rows in
    flight with no record: it refuses, naming the loss."""
    assert (await run_cli(*enqueue_args(redis_url, campaign_csv(tmp_path, 60)))).code == 0
    async with simulator_with(latency_ms=100) as simulator:
        worker = Watched(await start_cli(*worker_args(redis_url, simulator, "--rate", "50")))
        async with asyncio.timeout(60):
            await simulator.wait_for_accepted(10)
            await redis_do(redis_url, "XGROUP", "DESTROY", KEYS.queue, "senders")
            code, _, stderr = await worker.finish()
        later = await run_cli(*worker_args(redis_url, simulator))
    gone = "consumer group 'senders'"
    assert_refused_as_lost(code, stderr, gone)
    assert "NOGROUP" not in stderr, stderr
    assert_no_contradiction(stderr)
    assert_refused_as_lost(later.code, later.stderr, gone)


async def test_a_worker_that_finds_rows_in_no_queue_entry_reports_them_and_exits_4(
    redis_url: str, tmp_path: Path
) -> None:
    """An entry deleted from the stream (the row queued, or in flight, in the ledger): the
    worker sends the others, then says how many rows are in no entry, and does not exit 0."""
    assert (await run_cli(*enqueue_args(redis_url, campaign_csv(tmp_path, 3)))).code == 0
    client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        entries: Any = await client.xrange(KEYS.queue, count=1)
        await client.xdel(KEYS.queue, entries[0][0])
    finally:
        await client.aclose()
    async with simulator_with() as simulator:
        run = await run_cli(*worker_args(redis_url, simulator))
    assert sorted(r["line"] for r in run.records) == [2, 3]
    assert_refused_as_lost(run.code, run.stderr, "1 rows of campaign")


async def test_a_stream_entry_whose_row_the_ledger_lost_is_never_sent(
    redis_url: str, tmp_path: Path
) -> None:
    """The row ledger evicted (or deleted) with the queue still there: a worker sends nothing
    on the entries' word (their rows may have been sent) and stops, naming the loss."""
    assert (await run_cli(*enqueue_args(redis_url, campaign_csv(tmp_path, 3)))).code == 0
    await redis_do(redis_url, "DEL", KEYS.rows)
    async with simulator_with() as simulator:
        run = await run_cli(*worker_args(redis_url, simulator))
        stats = await simulator.stats()
    assert stats["requests"] == 0
    assert_refused_as_lost(run.code, run.stderr, f"row ledger of campaign '{CAMPAIGN}'")


async def test_an_enqueue_of_a_campaign_whose_settings_redis_lost_changes_nothing(
    redis_url: str, tmp_path: Path
) -> None:
    """Its meta evicted, the rest of the campaign left: enqueue and worker refuse (exit 4) with
    the advice, and the enqueue writes nothing."""
    path = campaign_csv(tmp_path, 3)
    assert (await run_cli(*enqueue_args(redis_url, path))).code == 0
    await redis_do(redis_url, "DEL", KEYS.meta)
    before = await keys_in(redis_url)
    again = await run_cli(*enqueue_args(redis_url, path))
    assert_refused_as_lost(again.code, again.stderr, "its settings are gone")
    assert "rows" in error_lines(again.stderr)[0]
    assert await keys_in(redis_url) == before
    async with simulator_with() as simulator:
        later = await run_cli(*worker_args(redis_url, simulator))
    assert_refused_as_lost(later.code, later.stderr, "its settings are gone")


async def test_a_campaign_redis_never_held_is_named_with_both_possibilities(
    redis_url: str,
) -> None:
    """Nothing of the campaign in Redis: never enqueued, or lost with no worker there to see.
    The line says both, never only 'run enqueue first' (exit 2)."""
    async with simulator_with() as simulator:
        run = await run_cli(*worker_args(redis_url, simulator))
    assert run.code == 2
    (line,) = error_lines(run.stderr)
    assert "if it was never enqueued, run `sms-blaster enqueue INPUT" in line
    assert ADVICE in line


async def test_a_receipt_for_an_earlier_campaign_of_the_same_name_is_not_applied(
    redis_url: str,
) -> None:
    """A receipt names its campaign by id (its client ref). Under the same name there may now be
    another campaign (enqueued after Redis lost everything of the first one but its id's entry):
    its rows are other messages at the same lines, and a receipt of the first campaign must not
    prove one of them sent."""
    client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        keys = CampaignKeys("spring")
        await client.hset(keys.meta, mapping={"campaign_id": "bbbbbbbbbbbb", "done": "1"})
        await client.hset("smsb:campaigns", mapping={"aaaaaaaaaaaa": "spring"})
        await client.hset(keys.rows, "1", "u")
        await client.hset(keys.counts, mapping={"unknown": 1})
        add_dlrs(redis_url, [("aaaaaaaaaaaa-1", "M1", "delivered", "delivered", "0")])
        applier = ReceiptApplier(client, "test")
        await applier.ensure_group()
        await applier.apply_waiting()
        assert await client.hget(keys.rows, "1") == "u"
        assert await client.hgetall(keys.parts) == {}
    finally:
        await client.aclose()


@pytest.mark.slow
async def test_redis_back_from_an_older_state_stops_the_workers_before_a_row_is_sent_again(
    restartable_redis: RestartableRedis, tmp_path: Path
) -> None:
    """Redis restarted from an older state of the campaign (its append-only file stopped being
    written a while before the crash, as an older snapshot would be): rows sent since are
    queued in it again. The worker finds the campaign's sequence behind the one it saw and
    stops (exit 4) with what happened and the advice, and marks the campaign so that no worker
    sends from that ledger; none of its rows is accepted twice."""
    url = restartable_redis.url
    path = campaign_csv(tmp_path, 90)
    assert (await run_cli(*enqueue_args(url, path))).code == 0
    async with simulator_with(latency_ms=20) as simulator:
        async with asyncio.timeout(60):
            worker = Watched(await start_cli(*worker_args(url, simulator, "--rate", "100")))
            await simulator.wait_for_accepted(20)
            await redis_do(url, "CONFIG", "SET", "appendonly", "no")  # the older state
            await simulator.wait_for_accepted(40)
            restartable_redis.kill()
            restartable_redis.start()  # from the file as it was at 20 or so
            code, _, stderr = await worker.finish()
            later = await run_cli(*worker_args(url, simulator))
        stats = await simulator.stats()
    assert all(r["accepted"] == 1 for r in stats["recipients"].values()), "sent twice"
    assert_refused_as_lost(code, stderr, "Redis went back to an older state of campaign")
    assert_refused_as_lost(later.code, later.stderr, "Redis went back to an older state")
