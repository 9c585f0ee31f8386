"""A provider that sends an answer nobody asked for: a stray one on a fresh connection, or a
second one on a kept-alive connection. Written before the stray bytes arrive, a request reads
them as its answer; the number the answer names tells it apart, so the row is unknown, never
sent with another message's id. Both transports, real loopback servers. An answer that names
no number and would have its row sent again (a throttle) is trusted by the lean transport only
once its connection has shown nothing more (its witness, `Exchange.in_sync`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator

import pytest

from sms_blaster.models import Encoding, Message, Outcome
from sms_blaster.providers.base import Provider
from sms_blaster.providers.twilio import Twilio
from sms_blaster.providers.vonage_sms import VonageSms
from sms_blaster.transport.base import Transport, TransportName
from sms_blaster.transport.choice import Choice, open_transport
from sms_blaster.transport.lean import LeanTransport
from tests.forward_proxy import lean_through_proxy
from tests.test_transport_conformance import (
    THROUGH_PROXY,
    Handler,
    RawServer,
    answer,
    readable,
    send_all,
)

ROW_TO, OTHER_TO = "447700900001", "447000000000"


def accepted(provider: str, to: str, message_id: str) -> bytes:
    """The provider's acceptance of a message to `to`, as its API writes it."""
    if provider == "vonage":
        part = {"to": to, "message-id": message_id, "status": "0", "message-price": "0.03"}
        return answer(json.dumps({"message-count": "1", "messages": [part]}).encode())
    body = json.dumps({"sid": message_id, "to": f"+{to}", "status": "queued"}).encode()
    return answer(body, status="201 Created")


def provider_at(provider: str, url: str) -> Provider:
    if provider == "vonage":
        return VonageSms("key", "secret", "MyShop", url)
    return Twilio("AC" + "0" * 32, "token", "15017122661", url)


def row(line: int = 1) -> Message:
    return Message(line, ROW_TO, "hello", Encoding.GSM7, 1, f"ref-{line}")


@pytest.fixture(params=[*TransportName, THROUGH_PROXY])
async def transport(request: pytest.FixtureRequest) -> AsyncIterator[Transport]:
    """Each transport (the lean one through a proxy too), one connection, so a second request
    goes on the first one's."""
    if request.param == THROUGH_PROXY:
        async with lean_through_proxy(1, 5.0) as (lean, _):
            yield lean
        return
    opened = open_transport(Choice(request.param), 1, 5.0)
    yield opened
    await opened.close()


@pytest.mark.parametrize("provider", ["vonage", "twilio"])
async def test_a_stray_acceptance_on_a_fresh_connection_is_not_the_rows(
    transport: Transport, provider: str
) -> None:
    """The server writes another number's acceptance once the request has left, then reads the
    request: the row is unknown (it may have been sent), not sent with the stray's id."""

    async def stray_first(server: RawServer, sock: socket.socket) -> None:
        await readable(sock)  # the request was written before the stray answer
        await send_all(sock, accepted(provider, OTHER_TO, "stray-id"))
        await server.read_request(sock)
        await readable(sock)  # its own answer would come later, after the client has gone

    async with RawServer(stray_first) as server:
        exchange = await transport.send(provider_at(provider, server.url), row())
    result = exchange.result
    assert (result.outcome, result.code, result.detail, result.message_ids) == (
        Outcome.AMBIGUOUS,
        "bad_answer",
        "the answer is for another number",
        (),
    )


@pytest.mark.parametrize("provider", ["vonage", "twilio"])
async def test_an_extra_answer_on_a_kept_alive_connection_is_not_the_next_rows(
    transport: Transport, provider: str
) -> None:
    """Row 1 answered, then an extra acceptance for another number arrives just after row 2 was
    written on the same connection: row 2 is unknown, not sent with the extra answer's id."""

    async def extra_after_first(server: RawServer, sock: socket.socket) -> None:
        await server.read_request(sock)
        await send_all(sock, accepted(provider, ROW_TO, "first-id"))
        await readable(sock)  # row 2's request is on its way
        await send_all(sock, accepted(provider, OTHER_TO, "extra-id"))
        await server.read_request(sock)
        await readable(sock)  # its own answer would come later, after the client has gone

    async with RawServer(extra_after_first) as server:
        first = await transport.send(provider_at(provider, server.url), row(1))
        second = await transport.send(provider_at(provider, server.url), row(2))
    assert (first.result.outcome, first.result.message_ids) == (Outcome.SENT, ("first-id",))
    assert (second.result.outcome, second.result.detail) == (
        Outcome.AMBIGUOUS,
        "the answer is for another number",
    )


@contextlib.asynccontextmanager
async def lean(guard_min_s: float) -> AsyncIterator[LeanTransport]:
    """The lean transport, one connection (a second request goes on the first one's), with a
    witness's watch of at least `guard_min_s`; closed after."""
    transport = LeanTransport(1, 5.0, guard_min_s=guard_min_s)
    try:
        yield transport
    finally:
        await transport.close()


