"""The adaptive flow controller: pure arithmetic on a clock it is told."""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
import random
from collections.abc import Callable

import pytest

from sms_blaster.flow import FlowController, FlowSettings, Phase
from sms_blaster.models import Outcome
from sms_blaster.providers.vonage_sms import VonageSms
from sms_blaster.simulator import limiters

SETTINGS = FlowSettings(ceiling_rate_per_s=1000.0, max_window=50)


def throttle_body(status: str, text: str = "Throttled") -> bytes:
    return f'{{"messages":[{{"status":"{status}","error-text":"{text}"}}]}}'.encode()


def feed(flow: FlowController, answers: list[Outcome], sent_at_s: float, now_s: float) -> None:
    for outcome in answers:
        flow.observe(outcome, sent_at_s, 0.01, now_s)


@pytest.mark.parametrize(
    ("status", "headers", "body"),
    [
        (200, {}, throttle_body("1", "Throughput Rate Exceeded - please wait [ 20 ] and retry")),
        (200, {}, throttle_body("10", "Too Many Existing Binds")),
        (429, {"Retry-After": "1"}, b""),
    ],
)
def test_every_throttle_signal_is_a_throttle_for_the_flow_control(
    status: int, headers: dict[str, str], body: bytes
) -> None:
    """Status 1, status 10 and HTTP 429 are throttles; the controller counts each."""
    outcome = VonageSms("k", "s", "X").parse_response(status, headers, body).outcome
    assert outcome is Outcome.THROTTLED
    flow = started()
    before = flow.throttles
    flow.observe(outcome, 1.3, 0.01, 1.31)
    assert flow.throttles == before + 1


def started(
    ceiling: float = 1000.0, window: int = 50, start_probe_gain: float = 0.04
) -> FlowController:
    """A controller that found a limit of 200/s: 1.2 s accepted at 200/s, then throttles. Its
    first probe steps as any other (4 %) unless told: the start's own is tested apart."""
    settings = FlowSettings(ceiling, max_window=window, start_probe_gain=start_probe_gain)
    flow = FlowController(settings, now_s=0.0)
    clean(flow, 0.0, 1.2, 200.0)
    feed(flow, [Outcome.THROTTLED] * 8, 1.2, 1.21)
    return flow


def clean(flow: FlowController, start_s: float, end_s: float, per_s: float) -> None:
    """Accepted answers to requests sent evenly at `per_s` from start_s to end_s."""
    count = round((end_s - start_s) * per_s)
    for n in range(count):
        sent = start_s + n / per_s
        flow.observe(Outcome.SENT, sent, 0.01, sent + 0.01)


def test_a_run_starts_at_a_sixteenth_of_the_ceiling_and_grows_while_answers_are_clean() -> None:
    """A slow start, as TCP's: a start at --rate would flood a provider that allows a fifth."""
    flow = FlowController(SETTINGS, now_s=0.0)
    assert flow.rate_per_s == pytest.approx(1000.0 / 16)
    flow.observe(Outcome.SENT, 0.05, 0.01, 0.1)
    assert flow.rate_per_s == pytest.approx(1000.0 / 16 * 1.4)
    flow.observe(Outcome.SENT, 0.05, 0.01, 0.25)  # sent before the step: says nothing of it
    assert flow.rate_per_s == pytest.approx(1000.0 / 16 * 1.4)


def test_a_low_ceiling_starts_at_ten_per_second() -> None:
    """--rate 30 starts at 10/s, not at 1.9/s: a slow start of a small campaign costs little."""
    assert FlowController(FlowSettings(30.0, max_window=4), 0.0).rate_per_s == 10.0
    assert FlowController(FlowSettings(5.0, max_window=4), 0.0).rate_per_s == 5.0


def test_the_cut_is_sized_by_the_share_the_provider_accepted() -> None:
    """Sent at 1000/s, a fifth accepted: the limit looks like 200/s; the pace goes just under."""
    flow = FlowController(SETTINGS, now_s=0.0)
    for n in range(100):  # the start's pace doubled up to the ceiling; then a fifth passes
        flow.observe(Outcome.SENT if n % 5 == 0 else Outcome.THROTTLED, n / 1000, 0.01, 0.5)
    assert flow.known_limit_per_s == pytest.approx(200.0)
    assert flow.rate_per_s == pytest.approx(200.0 * 0.97)


def test_answers_to_requests_sent_before_a_cut_do_not_cut_again() -> None:
    """The throttles already on their way say nothing new about the new rate."""
    flow = started()
    after_cut = flow.rate_per_s
    feed(flow, [Outcome.THROTTLED] * 40, 1.0, 1.3)
    assert flow.rate_per_s >= after_cut
    assert flow.throttles == 48


def test_a_wait_hint_never_pauses_every_sender() -> None:
    """'Retry-After: 1' is for the throttled request's retry; a pause per throttle would cost
    the provider's whole capacity for a second each time."""
    flow = started()
    advice = flow.observe(Outcome.THROTTLED, 1.3, 0.01, 1.4, wait_s=1.0)
    assert advice.pause_until_s is None


