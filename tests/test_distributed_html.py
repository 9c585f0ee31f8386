"""`report --redis ... --html`: the workers' timeline in Redis, and the page drawn from it."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import socket
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from sms_blaster.distributed.keys import CampaignKeys
from sms_blaster.distributed.report import RowReceipts
from sms_blaster.distributed.report_view import (
    Recorded,
    campaign_view,
    load_view,
    with_last_seconds,
)
from sms_blaster.distributed.run import _ended_by
from sms_blaster.distributed.timeline import (
    Second,
    TimelineRecorder,
    pack_lines,
    unpack_lines,
    worker_settings,
)
from sms_blaster.errors import FatalProviderError
from sms_blaster.html_report.figures import setting_pairs
from sms_blaster.html_report.model import TOTAL, CampaignView, RunSpan, WorkerSeries
from sms_blaster.html_report.settings_shown import shown_settings
from sms_blaster.journal.queries import CampaignSummary, StateCounts
from sms_blaster.journal.timeline import TimelineSecond
from sms_blaster.models import Encoding, Record, Status
from sms_blaster.output import LatencyHistogram
from sms_blaster.providers.names import ProviderName
from sms_blaster.run_stats import RunSnapshot
from sms_blaster.settings import DistributedSettings, RunSettings
from tests.cli_helpers import run_cli
from tests.redis_helpers import RestartableRedis, add_dlrs
from tests.test_distributed import (
    CAMPAIGN,
    campaign_csv,
    enqueue_args,
    records_of,
    run_workers,
    simulator_with,
    two_workers_through_a_restart,
    worker_args,
)

URL = "redis://127.0.0.1:6379/0"


def _snapshot(at_s: float, sent: int, requests: int, latency: LatencyHistogram) -> RunSnapshot:
    return RunSnapshot(
        at_s=at_s, elapsed_s=at_s - 1000.0, rows_by_status={"sent": sent}, errors={},
        segments=sent, cost=Decimal(0), requests=requests, throttled=1, in_flight=0, window=8,
        rate_ceiling_per_s=50.0, pace_per_s=40.0, limit_per_s=42.0, latency=latency,
    )  # fmt: skip


def _second(at_s: float, sent: int, lines: tuple[int, ...], window: int = 8) -> Second:
    figures = TimelineSecond(at_s, sent + 1, 1, sent, 0, 0, window, 100.0, 40.0, 42.0)
    return Second(figures, at_s - 1.0, {30: sent}, lines)


def _summary(sent: int) -> CampaignSummary:
    return CampaignSummary(
        name=CAMPAIGN, campaign_id="c1", input="in.csv", sender="Shop", provider="vonage-sms",
        created_at_s=1000.0, rows=StateCounts(sent=sent), errors=(), segments_sent=sent,
        cost=Decimal(0), first_sent_at_s=None, last_sent_at_s=None, sent_per_minute=(),
        latency=None, delivery=None,
    )  # fmt: skip


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_lines_packed_as_gaps_unpack_to_the_same_lines() -> None:
    """A second's lines survive their packing, which is a few bytes a line."""
    lines = (3, 4, 5, 90, 1000)
    assert pack_lines(lines) == "3,1,1,85,910"
    assert unpack_lines(pack_lines(lines)) == lines
    assert unpack_lines(pack_lines(())) == ()


def test_a_workers_settings_keep_no_secret() -> None:
    """The API key and secret are left out, and Redis's password is masked."""
    settings = RunSettings(api_key="KEY123", api_secret="SECRET456")
    dist = DistributedSettings("redis://:pa55word@10.0.0.5:6379/0", CAMPAIGN)
    text = worker_settings(settings, dist)
    assert not any(secret in text for secret in ("KEY123", "SECRET456", "pa55word"))
    assert json.loads(text)["redis_url"] == "redis://:***@10.0.0.5:6379/0"


def test_the_page_shows_every_setting_a_worker_records() -> None:
    """A worker records only settings that apply to it: the page drops only another API's."""
    settings = RunSettings(provider=ProviderName.TWILIO, force=True, sender="Shop", text="Hi")
    dist = DistributedSettings("redis://10.0.0.5:6379/0", CAMPAIGN)
    recorded = setting_pairs(worker_settings(settings, dist))
    dropped = {name for name, _ in recorded} - {name for name, _ in shown_settings(recorded)}
    assert dropped == {"application_id", "private_key_path"}  # Vonage Messages' own


def test_a_second_reads_back_from_its_json() -> None:
    """What a worker writes for a second is what the report reads."""
    second = _second(1001.0, 5, (1, 2, 7))
    assert Second.from_json(second.to_json()) == second


