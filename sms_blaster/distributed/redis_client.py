"""`--redis URL`: a client for it, and the URL as it may be printed.

Shared by the commands that use Redis (`enqueue`, `worker`, `report --redis`) and the receiver's
Redis store, so the receiver needs no command module to reach Redis.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from sms_blaster.errors import UsageError


def shown(url: str) -> str:
    """`url` as it may be printed: any password (in the address or the query) masked."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username or ''}:***@{netloc.rpartition('@')[2]}"
    query = urllib.parse.urlencode(
        [
            (name, "***" if name.lower() == "password" else value)
            for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        ],
        safe="*",
    )
    rest = f"{parts.path}?{query}" if query else parts.path
    return f"{parts.scheme}://{netloc}{rest}"


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
            f"--redis {shown(url)}: {exc}; give e.g. redis://127.0.0.1:6379/0"
        ) from exc
    return aioredis.Redis(connection_pool=pool)
