"""Each sender of a pool at its own rate, beside the run's global rate and flow control.

    work (claims) ─▶ look-ahead: a queue a sender ─▶ the claim whose sender is due first ─▶ engine
        (window place, global limiter) ─▶ send: the sender's schedule moves on ─▶ provider

A message waits for its sender in the look-ahead, before the engine: it holds no window place
and no global rate slot, so a busy sender never stops the messages of the others (no
head-of-line blocking). The look-ahead is bounded (`lookahead` messages): memory stays flat, and
when one sender has most of the recipients it fills with theirs and the run goes at that
sender's pace, as it must.

A sender's schedule moves on when its message leaves (the send), not when it is handed to the
engine: the engine may hold a message for its global slot, and a sender's next message must not
catch up with it. So a sender has at most one message between the look-ahead and the provider,
and two of its requests are never closer than its interval. That message is handed out a little
before its sender's turn (HAND_OUT_LEAD_S, at most an interval) and waits at the send for the
rest: the way to the send (the global slot, the window, the journal's mark) takes a few
milliseconds, which would otherwise add to every interval (a sender of 100/s went at 76/s). A
retry (which the engine sends again without a claim) waits for its sender's turn at the send,
in its window place; while it waits, its sender's next messages stay in the look-ahead, so it
goes at the next turn but one at most (racing each new message for every turn, a retry of a
sender the provider holds below its rate waited tens of seconds). The exchange says when the
request left (`Exchange.left_s`): the engine's clock, read before that wait, would date it too
early for flow control and for the count of a provider that throttles every request.

A throttle is the sender's own or the account's (`ThrottleJudge`). The sender's when that sender
was sending at its pace (its request left at its turn: its own limit may be what refused it) and
few other senders were refused meanwhile: it slows that sender, and flow control does not see
it: one over-declared sender must not slow the campaign. The account's when the sender was not
sending at its pace (held by the global rate, or idle: its own limit cannot explain it), or when
half the senders sending in the last second were refused in it (a limit they share): flow
control sees it and finds the account's limit as without a pool; the sender keeps its pace.

Each sender's pace is found as TCP finds its window (AIMD, `SenderSchedules.answered`): its own
throttle cuts it to 70 % (once for a pace: a request that left before the cut was answered by
it), accepted answers bring it back to 95 % of the pace refused in a few answers, where it stays
for 40, then climb past it by 1 % of it an answer. So a sender the provider holds below its
declared rate settles just under what it is allowed, whatever the limiter's shape, and is
refused now and then as it looks for more (a throttle a few dozen requests), not every few
requests (each accepted answer gave back 5 % of the declared rate: a third were refused).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import heapq
import math
import time
from collections.abc import Awaitable, Callable, Mapping

from sms_blaster.engine import Claim, Engine, RunControl, SendFn, Work
from sms_blaster.models import Message, Outcome, Record
from sms_blaster.pool import PoolSender, SenderPool
from sms_blaster.providers.base import Exchange, Provider
from sms_blaster.transport.base import cancelled_unwritten

# A waiting claimer looks again at least this often (a stop, a schedule pushed out).
_MAX_WAIT_S = 0.25
# Each sender's pace is found as TCP finds a window (AIMD): cut by a share when its own limit
# refuses it, raised by steps while the provider accepts it.
_THROTTLED_PACE = 0.7  # a throttled sender's pace, times its pace before
_MIN_PACE = 0.05  # ...never below this share of its configured rate
# Where the provider accepts again, each accepted answer raises the pace by this share of the
# pace that was refused, up to `_CRUISE` of it: back near the limit in a few answers...
_RECOVERY = 0.1
_CRUISE = 0.95
# ...where it stays for this many accepted answers (a limit the pace met refuses it again at
# once above), then climbs by this share of that pace an accepted answer: past it, slowly, to
# find a limit that rose or a throttle that was chance.
_CRUISE_ANSWERS = 40
_PROBE = 0.01
# A sender's requests leave 1 % further apart than its rate: one that reaches the provider a
# little sooner after the one before it than it left must still pass a strict limiter.
SENDER_SPACING = 1.01
# A sender's next message goes to the engine this long before its turn (at most an interval), and
# waits at the send for what is left of it, in its window place.
HAND_OUT_LEAD_S = 0.05
# A message handed to the engine that never reaches the send (a worker's row taken over by
# another, a stop) frees its sender after this long; the send keeps the spacing regardless.
_PIPELINE_S = 30.0
# A request that left within this share of an interval after its sender's turn: the sender was
# sending at its pace, so its own limit may be what refused it.
_AT_PACE_SLACK = 0.5
# Throttles are the account's when, in the last span, they refused at least this share of the
# senders that sent (and at least three): a limit they share, not each one's own.
_SHARED_SPAN_S = 1.0
_SHARED_SHARE = 0.5
_SHARED_MIN_SENDERS = 3


class ThrottleJudge:
    """Whose limit a pool's throttled answer met: its sender's own, or the account's (which the
    run's flow control is for). Pure, told the time."""

    __slots__ = ("_sent_s", "_throttled_s")

    def __init__(self) -> None:
        # Each sender's last send and last throttle, oldest first: pruned to the last span.
        self._sent_s: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._throttled_s: collections.OrderedDict[str, float] = collections.OrderedDict()

    def sent(self, sender: str, now_s: float) -> None:
        _stamp(self._sent_s, sender, now_s)

    def accounts(self, sender: str, *, at_pace: bool, slowed: bool, now_s: float) -> bool:
        """A throttle of `sender`: True when it is the account's, False when the sender's own.
        `slowed`: the sender goes under its configured rate already (an earlier throttle)."""
        _stamp(self._throttled_s, sender, now_s)
        if not at_pace:
            return True
        if not slowed:
            return False  # its own limit is tried first: slowing one sender costs little
        sending = max(len(self._sent_s), 1)
        shared = max(_SHARED_MIN_SENDERS, math.ceil(_SHARED_SHARE * sending))
        return len(self._throttled_s) >= shared


