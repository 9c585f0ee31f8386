"""What happens after each attempt: done, retry with backoff, or a final state."""

from __future__ import annotations

import pytest

from sms_blaster.models import Outcome, SendResult
from sms_blaster.retry import (
    CONNECT_ERROR,
    Reachability,
    RetryPolicy,
    Stall,
    Step,
    backoff_s,
    never_connected,
    next_step,
)

POLICY = RetryPolicy(retries=3, base_s=0.5, cap_s=4.0)


def top() -> float:
    return 0.999999


@pytest.mark.parametrize(
    ("outcome", "step"),
    [
        (Outcome.SENT, Step.SENT),
        (Outcome.PERMANENT, Step.REJECTED),
        (Outcome.FATAL, Step.FATAL),
        (Outcome.AMBIGUOUS, Step.UNKNOWN),
        (Outcome.THROTTLED, Step.RETRY),
        (Outcome.TRANSIENT, Step.RETRY),
    ],
)
def test_each_outcome_leads_to_its_step(outcome: Outcome, step: Step) -> None:
    """The classification table of docs/architecture.md, first attempt."""
    assert next_step(SendResult(outcome), 1, POLICY).step is step


def test_ambiguous_is_never_resent_by_default() -> None:
    """A request that may have been accepted is not sent again without --retry-unknown."""
    assert next_step(SendResult(Outcome.AMBIGUOUS), 1, RetryPolicy(retries=9)).step is Step.UNKNOWN


def test_ambiguous_is_resent_only_when_asked() -> None:
    """With --retry-unknown it is retried, and still ends unknown when retries run out."""
    policy = RetryPolicy(retries=1, retry_unknown=True)
    assert next_step(SendResult(Outcome.AMBIGUOUS), 1, policy).step is Step.RETRY
    assert next_step(SendResult(Outcome.AMBIGUOUS), 2, policy).step is Step.UNKNOWN


def test_retries_end_as_exhausted() -> None:
    """After --retries retries a transient failure is final."""
    result = SendResult(Outcome.TRANSIENT)
    assert next_step(result, POLICY.retries, POLICY).step is Step.RETRY
    assert next_step(result, POLICY.retries + 1, POLICY).step is Step.EXHAUSTED


def test_backoff_doubles_up_to_the_cap() -> None:
    """The jitter ceiling is base * 2^(attempt-1), never above the cap."""
    assert [round(backoff_s(n, POLICY, top), 3) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 4.0]


def test_backoff_is_full_jitter() -> None:
    """A draw of zero waits nothing: the delay is uniform below the ceiling."""
    assert backoff_s(3, POLICY, lambda: 0.0) == 0.0


def test_the_provider_wait_hint_is_honoured() -> None:
    """A throttle with 'please wait [ 702 ]' waits at least 0.702 s before the retry."""
    decision = next_step(SendResult(Outcome.THROTTLED, wait_s=0.702), 1, POLICY, lambda: 0.0)
    assert decision.step is Step.RETRY
    assert decision.delay_s == pytest.approx(0.702)


REFUSED = SendResult(Outcome.TRANSIENT, CONNECT_ERROR, "connection refused")


def test_the_provider_is_unreachable_once_every_attempt_failed_to_connect_for_the_limit() -> None:
    """Counted from when the first failing attempt left: under the limit nothing is said."""
    reach = Reachability(limit_s=30.0)
    assert reach.observe(REFUSED, sent_at_s=100.0, now_s=100.1) is None
    assert reach.observe(REFUSED, sent_at_s=110.0, now_s=129.9) is None
    assert reach.observe(REFUSED, sent_at_s=125.0, now_s=130.5) == Stall(30.5, throttled=False)


