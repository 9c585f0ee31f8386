"""Distributed mode with real processes: enqueue, workers sharing one limit, a worker killed."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import signal
import socket
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from sms_blaster.distributed import queue as work_queue
from sms_blaster.distributed.outage import RedisGate
from sms_blaster.distributed.queue import ENTRY_FIELDS, CampaignQueue
from sms_blaster.engine import Superseded
from sms_blaster.models import Encoding, ErrorKind, Message, Record, RowError, Status
from sms_blaster.simulator import RunningSimulator, SimulatorConfig, start_simulator
from sms_blaster.url_text import mask_password
from tests.cli_helpers import Run, StderrLines, receiver_process, run_cli, start_cli, write_csv
from tests.redis_helpers import RestartableRedis, add_dlrs

CAMPAIGN = "spring"
STOP_BOUND_S = 20  # how long a stopping worker may take: a bound for a hang, not a measurement


def campaign_csv(tmp_path: Path, count: int, *, bad: int = 0) -> Path:
    rows = [(f"Ann{n}", f"4474{n:04d}{n:04d}") for n in range(1, count + 1)]
    rows += [("Bad", "12345")] * bad
    return write_csv(tmp_path / "campaign.csv", rows)


def enqueue_args(redis_url: str, path: Path, *extra: str) -> list[str]:
    return ["enqueue", str(path), "--redis", redis_url, "--campaign", CAMPAIGN,
            "--from", "Shop", "--text", "Hi {name}", *extra]  # fmt: skip


def worker_args(redis_url: str, simulator: RunningSimulator, *extra: str) -> list[str]:
    return ["worker", "--redis", redis_url, "--campaign", CAMPAIGN, "--base-url", simulator.url,
            "--no-progress", *extra]  # fmt: skip


@contextlib.asynccontextmanager
async def simulator_with(**options: Any) -> AsyncIterator[RunningSimulator]:
    simulator = await start_simulator(SimulatorConfig(**options))
    try:
        yield simulator
    finally:
        await simulator.close()


def records_of(*outputs: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for output in outputs for line in output.decode().splitlines()]


async def run_workers(count: int, argv: list[str]) -> list[tuple[bytes, bytes]]:
    """Run `count` workers of `argv` to their end, each exiting 0; their stdout and stderr."""
    workers = [await start_cli(*argv) for _ in range(count)]
    try:
        async with asyncio.timeout(60):
            outputs = await asyncio.gather(*(worker.communicate() for worker in workers))
    except TimeoutError:
        pytest.fail("workers still running after 60 s:\n" + await _stop_and_tell(workers))
    for worker, (_, stderr) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, stderr.decode()
    return outputs


async def _stop_and_tell(workers: list[asyncio.subprocess.Process]) -> str:
    """Kill the workers still running; what each wrote to stderr, for the failure's message."""
    told = []
    for number, worker in enumerate(workers):
        if worker.returncode is None:
            worker.kill()
        await worker.wait()
        assert worker.stderr is not None
        told.append(
            f"worker {number} ({worker.returncode}): {(await worker.stderr.read()).decode()}"
        )
    return "\n".join(told)


class Watched:
    """A worker process whose stderr is read as it comes, so a test can wait for a line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        assert process.stderr is not None
        self.process = process
        self._stderr = StderrLines()
        self.lines = self._stderr.lines
        self._reading = asyncio.create_task(self._stderr.read(process.stderr))

    async def wait_for(self, text: str) -> bool:
        """Whether a line of stderr contains `text`, once one does or stderr ended."""
        return await self._stderr.wait_for(text)

    async def finish(self) -> tuple[int, bytes, str]:
        """(exit code, stdout, stderr) once the process ended."""
        assert self.process.stdout is not None
        stdout = await self.process.stdout.read()
        await self._reading
        return await self.process.wait(), stdout, "".join(self.lines)


async def row_states(redis_url: str) -> dict[int, str]:
    client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        states = await client.hgetall(f"smsb:c:{{{CAMPAIGN}}}:rows")
    finally:
        await client.aclose()
    return {int(line): str(state) for line, state in states.items()}


async def test_enqueue_records_refused_rows_once_and_adds_nothing_twice(
    redis_url: str, tmp_path: Path
) -> None:
    """A second enqueue of the same input queues nothing and prints no record again."""
    path = campaign_csv(tmp_path, 5, bad=1)
    first = await run_cli(*enqueue_args(redis_url, path))
    assert first.code == 1, first.stderr
    assert [(r["line"], r["error"]["code"]) for r in first.records] == [(6, "invalid_number")]
    assert "5 messages queued" in first.stderr
    again = await run_cli(*enqueue_args(redis_url, path))
    assert again.code == 0, again.stderr
    assert again.records == []
    assert "0 messages queued, 5 queued by an earlier enqueue" in again.stderr
    assert await row_states(redis_url) == {1: "q", 2: "q", 3: "q", 4: "q", 5: "q", 6: "f"}


async def test_enqueue_with_another_text_for_the_same_campaign_is_refused(
    redis_url: str, tmp_path: Path
) -> None:
    """A campaign keeps its template: another one needs another --campaign (exit 4)."""
    path = campaign_csv(tmp_path, 2)
    assert (await run_cli(*enqueue_args(redis_url, path))).code == 0
    run = await run_cli(*[arg if arg != "Hi {name}" else "Bye {name}"
                          for arg in enqueue_args(redis_url, path)])  # fmt: skip
    assert run.code == 4
    assert "was enqueued with another --text" in run.stderr


async def test_a_worker_with_another_provider_than_the_campaigns_is_refused(
    redis_url: str, tmp_path: Path
) -> None:
    """The first worker's provider is the campaign's: another one is refused (exit 4, one line)."""
    path = campaign_csv(tmp_path, 2)
    assert (await run_cli(*enqueue_args(redis_url, path))).code == 0
    async with simulator_with() as simulator:
        first = await run_cli(*worker_args(redis_url, simulator))
        assert first.code == 0, first.stderr
        run = await run_cli(*worker_args(redis_url, simulator, "--provider", "vonage-messages"))
    assert run.code == 4
    [error] = [line for line in run.stderr.splitlines() if line.startswith("Error:")]
    assert "with another --provider ('vonage', now 'vonage-messages')" in error


async def test_a_worker_for_a_campaign_never_enqueued_is_a_usage_error(redis_url: str) -> None:
    """One line naming the command to run first."""
    async with simulator_with() as simulator:
        run = await run_cli(*worker_args(redis_url, simulator))
    assert run.code == 2
    assert "run `sms-blaster enqueue INPUT" in run.stderr


@pytest.mark.slow
async def test_three_workers_under_one_limit_send_every_row_once(
    redis_url: str, tmp_path: Path
) -> None:
    """Every row accepted once and recorded once, by more than one worker. How close to the
    shared rate they come, and how far above it any second goes, is measured by a benchmark
    (benchmarks: distributed-limit), not asserted on a machine whose load the test cannot know."""
    rows = 300  # a few seconds from the slow start: longer than a worker takes to start
    path = campaign_csv(tmp_path, rows)
    assert (await run_cli(*enqueue_args(redis_url, path))).code == 0
    async with simulator_with(latency_ms=5) as simulator:
        outputs = await run_workers(
            3, worker_args(redis_url, simulator, "--rate", "300", "--window", "32")
        )
        stats = await simulator.stats()
    records = records_of(*(stdout for stdout, _ in outputs))
    assert Counter(r["line"] for r in records) == Counter(range(1, rows + 1))
    assert {r["status"] for r in records} == {"sent"}
    assert stats["accepted"] == rows
    assert all(r["accepted"] == 1 for r in stats["recipients"].values())
    assert sum(bool(stdout) for stdout, _ in outputs) >= 2, "the work was shared"


@pytest.mark.slow
async def test_a_killed_worker_leaves_its_rows_to_the_others_and_nothing_is_sent_twice(
    redis_url: str, tmp_path: Path
) -> None:
    """SIGKILL one of three mid-campaign: the others finish after the lease; no row accepted
    twice; every row settled; at most the dead worker's window is unknown."""
    rows, window = 300, 8
    path = campaign_csv(tmp_path, rows)
    assert (await run_cli(*enqueue_args(redis_url, path))).code == 0
    async with simulator_with(latency_ms=150) as simulator:
        common = ("--rate", "200", "--lease", "2")
        victim = await start_cli(*worker_args(redis_url, simulator, *common, "--window",
                                              str(window)))  # fmt: skip
        others = [
            await start_cli(*worker_args(redis_url, simulator, *common, "--window", "16"))
            for _ in range(2)
        ]
        await simulator.wait_for_accepted(60)  # the victim surely holds requests in flight
        victim.kill()
        async with asyncio.timeout(60):
            victim_out, _ = await victim.communicate()
            outputs = await asyncio.gather(*(worker.communicate() for worker in others))
        stats = await simulator.stats()
    for worker, (_, stderr) in zip(others, outputs, strict=True):
        assert worker.returncode in (0, 1), stderr.decode()
    assert all(r["accepted"] <= 1 for r in stats["recipients"].values()), "sent twice"
    states = await row_states(redis_url)
    assert sorted(states) == list(range(1, rows + 1))
    assert set(states.values()) <= {"s", "u"}, "every row settled"
    unknown = [line for line, state in states.items() if state == "u"]
    assert len(unknown) <= window
    records = records_of(victim_out, *(stdout for stdout, _ in outputs))
    assert {r["line"] for r in records} == set(range(1, rows + 1)), "no row lost"
    lost = [r for r in records if r["status"] == "unknown"]
    assert {r["line"] for r in lost} == set(unknown)
    assert all(r["error"]["code"] == "worker_lost" for r in lost)


