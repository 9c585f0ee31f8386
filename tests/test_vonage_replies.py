"""Replies to keywords written to a Vonage number: what is sent (pure), how a failed reply ends
(a fake transport), and the real receiver answering through the simulator's send APIs."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sms_blaster.errors import UsageError
from sms_blaster.keywords import DEFAULT_KEYWORDS
from sms_blaster.models import Message, Outcome, Receipt, ReceiptKind, SendResult, StoredReceipt
from sms_blaster.providers.base import Exchange, Provider
from sms_blaster.providers.names import ProviderName
from sms_blaster.providers.registry import Credentials
from sms_blaster.ratelimit import Unlimited
from sms_blaster.receiver.vonage_replies import (
    Reply,
    VonageReplies,
    credentials_of,
    reply_for,
    reply_message,
    with_replies,
)
from sms_blaster.settings import ReceiveSettings
from sms_blaster.simulator import RunningSimulator, SimulatorConfig, start_simulator
from tests.cli_helpers import cli_env, receiver_process, run_cli

HANDSET, OURS = "447400123456", "447700900000"


def inbound(
    text: str, provider: str = ProviderName.VONAGE_SMS, message_id: str = "0B00000001"
) -> Receipt:
    fields = {"msisdn": HANDSET, "to": OURS, "text": text, "messageId": message_id}
    return Receipt(
        provider=provider,
        kind=ReceiptKind.INBOUND,
        message_id=message_id,
        status="received",
        delivery=None,
        to=OURS,
        sender=HANDSET,
        client_ref=None,
        error_code="",
        price=None,
        event_at=None,
        payload=json.dumps(fields),
    )


def test_a_stop_to_an_sms_api_number_is_answered_from_that_number() -> None:
    """The reply goes to the number that wrote, from the one it wrote to, with the STOP text."""
    reply = reply_for(inbound("Stop please"), DEFAULT_KEYWORDS, "Bye", "Call us")
    assert reply == Reply(ProviderName.VONAGE_SMS, HANDSET, OURS, "Bye", "0B00000001")


def test_a_help_keyword_gets_the_help_text() -> None:
    """HELP is answered with --reply-help."""
    reply = reply_for(inbound("help"), DEFAULT_KEYWORDS, "Bye", "Call us")
    assert reply is not None
    assert reply.text == "Call us"


def test_no_reply_without_a_text_for_the_keyword_or_to_twilio() -> None:
    """A keyword without its reply, a plain message, and a Twilio message (TwiML answers it)."""
    assert reply_for(inbound("STOP"), DEFAULT_KEYWORDS, None, "Call us") is None
    assert reply_for(inbound("hello"), DEFAULT_KEYWORDS, "Bye", "Call us") is None
    twilio = replace(inbound("STOP"), provider=ProviderName.TWILIO)
    assert reply_for(twilio, DEFAULT_KEYWORDS, "Bye", None) is None


def test_a_reply_message_names_the_message_it_answers() -> None:
    """Its client ref is the inbound id, within the 40 characters both APIs take."""
    message = reply_message(Reply(ProviderName.VONAGE_MESSAGES, HANDSET, OURS, "Bye", "u" * 60))
    assert message.to == HANDSET
    assert message.client_ref.startswith("reply-uuu")
    assert len(message.client_ref) == 40


def test_a_twilio_only_receiver_needs_no_vonage_credentials() -> None:
    """No Vonage credentials and no Vonage signature secret: replies are Twilio's TwiML only."""
    assert credentials_of(ReceiveSettings(store_path="x", reply_stop="Bye")) is None


def test_a_receiver_of_signed_vonage_callbacks_must_have_credentials_to_reply() -> None:
    """VONAGE_SIGNATURE_SECRET says it takes Vonage callbacks: the reply needs a key and secret."""
    settings = ReceiveSettings(store_path="x", reply_stop="Bye", vonage_secret="s")
    with pytest.raises(UsageError, match="give --api-key and --api-secret"):
        credentials_of(settings)


def test_a_key_without_its_secret_is_refused() -> None:
    """Half a key pair is named for what it lacks."""
    settings = ReceiveSettings(store_path="x", reply_help="Call us", api_key="k")
    with pytest.raises(UsageError, match="no Vonage API secret"):
        credentials_of(settings)


