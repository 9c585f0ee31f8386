"""The global limiter on a real redis-server: one schedule shared by instances on separate
connections, as workers on several hosts would share it."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import statistics
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from sms_blaster.distributed.limiter import (
    TTL_S,
    RedisLimiter,
    Reservation,
    limit_key,
)

NAME = "spring-sale"
KEY = limit_key(NAME)


@contextlib.asynccontextmanager
async def connections(url: str, count: int) -> AsyncIterator[list[aioredis.Redis]]:
    """`count` clients of their own, like workers on separate hosts."""
    clients = [aioredis.Redis.from_url(url) for _ in range(count)]
    try:
        yield clients
    finally:
        for client in clients:
            await client.aclose()


class RecordingLimiter(RedisLimiter):
    """A limiter that keeps the reservations its acquires made."""

    __slots__ = ("reservations",)

    def __init__(self, redis: aioredis.Redis, rate_per_s: float, sleep: HeldSleep) -> None:
        super().__init__(redis, NAME, rate_per_s, sleep=sleep)
        self.reservations: list[Reservation] = []

    async def reserve(self, cost: float = 1.0) -> Reservation:
        reservation = await super().reserve(cost)
        self.reservations.append(reservation)
        return reservation


class HeldSleep:
    """A sleep the test controls: the first call waits for `release`, the next say "stopped"."""

    def __init__(self) -> None:
        self.delays_s: list[float] = []
        self.asleep = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, delay_s: float) -> bool:
        self.delays_s.append(delay_s)
        if len(self.delays_s) > 1:
            return True  # the run stopped: the caller's acquire returns here
        self.asleep.set()
        await self.release.wait()
        return False


def gaps_us(reservations: list[Reservation]) -> list[int]:
    slots = sorted(reservation.slot_us for reservation in reservations)
    return [later - earlier for earlier, later in itertools.pairwise(slots)]


async def test_instances_on_separate_connections_share_one_evenly_spaced_schedule(
    redis_url: str,
) -> None:
    """50 reservations at 100/s from 3 instances: distinct slots, 10 ms apart."""
    async with connections(redis_url, 3) as clients:
        limiters = [RedisLimiter(client, NAME, 100) for client in clients]
        reservations = await asyncio.gather(*(limiters[i % 3].reserve() for i in range(50)))
    gaps = gaps_us(reservations)
    assert min(gaps) >= 9_999, "no two slots closer than 1 / rate"
    # Exactly 10 ms unless the test's own loop stalled past the catch-up (a busy machine).
    assert statistics.median(gaps) == pytest.approx(10_000, abs=1)


async def test_a_fresh_limit_lets_no_burst_through_in_its_first_second(redis_url: str) -> None:
    """At 100/s, no second of 150 reservations holds more than 100, the first second included."""
    async with connections(redis_url, 1) as (client,):
        limiter = RedisLimiter(client, NAME, 100)
        reservations = [await limiter.reserve() for _ in range(150)]
    slots = sorted(reservation.slot_us for reservation in reservations)
    assert max(sum(1 for s in slots if start <= s < start + 1_000_000) for start in slots) == 100


async def test_a_send_of_cost_three_takes_three_slots(redis_url: str) -> None:
    """At 100/s, the slot after a send of cost 3 is 30 ms later."""
    async with connections(redis_url, 1) as (client,):
        limiter = RedisLimiter(client, NAME, 100)
        costly = await limiter.reserve(3)
        after = await limiter.reserve()
    assert after.slot_us - costly.slot_us == pytest.approx(30_000, abs=1)


async def test_a_cut_on_one_instance_spaces_the_next_slots_of_the_others(redis_url: str) -> None:
    """One worker cuts 100/s to 10/s: another's next slots are 100 ms apart."""
    async with connections(redis_url, 2) as (one, two):
        throttled, other = RedisLimiter(one, NAME, 100), RedisLimiter(two, NAME, 100)
        await other.reserve()
        throttled.set_rate(10)
        await throttled.close()
        first, second = await other.reserve(), await other.reserve()
        assert float(await one.hget(KEY, "rate") or 0) == 10
    assert second.slot_us - first.slot_us == pytest.approx(100_000, abs=1)


async def test_a_raise_adds_to_the_shared_pace_without_undoing_another_cut(
    redis_url: str,
) -> None:
    """Worker A cut to 50/s; B, growing back from 80 to 85/s, moves the pace to 55/s, not 85."""
    async with connections(redis_url, 2) as (one, two):
        a, b = RedisLimiter(one, NAME, 100), RedisLimiter(two, NAME, 100)
        a.set_rate(50)
        await a.close()
        b.set_rate(80)  # a cut above the shared pace leaves it at 50
        await b.close()
        assert float(await one.hget(KEY, "rate") or 0) == 50
        b.set_rate(85)
        await b.close()
        assert float(await one.hget(KEY, "rate") or 0) == 55