@pytest.mark.slow
async def test_a_stopped_worker_hands_its_claimed_rows_back(redis_url: str, tmp_path: Path) -> None:
    """SIGINT drains a worker; the rows it claimed but did not send go back to the queue."""
    rows = 40
    path = campaign_csv(tmp_path, rows)
    assert (await run_cli(*enqueue_args(redis_url, path))).code == 0
    async with simulator_with(latency_ms=50) as simulator:
        first = await start_cli(*worker_args(redis_url, simulator, "--rate", "20", "--window",
                                             "4"))  # fmt: skip
        await simulator.wait_for_accepted(5)
        first.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            first_out, first_err = await first.communicate()
        assert first.returncode == 130, first_err.decode()
        # Its last line says what became of them: handed back, no record of them here.
        assert "claimed messages not sent are handed back to the queue" in first_err.decode()
        assert "recorded 'stopped'" not in first_err.decode()
        second = await run_cli(*worker_args(redis_url, simulator, "--rate", "500"))
        stats = await simulator.stats()
    assert second.code == 0, second.stderr
    records = records_of(first_out, second.stdout)
    assert Counter(r["line"] for r in records) == Counter(range(1, rows + 1))
    assert stats["accepted"] == rows


@pytest.mark.slow
async def test_a_worker_nothing_can_connect_to_hands_its_rows_back_and_fails_none(
    redis_url: str, tmp_path: Path
) -> None:
    """--retries 1 and every connection refused: failed connections use up no retries, so
    --unreachable-timeout stops the worker (exit 3) with its rows handed back, none failed; a
    worker that reaches the provider then sends every row once."""
    rows = 20
    path = campaign_csv(tmp_path, rows)
    assert (await run_cli(*enqueue_args(redis_url, path))).code == 0
    with socket.socket() as refusing:  # bound, not listening: every connection is refused
        refusing.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{refusing.getsockname()[1]}"
        first = await run_cli(
            "worker", "--redis", redis_url, "--campaign", CAMPAIGN, "--base-url", dead,
            "--no-progress", "--rate", "2000", "--retries", "1", "--unreachable-timeout", "3",
            timeout_s=120,
        )  # fmt: skip
    assert first.code == 3, first.stderr
    assert first.records == []  # a row handed back has its record from the worker that sends it
    assert "claimed messages handed back unsent (stopped)" in first.stderr
    assert "claimed messages not sent are handed back to the queue" in first.stderr
    assert "recorded 'stopped'" not in first.stderr
    assert not {state[:1] for state in (await row_states(redis_url)).values()} & {"s", "f", "u"}
    async with simulator_with() as simulator:
        second = await run_cli(*worker_args(redis_url, simulator, "--rate", "500"))
        stats = await simulator.stats()
    assert second.code == 0, second.stderr
    assert Counter(r["line"] for r in second.records) == Counter(range(1, rows + 1))
    assert {r["status"] for r in second.records} == {"sent"}
    assert stats["accepted"] == rows


