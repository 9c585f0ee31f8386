"""Review of the answer-too-many witness: the engine with the lean transport against real
loopback servers, where a throttle's witness, a fatal answer or a reset at the start meets the
rest of the run."""

from __future__ import annotations

import asyncio
import re
import socket

from sms_blaster.engine import Engine, EngineConfig
from sms_blaster.models import Message, Outcome, Status
from sms_blaster.preparing import PreparedOnLoop
from sms_blaster.providers.base import Exchange
from sms_blaster.providers.vonage_sms import VonageSms
from sms_blaster.ratelimit import Unlimited
from sms_blaster.transport.lean import LeanTransport
from sms_blaster.work import RowFeed
from tests.test_answers_for_another_number import THROTTLED, accepted, row
from tests.test_engine import FAST, ListSink, batches, preparer, rows
from tests.test_transport_conformance import RawServer, answer, send_all

FIRST = 447911120000  # rows(n) numbers: FIRST + line


def number_in(body: bytes) -> int:
    found = re.search(rb"to=(\d+)", body)
    assert found is not None
    return int(found.group(1))


def engine_on(transport: LeanTransport, url: str, sink: ListSink, window: int) -> Engine:
    provider = VonageSms("key", "secret", "MyShop", url)

    async def send(message: Message) -> Exchange:
        return await transport.send(provider, message)

    return Engine(send=send, limiter=Unlimited(), sink=sink, config=EngineConfig(window, FAST))


async def test_resets_coming_back_before_the_first_answers_do_not_stop_the_run() -> None:
    """A provider that answers most requests, slower than it resets a few at its door: the first
    results to come back are 5 resets, though the first requests sent were answered. The run
    is not a silent start: it goes on, the reset rows unknown and every other row sent."""
    lost = asyncio.Event()
    resets = 0

    async def slow_answers_quick_resets(server: RawServer, sock: socket.socket) -> None:
        nonlocal resets
        while (body := await server.read_request(sock)) is not None:
            line = number_in(body) - FIRST
            if 4 <= line <= 8:  # dropped at once, no answer
                resets += 1
                if resets == 5:
                    lost.set()
                return
            if line <= 3:
                await lost.wait()  # answered, but only after the resets came back
            await send_all(sock, accepted("vonage", str(FIRST + line), f"id-{line}"))

    transport, sink = LeanTransport(16, 5.0), ListSink()
    try:
        async with RawServer(slow_answers_quick_resets) as server:
            engine = engine_on(transport, server.url, sink, 16)
            await RowFeed(PreparedOnLoop(batches(rows(40)), preparer()), engine).run()
    finally:
        await transport.close()
    assert engine.control.reason is None, engine.control.stopped_error()
    records = sink.by_line()
    assert {line for line, r in records.items() if r.status is Status.UNKNOWN} == set(range(4, 9))
    assert all(r.status is Status.SENT for line, r in records.items() if not 4 <= line <= 8)


async def test_no_request_leaves_after_a_fatal_answer() -> None:
    """Every request refused 401: the first refusal stops the run at once; the row's witness
    (its connection watched for one answer too many) does not hold the stop back, so no other
    row's request leaves meanwhile."""

    async def refuses(server: RawServer, sock: socket.socket) -> None:
        while await server.read_request(sock) is not None:
            await send_all(sock, answer(b'{"error":"bad credentials"}', status="401 Unauthorized"))

    transport, sink = LeanTransport(1, 5.0, guard_min_s=0.3), ListSink()
    try:
        async with RawServer(refuses) as server:
            engine = engine_on(transport, server.url, sink, 1)
            await RowFeed(PreparedOnLoop(batches(rows(30)), preparer()), engine).run()
            sent = len(server.requests)
    finally:
        await transport.close()
    assert sent == 1
    assert len(sink.by_line()) == 30


async def test_a_throttled_answers_connection_takes_no_request_before_it_is_judged() -> None:
    """Row 1 throttled. Another send that runs in the loop's turn between the answer's read and
    row 1's coroutine resuming must not get row 1's connection: it is to be watched for one
    answer too many, and a request written on it would read that answer as its own."""

    async def throttles_row_1(server: RawServer, sock: socket.socket) -> None:
        while (body := await server.read_request(sock)) is not None:
            first = b"client-ref=ref-1&" in body
            await send_all(sock, THROTTLED if first else accepted("vonage", row(2).to, "id"))

    transport = LeanTransport(2, 5.0, guard_min_s=30.0)
    provider_url = ""

    async def second_in_the_gap(first: asyncio.Task[Exchange]) -> Exchange:
        # One yield a turn: this task's step comes before the first send's wake-up in the turn
        # after the answer is read.
        pools = transport._pools
        while not first.done() and not any(pool._idle for pool in pools.values()):  # noqa: ASYNC110
            await asyncio.sleep(0)
        return await transport.send(VonageSms("key", "secret", "MyShop", provider_url), row(2))

    try:
        async with RawServer(throttles_row_1) as server:
            provider_url = server.url
            provider = VonageSms("key", "secret", "MyShop", server.url)
            first = asyncio.create_task(transport.send(provider, row(1)))
            second = await second_in_the_gap(first)
            throttled = await first
            connections = server.connections
    finally:
        await transport.close()
    assert throttled.result.outcome is Outcome.THROTTLED
    assert second.result.outcome is Outcome.SENT
    assert connections == 2  # row 2 on a new connection