async def test_the_users_hook_still_gets_every_receipt_beside_the_replies() -> None:
    """With replies configured, --hook is called as before (a plain message needs no reply)."""
    seen: list[str] = []

    async def user(item: StoredReceipt) -> None:
        seen.append(item.receipt.message_id)

    settings = ReceiveSettings(store_path="x", reply_stop="Bye", api_key="k", api_secret="s")
    hook = with_replies(settings, user)
    assert hook is not None
    await hook(StoredReceipt(1, inbound("hello"), 0.0))
    assert seen == ["0B00000001"]


def test_a_base_url_that_is_no_http_url_is_refused() -> None:
    """--base-url is where replies go: a mistyped one is found at start, not at the first STOP."""
    settings = ReceiveSettings(
        store_path="x", reply_stop="Bye", api_key="k", api_secret="s", base_url="localhost:9"
    )
    with pytest.raises(UsageError, match="not an http"):
        credentials_of(settings)


class FakeTransport:
    """Answers each send with the next result, and counts them."""

    def __init__(self, *results: SendResult) -> None:
        self.results = list(results)
        self.sent: list[Message] = []
        self.closed = 0

    async def send(self, provider: Provider, message: Message) -> Exchange:
        self.sent.append(message)
        return Exchange(self.results.pop(0), 0.0)

    async def close(self) -> None:
        self.closed += 1


async def no_sleep(seconds: float) -> None:
    return None


def replies_over(transport: FakeTransport) -> VonageReplies:
    return VonageReplies(
        Credentials(api_key="k", api_secret="s"),
        DEFAULT_KEYWORDS,
        "Bye",
        None,
        base_url="http://127.0.0.1:9",
        limiter=Unlimited(),
        transport=lambda url: transport,
        sleep=no_sleep,
    )


async def test_a_throttled_reply_is_tried_again_and_sent() -> None:
    """Two throttles, then accepted: three requests, one transport closed."""
    throttled = SendResult(Outcome.THROTTLED, "1", "Throughput Rate Exceeded")
    transport = FakeTransport(throttled, throttled, SendResult(Outcome.SENT, "0", "", ("id",)))
    await replies_over(transport)(StoredReceipt(1, inbound("STOP"), 0.0))
    assert len(transport.sent) == 3
    assert transport.closed == 1


@pytest.mark.parametrize(
    ("result", "reason"),
    [
        (SendResult(Outcome.AMBIGUOUS, "timeout", "no answer in 10 s"), "timeout"),
        (SendResult(Outcome.PERMANENT, "3", "Invalid to number"), "Invalid to number"),
    ],
)
async def test_a_reply_that_may_have_been_accepted_or_was_refused_is_sent_once(
    caplog: pytest.LogCaptureFixture, result: SendResult, reason: str
) -> None:
    """A timeout after the request left, or a refusal: one request, one error line saying why."""
    transport = FakeTransport(result)
    with caplog.at_level(logging.ERROR, "sms_blaster.receiver"):
        await replies_over(transport)(StoredReceipt(1, inbound("STOP"), 0.0))
    assert len(transport.sent) == 1
    [line] = [record.getMessage() for record in caplog.records]
    assert "not sent" in line
    assert reason in line


# --- the real receiver and the simulator ---------------------------------------------------------

OTHER = "447400123457"


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    running = await start_simulator(SimulatorConfig(api_key="test-key", api_secret="test-secret"))
    try:
        yield running
    finally:
        await running.close()


def replying(sim: RunningSimulator, *args: str) -> Any:
    """A real receiver answering STOP with "Bye" through the simulator's send APIs."""
    return receiver_process(*args, "--reply-stop", "Bye", "--base-url", sim.url)


async def handset_writes(
    sim: RunningSimulator, url: str, api: str = "vonage-sms", sender: str = HANDSET
) -> None:
    asked = {"api": api, "url": url, "from": f"+{sender}", "text": "STOP", "to": OURS}
    async with (
        aiohttp.ClientSession() as session,
        session.post(sim.url + "/_simulator/inbound", json=asked) as response,
    ):
        assert response.status == 200, await response.text()


async def replies_once_accepted(sim: RunningSimulator, count: int) -> dict[str, Any]:
    """The replies each number got, once the simulator accepted `count` messages."""
    async with asyncio.timeout(20):
        await sim.wait_for_accepted(count)
    recipients = (await sim.stats())["recipients"]
    return {number: seen.get("messages", []) for number, seen in recipients.items()}