def test_nothing_accepted_pauses_every_sender_a_round_trip_then_twice_as_long() -> None:
    """A full window lets nothing pass until it turns: back off, longer each time."""
    flow = started()
    pauses = []
    now = 1.3
    for _ in range(4):
        for _ in range(3):
            advice = flow.observe(Outcome.THROTTLED, now, 0.05, now + 0.05)
            if advice.pause_until_s is not None:
                pauses.append(round(advice.pause_until_s - (now + 0.05), 3))
        now += 1.0
    assert pauses == [0.05, 0.1, 0.2, 0.4]


def test_an_accepted_answer_ends_the_back_off() -> None:
    """Once something passes, the next blind interval pauses one round trip again."""
    flow = started()
    for now in (1.3, 2.3):
        feed(flow, [Outcome.THROTTLED] * 3, now, now + 0.05)
    feed(flow, [Outcome.SENT] + [Outcome.THROTTLED] * 7, 3.0, 3.05)  # something passed: a cut
    advices = [flow.observe(Outcome.THROTTLED, 3.2, 0.05, 3.25) for _ in range(3)]
    assert [advice.pause_until_s for advice in advices] == [None, None, pytest.approx(3.3)]


def cruise_until_probe(flow: FlowController, start_s: float) -> float:
    """Clean answers at the cruise pace until the controller probes; the time it did."""
    now = start_s
    while flow.phase is not Phase.PROBE:
        flow.observe(Outcome.SENT, now, 0.01, now + 0.01)
        now += 1 / flow.rate_per_s
        assert now < start_s + 60, "no probe within a minute of clean cruise"
    return now


def test_after_a_clean_cruise_the_controller_probes_above_the_limit() -> None:
    """An underestimate or a limit that rose is only found by trying a little more."""
    flow = started()
    cruise_until_probe(flow, 1.25)
    assert flow.known_limit_per_s is not None
    assert flow.rate_per_s == pytest.approx(flow.known_limit_per_s * 1.04)


def test_the_first_probe_after_the_start_steps_further() -> None:
    """The start's estimate is rough, low for a bucket of a small burst (its slow first steps
    count in): the first probe after its cut steps 12 %, not 4 %."""
    flow = started(start_probe_gain=SETTINGS.start_probe_gain)
    cruise_until_probe(flow, 1.25)
    assert flow.known_limit_per_s is not None
    assert flow.rate_per_s == pytest.approx(flow.known_limit_per_s * 1.12)


def test_a_clean_probe_raises_the_estimate_and_probes_on_with_a_bigger_step() -> None:
    """What passed during the probe is a limit at least that high: probe on, three times the
    step, so a limit that rose far is found in a few probes."""
    flow = started()
    now = cruise_until_probe(flow, 1.25)
    before = flow.known_limit_per_s
    assert before is not None
    probe_pace = flow.rate_per_s
    clean(flow, now, now + 1.5, probe_pace)  # the provider took all of it
    limit = flow.known_limit_per_s
    assert limit == pytest.approx(probe_pace, rel=0.02)
    assert flow.phase is Phase.PROBE
    assert limit is not None
    assert flow.rate_per_s == pytest.approx(limit * 1.12)


def test_at_a_low_limit_a_probe_s_later_step_ends_after_min_samples_answers() -> None:
    """A limit of 12/s that rose: each step after the first takes 8 answers, not 16."""
    flow = FlowController(SETTINGS, 0.0, limit_per_s=12.0)
    now = cruise_until_probe(flow, 0.0)
    clean(flow, now, now + 1.5, flow.rate_per_s)  # the first step passed
    now += 1.5
    assert flow.phase is Phase.PROBE
    step = flow.rate_per_s
    clean(flow, now, now + 9 / step, step)  # the second passed, and 9 answers say so
    assert flow.phase is Phase.PROBE
    assert flow.rate_per_s > step * 1.3  # the third step, three times the second's gain


def probing() -> tuple[FlowController, float, float, float]:
    """A controller that found a limit, cruised clean and began a probe: it, the time, the limit
    and the cruise pace under that limit."""
    flow = started()
    now = cruise_until_probe(flow, 1.25)
    limit = flow.known_limit_per_s
    assert limit is not None
    return flow, now, limit, FlowController(SETTINGS, 0.0, limit_per_s=limit).rate_per_s


def queued(flow: FlowController, now: float) -> float:
    """Twenty answers, each 10 ms later than the one before (a queue growing); the time after."""
    for n in range(20):
        flow.observe(Outcome.SENT, now, 0.01 + 0.01 * n, now + 0.01 + 0.01 * n)
        now += 1 / flow.rate_per_s
    return now


def test_a_throttle_during_a_probe_keeps_the_estimate_the_cruise_showed() -> None:
    """A clean cruise under the limit, a throttle above it: the limit is where it was."""
    flow, now, limit, cruise = probing()
    feed(flow, [Outcome.SENT] * 7 + [Outcome.THROTTLED], now, now + 0.05)
    assert flow.known_limit_per_s == pytest.approx(limit)
    assert flow.rate_per_s == pytest.approx(cruise)
    assert flow.phase.value == "cruise"


def test_a_probe_whose_answers_slow_down_is_queued_and_keeps_the_estimate() -> None:
    """A provider that queues the probe's excess accepts it, later: the limit is where it was."""
    flow, now, limit, cruise = probing()
    queued(flow, now)
    assert flow.phase is Phase.CRUISE
    assert flow.known_limit_per_s == pytest.approx(limit)
    assert flow.rate_per_s == pytest.approx(cruise)


