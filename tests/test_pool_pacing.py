"""Each sender of a pool at its own rate: the look-ahead that lets the others by, and the send
that keeps a sender's requests apart."""

from __future__ import annotations

import asyncio

import pytest

from sms_blaster.engine import Claim, RunControl, StopReason
from sms_blaster.models import Encoding, Message, Outcome, Record, SendResult
from sms_blaster.optouts.screen import OPTED_OUT
from sms_blaster.pool import parse_pool
from sms_blaster.pool_pacing import PoolScheduler, SenderSchedules, ThrottleJudge
from sms_blaster.providers.base import Exchange
from sms_blaster.simulator import limiters

POOL = parse_pool(["SLOW,1\n", "FAST,1000\n", "PARTS,2seg/s\n"], "pool.csv")


def message(line: int, sender: str, segments: int = 1) -> Message:
    return Message(line, f"4479111{line:05d}", "hi", Encoding.GSM7, segments, f"c-{line}",
                   sender=sender)  # fmt: skip


class ListWork:
    """Hands out the given messages, then None."""

    def __init__(self, messages: list[Message]) -> None:
        self._messages = list(messages)

    def claimers(self, window: int) -> int:
        return window

    async def claim(self) -> Claim | Record | None:
        return Claim(self._messages.pop(0)) if self._messages else None


class Clock:
    def __init__(self) -> None:
        self.now_s = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now_s

    async def sleep(self, delay_s: float) -> None:
        """Wake at now + delay_s, letting other tasks run first (they may sleep too)."""
        self.slept.append(delay_s)
        wake_s = self.now_s + delay_s
        await asyncio.sleep(0)
        self.now_s = max(self.now_s, wake_s)


async def accepted(message: Message) -> Exchange:
    return Exchange(SendResult(Outcome.SENT), 0.01)


def scheduler(clock: Clock) -> PoolScheduler:
    return PoolScheduler(
        POOL, accepted, RunControl(), lookahead=100, clock=clock, sleep=clock.sleep
    )


async def test_a_busy_sender_does_not_hold_up_the_messages_of_another() -> None:
    """The slow sender's second message waits in the look-ahead; the fast one's go by, each
    once the one before it left."""
    clock = Clock()
    pool = scheduler(clock)
    messages = [message(1, "SLOW"), message(2, "SLOW"), message(3, "FAST"), message(4, "FAST")]
    work = pool.over(ListWork(messages))
    lines = []
    for _ in range(3):
        claim = await work.claim()
        assert isinstance(claim, Claim)
        lines.append(claim.message.line)
        await pool.send(claim.message)
        clock.now_s += 0.01
    assert lines == [1, 3, 4]


async def test_a_senders_next_message_waits_for_its_interval_after_the_last_left() -> None:
    """Two requests of a 1/s sender are a second apart at least (and 1 % more, for the
    provider's clock), counted from the send."""
    clock = Clock()
    pool = scheduler(clock)
    await pool.send(message(1, "SLOW"))
    clock.now_s = 0.25
    await pool.send(message(2, "SLOW"))
    assert clock.slept == [pytest.approx(0.76)]


async def test_a_sender_counting_parts_waits_for_each_part() -> None:
    """At 2 parts a second, a message of 3 parts holds the sender 1.5 s (and 1 %)."""
    schedules = SenderSchedules(POOL)
    schedules.left(message(1, "PARTS", segments=3), 10.0)
    assert schedules.due_s("PARTS") == pytest.approx(11.515)


async def test_a_throttle_slows_only_its_sender() -> None:
    """Its pace drops and its next send waits the provider's hint; the others keep theirs."""
    schedules = SenderSchedules(POOL)
    schedules.answered("SLOW", Outcome.THROTTLED, 2.0, 5.0, left_s=4.9)
    assert (schedules.pace("SLOW"), schedules.due_s("SLOW")) == (0.7, 7.0)
    assert schedules.pace("FAST") == 1.0


def test_a_throttled_sender_comes_back_just_under_the_pace_refused_stays_then_climbs() -> None:
    """A few accepted answers bring it to 95 % of the pace its limit refused; it stays there a
    while (higher was refused), then climbs slowly: a throttle by chance is soon forgotten."""
    schedules = SenderSchedules(POOL)
    schedules.answered("SLOW", Outcome.THROTTLED, None, 1.0, left_s=0.9)
    paces = []
    for n in range(80):
        schedules.answered("SLOW", Outcome.SENT, None, 2.0 + n, left_s=1.5 + n)
        paces.append(schedules.pace("SLOW"))
    assert paces[2:43] == [pytest.approx(0.95)] * 41
    assert paces[43] > 0.95
    assert paces[-1] == 1.0


