"""The simulator and the validity period: each API takes its own ttl field within its own bounds,
refuses one outside them as the real one does, echoes it in its stats, and expires a message
whose delivery would take longer than its ttl, with each API's own receipt."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from sms_blaster.simulator import (
    MESSAGES_PATH,
    SMS_PATH,
    RunningSimulator,
    SimulatorConfig,
    messages_api,
    sms_api,
    start_simulator,
    twilio_api,
)
from sms_blaster.simulator.callbacks import (
    MAGIC_EXPIRED_SUFFIX,
    AcceptedMessage,
    Decision,
    PlannedReceipt,
    ReceiptStyle,
    decide,
)

KEY, SECRET = "abcd1234", "s3cr3t!"
SID = "AC" + "0123456789abcdef" * 2
TO = "447911123456"
EXPIRING_TO = "44791112" + MAGIC_EXPIRED_SUFFIX


@pytest.fixture
async def simulator() -> AsyncIterator[RunningSimulator]:
    async with await start_simulator(SimulatorConfig()) as running:
        yield running


async def send(simulator: RunningSimulator, api: str, ttl: Any) -> tuple[int, Any]:
    """One send to `api` with `ttl` in that API's own field; (HTTP status, JSON answer)."""
    async with aiohttp.ClientSession() as session:
        return await _send(session, simulator, api, ttl)


async def _send(
    session: aiohttp.ClientSession, simulator: RunningSimulator, api: str, ttl: Any
) -> tuple[int, Any]:
    if api == "sms":
        form = {"from": "Shop", "to": TO, "text": "Hi", "ttl": str(ttl)}
        request = session.post(
            simulator.url + SMS_PATH, data=form, auth=aiohttp.BasicAuth(KEY, SECRET)
        )
    elif api == "messages":
        document = {"message_type": "text", "channel": "sms", "to": TO, "from": "Shop"}
        request = session.post(
            simulator.url + MESSAGES_PATH,
            json=document | {"text": "Hi", "ttl": ttl},
            auth=aiohttp.BasicAuth(KEY, SECRET),
        )
    else:
        form = {"To": "+" + TO, "From": "+15005550006", "Body": "Hi", "ValidityPeriod": str(ttl)}
        request = session.post(
            f"{simulator.url}/2010-04-01/Accounts/{SID}/Messages.json",
            data=form,
            auth=aiohttp.BasicAuth(SID, "token"),
        )
    async with request as response:
        return response.status, await response.json(content_type=None)


async def kept_ttl_s(simulator: RunningSimulator) -> list[object]:
    stats = await simulator.stats()
    return [message.get("ttl_s") for message in stats["recipients"][TO]["messages"]]


@pytest.mark.parametrize(
    ("api", "ttl", "ttl_s"),
    [("sms", 14_400_000, 14_400), ("messages", 14_400, 14_400), ("twilio", 14_400, 14_400)],
)
async def test_each_api_takes_a_ttl_in_its_own_unit_and_echoes_it_in_seconds(
    simulator: RunningSimulator, api: str, ttl: int, ttl_s: int
) -> None:
    """SMS API milliseconds, Messages API and Twilio seconds: the stats say 4 h for each."""
    status, _ = await send(simulator, api, ttl)
    assert status in (200, 201, 202)
    assert await kept_ttl_s(simulator) == [ttl_s]


async def test_the_sms_api_refuses_a_ttl_outside_its_bounds_as_invalid_parameters(
    simulator: RunningSimulator,
) -> None:
    """Status 3 (16 "Invalid TTL" is no longer used) for 19.999 s, over 7 days, or no number."""
    for ttl in (19_999, 604_800_001, "4h"):
        _, answer = await send(simulator, "sms", ttl)
        assert answer["messages"] == [{"status": "3", "error-text": "Invalid ttl param"}]


async def test_the_messages_api_refuses_a_ttl_outside_its_bounds_with_1130(
    simulator: RunningSimulator,
) -> None:
    """HTTP 422, type …#1130 Invalid TTL, naming the parameter."""
    for ttl in (19, 604_801, "600", 60.5, True):
        status, answer = await send(simulator, "messages", ttl)
        assert status == 422
        assert answer["type"].endswith("/messages#1130")
        assert answer["invalid_parameters"][0]["name"] == "ttl"


