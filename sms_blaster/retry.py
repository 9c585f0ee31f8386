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


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retries: int = 5  # attempts after the first
    base_s: float = 0.5
    cap_s: float = 30.0
    retry_unknown: bool = False  # resend after an ambiguous answer (may send twice)


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


def decide(
    result: SendResult,
    attempt: int,
    policy: RetryPolicy,
    draw: Callable[[], float] = random.random,
) -> Decision:
    """The next step after attempt number `attempt` (1-based) ended with `result`."""
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
    if attempt > policy.retries:
        return Decision(Step.UNKNOWN if outcome is Outcome.AMBIGUOUS else Step.EXHAUSTED)
    # A provider's wait is honoured, but never beyond the backoff cap: a "Retry-After: 86400"
    # must not park every worker for a day.
    wait_s = min(result.wait_s or 0.0, policy.cap_s)
    return Decision(Step.RETRY, wait_s + backoff_s(attempt, policy, draw))