def _stamp(stamps: collections.OrderedDict[str, float], sender: str, now_s: float) -> None:
    """Note `sender` at `now_s`; forget those last noted before the span."""
    stamps[sender] = now_s
    stamps.move_to_end(sender)
    while next(iter(stamps.values())) < now_s - _SHARED_SPAN_S:
        stamps.popitem(last=False)


class SenderSchedules:
    """When each sender of a pool may send next: pure, told the time."""

    __slots__ = ("_clean", "_cut_s", "_members", "_next_s", "_pace", "_refused")

    def __init__(self, pool: SenderPool) -> None:
        self._members: Mapping[str, PoolSender] = pool.by_sender
        self._next_s: dict[str, float] = dict.fromkeys(self._members, float("-inf"))
        self._pace: dict[str, float] = dict.fromkeys(self._members, 1.0)
        # The pace its own limit last refused, when the pace was cut for it, and the accepted
        # answers since the pace came back near it (the senders never throttled have none).
        self._refused: dict[str, float] = {}
        self._cut_s: dict[str, float] = {}
        self._clean: dict[str, int] = {}

    def __contains__(self, sender: object) -> bool:
        return sender in self._members

    def due_s(self, sender: str) -> float:
        """When the sender's next request may leave."""
        return self._next_s[sender]

    def hand_out_s(self, sender: str) -> float:
        """When the sender's next message is handed to the engine: a little before it is due
        (HAND_OUT_LEAD_S, at most one interval), so the way to the send (a global slot, the
        journal's mark) is behind it by then and the sender keeps its rate."""
        interval_s = 1.0 / (self._members[sender].rate_per_s * self._pace[sender])
        return self._next_s[sender] - min(HAND_OUT_LEAD_S, interval_s)

    def pace(self, sender: str) -> float:
        """The share of its configured rate the sender goes at now (1.0 until throttled)."""
        return self._pace[sender]

    def left(self, message: Message, now_s: float) -> bool:
        """A message of this sender left at `now_s`: its next one waits its cost at its rate.
        True when it left at its turn, or was its first (the sender sending at its pace)."""
        assert message.sender is not None
        member = self._members[message.sender]
        pace = member.rate_per_s * self._pace[member.sender]
        interval_s = SENDER_SPACING * member.cost(message.segments) / pace
        due_s = self._next_s[member.sender]
        self._next_s[member.sender] = max(due_s, now_s) + interval_s
        return due_s == -math.inf or now_s - due_s <= _AT_PACE_SLACK * interval_s

    def answered(
        self, sender: str, outcome: Outcome, wait_s: float | None, now_s: float, *, left_s: float
    ) -> None:
        """The provider answered a message of `sender` that left at `left_s`, about its own
        limit: a throttle cuts its pace and holds it for the provider's hint, an accepted answer
        raises the pace again (AIMD). Only answers to requests that left after the last cut tell
        of the pace as it is: a throttle of one sent before it was answered by that cut already
        (two cuts for one pace would halve it), an accepted one says nothing of the new pace."""
        cut_s = self._cut_s.get(sender, -math.inf)
        if outcome is Outcome.THROTTLED:
            pace = self._pace[sender]
            if left_s >= cut_s:
                self._refused[sender] = pace
                pace = self._pace[sender] = max(_MIN_PACE, pace * _THROTTLED_PACE)
                self._cut_s[sender] = now_s
                self._clean[sender] = 0
            pause_s = (
                wait_s if wait_s is not None else 1.0 / (self._members[sender].rate_per_s * pace)
            )
            self._next_s[sender] = max(self._next_s[sender], now_s + pause_s)
        elif outcome is Outcome.SENT and self._pace[sender] < 1.0 and left_s >= cut_s:
            self._pace[sender] = _raised(
                self._pace[sender], self._refused[sender], self._clean, sender
            )