@pytest.mark.parametrize(
    "answer",
    [SendResult(Outcome.TRANSIENT, "http_503"), SendResult(Outcome.PERMANENT, "7")],
    ids=["server-error", "refusal"],
)
def test_any_answer_shows_the_provider_is_reachable_and_starts_the_count_again(
    answer: SendResult,
) -> None:
    """An error answer came from the provider: the failures before it no longer count."""
    reach = Reachability(limit_s=30.0)
    reach.observe(REFUSED, sent_at_s=0.0, now_s=1.0)
    assert reach.observe(answer, sent_at_s=20.0, now_s=20.1) is None
    assert reach.observe(REFUSED, sent_at_s=25.0, now_s=31.0) is None
    assert reach.observe(REFUSED, sent_at_s=50.0, now_s=55.0) == Stall(30.0, throttled=False)


THROTTLED = SendResult(Outcome.THROTTLED, "http_429", "too many requests")


def test_a_provider_that_throttles_every_request_for_the_limit_is_a_throttled_stall() -> None:
    """Counted from when the first throttled attempt left, as for a provider nothing reaches."""
    reach = Reachability(limit_s=30.0)
    assert reach.observe(THROTTLED, sent_at_s=100.0, now_s=100.1) is None
    assert reach.observe(THROTTLED, sent_at_s=110.0, now_s=129.9) is None
    assert reach.observe(THROTTLED, sent_at_s=125.0, now_s=130.5) == Stall(30.5, throttled=True)


def test_throttles_and_failed_connections_together_are_a_throttled_stall() -> None:
    """Neither accepted anything; the provider answered, so the stall is named for its throttles."""
    reach = Reachability(limit_s=30.0)
    reach.observe(REFUSED, sent_at_s=0.0, now_s=0.1)
    reach.observe(THROTTLED, sent_at_s=10.0, now_s=10.1)
    assert reach.observe(REFUSED, sent_at_s=29.0, now_s=31.0) == Stall(31.0, throttled=True)


def test_an_answer_other_than_a_throttle_starts_the_count_of_throttles_again() -> None:
    """A refusal between throttles came through: only the throttles after it count."""
    reach = Reachability(limit_s=30.0)
    reach.observe(THROTTLED, sent_at_s=0.0, now_s=0.1)
    assert reach.observe(SendResult(Outcome.PERMANENT, "7"), sent_at_s=20.0, now_s=20.1) is None
    assert reach.observe(THROTTLED, sent_at_s=21.0, now_s=40.0) is None
    assert reach.observe(REFUSED, sent_at_s=45.0, now_s=55.0) == Stall(34.0, throttled=True)


def test_a_stall_after_an_answer_is_named_only_by_what_came_since() -> None:
    """Throttles before an accepted send do not make a later connection stall a throttled one."""
    reach = Reachability(limit_s=30.0)
    reach.observe(THROTTLED, sent_at_s=0.0, now_s=0.1)
    reach.observe(SendResult(Outcome.SENT), sent_at_s=1.0, now_s=1.1)
    reach.observe(REFUSED, sent_at_s=2.0, now_s=2.1)
    assert reach.observe(REFUSED, sent_at_s=30.0, now_s=32.0) == Stall(30.0, throttled=False)


def test_throttles_do_not_use_up_the_retries() -> None:
    """A row throttled ten times, then a 503: the 503 is its first failure, retried."""
    policy = RetryPolicy(retries=1)
    throttled = SendResult(Outcome.THROTTLED)
    assert next_step(throttled, 10, policy, throttles=10).step is Step.RETRY
    assert next_step(SendResult(Outcome.TRANSIENT), 11, policy, throttles=10).step is Step.RETRY
    assert next_step(SendResult(Outcome.TRANSIENT), 12, policy, throttles=10).step is Step.EXHAUSTED


def test_a_provider_that_throttles_for_ever_still_ends_a_row() -> None:
    """Past `throttle_retries` throttles the row is exhausted: a run cannot loop for ever."""
    policy = RetryPolicy(throttle_retries=3)
    throttled = SendResult(Outcome.THROTTLED)
    assert next_step(throttled, 3, policy, throttles=3).step is Step.RETRY
    assert next_step(throttled, 4, policy, throttles=4).step is Step.EXHAUSTED


def test_a_throttled_retry_waits_the_hint_plus_a_little_jitter() -> None:
    """The pace spaces retries; the jitter only spreads them, at most 2 s however many."""
    decision = next_step(SendResult(Outcome.THROTTLED, wait_s=0.5), 30, RetryPolicy(), top, 30)
    assert decision.delay_s == pytest.approx(0.5 + 2.0)