async def test_a_raise_stops_at_the_configured_rate(redis_url: str) -> None:
    """Growing far past --rate leaves the shared pace at --rate."""
    async with connections(redis_url, 1) as (client,):
        limiter = RedisLimiter(client, NAME, 100)
        limiter.set_rate(50)
        await limiter.close()
        limiter.set_rate(1000)
        await limiter.close()
        assert float(await client.hget(KEY, "rate") or 0) == 100


async def test_start_keeps_a_pace_other_workers_set(redis_url: str) -> None:
    """A worker joining a campaign whose pace was cut keeps the cut."""
    async with connections(redis_url, 2) as (one, two):
        first = RedisLimiter(one, NAME, 100)
        await first.start()
        first.set_rate(40)
        await first.close()
        await RedisLimiter(two, NAME, 100).start()
        assert float(await one.hget(KEY, "rate") or 0) == 40


async def test_start_resets_a_cut_no_worker_renewed_for_a_minute(redis_url: str) -> None:
    """A cut left by a worker gone since (or yesterday's run) does not hold a new run down."""
    async with connections(redis_url, 2) as (one, two):
        first = RedisLimiter(one, NAME, 100)
        await first.start()
        first.set_rate(40)
        await first.close()
        await one.hset(KEY, "rate_at", "1000")  # the cut, long ago
        await RedisLimiter(two, NAME, 100).start()
        assert float(await one.hget(KEY, "rate") or 0) == 100


async def test_start_lowers_the_pace_to_a_lower_configured_rate(redis_url: str) -> None:
    """A worker started with a lower --rate than the others brings the shared pace down to it."""
    async with connections(redis_url, 2) as (one, two):
        await RedisLimiter(one, NAME, 100).start()
        await RedisLimiter(two, NAME, 30).start()
        assert float(await one.hget(KEY, "rate") or 0) == 30


async def test_a_pause_on_one_instance_delays_the_others(redis_url: str) -> None:
    """pause_until(now + 2 s) on one worker: another's next slot is 2 s away."""
    async with connections(redis_url, 2) as (one, two):
        throttled, other = RedisLimiter(one, NAME, 100), RedisLimiter(two, NAME, 100)
        await other.reserve()
        throttled.pause_until(time.monotonic() + 2.0)
        await throttled.close()
        reservation = await other.reserve()
    assert 1.9 < reservation.wait_s <= 2.0


async def test_a_pause_is_only_ever_extended(redis_url: str) -> None:
    """A shorter pause asked after a longer one changes nothing."""
    async with connections(redis_url, 2) as (one, two):
        a, b = RedisLimiter(one, NAME, 100), RedisLimiter(two, NAME, 100)
        a.pause_until(time.monotonic() + 2.0)
        await a.close()
        b.pause_until(time.monotonic() + 0.5)
        await b.close()
        reservation = await b.reserve()
    assert reservation.wait_s > 1.9


async def test_the_limit_expires_a_day_after_its_last_use(redis_url: str) -> None:
    """The hash has a TTL of a day, so a limit nobody uses any more vanishes."""
    async with connections(redis_url, 1) as (client,):
        await RedisLimiter(client, NAME, 100).reserve()
        ttl_ms = await client.pttl(KEY)
    assert TTL_S * 1000 - 5_000 < ttl_ms <= TTL_S * 1000


@pytest.mark.slow
async def test_idle_time_earns_no_credit(redis_url: str) -> None:
    """After 50 ms idle at 100/s, the next sends are still 10 ms apart: only the first is free
    (short, real-time test)."""
    async with connections(redis_url, 1) as (client,):
        limiter = RedisLimiter(client, NAME, 100)
        before = await limiter.reserve()
        await asyncio.sleep(0.05)  # the idle time under test
        after = [await limiter.reserve() for _ in range(5)]
    assert after[0].slot_us - before.slot_us >= 50_000
    assert after[0].wait_s == 0
    assert all(reservation.wait_s > 0 for reservation in after[1:])
    assert gaps_us(after) == [10_000, 10_000, 10_000, 10_000]


async def test_slots_missed_by_a_few_milliseconds_are_still_used(redis_url: str) -> None:
    """At 100/s, a schedule 1 ms behind (a busy loop): the missed slot is used at once."""
    async with connections(redis_url, 1) as (client,):
        limiter = RedisLimiter(client, NAME, 100)
        await limiter.reserve()
        seconds, micros = await client.time()
        missed_us = seconds * 1_000_000 + micros - 1_000
        await client.hset(KEY, "tat", missed_us)  # as if this worker woke 1 ms late
        late = [await limiter.reserve() for _ in range(3)]
    assert [reservation.slot_us for reservation in late] == [
        missed_us,
        missed_us + 10_000,
        missed_us + 20_000,
    ]
    assert late[0].wait_s == 0