@pytest.mark.slow
async def test_report_reads_a_distributed_campaign_and_applies_its_receipts(
    redis_url: str, tmp_path: Path
) -> None:
    """Rows by state from Redis, and the delivery funnel of the receipts waiting in the stream."""
    path = campaign_csv(tmp_path, 5, bad=1)
    await run_cli(*enqueue_args(redis_url, path))
    async with simulator_with() as simulator:
        sent = await run_cli(*worker_args(redis_url, simulator, "--rate", "100"))
    assert sent.code == 0, sent.stderr
    refs = {r["line"]: (r["client_ref"], r["message_ids"][0]) for r in sent.records}
    add_dlrs(redis_url, [
        (*refs[line], delivery, status, code) for line, delivery, status, code in [
            (1, "delivered", "delivered", ""),
            (2, "delivered", "delivered", ""),
            (3, "failed", "failed", "3"),
            (3, "pending", "accepted", ""),  # late and intermediate: changes nothing
        ]
    ])  # fmt: skip
    report = await run_cli("report", "--redis", redis_url, "--campaign", CAMPAIGN, "--json")
    assert report.code == 0, report.stderr
    (summary,) = json.loads(report.stdout)["campaigns"]
    assert summary["rows"]["sent"] == 5
    assert summary["rows"]["failed"] == 1
    assert summary["provider"] == "vonage-sms"
    assert summary["delivery"] == {
        "sent": 5,
        "delivered": 2,
        "failed": 1,
        "expired": 0,
        "pending": 2,
        "with_receipts": 3,
        "errors": [{"status": "failed", "code": "3", "count": 1}],
    }


@pytest.mark.slow
async def test_receipts_through_receive_redis_reach_the_distributed_report(
    redis_url: str, tmp_path: Path
) -> None:
    """`receive --redis` stores the simulator's receipts in the stream; the report applies them
    and shows every message delivered or failed as the simulator decided."""
    rows = 60
    path = campaign_csv(tmp_path, rows)
    await run_cli(*enqueue_args(redis_url, path))
    async with receiver_process("--redis", redis_url) as receiver:
        async with simulator_with(
            callback_url=receiver.url + "/webhooks/dlr",
            callback_delay_ms=10,
            callback_duplicate_rate=0.3,
            dlr_fail_rate=0.2,
            callback_retry_s=0.2,
            seed=5,
        ) as simulator:
            workers = [
                await start_cli(*worker_args(redis_url, simulator, "--rate", "300"))
                for _ in range(2)
            ]
            async with asyncio.timeout(60):
                await asyncio.gather(*(worker.communicate() for worker in workers))
                await simulator.wait_for_callbacks_done()
            decided: dict[str, str] = (await simulator.stats())["callbacks"]["outcomes"]
        receiver.process.send_signal(signal.SIGTERM)
        code, _ = await receiver.finish()
    assert code == 0, "".join(receiver.stderr_lines)
    report = await run_cli("report", "--redis", redis_url, "--campaign", CAMPAIGN, "--json")
    assert report.code == 0, report.stderr
    (summary,) = json.loads(report.stdout)["campaigns"]
    failed = sum(outcome == "failed" for outcome in decided.values())
    assert len(decided) == rows
    assert 0 < failed < rows
    delivery = summary["delivery"]
    assert (delivery["sent"], delivery["delivered"], delivery["failed"], delivery["pending"]) == (
        rows,
        rows - failed,
        failed,
        0,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("suffix", "extra", "attempts", "state"),
    [
        ("9994", (), 2, "s"),  # throttled once
        ("9995", (), 2, "s"),  # HTTP 503 once
        # accepted then reset, every time: asked to retry (twice: the backoff doubles each time)
        ("9997", ("--retry-unknown", "--retries", "2"), 3, "u"),
    ],
    ids=["throttled-once", "503-once", "reset-with-retry-unknown"],
)
async def test_a_retried_row_is_recorded_once_and_the_worker_exits(
    redis_url: str,
    tmp_path: Path,
    suffix: str,
    extra: tuple[str, ...],
    attempts: int,
    state: str,
) -> None:
    """Retries keep the row this worker's: one record, the campaign drained, the worker exits."""
    rows = [("Ann", f"44740001{suffix}"), ("Bob", "447400020002")]
    path = write_csv(tmp_path / "campaign.csv", rows)
    await run_cli(*enqueue_args(redis_url, path))
    async with simulator_with() as simulator:
        args = worker_args(redis_url, simulator, "--rate", "100", *extra)
        run = await run_cli(*args, timeout_s=30)
    assert run.code in (0, 1), run.stderr
    records = run.by_line()
    assert sorted(records) == [1, 2]
    assert records[1]["attempts"] == attempts
    assert await row_states(redis_url) == {1: state, 2: "s"}


@pytest.mark.slow
async def test_enqueue_of_another_input_into_the_same_campaign_is_refused(
    redis_url: str, tmp_path: Path
) -> None:
    """Lines are keyed by number: another file's line 1 is another row (exit 4, nothing added)."""
    first = campaign_csv(tmp_path, 3)
    assert (await run_cli(*enqueue_args(redis_url, first))).code == 0
    other = write_csv(tmp_path / "other.csv", [("Bad", "123"), ("Zed", "447400090009")])
    run = await run_cli(*enqueue_args(redis_url, other))
    assert run.code == 4
    assert "was enqueued with another input" in run.stderr
    assert await row_states(redis_url) == {1: "q", 2: "q", 3: "q"}


