"""The paced limiter, on a fake clock: even spacing, no first-second burst."""

from __future__ import annotations

import asyncio

import pytest

from sms_blaster.ratelimit import PacedLimiter


class FakeTime:
    """A clock that only moves when someone sleeps."""

    def __init__(self) -> None:
        self.now = 100.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay_s: float) -> None:
        self.now += delay_s


async def send_times(limiter: PacedLimiter, time: FakeTime, count: int) -> list[float]:
    times = []
    for _ in range(count):
        await limiter.acquire()
        times.append(time.now)
    return times


async def test_sends_are_spaced_one_interval_apart_from_the_start() -> None:
    """At 10/s the sends leave 0.1 s apart, the first at once."""
    time = FakeTime()
    limiter = PacedLimiter(10, clock=time.clock, sleep=time.sleep)
    times = await send_times(limiter, time, 5)
    assert [round(t - 100.0, 6) for t in times] == [0.0, 0.1, 0.2, 0.3, 0.4]


async def test_no_one_second_window_holds_more_than_the_rate() -> None:
    """Any sliding second, the first one included, carries at most `rate` sends."""
    time = FakeTime()
    limiter = PacedLimiter(50, clock=time.clock, sleep=time.sleep)
    times = await send_times(limiter, time, 500)
    # A slot exactly one second later belongs to the next window (minus float rounding).
    most = max(sum(1 for t in times if start <= t < start + 1.0 - 1e-9) for start in times)
    assert most <= 50


async def test_idle_time_earns_no_burst() -> None:
    """After a pause, sends are still spaced: the limiter keeps no credit."""
    time = FakeTime()
    limiter = PacedLimiter(10, clock=time.clock, sleep=time.sleep)
    await limiter.acquire()
    time.now += 60.0
    times = await send_times(limiter, time, 3)
    assert [round(t - times[0], 6) for t in times] == [0.0, 0.1, 0.2]


async def test_a_costly_send_takes_several_slots() -> None:
    """A send of cost 3 pushes the next one three intervals later."""
    time = FakeTime()
    limiter = PacedLimiter(10, clock=time.clock, sleep=time.sleep)
    await limiter.acquire(3)
    start = time.now
    await limiter.acquire()
    assert time.now - start == pytest.approx(0.3)


async def test_concurrent_callers_get_distinct_slots() -> None:
    """Callers waiting together are served one interval apart, none twice."""
    time = FakeTime()
    slept: list[float] = []

    async def record_sleep(delay_s: float) -> bool:
        slept.append(round(delay_s, 6))
        return True  # "the run stopped": each caller returns after its first sleep

    limiter = PacedLimiter(40, clock=time.clock, sleep=record_sleep)
    await asyncio.gather(*(limiter.acquire() for _ in range(4)))
    assert sorted(slept) == [0.025, 0.05, 0.075]


def test_a_rate_must_be_positive() -> None:
    """A zero rate is a programming error, refused at once."""
    with pytest.raises(ValueError, match="positive"):
        PacedLimiter(0)


@pytest.mark.slow
async def test_real_time_pacing_holds_the_rate() -> None:
    """On the real clock, 21 sends at 100/s take about 0.2 s (short, real-time test)."""
    limiter = PacedLimiter(100)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for _ in range(21):
        await limiter.acquire()
    assert 0.19 <= loop.time() - start < 0.5


async def test_a_cut_in_the_pace_applies_to_callers_already_waiting() -> None:
    """A caller waiting on a slot of the old pace: after a cut, the sends follow the new pace."""
    time = FakeTime()
    gate = asyncio.Event()

    async def held_sleep(delay_s: float) -> None:
        await gate.wait()  # the test decides when the sleeper wakes
        time.now += delay_s

    limiter = PacedLimiter(10, clock=time.clock, sleep=held_sleep)
    await limiter.acquire()  # t = 100.0
    waiting = asyncio.ensure_future(limiter.acquire())  # its slot: 100.1, old pace
    await asyncio.sleep(0)
    limiter.set_rate(1)
    gate.set()
    await waiting
    assert time.now == pytest.approx(101.0), "a full new interval after the last send"
    await limiter.acquire()
    assert time.now == pytest.approx(102.0), "the next slot is a full second later"


