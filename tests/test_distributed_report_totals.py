"""`report --redis`: its totals in text, JSON and page agree, and are exact."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path

import pytest

from tests.cli_helpers import run_cli
from tests.test_distributed import (
    CAMPAIGN,
    campaign_csv,
    enqueue_args,
    run_workers,
    simulator_with,
    worker_args,
)


async def _report_json(redis_url: str) -> dict[str, object]:
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