def test_answers_that_change_nothing_get_the_same_advice_back() -> None:
    """No new Advice per answer while the pace and the window stay: the sender's per-row cost."""
    flow = FlowController(SETTINGS, 0.0, limit_per_s=200.0)
    first = flow.observe(Outcome.SENT, 0.0, 0.01, 0.01)
    second = flow.observe(Outcome.SENT, 0.005, 0.01, 0.015)
    assert second is first
    assert (second.rate_per_s, second.window) == (flow.rate_per_s, flow.window)


def test_a_probe_queued_after_a_step_that_raised_the_limit_probes_again_soon() -> None:
    """A limit still rising: the next probe comes after a quarter second of cruise, not two."""
    flow = started()
    now = cruise_until_probe(flow, 1.25)
    first_step = flow.rate_per_s
    while flow.rate_per_s == first_step:  # the first step passes: the limit rose
        flow.observe(Outcome.SENT, now, 0.01, now + 0.01)
        now += 1 / flow.rate_per_s
    assert flow.phase is Phase.PROBE
    now = queued(flow, now)  # the second step's answers come later and later
    assert flow.phase.value == "cruise"
    cruise_from = now
    while flow.phase.value == "cruise":
        flow.observe(Outcome.SENT, now, 0.2, now + 0.2)
        now += 1 / flow.rate_per_s
    assert now - cruise_from < 0.5


def test_the_rate_never_goes_above_the_ceiling() -> None:
    """--rate is a ceiling: a long clean run stays at it, and no measure lifts it above."""
    flow = FlowController(SETTINGS, now_s=0.0)
    for second in range(1, 100):
        flow.observe(Outcome.SENT, second, 0.01, float(second))
    assert flow.rate_per_s == SETTINGS.ceiling_rate_per_s
    feed(flow, [Outcome.SENT] * 19 + [Outcome.THROTTLED], 100.0, 100.0)
    assert flow.rate_per_s <= SETTINGS.ceiling_rate_per_s


def test_throttles_only_with_many_in_flight_set_the_window_to_that_many() -> None:
    """A provider that refuses above 8 requests in service, whatever their rate: the window
    keeps to 8 instead of the pace being cut."""
    flow = started(window=64)
    now = 1.3
    for _ in range(6):
        for in_flight in range(8):
            flow.observe(Outcome.SENT, now, 0.05, now + 0.05, in_flight=in_flight)
        flow.observe(Outcome.THROTTLED, now, 0.001, now + 0.001, in_flight=8)
        now += 0.05
    assert flow.window == 8


def test_throttles_with_few_in_flight_are_a_rate_limit_and_leave_the_window() -> None:
    """Throttles at every number in flight: a rate limit; the window stays."""
    flow = started(window=64)
    now = 1.3
    for in_flight in (8, 2, 9, 1, 7):
        for other in range(10):
            flow.observe(Outcome.SENT, now, 0.05, now + 0.05, in_flight=other)
        flow.observe(Outcome.THROTTLED, now, 0.05, now + 0.05, in_flight=in_flight)
        now += 0.05
    assert flow.window == 64


def test_a_slow_rate_limit_refusing_with_two_in_flight_is_not_taken_for_a_cap() -> None:
    """30/s at 50 ms: few are ever in flight, and the throttles come with two; but as many
    with two or more were accepted, so it is a rate limit and the window stays."""
    flow = FlowController(FlowSettings(150.0, max_window=64), now_s=0.0)
    now = 0.0
    for second in range(4):
        for _ in range(4):
            for other in (0, 1, 0, 1, 3, 2, 0, 2):
                flow.observe(Outcome.SENT, now, 0.05, now + 0.05, in_flight=other)
                now += 1 / 30
            if second:
                flow.observe(Outcome.THROTTLED, now, 0.05, now + 0.05, in_flight=2)
    assert flow.throttles >= 6
    assert flow.window == 64


def steady(flow: FlowController, start_s: float, end_s: float, latency_s: float) -> float:
    """Requests sent at the controller's pace from start_s to end_s, each accepted after
    `latency_s`, with as many in flight as that pace keeps there; the time after the last."""
    now = start_s
    while now < end_s:
        held = round(flow.rate_per_s * latency_s)
        flow.observe(Outcome.SENT, now, latency_s, now + latency_s, in_flight=held)
        now += 1 / flow.rate_per_s
    return now


def burst(
    flow: FlowController, now: float, held: int, sent: int, passed: int, latency_s: float = 0.05
) -> None:
    """A client that stalled sends `sent` requests at once, on top of the `held` the pace keeps
    in flight; the provider (a short queue, a window near full) takes the first `passed` and
    refuses the rest, each refused with many in flight."""
    for k in range(sent):
        outcome = Outcome.SENT if k < passed else Outcome.THROTTLED
        at = now + k * 0.0001
        flow.observe(outcome, at, latency_s, at + latency_s, in_flight=held + k)