def test_a_throttle_of_a_request_that_left_before_the_last_cut_does_not_cut_again() -> None:
    """It was sent at the pace that cut answered already: two cuts for one pace would halve
    it. An accepted answer sent before the cut says nothing of the new pace either."""
    schedules = SenderSchedules(POOL)
    schedules.answered("SLOW", Outcome.THROTTLED, None, 1.1, left_s=1.0)
    schedules.answered("SLOW", Outcome.THROTTLED, None, 1.2, left_s=1.05)
    schedules.answered("SLOW", Outcome.SENT, None, 1.3, left_s=1.06)
    assert schedules.pace("SLOW") == pytest.approx(0.7)
    schedules.answered("SLOW", Outcome.THROTTLED, None, 2.5, left_s=2.4)
    assert schedules.pace("SLOW") == pytest.approx(0.49)


@pytest.mark.parametrize("shape", ["sliding:1", "fixed:1", "bucket:1", "leaky:1"])
def test_a_sender_the_provider_holds_under_its_rate_converges_to_what_it_is_allowed(
    shape: str,
) -> None:
    """Declared 3/s, let by at 1/s by a limiter of each shape (the simulator's own): one
    request at a time at the sender's turn, on a clock told. Once the pace has found the
    limit, throttles are rare (a third of the requests were, when each accepted answer raised
    the pace by 5 % of the declared rate), and what is accepted is near the limit."""
    schedules = SenderSchedules(parse_pool(["S,3\n"], "pool.csv"))
    limiter = limiters.parse(shape)
    now_s = 100.0
    accepted_s: list[float] = []
    throttles: list[float] = []
    for line in range(1, 601):
        now_s = max(now_s, schedules.due_s("S"))
        schedules.left(message(line, "S"), now_s)
        verdict = limiter.admit(now_s + 0.01)  # it reaches the provider 10 ms later
        outcome = Outcome.SENT if verdict.accepted else Outcome.THROTTLED
        (accepted_s if verdict.accepted else throttles).append(now_s)
        answer_s = now_s + 0.02
        schedules.answered("S", outcome, verdict.wait_s, answer_s, left_s=now_s)
        now_s = answer_s
    late = [at_s for at_s in accepted_s if at_s >= accepted_s[-300]]
    assert len([at_s for at_s in throttles if at_s >= late[0]]) <= 15  # 5 %
    assert (len(late) - 1) / (late[-1] - late[0]) >= 0.9


async def test_once_the_run_stops_every_held_message_is_handed_out_to_be_recorded() -> None:
    """Held messages are the engine's to record stopped, whatever their sender's turn."""
    clock = Clock()
    control = RunControl()
    stopped = PoolScheduler(POOL, accepted, control, lookahead=100, clock=clock, sleep=clock.sleep)
    work = stopped.over(ListWork([message(1, "SLOW"), message(2, "SLOW")]))
    await work.claim()
    control.stop(StopReason.INTERRUPTED)
    second = await work.claim()
    assert isinstance(second, Claim)
    assert second.message.line == 2
    assert await work.claim() is None


class ManualClock:
    """A clock that moves only when told; a sleep ends once the clock passed its time."""

    def __init__(self) -> None:
        self.now_s = 0.0
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def __call__(self) -> float:
        return self.now_s

    async def sleep(self, delay_s: float) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.now_s + delay_s, waiter))
        await waiter

    async def advance(self, to_s: float) -> None:
        """Move to `to_s`, wake the sleeps due, and let the tasks run on."""
        self.now_s = to_s
        for wake_s, waiter in list(self._sleepers):
            if wake_s <= to_s:
                self._sleepers.remove((wake_s, waiter))
                waiter.set_result(None)
        for _ in range(10):
            await asyncio.sleep(0)


async def test_a_retry_waiting_for_its_turn_goes_before_its_senders_next_message() -> None:
    """While a retry of the sender waits at the send, its next message stays in the
    look-ahead (it would race the retry for every turn); it is handed out once the retry left.
    The exchange says when the request left: after its wait, not when it was let go."""
    clock = ManualClock()
    pool = PoolScheduler(POOL, accepted, RunControl(), lookahead=100, clock=clock,
                         sleep=clock.sleep)  # fmt: skip
    work = pool.over(ListWork([message(1, "SLOW"), message(2, "SLOW")]))
    first = await work.claim()
    assert isinstance(first, Claim)
    await pool.send(first.message)  # at 0: the next turn at 1.01
    retry = asyncio.create_task(pool.send(message(7, "SLOW")))  # a row's retry, let go at 0
    claim = asyncio.create_task(work.claim())
    await clock.advance(0.99)  # the next message's hand-out time (its turn less 50 ms) passed
    assert not claim.done()
    await clock.advance(1.02)
    assert retry.done()
    assert retry.result().left_s == pytest.approx(1.02)  # when it left, not 0
    await clock.advance(2.0)
    second = await claim
    assert isinstance(second, Claim)
    assert second.message.line == 2


