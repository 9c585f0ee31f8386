"""The simulator's delivery receipts: sent to a real loopback receiver like Vonage's SMS DLRs."""

from __future__ import annotations

import asyncio
import random
import re
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sms_blaster.receiver.signatures import verify_vonage_sms
from sms_blaster.simulator import (
    SMS_PATH,
    STATS_PATH,
    CallbackFormat,
    RunningSimulator,
    SimulatorConfig,
    start_simulator,
)
from sms_blaster.simulator.callbacks import (
    AcceptedMessage,
    CallbackRequest,
    Decision,
    PlannedReceipt,
    callback_request,
    decide,
)
from sms_blaster.simulator.sms_api import RECEIPTS, dlr_fields, plan_receipts
from tests.cli_helpers import mock_provider_refusal

KEY, SECRET = "abcd1234", "s3cr3t!"
TO = "447911123456"
FAILING_TO = "447700909989"
BASIC = aiohttp.BasicAuth(KEY, SECRET)
TWO_PARTS = "a" * 200  # 2 parts of at most 153 septets
THREE_PARTS = "a" * 400
DLR_FIELDS = {
    "msisdn",
    "to",
    "network-code",
    "messageId",
    "price",
    "status",
    "scts",
    "err-code",
    "api-key",
    "message-timestamp",
}
BOUND_S = 2.0  # no wait in these tests comes near this


@dataclass(frozen=True, slots=True)
class Arrival:
    method: str
    content_type: str
    fields: dict[str, str]
    at_s: float