def test_a_burst_refused_within_a_round_trip_is_no_cap_in_service() -> None:
    """A cap in service refuses for as long as its places are held, a round trip at least; a
    burst's refusals end with it. The window stays, and the pace is probed as before (a window
    kept to a burst's size used to end the rate's probes for the rest of the run)."""
    flow = started(window=64)
    now = steady(flow, 1.3, 3.0, 0.05)
    held = round(flow.rate_per_s * 0.05)
    burst(flow, now, held, sent=30, passed=20)
    assert flow.window == 64
    phases = set()
    for _ in range(50):
        now = steady(flow, now, now + 0.1, 0.05)
        phases.add(flow.phase)
    assert flow.window == 64
    assert Phase.PROBE in phases


def test_a_burst_far_above_what_the_pace_keeps_in_flight_is_no_cap_in_service() -> None:
    """At 2 ms a round trip is short, and a burst's refusals can span several; but a cap that
    refuses with 30 in flight would pass far more than the pace sends, with the 1 or 2 it keeps
    there: the pace, not a cap, is what binds."""
    flow = started(window=64)
    now = steady(flow, 1.3, 3.0, 0.002)
    for _ in range(3):  # bursts a few round trips apart
        burst(flow, now, 1, sent=30, passed=20, latency_s=0.002)
        now = steady(flow, now + 0.01, now + 0.5, 0.002)
    assert flow.window == 64


def test_throttles_after_the_client_fell_behind_its_pace_do_not_cut_the_limit() -> None:
    """The client is held up for 150 ms (a busy core, a slow disk) and then sends what came due
    at once; a short queue refuses the burst's tail. The last second passed less than the limit
    because the client sent less, not because the provider refused it: the limit and the pace
    stay (each such stall used to cut them to what passed, lower and lower on a busy machine)."""
    flow = FlowController(FlowSettings(5000.0, max_window=64), now_s=0.0, limit_per_s=1000.0)
    pace = flow.rate_per_s
    now = steady(flow, 0.0, 1.5, 0.05)
    now += 0.15  # nothing sent
    burst(flow, now, round(pace * 0.05), sent=40, passed=25)
    assert flow.throttles == 15
    assert flow.known_limit_per_s == 1000.0
    assert flow.rate_per_s == pace


def test_throttles_after_a_client_slower_than_its_pace_all_along_cut_the_limit() -> None:
    """A client that keeps up with only 90 % of its pace, evenly (no stretch with nothing sent),
    is what the provider sees: a bucket refusing part of it has shown its rate, and the limit is
    cut to what passed."""
    flow = FlowController(FlowSettings(5000.0, max_window=64), now_s=0.0, limit_per_s=1000.0)
    pace = flow.rate_per_s
    now = 0.0
    while now < 1.5:
        flow.observe(Outcome.SENT, now, 0.05, now + 0.05, in_flight=45)
        now += 1 / (0.9 * pace)
    burst(flow, now, 45, sent=40, passed=25)
    assert flow.known_limit_per_s is not None
    assert flow.known_limit_per_s < 0.95 * 1000.0


def test_throttles_at_the_pace_still_cut_the_limit() -> None:
    """The same refusals with the pace kept (no stall before them): the provider's limit is
    what passed, and the pace is cut to it."""
    flow = FlowController(FlowSettings(5000.0, max_window=64), now_s=0.0, limit_per_s=1000.0)
    pace = flow.rate_per_s
    now = steady(flow, 0.0, 1.5, 0.05)
    for _ in range(15):
        flow.observe(Outcome.THROTTLED, now, 0.05, now + 0.05, in_flight=round(pace * 0.05))
        now += 1 / pace
    assert flow.rate_per_s < pace


def test_the_window_shrinks_when_latency_climbs_and_never_below_one() -> None:
    """Answers that took 50 ms become ten times slower: the provider queues; the window goes
    to 1."""
    flow = FlowController(SETTINGS, now_s=0.0)
    now = 0.0
    for _ in range(30):  # the baseline: 50 ms
        now += 0.01
        flow.observe(Outcome.SENT, now - 0.05, 0.05, now)
    for _ in range(90):
        now += 0.1
        flow.observe(Outcome.SENT, now - 0.5, 0.5, now)
    assert flow.window == 1


LATENCIES: dict[str, Callable[[random.Random], float]] = {
    "uniform 50-500 ms": lambda rng: rng.uniform(0.05, 0.5),
    "90 % in 60 ms, 10 % in 2 s": lambda rng: 0.06 if rng.random() < 0.9 else 2.0,
    "lognormal, median 150 ms, p99 1.5 s": lambda rng: rng.lognormvariate(math.log(0.15), 0.99),
}


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("latency", list(LATENCIES))
def test_answers_slow_at_random_do_not_shrink_the_window(seed: int, latency: str) -> None:
    """A provider whose answers take 50-500 ms at random (as REST SMS APIs do), or most in 60 ms
    and some in 2 s, or with a long tail, is not queueing when some come fast: shrinking the
    window would not make the others faster, only cut the rate to a few a second. The window
    stays near --window."""
    rng = random.Random(seed)
    draw = LATENCIES[latency]
    flow = FlowController(FlowSettings(100.0, max_window=64), now_s=0.0)
    now = 0.0
    for _ in range(3000):
        now += 0.01
        latency_s = draw(rng)
        flow.observe(Outcome.SENT, now - latency_s, latency_s, now)
    assert flow.window >= 48