def test_the_view_has_a_series_per_worker_and_a_total_that_adds_them_up() -> None:
    """Two workers' seconds: each its own series, the total their sum, windows added."""
    seconds = (
        ("w1", _second(1001.0, 3, (1, 2, 3))),
        ("w1", _second(1002.0, 2, (5, 6))),
        ("w2", _second(1001.0, 4, (4, 7, 8, 9), window=4)),
    )
    recorded = Recorded(runs=(RunSpan("w1", 1000.0, 1002.0, 0, ()),), totals=(), seconds=seconds)
    view = campaign_view(_summary(9), recorded, RowReceipts(timed=True), URL)
    assert [series.worker for series in view.series] == ["w1", "w2", TOTAL]
    sent = {series.worker: sum(b.sent for b in series.buckets) for series in view.series}
    assert sent == {"w1": 5, "w2": 4, TOTAL: 9}
    total = _series(view, TOTAL)
    assert max(bucket.window or 0 for bucket in total.buckets) == 12


def test_a_receipt_counts_for_the_worker_that_sent_its_row_and_in_the_total() -> None:
    """Row 4 was sent by w2 and delivered: w2's series and the total count it, w1's not."""
    receipts = RowReceipts(timed=True)
    receipts.add("4|delivered|1|delivered||1003.5")
    receipts.decide({}, per_part=False)
    seconds = (("w1", _second(1001.0, 1, (1,))), ("w2", _second(1001.0, 1, (4,))))
    recorded = Recorded(runs=(), totals=(), seconds=seconds)
    view = campaign_view(_summary(2), recorded, receipts, URL)
    delivered = {series.worker: sum(b.delivered for b in series.buckets) for series in view.series}
    assert delivered == {"w1": 0, "w2": 1, TOTAL: 1}


async def test_a_recorder_writes_its_start_seconds_totals_and_end(redis_url: str) -> None:
    """Started, noting a sent record, and finished: Redis holds the run, its second and end."""
    latency = LatencyHistogram()
    snapshots = iter([_snapshot(1000.5, 0, 0, latency), _snapshot(1001.2, 1, 2, latency)])
    redis: aioredis.Redis = aioredis.from_url(redis_url, decode_responses=True)
    keys = CampaignKeys(CAMPAIGN)
    try:
        await redis.hset(keys.meta, "campaign_id", "c1")  # the campaign, as enqueue keeps it
        recorder = TimelineRecorder(redis, keys, "w1")
        await recorder.start(lambda: next(snapshots), json.dumps({"rate_per_s": 50.0}))
        latency.add(12.0)
        recorder.note(Record(7, "447700", Status.SENT, "c1-7", 1, ("m7",), 1, Encoding.GSM7,
                             Decimal("0.03")))  # fmt: skip
        await recorder.finish(0)
        runs: Any = await redis.hgetall(keys.runs)  # str keys: decode_responses
        seconds: Any = await redis.hgetall(keys.seconds)
    finally:
        await redis.aclose()
    assert set(runs) == {"w1|1000.000", "w1|1000.000|totals", "w1|1000.000|end"}
    assert json.loads(runs["w1|1000.000|end"])["exit_code"] == 0
    ((label, text),) = seconds.items()
    second = Second.from_json(text)
    assert label == "w1|1001.200"
    assert (second.figures.sent, second.figures.requests, second.lines) == (1, 2, (7,))
    assert sum(second.latency.values()) == 1
    assert json.loads(runs["w1|1000.000|totals"])["costs"] == [[1, "gsm7", 1, "0.03"]]


async def test_a_recorder_writes_nothing_for_a_campaign_redis_lost(redis_url: str) -> None:
    """The campaign's settings gone (a flush between two seconds): the recorder's start, second
    and end leave nothing of it in that Redis (only the worker's loss marker may be there)."""
    latency = LatencyHistogram()
    snapshots = iter([_snapshot(1000.5, 0, 0, latency), _snapshot(1001.2, 1, 2, latency)])
    redis: aioredis.Redis = aioredis.from_url(redis_url, decode_responses=True)
    keys = CampaignKeys(CAMPAIGN)
    try:
        recorder = TimelineRecorder(redis, keys, "w1")
        await recorder.start(lambda: next(snapshots), "{}")
        recorder.note(Record(7, "447700", Status.SENT, "c1-7", 1, ("m7",), 1, Encoding.GSM7,
                             Decimal("0.03")))  # fmt: skip
        await recorder.finish(0)
        left = await redis.keys(f"smsb:c:{{{CAMPAIGN}}}:*")
    finally:
        await redis.aclose()
    assert left == []