def _raised(pace: float, refused: float, clean: dict[str, int], sender: str) -> float:
    """The pace after an accepted answer, `refused` the pace last refused: quickly back to
    `_CRUISE` of it, held there `_CRUISE_ANSWERS` answers, then slowly above (see `_PROBE`)."""
    cruise = _CRUISE * refused
    if pace < cruise:
        return min(cruise, pace + _RECOVERY * refused)
    clean[sender] += 1
    if clean[sender] <= _CRUISE_ANSWERS:
        return pace
    return min(1.0, pace + _PROBE * refused)


class PoolScheduler:
    """The look-ahead between a run's work and its engine, and the send that keeps each sender's
    schedule: `work` is what the engine claims from, `send` what it sends with.

    `recorded(line)`: the sender an earlier run chose for a row it did not settle (the journal);
    a resend goes from it while it is in the pool."""

    __slots__ = (
        "_clock",
        "_control",
        "_ended",
        "_failure",
        "_held",
        "_in_pipeline",
        "_lookahead",
        "_offered",
        "_pulling",
        "_queues",
        "_ready",
        "_recorded",
        "_retrying",
        "_send",
        "_sleep",
        "_source",
        "_timer_s",
        "_waiters",
        "judge",
        "schedules",
    )

    def __init__(
        self,
        pool: SenderPool,
        send: SendFn,
        control: RunControl,
        *,
        lookahead: int,
        recorded: Callable[[int], str | None] = lambda line: None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.schedules = SenderSchedules(pool)
        self.judge = ThrottleJudge()
        self._send = send
        self._control = control
        self._lookahead = lookahead
        self._recorded = recorded
        self._clock = clock
        self._sleep = sleep
        self._source: Work | None = None
        self._queues: dict[str, collections.deque[Claim]] = {}
        # (hand-out time, sender) of the senders with a message held and none in the pipeline.
        self._ready: list[tuple[float, str]] = []
        self._offered: set[str] = set()  # the senders in `_ready`, each there once
        # The message of each sender handed to the engine, not yet sent: when, and its line (a
        # send of another message of the sender is a retry's).
        self._in_pipeline: dict[str, tuple[float, int]] = {}
        # Retries waiting at the send for their sender's turn, by sender: the sender's next
        # messages stay in the look-ahead until they have left, so a retry waits one turn at
        # most (the message already handed out) rather than race each new one for every turn.
        self._retrying: dict[str, int] = {}
        self._held = 0
        self._pulling = False
        self._ended = False
        self._failure: BaseException | None = None
        # Claimers waiting for a change, first come first woken: one change (a sender ready, the
        # pull free) wakes one of them, not all (hundreds, at every send).
        self._waiters: dict[asyncio.Future[None], None] = {}
        # When the claimer keeping time wakes: one waits for the first sender's turn, the others
        # for a change (a timer each would wake them all at every turn).
        self._timer_s = math.inf

    # --- the engine's side ------------------------------------------------------------------

    def over(self, source: Work) -> PoolScheduler:
        """Take the claims of `source`; returns self, the engine's work."""
        self._source = source
        return self

    async def run(self, engine: Engine) -> None:
        """Run `engine` over this work; messages still held when it is cancelled get their
        record (stopped: never sent)."""
        try:
            await engine.run(self)
        except BaseException:
            for queue in self._queues.values():
                while queue:
                    message = queue.popleft().message
                    engine.emit(Record.failed(message, 0, self._control.stopped_error()))
            self._held = 0
            raise

    def claimers(self, window: int) -> int:
        assert self._source is not None
        return self._source.claimers(window)

    async def claim(self) -> Claim | Record | None:
        """The held message whose sender is due first, once it is due; or what the source hands
        out that is not to be sent; None once the source has no more and nothing is held."""
        assert self._source is not None
        while True:
            if self._failure is not None:
                raise self._failure
            claim = self._take()
            if claim is not None:
                if self._ready:
                    self._wake()  # the next turn wants a claimer keeping its time
                return claim
            if self._ended and not self._held:
                return None
            if not self._pulling and not self._ended and self._held < self._lookahead:
                item = await self._pull(self._source)
                if item is not None:
                    return item
                continue
            await self._wait()

    def screened(
        self, screen: Callable[[Message], Record | None] | None
    ) -> Callable[[Message], Record | None] | None:
        """`screen` (the engine's check just before a message's first request: quiet hours, the
        opt-out list), telling the pool when it records a message instead of sending it: that
        message never reaches `send`, and its sender would wait for it `_PIPELINE_S`."""
        if screen is None:
            return None

        def check(message: Message) -> Record | None:
            record = screen(message)
            if record is not None:
                self._never_sent(message)
            return record

        return check

    def _never_sent(self, message: Message) -> None:
        """A message handed out ends without a request: its sender's next one may go now."""
        sender = message.sender
        handed = None if sender is None else self._in_pipeline.get(sender)
        if sender is not None and handed is not None and handed[1] == message.line:
            del self._in_pipeline[sender]
            self._offer(sender)

    async def send(self, message: Message) -> Exchange:
        """Send `message` from its sender once its turn came; the sender's schedule moves on.
        The exchange says when the request left (`left_s`): the engine's clock, read before this
        wait, would date it up to a retry's whole wait too early."""
        sender = message.sender
        if sender is None or sender not in self.schedules:
            return await self._send(message)
        handed = self._in_pipeline.get(sender)
        fresh = handed is not None and handed[1] == message.line
        if not fresh:
            self._retrying[sender] = self._retrying.get(sender, 0) + 1
        try:
            # Handed out a little early, or a retry: wait for the turn. Looked at again after
            # each sleep: another message of the sender (a retry's, beside the next one) may have
            # taken the turn meanwhile, and the turn is taken below with no wait in between.
            while (delay_s := self.schedules.due_s(sender) - self._clock()) > 0:
                await self._sleep(delay_s)
        except asyncio.CancelledError:  # cancelled waiting for its turn: nothing was written
            cancelled_unwritten()
            raise
        finally:
            if not fresh:
                self._retrying[sender] -= 1
                if not self._retrying[sender]:
                    del self._retrying[sender]
        turn_s = self._clock()
        at_pace = self.schedules.left(message, turn_s)
        self.judge.sent(sender, turn_s)
        if fresh:
            self._in_pipeline.pop(sender, None)
        self._offer(sender)
        exchange = await self._send(message)
        # The send's own wait (a worker's sender limit in Redis) may have held it longer.
        left_s = turn_s if exchange.left_s is None else exchange.left_s
        exchange = dataclasses.replace(exchange, left_s=left_s)
        result = exchange.result
        now_s = self._clock()
        if result.outcome is Outcome.THROTTLED:
            if self.judge.accounts(
                sender, at_pace=at_pace, slowed=self.schedules.pace(sender) < 1.0, now_s=now_s
            ):
                return exchange  # flow control's: the sender keeps its pace
            exchange = dataclasses.replace(exchange, senders_own=True)
        self.schedules.answered(sender, result.outcome, result.wait_s, now_s, left_s=left_s)
        return exchange

    # --- the look-ahead ---------------------------------------------------------------------

    async def _pull(self, source: Work) -> Record | None:
        """Claim one more from the source into the look-ahead; a record comes back to be
        emitted. One claimer pulls at a time; the others wait for what it brings."""
        self._pulling = True
        try:
            item = await source.claim()
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                self._failure = exc  # every claimer raises it: the run stops
            raise
        finally:
            self._pulling = False
            self._wake(everyone=self._failure is not None)
        if item is None:
            self._ended = True
            self._wake(everyone=True)  # each ends once nothing is held
            return None
        if isinstance(item, Record):
            return item
        self._hold(item)
        return None

    def _hold(self, claim: Claim) -> None:
        message = claim.message
        recorded = self._recorded(message.line)
        if recorded is not None and recorded != message.sender and recorded in self.schedules:
            message = dataclasses.replace(message, sender=recorded)
            claim = Claim(message, claim.prepaid_cost, claim.due)
        # A message of no sender in the pool ("") goes as soon as a claimer takes it.
        sender = message.sender or ""
        if sender not in self.schedules:
            sender = ""
        queue = self._queues.get(sender)
        if queue is None:
            queue = self._queues[sender] = collections.deque()
        queue.append(claim)
        self._held += 1
        if len(queue) == 1:
            self._offer(sender)

    def _offer(self, sender: str) -> None:
        """Put `sender` among the ready ones when it has a message waiting, none in the
        pipeline and no retry waiting for its turn."""
        if (
            sender in self._in_pipeline
            or sender in self._offered
            or sender in self._retrying
            or not self._queues.get(sender)
        ):
            return
        due_s = self.schedules.hand_out_s(sender) if sender else float("-inf")
        heapq.heappush(self._ready, (due_s, sender))
        self._offered.add(sender)
        self._wake()

    def _take(self) -> Claim | None:
        """The message of the sender due first, if it is due now (any held one once the run
        stops: the engine records it stopped)."""
        ready = self._ready
        now_s = self._clock()
        stopping = self._control.stopping
        while ready:
            due_s, sender = ready[0]
            current_s = self.schedules.hand_out_s(sender) if sender else float("-inf")
            if current_s > due_s:  # pushed out by a throttle: in line again at its new time
                heapq.heapreplace(ready, (current_s, sender))
                continue
            if due_s > now_s and not stopping:
                return None
            heapq.heappop(ready)
            self._offered.discard(sender)
            if sender in self._retrying and not stopping:
                continue  # offered again once its retries left
            if self._queues[sender]:  # else emptied by a stop's hand-out meanwhile
                return self._hand_out(sender)
        if stopping:
            held = next((name for name, queue in self._queues.items() if queue), None)
            if held is not None:
                return self._hand_out(held)
        return None

    def _hand_out(self, sender: str) -> Claim:
        queue = self._queues[sender]
        claim = queue.popleft()
        self._held -= 1
        if sender:
            self._in_pipeline[sender] = (self._clock(), claim.message.line)
        else:
            self._offer(sender)
        return claim

    async def _wait(self) -> None:
        """Wait until something changes or the first held sender is due."""
        now_s = self._clock()
        for sender, (handed_s, _) in list(self._in_pipeline.items()):
            if now_s - handed_s > _PIPELINE_S:
                del self._in_pipeline[sender]
                self._offer(sender)
        timeout_s = _MAX_WAIT_S
        due_s = self._ready[0][0] if self._ready else math.inf
        keeping_time = due_s < self._timer_s
        if keeping_time:
            self._timer_s = due_s
            timeout_s = min(timeout_s, max(0.0, due_s - now_s))
        waiter = asyncio.get_running_loop().create_future()
        self._waiters[waiter] = None
        try:
            async with asyncio.timeout(timeout_s):
                await waiter
        except TimeoutError:
            pass
        finally:
            self._waiters.pop(waiter, None)
            if keeping_time and self._timer_s == due_s:
                self._timer_s = math.inf

    def _wake(self, *, everyone: bool = False) -> None:
        """Wake the first waiting claimer (`everyone`: all of them)."""
        while self._waiters:
            waiter = next(iter(self._waiters))
            del self._waiters[waiter]
            if not waiter.done():
                waiter.set_result(None)
                if not everyone:
                    return


def send_by_sender(
    providers: Mapping[str, Provider], send: Callable[[Provider, Message], Awaitable[Exchange]]
) -> SendFn:
    """A send that goes through the provider client of the message's sender."""

    async def send_from_sender(message: Message) -> Exchange:
        assert message.sender is not None  # a pool chose one for every message it lets by
        return await send(providers[message.sender], message)

    return send_from_sender