def test_one_slow_answer_does_not_shrink_the_window() -> None:
    """Latency is smoothed: a single slow answer among normal ones is not queueing."""
    flow = FlowController(FlowSettings(100.0, max_window=5), now_s=0.0)
    flow.observe(Outcome.SENT, 0.0, 0.05, 0.05)
    flow.observe(Outcome.SENT, 0.5, 0.5, 1.0)
    assert flow.window == 5


def test_the_window_grows_back_to_its_maximum_when_latency_is_normal() -> None:
    """After queueing ends, one more per round trip, up to --window and no further."""
    flow = FlowController(FlowSettings(100.0, max_window=5), now_s=0.0)
    flow.observe(Outcome.SENT, 0.0, 0.05, 0.05)
    now = 0.05
    while flow.window == 5:
        now += 0.1
        flow.observe(Outcome.SENT, now - 0.5, 0.5, now)
    assert flow.window == 4
    for _ in range(100):
        now += 0.1
        flow.observe(Outcome.SENT, now - 0.05, 0.05, now)
    assert flow.window == 5


def test_the_rate_floor_never_exceeds_a_tiny_ceiling() -> None:
    """--rate 0.05: cuts never raise the rate above it."""
    flow = FlowController(FlowSettings(0.05, max_window=4), now_s=0.0)
    for n in range(20):
        flow.observe(Outcome.THROTTLED, n * 1.0, 0.01, 30.0)
    assert flow.rate_per_s <= 0.05


def test_a_limit_found_earlier_starts_the_run_cruising_just_under_it() -> None:
    """Another process's estimate: no slow start, the pace 3 % under it."""
    flow = FlowController(SETTINGS, now_s=0.0, limit_per_s=300.0)
    assert flow.phase is Phase.CRUISE
    assert flow.rate_per_s == pytest.approx(291.0)
    assert flow.known_limit_per_s == 300.0


def test_a_small_limit_is_cruised_a_request_or_more_under() -> None:
    """At 30/s, 3 % is one request a second, which a little jitter fills: the pace keeps more
    room."""
    flow = FlowController(SETTINGS, now_s=0.0, limit_per_s=30.0)
    assert flow.rate_per_s == pytest.approx(28.8)


def test_a_bucket_burst_spent_by_the_start_is_not_taken_for_the_limit() -> None:
    """A bucket of 200/s with a burst of 200 accepts 400 in the start's first second; the
    next answers, at the cut pace, pass at half: the limit is what that half lets through."""
    flow = FlowController(SETTINGS, now_s=0.0)
    clean(flow, 0.0, 0.9, 400.0)
    feed(flow, [Outcome.THROTTLED] * 3, 0.9, 0.91)  # refused in a row: the start ends
    assert flow.known_limit_per_s == pytest.approx(400.0, rel=0.02)  # the burst counted
    pace = flow.rate_per_s
    for n in range(8):
        sent = 0.92 + n / pace
        flow.observe(Outcome.THROTTLED if n % 2 else Outcome.SENT, sent, 0.01, sent + 0.01)
    assert flow.known_limit_per_s == pytest.approx(200.0, rel=0.05)


def test_a_window_turning_after_the_start_keeps_the_count_as_the_limit() -> None:
    """After the start fills a window, few pass until it turns: that share is not the limit."""
    flow = FlowController(SETTINGS, now_s=0.0)
    clean(flow, 0.0, 0.9, 400.0)
    feed(flow, [Outcome.THROTTLED] * 3, 0.9, 0.91)
    pace = flow.rate_per_s
    for n in range(8):
        sent = 0.92 + n / pace
        flow.observe(Outcome.SENT if n == 7 else Outcome.THROTTLED, sent, 0.01, sent + 0.01)
    # What the full window holds over a whole second (360 sent in 0.9 s), not the share.
    assert flow.known_limit_per_s == pytest.approx(360.0, rel=0.05)


def test_throttles_that_two_cuts_do_not_stop_are_background_and_the_limit_comes_back() -> None:
    """1 in 50 refused whatever the pace: after the second cut fails to stop them, the limit
    before the cuts is back, and the same share of throttles cuts no more."""
    flow = FlowController(SETTINGS, now_s=0.0)
    for n in range(400):  # 2 s at 200/s, clean: the start grows, then throttles end it
        flow.observe(Outcome.SENT, n / 200, 0.001, n / 200 + 0.001)
    feed(flow, [Outcome.THROTTLED] * 3, 2.0, 2.001)
    limit = flow.known_limit_per_s
    assert limit is not None
    sent = 2.0
    for _ in range(8):  # four throttles a second, one in fifty, at the pace of the moment
        for _n in range(49):
            sent += 1 / flow.rate_per_s
            flow.observe(Outcome.SENT, sent, 0.001, sent + 0.001)
        sent += 1 / flow.rate_per_s
        flow.observe(Outcome.THROTTLED, sent, 0.001, sent + 0.001)
    assert flow.known_limit_per_s == pytest.approx(limit, rel=0.05)


def refused_then_two_thirds_passing(flow: FlowController, start_s: float) -> None:
    """Right after a cut, 20 answers at the controller's pace: 13 accepted, 7 refused, the
    last refused after `min_samples` (one cut, sized by all 20)."""
    sent = start_s
    for outcome in [
        Outcome.SENT,
        *[Outcome.THROTTLED] * 6,
        *[Outcome.SENT] * 12,
        Outcome.THROTTLED,
    ]:
        flow.observe(outcome, sent, 0.001, sent + 0.001)
        sent += 1 / flow.rate_per_s