@pytest.mark.parametrize(
    ("api", "route"),
    [("vonage-sms", "/webhooks/inbound"), ("vonage-messages", "/webhooks/messages/inbound")],
)
async def test_a_stop_to_a_vonage_number_gets_one_reply_sms(
    tmp_path: Path, sim: RunningSimulator, api: str, route: str
) -> None:
    """The simulator's handset writes STOP; the simulator receives one reply through the same
    API, to that number, from the number it wrote to, with the --reply-stop text."""
    async with replying(sim, "--store", str(tmp_path / "store.journal")) as receiver:
        await handset_writes(sim, receiver.url + route, api)
        replies = await replies_once_accepted(sim, 1)
    [reply] = replies[HANDSET]
    assert (reply["api"], reply["from"], reply["text"]) == (api, OURS, "Bye")


@pytest.mark.slow
async def test_a_messages_api_reply_is_signed_as_the_application(
    tmp_path: Path, sim: RunningSimulator
) -> None:
    """With --application-id and --private-key (no key pair), the reply carries the
    application's token, as `send` signs it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_path = tmp_path / "private.key"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    env = {
        name: value
        for name, value in cli_env().items()
        if name not in ("VONAGE_API_KEY", "VONAGE_API_SECRET")
    }
    args = ("--store", str(tmp_path / "store.journal"), "--private-key", str(key_path),
            "--application-id", "aaaaaaaa-bbbb-cccc-dddd-0123456789ab")  # fmt: skip
    async with receiver_process(
        *args, "--reply-stop", "Bye", "--base-url", sim.url, env=env
    ) as receiver:
        await handset_writes(sim, receiver.url + "/webhooks/messages/inbound", "vonage-messages")
        replies = await replies_once_accepted(sim, 1)
    [reply] = replies[HANDSET]
    assert (reply["api"], reply["text"]) == ("vonage-messages", "Bye")


async def test_a_retried_callback_gets_no_second_reply(
    tmp_path: Path, sim: RunningSimulator
) -> None:
    """The same SMS API callback twice: stored once, answered once; a later STOP from another
    number is answered after it, so the first number's count is final."""
    callback = {"msisdn": HANDSET, "to": OURS, "text": "STOP", "messageId": "0B0000AA",
                "type": "text", "message-timestamp": "2026-12-07 09:00:00"}  # fmt: skip
    async with replying(sim, "--store", str(tmp_path / "store.journal")) as receiver:
        async with aiohttp.ClientSession() as session:
            for _ in range(2):
                async with session.post(receiver.url + "/webhooks/inbound", data=callback) as sent:
                    assert sent.status == 204
        await handset_writes(sim, receiver.url + "/webhooks/inbound", sender=OTHER)
        replies = await replies_once_accepted(sim, 2)
    assert (len(replies[HANDSET]), len(replies[OTHER])) == (1, 1)


async def test_two_receivers_on_one_redis_reply_once(redis_url: str, sim: RunningSimulator) -> None:
    """Distributed: a STOP stored by either receiver is answered by one of them, once."""
    async with (
        replying(sim, "--redis", redis_url) as first,
        replying(sim, "--redis", redis_url) as second,
    ):
        await handset_writes(sim, first.url + "/webhooks/inbound")
        await handset_writes(sim, second.url + "/webhooks/inbound", sender=OTHER)
        replies = await replies_once_accepted(sim, 2)
    assert (len(replies[HANDSET]), len(replies[OTHER])) == (1, 1)


async def test_a_vonage_reply_without_credentials_exits_2_before_listening(
    tmp_path: Path,
) -> None:
    """Signed Vonage callbacks, --reply-stop, no key or secret: one Error line naming them."""
    env = {
        name: value
        for name, value in cli_env(VONAGE_SIGNATURE_SECRET="secret").items()
        if name not in ("VONAGE_API_KEY", "VONAGE_API_SECRET")
    }
    run = await run_cli(
        "receive", "--port", "0", "--store", str(tmp_path / "s.journal"), "--reply-stop", "Bye",
        env=env,
    )  # fmt: skip
    assert run.code == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("Error: --reply-stop answers a Vonage inbound message")
    assert "--api-key and --api-secret" in lines[0]
