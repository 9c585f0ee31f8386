"""--quiet-hours in distributed mode: enqueue carries each row's zones, workers put off rows
inside the window in Redis until it ends (real processes, redis-server on loopback)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from sms_blaster.simulator import RunningSimulator, SimulatorConfig, start_simulator
from tests.cli_helpers import run_cli
from tests.test_quiet_hours_cli import AROUND_NOW, FREE_ZONE, HELD_ZONE, LATER, campaign

CAMPAIGN = "night"
DELAYED = f"smsb:c:{{{CAMPAIGN}}}:delayed"


@pytest.fixture
async def simulator() -> AsyncIterator[RunningSimulator]:
    running = await start_simulator(SimulatorConfig())
    yield running
    await running.close()


def enqueue_args(redis_url: str, path: Path, window: str) -> list[str]:
    return ["enqueue", str(path), "--redis", redis_url, "--campaign", CAMPAIGN, "--from", "Shop",
            "--quiet-hours", window, "--tz-column", "tz"]  # fmt: skip


def worker_args(redis_url: str, simulator: RunningSimulator) -> list[str]:
    return ["worker", "--redis", redis_url, "--campaign", CAMPAIGN, "--base-url", simulator.url,
            "--no-progress"]  # fmt: skip


async def delayed_lines(redis_url: str) -> list[int]:
    return sorted(int(json.loads(member)[0]) for member in await delayed(redis_url))


async def delayed(redis_url: str) -> list[str]:
    """The members of the campaign's delayed set: each a message's fields as JSON."""
    client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        members = [str(member) for member in await client.zrange(DELAYED, 0, -1)]
    finally:
        await client.aclose()
    return members


async def test_a_worker_puts_rows_inside_quiet_hours_off_and_sends_the_others(
    redis_url: str, simulator: RunningSimulator, tmp_path: Path
) -> None:
    """Held rows: no record, not sent, delayed in Redis; the worker exits 0 and says so."""
    path = campaign(tmp_path / "c.csv", [HELD_ZONE, FREE_ZONE, HELD_ZONE])
    assert (await run_cli(*enqueue_args(redis_url, path, AROUND_NOW))).code == 0

    run = await run_cli(*worker_args(redis_url, simulator))

    assert run.code == 0, run.stderr
    assert {line: r["status"] for line, r in run.by_line().items()} == {2: "sent"}
    assert await delayed_lines(redis_url) == [1, 3]
    assert "2 rows wait for them to end" in run.stderr
    assert (await simulator.stats())["requests"] == 1


async def test_rows_put_off_are_sent_once_by_a_worker_after_quiet_hours_end(
    redis_url: str, simulator: RunningSimulator, tmp_path: Path
) -> None:
    """Their ready time come (and the window now later), the next worker sends each once."""
    path = campaign(tmp_path / "c.csv", [HELD_ZONE, FREE_ZONE, HELD_ZONE])
    assert (await run_cli(*enqueue_args(redis_url, path, AROUND_NOW))).code == 0
    assert (await run_cli(*worker_args(redis_url, simulator))).code == 0
    # Quiet hours over: the campaign's window moves on, and the ready times are past.
    assert (await run_cli(*enqueue_args(redis_url, path, LATER))).code == 0
    client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        for member in await delayed(redis_url):
            await client.zadd(DELAYED, {member: 0})
    finally:
        await client.aclose()

    rerun = await run_cli(*worker_args(redis_url, simulator))

    assert rerun.code == 0, rerun.stderr
    assert {line: r["status"] for line, r in rerun.by_line().items()} == {1: "sent", 3: "sent"}
    assert await delayed_lines(redis_url) == []
    recipients = (await simulator.stats())["recipients"]
    assert sorted(int(counts["accepted"]) for counts in recipients.values()) == [1, 1, 1]


@pytest.mark.parametrize("again", [["--quiet-hours", LATER, "--tz-column", "tz"], []])
async def test_enqueueing_again_with_another_window_or_none_releases_the_rows_put_off(
    redis_url: str, simulator: RunningSimulator, tmp_path: Path, again: list[str]
) -> None:
    """Held under one window, enqueued again under another (or none): the next worker sends it."""
    path = campaign(tmp_path / "c.csv", [HELD_ZONE])
    assert (await run_cli(*enqueue_args(redis_url, path, AROUND_NOW))).code == 0
    assert (await run_cli(*worker_args(redis_url, simulator))).code == 0
    assert await delayed_lines(redis_url) == [1]
    enqueue = enqueue_args(redis_url, path, AROUND_NOW)[:-4] + again
    assert (await run_cli(*enqueue)).code == 0

    rerun = await run_cli(*worker_args(redis_url, simulator))

    assert rerun.code == 0, rerun.stderr
    assert {line: r["status"] for line, r in rerun.by_line().items()} == {1: "sent"}
    assert await delayed_lines(redis_url) == []
    assert (await simulator.stats())["requests"] == 1


async def test_a_second_worker_run_says_the_rows_still_put_off(
    redis_url: str, simulator: RunningSimulator, tmp_path: Path
) -> None:
    """Nothing held by this run, but one row still waits in Redis: the summary says so."""
    path = campaign(tmp_path / "c.csv", [HELD_ZONE, FREE_ZONE])
    assert (await run_cli(*enqueue_args(redis_url, path, AROUND_NOW))).code == 0
    assert (await run_cli(*worker_args(redis_url, simulator))).code == 0

    rerun = await run_cli(*worker_args(redis_url, simulator))

    assert rerun.code == 0, rerun.stderr
    assert rerun.records == []
    assert f"quiet hours {AROUND_NOW}: 1 row waits for them to end, the first at" in rerun.stderr