async def witness_of_row_2(handler: Handler, outcome: Outcome) -> bool:
    """Rows 1 and 2 on one connection served by `handler`: row 2's answer is `outcome`, with a
    witness, and what the witness says (its watch of 30 s: only the connection ends it early)."""
    async with lean(guard_min_s=30.0) as transport, RawServer(handler) as server:
        provider = provider_at("vonage", server.url)
        await transport.send(provider, row(1))
        second = await transport.send(provider, row(2))
        assert second.result.outcome is outcome
        assert second.in_sync is not None
        return await second.in_sync


THROTTLED = answer(
    b'{"message-count":"1","messages":[{"status":"1","error-text":"Throughput Rate Exceeded"}]}'
)


@pytest.mark.parametrize("through_proxy", [False, True], ids=["direct", "through-proxy"])
async def test_a_throttle_followed_by_the_rows_own_answer_is_not_trusted(
    through_proxy: bool,
) -> None:
    """Row 1 answered, then a throttle that names no number arrives once row 2 was written on the
    same connection, then row 2's own acceptance: the throttle's witness says the connection was
    one answer ahead, so the engine will not send row 2 again; the connection takes no more.
    Through a proxy's tunnel alike."""
    own_answer_due = asyncio.Event()

    async def throttle_too_many(server: RawServer, sock: socket.socket) -> None:
        await server.read_request(sock)
        await send_all(sock, accepted("vonage", ROW_TO, "first-id"))
        await readable(sock)  # row 2's request is on its way
        await send_all(sock, THROTTLED)
        await server.read_request(sock)
        await own_answer_due.wait()
        await send_all(sock, accepted("vonage", ROW_TO, "second-id"))
        await readable(sock)  # only the end of the connection can come: it is not reused

    async with contextlib.AsyncExitStack() as stack:
        # The witness's watch of 30 s ends on the answer alone.
        if through_proxy:
            transport, _ = await stack.enter_async_context(
                lean_through_proxy(1, 5.0, guard_min_s=30.0)
            )
        else:
            transport = LeanTransport(1, 5.0, guard_min_s=30.0)
            stack.push_async_callback(transport.close)
        async with RawServer(throttle_too_many) as server:
            provider = provider_at("vonage", server.url)
            first = await transport.send(provider, row(1))
            second = await transport.send(provider, row(2))
            assert second.result.outcome is Outcome.THROTTLED
            assert second.in_sync is not None
            own_answer_due.set()
            assert await second.in_sync is False
            third = await transport.send(provider, row(3))
            connections = server.connections
    assert first.in_sync is None  # an acceptance is not held
    # The late answer named the number (every row of this test has it): a request to it now is
    # that row's resend, and is not written anywhere.
    assert third.result.code == "two_answers"
    assert connections == 1


async def test_a_throttle_with_nothing_after_it_is_trusted() -> None:
    """A throttle and a quiet connection: the witness says in sync once its guard has passed,
    and the connection is not reused meanwhile."""

    async def throttles_then_answers(server: RawServer, sock: socket.socket) -> None:
        await server.read_request(sock)
        await send_all(sock, THROTTLED)
        await readable(sock)  # only the end of the connection can come: it is not reused

    async with lean(guard_min_s=0.01) as transport, RawServer(throttles_then_answers) as server:
        exchange = await transport.send(provider_at("vonage", server.url), row(1))
        assert exchange.result.outcome is Outcome.THROTTLED
        assert exchange.in_sync is not None
        assert await exchange.in_sync is True
    assert server.connections == 1
    assert len(server.requests) == 1


async def test_a_throttle_on_a_connection_the_server_closes_is_trusted_at_once() -> None:
    """A throttle with `Connection: close`: nothing more can come on it, so no wait."""

    async def throttles_and_closes(server: RawServer, sock: socket.socket) -> None:
        await server.read_request(sock)
        await send_all(sock, THROTTLED.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1))

    async with lean(guard_min_s=30.0) as transport, RawServer(throttles_and_closes) as server:
        exchange = await transport.send(provider_at("vonage", server.url), row(1))
        assert exchange.in_sync is not None
        assert await exchange.in_sync is True


async def test_a_connection_found_quiet_after_a_throttle_is_used_again() -> None:
    """A throttle, nothing after it: once the witness is in, the next request goes on the same
    connection (a throttle storm does not open a connection a throttle)."""

    async def throttles_then_accepts(server: RawServer, sock: socket.socket) -> None:
        await server.read_request(sock)
        await send_all(sock, THROTTLED)
        while await server.read_request(sock) is not None:
            await send_all(sock, accepted("vonage", ROW_TO, "later-id"))

    async with lean(guard_min_s=0.01) as transport, RawServer(throttles_then_accepts) as server:
        provider = provider_at("vonage", server.url)
        throttled = await transport.send(provider, row(1))
        assert throttled.in_sync is not None
        assert await throttled.in_sync is True
        again = await transport.send(provider, row(1))
        connections = server.connections
    assert again.result.message_ids == ("later-id",)
    assert connections == 1


