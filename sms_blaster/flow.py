"""Adaptive flow control: find the provider's real limit, whatever its shape, and stay just under.

Pure arithmetic, told the time; the engine feeds it every answer and applies what it says to the
rate limiter and the in-flight window. The configured --rate and --window are ceilings.

Providers limit in different shapes (a token bucket, a sliding or fixed window, a queue, a cap on
requests in service) and rarely say which. What every shape shares: while it refuses some of
what is sent, what it accepts per second *is* its limit. So the controller:

- measures. Answers are counted by the time their request left, in 10 ms bins, and per interval
  (from one cut to the next). When an interval with throttles has `min_samples` answers, the
  limit is estimated two ways and the larger kept: the rate sent times the share accepted (exact
  for a bucket, within one interval), and what was accepted over the trailing `measure_s` (exact
  for windows: a full sliding window holds the limit). A first estimate from a start at the
  ceiling is rough; the next throttles correct it. A start can also drain a bucket's whole
  burst into the last second's count: when the next interval is refused at a steady share,
  that share, not the swollen count, sizes the cut. A start that filled a window within its
  first second, and is refused again after its cut with nothing passed since, meets a window
  that frees its places only as the start's own requests leave it (late, and fast, as the
  start's pace grew): what the window holds is the limit, and every sender waits until
  enough of those requests have left for a moment of the pace, instead of a throttle each.
  A second in which the client itself sent less than its pace, with few refused and a stretch
  of nothing sent to account for it, measures the client (held up by a busy core or disk), not
  the limit: the throttles of the burst it sends once it can cut nothing.
- paces at `margin` x the estimate (cruise), and no faster than what it measured.
- probes. After `probe_every_s` of cruise without a throttle it paces `probe_gain` above the
  estimate for up to `probe_s`; a probe that ends clean raises the estimate to what was
  accepted during it and doubles the next probe's step, so an underestimate or a limit that rose
  is found within seconds (as BBR and CUBIC probe for bandwidth). A throttle ends the probe and
  measures the limit again; so do answers that slow down during it (a provider queueing the
  probe's excess accepts it: its limit is its service rate, where it was). A later step refused
  far above the clean one below it bounds the limit from above, for what passed while refused
  is no measure of it (a limit that refuses any two requests closer than its interval, as
  nginx's `limit_req` without a burst, passes half of a pace just above it): the next probe
  comes after one `measure_s` and steps no further than halfway to the refused pace, until the
  gap is smaller than a first step. Not when more were in flight than accepted answers had
  (a cap in service refuses whatever the pace). But a trailing count far above the clean step,
  answered without delay, is the limit: a full sliding window holds it.
- remembers. A limit that held and fell may come back (a shared limit another sender left):
  the next `recall_probes` probes from far under where it was step straight back there, for a
  whole `measure_s`, instead of growing from the low estimate in small steps for seconds. Such a
  step, refused, costs one round trip of requests; what it sent says nothing of a cap, and only
  a throttle ends it (a jump that far slows a busy client's own answers too).
- tells background from a limit. A limit refuses nothing under it, so a cut in cruise stops its
  throttles. When two cuts in a row leave them at the share they had (a carrier refusing a
  percent at random, whatever the pace), they are background: the limit from before the cuts
  comes back, and throttles up to that share (and `background_margin` more) cut no more, in
  cruise or probes. A clean cruise forgets it. In the start the same is told sooner: a limit
  the pace crossed refuses one answer after another, so a lone throttle, or a few in the last
  `start_answers`, does not end it (unless more were in flight than ever passed: a cap in
  service). A start that holds the ceiling `background_span_s` with such throttles takes the
  ceiling as the limit and their share as the background.
- backs off when blind. An interval of answers that are all throttled (a full window: nothing
  passes until it turns) pauses every sender, for a round trip at first and twice as long each
  time it repeats, until something is accepted. A provider's wait hint is used for the throttled
  request's own retry (see `retry`), never to stop everyone: hints are often whole seconds, or
  wrong, and a pause per throttle costs the provider's whole capacity for that long.
- keeps the window. When answers take much longer than the fastest seen lately, the provider is
  queueing: the window shrinks by `window_cut`, at most once per round trip, and grows back by
  one per round trip while latency is normal. When throttles come only while many requests are
  in flight and never with fewer, the provider caps requests in service, not their rate: the
  window is set to the most in flight that passed, and the pace no longer binds. Not when they
  all came within a round trip, or with far more in flight than the pace keeps there: a client
  held up for a moment sends what came due at once, and such a burst is refused the same way.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass
from enum import Enum

from sms_blaster.models import Outcome


@dataclass(frozen=True, slots=True)
class FlowSettings:
    ceiling_rate_per_s: float
    max_window: int
    margin: float = 0.97  # cruise this far under the estimated limit...
    slack: float = 1.2  # ...and at least this many requests a `measure_s` under it
    measure_s: float = 1.0  # the span a window-shaped limit is counted over
    min_samples: int = 8  # answers in an interval before its share is trusted
    probe_every_s: float = 2.0  # cruise this long without a throttle, then probe
    probe_s: float = 0.5  # a probe lasts at most this long
    probe_gain: float = 0.04  # the first probe's step above the estimate
    probe_gain_growth: float = 3.0  # ...times this after each clean probe...
    # The first probe's step after the start's cut: the start's estimate is rough, low for a
    # bucket of a small burst (its early slow steps count in) and for a campaign's leader (its
    # pace takes effect late), and a first step of 4 % took 5-7 s to climb from 0.6-0.75 of it.
    start_probe_gain: float = 0.12
    max_probe_gain: float = 0.5  # ...up to this: far above a sliding window, a probe fills it
    min_probe_every_s: float = 0.25  # ...and the cruise before the next one halved, down to this
    # A probe whose answers slow by this share of the fastest latency, and this much more, is
    # queued at the provider: it ends, and raises nothing.
    probe_queued_share: float = 0.5
    probe_queued_margin_s: float = 0.01
    drop_share: float = 0.8  # an interval showing less than this share of the window's count
    drop_samples: int = 20  # ...over this many answers: the limit fell, take the interval's
    drop_refusals: int = 4  # ...or this many throttles right after the start's cut: a burst
    burst_share: float = 0.45  # ...at least this share of the count (a window's turn shows less)
    max_background: float = 0.03  # throttles at most this share may be background noise...
    background_margin: float = 0.01  # ...and once learned, this much above it is tolerated
    background_span_s: float = 2.0  # ...shares counted over this long (a few throttles is noise)
    start_answers: int = 50  # ...and in the start, over this many last answers
    # A client that sent this share less than its pace fell behind it (its own delays): what
    # passed then is no measure of the limit.
    behind_share: float = 0.03
    cap_samples: int = 3  # throttles, all with many in flight, before a cap is believed
    cap_below: float = 0.5  # ...while this share of accepted answers had fewer in flight
    cap_above: float = 0.15  # ...and at most this share as many or more (a slow rate limit's
    # in-flight count is small either way: what tells a cap is that it refuses them all)
    cap_held: float = 2.0  # ...and with at most this many times what the pace keeps in flight
    # After the start's cut, a window it filled: wait until this long of the pace has room.
    shadow_room_s: float = 0.1
    min_rate_per_s: float = 0.1
    start_share: float = 1 / 16  # a run starts at this share of the ceiling (or this rate)...
    min_start_per_s: float = 10.0
    start_step_s: float = 0.1  # ...and grows its pace this often while answers are clean
    start_growth: float = 1.4  # ...by this factor
    max_probe_every_s: float = 2.0  # a probe that found the limit where it was: wait longer
    # A limit that fell may come back: this many probes go straight back to where it was.
    recall_probes: int = 5
    first_backoff_s: float = 0.02  # a blind pause: at least this, or a round trip
    max_backoff_s: float = 1.0
    window_cut: float = 0.8
    queueing_factor: float = 3.0  # smoothed latency this many times the baseline: queueing
    # ...and this much above it: a busy client's own delays stay well below a queueing provider's.
    queueing_margin_s: float = 0.05
    baseline_period_s: float = 10.0  # the baseline is the lowest level of the last period or two
    # ...(the median of the latest answers, see `_level_s`), once this many answers came (before,
    # the fastest answer): a provider whose answers take 50-500 ms at random, or 60 ms and now
    # and then 2 s, is not queueing when some come fast, and a smaller window would not make
    # the others faster.
    baseline_samples: int = 16
    # Counts wait for the slowest answer of the last 2-4 s, not 1.5 times the smoothed
    # latency: for answers gathered from several processes (a campaign's workers), where one
    # held up by a busy core reads its answers late.
    horizon_slowest: bool = False


@dataclass(frozen=True, slots=True)
class Advice:
    """What the engine applies after an answer."""

    rate_per_s: float
    window: int
    pause_until_s: float | None = None


class Phase(Enum):
    START = "start"  # at the ceiling, no limit seen yet
    CRUISE = "cruise"  # just under the estimated limit
    PROBE = "probe"  # a little above it, for a moment


_BIN_S = 0.01
_LEVEL_ANSWERS = 32  # the latency's level: the median of this many latest answers
_TAIL_ANSWERS = 256  # the latencies a count's stragglers are judged by
_PROBE_LEVEL_ANSWERS = 8  # ...and of at least this many of a probe's, to judge it queued
_BINS = 400  # 4 s of send time: enough for `measure_s` and a probe
_BINS_SPAN_S = (_BINS - 2) * _BIN_S  # what a count reaches back, whole bins


class _Bins:
    """Accepted requests per 10 ms of send time, for the last few seconds."""

    __slots__ = ("_counts", "_ids")

    def __init__(self) -> None:
        self._ids = [-1] * _BINS
        self._counts = [0] * _BINS

    def add(self, sent_at_s: float) -> None:
        bin_id = math.floor(sent_at_s / _BIN_S)
        slot = bin_id % _BINS
        if self._ids[slot] != bin_id:
            self._ids[slot], self._counts[slot] = bin_id, 0
        self._counts[slot] += 1

    def count(self, start_s: float, end_s: float) -> int:
        """Accepted requests sent in [start_s, end_s] (to the bin)."""
        first, last = math.floor(start_s / _BIN_S), math.floor(end_s / _BIN_S)
        first = max(first, last - _BINS + 1)
        total = 0
        for bin_id in range(first, last + 1):
            slot = bin_id % _BINS
            if self._ids[slot] == bin_id:
                total += self._counts[slot]
        return total

    def holds(self, bin_id: int) -> bool:
        """Was anything counted in this bin?"""
        slot = bin_id % _BINS
        return self._ids[slot] == bin_id and self._counts[slot] > 0

    def freed_s(self, start_s: float, end_s: float, keep: float) -> float | None:
        """When the oldest requests sent in [start_s, end_s] have left so that at most `keep`
        are left (to the bin), or None when no more than that are there now."""
        excess = self.count(start_s, end_s) - keep
        if excess <= 0:
            return None
        first, last = math.floor(start_s / _BIN_S), math.floor(end_s / _BIN_S)
        for bin_id in range(max(first, last - _BINS + 1), last + 1):
            slot = bin_id % _BINS
            if self._ids[slot] == bin_id:
                excess -= self._counts[slot]
                if excess <= 0:
                    return (bin_id + 1) * _BIN_S
        return None


class _CapDetector:
    """Tells a cap on requests in service from a rate limit: a cap refuses only while many
    requests are in flight, and then nearly every one; a rate limit whatever the number.
    Answers are counted by how many other requests were in flight when they left; accepted ones
    decay by half each second.

    A burst also refuses only with many in flight: a client held up for a moment (a busy core,
    a slow disk) sends what came due at once, and a short queue or a nearly full window refuses
    the burst's tail. Two things tell it from a cap. A cap holds its places for a round trip,
    so its refusals go on that long; a burst's end with it. And a cap binds only where the pace
    fills it: one that refuses with many more in flight than the pace keeps there would pass
    far more than is sent."""

    __slots__ = ("_accepted", "_decayed_s", "_settings", "_throttled")

    def __init__(self, settings: FlowSettings) -> None:
        self._settings = settings
        self._accepted = [0.0] * (settings.max_window + 1)
        self._decayed_s = -math.inf
        # (in flight, sent at) of the recent throttles
        self._throttled: collections.deque[tuple[int, float]] = collections.deque(
            maxlen=2 * settings.cap_samples
        )

    def accepted(self, in_flight: int, now_s: float) -> None:
        if now_s - self._decayed_s >= 1.0:
            self._accepted = [count / 2 for count in self._accepted]
            self._decayed_s = now_s
        counts = self._accepted
        counts[in_flight if in_flight < len(counts) else len(counts) - 1] += 1

    def forget(self) -> None:
        self._throttled.clear()

    def passes_with(self, in_flight: int) -> bool:
        """Did a fair share of the recent accepted answers leave with this many in flight or
        more? If not, a throttle with that many may be a cap in service's, not a rate's."""
        counts = self._accepted
        total = sum(counts)
        return total > 0 and sum(counts[in_flight:]) >= self._settings.cap_above * total

    def throttled(
        self, in_flight: int, sent_at_s: float, round_trip_s: float, held: float
    ) -> int | None:
        """The cap, once throttles show one: the fewest in flight any recent throttle left with.
        `round_trip_s`: how long answers take; `held`: how many the pace keeps in flight."""
        self._throttled.append((in_flight, sent_at_s))
        if len(self._throttled) < self._settings.cap_samples:
            return None
        floor = min(count for count, _ in self._throttled)
        if floor < 1:
            return None
        sent = [at for _, at in self._throttled]
        if max(sent) - min(sent) < round_trip_s:
            return None  # refusals within one round trip: a burst's, or too soon to tell
        if floor > self._settings.cap_held * held + 1:
            return None  # far more in flight than the pace keeps there: a burst's
        below = sum(self._accepted[:floor])
        if below < self._settings.cap_below * sum(self._accepted):
            return None
        if sum(self._accepted[floor:]) > self._settings.cap_above * sum(self._accepted):
            return None  # a cap lets (almost) nothing through with that many in flight
        return floor


class FlowController:
    """One per run, shared by every worker."""

    def __init__(
        self, settings: FlowSettings, now_s: float, limit_per_s: float | None = None
    ) -> None:
        """`limit_per_s`: a limit found earlier (another process's estimate): start cruising
        just under it instead of a slow start."""
        self._settings = settings
        ceiling = settings.ceiling_rate_per_s
        self.rate_per_s = min(
            ceiling, max(ceiling * settings.start_share, settings.min_start_per_s)
        )
        self.window = settings.max_window
        self.known_limit_per_s: float | None = None
        self.throttles = 0
        self.phase = Phase.START
        self._bins = _Bins()
        self._refused_bins = _Bins()  # throttled requests, by send time
        # Throttles that come whatever the pace (a carrier's transient refusals): their share,
        # learned when a cut in cruise did not stop them, and the cut that taught it.
        self._background = 0.0
        # (share that caused it, limit before it, whether the throttles went on after it once,
        # when it was made)
        self._cut: tuple[float, float, bool, float] | None = None
        self._first_sent_ever_s = math.inf
        self._interval_start_s = -math.inf
        self._accepted = 0  # answers in this interval, to requests sent in it
        self._refused = 0
        self._first_sent_s = math.inf  # when the interval's answered requests left
        self._last_sent_s = -math.inf
        self._phase_since_s = now_s
        self._last_accepted_sent_s = -math.inf
        self._last_refused_sent_s = -math.inf
        self._gain = settings.probe_gain
        # The pace a probe was throttled at after a clean step below it: the limit lies between
        # the two, and the next probe halves the gap instead of stepping past it again.
        self._refused_at_per_s: float | None = None
        self._cruise_s = settings.probe_every_s
        self._probe_s = settings.probe_s
        # The last limit that held: a cruise under it was clean, or a probe passed at it. (A
        # first estimate cut before it held, as a bucket's burst swells one, is no limit that
        # fell.)
        self._held_per_s: float | None = None
        # The limit that held before the last fall (a provider's limit that fell for a while
        # often comes back), and how many probes may still look for it there.
        self._recall_per_s: float | None = None
        self._recall_probes = 0
        self._recalling = False  # this probe is one of them
        self._recalled_s = (math.inf, math.inf)  # ...sent from, and until after, the last
        self._cap = _CapDetector(settings)
        self._after_start = False  # the interval is the first since the start's cut
        self._cruise_since_s = math.inf  # when the start ended
        self._above_until_s = now_s  # when the last start or probe ended
        self._ceiling_since_s = math.inf  # when the start's pace reached the ceiling
        # The start's last answers, True for a throttle: a limit crossed refuses them in a row.
        self._start_refusals: collections.deque[bool] = collections.deque(
            maxlen=settings.start_answers
        )
        self._most_in_flight_accepted = 0
        self._window_cap: int | None = None  # a cap in service the window keeps to
        self._window_step = 1  # ...probed one more each probe, twice as many while clean
        if limit_per_s is not None and limit_per_s > 0:
            self.known_limit_per_s = min(limit_per_s, ceiling)
            self.rate_per_s = self._cruise(self.known_limit_per_s)
            self.phase = Phase.CRUISE
            self._cruise_since_s = now_s
        self._last_advice = Advice(self.rate_per_s, self.window)
        self._steady_per_s = self.rate_per_s  # the pace, since it last moved by a fifth
        self._steady_since_s = now_s
        self._backoff_s = 0.0
        self._resume_per_s: float | None = None  # the pace to take back after a blind pause
        self._paused_until_s = -math.inf
        # The window
        self._last_window_change_s = now_s
        self._smoothed_s: float | None = None
        self._latency_before_probe_s: float | None = None  # the level, when the probe began
        self._spread_before_probe_s = 0.0  # ...and the spread of the answers it was taken of
        # The latest answers' latencies: their median is the level queueing is judged by (a
        # queue slows every answer, the fast ones too; answers slow at random, 90 % in 60 ms
        # and 10 % in 2 s or a long tail, move the mean a lot and the median little).
        self._recent: collections.deque[float] = collections.deque(maxlen=_LEVEL_ANSWERS)
        # ...and more of them, for the share of a count still to come (a tail of 3 % in 1.5 s
        # hardly shows in 32)
        self._latest: collections.deque[float] = collections.deque(maxlen=_TAIL_ANSWERS)
        self._refusals: collections.deque[float] = collections.deque(maxlen=_TAIL_ANSWERS // 4)
        self._probe_answers = 0  # answers with a latency since the probe began
        self._baseline_now_s = math.inf  # fastest answer of this period
        self._baseline_previous_s = math.inf  # ...and of the one before
        self._slowest_now_s = 0.0  # slowest answer of this `background_span_s`
        self._slowest_previous_s = 0.0  # ...and of the one before
        self._slowest_since_s = now_s
        self._probe_first_s = math.inf  # the first request accepted since the phase began
        self._baseline_since_s = now_s
        self._latencies = 0  # answers that smoothed the latency
        self._baseline_from_answers = True  # the baseline is still the fastest answer

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
        in_flight: int = 0,
    ) -> Advice:
        """Take one answer: the attempt's outcome, when it was sent, how long it took, and how
        many other requests were in flight when it left. `wait_s`, the provider's hint, is for
        the request's own retry and is not used here."""
        del wait_s
        # Once per answer: comparisons rather than min()/max() calls, and no new Advice unless
        # it changed (the sender's per-row cost).
        accepted = outcome is Outcome.SENT or outcome is Outcome.PERMANENT
        if not accepted and outcome is not Outcome.THROTTLED:
            return self._advice(now_s)  # says nothing of the limit
        if sent_at_s < self._first_sent_ever_s:
            self._first_sent_ever_s = sent_at_s
        in_interval = sent_at_s >= self._interval_start_s
        if in_interval:
            if sent_at_s < self._first_sent_s:
                self._first_sent_s = sent_at_s
            if sent_at_s > self._last_sent_s:
                self._last_sent_s = sent_at_s
        pause_until_s = None
        if self.phase is Phase.START:
            self._start_refusals.append(not accepted)
            if accepted and in_flight > self._most_in_flight_accepted:
                self._most_in_flight_accepted = in_flight
        if accepted:
            if sent_at_s > self._last_accepted_sent_s:
                self._last_accepted_sent_s = sent_at_s
            if self._phase_since_s <= sent_at_s < self._probe_first_s:
                self._probe_first_s = sent_at_s  # the first accepted since the phase began
            self._bins.add(sent_at_s)
            self._cap.accepted(in_flight, now_s)
            self._backoff_s = 0.0
            if self._resume_per_s is not None:
                self.rate_per_s, self._resume_per_s = self._resume_per_s, None
            if in_interval:
                self._accepted += 1
            if outcome is Outcome.SENT:
                self._adjust_window(latency_s, now_s)
            self._steer(now_s)
        else:
            self.throttles += 1
            self._refused_bins.add(sent_at_s)
            self._refusals.append(latency_s)
            if sent_at_s > self._last_refused_sent_s:
                self._last_refused_sent_s = sent_at_s
            # The start's flood says nothing of a cap, nor does a probe's step back to where
            # the limit was: many more in flight, and what exceeds a rate is refused, until a
            # `measure_s` after it (its requests keep the count in flight up, and a window full).
            capped = (
                sent_at_s >= self._cruise_since_s
                and not self._recalled_s[0] <= sent_at_s <= self._recalled_s[1]
                and self._check_cap(in_flight, sent_at_s, now_s)
            )
            if in_interval and not capped:
                self._refused += 1
                pause_until_s = self._throttled(sent_at_s, latency_s, now_s, in_flight)
            shadow_s = self._start_shadow(sent_at_s, now_s, in_flight)
            if shadow_s is not None and shadow_s > (pause_until_s or -math.inf):
                self._paused_until_s = pause_until_s = shadow_s
        if pause_until_s is not None:
            self._note_pace(now_s)
            return Advice(self.rate_per_s, self.window, pause_until_s)
        return self._advice(now_s)

    def _advice(self, now_s: float) -> Advice:
        """The pace and window, as the last Advice when they have not changed."""
        advice = self._last_advice
        if advice.rate_per_s != self.rate_per_s or advice.window != self.window:
            self._last_advice = advice = Advice(self.rate_per_s, self.window)
            self._note_pace(now_s)
        return advice

    def _note_pace(self, now_s: float) -> None:
        """A pace that moved by a fifth or more since it last did: the latest answers are not
        a fair sample of the latencies until a round trip at the new pace (see `_biased`)."""
        rate = self.rate_per_s
        steady = self._steady_per_s
        if rate > 1.2 * steady or rate < steady / 1.2:
            self._steady_per_s, self._steady_since_s = rate, now_s

    def _start_shadow(self, sent_at_s: float, now_s: float, in_flight: int) -> float | None:
        """A throttle in the second after the start's cut, when the start filled a second's
        window before the second was out: the window frees its places only as the start's own
        requests leave it, late and fast as its pace grew, and a pace of the limit meets it full
        again and again. When enough have left for a moment of the pace: until then, wait."""
        settings = self._settings
        limit = self.known_limit_per_s
        since_s = self._cruise_since_s
        if limit is None or not since_s <= sent_at_s < since_s + settings.measure_s:
            return None
        if not 0 < since_s - self._first_sent_ever_s < settings.measure_s:
            return None  # no start before the cut, or one that ran clean for a whole second
        if self._window_cap is not None:
            return None
        if self._last_accepted_sent_s >= since_s:
            return None  # something sent since the cut passed: not a full window
        if in_flight > self._most_in_flight_accepted:
            return None  # more in flight than ever passed: maybe a cap in service
        end_s = now_s - self._horizon_s  # every answer to what was sent by then is in
        start_s = end_s - settings.measure_s
        held = self._bins.count(start_s, end_s)
        if held < 1:
            return None
        pace = self._resume_per_s or self.rate_per_s  # a blind pause's pace is for its ask
        full = max(held / settings.measure_s, self._passed_so_far_per_s(now_s))
        if full < limit:
            # The window is full with what it holds: that is its limit.
            self.known_limit_per_s = full
            pace = max(self._floor_per_s, self._cruise(self.known_limit_per_s))
            if self._resume_per_s is not None:
                self._resume_per_s = pace  # taken back with the first accepted answer
            else:
                self.rate_per_s = pace
        # Probing while the start's requests leave the window would count them as the limit.
        self._cruise_s = max(self._cruise_s, since_s + settings.measure_s - self._phase_since_s)
        keep = held - max(1.0, pace * settings.shadow_room_s)
        freed_s = self._bins.freed_s(start_s, end_s, keep)
        return None if freed_s is None else freed_s + settings.measure_s

    def _check_cap(self, in_flight: int, sent_at_s: float, now_s: float) -> bool:
        """Take a throttle as a cap in service's: True when the window, not the pace, answers it."""
        settings = self._settings
        cap = self._window_cap
        if cap is not None and in_flight < cap:
            # Refused with fewer in flight than the cap allows: a rate limit after all.
            self._window_cap = None
            self._cap.forget()
            self.window = settings.max_window
            if self.known_limit_per_s is not None:
                self.rate_per_s = self._cruise(self.known_limit_per_s)
            return False
        if cap is not None:
            # A window probe went too far (or requests that took their places before the cap
            # was set): back to the cap.
            self._window_step = 1
            self._cruise_s = settings.max_probe_every_s
            self._enter(Phase.CRUISE, now_s)
        else:
            round_trip_s = self._smoothed_s or 0.0
            end_s = now_s - self._horizon_s
            passed_per_s = self._bins.count(end_s - settings.measure_s, end_s) / settings.measure_s
            held = passed_per_s * round_trip_s
            self._window_cap = self._cap.throttled(in_flight, sent_at_s, round_trip_s, held)
            if self._window_cap is None:
                return False
            # The window keeps the cap; the pace must not bind below it.
            limit = self.known_limit_per_s or self.rate_per_s
            self.rate_per_s = min(settings.ceiling_rate_per_s, 2 * limit)
        kept = self._window_cap if cap is None else cap
        if kept is not None:
            self.window = min(self.window, kept)
        self._last_window_change_s = now_s
        # What the cap lets through: the accepted rate while it binds.
        end_s = now_s - self._horizon_s
        passed = self._bins.count(end_s - settings.measure_s, end_s) / settings.measure_s
        if passed > 0:
            self.known_limit_per_s = passed
        return True

    def _passed_so_far_per_s(self, now_s: float) -> float:
        """What passed of the requests sent over the latest `measure_s`, counted now: answers
        still to come make it a floor of what a window holds. (Answers slow at random, a long
        tail, push the count whose answers are all in seconds back, to the start's first
        requests.)"""
        measure_s = self._settings.measure_s
        return self._bins.count(now_s - measure_s, now_s) / measure_s

    def _cruise(self, limit_per_s: float) -> float:
        """The pace just under a limit: `margin` under it, and at least `slack` requests a
        `measure_s` under it (at 30/s, 3 % is one request: a little jitter fills it)."""
        settings = self._settings
        slack_per_s = settings.slack / settings.measure_s
        pace = min(limit_per_s * settings.margin, limit_per_s - slack_per_s)
        return min(settings.ceiling_rate_per_s, max(pace, limit_per_s * 0.5))

    @property
    def _horizon_s(self) -> float:
        """How long after a request left its answer is surely in: counts of send time are
        complete only up to now minus this (see `horizon_slowest`)."""
        horizon_s = 1.5 * (self._smoothed_s or 0.0)
        if self._recent:
            # Not less than the slowest of the latest answers: with answers slow at random (a
            # tenth in 2 s) a count 1.5 round trips back misses the slow ones, and a probe that
            # passed clean looks short of its step.
            slowest_s = max(self._recent)
            if slowest_s > horizon_s:
                horizon_s = slowest_s
        settings = self._settings
        if settings.horizon_slowest:
            horizon_s = max(horizon_s, self._slowest_now_s, self._slowest_previous_s)
        # No further back than a `measure_s` the bins still hold: one answer of 5 s in a long
        # tail would have every count read bins written over (nothing: "a limit of 1/s").
        return min(horizon_s + 0.005, _BINS_SPAN_S - settings.measure_s - _BIN_S)

    # -- the rate ------------------------------------------------------------------------------

    def _throttled(
        self, sent_at_s: float, latency_s: float, now_s: float, in_flight: int
    ) -> float | None:
        settings = self._settings
        paced_per_s = self.rate_per_s  # the pace these throttles met
        answers = self._accepted + self._refused
        blind = self._accepted == 0
        # Blind again after a pause: one answer says so (each costs a throttle).
        if answers < ((1 if self._backoff_s else 3) if blind else settings.min_samples):
            return None  # too few answers to size the cut; a few more throttles are the price
        if not blind and self.phase is not Phase.START and self._background_noise(sent_at_s, now_s):
            return None
        if not blind and self.phase is Phase.START and self._start_background(in_flight):
            return None
        span_s = self._last_sent_s - self._first_sent_s
        # What was sent over the span, not only what was answered: answers slow at random
        # leave the slow ones out, and a rate of the fast alone reads as a limit that fell.
        first_s, last_s = self._first_sent_s, self._last_sent_s
        accepted = self._accepted / self._answered_share(first_s, last_s, now_s, self._latest)
        refused = self._refused / self._answered_share(first_s, last_s, now_s, self._refusals)
        sent_rate = (accepted + refused) / span_s if span_s > 0 else self.rate_per_s
        offered = min(self.rate_per_s, sent_rate) if self.phase is not Phase.PROBE else sent_rate
        by_share = offered * accepted / (accepted + refused)
        # What passed over the trailing span whose answers are all in: a full window holds the
        # limit, a drained bucket its rate. Before a whole span of sending, a count over less.
        end_s = min(sent_at_s, now_s - self._horizon_s)
        history_s = end_s - self._first_sent_ever_s
        span_s = min(settings.measure_s, max(history_s, _BIN_S))
        by_window = self._bins.count(end_s - span_s, end_s) / span_s
        passed_so_far = self._passed_so_far_per_s(now_s)
        burst = False
        if self.phase is Phase.PROBE and self.known_limit_per_s is not None:
            # The cruise below was clean and the probe above it was not: the limit is where
            # it was (what passed meanwhile counts the probe's excess, not the limit)...
            estimate = self.known_limit_per_s
            if (
                self._gain > settings.probe_gain
                and by_window > estimate * (1 + 3 * settings.probe_gain)
                and not self._queueing()
            ):
                # ...unless a later step, far above the clean one, was refused with a count
                # far above it too: a full sliding window holds its limit, and a step that
                # overshot a limit that rose a long way need not be bisected back up to it. (A
                # bucket's burst swells a count a little, and a queue's by what waits in it,
                # answered late; a limit that refuses requests closer than its interval passes
                # less than the clean step.)
                estimate = min(by_window, paced_per_s)
        elif burst := self._burst_in_count(by_share, by_window):
            estimate = by_share
        elif history_s < settings.measure_s:
            # All rough; the next throttles correct it.
            estimate = max(by_share, by_window, passed_so_far)
        elif (
            end_s - settings.measure_s >= self._above_until_s
            and answers >= settings.drop_samples
            and by_share < settings.drop_share * by_window
        ):
            # The limit fell: the last second is not the limit any more. (While that second
            # still counts a start's or a probe's excess, it is: a window the excess filled
            # refuses nearly all until it turns, and a pause for it keeps the share low.)
            estimate = by_share
        elif self._fell_behind(end_s):
            return None
        else:
            estimate = by_window or by_share
        pause_until_s = None
        ceiling = settings.ceiling_rate_per_s
        share = self._refused_share(sent_at_s)
        if self.phase is Phase.CRUISE and not blind and share <= settings.max_background:
            if self._cut is None or not self._cut[2]:
                self._cut = (share, self.known_limit_per_s or estimate, False, sent_at_s)
        else:
            self._cut = None
        if estimate > 0:
            held = self._held_per_s
            if self.phase is Phase.CRUISE and held is not None and estimate < held:
                self._remember(held)
            # A limit above the ceiling cannot be measured: "at least the ceiling".
            self.known_limit_per_s = estimate = min(estimate, ceiling)
            self.rate_per_s = max(self._floor_per_s, self._cruise(estimate))
        else:
            self.rate_per_s = max(self._floor_per_s, self.rate_per_s / 2)
        if blind:
            # Nothing passes: wait for the window to turn, longer each time it does not.
            self._backoff_s = min(
                settings.max_backoff_s,
                max(settings.first_backoff_s, latency_s, 2 * self._backoff_s),
            )
            self._paused_until_s = pause_until_s = now_s + self._backoff_s
            # After the pause, one request asks whether the window turned; the pace comes
            # back with the first accepted answer (a full pace would spend a round trip's
            # worth of throttles on each ask).
            self._resume_per_s = self.rate_per_s
            self.rate_per_s = max(self._floor_per_s, min(self.rate_per_s, 1 / self._backoff_s))
        # A later step of a probe, throttled far above the clean step below it: the limit lies
        # between the two. What passed while refused is no measure of it (a limit that refuses
        # any two requests closer than its interval passes half of a pace just above it): the
        # next probe halves the gap, after a cruise of one `measure_s` (a window the excess
        # filled has emptied of it by then).
        bisect = (
            self.phase is Phase.PROBE
            and self._gain > settings.probe_gain
            and paced_per_s > estimate * (1 + 2 * settings.probe_gain)
            and self._cap.passes_with(in_flight)
        )
        self._refused_at_per_s = paced_per_s if bisect else None
        if self._recalling:
            self._end_recall(now_s, back=False)
        if self.phase is Phase.START or burst:
            # The start's estimate is rough (a flood measures badly), and so is a burst's
            # correction (a few answers' share): probe it soon.
            self._cruise_s = settings.min_probe_every_s
        elif bisect:
            self._cruise_s = settings.measure_s
        elif self.phase is Phase.PROBE and self._gain == settings.probe_gain:
            # The first small step found the limit where it was: probe less often.
            self._cruise_s = min(settings.max_probe_every_s, self._cruise_s * 2)
        else:
            self._cruise_s = settings.probe_every_s
        self._after_start = self.phase is Phase.START
        if self.phase is Phase.START:
            self._cruise_since_s = now_s
        self._enter(Phase.CRUISE, now_s)
        self._gain = settings.start_probe_gain if self._after_start else settings.probe_gain
        self._interval_start_s = max(now_s, self._paused_until_s)
        self._accepted = self._refused = 0
        self._first_sent_s, self._last_sent_s = math.inf, -math.inf
        return pause_until_s

    def _fell_behind(self, end_s: float) -> bool:
        """In cruise, did the client send less than its own pace over the last `measure_s`, with
        few of it refused? Then what passed counts the client's own delays (a busy core, a slow
        disk), not the provider's limit, and these throttles are the burst it sent once it could
        (what came due meanwhile, at once): no cut. Not over a span a start, a probe or a pause
        was in (they are what left it behind)."""
        settings = self._settings
        start_s = end_s - settings.measure_s
        if self.phase is not Phase.CRUISE or self.known_limit_per_s is None:
            return False
        if start_s < self._above_until_s or start_s < self._paused_until_s:
            return False
        passed = self._bins.count(start_s, end_s)
        sent = passed + self._refused_bins.count(start_s, end_s)
        if sent - passed > settings.max_background * sent:
            return False
        short = self.rate_per_s * settings.measure_s - sent
        if short <= settings.behind_share * self.rate_per_s * settings.measure_s:
            return False
        # Held up, not slow: a stretch with nothing sent makes up much of what is missing. (A
        # client that keeps up with less than its pace all along sends what the provider sees
        # as its pace: a bucket refusing part of it has shown its rate.)
        return self.rate_per_s * self._longest_gap_s(start_s, end_s) >= short / 2

    def _longest_gap_s(self, start_s: float, end_s: float) -> float:
        """The longest stretch of [start_s, end_s] (to the bin) in which nothing was sent."""
        longest = run = 0
        for bin_id in range(math.floor(start_s / _BIN_S), math.floor(end_s / _BIN_S) + 1):
            if self._bins.holds(bin_id) or self._refused_bins.holds(bin_id):
                run = 0
            else:
                run += 1
                longest = max(longest, run)
        return longest * _BIN_S

    def _refused_share(self, sent_at_s: float, since_s: float | None = None) -> float:
        """The share of the requests sent since `since_s` (or in the trailing
        `background_span_s`) that were throttled."""
        start_s = sent_at_s - self._settings.background_span_s if since_s is None else since_s
        refused = self._refused_bins.count(start_s, sent_at_s)
        return refused / max(1, refused + self._bins.count(start_s, sent_at_s))

    def _background_noise(self, sent_at_s: float, now_s: float) -> bool:
        """Are these throttles the background, not a limit? A limit refuses nothing under it:
        a cut in cruise stops its throttles. When a cut did not (the next interval refused at
        least half the share that caused it, and a small one), the provider refuses a share
        whatever the pace: the cut is undone and that share is the background, which neither
        cruise nor probes cut for again. Without a background, nothing changes."""
        settings = self._settings
        if self.phase is Phase.CRUISE and self._cut is not None:
            share_before, limit_before, persisted, cut_s = self._cut
            # Counted from the bin after the cut's: its own throttle is not one of them.
            share_after = self._refused_share(sent_at_s, since_s=cut_s + _BIN_S)
            if share_before / 2 <= share_after <= settings.max_background:
                if not persisted:
                    # Once may be a cut too small for a limit: cut again, and see.
                    self._cut = (share_before, limit_before, True, sent_at_s)
                    return False
                self._background = max(self._background, share_after)
                self._cut = None
                self.known_limit_per_s = limit_before
                self.rate_per_s = self._cruise(limit_before)
                self._restart_interval(now_s)
                return True
        if self._background <= 0:
            return False
        return self._refused_share(sent_at_s) <= self._background + settings.background_margin

    def _start_background(self, in_flight: int) -> bool:
        """In the start, are these throttles a small share refused whatever the pace? A limit
        the pace crossed refuses most of what exceeds it, one answer after another; one
        throttle, or a few in a hundred of the last answers (a carrier's transient refusals),
        is no limit: the start goes on. Not with more in flight than any accepted answer had:
        that may be a cap in service."""
        if in_flight > self._most_in_flight_accepted:
            return False
        recent = self._start_refusals
        return sum(recent) - 1 <= self._settings.max_background * len(recent)

    def _restart_interval(self, now_s: float) -> None:
        self._interval_start_s = max(now_s, self._paused_until_s)
        self._accepted = self._refused = 0
        self._first_sent_s, self._last_sent_s = math.inf, -math.inf

    def _burst_in_count(self, by_share: float, by_window: float) -> bool:
        """Right after the start, is the last second's count a bucket's burst? The start's
        flood can drain a bucket's whole burst into it, and the cut pace then meets the
        bucket's rate: refused often, at a steady share of what is sent. A window turning
        after the flood also refuses often, but lets through far less (its count is full)."""
        settings = self._settings
        return (
            self._after_start
            and self._accepted > 0
            and self._refused >= settings.drop_refusals
            and settings.burst_share * by_window <= by_share < settings.drop_share * by_window
        )

    def _steer(self, now_s: float) -> None:
        """Between throttles: cruise, probe on schedule, take what a clean probe showed."""
        settings = self._settings
        limit = self.known_limit_per_s
        elapsed_s = now_s - self._phase_since_s
        if self.phase is Phase.START or limit is None:
            # A slow start, as TCP's: the pace doubles each step while what was sent at it
            # comes back accepted; the first throttles of a start at the ceiling would be a flood.
            clean = self._last_accepted_sent_s >= self._phase_since_s
            if self._held_ceiling(now_s):
                return
            if elapsed_s >= settings.start_step_s and clean:
                growth = settings.start_growth
                self.rate_per_s = min(settings.ceiling_rate_per_s, self.rate_per_s * growth)
                self._phase_since_s = now_s
            return
        if self._window_cap is not None:
            # The window keeps a cap in service; probe it one place more now and then.
            if elapsed_s >= self._cruise_s and self.window == self._window_cap:
                self.window = min(settings.max_window, self._window_cap + self._window_step)
                self._enter(Phase.PROBE, now_s)
            elif self.phase is Phase.PROBE and elapsed_s >= self._cruise_s:
                # A clean window probe: the cap is at least that.
                self._window_cap = self.window
                self._window_step *= 2
                self._enter(Phase.CRUISE, now_s)
            return
        if self.phase is Phase.CRUISE and elapsed_s >= self._cruise_s:
            if self._refused_bins.count(self._phase_since_s, now_s) == 0:
                self._background = 0.0  # the cruise was clean: no background (any more)
            self._held_per_s = limit
            self._enter(Phase.PROBE, now_s)
            self._latency_before_probe_s = self._level_s(_LEVEL_ANSWERS)
            self._spread_before_probe_s = self._spread_s()
            self._probe_answers = 0
            recall = self._recall_per_s
            self._recalling = (
                recall is not None
                and recall > limit * (1 + settings.max_probe_gain)
                and self._refused_at_per_s is None
            )
            if recall is not None and self._recalling:
                self._recalled_s = (now_s, math.inf)
                # Far under where the limit was before it fell: step straight back there. Had
                # the limit come back, small steps growing from here would take seconds to
                # find it; had it not, the step is refused as soon as the room it has left is
                # spent, at the cost of the requests sent in one round trip. Throttles alone
                # end it: a pace that jumps so far slows a busy client's own answers as a
                # queue would.
                self.rate_per_s = min(settings.ceiling_rate_per_s, recall)
            else:
                self.rate_per_s = min(settings.ceiling_rate_per_s, limit * (1 + self._gain))
            # The first step lasts a whole `measure_s`, so that a window-shaped limit shows it
            # (a fixed window's count starts afresh each second); and long enough for
            # `min_samples` answers at least: a few is no measure.
            self._probe_s = max(settings.measure_s, 2 * settings.min_samples / self.rate_per_s)
        elif self.phase is Phase.PROBE and not self._recalling and self._probe_queued():
            # What the probe sent above the limit waits in the provider's queue, accepted: a
            # queue's limit is its service rate, where it was. Back under it before the queue
            # fills, as after a throttled probe; soon again when an earlier step of this probe
            # raised the limit (it may not be all the way up yet).
            rose = self._gain > settings.probe_gain
            self._gain = settings.probe_gain
            self._cruise_s = settings.min_probe_every_s if rose else settings.max_probe_every_s
            self._enter(Phase.CRUISE, now_s)
            self.rate_per_s = self._cruise(limit)
        elif self.phase is Phase.PROBE and elapsed_s >= self._probe_s + self._horizon_s:
            # A clean probe: the limit is at least what passed during it (counted once every
            # answer to it is in), and no more than the probe's pace (the rest is noise).
            # Over the time from its first request on, and no longer than the bins reach: the
            # pace's first slot comes up to a slot of the pace before it later (a second at
            # 1/s), and at a low rate a step lasts longer than the bins hold (16 answers at 2/s
            # is 8 s): counted over its whole length, a probe from 1.9/s to 2.0/s counted 8 of
            # its 16, and the limit was never raised again.
            start_s = self._phase_since_s
            end_s = start_s + self._probe_s
            counted_s = max(start_s, min(self._probe_first_s, end_s), end_s - _BINS_SPAN_S)
            passed = self._bins.count(counted_s, end_s) / self._answered_share(
                counted_s, end_s, now_s, self._latest
            )
            span_s = end_s - counted_s
            passed_per_s = min(self.rate_per_s, passed / span_s) if span_s > 0 else 0.0
            if self._recalling:
                self._end_recall(now_s, back=True)
            if passed_per_s > limit * (1 + self._gain / 2):
                # More passed than the estimate: probe on at once, twice the step.
                self.known_limit_per_s = self._held_per_s = limit = passed_per_s
                self._gain = min(settings.max_probe_gain, self._gain * settings.probe_gain_growth)
                refused_at = self._refused_at_per_s
                if refused_at is not None:
                    # No further than halfway to the pace the last probe was refused at; a
                    # gap smaller than the first step is found: cruise.
                    room = refused_at / limit - 1
                    if room < settings.probe_gain:
                        self._refused_at_per_s = None
                        self._enter(Phase.CRUISE, now_s)
                        self.rate_per_s = self._cruise(limit)
                        return
                    self._gain = min(self._gain, room / 2)
                self._enter(Phase.PROBE, now_s)
                self.rate_per_s = min(settings.ceiling_rate_per_s, limit * (1 + self._gain))
                # Each later step is far above the last: `min_samples` answers show it passed
                # (twice as many made a low limit that rose take a second a step to find).
                self._probe_s = max(settings.probe_s, settings.min_samples / self.rate_per_s)
                return
            self.known_limit_per_s = self._held_per_s = limit = max(limit, passed_per_s)
            self._refused_at_per_s = None  # the next probe goes as far as it passes
            self._enter(Phase.CRUISE, now_s)
            self.rate_per_s = self._cruise(limit)

    def _remember(self, limit_per_s: float) -> None:
        """The limit fell from `limit_per_s` (each cut of a fall from the highest of them)."""
        if self._recall_per_s is None or limit_per_s >= self._recall_per_s:
            self._recall_per_s = limit_per_s
            self._recall_probes = self._settings.recall_probes

    def _end_recall(self, now_s: float, back: bool) -> None:
        """A probe back to where the limit was ends: `back` when it passed clean."""
        self._recalling = False
        if back:
            self._recalled_s = (self._recalled_s[0], now_s)
            self._recall_per_s = None
            return
        # Not back where it was yet: a few more tries, then it is the limit it fell to.
        self._recalled_s = (self._recalled_s[0], now_s + self._settings.measure_s)
        self._recall_probes -= 1
        if self._recall_probes <= 0:
            self._recall_per_s = None

    def _queueing(self) -> bool:
        """Are answers slower than the fastest lately, more than jitter would make them? What
        a queue accepted waits in it: it is counted, and it is more than the queue's rate."""
        latency_s = self._level_s(_LEVEL_ANSWERS)
        if latency_s is None:
            return False
        baseline = min(self._baseline_now_s, self._baseline_previous_s)
        settings = self._settings
        rise_s = settings.probe_queued_share * baseline + settings.probe_queued_margin_s
        return latency_s - baseline > rise_s

    def _probe_queued(self) -> bool:
        """Have answers slowed since the probe began, more than jitter would? A provider that
        queues what exceeds its rate accepts a probe's excess and answers it later."""
        if self._latencies < self._settings.baseline_samples:
            return False  # too few answers to tell a queue from answers slow at random
        if self._probe_answers < _PROBE_LEVEL_ANSWERS:
            return False
        before_s = self._latency_before_probe_s
        latency_s = self._level_s(min(self._probe_answers, _LEVEL_ANSWERS))
        if before_s is None or latency_s is None:
            return False
        baseline = min(self._baseline_now_s, self._baseline_previous_s)
        settings = self._settings
        rise_s = settings.probe_queued_share * baseline + settings.probe_queued_margin_s
        # Not less than three standard errors of the two medians' difference (a median's is
        # about 0.93 interquartile ranges over the root of its answers): answers slow at
        # random, 50-500 ms, move the median of 8 by 100 ms and more with no queue at all.
        answers = min(self._probe_answers, _LEVEL_ANSWERS)
        noise_s = 2.8 * self._spread_before_probe_s * math.sqrt(1 / answers + 1 / _LEVEL_ANSWERS)
        return latency_s - before_s > max(rise_s, noise_s)

    def _answered_share(
        self, start_s: float, end_s: float, now_s: float, recent: collections.deque[float]
    ) -> float:
        """The share of requests sent evenly over [start_s, end_s] answered by now, were their
        latencies those of the `recent` answers of their kind: a count of what passed, divided
        by it, is not short by the stragglers of a long tail (a tenth of them in 2 s)."""
        span_s = end_s - start_s
        if not recent or span_s <= 0:
            return 1.0
        total = 0.0
        for latency_s in recent:
            # The share of [start_s, end_s] sent early enough for this latency to be in.
            share = (now_s - latency_s - start_s) / span_s
            total += 1.0 if share >= 1.0 else share if share > 0.0 else 0.0
        return max(total / len(recent), 0.5)

    def _biased(self, level_s: float, now_s: float) -> bool:
        """Is the latest answers' level no fair sample of the latencies? While the pace grows
        (the start, a blind pause's asks, a probe's large steps) or after a pause, the fast
        answers come first (the slow ones are still out), and a level of them, 100 ms where
        answers take 50-500 ms at random, set as the baseline reads the others as a queue for
        the next 10-20 s. Until the pace has held a round trip, by the slowest of many answers
        (the latest few are the fast ones too). Answers as even as 50 ms each are a fair sample
        at once: a provider that then queues is seen."""
        steady_since_s = max(self._steady_since_s, self._paused_until_s)
        round_trip_s = max(self._horizon_s, max(self._latest))
        return now_s - steady_since_s < round_trip_s and self._spread_s() > 0.2 * level_s

    def _spread_s(self) -> float:
        """The interquartile range of the latest answers' latencies."""
        latest = sorted(self._recent)
        if len(latest) < 4:
            return 0.0
        return latest[(3 * len(latest)) // 4] - latest[len(latest) // 4]

    def _level_s(self, answers: int) -> float | None:
        """The median latency of the latest `answers` answers (None before any)."""
        recent = self._recent
        if not recent:
            return None
        latest = sorted(list(recent)[-answers:])
        return latest[(len(latest) - 1) // 2]  # the lower of two middles

    def _held_ceiling(self, now_s: float) -> bool:
        """A start that held the ceiling for `background_span_s` with throttles (each a small
        share, or it would have been cut) found no limit under it: the limit is the ceiling and
        the share refused is the background. Cruise from here."""
        settings = self._settings
        ceiling = settings.ceiling_rate_per_s
        if self.rate_per_s < ceiling:
            self._ceiling_since_s = math.inf
            return False
        self._ceiling_since_s = min(self._ceiling_since_s, now_s)
        if now_s - self._ceiling_since_s < settings.background_span_s:
            return False
        end_s = now_s - self._horizon_s
        if self._last_refused_sent_s < self._ceiling_since_s:
            return False  # nothing refused: no limit, and no background either (no bins read:
            # this is every answer of a run the provider never refuses)
        if self._refused_bins.count(self._ceiling_since_s, end_s) == 0:
            return False
        self._background = self._refused_share(end_s, since_s=self._ceiling_since_s)
        self.known_limit_per_s = ceiling
        self._cruise_since_s = now_s
        self._enter(Phase.CRUISE, now_s)
        self._cruise_s = settings.probe_every_s
        self.rate_per_s = self._cruise(ceiling)
        self._restart_interval(now_s)
        return True

    def _enter(self, phase: Phase, now_s: float) -> None:
        if self.phase is not Phase.CRUISE:
            self._above_until_s = now_s  # the end of a pace above the estimate
        self.phase = phase
        self._phase_since_s = now_s
        self._probe_first_s = math.inf

    # -- the window ----------------------------------------------------------------------------

    def _adjust_window(self, latency_s: float, now_s: float) -> None:
        settings = self._settings
        if now_s - self._baseline_since_s >= settings.baseline_period_s:
            # A windowed minimum: the baseline follows a network that got slower for good.
            self._baseline_previous_s, self._baseline_now_s = self._baseline_now_s, math.inf
            self._baseline_since_s = now_s
        if settings.horizon_slowest:  # only a campaign's leader reads it
            if now_s - self._slowest_since_s >= settings.background_span_s:
                self._slowest_previous_s, self._slowest_now_s = self._slowest_now_s, 0.0
                self._slowest_since_s = now_s
            if latency_s > self._slowest_now_s:
                self._slowest_now_s = latency_s
        smoothed = self._smoothed_s
        smoothed = latency_s if smoothed is None else smoothed + (latency_s - smoothed) * 0.1
        self._smoothed_s = smoothed
        self._recent.append(latency_s)
        self._latest.append(latency_s)
        self._probe_answers += 1
        self._latencies += 1
        if self._latencies < settings.baseline_samples and latency_s < self._baseline_now_s:
            self._baseline_now_s = latency_s  # until the level is known: the fastest answer
        baseline = self._baseline_now_s
        if self._baseline_previous_s < baseline:
            baseline = self._baseline_previous_s
        since_s = now_s - self._last_window_change_s
        if since_s < smoothed or since_s < baseline:
            return  # at most one change per round trip
        # Once a round trip (the median costs a sort): the level, and the lowest level lately.
        level = self._level_s(_LEVEL_ANSWERS)
        assert level is not None
        if self._latencies >= settings.baseline_samples and self._baseline_from_answers:
            # From now on the lowest level: one fast answer among slow ones is no baseline (see
            # `baseline_samples`).
            if self._biased(level, now_s):
                return
            self._baseline_now_s, self._baseline_previous_s = level, math.inf
            self._baseline_from_answers = False
        elif (
            self._latencies > settings.baseline_samples
            and level < self._baseline_now_s
            and not self._biased(level, now_s)
        ):
            self._baseline_now_s = level
        baseline = min(self._baseline_now_s, self._baseline_previous_s)
        queueing = level > max(
            baseline * settings.queueing_factor, baseline + settings.queueing_margin_s
        )
        if queueing:
            self.window = max(1, int(self.window * settings.window_cut))
        elif self.window < (self._window_cap or settings.max_window):
            self.window += 1
        else:
            return
        self._last_window_change_s = now_s