def test_failed_connections_do_not_use_up_the_retries() -> None:
    """Ten refused connections (nothing sent), then a 503: the 503 is the row's first failure."""
    policy = RetryPolicy(retries=1)
    for attempt in range(1, 11):
        assert next_step(REFUSED, attempt, policy, connect_errors=attempt).step is Step.RETRY
    transient = SendResult(Outcome.TRANSIENT, "http_503")
    assert next_step(transient, 11, policy, connect_errors=10).step is Step.RETRY
    assert next_step(transient, 12, policy, connect_errors=10).step is Step.EXHAUSTED


def test_failed_connections_between_throttles_and_errors_use_up_neither() -> None:
    """Only the attempts that reached the provider and failed count against --retries."""
    policy = RetryPolicy(retries=2)
    assert next_step(REFUSED, 9, policy, throttles=4, connect_errors=3).step is Step.RETRY
    transient = SendResult(Outcome.TRANSIENT, "5")
    assert next_step(transient, 10, policy, throttles=4, connect_errors=3).step is Step.EXHAUSTED


def test_a_provider_never_reached_still_ends_a_row() -> None:
    """Past `connect_retries` failed connections the row is exhausted: a run without
    --unreachable-timeout cannot loop for ever either."""
    policy = RetryPolicy(retries=0, connect_retries=3)
    assert next_step(REFUSED, 3, policy, connect_errors=3).step is Step.RETRY
    assert next_step(REFUSED, 4, policy, connect_errors=4).step is Step.EXHAUSTED


def test_a_long_unreachable_timeout_raises_the_cap_of_failed_connections() -> None:
    """At the 30 s backoff cap, 4 x 3600 / 30 connections take about two hours: the timeout of
    one hour stops the run first; a short one leaves `connect_retries` as it is."""
    assert RetryPolicy(unreachable_s=3600.0).connect_cap == 480
    assert RetryPolicy(unreachable_s=30.0).connect_cap == 100
    assert RetryPolicy(unreachable_s=None, connect_retries=7).connect_cap == 7


def test_the_backoff_after_failed_connections_still_grows() -> None:
    """A provider that is down is tried less and less often, up to the cap."""
    policy = RetryPolicy(base_s=0.5, cap_s=30.0)
    delays = [next_step(REFUSED, n, policy, top, connect_errors=n).delay_s for n in (1, 3, 9)]
    assert delays == pytest.approx([0.5, 2.0, 30.0], rel=1e-5)


@pytest.mark.parametrize(
    "result",
    [
        SendResult(Outcome.AMBIGUOUS, "connection_lost", "reset after the request was written"),
        SendResult(Outcome.AMBIGUOUS, "timeout", "no answer in time"),
        SendResult(Outcome.TRANSIENT, "http_503", "Service Unavailable"),
        SendResult(Outcome.TRANSIENT, "5", "Internal Error"),
    ],
    ids=["lost", "timeout", "503", "status-5"],
)
def test_only_a_connection_never_made_is_free(result: SendResult) -> None:
    """Whatever reached the provider, or may have, is no failed connection: it counts as before."""
    assert not never_connected(result)
    assert never_connected(REFUSED)


def test_a_throttle_of_an_attempt_that_left_before_an_accepted_answer_counts_from_it() -> None:
    """A retry that waited 25 s for its sender's turn in a pool (or a slow answer) is throttled
    after other requests were accepted: the count starts at the last accepted answer, not when
    the throttled attempt was let go, and the provider that accepts requests is no stall."""
    reach = Reachability(limit_s=20.0)
    assert reach.observe(SendResult(Outcome.SENT), sent_at_s=29.9, now_s=30.0) is None
    assert reach.observe(THROTTLED, sent_at_s=5.0, now_s=31.0) is None
    assert reach.observe(THROTTLED, sent_at_s=32.0, now_s=50.5) == Stall(20.5, throttled=True)
