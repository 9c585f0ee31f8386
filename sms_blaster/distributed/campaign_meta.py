"""A distributed campaign's settings in Redis (its meta hash): what an `enqueue` is checked
against, and what it writes there, in one step.

An enqueue is refused (exit 4) when it is not the campaign Redis holds (`campaign_identity`'s
rule), or names another sender pool than the one its earlier rows were given. A refused enqueue
changes nothing: every check of `enqueue` runs before its first write to Redis (an input read
once, whose rows are checked as they are read, has its settings written only once the lines read
before have passed theirs), and the write of the settings (`keep`) is one transaction that checks
again what it replaces, so neither a refusal nor an enqueue or worker writing meanwhile leaves
the settings half changed. The rest
(the window, the validity period, the "enqueue finished" marker) is the latest enqueue's to set.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from sms_blaster.campaign_identity import NEW_CAMPAIGN_ADVICE, mismatch
from sms_blaster.distributed import keys as k
from sms_blaster.distributed.keys import CampaignKeys
from sms_blaster.errors import JournalError

TTL_FIELD = "ttl_s"  # the validity period of its messages, if any (workers read it as they start)
WINDOW_FIELD = "quiet_hours"  # its --quiet-hours window, "" for none (workers follow it)
POOL_FIELD = "pool"  # its sender pool as CSV text, if any (workers pace each sender by it)
DONE_FIELD = "done"  # "1" once an enqueue read its whole input: a worker may then exit drained


@dataclass(frozen=True, slots=True)
class EnqueueSettings:
    """What an enqueue keeps in its campaign's meta."""

    campaign_id: str  # this run's: the campaign's own once it exists
    fields: Mapping[str, str]  # the values every later run must agree on (campaign_identity)
    pool: str | None  # the pool's CSV text (`SenderPool.to_csv`), None for --from
    ttl_s: int | None
    quiet_hours: str  # "" for none


@dataclass(frozen=True, slots=True)
class Kept:
    """What `keep` found and wrote."""

    campaign_id: str
    window_changed: bool  # the messages put off under the earlier window are to be judged again


async def read(redis: aioredis.Redis, keys: CampaignKeys) -> dict[str, str]:
    """The campaign's meta as Redis holds it now; empty when there is no such campaign."""
    meta: Any = await redis.hgetall(keys.meta)
    return {str(name): str(value) for name, value in meta.items()}


def check_same(name: str, known: Mapping[str, Any], fields: Mapping[str, str], by: str) -> None:
    """Refuse (exit 4) a run that does not agree with the campaign `known` (what it was `by`:
    "enqueued", "sent by workers")."""
    differs = mismatch(known, fields)
    if differs is not None:
        raise JournalError(
            f"campaign '{name}' was {by} with another {differs.option} "
            f"({differs.recorded!r}, now {differs.now!r}). {NEW_CAMPAIGN_ADVICE}"
        )


def check_enqueue(name: str, known: Mapping[str, Any], wanted: EnqueueSettings) -> None:
    """Refuse (exit 4) an enqueue into the campaign `known` (empty: a new one) that is another
    campaign, or gives another pool: the messages queued before went to its senders."""
    if not known:
        return
    check_same(name, known, wanted.fields, "enqueued")
    if wanted.pool is not None and known.get(POOL_FIELD) not in (None, wanted.pool):
        raise JournalError(
            f"campaign '{name}' was enqueued with another --from-pool; enqueue with the same "
            f"pool file. {NEW_CAMPAIGN_ADVICE}"
        )


async def keep(redis: aioredis.Redis, keys: CampaignKeys, wanted: EnqueueSettings) -> Kept:
    """Check the enqueue against the campaign again and write its settings, in one transaction:
    Redis changes only when the check passes on the settings the write replaces (a change by
    another process in between makes it read and check again). The "enqueue finished" marker
    is cleared until this enqueue has read its whole input."""
    async with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(keys.meta)
                known = await read(pipe, keys)
                check_enqueue(keys.name, known, wanted)
                pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
                campaign_id = known.get("campaign_id") or wanted.campaign_id
                mapping: dict[Any, Any] = {DONE_FIELD: "0", WINDOW_FIELD: wanted.quiet_hours}
                if not known:
                    mapping |= {**wanted.fields, "campaign_id": campaign_id}
                    mapping["created_at"] = str(time.time())
                if wanted.pool is not None:
                    mapping[POOL_FIELD] = wanted.pool
                if wanted.ttl_s is None:
                    pipe.hdel(keys.meta, TTL_FIELD)
                else:
                    mapping[TTL_FIELD] = str(wanted.ttl_s)
                pipe.hset(keys.meta, mapping=mapping)
                await pipe.execute()
            except WatchError:
                continue
            # The id's way back to the campaign, for receipts (the id never changes).
            await redis.hset(k.CAMPAIGNS, campaign_id, keys.name)
            earlier = known.get(WINDOW_FIELD, "")
            return Kept(campaign_id, window_changed=earlier != wanted.quiet_hours)


async def finished(redis: aioredis.Redis, keys: CampaignKeys) -> None:
    """Mark the campaign's input read to its end: its workers may exit once it is drained."""
    await redis.hset(keys.meta, DONE_FIELD, "1")
