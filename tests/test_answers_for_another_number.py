"""A provider that sends an answer nobody asked for: a stray one on a fresh connection, or a
second one on a kept-alive connection. Written before the stray bytes arrive, a request reads
them as its answer; the number the answer names tells it apart, so the row is unknown, never
sent with another message's id. Both transports, real loopback servers.
"""

from __future__ import annotations

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
from tests.test_transport_conformance import RawServer, answer, readable, send_all

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


@pytest.fixture(params=list(TransportName))
async def transport(request: pytest.FixtureRequest) -> AsyncIterator[Transport]:
    """Each transport, one connection, so a second request goes on the first one's."""
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