async def test_a_recorder_writes_nothing_for_a_second_in_which_nothing_happened(
    redis_url: str,
) -> None:
    """A worker waiting for work (--follow) adds no field a second to Redis."""
    latency = LatencyHistogram()
    ticks = 0

    async def one_tick(_: float) -> None:
        nonlocal ticks
        ticks += 1
        if ticks > 1:
            raise asyncio.CancelledError

    redis: aioredis.Redis = aioredis.from_url(redis_url, decode_responses=True)
    keys = CampaignKeys(CAMPAIGN)
    try:
        recorder = TimelineRecorder(redis, keys, "w1", sleep=one_tick)
        await recorder.start(lambda: _snapshot(1000.5, 3, 4, latency), "{}")
        with pytest.raises(asyncio.CancelledError):
            await recorder.run()
        written = await redis.hlen(keys.seconds)
    finally:
        await redis.aclose()
    assert (ticks, written) == (2, 0)


async def test_a_recorder_drops_what_an_absent_redis_does_not_take() -> None:
    """No Redis on the port: start and finish return without an error, nothing is kept."""
    latency = LatencyHistogram()
    redis = aioredis.from_url(f"redis://127.0.0.1:{_free_port()}/0", decode_responses=True)
    try:
        recorder = TimelineRecorder(redis, CampaignKeys(CAMPAIGN), "w1")
        async with asyncio.timeout(5):
            await recorder.start(lambda: _snapshot(1000.0, 0, 0, latency), "{}")
            await recorder.finish(1)
    finally:
        await redis.aclose()


async def view_of(url: str) -> CampaignView:
    """The page's view of the campaign, read with a client of the test's own."""
    client = aioredis.from_url(url, decode_responses=True)
    try:
        return await load_view(client, CAMPAIGN, url)
    finally:
        await client.aclose()


def _series(view: CampaignView, worker: str) -> WorkerSeries:
    (series,) = (series for series in view.series if series.worker == worker)
    return series


async def test_an_exception_ending_a_workers_sending_writes_its_end(redis_url: str) -> None:
    """Out of the worker's sending by an exception: its run's end holds that exception's code."""
    latency = LatencyHistogram()
    snapshots = iter([_snapshot(1000.5, 0, 0, latency), _snapshot(1001.2, 1, 1, latency)])
    redis: aioredis.Redis = aioredis.from_url(redis_url, decode_responses=True)
    keys = CampaignKeys(CAMPAIGN)
    try:
        await redis.hset(keys.meta, "campaign_id", "c1")  # the campaign, as enqueue keeps it
        recorder = TimelineRecorder(redis, keys, "w1")
        with contextlib.suppress(FatalProviderError):
            async with contextlib.AsyncExitStack() as stack:
                stack.push_async_exit(functools.partial(_ended_by, recorder))
                await recorder.start(lambda: next(snapshots), "{}")
                raise FatalProviderError("the provider refused the credentials")
        runs: Any = await redis.hgetall(keys.runs)  # str keys: decode_responses
    finally:
        await redis.aclose()
    assert json.loads(runs["w1|1000.000|end"])["exit_code"] == 3


@pytest.mark.slow
async def test_two_throttled_workers_page_agrees_with_the_json_report(
    redis_url: str, tmp_path: Path
) -> None:
    """Two workers against a provider slower than --rate: the page has a series per worker and a
    total, and its rows, cost and deliveries are those of `report --redis --json`."""
    rows = 150
    path = campaign_csv(tmp_path, rows, bad=2)
    assert (await run_cli(*enqueue_args(redis_url, path))).code == 1  # the bad rows
    async with simulator_with(rate_per_s=60, burst=3) as simulator:
        args = worker_args(redis_url, simulator, "--rate", "200", "--name")
        outputs = await asyncio.gather(
            run_workers(1, [*args, "one"]), run_workers(1, [*args, "two"])
        )
    records = records_of(*(stdout for output in outputs for stdout, _ in output))
    refs = {r["line"]: (r["client_ref"], r["message_ids"][0]) for r in records}
    add_dlrs(redis_url, [
        (*refs[line], *(("delivered", "delivered", "") if line % 5 else ("failed", "failed", "3")))
        for line in range(1, 41)
    ])  # fmt: skip
    report = await run_cli("report", "--redis", redis_url, "--campaign", CAMPAIGN, "--json")
    (summary,) = json.loads(report.stdout)["campaigns"]
    view = await view_of(redis_url)
    assert [series.worker for series in view.series] == ["one", "two", TOTAL]
    total = _series(view, TOTAL)
    assert sum(bucket.sent for bucket in total.buckets) == summary["rows"]["sent"] == rows
    assert sum(bucket.throttled or 0 for bucket in total.buckets) > 0
    by_worker = Counter(
        {series.worker: sum(b.sent for b in series.buckets) for series in view.series[:2]}
    )
    assert by_worker.total() == rows
    assert view.outcomes.sent == summary["rows"]["sent"]
    assert view.outcomes.failed == summary["rows"]["failed"] == 2
    assert str(view.cost) == summary["cost"]
    assert sum(line.messages for line in view.costs) == rows
    assert view.delivery is not None
    funnel = summary["delivery"]
    assert (view.delivery.delivered, view.delivery.failed) == (funnel["delivered"], 8)
    assert sum(bucket.delivered for bucket in total.buckets) == funnel["delivered"] == 32
    workers_delivered = sum(b.delivered for series in view.series[:2] for b in series.buckets)
    assert workers_delivered == funnel["delivered"]
    assert sum(b.count for b in view.delivery.time_to_delivery_s) == funnel["delivered"]
    assert sorted(run.worker for run in view.runs) == ["one", "two"]
    assert all(run.exit_code == 0 for run in view.runs)


