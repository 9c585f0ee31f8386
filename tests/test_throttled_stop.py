"""A provider that throttles every request: throttles do not use up --retries (flow control), so
the run stops once every answer for --unreachable-timeout was a throttle (exit 3, rows `stopped`
with code `throttled`), and the resume sends them. `send` and a distributed worker alike, against
a loopback server that answers 429 to everything, then the simulator."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from sms_blaster.simulator import SimulatorConfig, start_simulator
from tests.cli_helpers import run_cli, write_csv

ROWS = 20
CAMPAIGN = "throttled"
STOP_AFTER = ("--unreachable-timeout", "0.5", "--retries", "2")
THROTTLED = (
    b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 0\r\nContent-Type: application/json\r\n"
    b'Content-Length: 27\r\n\r\n{"error":"too many tries"}\n'
)


@asynccontextmanager
async def throttling_server() -> AsyncIterator[str]:
    """A keep-alive HTTP server on loopback that answers every request 429; its base URL."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                writer.write(THROTTLED)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()


def campaign_csv(tmp_path: Path) -> tuple[Path, list[str]]:
    tos = [f"4474{k:04d}0001" for k in range(ROWS)]
    return write_csv(tmp_path / "c.csv", [(f"m{k}", f"+{to}") for k, to in enumerate(tos)],
                     header="text,to"), tos  # fmt: skip


def outcome(record: dict[str, Any]) -> tuple[str, str | None, str | None]:
    error = record["error"]
    return record["status"], error and error["kind"], error and error["code"]


@pytest.mark.slow
async def test_a_provider_that_throttles_every_request_stops_the_run_and_the_resume_sends_all(
    tmp_path: Path,
) -> None:
    """Exit 3 with one `Error:` line naming the throttles; every row `stopped`, then sent once."""
    path, tos = campaign_csv(tmp_path)
    args = ["send", str(path), "--from", "Shop", "--rate", "2000", "--no-progress"]
    async with throttling_server() as url:
        first = await run_cli(*args, "--base-url", url, *STOP_AFTER)
    async with await start_simulator(SimulatorConfig()) as sim:
        rerun = await run_cli(*args, "--base-url", sim.url)
        stats = await sim.stats()
    assert first.code == 3, first.stderr
    [error] = [line for line in first.stderr.splitlines() if line.startswith("Error:")]
    assert error.startswith("Error: the run was stopped: the provider throttled every request for ")
    assert "(--unreachable-timeout 0.5)" in error
    assert {outcome(r) for r in first.records} == {("failed", "stopped", "throttled")}
    assert rerun.code == 0, rerun.stderr
    assert {int(to): n["accepted"] for to, n in stats["recipients"].items()} == {
        int(to): 1 for to in tos
    }


@pytest.mark.slow
async def test_a_worker_stops_the_same_way_and_another_sends_the_rows(
    redis_url: str, tmp_path: Path
) -> None:
    """A distributed worker uses the same engine: exit 3, its rows handed back, the next worker
    sends them once."""
    path, tos = campaign_csv(tmp_path)
    enqueued = await run_cli("enqueue", str(path), "--redis", redis_url, "--campaign", CAMPAIGN,
                             "--from", "Shop")  # fmt: skip
    assert enqueued.code == 0, enqueued.stderr
    worker = ["worker", "--redis", redis_url, "--campaign", CAMPAIGN, "--no-progress"]
    async with throttling_server() as url:
        first = await run_cli(*worker, "--base-url", url, *STOP_AFTER)
    async with await start_simulator(SimulatorConfig()) as sim:
        second = await run_cli(*worker, "--base-url", sim.url, "--rate", "500")
        stats = await sim.stats()
    assert first.code == 3, first.stderr
    assert "the provider throttled every request for " in first.stderr
    assert first.records == []  # the rows it claimed went back to the queue, with no record
    assert second.code == 0, second.stderr
    assert Counter(r["line"] for r in second.records) == Counter(range(1, ROWS + 1))
    assert stats["accepted"] == len(tos)
