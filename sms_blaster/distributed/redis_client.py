"""The Redis client of every distributed command: connecting to `--redis URL`, the URL as it may be
printed, and redis-py's errors translated into `RedisUnavailable`, in this one place.

Shared by the commands that use Redis (`enqueue`, `worker`, `report --redis`) and the receiver's
Redis store, so the receiver needs no command module to reach Redis.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, OutOfMemoryError, RedisError

from sms_blaster.errors import RedisUnavailable, UsageError
from sms_blaster.url_text import mask_password


def connect(url: str, connections: int = 16, *, fail_fast: bool = False) -> aioredis.Redis:
    """A client for `--redis URL` (redis://, rediss://, unix://) with up to `connections`
    connections; a caller waits for a free one rather than failing. `fail_fast`: a command is
    tried once more at once (a pooled connection Redis closed), not for seconds, so a caller
    that rides out outages itself hears of one at once."""
    extra: dict[str, Any] = {"retry": Retry(NoBackoff(), 1)} if fail_fast else {}
    _check_database(url)
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


def _check_database(url: str) -> None:
    """Refuse a database that is not a number (redis-py would use database 0 in silence)."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        return  # unix://: the path is the socket's
    database = unquote(parts.path).strip("/")
    if database and not database.isdigit():
        raise UsageError(
            f"--redis {mask_password(url)}: the database {database!r} is not a number; give "
            "e.g. redis://127.0.0.1:6379/0"
        )


# The reply prefix of the queue's scripts refusing to write for a campaign Redis lost (see
# distributed.lost, which says which campaign and what to do).
LOST_REPLY = "SMSB_LOST"

# Where in a script Redis met an error: of no use to a person.
_SCRIPT_PLACE = re.compile(r"\s*script: [0-9a-f]+, on @user_script:\d+\.?\s*$")

_NO_PASSWORD = (
    "Redis asks for a password (NOAUTH): give it in --redis, as "
    "redis://:PASSWORD@HOST:PORT/DB (or redis://USER:PASSWORD@HOST:PORT/DB)"
)


def explain(exc: BaseException) -> str:
    """A Redis error as one line that says what is wrong and what to do, for the errors a
    person can fix (a password, a full Redis, keys deleted); others as Redis said them."""
    text = _SCRIPT_PLACE.sub("", str(exc)).strip()
    if (isinstance(exc, AuthenticationError) and "invalid" not in text) or text.startswith(
        ("NOAUTH", "HELLO must be called with the client already authenticated")
    ):
        return _NO_PASSWORD
    if text.startswith("WRONGPASS") or "invalid username-password pair" in text:
        return (
            "Redis refused the user name or password given in --redis (WRONGPASS, or the "
            "user is disabled): give the right ones"
        )
    if isinstance(exc, OutOfMemoryError) or "used memory > 'maxmemory'" in text:
        return (
            "Redis is out of memory (used memory above its maxmemory) and takes no more "
            "writes: raise its maxmemory; keep maxmemory-policy noeviction (a policy that "
            "evicts keys deletes campaigns' rows ledgers, and rows sent would be sent again)"
        )
    if text.startswith("NOGROUP"):
        return (
            f"a stream or consumer group sms-blaster uses is gone from Redis ({text}): it was "
            "deleted, flushed or evicted"
        )
    if text.startswith("UNBLOCKED"):
        return f"a stream sms-blaster waited on was deleted, flushed or evicted ({text})"
    if text.startswith(LOST_REPLY):
        return (
            "Redis lost the campaign while this ran (restarted without persistence, flushed, "
            "or evicted keys)"
        )
    return text


def unavailable(where: str, exc: BaseException) -> RedisUnavailable:
    """The run's error for a redis-py error (or a socket's) met at `where`; raise it `from exc`."""
    return RedisUnavailable(f"{where}: {explain(exc)}")


def unreachable(url: str, exc: BaseException) -> RedisUnavailable:
    """The run's error when Redis does not answer at all; raise it `from exc`."""
    if isinstance(exc, AuthenticationError) or explain(exc) != str(exc):
        return RedisUnavailable(f"--redis {mask_password(url)}: {explain(exc)}")
    return RedisUnavailable(f"--redis {mask_password(url)}: cannot reach Redis ({exc})")


async def ping(redis: aioredis.Redis, url: str) -> None:
    """Check that Redis answers before anything is done with it."""
    try:
        await redis.ping()
    except (RedisError, OSError) as exc:
        raise unreachable(url, exc) from exc
