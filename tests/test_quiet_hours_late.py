"""Quiet hours judged just before a row's first request leaves: a row taken for sending before a
window opened, whose rate slot came after, is held (in `send` and in a worker)."""

from __future__ import annotations

import json

import redis.asyncio as aioredis

from sms_blaster.distributed import keys as k
from sms_blaster.distributed.queue import CampaignQueue
from sms_blaster.engine import Claim, Engine, EngineConfig
from sms_blaster.models import ErrorKind, Message, Record
from sms_blaster.quiet_hours import QuietHours
from sms_blaster.ratelimit import Unlimited
from sms_blaster.work import first_record
from tests.test_engine import FAST, FakeProvider, ListSink, ok
from tests.test_quiet_hours import EVENING, NEW_YORK, Clock, at, message

BEFORE, INSIDE = at("2026-12-07T20:59", NEW_YORK), at("2026-12-07T21:01", NEW_YORK)


class SlotAfterTheWindowOpened(Unlimited):
    """A rate slot that comes once quiet hours began: the row waited for it past 21:00."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    async def acquire(self, cost: float = 1.0) -> None:
        self.clock.now_s = INSIDE


class TakenBeforeTheWindow:
    """Hands out one message, judged as it is taken (as RowFeed does), then nothing."""

    def __init__(self, quiet: QuietHours, item: Message) -> None:
        self.quiet = quiet
        self.items = [item]

    def claimers(self, window: int) -> int:
        return 1

    async def claim(self) -> Claim | Record | None:
        if not self.items:
            return None
        item = self.items.pop()
        return self.quiet.held_record(item) or Claim(item)


async def test_a_row_taken_before_quiet_hours_whose_slot_comes_inside_them_is_held() -> None:
    """Taken at 20:59, its slot at 21:01: skipped, quiet_hours, and no request leaves."""
    clock = Clock(BEFORE)
    quiet = QuietHours(EVENING, clock)
    provider, sink = FakeProvider(ok), ListSink()
    engine = Engine(
        send=provider,
        limiter=SlotAfterTheWindowOpened(clock),
        sink=sink,
        config=EngineConfig(1, FAST),
        screen=first_record(quiet.held_record, None),
    )

    await engine.run(TakenBeforeTheWindow(quiet, message("America/New_York")))

    [record] = sink.records
    assert record.error is not None
    assert record.error.kind is ErrorKind.QUIET_HOURS
    assert not provider.sent


async def test_a_worker_puts_off_a_row_held_as_it_was_about_to_leave_without_a_record(
    redis_url: str,
) -> None:
    """Held by the last-moment check: no record published, and the row is in the delayed set."""
    client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        queue = CampaignQueue(client, "late", worker="w1")
        await queue.ensure_group()
        await client.hset(queue.keys.meta, mapping={"campaign_id": "late", "done": "1"})
        await queue.add([message("America/New_York")])
        claimed = await queue.claim()
        assert isinstance(claimed, Message)
        queue.quiet = QuietHours(EVENING, Clock(INSIDE))
        held = queue.held_record(claimed)
        assert held is not None
        published: list[Record] = []

        queue.settle(held, published.append)
        await queue.writes_done()

        assert published == []
        [member] = [str(member) for member in await client.zrange(queue.keys.delayed, 0, -1)]
        assert json.loads(member)[0] == "1"
        assert await client.hget(queue.keys.rows, "1") == "q"
        assert int((await client.xpending(queue.keys.queue, k.SENDERS_GROUP))["pending"]) == 0
    finally:
        await client.aclose()
