"""A campaign Redis lost, told apart from one never enqueued, and the one advice for it.

Redis can lose a campaign while its rows are being sent: restarted without persistence, flushed,
or its keys evicted (a `maxmemory-policy` other than `noeviction`), or its stream or consumer group
deleted. Its row ledger went with it, so enqueueing the same campaign again would send every row
again, those already sent included. How a loss is recognised, by anything that finds the
campaign's settings (its meta's `campaign_id`) gone:

- the marker `smsb:c:{name}:lost`: a worker that finds the campaign gone while it runs writes it
  (what was lost, when, who saw it) and nothing else of the campaign, so the marker outlives the
  loss in the Redis that lost it, even one restarted empty;
- any other key of the campaign (its rows, counts, runs, limit, queue, ...), or its name in
  `smsb:campaigns`: what an eviction or a partial delete leaves;
- rows in the ledger but no consumer group: the queue was lost under a campaign still there.

A Redis that lost everything while no worker ran leaves nothing to tell by: then a worker says
both possibilities, never only "run enqueue first".
"""

from __future__ import annotations

import asyncio
import json
import time

import redis.asyncio as aioredis
from redis.exceptions import OutOfMemoryError, RedisError, ResponseError

from sms_blaster.distributed import keys as k
from sms_blaster.distributed.keys import CampaignKeys
from sms_blaster.distributed.limiter import limit_key
from sms_blaster.distributed.redis_client import LOST_REPLY
from sms_blaster.distributed.shared_flow import answers_key, lease_key, marks_key
from sms_blaster.errors import RedisUnavailable

# What a worker tells of a lost campaign, whoever finds the loss: the rows a worker sent are in
# its records only; a row recorded `unknown` may have been sent.
ADVICE = (
    "do not enqueue it again under this name (every row would be sent again): enqueue again, as "
    "a new --campaign, only the rows that no worker's records show sent or unknown"
)

_MARK_TRIES_S = 5.0

CAUSES = (
    "restarted without persistence, flushed, its keys deleted, or evicting keys under a "
    "maxmemory-policy other than noeviction"
)


class CampaignLost(RedisUnavailable):
    """Redis lost the campaign (or its queue, or rows of its ledger): exit 4 with the advice."""


def is_lost_reply(exc: BaseException) -> bool:
    """A Redis error saying the campaign (or its queue) is gone: a script's refusal, NOGROUP."""
    text = str(exc)
    return isinstance(exc, ResponseError) and (
        text.startswith(LOST_REPLY) or text.startswith("NOGROUP")
    )


def trace_keys(keys: CampaignKeys) -> tuple[str, ...]:
    """Every key of a campaign but its meta: one hash slot (`{name}`), for one EXISTS."""
    return (
        keys.lost, keys.queue, keys.delayed, keys.rows, keys.counts, keys.errors, keys.parts,
        keys.runs, keys.seconds, keys.prints, limit_key(keys.limit), answers_key(keys.name),
        lease_key(keys.name), marks_key(keys.name),
    )  # fmt: skip


async def traces(redis: aioredis.Redis, keys: CampaignKeys) -> list[str]:
    """What Redis still holds of the campaign, besides its meta (empty: nothing)."""
    names = trace_keys(keys)
    pipe = redis.pipeline(transaction=False)
    for name in names:
        pipe.exists(name)
    there = await pipe.execute()
    found = [name.rsplit(":", 1)[-1] for name, kept in zip(names, there, strict=True) if kept]
    if keys.name in {str(value) for value in await redis.hvals(k.CAMPAIGNS)}:
        found.append(f"its name in {k.CAMPAIGNS}")
    return found


async def marker(redis: aioredis.Redis, keys: CampaignKeys) -> str | None:
    """What the worker that found the campaign lost wrote, if one did, and who, when."""
    text = await redis.get(keys.lost)
    if text is None:
        return None
    try:
        found = json.loads(text)
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(found["at"])))
        return f"{found['what']} (found by worker {found['worker']} at {when})"
    except (ValueError, KeyError, TypeError):
        return str(text)


async def mark(redis: aioredis.Redis, keys: CampaignKeys, what: str, worker: str) -> None:
    """Leave the marker of the loss (the first finder's). A full Redis (which may be what
    evicted the campaign) is tried again for up to _MARK_TRIES_S, as memory is freed or
    maxmemory raised; Redis failing otherwise, nothing is left."""
    text = json.dumps({"what": what, "at": time.time(), "worker": worker})
    delay_s, deadline_s = 0.1, time.monotonic() + _MARK_TRIES_S
    while True:
        try:
            await redis.set(keys.lost, text, nx=True)
            return
        except OutOfMemoryError:
            if time.monotonic() + delay_s > deadline_s:
                return
        except RedisError:
            return
        await asyncio.sleep(delay_s)
        delay_s = min(delay_s * 2, 1.0)


async def group_missing(redis: aioredis.Redis, keys: CampaignKeys) -> bool:
    """The campaign's stream or its senders' consumer group does not exist."""
    try:
        groups = await redis.xinfo_groups(keys.queue)
    except ResponseError:  # no such key
        return True
    return not any(group["name"] == k.SENDERS_GROUP for group in groups)


async def what_is_gone(redis: aioredis.Redis, keys: CampaignKeys) -> str:
    """Say what of a campaign found broken is gone (one look at Redis)."""
    name = keys.name
    if not await redis.hexists(keys.meta, "campaign_id"):
        return f"Redis lost campaign '{name}' (a Redis {CAUSES})"
    if not await redis.exists(keys.queue):
        return f"Redis lost the queue of campaign '{name}' (the stream {keys.queue} is gone)"
    if await group_missing(redis, keys):
        return (
            f"Redis lost the queue of campaign '{name}' (the consumer group "
            f"'{k.SENDERS_GROUP}' of {keys.queue} is gone: its claims and leases went with it)"
        )
    if not await redis.exists(keys.rows):
        return f"Redis lost the row ledger of campaign '{name}' ({keys.rows} is gone)"
    return f"Redis lost rows of the ledger of campaign '{name}' (a Redis {CAUSES})"


def lost_error(what: str) -> CampaignLost:
    return CampaignLost(f"{what}; {ADVICE}")


async def loss_found(redis: aioredis.Redis, keys: CampaignKeys) -> CampaignLost | None:
    """The error of a campaign Redis lost (see the module's doc), or None: the campaign is
    there, or nothing of it ever was."""
    name = keys.name
    seen = await marker(redis, keys)
    if seen is not None:
        return lost_error(seen)
    if not await redis.hexists(keys.meta, "campaign_id"):
        left = await traces(redis, keys)
        if await redis.exists(keys.meta):
            left.insert(0, "part of its meta")
        if not left:
            return None
        return lost_error(
            f"Redis lost campaign '{name}': its settings are gone, not all of it "
            f"({', '.join(left)} left): a Redis {CAUSES}"
        )
    if await redis.hlen(keys.rows) and await group_missing(redis, keys):
        return lost_error(await what_is_gone(redis, keys))
    return None


def never_seen(name: str, where: str) -> str:
    """A worker's words for a campaign of which Redis holds nothing at all."""
    return (
        f"no campaign '{name}' at {where}: if it was never enqueued, run `sms-blaster enqueue "
        f"INPUT --redis URL --campaign {name}` first; if it was, Redis lost it (a Redis "
        f"{CAUSES}): {ADVICE}"
    )