async def test_a_cut_reaches_a_caller_already_waiting_on_another_instance(
    redis_url: str,
) -> None:
    """A waiter holding a slot of the old pace takes a new one on the cut pace when it wakes."""
    sleep = HeldSleep()
    async with connections(redis_url, 2) as (one, two):
        throttled = RedisLimiter(one, NAME, 1)
        waiter = RecordingLimiter(two, 1, sleep)
        await throttled.reserve()  # the waiter's slot is a second later
        waiting = asyncio.ensure_future(waiter.acquire())
        await sleep.asleep.wait()
        throttled.set_rate(0.1)
        await throttled.close()
        sleep.release.set()
        await waiting
        after = await throttled.reserve()
    old, new = waiter.reservations
    assert new.generation == old.generation + 1
    assert new.slot_us < old.slot_us, "the new schedule starts within 0.1 s of the cut"
    assert after.slot_us - new.slot_us == pytest.approx(10_000_000, abs=1), "then 10 s apart"


async def test_a_pause_reaches_a_caller_already_waiting_on_another_instance(
    redis_url: str,
) -> None:
    """A waiter holding a slot before a pause's end takes a new one after it when it wakes."""
    sleep = HeldSleep()
    async with connections(redis_url, 2) as (one, two):
        throttled = RedisLimiter(one, NAME, 1)
        waiter = RecordingLimiter(two, 1, sleep)
        await throttled.reserve()
        waiting = asyncio.ensure_future(waiter.acquire())
        await sleep.asleep.wait()
        throttled.pause_until(time.monotonic() + 3.0)
        await throttled.close()
        sleep.release.set()
        await waiting
        pause_until_us = float(await one.hget(KEY, "pause_until") or 0)
    old, new = waiter.reservations
    assert old.wait_s < 1.01
    assert new.slot_us == pytest.approx(pause_until_us, abs=1)
    assert 2.9 < new.wait_s <= 3.0


async def test_a_stopped_run_ends_the_wait_at_once(redis_url: str) -> None:
    """A sleep that returns True (the run stopped): acquire returns after it, holding no wait."""
    delays_s: list[float] = []

    async def stopped(delay_s: float) -> bool:
        delays_s.append(delay_s)
        return True

    async with connections(redis_url, 1) as (client,):
        limiter = RedisLimiter(client, NAME, 1, sleep=stopped)
        await limiter.acquire()
        await limiter.acquire()  # its slot is a second away
    assert delays_s == [0.1]


def test_a_rate_must_be_positive() -> None:
    """A zero rate is a programming error, refused at once."""
    with pytest.raises(ValueError, match="positive"):
        RedisLimiter(aioredis.Redis(), NAME, 0)


@pytest.mark.slow
async def test_real_time_acquires_from_three_instances_hold_the_shared_rate(
    redis_url: str,
) -> None:
    """On the real clock, 50 sends at 500/s from 3 instances take no less than 49 gaps of 2 ms
    (a busy machine can only make them slower: how close they come is a benchmark's question)."""
    async with connections(redis_url, 3) as clients:
        limiters = [RedisLimiter(client, NAME, 500) for client in clients]
        start = time.monotonic()
        async with asyncio.timeout(10):
            await asyncio.gather(*(limiters[i % 3].acquire() for i in range(50)))
        elapsed_s = time.monotonic() - start
    assert elapsed_s >= 0.09


@pytest.mark.slow
async def test_a_caller_woken_too_late_takes_a_new_slot_instead_of_leaving_in_a_burst(
    redis_url: str,
) -> None:
    """A process held up past its slot (here: a sleep that overruns by 50 ms) does not send late
    on top of the next slots; it reserves again, and its second slot is in the future."""
    overruns = iter([0.05])

    async def late_sleep(delay_s: float) -> bool:
        await asyncio.sleep(delay_s + next(overruns, 0.0))
        return False

    slots: list[Reservation] = []

    class Counting(RedisLimiter):
        async def reserve(self, cost: float = 1.0) -> Reservation:
            reservation = await super().reserve(cost)
            slots.append(reservation)
            return reservation

    async with connections(redis_url, 1) as (client,):
        limiter = Counting(client, NAME, 100, sleep=late_sleep)
        await limiter.acquire()  # the first slot is now: no sleep, no overrun
        await limiter.acquire()  # 10 ms away, woken 50 ms late: taken again
    assert len(slots) == 3
    # Well past the missed slot (the 50 ms overrun, less the clocks' few µs of disagreement
    # between this process's sleep and Redis's TIME): a new slot, not a late burst.
    assert slots[2].slot_us >= slots[1].slot_us + 40_000
