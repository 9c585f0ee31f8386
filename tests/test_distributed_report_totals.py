"""`report --redis`: its totals in text, JSON and page agree, and are exact."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis

from sms_blaster.distributed.keys import CampaignKeys
from tests.cli_helpers import run_cli
from tests.redis_helpers import add_dlrs
from tests.test_distributed import (
    CAMPAIGN,
    campaign_csv,
    enqueue_args,
    records_of,
    run_workers,
    simulator_with,
    worker_args,
)


async def _report_json(redis_url: str) -> dict[str, Any]:
    report = await run_cli("report", "--redis", redis_url, "--campaign", CAMPAIGN, "--json")
    assert report.code == 0, report.stderr
    (campaign,) = json.loads(report.stdout)["campaigns"]
    assert isinstance(campaign, dict)
    return campaign


@pytest.mark.slow
async def test_a_distributed_campaigns_cost_is_the_exact_sum_of_its_prices(
    redis_url: str, tmp_path: Path
) -> None:
    """Sixty rows at 1.3 a part cost exactly 78 in `--json` and the text report (a float sum in
    Redis said 78.00000000000000001)."""
    rows = 60
    await run_cli(*enqueue_args(redis_url, campaign_csv(tmp_path, rows)))
    async with simulator_with(price_per_part=Decimal("1.30000000")) as simulator:
        await run_workers(1, worker_args(redis_url, simulator, "--rate", "1000"))
    campaign = await _report_json(redis_url)
    text = await run_cli("report", "--redis", redis_url, "--campaign", CAMPAIGN)
    assert campaign["cost"] == "78"
    assert re.search(r"^ *cost +78$", text.stdout.decode(), re.MULTILINE)


@pytest.mark.slow
async def test_a_receipt_for_a_row_still_in_flight_counts_it_sent_never_a_negative_pending(
    redis_url: str, tmp_path: Path
) -> None:
    """Two rows read while in flight (a worker's settle not landed) whose receipts arrived: both
    `rows` and the funnel count them sent, and nothing is pending."""
    rows = 20
    await run_cli(*enqueue_args(redis_url, campaign_csv(tmp_path, rows)))
    async with simulator_with() as simulator:
        ((stdout, _),) = await run_workers(1, worker_args(redis_url, simulator, "--rate", "1000"))
    add_dlrs(redis_url, [
        (r["client_ref"], r["message_ids"][0], "delivered", "delivered", "")
        for r in records_of(stdout)
    ])  # fmt: skip
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        client.hset(CampaignKeys(CAMPAIGN).rows, mapping={"1": "i:gone", "2": "u"})
    finally:
        client.close()
    campaign = await _report_json(redis_url)
    assert campaign["rows"] == {**campaign["rows"], "sent": rows, "inflight": 0, "unknown": 0}
    assert campaign["delivery"] == {
        **campaign["delivery"],
        "sent": rows,
        "delivered": rows,
        "pending": 0,
    }


@pytest.mark.slow
async def test_a_distributed_pages_worker_settings_leave_out_a_journals_and_an_enqueues(
    redis_url: str, tmp_path: Path
) -> None:
    """A worker keeps no journal and reads no input: its settings on the page show neither."""
    await run_cli(*enqueue_args(redis_url, campaign_csv(tmp_path, 5)))
    async with simulator_with() as simulator:
        await run_workers(1, worker_args(redis_url, simulator, "--rate", "1000"))
    page = await run_cli("report", "--redis", redis_url, "--campaign", CAMPAIGN, "--html", "-")
    html = page.stdout.decode()
    assert "rate_per_s" in html
    assert not {"use_journal", "journal_fsync", "input_path"} & set(re.findall(r"[a-z_]+", html))