async def test_twilio_refuses_a_validity_period_outside_its_bounds_with_21624(
    simulator: RunningSimulator,
) -> None:
    """HTTP 400, code 21624, for 0 s or more than 10 h."""
    for ttl in (0, 36_001, "1h"):
        status, answer = await send(simulator, "twilio", ttl)
        assert (status, answer["code"]) == (400, 21624)


def accepted(style: ReceiptStyle, to: str = TO, ttl_s: float | None = 60.0) -> AcceptedMessage:
    return AcceptedMessage(
        to, "Shop", KEY, "23410", "0.0333", ("0A1", "0A2"), style, "ref", ttl_s=ttl_s
    )


def test_a_message_whose_delivery_takes_longer_than_its_ttl_expires() -> None:
    """Drawn delays up to 100 s against a ttl of 10 s: most expire, some are delivered."""
    message = accepted(sms_api.RECEIPTS, ttl_s=10.0)
    rng = random.Random(5)
    decisions = [
        decide(message, rng, 0.0, magic_numbers=True, delay_spread_s=100.0) for _ in range(50)
    ]
    assert {decision.outcome for decision in decisions} == {"expired", "delivered"}


def test_a_message_delivered_within_its_ttl_never_expires() -> None:
    """Delays up to 1 s against a ttl of 60 s."""
    message = accepted(sms_api.RECEIPTS)
    rng = random.Random(5)
    for _ in range(50):
        assert decide(message, rng, 0.0, magic_numbers=True, delay_spread_s=1.0).delivered


def test_the_magic_expiring_number_expires_only_when_sent_with_a_ttl() -> None:
    """Without a ttl the provider keeps trying as long as it likes: no expiry to report."""
    rng = random.Random(1)
    with_ttl = accepted(sms_api.RECEIPTS, EXPIRING_TO)
    without = accepted(sms_api.RECEIPTS, EXPIRING_TO, ttl_s=None)
    assert decide(with_ttl, rng, 0.0, magic_numbers=True).expired
    assert decide(without, rng, 0.0, magic_numbers=True).delivered
    assert decide(with_ttl, rng, 0.0, magic_numbers=False).delivered


def expired(style: ReceiptStyle) -> Decision:
    return decide(accepted(style, EXPIRING_TO), random.Random(1), 0.0, magic_numbers=True)


def test_every_part_of_an_expired_sms_api_message_gets_an_expired_dlr() -> None:
    """Status `expired`, err-code 2: the handset stayed out of reach until the ttl ran out."""
    message, decision = accepted(sms_api.RECEIPTS, EXPIRING_TO), expired(sms_api.RECEIPTS)
    plan = sms_api.plan_receipts(message, decision, random.Random(1), 0.0)
    fields = [sms_api.dlr_fields(message, decision, planned, 0.0) for planned in plan]
    assert [(f["messageId"], f["status"], f["err-code"]) for f in fields] == [
        ("0A1", "expired", "2"),
        ("0A2", "expired", "2"),
    ]


def test_an_expired_messages_api_message_is_rejected_with_1360() -> None:
    """One webhook, `rejected`, error 1360 "TTL activated / expired"."""
    message, decision = accepted(messages_api.RECEIPTS, EXPIRING_TO), expired(messages_api.RECEIPTS)
    plan = messages_api.RECEIPTS.plan(message, decision, random.Random(1), 0.0)
    assert [planned.status for planned in plan] == ["rejected"]
    fields = messages_api.status_fields(message, decision, plan[-1], 0.0)
    assert (fields["error"]["title"], fields["error"]["detail"]) == (
        "1360",
        "TTL activated / expired",
    )


def test_an_expired_twilio_message_fails_in_the_queue_with_30036() -> None:
    """Never sent: no `sent` callback, only `failed` with ErrorCode 30036."""
    message, decision = accepted(twilio_api.RECEIPTS, EXPIRING_TO), expired(twilio_api.RECEIPTS)
    plan = twilio_api.RECEIPTS.plan(message, decision, random.Random(1), 0.0)
    assert plan == [PlannedReceipt(0, "failed")]
    fields = twilio_api.status_fields(message, decision, plan[0], 0.0)
    assert (fields["MessageStatus"], fields["ErrorCode"]) == ("failed", "30036")