@pytest.mark.slow
async def test_the_figures_in_a_distributed_page_are_those_of_the_json_report(
    redis_url: str, tmp_path: Path
) -> None:
    """Every figure `report --redis --html` shows with a `report --json` key equals it there."""
    path = campaign_csv(tmp_path, 30, bad=1)
    await run_cli(*enqueue_args(redis_url, path))
    async with simulator_with() as simulator:
        (sent,) = await run_workers(1, worker_args(redis_url, simulator, "--rate", "300"))
    records = records_of(sent[0])
    add_dlrs(redis_url, [
        (r["client_ref"], r["message_ids"][0], "delivered", "delivered", "") for r in records[:10]
    ])  # fmt: skip
    page = await run_cli("report", "--redis", redis_url, "--campaign", CAMPAIGN, "--html", "-")
    text = await run_cli("report", "--redis", redis_url, "--campaign", CAMPAIGN, "--json")
    assert page.code == 0, page.stderr
    (campaign,) = json.loads(text.stdout)["campaigns"]
    compared = set()
    for key, value in re.findall(r'data-key="([^"]+)" data-value="([^"]+)"', page.stdout.decode()):
        expected = _at(campaign, key)
        if expected is not None:  # in the page only (the latency: a journal's in --json)
            assert Decimal(value) == Decimal(str(expected)), key
            compared.add(key)
    assert {"rows.sent", "rows.failed", "cost", "segments_sent", "delivery.delivered"} <= compared


def _at(document: dict[str, Any], key: str) -> Any:
    """The value at a dotted `key` of `document`, None where there is none."""
    value: Any = document
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


@pytest.mark.slow
async def test_the_timeline_survives_a_redis_restart_mid_run(
    restartable_redis: RestartableRedis, tmp_path: Path
) -> None:
    """Redis killed and started again while two workers record their timeline: no traceback,
    every row once, and the timeline keeps each run's end (written after the restart)."""
    rows = 120
    url = restartable_redis.url
    ends, _ = await two_workers_through_a_restart(restartable_redis, tmp_path, rows)
    for code, _, stderr in ends:
        assert code == 0, stderr
        assert "Traceback" not in stderr, stderr
    records = records_of(*(stdout for _, stdout, _ in ends))
    assert Counter(r["line"] for r in records) == Counter(range(1, rows + 1))
    view = await view_of(url)
    assert [run.exit_code for run in view.runs] == [0, 0]
    total = _series(view, TOTAL)
    assert 0 < sum(bucket.sent for bucket in total.buckets) <= rows


def test_a_killed_workers_band_ends_at_its_last_recorded_second() -> None:
    """A run with no end is drawn until its last second; each worker's seconds go to its own
    latest run, and a run that recorded nothing stays unknown."""
    runs = [
        RunSpan("w1", 1000.0, None, None, ()),  # killed
        RunSpan("w2", 1000.0, 1030.0, 0, ()),
        RunSpan("w1", 2000.0, None, None, ()),  # the same name, restarted later; killed at once
    ]
    seconds = [("w1", _second(1005.0, 1, (1,))), ("w1", _second(1012.0, 1, (2,)))]
    seconds += [("w2", _second(1029.0, 1, (3,)))]
    drawn = [run.drawn_until_s for run in with_last_seconds(runs, seconds)]
    assert drawn == [1012.0, 1030.0, None]
