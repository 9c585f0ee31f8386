"""Sender pools in distributed mode: enqueue chooses each row's sender and keeps the pool in
Redis; workers send each row from its sender, under each sender's limit in Redis."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from sms_blaster.pool import parse_pool
from tests.cli_helpers import run_cli
from tests.test_distributed import (
    CAMPAIGN,
    campaign_csv,
    records_of,
    run_workers,
    simulator_with,
    worker_args,
)

POOL = "sender,rate\n447000000001,20\n447000000002,20\n"


def enqueue_pool(redis_url: str, path: Path, pool: Path) -> list[str]:
    return ["enqueue", str(path), "--redis", redis_url, "--campaign", CAMPAIGN,
            "--from-pool", str(pool), "--text", "Hi {name}"]  # fmt: skip


async def test_workers_send_each_row_once_from_the_sender_enqueue_chose(
    redis_url: str, tmp_path: Path
) -> None:
    """Two workers: every row sent once, its record and its request naming the pool's sender."""
    pool = tmp_path / "pool.csv"
    pool.write_text(POOL)
    rows = 40
    path = campaign_csv(tmp_path, rows)
    enqueued = await run_cli(*enqueue_pool(redis_url, path, pool))
    assert enqueued.code == 0, enqueued.stderr
    async with simulator_with() as simulator:
        outputs = await run_workers(2, worker_args(redis_url, simulator, "--rate", "100"))
        stats = await simulator.stats()
    records = records_of(*(stdout for stdout, _ in outputs))
    assert Counter(r["line"] for r in records) == Counter(range(1, rows + 1))
    chosen = parse_pool(POOL.splitlines(), "pool")
    assert all(r["from"] == chosen.choose(r["to"]) for r in records)
    sent_from = {to: seen["messages"][0]["from"] for to, seen in stats["recipients"].items()}
    assert sent_from == {r["to"]: r["from"] for r in records}
    assert Counter(r["from"] for r in records) == {
        sender: summary["count"] for sender, summary in stats["senders"].items()
    }


async def test_report_redis_counts_the_sends_of_each_sender_of_the_pool(
    redis_url: str, tmp_path: Path
) -> None:
    """`report --redis --json` has the pool's senders with their sent rows, as the records say."""
    pool = tmp_path / "pool.csv"
    pool.write_text(POOL)
    path = campaign_csv(tmp_path, 30)
    assert (await run_cli(*enqueue_pool(redis_url, path, pool))).code == 0
    async with simulator_with() as simulator:
        outputs = await run_workers(2, worker_args(redis_url, simulator, "--rate", "100"))
    records = records_of(*(stdout for stdout, _ in outputs))
    report = await run_cli("report", "--redis", redis_url, "--campaign", CAMPAIGN, "--json")
    assert report.code == 0, report.stderr
    (campaign,) = json.loads(report.stdout)["campaigns"]
    counted = {entry["sender"]: entry["sent"] for entry in campaign["senders"]}
    assert counted == Counter(r["from"] for r in records if r["status"] == "sent")


async def test_enqueue_with_another_pool_into_the_same_campaign_is_refused(
    redis_url: str, tmp_path: Path
) -> None:
    """The rows queued before went to the first pool's senders: exit 4, nothing added."""
    pool = tmp_path / "pool.csv"
    pool.write_text(POOL)
    path = campaign_csv(tmp_path, 3)
    assert (await run_cli(*enqueue_pool(redis_url, path, pool))).code == 0
    pool.write_text(POOL + "447000000003,20\n")
    again = await run_cli(*enqueue_pool(redis_url, path, pool))
    assert again.code == 4
    assert "was enqueued with another --from-pool" in again.stderr
