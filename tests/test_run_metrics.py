"""A run's snapshot as Prometheus metric families, and the last success read back from a file."""

from __future__ import annotations

import dataclasses
import io
import math
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sms_blaster.metrics_output import MetricsOutput
from sms_blaster.output import LatencyHistogram
from sms_blaster.run_metrics import (
    LAST_SUCCESS,
    LATENCY_BUCKETS_S,
    LatestFigures,
    RunFigures,
    last_success_in,
    latency_shape,
)
from sms_blaster.run_stats import RunSnapshot

LABELS = (("campaign", "spring"),)


def snapshot(latencies_ms: tuple[float, ...] = (), **changes: Any) -> RunSnapshot:
    histogram = LatencyHistogram()
    for latency_ms in latencies_ms:
        histogram.add(latency_ms)
    run = RunSnapshot(
        at_s=1_000.0, elapsed_s=10.0,
        rows_by_status={"sent": 20, "failed": 2}, errors={("rejected", "6"): 2},
        segments=25, cost=Decimal("0.75"), requests=24, throttled=2,
        in_flight=3, window=8, rate_ceiling_per_s=30.0, pace_per_s=12.5,
        limit_per_s=None, latency=histogram,
    )  # fmt: skip
    return dataclasses.replace(run, **changes)


def exposition(figures: RunFigures) -> dict[str, float]:
    """Each sample of the figures' exposition by its name and labels (campaign left out)."""
    text = generate_latest(LatestFigures(figures).registry()).decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert sample.labels.pop("campaign") == "spring"
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}"] = sample.value
    return found


def figures(
    run: RunSnapshot, exit_code: int | None = None, last_success_s: float | None = None
) -> RunFigures:
    return RunFigures(LABELS, run, latency_shape(run.latency), 900.0, exit_code, last_success_s)


def test_rows_errors_and_totals_are_counters_of_the_snapshot() -> None:
    """Rows by status (zeros included), errors by kind, segments, cost, requests, throttles."""
    found = exposition(figures(snapshot()))
    assert found["sms_blaster_rows_total{status=sent}"] == 20
    assert found["sms_blaster_rows_total{status=skipped}"] == 0
    assert found["sms_blaster_row_errors_total{kind=rejected}"] == 2
    assert found["sms_blaster_row_errors_total{kind=ambiguous}"] == 0
    assert found["sms_blaster_segments_total{}"] == 25
    assert found["sms_blaster_cost_total{}"] == 0.75
    assert found["sms_blaster_requests_total{}"] == 24
    assert found["sms_blaster_throttled_requests_total{}"] == 2


def test_the_flow_figures_are_gauges_and_a_limit_not_seen_is_nan() -> None:
    """Achieved rate over the run, --rate, the pace, the window, in flight; no limit is NaN."""
    found = exposition(figures(snapshot()))
    assert found["sms_blaster_achieved_rate_per_second{}"] == 2.0
    assert found["sms_blaster_rate_ceiling_per_second{}"] == 30
    assert found["sms_blaster_pace_per_second{}"] == 12.5
    assert math.isnan(found["sms_blaster_provider_limit_per_second{}"])
    assert found["sms_blaster_window_requests{}"] == 8
    assert found["sms_blaster_in_flight_requests{}"] == 3


def test_without_flow_control_the_pace_is_the_rate_ceiling() -> None:
    """--no-adaptive pins the rate: the pace shown is --rate."""
    found = exposition(figures(snapshot(pace_per_s=None)))
    assert found["sms_blaster_pace_per_second{}"] == 30


def test_the_exit_code_is_nan_while_the_run_goes_on_and_the_code_after() -> None:
    """No exit code yet is NaN; at exit, the code."""
    assert math.isnan(exposition(figures(snapshot()))["sms_blaster_exit_code{}"])
    assert exposition(figures(snapshot(), exit_code=3))["sms_blaster_exit_code{}"] == 3


def test_the_last_success_is_left_out_until_one_is_known() -> None:
    """No earlier success and none now: no sample, so a gateway keeps the one it has."""
    assert not any("last_success" in name for name in exposition(figures(snapshot())))
    found = exposition(figures(snapshot(), last_success_s=1234.5))
    assert found["sms_blaster_last_success_timestamp_seconds{}"] == 1234.5


def test_latency_buckets_are_cumulative_seconds_from_the_runs_histogram() -> None:
    """3, 40, 40 and 700 ms: counted at or under each bound, summed within 1 %."""
    shape = latency_shape(snapshot((3.0, 40.0, 40.0, 700.0)).latency)
    by_bound = dict(zip((*LATENCY_BUCKETS_S, math.inf), shape.cumulative, strict=True))
    assert (by_bound[0.005], by_bound[0.025], by_bound[0.05], by_bound[0.5]) == (1, 1, 3, 3)
    assert by_bound[1.0] == by_bound[math.inf] == 4
    assert shape.sum_s == pytest.approx(0.783, rel=0.01)


def test_the_last_success_is_read_back_for_its_campaign_only() -> None:
    """Another campaign's success in the file is not this one's."""
    text = generate_latest(LatestFigures(figures(snapshot(), 0, 1500.0)).registry()).decode()
    assert last_success_in(text, "spring") == 1500.0
    assert last_success_in(text, "autumn") is None


def test_a_file_that_is_not_prometheus_text_has_no_last_success() -> None:
    """A file the program did not write is read as holding no success."""
    assert last_success_in("this is {not metrics\n", "spring") is None


@pytest.mark.parametrize("stored", ["+Inf", "-Inf", "NaN"])
def test_a_last_success_that_is_no_finite_time_is_not_kept(stored: str) -> None:
    """A file holding `last_success … +Inf` or NaN has no last success to carry on."""
    text = f'{LAST_SUCCESS}{{campaign="spring"}} {stored}\n'
    assert last_success_in(text, "spring") is None


async def test_a_push_that_raises_never_ends_the_metrics_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A push failing with any exception (here http.client's InvalidURL) is one warning; the
    thread goes on and the file holds the exit code."""
    escaped: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: escaped.append(args.exc_value))
    stderr = io.StringIO()
    path = tmp_path / "sms.prom"
    output = MetricsOutput(str(path), "http://127.0.0.1:abc", stderr)  # the start check skipped
    output.start(snapshot, {"campaign": "spring"})
    output.finish(0)
    assert escaped == []
    assert len([line for line in stderr.getvalue().splitlines() if "--pushgateway" in line]) == 1
    assert "sms_blaster_exit_code" in path.read_text()
