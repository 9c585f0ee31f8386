"""The adaptive flow controller: pure arithmetic on a clock it is told."""

from __future__ import annotations

import pytest

from sms_blaster.flow import FlowController, FlowSettings
from sms_blaster.models import Outcome
from sms_blaster.providers.vonage_sms import VonageSms

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
def test_every_throttle_signal_cuts_the_rate(
    status: int, headers: dict[str, str], body: bytes
) -> None:
    """Status 1, status 10 and HTTP 429 are throttles; each cuts the rate once it is sized."""
    outcome = VonageSms("k", "s", "X").parse_response(status, headers, body).outcome
    assert outcome is Outcome.THROTTLED
    flow = FlowController(SETTINGS, now_s=0.0)
    feed(flow, [Outcome.SENT] * 19, 0.0, 0.1)
    flow.observe(outcome, 0.0, 0.01, 0.1)
    assert flow.rate_per_s < SETTINGS.ceiling_rate_per_s


def test_the_cut_is_sized_by_the_share_the_provider_accepted() -> None:
    """Sent at 1000/s, a fifth accepted: one cut lands just under 200/s."""
    flow = FlowController(SETTINGS, now_s=0.0)
    feed(flow, [Outcome.SENT] * 4 + [Outcome.THROTTLED] * 16, 0.0, 0.1)
    assert flow.known_limit_per_s == pytest.approx(200.0)
    assert flow.rate_per_s == pytest.approx(200.0 * 0.97)


def test_answers_to_requests_sent_before_a_cut_do_not_cut_again() -> None:
    """The throttles already on their way say nothing new about the new rate."""
    flow = FlowController(SETTINGS, now_s=0.0)
    feed(flow, [Outcome.SENT] * 4 + [Outcome.THROTTLED] * 16, 0.0, 0.1)
    after_cut = flow.rate_per_s
    feed(flow, [Outcome.THROTTLED] * 40, 0.05, 0.2)
    assert flow.rate_per_s >= after_cut
    assert flow.throttles == 56


def test_a_throttle_with_a_wait_pauses_every_sender() -> None:
    """'please wait [ 700 ]' pauses the limiter until 0.7 s from now."""
    flow = FlowController(SETTINGS, now_s=0.0)
    advice = flow.observe(Outcome.THROTTLED, 1.0, 0.01, 2.0, wait_s=0.7)
    assert advice.pause_until_s == pytest.approx(2.7)


def test_the_rate_grows_back_fast_then_slowly_near_the_limit() -> None:
    """Clean answers after a cut: 10 %/s of the limit below 97 % of it, 1 %/s above."""
    flow = FlowController(SETTINGS, now_s=0.0)
    feed(flow, [Outcome.SENT] * 99 + [Outcome.THROTTLED], 0.0, 1.0)  # limit 990/s; cut to 950
    assert flow.rate_per_s == pytest.approx(950.0)
    flow.observe(Outcome.SENT, 1.1, 0.01, 1.1)
    assert flow.rate_per_s == pytest.approx(950.0 + 0.10 * 990 * 0.1)
    flow.observe(Outcome.SENT, 1.2, 0.01, 1.2)
    near = flow.rate_per_s
    assert near >= 0.97 * 990
    flow.observe(Outcome.SENT, 2.2, 0.01, 2.2)
    assert flow.rate_per_s == pytest.approx(near + 0.01 * 990 * 1.0)


def test_the_rate_never_goes_above_the_ceiling() -> None:
    """--rate is a ceiling: a long clean run stays at it."""
    flow = FlowController(SETTINGS, now_s=0.0)
    for second in range(1, 100):
        flow.observe(Outcome.SENT, second, 0.01, float(second))
    assert flow.rate_per_s == SETTINGS.ceiling_rate_per_s


def test_the_window_shrinks_when_latency_climbs_and_never_below_one() -> None:
    """Answers ten times slower than the baseline: the provider queues; the window goes to 1."""
    flow = FlowController(SETTINGS, now_s=0.0)
    flow.observe(Outcome.SENT, 0.0, 0.05, 0.05)  # baseline 50 ms
    now = 0.05
    for _ in range(90):
        now += 0.1
        flow.observe(Outcome.SENT, now - 0.5, 0.5, now)
    assert flow.window == 1


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


def test_nothing_accepted_cuts_by_half_and_measures_no_limit() -> None:
    """Twenty throttles in a row: no share to size the cut from, so halve, limit unknown."""
    flow = FlowController(SETTINGS, now_s=0.0)
    for n in range(20):
        flow.observe(Outcome.THROTTLED, n * 0.001, 0.001, 0.03)
    assert flow.known_limit_per_s is None
    assert flow.rate_per_s == pytest.approx(SETTINGS.ceiling_rate_per_s * 0.5)


def test_a_huge_wait_hint_is_capped() -> None:
    """'Retry-After: 86400' pauses the senders for 30 s at most."""
    flow = FlowController(SETTINGS, now_s=0.0)
    advice = flow.observe(Outcome.THROTTLED, 0.0, 0.01, 1.0, wait_s=86400)
    assert advice.pause_until_s == pytest.approx(31.0)


def test_the_rate_floor_never_exceeds_a_tiny_ceiling() -> None:
    """--rate 0.05: cuts never raise the rate above it."""
    flow = FlowController(FlowSettings(0.05, max_window=4), now_s=0.0)
    for n in range(20):
        flow.observe(Outcome.THROTTLED, n * 1.0, 0.01, 30.0)
    assert flow.rate_per_s <= 0.05
