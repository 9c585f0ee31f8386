"""Workers of one campaign given different --rate: the campaign keeps to the smallest, on a real
redis-server; and a limit whose key was deleted starts again from the pace the workers kept."""

from __future__ import annotations

import pytest

from sms_blaster.distributed.limiter import RedisLimiter, limit_key
from sms_blaster.distributed.rate_cap import RateCap
from tests.test_redis_limiter import connections

NAME = "spring-sale"


async def spacing_us(limiter: RedisLimiter) -> float:
    """The distance of two slots taken one after the other on the shared schedule."""
    first, second = await limiter.reserve(), await limiter.reserve()
    return second.slot_us - first.slot_us


async def test_a_worker_with_a_smaller_rate_holds_the_whole_campaign_to_it(redis_url: str) -> None:
    """w1 runs at --rate 1000; w2 joins with --rate 100: w1's next slots are 10 ms apart (not
    1 ms), and both say so. Once w2 left, a worker started with --rate 1000 is not held to it."""
    said: list[str] = []
    async with connections(redis_url, 2) as (one, two):
        fast_cap = RateCap(one, NAME, "w1", 1000.0)
        assert await fast_cap.join(said.append) == 1000
        fast = RedisLimiter(one, NAME, 1000.0)
        await fast.start()
        assert await spacing_us(fast) == pytest.approx(1_000, abs=1)
        assert said == []
        slow_cap = RateCap(two, NAME, "w2", 100.0)
        assert await slow_cap.join(said.append) == 100
        assert said == [
            "sms-blaster: --rate 100/s is below the 1000/s of the campaign's other workers: "
            "the campaign keeps to the smallest --rate of its workers, 100/s for all of them "
            "together"
        ]
        assert await spacing_us(fast) == pytest.approx(10_000, abs=1)
        joined = RateCap(two, NAME, "w3", 1000.0)
        assert await joined.join(said.append) == 100
        assert "another worker of the campaign runs with --rate 100/s" in said[-1]
        await slow_cap.leave()
        later = RateCap(two, NAME, "w4", 1000.0)
        assert await later.join(said.append) == 1000


async def test_a_pace_set_outright_never_goes_above_the_campaigns_rate(redis_url: str) -> None:
    """The flow controller of a worker given --rate 1000 sets a pace of 800 while the campaign's
    rate is 100: Redis keeps 100."""
    async with connections(redis_url, 1) as (client,):
        await RateCap(client, NAME, "w1", 100.0).join(lambda line: None)
        limiter = RedisLimiter(client, NAME, 1000.0)
        limiter.set_rate(800)
        await limiter.close()
        assert float(await client.hget(limit_key(NAME), "rate") or 0) == 100
        assert await spacing_us(limiter) == pytest.approx(10_000, abs=1)


async def test_a_deleted_limit_starts_again_from_the_pace_the_worker_kept(redis_url: str) -> None:
    """The workers keep a pace of 200/s (under --rate 1000) when the limit's key is deleted: the
    next slots are 5 ms apart, not 1 ms (a burst at --rate until the pace is set again)."""
    async with connections(redis_url, 1) as (client,):
        limiter = RedisLimiter(client, NAME, 1000.0)
        await limiter.start()
        limiter.follow(200.0)  # as a worker does with the pace the campaign's controller set
        await client.hset(limit_key(NAME), "rate", "200")
        assert await spacing_us(limiter) == pytest.approx(5_000, abs=1)
        await client.delete(limit_key(NAME))
        assert await spacing_us(limiter) == pytest.approx(5_000, abs=1)


async def test_a_worker_lowered_by_a_later_one_keeps_its_lower_cap_when_the_key_is_gone(
    redis_url: str,
) -> None:
    """The campaign's rate (100/s) lost with a deleted limit key: a worker that read it keeps to
    it until the next renewal writes it back."""
    async with connections(redis_url, 1) as (client,):
        limiter = RedisLimiter(client, NAME, 1000.0)
        await limiter.start()
        limiter.cap(100.0)
        await client.delete(limit_key(NAME))
        assert await spacing_us(limiter) == pytest.approx(10_000, abs=1)


async def test_a_worker_with_a_shorter_lease_takes_over_only_after_the_longest_running(
    redis_url: str,
) -> None:
    """w1 runs with --lease 60 (and renews its messages every 20 s); w2 joins with --lease 1: it
    would take w1's messages over after a second. It takes over only what was idle 60 s, and
    says so; once w1 left, its own --lease again."""
    said: list[str] = []
    async with connections(redis_url, 2) as (one, two):
        first = RateCap(one, NAME, "w1", 100.0, lease_s=60.0)
        await first.join(said.append)
        assert first.takeover_lease_s == 60
        short = RateCap(two, NAME, "w2", 100.0, lease_s=1.0)
        await short.join(said.append)
        assert short.takeover_lease_s == 60
        assert said == [
            "sms-blaster: --lease 1 s, but another worker of the campaign runs with --lease 60 s "
            "and renews its messages that seldom: this worker takes over only messages idle "
            "longer than 60 s while it runs"
        ]
        assert first.takeover_lease_s == 60  # the longer one keeps its own
        await first.leave()
        await short.join(said.append)  # a renewal after w1 left
        assert short.takeover_lease_s == 1