def test_a_limit_that_falls_in_cruise_is_taken_from_the_share_accepted() -> None:
    """Cruising under 200/s, then 13 of 20 pass: the limit fell to that share of the pace."""
    flow = FlowController(SETTINGS, now_s=0.0, limit_per_s=200.0)
    clean(flow, 0.0, 1.5, flow.rate_per_s)
    flow.observe(Outcome.THROTTLED, 1.5, 0.001, 1.501)
    refused_then_two_thirds_passing(flow, 1.502)
    assert flow.known_limit_per_s is not None
    assert flow.known_limit_per_s < 150.0


def test_the_same_share_right_after_a_probe_is_a_window_it_filled_not_a_fall() -> None:
    """A probe's excess fills a window that then refuses most until it turns: within the
    second after the probe, the count of that second stays the limit."""
    flow = FlowController(SETTINGS, now_s=0.0, limit_per_s=200.0)
    clean(flow, 0.0, 2.05, flow.rate_per_s)
    assert flow.rate_per_s > 200.0  # probing above the limit
    clean(flow, 2.05, 2.3, flow.rate_per_s)
    flow.observe(Outcome.THROTTLED, 2.3, 0.001, 2.301)
    assert flow.phase is Phase.CRUISE
    refused_then_two_thirds_passing(flow, 2.31)
    assert flow.known_limit_per_s is not None
    assert flow.known_limit_per_s > 150.0


def test_a_lone_throttle_in_the_start_does_not_end_it() -> None:
    """One throttle among clean answers is no limit (a carrier refuses a share at random)."""
    flow = FlowController(SETTINGS, now_s=0.0)
    clean(flow, 0.0, 0.5, 100.0)
    flow.observe(Outcome.THROTTLED, 0.5, 0.01, 0.51)
    assert flow.phase is Phase.START
    assert flow.known_limit_per_s is None


def test_throttles_one_after_another_in_the_start_end_it() -> None:
    """A limit crossed refuses what exceeds it in a row: the start ends at the third."""
    flow = FlowController(SETTINGS, now_s=0.0)
    clean(flow, 0.0, 0.5, 100.0)
    for n in range(3):
        flow.observe(Outcome.THROTTLED, 0.5 + n / 1000, 0.01, 0.51 + n / 1000)
    assert flow.phase is Phase.CRUISE
    assert flow.known_limit_per_s is not None


def test_a_throttle_with_more_in_flight_than_ever_passed_is_no_background() -> None:
    """More in flight than any accepted answer had may be a cap in service: the start ends."""
    flow = FlowController(SETTINGS, now_s=0.0)
    for n in range(50):
        flow.observe(Outcome.SENT, n / 100, 0.01, n / 100 + 0.01, in_flight=2)
    flow.observe(Outcome.THROTTLED, 0.5, 0.01, 0.51, in_flight=3)
    assert flow.phase is Phase.CRUISE


def test_a_start_that_holds_the_ceiling_with_a_few_throttles_cruises_at_it() -> None:
    """Two seconds at the ceiling, one in a hundred refused: no limit under it; the limit is
    the ceiling, and that share of throttles is the background."""
    settings = FlowSettings(ceiling_rate_per_s=100.0, max_window=50)
    flow = FlowController(settings, now_s=0.0)
    sent = 0.0
    while flow.phase is Phase.START and sent < 6.0:
        outcome = Outcome.THROTTLED if round(sent * 100) % 100 == 50 else Outcome.SENT
        flow.observe(outcome, sent, 0.001, sent + 0.001)
        sent += 1 / flow.rate_per_s
    assert flow.known_limit_per_s == 100.0
    assert flow.rate_per_s == pytest.approx(97.0)


def window_filled_by_the_start(flow: FlowController) -> None:
    """A start whose growing pace fills a window of 30 in 0.8 s (most of it late), then meets
    it full three times in a row: the start ends."""
    for n in range(30):
        sent = 0.8 * (n / 30) ** 2
        flow.observe(Outcome.SENT, sent, 0.002, sent + 0.002)
    feed(flow, [Outcome.THROTTLED] * 3, 0.8, 0.802)


def test_a_window_the_start_filled_is_waited_for_until_its_first_requests_leave() -> None:
    """Refused again right after the start's cut, with nothing passed since: the window holds
    the limit, and nothing passes until the start's first requests leave it, a second on."""
    flow = FlowController(FlowSettings(150.0, max_window=50), now_s=0.0)
    window_filled_by_the_start(flow)
    advice = flow.observe(Outcome.THROTTLED, 0.83, 0.002, 0.832)
    assert flow.known_limit_per_s == pytest.approx(30.0)
    assert advice.pause_until_s is not None
    assert 1.0 < advice.pause_until_s < 1.1


