"""Receipts in distributed mode: `receive --redis` appends each callback to one stream; workers
(and `report --redis`) apply them to their campaigns with a consumer group, each receipt once.

A receipt is tied to its campaign and row by the client ref sms-blaster sent
(`<campaign id>-<line>`, for all three providers); receipts of other senders on the same account,
and receipts naming a campaign sent through another provider, are acknowledged and left. Each
message part keeps its latest state in the campaign's `parts` hash (a final state is never undone
by a late intermediate one), and a receipt proves that a row left `unknown` was sent.
"""

from __future__ import annotations

import logging
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from sms_blaster.distributed import keys as k
from sms_blaster.distributed.keys import CampaignKeys
from sms_blaster.models import Delivery
from sms_blaster.prepare import parse_client_ref
from sms_blaster.providers.names import canonical

log = logging.getLogger("sms_blaster.distributed")

_BATCH = 200
_FINAL = frozenset(state.value for state in Delivery if state.final)

# What a receipt proves, in Redis: a part's final state is never undone, and a row left `unknown`
# was sent. The journal states the same two rules in SQL (journal/deliveries.py); the tests in
# tests/test_receipt_stores.py hold both to them.
# KEYS: parts, rows, counts, meta. ARGV: message id, line, delivery, final (0/1), status, error
# code, received (unix s, when `receive` stored it: the report's delivery times), the campaign id
# the receipt's client ref names. A campaign Redis lost (its meta gone) is left alone: no part or
# count of it is written back (see distributed.lost); nor is one of its name enqueued since with
# another id, whose rows are other messages at the same lines. Nor is a campaign sent through
# another provider than the receipt's (ARGV[9]; its older name "vonage" is the SMS API's): a
# receipt taken unsigned on one provider's route never changes another provider's row.
_APPLY = """
if redis.call('HGET', KEYS[4], 'campaign_id') ~= ARGV[8] then return 0 end
local provider = redis.call('HGET', KEYS[4], 'provider')
if provider == 'vonage' then provider = 'vonage-sms' end
if provider and provider ~= ARGV[9] then return 0 end
local old = redis.call('HGET', KEYS[1], ARGV[1])
local settled = old and string.match(old, '^[^|]*|[^|]*|1')
if not settled then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '|' .. ARGV[3] .. '|' .. ARGV[4] .. '|' ..
             ARGV[5] .. '|' .. ARGV[6] .. '|' .. ARGV[7])
end
if redis.call('HGET', KEYS[2], ARGV[2]) == 'u' then
  redis.call('HSET', KEYS[2], ARGV[2], 's')
  redis.call('HINCRBY', KEYS[3], 'unknown', -1)
  redis.call('HINCRBY', KEYS[3], 'sent', 1)
end
return 1
"""


class ReceiptApplier:
    """Applies the shared receipts stream to the campaigns it names."""

    def __init__(self, redis: aioredis.Redis, consumer: str) -> None:
        self._redis = redis
        self._consumer = consumer
        self._apply = redis.register_script(_APPLY)
        self._names: dict[str, str] = {}  # campaign id -> name

    async def ensure_group(self) -> None:
        try:
            await self._redis.xgroup_create(k.RECEIPTS, k.APPLIERS_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def apply_waiting(self, block_ms: int | None = None) -> int:
        """Apply receipts not yet applied (and those a stopped applier left); how many."""
        applied = 0
        claimed: Any = await self._redis.xautoclaim(
            k.RECEIPTS, k.APPLIERS_GROUP, self._consumer, min_idle_time=60_000, count=_BATCH
        )
        applied += await self._apply_entries(claimed[1])
        while True:
            read: Any = await self._redis.xreadgroup(
                k.APPLIERS_GROUP, self._consumer, {k.RECEIPTS: ">"}, count=_BATCH, block=block_ms
            )
            entries = [entry for _, batch in read for entry in batch]
            if not entries:
                return applied
            applied += await self._apply_entries(entries)
            block_ms = None  # after a wait, take what else is there without waiting again

    async def _apply_entries(self, entries: list[Any]) -> int:
        applied = 0
        done = []
        for entry_id, fields in entries:
            if fields and await self._apply_one(fields, _received_s(entry_id)):
                applied += 1
            done.append(entry_id)
        if done:
            await self._redis.xack(k.RECEIPTS, k.APPLIERS_GROUP, *done)
        return applied

    async def _apply_one(self, fields: dict[str, str], received_s: str) -> bool:
        place = parse_client_ref(fields.get("client_ref"))
        delivery = fields.get("delivery", "")
        if place is None or not delivery:  # another sender's, or an inbound message
            return False
        campaign_id, line = place
        name = await self._campaign(campaign_id)
        if name is None:
            return False
        keys = CampaignKeys(name)
        final = delivery in _FINAL
        done: Any = await self._apply(
            keys=[keys.parts, keys.rows, keys.counts, keys.meta],
            args=[
                fields["message_id"],
                line,
                delivery,
                int(final),
                fields.get("status", ""),
                fields.get("error_code", ""),
                received_s,
                campaign_id,
                canonical(fields.get("provider", "")),
            ],
        )
        return bool(done)

    async def _campaign(self, campaign_id: str) -> str | None:
        """The campaign's name, or None for a campaign this Redis does not know."""
        if campaign_id not in self._names:
            name = await self._redis.hget(k.CAMPAIGNS, campaign_id)
            if name is None:
                return None
            self._names[campaign_id] = str(name)
        return self._names[campaign_id]


def _received_s(entry_id: str) -> str:
    """When `receive` stored a receipt, in unix seconds: its stream entry id is "<ms>-<n>"."""
    return f"{int(entry_id.partition('-')[0]) / 1000:.3f}"