@pytest.mark.parametrize(
    ("url", "printed"),
    [
        ("redis://:s3cret@10.0.0.5:6379/0", "redis://:***@10.0.0.5:6379/0"),
        ("redis://user:p@ss@host:1/0", "redis://user:***@host:1/0"),
        ("redis://host:6379/0?password=s3cret&db=1", "redis://host:6379/0?password=***&db=1"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
    ],
)
def test_a_redis_url_is_printed_without_its_password(url: str, printed: str) -> None:
    """Secrets never appear in logs or errors, the Redis password included."""
    assert mask_password(url) == printed


@pytest.mark.slow
async def test_a_following_worker_sends_rows_enqueued_after_it_started(
    redis_url: str, tmp_path: Path
) -> None:
    """--follow keeps serving a drained campaign: rows appended and enqueued later are sent;
    SIGTERM ends it with the usual interrupted exit."""
    path = campaign_csv(tmp_path, 3)
    await run_cli(*enqueue_args(redis_url, path))
    async with simulator_with() as simulator:
        worker = await start_cli(*worker_args(redis_url, simulator, "--rate", "100", "--follow"))
        async with asyncio.timeout(30):
            await simulator.wait_for_accepted(3)
            with path.open("a") as handle:  # more rows for the same input
                handle.write("Dan,447400040004\nEve,447400050005\n")
            assert (await run_cli(*enqueue_args(redis_url, path))).code == 0
            await simulator.wait_for_accepted(5)
            worker.send_signal(signal.SIGTERM)
            stdout, stderr = await worker.communicate()
    assert worker.returncode == 130, stderr.decode()
    assert sorted(r["line"] for r in records_of(stdout)) == [1, 2, 3, 4, 5]


async def test_a_following_worker_started_before_the_first_enqueue_waits_for_it(
    redis_url: str, tmp_path: Path
) -> None:
    """A --follow worker is a service: started before its campaign exists (a unit started at
    boot, the export later), it says so and waits, then sends the rows once they are enqueued;
    before, it exited 2 with "no campaign"."""
    path = campaign_csv(tmp_path, 3)
    async with simulator_with() as simulator:
        worker = Watched(
            await start_cli(*worker_args(redis_url, simulator, "--rate", "100", "--follow"))
        )
        async with asyncio.timeout(30):
            assert await worker.wait_for("waiting for its enqueue"), "".join(worker.lines)
            assert (await run_cli(*enqueue_args(redis_url, path))).code == 0
            await simulator.wait_for_accepted(3)
            worker.process.send_signal(signal.SIGTERM)
            code, stdout, stderr = await worker.finish()
    assert code == 130, stderr
    assert sorted(r["line"] for r in records_of(stdout)) == [1, 2, 3]


OUTAGE_S = 2.0  # how long Redis stays away: the scenario, not a synchronisation


async def two_workers_through_a_restart(
    server: RestartableRedis, tmp_path: Path, rows: int
) -> tuple[list[tuple[int, bytes, str]], dict[str, Any]]:
    """Two workers sending `rows` while Redis is SIGKILLed a third of the way and started again
    OUTAGE_S later: each worker's (exit code, stdout, stderr), and the simulator's stats."""
    assert (await run_cli(*enqueue_args(server.url, campaign_csv(tmp_path, rows)))).code == 0
    async with simulator_with(latency_ms=100) as simulator:
        args = worker_args(server.url, simulator, "--rate", "100", "--window", "8")
        workers = [Watched(await start_cli(*args)) for _ in range(2)]
        async with asyncio.timeout(60):
            await simulator.wait_for_accepted(rows // 3)  # mid-campaign, requests in flight
            server.kill()
            noticed = await asyncio.gather(*(worker.wait_for("Redis lost") for worker in workers))
            assert all(noticed), "".join(line for worker in workers for line in worker.lines)
            await asyncio.sleep(OUTAGE_S)
            server.start()
            ends = await asyncio.gather(*(worker.finish() for worker in workers))
        return ends, await simulator.stats()


@pytest.mark.slow
async def test_workers_ride_out_a_redis_restart_and_send_every_row_once(
    restartable_redis: RestartableRedis, tmp_path: Path
) -> None:
    """Redis SIGKILLed mid-campaign and started again: both workers say so, wait for it and
    finish with exit 0; every row sent and recorded once, accepted once."""
    rows = 120  # a third before the outage, the rest after it
    url = restartable_redis.url
    ends, stats = await two_workers_through_a_restart(restartable_redis, tmp_path, rows)
    for code, _, stderr in ends:
        assert code == 0, stderr
        assert "Redis is back after" in stderr, stderr
    records = records_of(*(stdout for _, stdout, _ in ends))
    assert Counter(r["line"] for r in records) == Counter(range(1, rows + 1))
    assert {r["status"] for r in records} == {"sent"}
    assert all(r["accepted"] == 1 for r in stats["recipients"].values()), "sent twice"
    assert stats["accepted"] == rows
    assert await row_states(url) == dict.fromkeys(range(1, rows + 1), "s")


@pytest.mark.slow
async def test_a_worker_started_while_redis_is_away_waits_for_it_within_redis_grace(
    restartable_redis: RestartableRedis, tmp_path: Path
) -> None:
    """Started while Redis restarts (the same unit restarting both), a worker waits for it up to
    --redis-grace, as a running one would, says so, and sends the campaign once Redis is back
    rather than exit 4 at once."""
    rows = 10
    url = restartable_redis.url
    assert (await run_cli(*enqueue_args(url, campaign_csv(tmp_path, rows)))).code == 0
    restartable_redis.kill()
    async with simulator_with() as simulator:
        worker = Watched(await start_cli(*worker_args(url, simulator, "--rate", "100")))
        async with asyncio.timeout(60):
            assert await worker.wait_for("waiting up to 30 s for it (--redis-grace)"), "".join(
                worker.lines
            )
            restartable_redis.start()
            code, stdout, stderr = await worker.finish()
        stats = await simulator.stats()
    assert code == 0, stderr
    assert sorted(r["line"] for r in records_of(stdout)) == list(range(1, rows + 1))
    assert stats["accepted"] == rows


@pytest.mark.slow
async def test_workers_stop_with_exit_4_past_redis_grace_and_new_workers_finish(
    restartable_redis: RestartableRedis, tmp_path: Path
) -> None:
    """Redis away longer than --redis-grace: the workers exit 4 and send nothing twice; started
    again after Redis, new workers take their rows over and settle every row."""
    rows = 120  # a third before the outage, the rest for the new workers
    path = campaign_csv(tmp_path, rows)
    url = restartable_redis.url
    assert (await run_cli(*enqueue_args(url, path))).code == 0
    async with simulator_with(latency_ms=100) as simulator:
        args = worker_args(url, simulator, "--rate", "100", "--window", "8", "--redis-grace", "2")
        workers = [Watched(await start_cli(*args)) for _ in range(2)]
        async with asyncio.timeout(60):
            await simulator.wait_for_accepted(rows // 3)
            restartable_redis.kill()
            first = await asyncio.gather(*(worker.finish() for worker in workers))
            restartable_redis.start()
            resume = worker_args(url, simulator, "--rate", "100", "--lease", "1")
            second = await asyncio.gather(*(run_cli(*resume) for _ in range(2)))
        stats = await simulator.stats()
    for code, _, stderr in first:
        assert code == 4, stderr
        assert "Redis lost" in stderr, stderr
        assert "longer than --redis-grace" in stderr, stderr
    for run in second:
        assert run.code in (0, 1), run.stderr
    assert all(r["accepted"] <= 1 for r in stats["recipients"].values()), "sent twice"
    states = await row_states(url)
    assert sorted(states) == list(range(1, rows + 1))
    assert set(states.values()) <= {"s", "u"}, "every row settled"
    records = records_of(*(stdout for _, stdout, _ in first), *(run.stdout for run in second))
    assert {r["line"] for r in records} == set(range(1, rows + 1)), "no row lost"
    # Rows whose end could not be written are taken over as unknown, never resent: those that
    # were sent have the first worker's record too.
    for record in records_of(*(run.stdout for run in second)):
        if record["status"] == "unknown":
            assert record["error"]["code"] == "worker_lost"
    twice = Counter(r["line"] for r in records) - Counter(range(1, rows + 1))
    for line in twice:
        assert sorted(r["status"] for r in records if r["line"] == line) == ["sent", "unknown"]
        assert states[line] == "u"


async def test_an_infinite_redis_grace_is_a_usage_error(redis_url: str) -> None:
    """--redis-grace takes finite seconds: inf is refused before anything starts (exit 2)."""
    async with simulator_with() as simulator:
        run = await run_cli(*worker_args(redis_url, simulator, "--redis-grace", "inf"))
    assert run.code == 2
    assert "'--redis-grace'" in run.stderr
    assert "not a finite number" in run.stderr


async def test_a_claim_whose_answer_an_outage_lost_goes_back_to_the_queue(redis_url: str) -> None:
    """Redis ran the claim but the worker never heard: once Redis is back the entry is handed
    back (its request never left), not left to become 'unknown' after the lease."""
    client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        gate = RedisGate(30, client.ping)
        queue = CampaignQueue(client, CAMPAIGN, worker="w1", gate=gate)
        await _open_campaign(client, queue)
        await queue.add([Message(1, "447400010001", "Hi Ann", Encoding.GSM7, 1, "c-1")])
        lost_claim = client.register_script(work_queue._CLAIM_NEW)  # as w1, the answer lost
        keys = [queue.keys.queue, queue.keys.rows, queue.keys.meta]
        await lost_claim(keys=keys, args=["senders", "w1"])
        assert await row_states(redis_url) == {1: "i:w1"}
        gate.lost(RedisConnectionError("Connection reset by peer"))
        await gate.call(client.ping)  # returns once Redis is back and the queue recovered
        assert await row_states(redis_url) == {1: "q"}
        other = CampaignQueue(client, CAMPAIGN, worker="w2")
        claimed = await other.claim()
        assert isinstance(claimed, Message)
        assert claimed.line == 1
        await gate.close()
    finally:
        await client.aclose()


async def test_a_takeover_whose_answer_an_outage_lost_is_never_queued_again(
    redis_url: str,
) -> None:
    """w1 took over a row w0 had in flight (its request may have left) but never heard: once
    Redis is back the row stays in flight for the lease, never queued for another worker."""
    client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        gate = RedisGate(30, client.ping)
        queue = CampaignQueue(client, CAMPAIGN, worker="w1", gate=gate)
        await _open_campaign(client, queue)
        await queue.add([Message(1, "447400010001", "Hi Ann", Encoding.GSM7, 1, "c-1")])
        claim = client.register_script(work_queue._CLAIM_NEW)
        keys = [queue.keys.queue, queue.keys.rows, queue.keys.meta]
        await claim(keys=keys, args=["senders", "w0"])
        _, taken, _ = await client.xautoclaim(queue.keys.queue, "senders", "w1", 0, "0-0")
        take_over = client.register_script(work_queue._TAKE_OVER)  # as w1, the answer lost
        entry_id = taken[0][0]
        verdict = await take_over(
            keys=[queue.keys.rows, queue.keys.queue, queue.keys.meta],
            args=[1, "w1", entry_id, 0, "senders"],
        )
        assert verdict == "unknown"
        gate.lost(RedisConnectionError("Connection reset by peer"))
        await gate.call(client.ping)  # returns once Redis is back and the queue recovered
        assert await row_states(redis_url) == {1: "i:w1"}
        entries = await client.xrange(queue.keys.queue) or []
        assert [entry for entry, _ in entries] == [entry_id]  # no new entry to claim and send
        await gate.close()
    finally:
        await client.aclose()


async def test_a_worker_never_takes_over_its_own_entry_whose_lease_lapsed(redis_url: str) -> None:
    """Redis (or the worker) held up past --lease: the worker's claim of abandoned entries finds
    its own, which it still sends. Taken over, the row would be recorded both sent and unknown."""
    client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        queue = CampaignQueue(client, CAMPAIGN, worker="w1", lease_s=0.001)
        await _open_campaign(client, queue)
        await queue.add([Message(1, "447400010001", "Hi Ann", Encoding.GSM7, 1, "c-1")])
        claimed = await queue.claim()
        assert isinstance(claimed, Message)
        pending = await client.xpending(queue.keys.queue, "senders")
        assert pending["pending"] == 1
        await _lapsed(client, queue)  # the lease (1 ms) lapsed
        queue._next_autoclaim_s = 0.0  # look at once (a claim looks once a second)
        assert await queue._claim_abandoned() is None
        assert await row_states(redis_url) == {1: "i:w1"}
    finally:
        await client.aclose()


async def test_a_row_taken_over_before_its_end_was_written_is_counted(redis_url: str) -> None:
    """w1 froze past --lease with a row sent: w2 took it over as unknown first. w1's end is
    refused (Redis keeps w2's record), and w1 counts the row, whose two records its summary
    explains; a settlement tried again after a lost answer is not counted."""
    client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        w1 = CampaignQueue(client, CAMPAIGN, worker="w1")
        w2 = CampaignQueue(client, CAMPAIGN, worker="w2", lease_s=0.001)
        await _open_campaign(client, w1)
        messages = [Message(n, f"44740001000{n}", "Hi", Encoding.GSM7, 1, f"c-{n}") for n in (1, 2)]
        await w1.add(messages)
        first = await w1.claim()
        assert isinstance(first, Message)
        while True:  # the lease (1 ms) lapsed once XPENDING shows it idle for longer
            (entry,) = await client.xpending_range(w1.keys.queue, "senders", "-", "+", 1)
            if int(entry["time_since_delivered"]) > 1:
                break
        taken = await w2._claim_abandoned()
        assert isinstance(taken, Record)
        assert taken.status is Status.UNKNOWN
        second = await w1.claim()
        assert isinstance(second, Message)
        for message in (first, second, second):  # the second settled twice: a try again
            sent = Record(message.line, message.to, Status.SENT, message.client_ref, 1, segments=1)
            w1.settle(sent, lambda record: None)
            await w1.writes_done()
        assert w1.taken_first == 1
        assert await row_states(redis_url) == {1: "i:w2", 2: "s"}
    finally:
        await client.aclose()


async def _open_campaign(client: aioredis.Redis, queue: CampaignQueue) -> None:
    """The queue's consumer group, and a campaign whose enqueue finished."""
    await queue.ensure_group()
    await client.hset(queue.keys.meta, mapping={"campaign_id": "c", "done": "1"})


async def _lapsed(client: aioredis.Redis, queue: CampaignQueue) -> None:
    """Return once every pending entry of the queue was idle for more than 1 ms (a lease of
    1 ms lapsed): read from Redis, no sleep."""
    while True:
        entries = await client.xpending_range(queue.keys.queue, "senders", "-", "+", 100)
        if all(int(entry["time_since_delivered"]) > 1 for entry in entries):
            return


async def test_a_worker_held_up_past_its_lease_never_sends_what_another_took_over(
    redis_url: str,
) -> None:
    """w1 claimed two messages and was frozen past --lease before sending them; w2 took the
    first over (and records it unknown). Awake, w1 confirms its claims with Redis before a
    request leaves: the first is dropped (Superseded, no record), the second, still its own, is
    sent, its lease renewed. Sent by w1, the first would have two records (or, with
    --retry-unknown on w2, be sent twice)."""
    client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        w1 = CampaignQueue(client, CAMPAIGN, worker="w1", lease_s=0.001)
        w2 = CampaignQueue(client, CAMPAIGN, worker="w2", lease_s=0.001)
        await _open_campaign(client, w1)
        messages = [Message(n, f"44740001000{n}", "Hi", Encoding.GSM7, 1, f"c-{n}") for n in (1, 2)]
        await w1.add(messages)
        first, second = await w1.claim(), await w1.claim()
        assert isinstance(first, Message)
        assert isinstance(second, Message)
        await _lapsed(client, w1)
        taken = await w2._claim_abandoned()  # one entry a call: the first
        assert isinstance(taken, Record)
        assert taken.line == 1
        w2.settle(taken, lambda record: None)  # w2 records it unknown at once: the entry goes
        await w2.writes_done()
        with pytest.raises(Superseded):
            await w1.inflight(first, 1)
        await w1.inflight(second, 1)
        assert w1.dropped == 1  # its summary says so
        owners = {
            entry["message_id"]: entry["consumer"]
            for entry in await client.xpending_range(w1.keys.queue, "senders", "-", "+", 10)
        }
        assert list(owners.values()) == ["w1"]
        assert await row_states(redis_url) == {1: "u", 2: "i:w1"}
    finally:
        await client.aclose()


async def test_a_lease_renewal_never_takes_back_an_entry_another_worker_took_over(
    redis_url: str,
) -> None:
    """The renewal of a worker woken past --lease leaves another worker's takeover alone (a
    plain XCLAIM would move the entry back, and both would settle it); the message's stop,
    never sent from w1, prints no record there."""
    client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        w1 = CampaignQueue(client, CAMPAIGN, worker="w1", lease_s=0.001)
        w2 = CampaignQueue(client, CAMPAIGN, worker="w2", lease_s=0.001)
        await _open_campaign(client, w1)
        await w1.add([Message(1, "447400010001", "Hi", Encoding.GSM7, 1, "c-1")])
        claimed = await w1.claim()
        assert isinstance(claimed, Message)
        await _lapsed(client, w1)
        assert isinstance(await w2._claim_abandoned(), Record)
        await w1._renew()
        (entry,) = await client.xpending_range(w1.keys.queue, "senders", "-", "+", 10)
        assert entry["consumer"] == "w2"
        printed: list[Record] = []
        stop = RowError(ErrorKind.STOPPED, "interrupted", "the run was stopped")
        w1.settle(Record(1, claimed.to, Status.SKIPPED, "c-1", 0, error=stop), printed.append)
        await w1.writes_done()
        assert printed == []
        assert await row_states(redis_url) == {1: "i:w2"}
    finally:
        await client.aclose()


class _RenewalLosesACancellation(CampaignQueue):
    """A queue whose lease renewal does what redis-py's write does on Python 3.11 (it awaits
    asyncio.wait_for, CPython issue 86296): a cancellation that arrives as the call ends is
    lost, and the call returns normally."""

    entered: asyncio.Event

    async def _renew(self) -> None:
        if not self.entered.is_set():
            self.entered.set()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()  # until close cancels the renewer
        await super()._renew()


async def test_a_lease_renewer_whose_cancellation_is_lost_still_stops(redis_url: str) -> None:
    """The renewer carries on after a lost cancellation: it ends at its next turn, rather than
    renewing the worker's leases for ever while close waits for it."""
    client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        queue = _RenewalLosesACancellation(client, CAMPAIGN, worker="w1", lease_s=0.03)
        queue.entered = asyncio.Event()
        await queue.ensure_group()
        queue.start()
        async with asyncio.timeout(STOP_BOUND_S):
            await queue.entered.wait()
            await queue.close()
    finally:
        await client.aclose()


async def _frozen_past_the_grace(
    redis: RestartableRedis, tmp_path: Path
) -> tuple[Watched, RunningSimulator, int]:
    """A worker whose Redis froze with messages claimed and waiting for their rate slots, once
    it gave Redis up (--redis-grace 1) and looks for it to hand them back; the rows queued."""
    rows = 300
    path = campaign_csv(tmp_path, rows)
    assert (await run_cli(*enqueue_args(redis.url, path))).code == 0
    simulator = await start_simulator(SimulatorConfig(latency_ms=20))
    args = worker_args(redis.url, simulator, "--rate", "20", "--window", "16",
                       "--redis-grace", "1", "--name", "w1")  # fmt: skip
    worker = Watched(await start_cli(*args))
    await simulator.wait_for_accepted(10)
    redis.freeze()
    if not await worker.wait_for("wait for it"):
        redis.thaw()
        await simulator.close()
        pytest.fail("the worker never looked for Redis past the grace:\n" + "".join(worker.lines))
    return worker, simulator, rows


@pytest.mark.slow
async def test_past_redis_grace_a_worker_hands_back_its_claims_once_a_frozen_redis_answers(
    restartable_redis: RestartableRedis, tmp_path: Path
) -> None:
    """Redis frozen (SIGSTOP) past --redis-grace: the worker stops (exit 4), and once Redis
    answers (SIGCONT) it hands back the messages it claimed and never sent and writes the ends
    of those it sent: none is left in flight for a takeover to call unknown, and a worker after
    it sends the rest, each row once."""
    async with asyncio.timeout(120):
        worker, simulator, rows = await _frozen_past_the_grace(restartable_redis, tmp_path)
        try:
            restartable_redis.thaw()
            code, stdout, stderr = await worker.finish()
            later = await run_cli(*worker_args(restartable_redis.url, simulator))
            stats = await simulator.stats()
        finally:
            await simulator.close()
    assert code == 4, stderr
    assert "longer than --redis-grace (1 s;" in stderr
    assert "claimed messages handed back unsent (stopped)" in stderr, stderr
    assert "not handed back" not in stderr
    assert "ends not written" not in stderr
    assert later.code == 0, later.stderr
    records = records_of(stdout, later.stdout)
    assert Counter(r["line"] for r in records) == Counter(range(1, rows + 1))
    assert {r["status"] for r in records} == {"sent"}
    assert all(r["accepted"] == 1 for r in stats["recipients"].values()), "sent twice"
    assert await row_states(restartable_redis.url) == dict.fromkeys(range(1, rows + 1), "s")


@pytest.mark.slow
async def test_past_redis_grace_sigterm_stops_a_worker_waiting_for_a_frozen_redis(
    restartable_redis: RestartableRedis, tmp_path: Path
) -> None:
    """SIGTERM ends the worker's look for a frozen Redis at once (exit 4): the messages it
    claimed and never sent are left to the lease, and the summary says so."""
    async with asyncio.timeout(120):
        worker, simulator, _ = await _frozen_past_the_grace(restartable_redis, tmp_path)
        try:
            worker.process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(STOP_BOUND_S):
                code, _, stderr = await worker.finish()
        finally:
            restartable_redis.thaw()
            await simulator.close()
    assert code == 4, stderr
    assert "claimed messages never sent not handed back (Redis did not answer)" in stderr, stderr
    left = [line for line, state in (await row_states(restartable_redis.url)).items()
            if state == "i:w1"]  # fmt: skip
    assert left, "the claims left in flight, to the lease"


@pytest.mark.slow
async def test_a_second_signal_while_redis_is_away_aborts_the_worker_at_once(
    restartable_redis: RestartableRedis, tmp_path: Path
) -> None:
    """The rows' ends wait for Redis (up to a long --redis-grace) after a first SIGINT; a second
    one aborts without waiting, exit 130, and counts the ends not written."""
    rows = 200
    path = campaign_csv(tmp_path, rows)
    url = restartable_redis.url
    assert (await run_cli(*enqueue_args(url, path))).code == 0
    async with simulator_with(latency_ms=100) as simulator:
        args = worker_args(url, simulator, "--rate", "100", "--window", "8", "--redis-grace", "600")
        worker = Watched(await start_cli(*args))
        async with asyncio.timeout(60):
            await simulator.wait_for_accepted(20)
            restartable_redis.kill()
            assert await worker.wait_for("Redis lost"), "".join(worker.lines)
            worker.process.send_signal(signal.SIGINT)
            assert await worker.wait_for("stopping"), "".join(worker.lines)
            worker.process.send_signal(signal.SIGINT)
            code, stdout, stderr = await worker.finish()
    assert code == 130, stderr
    assert "interrupted: aborted" in stderr
    assert "ends not written to Redis" in stderr
    assert len(records_of(stdout)) >= 20


@contextlib.asynccontextmanager
async def proxy_dropping(redis_url: str, marker: bytes, drops: int) -> AsyncIterator[str]:
    """A loopback TCP proxy to `redis_url` that closes the connection of the first `drops`
    commands containing `marker`, as a Redis that went away under them would; yields its URL."""
    host, port = redis_url.removeprefix("redis://").split("/")[0].split(":")
    left = [drops]

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, check: bool) -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                if check and marker in chunk and left[0] > 0:
                    left[0] -= 1
                    break
                writer.write(chunk)
                await writer.drain()
        writer.close()

    async def serve(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(host, int(port))
        await asyncio.gather(pump(client_r, server_w, True), pump(server_r, client_w, False))
        client_w.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"
    finally:
        server.close()


@pytest.mark.slow
async def test_a_worker_that_loses_redis_as_it_starts_applying_receipts_rides_it_out(
    redis_url: str, tmp_path: Path
) -> None:
    """Redis gone when the worker sets up its receipts group (a restart just after it
    connected): it waits for Redis like any other call, sends every row and exits 0, not 4."""
    path = campaign_csv(tmp_path, 5)
    assert (await run_cli(*enqueue_args(redis_url, path))).code == 0
    # Twice: the client tries a command once more at once before it reports the connection lost.
    async with (
        proxy_dropping(redis_url, b"smsb:receipts", drops=2) as url,
        simulator_with() as simulator,
    ):
        run = await run_cli(*worker_args(url, simulator, "--redis-grace", "10"))
    assert run.code == 0, run.stderr
    assert "Redis lost" in run.stderr
    assert sorted(r["line"] for r in records_of(run.stdout)) == [1, 2, 3, 4, 5]


@contextlib.asynccontextmanager
async def proxy_killing(
    redis_url: str, marker: bytes, *, answered: bool
) -> AsyncIterator[tuple[str, list[asyncio.subprocess.Process]]]:
    """A loopback TCP proxy to `redis_url` that SIGKILLs the process using it (put in the list it
    yields with its URL) at the first command containing `marker`: before the command reaches
    Redis, or once Redis has run it (`answered`: the answer never reaches the process)."""
    host, port = redis_url.removeprefix("redis://").split("/")[0].split(":")
    victims: list[asyncio.subprocess.Process] = []
    fired = [False]

    async def serve(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(host, int(port))
        asked = asyncio.Event()  # the marked command went to Redis on this connection

        async def requests() -> None:
            with contextlib.suppress(ConnectionError):
                while chunk := await client_r.read(65536):
                    if marker in chunk and not fired[0]:
                        fired[0] = True
                        if not answered:
                            victims[0].kill()
                            break
                        asked.set()
                    server_w.write(chunk)
                    await server_w.drain()
            server_w.close()  # Redis closes its side: `answers` ends

        async def answers() -> None:
            with contextlib.suppress(ConnectionError):
                while chunk := await server_r.read(65536):
                    if asked.is_set():
                        victims[0].kill()
                        break
                    client_w.write(chunk)
                    await client_w.drain()
            client_w.close()

        await asyncio.gather(requests(), answers())

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0", victims
    finally:
        server.close()


# The worker's call that writes a row's end to Redis (the settle script, by its digest).
SETTLE_CALL = hashlib.sha1(work_queue._SETTLE.encode()).hexdigest().encode()


async def worker_killed_at_settle(
    redis_url: str, simulator: RunningSimulator, output: Path, *extra: str, answered: bool
) -> list[dict[str, Any]]:
    """The records of a worker SIGKILLed at its first write of a row's end (before it reaches
    Redis, or once Redis `answered`). They go to --output: a file's records wait in the process
    for a flush whatever the environment says of stdout (PYTHONUNBUFFERED)."""
    async with proxy_killing(redis_url, SETTLE_CALL, answered=answered) as (url, victims):
        args = worker_args(url, simulator, "--output", str(output), *extra)
        victims.append(await start_cli(*args))
        async with asyncio.timeout(30):
            await victims[0].communicate()
    assert victims[0].returncode == -signal.SIGKILL
    return records_of(await asyncio.to_thread(output.read_bytes))


def outcomes(records: list[dict[str, Any]]) -> list[tuple[int, str, str | None]]:
    return [(r["line"], r["status"], r["error"] and r["error"]["code"]) for r in records]


async def killed_then_finished(
    redis_url: str, tmp_path: Path, *, answered: bool
) -> tuple[list[dict[str, Any]], Run, int]:
    """A one-row campaign whose worker is killed at the write of the row's end, then a worker
    that finishes it: (the killed worker's records, the finishing run, messages accepted)."""
    assert (await run_cli(*enqueue_args(redis_url, campaign_csv(tmp_path, 1)))).code == 0
    async with simulator_with() as simulator:
        output = tmp_path / "victim.jsonl"
        victim = await worker_killed_at_settle(redis_url, simulator, output, answered=answered)
        after = await run_cli(*worker_args(redis_url, simulator, "--lease", "1"))
        stats = await simulator.stats()
    return victim, after, stats["accepted"]


@pytest.mark.slow
async def test_a_worker_killed_once_redis_holds_a_rows_end_has_printed_its_record(
    redis_url: str, tmp_path: Path
) -> None:
    """SIGKILLed as Redis answers the write of a row's end: the record is out already, and no
    other worker records the row again."""
    victim, after, accepted = await killed_then_finished(redis_url, tmp_path, answered=True)
    assert outcomes(victim) == [(1, "sent", None)]
    assert after.code == 0, after.stderr
    assert after.records == []
    assert await row_states(redis_url) == {1: "s"}
    assert accepted == 1


@pytest.mark.slow
async def test_a_worker_killed_before_redis_holds_a_rows_end_leaves_it_unknown_not_resent(
    redis_url: str, tmp_path: Path
) -> None:
    """SIGKILLed as it writes the end of a row it printed: the row is still in flight, so the
    takeover records it unknown (worker_lost) beside the printed record and never resends it."""
    victim, after, accepted = await killed_then_finished(redis_url, tmp_path, answered=False)
    assert outcomes(victim) == [(1, "sent", None)]
    assert after.code == 1, after.stderr
    assert outcomes(after.records) == [(1, "unknown", "worker_lost")]
    assert await row_states(redis_url) == {1: "u"}
    assert accepted == 1


@pytest.mark.slow
async def test_a_takeover_killed_once_redis_holds_its_unknown_has_printed_it(
    redis_url: str, tmp_path: Path
) -> None:
    """The worker taking over a row in flight prints its unknown record before Redis holds it:
    killed as Redis answers, it has printed it, and no later worker records the row again."""
    assert (await run_cli(*enqueue_args(redis_url, campaign_csv(tmp_path, 1)))).code == 0
    async with simulator_with() as simulator:
        first_out, taker_out = tmp_path / "first.jsonl", tmp_path / "taker.jsonl"
        await worker_killed_at_settle(redis_url, simulator, first_out, answered=False)
        taker = await worker_killed_at_settle(
            redis_url, simulator, taker_out, "--lease", "1", answered=True
        )
        after = await run_cli(*worker_args(redis_url, simulator, "--lease", "1"))
        stats = await simulator.stats()
    assert outcomes(taker) == [(1, "unknown", "worker_lost")]
    assert after.code == 0, after.stderr
    assert after.records == []
    assert await row_states(redis_url) == {1: "u"}
    assert stats["accepted"] == 1


def test_a_stream_entry_carries_the_plain_parts_of_a_changed_text() -> None:
    """A message smart encoding changed keeps its plain parts through the queue; an entry an
    older enqueue wrote, without the field, reads as a text sent as given."""
    message = Message(3, "447911123456", "It's", Encoding.GSM7, 1, "c0ffee000000-3",
                      plain_segments=2)  # fmt: skip
    entry = dict(zip(ENTRY_FIELDS, work_queue.message_fields(message), strict=True))
    assert work_queue.message_from(entry) == message
    del entry["plain"]
    assert work_queue.message_from(entry).plain_segments is None


class _WaitSeen(asyncio.Event):
    """An event that says when someone began to wait on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = asyncio.Event()

    async def wait(self) -> bool:  # type: ignore[override]
        self.waiting.set()
        return await super().wait()


async def test_a_claim_that_ends_while_redis_comes_back_is_not_handed_back(redis_url: str) -> None:
    """Redis back: the worker hands back entries it claimed by calls whose answers were lost.
    A claim under way then, whose answer comes while the recovery waits for it, holds an entry
    the worker sends: handed back too, another worker claimed and sent the row again."""
    client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        setup = CampaignQueue(client, CAMPAIGN)
        await client.hset(setup.keys.meta, mapping={"campaign_id": "c", "done": "1"})
        await setup.ensure_group()
        await setup.add([Message(1, "447400010001", "Hi Ann", Encoding.GSM7, 1, "c-1")])
        worker = CampaignQueue(client, CAMPAIGN, worker="W")
        worker._claiming = 1  # a claim under way as Redis comes back
        idle = worker._claims_idle = _WaitSeen()
        recovering = asyncio.ensure_future(worker._recover())
        await idle.waiting.wait()  # the recovery looked at what it holds, and waits for the claim
        claimed = await worker._claim_next()  # the claim's answer: the worker sends this row
        assert isinstance(claimed, Message)
        worker._claiming = 0
        idle.set()
        await recovering
        other = CampaignQueue(client, CAMPAIGN, worker="V")
        assert await other._claim_next() is None
        assert await row_states(redis_url) == {1: "i:W"}
    finally:
        await client.aclose()
