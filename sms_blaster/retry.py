"""What to do after each attempt: done, retry after a delay, or give up with a final state.

Pure: the engine supplies the attempt number and a random source. Backoff is exponential with full
jitter (a uniform draw below the exponential cap), added to any wait the provider asked for.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from sms_blaster.models import Outcome, SendResult

CONNECT_ERROR = "connect_error"  # the code of an attempt that could not connect: nothing was sent


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retries: int = 5  # attempts after the first
    base_s: float = 0.5
    cap_s: float = 30.0
    retry_unknown: bool = False  # resend after an ambiguous answer (may send twice)
    # Throttles are the flow control's business, not a fault of the row: they do not use up
    # `retries`, only this many of their own (a provider that throttles for ever still ends).
    throttle_retries: int = 100
    throttle_backoff_cap_s: float = 2.0  # the pace spaces retries; jitter only spreads them
    # Stop the run once every attempt for this long failed to connect; None: never.
    unreachable_s: float | None = None


class Step(StrEnum):
    SENT = "sent"
    RETRY = "retry"
    REJECTED = "rejected"  # permanent: failed, the run goes on
    EXHAUSTED = "exhausted"  # retryable, but the retries are used up
    UNKNOWN = "unknown"  # may have been accepted: never resent by default
    FATAL = "fatal"  # stop the run


@dataclass(frozen=True, slots=True)
class Decision:
    step: Step
    delay_s: float = 0.0


def backoff_s(attempt: int, policy: RetryPolicy, draw: Callable[[], float]) -> float:
    """Full jitter: uniform below min(cap, base * 2^(attempt-1)); `draw` returns [0, 1)."""
    ceiling = min(policy.cap_s, policy.base_s * 2.0 ** (attempt - 1))
    return draw() * ceiling


def next_step(
    result: SendResult,
    attempt: int,
    policy: RetryPolicy,
    draw: Callable[[], float] = random.random,
    throttles: int = 0,
) -> Decision:
    """The next step after attempt number `attempt` (1-based) ended with `result`; `throttles`
    of the attempts so far (this one included) were throttled."""
    outcome = result.outcome
    if outcome is Outcome.SENT:
        return Decision(Step.SENT)
    if outcome is Outcome.PERMANENT:
        return Decision(Step.REJECTED)
    if outcome is Outcome.FATAL:
        return Decision(Step.FATAL)
    retryable = outcome is not Outcome.AMBIGUOUS or policy.retry_unknown
    if not retryable:
        return Decision(Step.UNKNOWN)
    # A provider's wait is honoured, but never beyond the backoff cap: a "Retry-After: 86400"
    # must not park every worker for a day.
    wait_s = min(result.wait_s or 0.0, policy.cap_s)
    if outcome is Outcome.THROTTLED:
        if throttles > policy.throttle_retries:
            return Decision(Step.EXHAUSTED)
        jitter_s = draw() * min(
            policy.throttle_backoff_cap_s, policy.base_s * 2.0 ** (throttles - 1)
        )
        return Decision(Step.RETRY, wait_s + jitter_s)
    if attempt - throttles > policy.retries:
        return Decision(Step.UNKNOWN if outcome is Outcome.AMBIGUOUS else Step.EXHAUSTED)
    return Decision(Step.RETRY, wait_s + backoff_s(attempt - throttles, policy, draw))


@dataclass(frozen=True, slots=True)
class Stall:
    """The provider accepted nothing for `seconds`: every attempt failed to connect, or
    (`throttled`) some were answered, each with a throttle."""

    seconds: float
    throttled: bool


class Reachability:
    """Tells when the provider has accepted nothing for too long: every attempt for `limit_s`
    failed to connect or was throttled. Throttles do not use up a row's retries (flow control),
    so without this a provider that throttles every request would keep a run going for ever.
    Any other answer, even an error, starts the count again."""

    __slots__ = ("_limit_s", "_since_s", "_throttled")

    def __init__(self, limit_s: float) -> None:
        self._limit_s = limit_s
        self._since_s: float | None = None  # when the first attempt of the failing streak left
        self._throttled = False  # the streak holds a throttle: the provider answers, refusing

    def observe(self, result: SendResult, sent_at_s: float, now_s: float) -> Stall | None:
        """Take one attempt's result; the stall once it is past the limit."""
        throttled = result.outcome is Outcome.THROTTLED
        if not throttled and result.code != CONNECT_ERROR:
            self._since_s = None
            return None
        if self._since_s is None:
            self._since_s, self._throttled = sent_at_s, False
        self._throttled = self._throttled or throttled
        stalled_s = now_s - self._since_s
        return Stall(stalled_s, self._throttled) if stalled_s >= self._limit_s else None
