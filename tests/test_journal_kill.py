"""SIGKILL a send while rows are in flight: every request that left has its mark in the journal,
and the resume reports exactly the rows the journal holds in flight unknown, sending none again.

The provider is a loopback Vonage SMS API that holds chosen requests unanswered: one row's first
request, and another row's second one (its first refused before it was accepted, so the row
went back to pending and was marked again for the retry)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.cli_helpers import number, run_cli, start_cli, write_csv

BOUND_S = 30.0
ROWS = 12
HELD = number(1)  # its first request is never answered
RETRIED = number(2)  # refused once ("come back later"), its second request never answered


class HoldingProvider:
    """Answers every request at once, except the ones it holds until the test ends."""

    def __init__(self) -> None:
        self.attempts: Counter[str] = Counter()  # requests received, by number
        self.accepted: set[str] = set()  # numbers answered with a message id
        self.holding = True  # False: answer everything (the resume's turn)
        self.held: set[str] = set()
        self.changed = asyncio.Condition()
        self.app = web.Application()
        self.app.router.add_post("/sms/json", self.sms)

    async def sms(self, request: web.Request) -> web.Response:
        to = str((await request.post())["to"])
        self.attempts[to] += 1
        if self.holding and to == RETRIED and self.attempts[to] == 1:
            return web.Response(status=503, headers={"Retry-After": "0"})
        if self.holding and to in (HELD, RETRIED):
            async with self.changed:
                self.held.add(to)
                self.changed.notify_all()
            await asyncio.Event().wait()  # until the server closes
        self.accepted.add(to)
        async with self.changed:
            self.changed.notify_all()
        return web.json_response(
            {"message-count": "1", "messages": [
                {"to": to, "message-id": f"id-{to}-{self.attempts[to]}", "status": "0",
                 "remaining-balance": "3.14", "message-price": "0.0333", "network": "23410"}
            ]}
        )  # fmt: skip


@pytest.fixture
async def provider() -> AsyncIterator[tuple[HoldingProvider, str]]:
    holding = HoldingProvider()
    server = TestServer(holding.app)
    await server.start_server()
    try:
        yield holding, str(server.make_url(""))
    finally:
        await server.close()


def journal_rows(path: Path) -> dict[str, tuple[str, int]]:
    """Number -> (state, attempts) of every row of the journal."""
    with contextlib.closing(sqlite3.connect(path)) as connection:
        found = connection.execute("SELECT to_number, state, attempts FROM rows").fetchall()
    return {to: (state, attempts) for to, state, attempts in found}


@pytest.mark.slow
async def test_a_run_killed_with_rows_in_flight_resumes_with_exactly_those_rows_unknown(
    tmp_path: Path, provider: tuple[HoldingProvider, str]
) -> None:
    """The held rows (one marked for its second attempt) are in flight in the journal after a
    SIGKILL, every accepted row is sent or in flight there, and the resume reports the rows in
    flight unknown (interrupted) without a request for any of them."""
    holding, url = provider
    numbers = [number(n) for n in range(1, ROWS + 1)]
    path = write_csv(tmp_path / "c.csv", [(f"N{n}", "+" + to) for n, to in enumerate(numbers)])
    args = ["send", str(path), "--base-url", url, "--from", "Shop", "--text", "Hi {name}"]
    args += ["--to-column", "phone", "--rate", "1000", "--window", "4", "--no-progress"]
    process = await start_cli(*args)
    async with holding.changed:
        async with asyncio.timeout(BOUND_S):
            await holding.changed.wait_for(
                lambda: holding.held == {HELD, RETRIED} and len(holding.accepted) == ROWS - 2
            )
    process.kill()
    await process.communicate()

    after_kill = journal_rows(tmp_path / "c.csv.journal")
    in_flight = {to for to, (state, _) in after_kill.items() if state == "inflight"}
    assert {HELD, RETRIED} <= in_flight
    assert after_kill[RETRIED] == ("inflight", 2), "the retry's mark is its second attempt"
    assert all(after_kill[to][0] in ("sent", "inflight") for to in holding.accepted)
    attempts_at_kill = Counter(holding.attempts)

    holding.holding = False
    resume = await run_cli(*args, timeout_s=BOUND_S)

    records = {record["to"]: record for record in resume.by_line().values()}
    assert sorted(records) == sorted(numbers)
    unknown = {to for to, r in records.items() if r["status"] == "unknown"}
    assert unknown == in_flight
    assert {records[to]["error"]["code"] for to in unknown} == {"interrupted"}
    assert all(records[to]["status"] == "skipped" for to in set(numbers) - in_flight)
    assert holding.attempts == attempts_at_kill, "a row was sent again"
    assert {state for state, _ in journal_rows(tmp_path / "c.csv.journal").values()} <= {
        "sent",
        "unknown",
    }
