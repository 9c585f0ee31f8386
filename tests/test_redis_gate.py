"""RedisGate: a worker's Redis calls wait out an outage for the grace, then fail."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from sms_blaster.distributed.outage import RedisGate


class FakeRedis:
    """Away until `back()`; counts the calls it answered."""

    def __init__(self) -> None:
        self.up = True
        self.answered = 0
        self.now_s = 0.0
        self.refused = asyncio.Event()

    def back(self) -> None:
        self.up = True

    async def command(self) -> str:
        if not self.up:
            self.refused.set()
            raise RedisConnectionError("Connection refused")
        self.answered += 1
        return "OK"

    async def ping(self) -> None:
        await self.command()

    async def sleep(self, delay_s: float) -> None:
        self.now_s += delay_s  # a virtual clock: the probe's backoff costs no real time
        await asyncio.sleep(0)


def gate_for(redis: FakeRedis, grace_s: float, said: list[str], **options: object) -> RedisGate:
    return RedisGate(
        grace_s,
        redis.ping,
        say=said.append,
        clock=lambda: redis.now_s,
        sleep=redis.sleep,
        **options,  # type: ignore[arg-type]
    )


async def test_with_no_grace_the_first_outage_error_is_raised() -> None:
    """--redis-grace 0 keeps the old behaviour: the call fails at once, nothing is said."""
    redis, said = FakeRedis(), list[str]()
    redis.up = False
    gate = gate_for(redis, 0, said)
    with pytest.raises(RedisConnectionError):
        await gate.call(redis.command)
    assert said == []


async def test_a_call_waits_for_redis_and_runs_once_it_is_back() -> None:
    """The lost and back lines are said once; the on_back steps run before the call goes on."""
    redis, said = FakeRedis(), list[str]()
    gate = gate_for(redis, 30, said)
    order: list[str] = []

    async def step() -> None:
        order.append("step, the call waiting" if not calling.done() else "step, too late")

    gate.on_back(step)
    redis.up = False
    calling = asyncio.ensure_future(gate.call(redis.command))
    await redis.refused.wait()
    second = asyncio.ensure_future(gate.call(redis.command))
    redis.back()
    assert await calling == "OK"
    order.append("call")
    assert await second == "OK"
    assert order == ["step, the call waiting", "call"]
    assert [line.split(" (")[0].split(" after")[0] for line in said] == [
        "sms-blaster: Redis lost",
        "sms-blaster: Redis is back",
    ]
    await gate.close()


async def test_past_the_grace_the_gate_gives_up_and_calls_fail() -> None:
    """on_give_up names --redis-grace; the waiting call and later ones raise."""
    redis, said, reasons = FakeRedis(), list[str](), list[str]()
    gate = gate_for(redis, 2, said, on_give_up=reasons.append)
    redis.up = False
    with pytest.raises(RedisConnectionError):
        await gate.call(redis.command)
    assert gate.gone
    assert len(reasons) == 1
    assert "longer than --redis-grace" in reasons[0]
    assert redis.now_s >= 2
    with pytest.raises(RedisConnectionError):
        await gate.call(redis.command)


async def test_a_call_for_new_work_stops_waiting_when_the_run_stops() -> None:
    """A claim does not hold up a drain; a write of a row's end keeps waiting."""
    redis, said = FakeRedis(), list[str]()
    stopped = asyncio.Event()
    gate = gate_for(redis, 30, said, stopped=stopped.wait)
    redis.up = False
    redis.sleep = lambda delay_s: asyncio.sleep(0.01)  # type: ignore[method-assign]
    claim = asyncio.ensure_future(gate.call(redis.command, new_work=True))
    write = asyncio.ensure_future(gate.call(redis.command))
    await redis.refused.wait()
    stopped.set()
    with pytest.raises(RedisConnectionError):
        await claim
    assert not write.done()
    redis.back()
    assert await write == "OK"
    await gate.close()


async def test_an_error_that_is_not_an_outage_is_raised_at_once() -> None:
    """A script error is a bug or a full Redis, not an outage: no waiting."""
    redis, said = FakeRedis(), list[str]()
    gate = gate_for(redis, 30, said)

    async def refused() -> None:
        raise ResponseError("OOM command not allowed")

    with pytest.raises(ResponseError):
        await gate.call(refused)
    assert not gate.down
    assert said == []


async def test_past_the_grace_a_call_fails_without_going_to_redis() -> None:
    """A frozen Redis answers nothing: a call tried past the grace would hold the stopping worker
    for a socket timeout. The reason names the grace's value."""
    redis, said, reasons = FakeRedis(), list[str](), list[str]()
    gate = gate_for(redis, 2, said, on_give_up=reasons.append)
    redis.up = False
    with pytest.raises(RedisConnectionError):
        await gate.call(redis.command)
    redis.back()
    tried: list[str] = []

    async def command() -> str:
        tried.append("tried")
        return await redis.command()

    with pytest.raises(RedisConnectionError):
        await gate.call(command)
    assert tried == []
    assert "longer than --redis-grace (2 s; Connection refused)" in reasons[0]


async def test_once_abandoned_a_call_that_finds_redis_away_fails_rather_than_wait() -> None:
    """The run is over and the stop signals are ignored: nothing may wait for Redis then."""
    redis, said = FakeRedis(), list[str]()
    gate = gate_for(redis, 30, said)
    gate.abandon()
    redis.up = False
    with pytest.raises(RedisConnectionError):
        await gate.call(redis.command)
    assert said == []
    assert not gate.down