def test_a_request_passed_since_the_start_s_cut_is_no_full_window_to_wait_for() -> None:
    """Something sent after the cut passed: a bucket refilling, not a full window; a throttle
    then pauses no one."""
    flow = FlowController(FlowSettings(150.0, max_window=50), now_s=0.0)
    window_filled_by_the_start(flow)
    flow.observe(Outcome.SENT, 0.82, 0.002, 0.822)
    advice = flow.observe(Outcome.THROTTLED, 0.83, 0.002, 0.832)
    assert advice.pause_until_s is None


def test_a_run_that_starts_at_a_known_limit_has_no_start_s_window_to_wait_for() -> None:
    """A worker taking over a campaign's flow starts cruising at the limit found earlier: its
    first throttle, before anything passed, neither pauses everyone nor moves the limit."""
    flow = FlowController(SETTINGS, now_s=0.0, limit_per_s=200.0)
    advice = flow.observe(Outcome.THROTTLED, 0.01, 0.002, 0.012)
    assert advice.pause_until_s is None
    assert flow.known_limit_per_s == pytest.approx(200.0)


def refused_at_third_step(in_flight: int = 0) -> tuple[FlowController, float, float, float]:
    """A probe whose first two steps passed and whose third was throttled: the controller, the
    time, the second step's pace (the clean one below) and the third's (the refused one)."""
    flow = started()
    now = cruise_until_probe(flow, 1.25)
    for _ in range(2):  # two clean steps
        step = flow.rate_per_s
        while flow.rate_per_s == step:
            flow.observe(Outcome.SENT, now, 0.01, now + 0.01)
            now += 1 / step
    clean_pace, refused_pace = step, flow.rate_per_s
    assert refused_pace == pytest.approx(clean_pace * 1.36, rel=0.01)
    flow.observe(Outcome.THROTTLED, now, 0.01, now + 0.01, in_flight=in_flight)
    assert flow.phase is Phase.CRUISE
    return flow, now + 0.01, clean_pace, refused_pace


def test_a_probe_refused_far_above_its_clean_step_halves_the_gap_next_time() -> None:
    """A limit that refuses any two requests closer than its interval passes half of a pace
    just above it, so what passed while refused says nothing: the limit lies between the clean
    step and the refused one. The next probe comes after a second, and steps no further than
    halfway to the refused pace each time, until the gap is smaller than a first step."""
    flow, now, clean_pace, refused_pace = refused_at_third_step()
    assert flow.known_limit_per_s == pytest.approx(clean_pace, rel=0.02)
    cruise_from = now
    now = cruise_until_probe(flow, now)
    assert now - cruise_from < 1.1  # a `measure_s` of cruise, not two
    paces: list[float] = []
    while flow.phase is Phase.PROBE:  # every step passes: the limit is just under the refused
        flow.observe(Outcome.SENT, now, 0.01, now + 0.01)
        now += 1 / flow.rate_per_s
        if flow.phase is Phase.PROBE and (not paces or flow.rate_per_s != paces[-1]):
            paces.append(flow.rate_per_s)
    limit = flow.known_limit_per_s
    assert limit is not None
    assert len(paces) >= 3  # the first step, then halving steps
    for below, above in itertools.pairwise(paces):
        assert above <= (below + refused_pace) / 2 * 1.01
    assert limit > 0.95 * refused_pace / 1.04  # within a first step of the refused pace
    assert limit < refused_pace


def test_a_probe_refused_with_more_in_flight_than_passed_is_not_bisected() -> None:
    """Refused with more in flight than any accepted answer had: perhaps a cap in service, whose
    refusals say nothing of a pace. The next probe comes after the usual cruise."""
    flow, now, _, _ = refused_at_third_step(in_flight=40)
    cruise_from = now
    now = cruise_until_probe(flow, now)
    assert now - cruise_from >= 1.9


def paces_through(spec: str, seconds: float, latency_s: float = 0.01) -> list[float]:
    """The controller against a limiter of `spec`: requests sent evenly at its pace, a pause and
    the window honoured, each answered `latency_s` later; its pace at each tenth of a simulated
    second."""
    limiter = limiters.parse(spec)
    flow = FlowController(FlowSettings(5000.0, max_window=200), now_s=0.0)
    answers: list[tuple[float, float, bool]] = []  # (answered at, sent at, accepted)
    paces: list[float] = []
    now, resume = 0.0, 0.0
    while now < seconds:
        while answers and answers[0][0] <= now:
            answered, sent, accepted = heapq.heappop(answers)
            outcome = Outcome.SENT if accepted else Outcome.THROTTLED
            advice = flow.observe(outcome, sent, answered - sent, answered, in_flight=len(answers))
            if advice.pause_until_s is not None:
                resume = max(resume, advice.pause_until_s)
        if answers and len(answers) >= flow.window:
            now = answers[0][0]  # the window is full: wait for an answer
            continue
        if now >= resume:
            accepted = limiter.admit(now).accepted
            heapq.heappush(answers, (now + latency_s, now, accepted))
        while len(paces) < now * 10:
            paces.append(flow.rate_per_s)
        now += 1 / flow.rate_per_s
    return paces


def test_a_step_refused_far_above_the_clean_one_takes_a_full_window_s_count() -> None:
    """200/s, then 270/s: a probe step overshoots to 317/s and is refused with the sliding
    window holding 270, which is the limit; from four seconds after the rise the pace never
    falls under 90 % of it (the clean step's 233/s, then bisected up to it, kept it at 226/s
    and 242/s for three seconds more)."""
    paces = paces_through("sliding:200@6,sliding:270", 14.0)
    assert max(paces[60:100]) > 270  # the overshooting step
    assert min(paces[100:]) >= 0.9 * 270


