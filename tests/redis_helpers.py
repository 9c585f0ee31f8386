"""A real redis-server for the tests, started on a free port and stopped after.

Use the `redis_url` fixture (registered in conftest.py: one server per test, a few milliseconds to
start and stop), or `redis_server()` in a fixture of a wider scope. `restartable_redis` is a server
with an append-only file fsynced at every write, that a test kills and starts again on the same
port with the same data.
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.retry import Retry

_START_TIMEOUT_S = 5.0
_ATTEMPTS = 3  # a free port may be taken by someone else before the server binds it


class RestartableRedis:
    """A redis-server with `appendonly yes` and `appendfsync always`, killed and started again on
    the same port and data directory, as a crash and a restart of the host's service would."""

    def __init__(self, executable: str, directory: Path) -> None:
        self._executable = executable
        self._directory = directory
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it (again), and return once it answers PING with its data loaded."""
        options = {
            "--port": str(self.port),
            "--bind": "127.0.0.1",
            "--save": "",
            "--appendonly": "yes",
            "--appendfsync": "always",
            "--daemonize": "no",
            "--dir": str(self._directory),
            "--logfile": str(self._directory / "redis.log"),
        }
        self._process = subprocess.Popen(
            [self._executable, *itertools.chain.from_iterable(options.items())],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        client = redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=_START_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
        )  # fmt: skip
        try:
            if not _answers(self._process, client):
                self.kill()
                log = (self._directory / "redis.log").read_text()
                pytest.fail(f"redis-server did not start on port {self.port}; its log:\n{log}")
        finally:
            client.close()

    def wipe(self) -> None:
        """Remove its data (killed first): started again, it is a Redis that kept none."""
        self.kill()
        for path in self._directory.iterdir():
            if path.name != "redis.log":
                shutil.rmtree(path) if path.is_dir() else path.unlink()

    def freeze(self) -> None:
        """SIGSTOP: connections stay open and nothing is answered (a stalled host or VM)."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT: the server goes on with what was sent meanwhile."""
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no last save."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None


@pytest.fixture
def restartable_redis() -> Iterator[RestartableRedis]:
    """A running `RestartableRedis` of this test's own, killed after it."""
    executable = _executable()
    with tempfile.TemporaryDirectory(prefix="smsb-redis-") as directory:
        server = RestartableRedis(executable, Path(directory))
        server.start()
        try:
            yield server
        finally:
            server.kill()


@pytest.fixture
def redis_url() -> Iterator[str]:
    """The URL of an empty redis-server of this test's own (`redis://127.0.0.1:<port>/0`)."""
    with redis_server() as url:
        yield url


@contextlib.contextmanager
def redis_server(*, password: str | None = None) -> Iterator[str]:
    """Run redis-server on a free loopback port, without persistence (asking for `password`, if
    given); yield its URL (without the password)."""
    options = () if password is None else ("--requirepass", password)
    executable = _executable()
    with tempfile.TemporaryDirectory(prefix="smsb-redis-") as directory:
        log_path = Path(directory) / "redis.log"
        for _ in range(_ATTEMPTS):
            port = _free_port()
            settings = {
                "--port": str(port),
                "--bind": "127.0.0.1",
                "--save": "",
                "--appendonly": "no",
                "--daemonize": "no",
                "--dir": directory,
                "--logfile": str(log_path),
            }
            process = subprocess.Popen(
                [executable, *itertools.chain.from_iterable(settings.items()), *options],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
            # No retries: after SHUTDOWN the default policy would reconnect for seconds.
            client = redis.Redis(
                host="127.0.0.1",
                port=port,
                socket_timeout=_START_TIMEOUT_S,
                retry=Retry(NoBackoff(), 0),
                password=password,
            )
            try:
                if _answers(process, client):
                    try:
                        yield f"redis://127.0.0.1:{port}/0"
                    finally:
                        _stop(process, client)
                    return
            finally:
                client.close()
                if process.poll() is None:
                    process.kill()
                process.wait()
        log = log_path.read_text() if log_path.exists() else "(no log)"
        pytest.fail(f"redis-server did not start in {_ATTEMPTS} attempts; its log:\n{log}")


def add_dlrs(redis_url: str, dlrs: Iterable[tuple[str, str, str, str, str]]) -> None:
    """Vonage SMS API receipts into the shared stream as `receive --redis` stores them, each
    (client ref, message id, delivery, status, error code)."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        for ref, message_id, delivery, status, code in dlrs:
            client.xadd("smsb:receipts", {
                "provider": "vonage-sms", "kind": "dlr", "message_id": message_id,
                "status": status, "delivery": delivery, "client_ref": ref, "error_code": code,
            })  # fmt: skip
    finally:
        client.close()


def _executable() -> str:
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.fail(
            "redis-server is not on PATH: install Debian's redis-server "
            "(apt-get install redis-server); the tests start their own instance",
            pytrace=False,
        )
    return executable


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _answers(process: subprocess.Popen[bytes], client: redis.Redis) -> bool:
    """Wait (bounded) until the server answers PING; False if it exited or never answered."""
    deadline_s = time.monotonic() + _START_TIMEOUT_S
    while process.poll() is None and time.monotonic() < deadline_s:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            time.sleep(0.005)  # not listening yet: it takes about 10 ms to start
    return False


def _stop(process: subprocess.Popen[bytes], client: redis.Redis) -> None:
    with contextlib.suppress(redis.RedisError):
        client.shutdown(nosave=True)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()


async def redis_contents(redis_url: str) -> dict[str, object]:
    """Every key in Redis, with its type, what it holds and its time to live: equal before and
    after means nothing was written (DUMP would not tell: a hash or a stream may be encoded anew,
    its serialisation changed, without any write)."""
    client = aioredis.from_url(redis_url, decode_responses=True)
    contents: dict[str, object] = {}
    try:
        async for key in client.scan_iter():
            kind = await client.type(key)
            value: object
            if kind == "hash":
                value = await client.hgetall(key)
            elif kind == "stream":  # its entries, and its groups' reads and pending entries
                value = (await client.xrange(key), await client.xinfo_groups(key))
            elif kind == "zset":
                value = await client.zrange(key, 0, -1, withscores=True)
            elif kind == "list":
                value = await client.lrange(key, 0, -1)
            elif kind == "set":
                value = sorted(await client.smembers(key))
            else:
                value = await client.get(key)
            contents[key] = (kind, value, await client.pttl(key))
    finally:
        await client.aclose()
    return contents
