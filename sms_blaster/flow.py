"""Adaptive flow control: find the provider's real limit and stay just under it.

Pure arithmetic, told the time; the engine feeds it every answer and applies what it says to the
rate limiter and the in-flight window. The configured --rate and --window are ceilings.

Rate (AIMD, as TCP does for its window, with the cut sized by what was measured):
- answers are counted per interval, from one cut to the next, for requests sent in it. On a
  throttle (Vonage status 1 or 10, HTTP 429), once the interval holds `min_samples` answers,
  the share the provider accepted says how far over its limit the rate was: the rate becomes
  rate x accepted share x `margin`, and at least a `min_cut` smaller. Sent at 5x the limit,
  a fifth is accepted and one cut lands just under the limit; a little over, the cut is small.
- clean answers grow the rate back: quickly while below `cautious` x the estimated limit,
  slowly above, so it spends most of its time just under the limit and probes past it gently.
- the provider's wait hint pauses every sender (the limiter), not just the one throttled.

Window: when answers take much longer than the fastest seen lately, the provider is queueing;
the window shrinks by `window_cut`, at most once per round trip, and grows back by one per round
trip while latency is normal. It never goes below one request in flight.
"""

from __future__ import annotations

from dataclasses import dataclass

from sms_blaster.models import Outcome


@dataclass(frozen=True, slots=True)
class FlowSettings:
    ceiling_rate_per_s: float
    max_window: int
    margin: float = 0.97  # aim this far under the measured limit
    min_cut: float = 0.95  # a throttle always cuts at least this much (x 0.95)
    blind_cut: float = 0.5  # the cut when nothing at all was accepted
    min_samples: int = 20  # answers in an interval before its share is trusted
    cautious: float = 0.97  # below this share of the estimated limit, grow fast
    fast_growth: float = 0.10  # share of the estimated limit (or ceiling) added per second
    slow_growth: float = 0.01
    max_growth_step_s: float = 1.0  # idle or paused time does not count beyond this
    min_rate_per_s: float = 0.1
    max_pause_s: float = 30.0  # a provider's wait is honoured up to this
    window_cut: float = 0.8
    queueing_factor: float = 3.0  # smoothed latency this many times the baseline: queueing
    # ...and this much above it: a busy client's own delays stay well below a queueing provider's.
    queueing_margin_s: float = 0.05
    baseline_period_s: float = 10.0  # the baseline is the fastest answer of the last period or two


@dataclass(frozen=True, slots=True)
class Advice:
    """What the engine applies after an answer."""

    rate_per_s: float
    window: int
    pause_until_s: float | None = None


