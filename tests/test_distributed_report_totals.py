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
from sms_blaster.distributed.report import RowReceipts
from sms_blaster.distributed.report_view import Recorded, campaign_view
from sms_blaster.distributed.timeline import Second
from sms_blaster.html_report.model import CampaignView, RunSpan
from sms_blaster.journal.queries import CampaignSummary, StateCounts
from sms_blaster.journal.timeline import TimelineSecond
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


def _ended_at_s(label: str) -> float:
    return float(label.rpartition("|")[2])


def _page_figures(html: str) -> dict[str, Decimal]:
    found = re.findall(r'data-key="([^"]+)" data-value="([^"]+)"', html)
    return {key: Decimal(value) for key, value in found}


@pytest.mark.slow
async def test_a_distributed_pages_totals_are_the_json_reports_when_the_timeline_missed_rows(
    redis_url: str, tmp_path: Path
) -> None:
    """A worker's last second lost (killed before writing it): the page's segments and cost
    are still `--json`'s, its cost lines add up to them, and it says what the timeline missed."""
    await run_cli(*enqueue_args(redis_url, campaign_csv(tmp_path, 40)))
    async with simulator_with() as simulator:
        await run_workers(1, worker_args(redis_url, simulator, "--rate", "1000"))
    keys = CampaignKeys(CAMPAIGN)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:  # as if the worker was killed before it wrote its last second and totals
        seconds: Any = client.hgetall(keys.seconds)  # str keys: decode_responses
        sent_in = {label: json.loads(text)["sent"] for label, text in seconds.items()}
        last = max((label for label, sent in sent_in.items() if sent), key=_ended_at_s)
        missed = sent_in[last]
        client.hdel(keys.seconds, last)
        runs: Any = client.hgetall(keys.runs)
        for field, text in runs.items():
            if field.endswith("|totals"):
                totals = json.loads(text)
                segments, encoding, rows, cost = totals["costs"][0]
                price = Decimal(cost) / rows
                kept = [segments, encoding, rows - missed, str(price * (rows - missed))]
                client.hset(keys.runs, field, json.dumps({**totals, "costs": [kept]}))
    finally:
        client.close()
    campaign = await _report_json(redis_url)
    page = await run_cli("report", "--redis", redis_url, "--campaign", CAMPAIGN, "--html", "-")
    html = page.stdout.decode()
    figures = _page_figures(html)
    assert missed > 0
    assert figures["segments_sent"] == campaign["segments_sent"] == 40
    assert figures["cost"] == Decimal(campaign["cost"])
    costs = re.findall(
        r'<td class="n">[\d,]+</td><td class="n">[\d,]+</td><td class="n">([\d,.]+)<', html
    )
    assert sum(Decimal(cost.replace(",", "")) for cost in costs) == figures["cost"]
    assert f"when {missed:,} of the 40 sent rows were sent" in html


def _view_of_one_row_delivered_at(received_at_s: float) -> CampaignView:
    """Row 1 sent by w1 in the second 1000-1001 and delivered at `received_at_s`."""
    receipts = RowReceipts(timed=True)
    receipts.add(f"1|delivered|1|delivered||{received_at_s}")
    receipts.decide({}, per_part=False)
    figures = TimelineSecond(1001.0, 1, 0, 1, 0, 0, 1, 100.0, 40.0, 42.0)
    run = RunSpan("w1", 1000.0, 1003.0, 0, ())
    seconds = (("w1", Second(figures, 1000.0, {30: 1}, (1,))),)
    summary = CampaignSummary(
        name=CAMPAIGN, campaign_id="c1", input="in.csv", sender="Shop", provider="vonage-sms",
        created_at_s=1000.0, rows=StateCounts(sent=1), errors=(), segments_sent=1,
        cost=Decimal(0), first_sent_at_s=None, last_sent_at_s=None, sent_per_minute=(),
        latency=None, delivery=None,
    )  # fmt: skip
    recorded = Recorded(runs=(run,), totals=(), seconds=seconds)
    return campaign_view(summary, recorded, receipts, "redis://127.0.0.1:6379/0")


def test_a_receipt_stored_before_its_rows_second_ended_counts_no_earlier_than_the_send() -> None:
    """Delivered at 1000.9, sent in the second ending at 1001.0: no bucket has more delivered
    than sent so far, in the worker's series or the total."""
    view = _view_of_one_row_delivered_at(1000.9)
    for series in view.series:
        sent = delivered = 0
        for bucket in series.buckets:
            sent, delivered = sent + bucket.sent, delivered + bucket.delivered
            assert delivered <= sent, series.worker
        assert delivered == 1


def test_a_receipt_sooner_than_half_its_second_is_said_to_be_in_the_first_bin() -> None:
    """Delivered at 1000.3, before the middle of the second it was sent in: the page says its
    time to delivery was counted in the first bin."""
    view = _view_of_one_row_delivered_at(1000.3)
    assert any("counts in the first bin (it holds 1)" in note for note in view.not_recorded)


@pytest.mark.slow
async def test_a_distributed_reports_send_times_and_latency_come_from_the_timeline(
    redis_url: str, tmp_path: Path
) -> None:
    """Text, JSON and page all give the first and last send, the sends a minute and latency
    percentiles to 0.1 ms, the page's the same as `--json`'s."""
    rows = 30
    await run_cli(*enqueue_args(redis_url, campaign_csv(tmp_path, rows)))
    async with simulator_with() as simulator:
        await run_workers(1, worker_args(redis_url, simulator, "--rate", "1000"))
    campaign = await _report_json(redis_url)
    text = (await run_cli("report", "--redis", redis_url, "--campaign", CAMPAIGN)).stdout.decode()
    page = await run_cli("report", "--redis", redis_url, "--campaign", CAMPAIGN, "--html", "-")
    latency = campaign["latency_ms"]
    assert campaign["first_sent_at_s"] <= campaign["last_sent_at_s"]
    assert sum(minute["sent"] for minute in campaign["sent_per_minute"]) == rows
    assert all(value == round(value, 1) for value in latency.values())
    assert latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    assert f"p50 {latency['p50']:,.1f} ms" in text
    assert "nothing sent" not in text
    assert _page_figures(page.stdout.decode())["latency_ms.p50"] == Decimal(str(latency["p50"]))