async def test_a_pause_holds_every_sender_until_it_ends() -> None:
    """pause_until(t): nothing leaves before t, then the pace goes on."""
    time = FakeTime()
    limiter = PacedLimiter(10, clock=time.clock, sleep=time.sleep)
    limiter.pause_until(time.now + 5.0)
    times = await send_times(limiter, time, 2)
    assert [round(t - 100.0, 6) for t in times] == [5.0, 5.1]


async def test_a_speed_up_reaches_callers_waiting_on_slow_slots() -> None:
    """After a deep cut and a recovery, waiters do not keep their slow slots."""
    time = FakeTime()
    limiter = PacedLimiter(0.1, clock=time.clock, sleep=time.sleep)  # a slot every 10 s
    await limiter.acquire()
    start = time.now
    limiter.set_rate(100)
    await limiter.acquire()
    assert time.now - start < 0.3, "the speed-up applies at once, not after 10 s"


async def test_slots_missed_by_a_few_milliseconds_are_caught_up() -> None:
    """At 1000/s, a caller 5 ms late: the next sends use the missed slots, so the rate holds."""
    time = FakeTime()
    limiter = PacedLimiter(1000, clock=time.clock, sleep=time.sleep)
    await limiter.acquire()  # slot 100.000
    time.now += 0.006  # the loop was busy: slots 100.001..100.005 went by
    late = []
    for _ in range(5):
        await limiter.acquire()
        late.append(round(time.now - 100.0, 6))
    assert late == [0.006, 0.006, 0.006, 0.006, 0.006], "the missed slots are used at once"


def test_after_a_pause_many_waiters_leave_at_the_pace_from_its_end() -> None:
    """Fifty callers waiting at 10/s, a pause: the sends go on at 10/s from the pause's end,
    not after every waiter's old slot (which pushed the schedule out by seconds)."""
    from benchmarks.flowlab import VirtualLoop

    async def scenario() -> list[float]:
        loop = asyncio.get_running_loop()
        limiter = PacedLimiter(10, clock=loop.time)
        sent: list[float] = []

        async def caller() -> None:
            while len(sent) < 40:
                await limiter.acquire()
                sent.append(loop.time())

        callers = [asyncio.create_task(caller()) for _ in range(50)]
        await asyncio.sleep(1.05)
        limiter.pause_until(loop.time() + 0.5)
        await asyncio.gather(*callers)
        return sent

    loop = VirtualLoop()
    try:
        sent = loop.run_until_complete(scenario())
    finally:
        loop.close()
    after_pause = [t for t in sent if 1.55 <= t < 2.55]
    assert len(after_pause) >= 9


async def test_a_change_of_pace_never_puts_two_sends_closer_than_an_interval() -> None:
    """A limiter with no burst (nginx limit_req, burst 0) refuses two sends closer than one
    interval: a speed-up starts its schedule one new interval after the last send, not now."""
    time = FakeTime()
    limiter = PacedLimiter(10, clock=time.clock, sleep=time.sleep)
    await limiter.acquire()  # t = 100.0
    time.now += 0.002
    limiter.set_rate(20)
    await limiter.acquire()
    assert time.now == pytest.approx(100.05)


async def test_a_send_that_left_off_its_slot_spaces_the_slots_after_it() -> None:
    """A request whose slot passed while it waited for a connection leaves when the connection
    comes, off the schedule: the next slot is one interval after it, however close the
    schedule's next slot was (it would leave right behind it)."""
    time = FakeTime()
    limiter = PacedLimiter(10, clock=time.clock, sleep=time.sleep)
    await limiter.acquire()  # 100.0; the schedule's next slot is 100.1
    time.now = 100.08
    limiter.left_off_slot()  # a request that waited leaves now
    times = await send_times(limiter, time, 3)
    assert [round(t - 100.08, 6) for t in times] == [0.1, 0.2, 0.3]
