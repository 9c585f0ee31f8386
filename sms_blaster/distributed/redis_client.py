"""The Redis client of every distributed command: connecting to `--redis URL`, the URL as it may be
printed, and redis-py's errors translated into `RedisUnavailable`, in this one place.

Shared by the commands that use Redis (`enqueue`, `worker`, `report --redis`) and the receiver's
Redis store, so the receiver needs no command module to reach Redis.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from sms_blaster.errors import RedisUnavailable, UsageError
from sms_blaster.url_text import mask_password


def connect(url: str, connections: int = 16, *, fail_fast: bool = False) -> aioredis.Redis:
    """A client for `--redis URL` (redis://, rediss://, unix://) with up to `connections`
    connections; a caller waits for a free one rather than failing. `fail_fast`: a command is
    tried once more at once (a pooled connection Redis closed), not for seconds, so a caller
    that rides out outages itself hears of one at once."""
    extra: dict[str, Any] = {"retry": Retry(NoBackoff(), 1)} if fail_fast else {}
    try:
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=connections,
            timeout=None,
            decode_responses=True,
            health_check_interval=30,
            **extra,
        )
    except ValueError as exc:
        raise UsageError(
            f"--redis {mask_password(url)}: {exc}; give e.g. redis://127.0.0.1:6379/0"
        ) from exc
    return aioredis.Redis(connection_pool=pool)


def unavailable(where: str, exc: BaseException) -> RedisUnavailable:
    """The run's error for a redis-py error (or a socket's) met at `where`; raise it `from exc`."""
    return RedisUnavailable(f"{where}: {exc}")


def unreachable(url: str, exc: BaseException) -> RedisUnavailable:
    """The run's error when Redis does not answer at all; raise it `from exc`."""
    return RedisUnavailable(f"--redis {mask_password(url)}: cannot reach Redis ({exc})")


async def ping(redis: aioredis.Redis, url: str) -> None:
    """Check that Redis answers before anything is done with it."""
    try:
        await redis.ping()
    except (RedisError, OSError) as exc:
        raise unreachable(url, exc) from exc
