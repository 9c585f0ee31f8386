"""Redis failures as the run's own error: translated once, with the message and exit code of old."""

from __future__ import annotations

import socket

import pytest
from redis.exceptions import ResponseError

from sms_blaster.distributed.redis_client import connect, ping, unavailable
from sms_blaster.errors import JournalError, RedisUnavailable


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_a_redis_nobody_answers_is_unavailable_with_the_url_and_no_password() -> None:
    """Pinging a closed port raises RedisUnavailable naming the URL, its password masked."""
    url = f"redis://:hunter2@127.0.0.1:{closed_port()}/0"
    redis = connect(url)
    try:
        with pytest.raises(RedisUnavailable) as raised:
            await ping(redis, url)
    finally:
        await redis.aclose()
    message = str(raised.value)
    assert message.startswith(f"--redis redis://:***@127.0.0.1:{url.rsplit(':', 1)[1]}: ")
    assert "cannot reach Redis (" in message
    assert "hunter2" not in message


def test_a_redis_error_stops_the_run_as_a_journal_error_does() -> None:
    """RedisUnavailable is a JournalError: every place that stops on one stops, with exit 4."""
    error = unavailable("Redis", ResponseError("NOSCRIPT gone"))
    assert isinstance(error, JournalError)
    assert (str(error), error.exit_code) == ("Redis: NOSCRIPT gone", 4)