class Receiver:
    """A webhook receiver on loopback that records each receipt and answers as it is told."""

    def __init__(self, answers: list[int] | None = None, hold: asyncio.Event | None = None) -> None:
        self.arrivals: list[Arrival] = []
        self.answers = list(answers or [])  # HTTP statuses to answer, in order; then 200
        self.hold = hold  # when set up, every request waits for this before answering
        self.url = ""  # set once it listens
        self.changed = asyncio.Condition()
        self.app = web.Application()
        self.app.router.add_route("*", "/dlr", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        if request.method == "GET":
            fields = dict(request.query)
        elif request.content_type == "application/json":
            fields = await request.json()
        else:
            fields = {name: str(value) for name, value in (await request.post()).items()}
        arrival = Arrival(request.method, request.content_type, fields, time.monotonic())
        async with self.changed:
            self.arrivals.append(arrival)
            self.changed.notify_all()
        if self.hold is not None:
            await self.hold.wait()
        return web.Response(status=self.answers.pop(0) if self.answers else 200)

    async def wait_for(self, count: int) -> list[Arrival]:
        async with asyncio.timeout(BOUND_S), self.changed:
            await self.changed.wait_for(lambda: len(self.arrivals) >= count)
        return self.arrivals

    def fields(self) -> list[dict[str, str]]:
        return [arrival.fields for arrival in self.arrivals]


async def serve_receiver(receiver: Receiver, port: int | None = None) -> TestServer:
    server = TestServer(receiver.app, port=port)
    await server.start_server()
    receiver.url = str(server.make_url("/dlr"))
    return server


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    listening = Receiver()
    server = await serve_receiver(listening)
    try:
        yield listening
    finally:
        await server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def simulate(callback_url: str, **overrides: Any) -> RunningSimulator:
    """A simulator calling back at once, with no duplicates, intermediates or early receipts."""
    settings: dict[str, Any] = {
        "callback_url": callback_url,
        "callback_delay_ms": 0.0,
        "callback_duplicate_rate": 0.0,
        "callback_intermediate_rate": 0.0,
        "callback_retry_s": 0.05,
        "seed": 7,
    }
    return await start_simulator(SimulatorConfig(**(settings | overrides)))


async def send(
    session: aiohttp.ClientSession, simulator: RunningSimulator, **fields: str
) -> list[str]:
    """Send one message (defaults: from Shop, to TO, text Hello); its message ids."""
    form = {"from": "Shop", "to": TO, "text": "Hello"} | fields
    async with session.post(simulator.url + SMS_PATH, data=form, auth=BASIC) as response:
        body = await response.json()
    assert {part["status"] for part in body["messages"]} == {"0"}
    return [part["message-id"] for part in body["messages"]]


async def callbacks(simulator: RunningSimulator) -> dict[str, Any]:
    section: dict[str, Any] = (await simulator.stats())["callbacks"]
    return section


async def settle(simulator: RunningSimulator) -> dict[str, Any]:
    """Wait until no receipt is pending; the callbacks stats then."""
    async with asyncio.timeout(BOUND_S):
        await simulator.wait_for_callbacks_done()
    return await callbacks(simulator)


# --- over the network ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "method", "content_type"),
    [
        (CallbackFormat.JSON, "POST", "application/json"),
        (CallbackFormat.POST, "POST", "application/x-www-form-urlencoded"),
        (CallbackFormat.GET, "GET", "application/octet-stream"),  # no body, no content type
    ],
)
async def test_each_format_carries_the_documented_dlr_fields_as_strings(
    session: aiohttp.ClientSession,
    fmt: CallbackFormat,
    method: str,
    content_type: str,
) -> None:
    """JSON body, form body or query string: the same Vonage DLR fields, each a string."""
    listening = Receiver()
    server = await serve_receiver(listening)
    async with await simulate(listening.url, callback_format=fmt) as simulator:
        ids = await send(session, simulator, **{"client-ref": "ref 1&2"})
        await settle(simulator)
    await server.close()
    [arrival] = listening.arrivals
    assert (arrival.method, arrival.content_type) == (method, content_type)
    fields = arrival.fields
    assert set(fields) == DLR_FIELDS | {"client-ref"}
    assert all(isinstance(value, str) for value in fields.values())
    assert fields | {"scts": "", "message-timestamp": ""} == {
        "msisdn": TO,
        "to": "Shop",
        "network-code": "23410",
        "messageId": ids[0],
        "price": "0.03330000",
        "status": "delivered",
        "scts": "",
        "err-code": "0",
        "api-key": KEY,
        "client-ref": "ref 1&2",
        "message-timestamp": "",
    }
    assert re.fullmatch(r"\d{10}", fields["scts"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", fields["message-timestamp"])


async def test_a_message_without_client_ref_gets_receipts_without_one(
    receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    """`client-ref` is echoed only when the send carried one."""
    async with await simulate(receiver.url) as simulator:
        await send(session, simulator)
        await settle(simulator)
    assert set(receiver.arrivals[0].fields) == DLR_FIELDS


async def test_a_multipart_message_gets_one_receipt_per_part_with_the_same_client_ref(
    receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    """Two parts, two receipts: each with its own part's messageId, both with the client-ref."""
    async with await simulate(receiver.url) as simulator:
        ids = await send(session, simulator, text=TWO_PARTS, **{"client-ref": "r-2"})
        await settle(simulator)
    fields = receiver.fields()
    assert len(ids) == 2
    assert sorted(f["messageId"] for f in fields) == sorted(ids)
    assert {(f["client-ref"], f["status"]) for f in fields} == {("r-2", "delivered")}


async def test_a_number_ending_9989_fails_one_part_and_delivers_the_others(
    receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    """One of three parts is `failed` with a non-zero err-code; the decision is counted."""
    async with await simulate(receiver.url) as simulator:
        await send(session, simulator, to=FAILING_TO, text=THREE_PARTS, **{"client-ref": "f"})
        stats = await settle(simulator)
    outcomes = sorted((f["status"], f["err-code"]) for f in receiver.fields())
    assert outcomes == [("delivered", "0"), ("delivered", "0"), ("failed", "3")]
    assert stats["decided"] == {"delivered": 0, "failed": 1}
    assert stats["outcomes"] == {"f": "failed"}


async def test_a_dlr_fail_rate_of_one_fails_every_message(
    receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    """At dlr_fail_rate 1.0 each message has exactly one failed receipt, with a non-zero code."""
    async with await simulate(receiver.url, dlr_fail_rate=1.0) as simulator:
        for n in range(3):
            await send(session, simulator, **{"client-ref": f"m{n}"})
        stats = await settle(simulator)
    assert [f["status"] for f in receiver.fields()] == ["failed"] * 3
    assert "0" not in {f["err-code"] for f in receiver.fields()}
    assert stats["outcomes"] == {"m0": "failed", "m1": "failed", "m2": "failed"}


async def test_intermediate_receipts_are_sent_besides_the_final_one(
    receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    """At intermediate rate 1.0 each part also gets an `accepted` or `buffered` receipt."""
    config = {"callback_intermediate_rate": 1.0, "callback_delay_ms": 5.0}
    async with await simulate(receiver.url, **config) as simulator:
        ids = await send(session, simulator, text=TWO_PARTS)
        stats = await settle(simulator)
    by_part = {
        message_id: sorted(f["status"] for f in receiver.fields() if f["messageId"] == message_id)
        for message_id in ids
    }
    for statuses in by_part.values():
        assert len(statuses) == 2
        assert statuses[1] == "delivered"
        assert statuses[0] in {"accepted", "buffered"}
    assert (stats["sent"], stats["acked"]) == (4, 4)


async def test_a_receipt_answered_500_is_sent_again_after_the_retry_delay(
    session: aiohttp.ClientSession,
) -> None:
    """The same receipt comes back callback_retry_s later; the stats count the retry."""
    listening = Receiver(answers=[500])
    server = await serve_receiver(listening)
    async with await simulate(listening.url, callback_retry_s=0.1) as simulator:
        await send(session, simulator)
        stats = await settle(simulator)
    await server.close()
    first, second = listening.arrivals
    assert first.fields == second.fields
    assert second.at_s - first.at_s >= 0.09
    assert stats | {"decided": None} == {
        "sent": 2,
        "acked": 1,
        "retried": 1,
        "given_up": 0,
        "pending": 0,
        "decided": None,
        "outcomes": {first.fields["messageId"]: "delivered"},
    }


async def test_a_receiver_not_listening_at_first_gets_the_receipt_once_it_listens(
    session: aiohttp.ClientSession,
) -> None:
    """A refused connection is retried: the receiver started after the first attempt gets it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/dlr"
    # Early: the send is answered only after the first attempt has failed.
    async with await simulate(url, callback_early_rate=1.0) as simulator:
        await send(session, simulator)
        assert (await callbacks(simulator))["sent"] == 1
        listening = Receiver()
        server = await serve_receiver(listening, port)
        stats = await settle(simulator)
    await server.close()
    assert len(listening.arrivals) == 1
    assert (stats["sent"], stats["acked"], stats["retried"]) == (2, 1, 1)


async def test_a_receipt_is_given_up_once_its_retry_window_is_over(
    session: aiohttp.ClientSession,
) -> None:
    """With callback_retry_for_s 0 a receipt answered 503 is not resent but given up."""
    listening = Receiver(answers=[503])
    server = await serve_receiver(listening)
    async with await simulate(listening.url, callback_retry_for_s=0.0) as simulator:
        await send(session, simulator)
        stats = await settle(simulator)
    await server.close()
    assert len(listening.arrivals) == 1
    assert (stats["sent"], stats["acked"], stats["given_up"], stats["pending"]) == (1, 0, 1, 0)


async def test_every_receipt_is_sent_twice_at_a_duplicate_rate_of_one(
    receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    """Both copies name the same part and status, and both are acknowledged."""
    async with await simulate(receiver.url, callback_duplicate_rate=1.0) as simulator:
        ids = await send(session, simulator, text=TWO_PARTS)
        stats = await settle(simulator)
    pairs = sorted((f["messageId"], f["status"]) for f in receiver.fields())
    assert pairs == sorted([(ids[0], "delivered"), (ids[1], "delivered")] * 2)
    assert (stats["sent"], stats["acked"], stats["decided"]["delivered"]) == (4, 4, 1)


@pytest.mark.parametrize("method", ["md5hash", "sha256"])
async def test_signed_receipts_verify_with_the_receivers_check(
    receiver: Receiver, session: aiohttp.ClientSession, method: str
) -> None:
    """With a signature secret every receipt carries timestamp, nonce and a valid sig."""
    config = {"signature_secret": "shh", "signature_method": method}
    async with await simulate(receiver.url, **config) as simulator:
        await send(session, simulator, **{"client-ref": "a=b&c"})
        await settle(simulator)
    [fields] = receiver.fields()
    assert {"timestamp", "nonce", "sig"} <= set(fields)
    assert verify_vonage_sms(fields, "shh", method, now_s=time.time(), max_age_s=60) is None
    assert verify_vonage_sms(fields, "other", method, now_s=time.time(), max_age_s=60) is not None


async def test_an_early_receipt_reaches_the_receiver_before_the_send_is_answered(
    receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    """At early rate 1.0 the receipt has arrived by the time the send's answer comes back."""
    # A 60 s delay: only the early path could deliver anything during this test.
    config = {"callback_early_rate": 1.0, "callback_delay_ms": 60_000.0}
    async with await simulate(receiver.url, **config) as simulator:
        ids = await send(session, simulator)
        assert [f["messageId"] for f in receiver.fields()] == ids
        stats = await callbacks(simulator)
    assert (stats["sent"], stats["acked"], stats["pending"]) == (1, 1, 0)


async def test_wait_for_callbacks_done_returns_once_every_receipt_is_acked(
    receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    """Random delays, intermediates and duplicates: when it returns, every receipt has arrived."""
    config = {
        "callback_delay_ms": 20.0,
        "callback_intermediate_rate": 0.5,
        "callback_duplicate_rate": 0.5,
    }
    async with await simulate(receiver.url, **config) as simulator:
        for n in range(10):
            await send(session, simulator, to=f"4479111{n:05d}", text=TWO_PARTS)
        stats = await settle(simulator)
    assert stats["pending"] == 0
    assert stats["sent"] == stats["acked"] == len(receiver.arrivals) >= 20
    finals = {(f["messageId"], f["status"]) for f in receiver.fields()}
    assert len({pair for pair in finals if pair[1] == "delivered"}) == 20


async def test_stats_count_decisions_and_name_each_message_by_client_ref_or_first_id(
    receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    """`decided` counts messages; `outcomes` maps each to its decision; the endpoint agrees."""
    async with await simulate(receiver.url) as simulator:
        await send(session, simulator, **{"client-ref": "ok"})
        failed_ids = await send(session, simulator, to=FAILING_TO, text=TWO_PARTS)
        await settle(simulator)
        async with session.get(simulator.url + STATS_PATH) as response:
            stats = (await response.json())["callbacks"]
    assert stats == {
        "sent": 3,
        "acked": 3,
        "retried": 0,
        "given_up": 0,
        "pending": 0,
        "decided": {"delivered": 1, "failed": 1},
        "outcomes": {"ok": "delivered", failed_ids[0]: "failed"},
    }


async def test_outcomes_are_left_out_when_keep_messages_is_off(
    receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    """Big runs keep only the counts."""
    async with await simulate(receiver.url, keep_messages=False) as simulator:
        await send(session, simulator)
        stats = await settle(simulator)
    assert "outcomes" not in stats
    assert stats["decided"] == {"delivered": 1, "failed": 0}


async def test_the_reset_endpoint_zeroes_the_callback_counters(
    receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    """After POST /_simulator/reset the callbacks section starts from zero."""
    async with await simulate(receiver.url) as simulator:
        await send(session, simulator)
        await settle(simulator)
        async with session.post(simulator.url + "/_simulator/reset"):
            pass
        stats = await callbacks(simulator)
    assert stats == {
        "sent": 0,
        "acked": 0,
        "retried": 0,
        "given_up": 0,
        "pending": 0,
        "decided": {"delivered": 0, "failed": 0},
        "outcomes": {},
    }


async def test_without_a_callback_url_nothing_is_decided_or_sent(
    session: aiohttp.ClientSession,
) -> None:
    """The default: no receipts, a zero callbacks section, and waiting for them returns at once."""
    async with await start_simulator(SimulatorConfig()) as simulator:
        await send(session, simulator, to=FAILING_TO)
        stats = await settle(simulator)
    assert (stats["sent"], stats["decided"], stats["outcomes"]) == (
        0,
        {"delivered": 0, "failed": 0},
        {},
    )


async def test_closing_abandons_receipts_still_waiting_for_their_time(
    receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    """Receipts due in a minute do not hold up close(), and none is sent."""
    simulator = await simulate(receiver.url, callback_delay_ms=30_000.0)
    for n in range(20):
        await send(session, simulator, to=f"4479111{n:05d}")
    assert (await callbacks(simulator))["pending"] == 20
    async with asyncio.timeout(5):  # the receipts are due in up to a minute
        await simulator.close()
    assert receiver.arrivals == []


async def test_closing_cancels_an_attempt_the_receiver_has_not_answered(
    session: aiohttp.ClientSession,
) -> None:
    """A receiver that holds the request does not hold up close()."""
    hold = asyncio.Event()
    listening = Receiver(hold=hold)
    server = await serve_receiver(listening)
    simulator = await simulate(listening.url)
    try:
        await send(session, simulator)
        await listening.wait_for(1)
        async with asyncio.timeout(5):  # the receiver would hold the attempt for ever
            await simulator.close()
        assert (await callbacks(simulator))["acked"] == 0
    finally:
        hold.set()
        await server.close()


# --- pure pieces --------------------------------------------------------------------------------

MESSAGE = AcceptedMessage(
    to=TO,
    sender="Shop",
    api_key=KEY,
    network="23410",
    price="0.03330000",
    message_ids=("0A00000000000001", "0A00000000000002"),
    style=RECEIPTS,
    client_ref="r",
)


def test_the_dlr_times_are_the_carrier_and_push_times_in_vonage_formats() -> None:
    """scts is YYMMDDHHMM and message-timestamp `YYYY-MM-DD HH:MM:SS`, both UTC."""
    fields = dlr_fields(MESSAGE, Decision(), PlannedReceipt(1, "delivered"), 1_577_887_230.0)
    assert (fields["scts"], fields["message-timestamp"]) == ("2001011400", "2020-01-01 14:00:30")
    assert fields["messageId"] == "0A00000000000002"


def test_only_the_failed_part_carries_the_err_code() -> None:
    """An intermediate or delivered receipt of a failed message says err-code 0."""
    decision = Decision(failed_part=0, err_code=6)
    statuses = [
        dlr_fields(MESSAGE, decision, PlannedReceipt(part, status), 0.0)["err-code"]
        for part, status in [(0, "failed"), (0, "buffered"), (1, "delivered")]
    ]
    assert statuses == ["6", "0", "0"]


def test_the_decision_is_reproducible_with_a_seed() -> None:
    """The same seed decides the same failed part and err-code."""
    decisions = [
        [decide(MESSAGE, rng, 0.5, magic_numbers=True) for _ in range(20)]
        for rng in (random.Random(3), random.Random(3))
    ]
    assert decisions[0] == decisions[1]
    assert {d.delivered for d in decisions[0]} == {True, False}


def test_the_magic_failure_needs_magic_numbers_on() -> None:
    """With magic numbers off, 9989 is delivered like any number."""
    message = AcceptedMessage(FAILING_TO, "Shop", KEY, "23410", "0.0333", ("0A1",), RECEIPTS)
    assert not decide(message, random.Random(1), 0.0, magic_numbers=True).delivered
    assert decide(message, random.Random(1), 0.0, magic_numbers=False).delivered


def test_an_intermediate_receipt_is_planned_before_its_parts_final_one() -> None:
    """At rate 1.0 each part gets accepted or buffered, then its final status."""
    plan = plan_receipts(MESSAGE, Decision(failed_part=1, err_code=3), random.Random(1), 1.0)
    assert [(p.part, p.status in ("accepted", "buffered")) for p in plan] == [
        (0, True),
        (0, False),
        (1, True),
        (1, False),
    ]
    assert plan[3] == PlannedReceipt(1, "failed")


def test_a_get_receipt_extends_a_query_the_callback_url_already_has() -> None:
    """`?` or `&` as the URL needs; values are form-encoded."""
    request = callback_request("http://h/dlr?k=1", {"a": "x y"}, CallbackFormat.GET)
    assert request == CallbackRequest("GET", "http://h/dlr?k=1&a=x+y")


def test_an_impossible_callback_setting_is_refused_with_its_name() -> None:
    """A probability above 1 or a URL that is not http is a ValueError naming the field."""
    with pytest.raises(ValueError, match="callback_early_rate is a probability"):
        SimulatorConfig(callback_early_rate=1.5)
    with pytest.raises(ValueError, match="callback_url must be an http"):
        SimulatorConfig(callback_url="localhost:9000/dlr")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--callback-format", "bogus"], "'--callback-format': 'bogus' is not one of"),
        (["--callback-url", "ftp://x/dlr"], "callback_url must be an http"),
        (["--signature-method", "crc32"], "'--signature-method': 'crc32' is not one of"),
    ],
)
def test_a_bad_callback_option_is_a_one_line_usage_error(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    """mock-provider exits 2 with one `Error:` line naming the option, before listening."""
    assert message in mock_provider_refusal(capsys, args)