def test_a_limit_that_fell_and_rose_again_is_found_within_three_seconds() -> None:
    """1000/s, 400/s for ten seconds, then 1330/s: the next probe steps at once back to the
    limit it fell from, then on, and within three simulated seconds of the rise the pace is at
    90 % of the new limit or more for good (small steps growing from 400/s took 4.6)."""
    paces = paces_through("sliding:1000@10,sliding:400@10,sliding:1330", 26.0)
    assert 380 <= paces[195] <= 400  # the fall was found
    assert min(paces[230:]) >= 0.9 * 1330


def test_a_step_back_to_where_the_limit_was_is_not_ended_by_answers_that_slow() -> None:
    """After 200/s fell to about 126/s, a probe steps straight back to 200/s; its answers slow
    down (a pace two and a half times the last slows a busy client's own answers), and it goes
    on: only a throttle ends it."""
    flow = FlowController(SETTINGS, 0.0, limit_per_s=200.0)
    now = cruise_until_probe(flow, 0.0)  # 200/s held: a clean cruise under it
    flow.observe(Outcome.THROTTLED, now, 0.001, now + 0.001)  # ...and a probe above it refused
    clean(flow, now, now + 1.5, flow.rate_per_s)
    flow.observe(Outcome.THROTTLED, now + 1.5, 0.001, now + 1.501)
    refused_then_two_thirds_passing(flow, now + 1.502)
    assert flow.known_limit_per_s is not None
    assert flow.known_limit_per_s < 200.0 / 1.5  # it fell
    now = cruise_until_probe(flow, now + 1.7)
    assert flow.rate_per_s == pytest.approx(200.0)
    queued(flow, now)
    assert flow.phase is Phase.PROBE
    assert flow.rate_per_s == pytest.approx(200.0)


@pytest.mark.parametrize("slowest", [False, True])
def test_counts_wait_for_the_slowest_answer_lately_only_where_answers_gather_late(
    slowest: bool,
) -> None:
    """Answers gathered from several processes (a campaign's leader) come in late when one of
    them was held up: there a count of send time waits for the slowest answer lately, not 1.5
    times the smoothed latency; one process keeps the smoothed one (its lab-tuned figures)."""
    settings = dataclasses.replace(SETTINGS, horizon_slowest=slowest)
    controller = FlowController(settings, 0.0)
    now_s = 0.0
    for n in range(200):
        latency_s = 0.3 if n == 100 else 0.01  # one answer read 300 ms late
        now_s = n * 0.005 + latency_s
        controller.observe(Outcome.SENT, n * 0.005, latency_s, now_s)
    horizon_s = controller._horizon_s
    assert (horizon_s >= 0.3) is slowest
    assert horizon_s > 0.01


def accepting_everything(
    flow: FlowController, latency: Callable[[], float], until_s: float
) -> None:
    """A client sending at the controller's pace until `until_s`, to a provider that accepts
    every request and answers after `latency()`; each answer fed to the controller when due."""
    answers: list[tuple[float, float, float]] = []  # (answered, sent, latency), a heap
    next_send_s = 0.0
    while next_send_s < until_s:
        if answers and answers[0][0] <= next_send_s:
            answered_s, sent_s, latency_s = heapq.heappop(answers)
            flow.observe(Outcome.SENT, sent_s, latency_s, answered_s)
            continue
        latency_s = latency()
        heapq.heappush(answers, (next_send_s + latency_s, next_send_s, latency_s))
        next_send_s += 1 / flow.rate_per_s


def test_a_low_estimate_is_raised_when_the_provider_accepts_everything() -> None:
    """An estimate of 1.9/s (a start that met a provider refusing everything for a moment) and a
    provider that accepts everything since, answering in 50-300 ms: the probes raise it. At
    such rates a step lasts longer than the bins reach (16 answers at 2/s is 8 s), and its
    first slot comes up to a second late: counted as before, every probe looked short of its
    step and the run stayed at 1-2/s for good."""
    flow = FlowController(FlowSettings(30.0, max_window=15), now_s=0.0, limit_per_s=1.9)
    rng = random.Random(7)
    accepting_everything(flow, lambda: rng.uniform(0.05, 0.3), 60.0)
    assert flow.known_limit_per_s is not None
    assert flow.known_limit_per_s > 10


@pytest.mark.parametrize("latency", list(LATENCIES))
def test_probes_over_answers_slow_at_random_raise_a_low_estimate(latency: str) -> None:
    """An estimate of 100/s, a provider that accepts all of 1,000/s and answers slow at random:
    the probes raise the estimate, not end as queued on a smoothed latency that jumps by itself
    (with 10 % of answers in 2 s, nearly every probe used to)."""
    rng = random.Random(3)
    draw = LATENCIES[latency]
    flow = FlowController(FlowSettings(1000.0, max_window=2000), now_s=0.0, limit_per_s=100.0)
    accepting_everything(flow, lambda: draw(rng), 30.0)
    assert flow.known_limit_per_s is not None
    assert flow.known_limit_per_s > 300
