"""Redis failures as the run's own error: translated once, with the exit code of old; those a
person can fix (a password, a full Redis, a deleted stream) said with the fix, in one line."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from sms_blaster.distributed.redis_client import connect, explain, ping, unavailable
from sms_blaster.errors import JournalError, RedisUnavailable
from tests.cli_helpers import run_cli
from tests.redis_helpers import redis_server
from tests.test_distributed import CAMPAIGN, campaign_csv, enqueue_args, simulator_with, worker_args


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


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("Error:")]


async def test_a_missing_password_is_one_line_with_the_fix_from_worker_and_enqueue(
    tmp_path: Path,
) -> None:
    """Redis asks for a password the URL lacks: worker and enqueue say the same (exit 4)."""
    with redis_server(password="sekret") as url:
        enqueue = await run_cli(*enqueue_args(url, campaign_csv(tmp_path, 1)))
        async with simulator_with() as simulator:
            worker = await run_cli(*worker_args(url, simulator))
    assert (enqueue.code, worker.code) == (4, 4)
    told = {line.split(": ", 2)[2] for line in error_lines(enqueue.stderr + worker.stderr)}
    assert len(told) == 1, told
    assert "redis://:PASSWORD@HOST:PORT/DB" in told.pop()


async def test_a_full_redis_is_one_line_naming_noeviction(redis_url: str, tmp_path: Path) -> None:
    """Redis at its maxmemory refuses the writes: one line with the fix, no script text."""
    client = aioredis.from_url(redis_url)
    try:
        await client.config_set("maxmemory", "1")
    finally:
        await client.aclose()
    run = await run_cli(*enqueue_args(redis_url, campaign_csv(tmp_path, 1)))
    assert run.code == 4, run.stderr
    (line,) = error_lines(run.stderr)
    assert "out of memory" in line, line
    assert "maxmemory-policy noeviction" in line, line


@pytest.mark.parametrize("command", ["enqueue", "worker", "report"])
async def test_a_database_that_is_not_a_number_is_refused(
    command: str, redis_url: str, tmp_path: Path
) -> None:
    """redis://host:port/abc: refused (exit 2), not database 0 in silence."""
    url = redis_url.rsplit("/", 1)[0] + "/abc"
    argv = {
        "enqueue": enqueue_args(url, campaign_csv(tmp_path, 1)),
        "worker": ["worker", "--redis", url, "--campaign", CAMPAIGN, "--base-url",
                   "http://127.0.0.1:9"],
        "report": ["report", "--redis", url, "--campaign", CAMPAIGN],
    }[command]  # fmt: skip
    run = await run_cli(*argv)
    assert run.code == 2, run.stderr
    assert "the database 'abc' is not a number" in run.stderr


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (
            "command not allowed when used memory > 'maxmemory'. script: 24a5f0, on "
            "@user_script:15.",
            "maxmemory-policy noeviction",
        ),
        ("NOGROUP No such key 'q' or consumer group 'senders'", "deleted, flushed or evicted"),
        ("NOAUTH Authentication required.", "redis://:PASSWORD@HOST:PORT/DB"),
        (
            "HELLO must be called with the client already authenticated, otherwise ...",
            "redis://:PASSWORD@HOST:PORT/DB",
        ),
    ],
)
def test_a_raw_redis_error_becomes_its_fix(raw: str, says: str) -> None:
    told = explain(ResponseError(raw))
    assert says in told
    assert "script:" not in told