class FlowController:
    """One per run, shared by every worker."""

    __slots__ = (
        "_accepted",
        "_baseline_now_s",
        "_baseline_previous_s",
        "_baseline_since_s",
        "_first_sent_s",
        "_interval_start_s",
        "_last_growth_s",
        "_last_sent_s",
        "_last_window_change_s",
        "_refused",
        "_settings",
        "_smoothed_s",
        "known_limit_per_s",
        "rate_per_s",
        "throttles",
        "window",
    )

    def __init__(self, settings: FlowSettings, now_s: float) -> None:
        self._settings = settings
        self.rate_per_s = settings.ceiling_rate_per_s
        self.window = settings.max_window
        self.known_limit_per_s: float | None = None
        self.throttles = 0
        self._interval_start_s = float("-inf")
        self._accepted = 0  # answers in this interval, to requests sent in it
        self._refused = 0
        self._first_sent_s = float("inf")  # when the interval's answered requests left
        self._last_sent_s = float("-inf")
        self._last_growth_s = now_s
        self._last_window_change_s = now_s
        self._smoothed_s: float | None = None
        self._baseline_now_s = float("inf")  # fastest answer of this period
        self._baseline_previous_s = float("inf")  # ...and of the one before
        self._baseline_since_s = now_s

    @property
    def _floor_per_s(self) -> float:
        return min(self._settings.min_rate_per_s, self._settings.ceiling_rate_per_s)

    def observe(
        self,
        outcome: Outcome,
        sent_at_s: float,
        latency_s: float,
        now_s: float,
        wait_s: float | None = None,
    ) -> Advice:
        """Take one answer: the attempt's outcome, when it was sent and how long it took."""
        in_interval = sent_at_s >= self._interval_start_s
        if in_interval and outcome in (Outcome.THROTTLED, Outcome.SENT, Outcome.PERMANENT):
            self._first_sent_s = min(self._first_sent_s, sent_at_s)
            self._last_sent_s = max(self._last_sent_s, sent_at_s)
        if outcome is Outcome.THROTTLED:
            self.throttles += 1
            if in_interval:
                self._refused += 1
                self._maybe_cut(now_s)
            pause_until_s = now_s + min(wait_s, self._settings.max_pause_s) if wait_s else None
            return Advice(self.rate_per_s, self.window, pause_until_s)
        if outcome is Outcome.SENT or outcome is Outcome.PERMANENT:
            if in_interval:
                self._accepted += 1
            self._grow(now_s)
            if outcome is Outcome.SENT:
                self._adjust_window(latency_s, now_s)
        return Advice(self.rate_per_s, self.window)

    def _maybe_cut(self, now_s: float) -> None:
        settings = self._settings
        answers = self._accepted + self._refused
        if answers < settings.min_samples:
            return  # too few answers to size the cut; a few more throttles are the price
        # What was really sent: below --rate when the window, not the pace, was the limit.
        span_s = self._last_sent_s - self._first_sent_s
        sent_rate = answers / span_s if span_s > 0 else self.rate_per_s
        rate = min(self.rate_per_s, sent_rate)
        share = self._accepted / answers
        if share > 0:
            self.known_limit_per_s = rate * share
            target = min(self.rate_per_s * settings.min_cut, rate * share * settings.margin)
        else:
            target = rate * settings.blind_cut  # nothing accepted: no measure of the limit
        self.rate_per_s = max(self._floor_per_s, target)
        self._interval_start_s = now_s
        self._accepted = self._refused = 0
        self._first_sent_s, self._last_sent_s = float("inf"), float("-inf")
        self._last_growth_s = now_s

    def _grow(self, now_s: float) -> None:
        settings = self._settings
        elapsed_s = min(settings.max_growth_step_s, max(0.0, now_s - self._last_growth_s))
        self._last_growth_s = now_s
        reference = self.known_limit_per_s or settings.ceiling_rate_per_s
        cautious_rate = settings.cautious * reference
        rate = self.rate_per_s
        if rate < cautious_rate * (1 - 1e-9):
            rate = min(cautious_rate, rate + settings.fast_growth * reference * elapsed_s)
        else:
            rate += settings.slow_growth * reference * elapsed_s
        self.rate_per_s = min(settings.ceiling_rate_per_s, rate)

    def _adjust_window(self, latency_s: float, now_s: float) -> None:
        settings = self._settings
        if now_s - self._baseline_since_s >= settings.baseline_period_s:
            # A windowed minimum: the baseline follows a network that got slower for good.
            self._baseline_previous_s, self._baseline_now_s = self._baseline_now_s, float("inf")
            self._baseline_since_s = now_s
        self._baseline_now_s = min(self._baseline_now_s, latency_s)
        baseline = min(self._baseline_now_s, self._baseline_previous_s)
        smoothed = self._smoothed_s
        smoothed = latency_s if smoothed is None else smoothed + (latency_s - smoothed) * 0.1
        self._smoothed_s = smoothed
        if now_s - self._last_window_change_s < max(smoothed, baseline):
            return  # at most one change per round trip
        queueing = smoothed > max(
            baseline * settings.queueing_factor, baseline + settings.queueing_margin_s
        )
        if queueing:
            self.window = max(1, int(self.window * settings.window_cut))
        elif self.window < settings.max_window:
            self.window += 1
        else:
            return
        self._last_window_change_s = now_s