async def test_two_messages_of_one_sender_waiting_at_the_send_leave_an_interval_apart() -> None:
    """A retry beside the sender's next message: the second to wake waits a turn more."""
    clock = Clock()
    pool = scheduler(clock)
    await pool.send(message(1, "SLOW"))
    sent_at: list[float] = []

    async def one(line: int) -> None:
        await pool.send(message(line, "SLOW"))
        sent_at.append(clock.now_s)

    await asyncio.gather(one(2), one(3))
    assert sent_at[1] - sent_at[0] >= 1.0


def judge_of(sending: int) -> ThrottleJudge:
    judge = ThrottleJudge()
    for n in range(sending):
        judge.sent(f"S{n}", 10.0)
    return judge


def test_a_throttle_of_a_sender_at_its_full_pace_is_its_own() -> None:
    """Its own limit is tried first, however many senders are refused with it."""
    judge = judge_of(4)
    verdicts = [judge.accounts(f"S{n}", at_pace=True, slowed=False, now_s=10.1) for n in range(4)]
    assert verdicts == [False] * 4


def test_a_throttle_of_a_sender_not_at_its_pace_is_the_accounts() -> None:
    """Held by the global rate or idle: its own limit cannot explain the refusal."""
    assert judge_of(4).accounts("S0", at_pace=False, slowed=False, now_s=10.1) is True


def test_a_lone_throttle_of_a_slowed_sender_is_still_its_own() -> None:
    """One sender of ten refused again: an over-declared line, not the account."""
    assert judge_of(10).accounts("S0", at_pace=True, slowed=True, now_s=10.1) is False


def test_slowed_senders_refused_together_are_the_accounts_limit() -> None:
    """Half the senders sending refused in one second: a limit they share."""
    judge = judge_of(6)
    verdicts = [judge.accounts(f"S{n}", at_pace=True, slowed=True, now_s=10.5) for n in range(3)]
    assert verdicts == [False, False, True]


def test_throttles_older_than_the_span_are_forgotten() -> None:
    """Refusals spread over seconds are each sender's own."""
    judge = judge_of(6)
    verdicts = [
        judge.accounts(f"S{n}", at_pace=True, slowed=True, now_s=10.0 + 2 * n) for n in range(3)
    ]
    assert verdicts == [False, False, False]


async def test_a_senders_own_throttle_is_marked_so_flow_control_does_not_see_it() -> None:
    """The exchange says so; the sender is slowed."""

    async def throttled(message: Message) -> Exchange:
        return Exchange(SendResult(Outcome.THROTTLED), 0.01)

    clock = Clock()
    pool = PoolScheduler(POOL, throttled, RunControl(), lookahead=100, clock=clock,
                         sleep=clock.sleep)  # fmt: skip
    exchange = await pool.send(message(1, "SLOW"))
    assert (exchange.senders_own, pool.schedules.pace("SLOW")) == (True, 0.7)


async def test_a_message_the_screen_records_instead_of_sending_frees_its_sender_at_once() -> None:
    """A number that opted out (or a row held for quiet hours) is recorded at the send's door,
    never sent: the sender's next message is handed out at once, not after the look-ahead's
    wait for a message lost on its way (half a minute a skipped row, before)."""
    clock = ManualClock()
    pool = PoolScheduler(POOL, accepted, RunControl(), lookahead=100, clock=clock,
                         sleep=clock.sleep)  # fmt: skip
    opted_out = message(1, "SLOW")

    def screen(candidate: Message) -> Record | None:
        return Record.failed(candidate, 0, OPTED_OUT) if candidate is opted_out else None

    check = pool.screened(screen)
    assert check is not None
    work = pool.over(ListWork([opted_out, message(2, "SLOW")]))
    first = await work.claim()
    assert isinstance(first, Claim)
    assert check(first.message) is not None  # the engine records it; no send follows
    second = asyncio.create_task(work.claim())
    await clock.advance(0.0)
    assert second.done()
    claim = second.result()
    assert isinstance(claim, Claim)
    assert claim.message.line == 2
    assert check(claim.message) is None
