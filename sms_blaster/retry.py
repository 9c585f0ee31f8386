"""What to do after each attempt: done, retry after a delay, or give up with a final state.

Pure: the engine supplies the attempt number and a random source. Backoff is exponential with full
jitter (a uniform draw below the exponential cap), added to any wait the provider asked for.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from sms_blaster.models import Outcome, SendResult

CONNECT_ERROR = "connect_error"  # the code of an attempt that could not connect: nothing was sent
# The code of an attempt whose connection ended after its request was written, with no answer.
CONNECTION_LOST = "connection_lost"


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
    # An attempt that could not connect says nothing of the row (nothing was sent): it does not
    # use up `retries` either. What ends an outage is `unreachable_s` (the run stops, its rows
    # pending); this cap only bounds a row where that never comes (no limit, or a provider that
    # some attempts reach and this row's never do). See `connect_cap`.
    connect_retries: int = 100
    # Stop the run once every attempt for this long failed to connect; None: never.
    unreachable_s: float | None = None

    @property
    def connect_cap(self) -> int:
        """Failed connections a row may meet before it ends: `connect_retries`, or more where a
        long `unreachable_s` must still come first. Past the first few, a backoff averages
        `cap_s / 2`, so `4 * unreachable_s / cap_s` of them span about twice that limit."""
        if self.unreachable_s is None:
            return self.connect_retries
        return max(self.connect_retries, math.ceil(4 * self.unreachable_s / self.cap_s))


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


def never_connected(result: SendResult) -> bool:
    """Whether the attempt failed before any connection took its request: surely not sent."""
    return result.outcome is Outcome.TRANSIENT and result.code == CONNECT_ERROR


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
    connect_errors: int = 0,
) -> Decision:
    """The next step after attempt number `attempt` (1-based) ended with `result`; `throttles`
    of the attempts so far (this one included) were throttled, and `connect_errors` could not
    connect (`never_connected`). Neither uses up `retries`: each has a cap of its own. A caller
    that does not count failed connections has them use up `retries`, as any transient error."""
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
    if connect_errors > policy.connect_cap and never_connected(result):
        return Decision(Step.EXHAUSTED)
    # A failed connection leaves this count as it was (at most `retries`, or the attempt before
    # would have ended the row); the backoff still grows with it, to try a provider that is down
    # less and less often.
    if attempt - throttles - connect_errors > policy.retries:
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
    failed to connect or was throttled. Neither uses up a row's retries (a throttle is flow
    control, a failed connection sent nothing), so this is what ends a run whose provider is down
    or throttles every request, its rows pending (each row's own caps come far later). Any other
    answer, even an error, starts the count again: a failing streak is counted from the later of
    its first attempt's leaving and the last other answer, so an attempt that left before an
    accepted answer (a slow one, or a retry whose send waited for its sender's turn) does not
    date the streak back past it."""

    __slots__ = ("_answered_s", "_limit_s", "_since_s", "_throttled")

    def __init__(self, limit_s: float) -> None:
        self._limit_s = limit_s
        self._since_s: float | None = None  # when the failing streak began
        self._answered_s = -math.inf  # when the last answer that was not a failure came
        self._throttled = False  # the streak holds a throttle: the provider answers, refusing

    def observe(self, result: SendResult, sent_at_s: float, now_s: float) -> Stall | None:
        """Take one attempt's result; the stall once it is past the limit."""
        throttled = result.outcome is Outcome.THROTTLED
        if not throttled and not never_connected(result):
            self._since_s = None
            self._answered_s = max(self._answered_s, now_s)
            return None
        if self._since_s is None:
            self._since_s, self._throttled = max(sent_at_s, self._answered_s), False
        self._throttled = self._throttled or throttled
        stalled_s = now_s - self._since_s
        return Stall(stalled_s, self._throttled) if stalled_s >= self._limit_s else None


class SilentStart:
    """Tells when a run's provider has not answered one request: the first LOST_LIMIT requests
    sent (in the order they left, not the order their results came back) all lost their
    connection after the request was written, before any answer. Each is unknown (the request
    may have been read), and so would every row after them be: the usual cause is the address
    (an http:// URL to a TLS port, whose server resets what is not TLS), so the run stops, its
    rows pending, at the cost of a few unknown rows, not the campaign's. Judged by the order of
    sending because a reset comes back before an answer: a provider that answers most requests
    and resets a few has its first results all resets. Once a request answered, it watches no
    more (later losses are the provider's faults)."""

    __slots__ = ("_lost", "_next", "_proxy_variable", "_results")

    LOST_LIMIT = 5

    def __init__(self, proxy_variable: str | None = None) -> None:
        # The variable naming the proxy requests go through: its tunnels may be what is cut.
        self._proxy_variable = proxy_variable
        self._lost = 0
        self._next = 1  # the first request, by the order of sending, not judged yet
        # Results come back out of order: each request's, until the ones before it are in.
        # True lost, False answered, None neither (never connected, or timed out).
        self._results: dict[int, bool | None] = {}

    def observe(self, request: int, result: SendResult) -> str | None:
        """Take the result of the run's `request`th request (from 1): the reason to stop, or
        None; `answered` once one of the first requests answered."""
        if self.answered or request < self._next:
            return None
        if result.code == CONNECTION_LOST:
            self._results[request] = True
        elif never_connected(result) or result.code == "timeout":
            self._results[request] = None
        else:
            self._results[request] = False
        while self._next in self._results:
            lost = self._results.pop(self._next)
            self._next += 1
            if lost is None:
                continue
            if not lost:
                self._lost = -1  # answered: watched no more
                self._results.clear()
                return None
            self._lost += 1
            if self._lost >= self.LOST_LIMIT:
                if self._proxy_variable is not None:
                    return (
                        f"the connection of each of the first {self._lost} requests, through "
                        f"the proxy {self._proxy_variable} names, closed without an answer: "
                        f"check {self._proxy_variable} (the proxy may cut its tunnels), then "
                        "--base-url (https://?)"
                    )
                return (
                    f"the provider closed the connection of each of the first {self._lost} "
                    "requests without an answer: check --base-url (https://?)"
                )
        return None

    @property
    def answered(self) -> bool:
        return self._lost < 0
