"""The flow control against limiter shapes, in virtual time (`benchmarks.flowlab`): the real
engine, pacer and controller against a provider stand-in whose clock jumps from timer to timer.
Nothing is timed: the counts are what the stand-in accepted per virtual second, so these tests
are exact and repeat. The targets of record (95 %, 2 % throttled) live in the benchmarks; these
hold looser floors, which the controller before this one missed on 8 of these 11 cases."""

from __future__ import annotations

import pytest

from benchmarks.flowlab import Case, run

SHAPES = [
    Case("sliding:150", 150.0, 50.0),
    Case("fixed:150", 150.0, 50.0),
    Case("bucket:150:150", 150.0, 50.0),
    Case("bucket:1000:100", 1000.0, 2.0),
    Case("queue:150:20", 150.0, 50.0),
    Case("sliding:150", 150.0, 50.0, hint="none"),
    Case("sliding:150", 150.0, 50.0, hint="wrong"),
    Case("sliding:150", 150.0, 50.0, hint="retry-after"),
    Case("sliding:30", 30.0, 2.0),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", SHAPES, ids=lambda case: f"{case.shape}-{case.hint}")
def test_the_controller_finds_the_limit_of_each_shape_and_sends_no_row_twice(case: Case) -> None:
    """From second 2 on, at least 90 % of the limit is accepted, few requests are throttled,
    the limit the summary reports is within 10 %, and no message is accepted twice."""
    result = run(case)
    assert result.goodput_share >= 0.9
    assert result.throttled_share <= 0.06
    assert result.reported_per_s is not None
    assert result.reported_per_s == pytest.approx(case.limit_per_s, rel=0.1)
    assert result.duplicates == 0


def test_a_bucket_whose_burst_is_its_limit_costs_few_throttles_at_the_start() -> None:
    """The start's flood drains a burst of a whole second: the next answers, not the
    burst-swollen count, size the cut, so the throttles stay a small share."""
    result = run(Case("bucket:150:150", 150.0, 2.0))
    assert result.throttled_share <= 0.02
    assert result.goodput_share >= 0.95
    assert result.duplicates == 0


def test_random_throttles_with_no_limit_behind_them_are_not_taken_for_a_limit() -> None:
    """1 % refused at random, no limit at 1,000/s: once two cuts in cruise leave the throttles
    as they were, they are background, and the pace goes back up (14 % of --rate without)."""
    result = run(Case("random:0.01", 1000.0, 2.0, ceiling=1.0))
    assert result.goodput_share >= 0.6
    assert result.duplicates == 0


def test_a_cap_in_service_is_kept_by_the_window() -> None:
    """At most 8 requests in service, refused at once above: the window goes to 8 and at
    least 80 % of what 8 in service allow is accepted."""
    capacity = 8 / (0.05 + 0.0055)  # the stand-in's latency with its mean jitter
    result = run(Case("concurrency:8", capacity, 50.0))
    assert result.goodput_share >= 0.8
    assert result.duplicates == 0


def test_a_limit_that_falls_then_rises_is_followed() -> None:
    """150/s, then 60/s, then 200/s: the last ten seconds run at 90 % of 200/s or more."""
    case = Case(
        "sliding:150@10,sliding:60@10,sliding:200",
        150.0,
        2.0,
        seconds=32,
        limits=((10, 60.0), (20, 200.0)),
    )
    result = run(case)
    assert min(result.per_second[24:30]) >= 0.9 * 200
    assert result.duplicates == 0


def test_a_limit_without_burst_is_found_by_halving_the_gap_a_probe_left() -> None:
    """nginx's limit_req without a burst at 30/s: a pace just above it passes half of it, so a
    refused probe step says only that the limit is under it; the next probes halve the gap to
    it instead of starting again from the first small step (84.9 % without, settling at 13 s).
    (With the first probe after the start at 4 %, as when this was tuned: at 12 % it refuses a
    little more, 2.2 % of the requests, and passes more, 91 %.)"""
    result = run(Case("leaky:30", 30.0, 2.0, flow=(("start_probe_gain", 0.04),)))
    assert result.goodput_share >= 0.87
    assert result.throttled_share <= 0.02
    assert result.duplicates == 0


@pytest.mark.slow
def test_a_long_tail_of_slow_answers_does_not_sink_the_estimate() -> None:
    """Answers in 150 ms at the median and 1.5 s at p99 (one in thousands in 5 s): counts
    whose answers are all in reach seconds back, and once read bins the controller no longer
    held ("a limit of 1/s"); the start's count, before its answers were in, read 12/s of a
    600/s window (2 % of the limit accepted before)."""
    result = run(Case("sliding:600", 600.0, latency="tail"))
    assert result.goodput_share >= 0.75
    assert result.reported_per_s is not None
    assert result.reported_per_s == pytest.approx(600.0, rel=0.2)
    assert result.duplicates == 0


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
def test_answers_slow_at_random_do_not_end_every_probe_as_queued(seed: int) -> None:
    """Answers in 50-500 ms at random move the median of a probe's first answers by 100 ms
    and more with no queue: a probe is judged queued only past that noise, so the estimate
    climbs to the limit (69-73 % accepted on two of these three draws before)."""
    result = run(Case("fixed:150", 150.0, latency="uniform", seed=seed))
    assert result.goodput_share >= 0.9
    assert result.duplicates == 0


@pytest.mark.slow
def test_the_starts_fast_answers_are_no_baseline_for_queueing() -> None:
    """While the start's pace grows, the fast answers come first: a level of them, set as the
    baseline of a provider whose answers take 50-500 ms at random, read the others as a queue
    and cut the window to a third of what the limit needs (49 % accepted before)."""
    result = run(Case("queue:600:20", 600.0, latency="uniform"))
    assert result.goodput_share >= 0.8
    assert result.duplicates == 0


@pytest.mark.slow
def test_a_rate_of_the_fast_answers_alone_is_no_limit_that_fell() -> None:
    """An interval's sent rate counts the requests still out as well as those answered: of
    answers slow at random, the fast alone made a limit that fell by half (the summary's limit
    0.52 of a bucket's 600/s before)."""
    result = run(Case("bucket:600:60", 600.0, latency="uniform"))
    assert result.reported_per_s is not None
    assert result.reported_per_s == pytest.approx(600.0, rel=0.1)
    assert result.duplicates == 0


@pytest.mark.slow
def test_the_fast_answers_after_a_pause_are_no_baseline_for_queueing() -> None:
    """A fixed window, full after the start, pauses the sender until it turns; the first
    answers after it are the fast ones, and a level of them set as the baseline cut the window
    to a sixth of what the limit needs (32-35 % of 600/s accepted before, this draw)."""
    result = run(Case("fixed:600", 600.0, latency="uniform", seed=2))
    assert result.goodput_share >= 0.85
    assert result.duplicates == 0