@pytest.mark.parametrize(
    "ending",
    ["Connection: close", "Keep-Alive: timeout=5, max=0"],
)
async def test_a_throttle_that_closes_its_connection_is_watched_before_the_close(
    ending: str,
) -> None:
    """An answer too many that asks for the connection's end: the connection is not closed at
    once (a late answer would go unseen) but watched, and the row's own acceptance coming after
    it makes the witness say so."""
    own_answer_due = asyncio.Event()
    stray = answer(b"", "Retry-After: 0", ending, status="503 Service Unavailable")

    async def stray_that_closes(server: RawServer, sock: socket.socket) -> None:
        await server.read_request(sock)
        await send_all(sock, accepted("vonage", ROW_TO, "first-id"))
        await readable(sock)  # row 2's request is on its way
        await send_all(sock, stray)
        await server.read_request(sock)
        await own_answer_due.wait()
        await send_all(sock, accepted("vonage", ROW_TO, "second-id"))
        await readable(sock)

    async with lean(guard_min_s=30.0) as transport, RawServer(stray_that_closes) as server:
        provider = provider_at("vonage", server.url)
        await transport.send(provider, row(1))
        second = await transport.send(provider, row(2))
        assert second.result.outcome is Outcome.TRANSIENT
        assert second.in_sync is not None
        own_answer_due.set()
        assert await second.in_sync is False


async def test_a_throttle_whose_body_ran_to_the_close_over_another_answer_is_not_trusted() -> None:
    """An answer too many with no length: the row's own answer after it is read as its body,
    and the close ends both. A body that holds a status line swallowed an answer: not trusted."""

    async def stray_without_length(server: RawServer, sock: socket.socket) -> None:
        await server.read_request(sock)
        await send_all(sock, accepted("vonage", ROW_TO, "first-id"))
        await readable(sock)
        await send_all(sock, b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 0\r\n\r\n")
        await server.read_request(sock)
        await send_all(sock, accepted("vonage", ROW_TO, "second-id"))
        # then the close ends the unframed answer

    assert await witness_of_row_2(stray_without_length, Outcome.TRANSIENT) is False


async def test_a_resend_to_a_number_a_late_answer_named_is_not_written() -> None:
    """A throttle read for row 2, its connection quiet through the watch; row 2's own acceptance
    then comes late, read as row 3's (another number): the resend of row 2 is not written, and
    says why (it may have been accepted)."""
    second_to, third_to = "447700900002", "447700900003"

    async def late_own_answer(server: RawServer, sock: socket.socket) -> None:
        await server.read_request(sock)
        await send_all(sock, THROTTLED)
        await server.read_request(sock)  # row 3, on the connection found quiet
        await send_all(sock, accepted("vonage", second_to, "late-id"))
        await readable(sock)

    async with lean(guard_min_s=0.01) as transport, RawServer(late_own_answer) as server:
        provider = provider_at("vonage", server.url)
        second = await transport.send(provider, Message(2, second_to, "b", Encoding.GSM7, 1, "r2"))
        assert second.in_sync is not None
        assert await second.in_sync is True
        third = await transport.send(provider, Message(3, third_to, "c", Encoding.GSM7, 1, "r3"))
        again = await transport.send(provider, Message(2, second_to, "b", Encoding.GSM7, 1, "r2"))
        requests = len(server.requests)
    assert third.result.detail == "the answer is for another number"
    assert (again.result.outcome, again.result.code) == (Outcome.AMBIGUOUS, "two_answers")
    assert requests == 2  # row 2 once, row 3 once: the resend was not written


async def test_a_throttle_whose_length_took_in_the_next_answer_is_not_trusted() -> None:
    """An answer too many whose Content-Length is exactly the next answer's: the row's own
    acceptance is read as its body. A body that holds a status line is not trusted."""
    own = accepted("vonage", ROW_TO, "second-id")
    stray = (
        f"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 0\r\nContent-Length: {len(own)}\r\n\r\n"
    )

    async def stray_with_its_length(server: RawServer, sock: socket.socket) -> None:
        await server.read_request(sock)
        await send_all(sock, accepted("vonage", ROW_TO, "first-id"))
        await readable(sock)
        await send_all(sock, stray.encode())
        await server.read_request(sock)
        await send_all(sock, own)
        await readable(sock)

    assert await witness_of_row_2(stray_with_its_length, Outcome.TRANSIENT) is False


async def test_a_server_that_drops_a_watched_connection_it_said_it_keeps_is_not_trusted() -> None:
    """An answer too many, then the server takes the row's request and dies without answering
    (the connection dropped, though its answers said keep-alive): the row may have been
    accepted, so the throttle read for it is not trusted."""

    async def stray_then_dies(server: RawServer, sock: socket.socket) -> None:
        await server.read_request(sock)
        await send_all(sock, accepted("vonage", ROW_TO, "first-id"))
        await readable(sock)
        await send_all(sock, THROTTLED)
        await server.read_request(sock)  # taken, never answered: the handler ends, it closes

    assert await witness_of_row_2(stray_then_dies, Outcome.THROTTLED) is False
