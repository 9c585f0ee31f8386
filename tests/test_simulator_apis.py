"""The simulator's Vonage Messages API and Twilio: real loopback servers answering in each API's own
shapes, throttling Twilio by segments, and calling back with each API's own signed receipts."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from unittest.mock import ANY
from urllib.parse import parse_qsl

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sms_blaster.receiver.signatures import verify_messages_jwt, verify_twilio
from sms_blaster.simulator import (
    MESSAGES_PATH,
    SMS_PATH,
    RunningSimulator,
    SimulatorConfig,
    start_simulator,
)
from tests.cli_helpers import mock_provider_refusal

KEY, SECRET = "abcd1234", "s3cr3t!"
BASIC = aiohttp.BasicAuth(KEY, SECRET)
APP_ID = "aaaaaaaa-bbbb-4ccc-8ddd-0123456789ab"
SID = "AC" + "0123456789abcdef" * 2
TOKEN = "twilio-token"
TWILIO_AUTH = aiohttp.BasicAuth(SID, TOKEN)
TO = "447911123456"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
THREE_SEGMENTS = "a" * 400  # GSM-7: 3 parts of at most 153 septets
HOOK_SECRET = "hook-secret"
BOUND_S = 2.0  # no wait in these tests comes near this


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: dict[str, Any]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def simulator() -> AsyncIterator[RunningSimulator]:
    async with await start_simulator(SimulatorConfig()) as running:
        yield running


def twilio_path(sid: str = SID) -> str:
    return f"/2010-04-01/Accounts/{sid}/Messages.json"


def app_token(claims: dict[str, Any], alg: str = "RS256") -> str:
    """A JWT as an application signs it; the simulator cannot check the signature itself."""

    def segment(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = segment(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    return f"{header}.{segment(json.dumps(claims).encode())}.{segment(b'not-checked')}"


def fresh_claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"application_id": APP_ID, "iat": now, "jti": "j", "exp": now + 900} | overrides


async def post(
    session: aiohttp.ClientSession,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    auth: aiohttp.BasicAuth | None = None,
    timeout_s: float | None = None,
    **kwargs: Any,
) -> Answer:
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with session.post(url, headers=headers, auth=auth, timeout=timeout, **kwargs) as response:
        return Answer(response.status, response.headers, await response.json(content_type=None))


async def send_messages(
    session: aiohttp.ClientSession,
    base_url: str,
    *,
    auth: aiohttp.BasicAuth | None = BASIC,
    headers: Mapping[str, str] | None = None,
    timeout_s: float | None = None,
    **fields: Any,
) -> Answer:
    """POST a Messages API SMS; `to`, `from`, `text` default to a valid message."""
    payload = {"message_type": "text", "channel": "sms", "to": TO, "from": "Shop", "text": "Hi"}
    return await post(
        session,
        base_url + MESSAGES_PATH,
        json=payload | fields,
        auth=auth,
        headers=headers,
        timeout_s=timeout_s,
    )


async def send_twilio(
    session: aiohttp.ClientSession,
    base_url: str,
    *,
    auth: aiohttp.BasicAuth | None = TWILIO_AUTH,
    sid: str = SID,
    timeout_s: float | None = None,
    **fields: str,
) -> Answer:
    """POST a Twilio message; `To`, `From`, `Body` default to a valid message."""
    form = {"To": "+" + TO, "From": "+15005550006", "Body": "Hi"} | fields
    return await post(
        session, base_url + twilio_path(sid), data=form, auth=auth, timeout_s=timeout_s
    )


# --- Messages API answers -----------------------------------------------------------------------


async def test_a_messages_api_send_is_answered_202_with_a_message_uuid(
    simulator: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    """Basic auth, a JSON SMS: 202, `{"message_uuid": …}` and an X-Request-Id header."""
    answer = await send_messages(session, simulator.url, client_ref="r-1")
    assert answer.status == 202
    assert answer.headers["Content-Type"].startswith("application/json")
    assert re.fullmatch(UUID, answer.headers["X-Request-Id"])
    assert answer.body == {"message_uuid": ANY}
    assert re.fullmatch(UUID, answer.body["message_uuid"])
    stats = await simulator.stats()
    [kept] = stats["recipients"][TO]["messages"]
    assert kept == {
        "api": "vonage-messages",
        "id": answer.body["message_uuid"],
        "from": "Shop",
        "text": "Hi",
        "type": "text",
        "client_ref": "r-1",
        "parts": 1,
    }


async def test_an_unexpired_rs256_application_token_is_accepted() -> None:
    """A well-formed RS256 JWT for the configured application gets 202."""
    config = SimulatorConfig(application_id=APP_ID)
    async with await start_simulator(config) as simulator, aiohttp.ClientSession() as session:
        bearer = {"Authorization": "Bearer " + app_token(fresh_claims())}
        answer = await send_messages(session, simulator.url, auth=None, headers=bearer)
    assert answer.status == 202


@pytest.mark.parametrize(
    ("authorization", "detail"),
    [
        (None, "Request header 'Authorization' missing"),
        (BASIC.encode().replace("Basic ", "Basic x"), "Use Basic"),
        (aiohttp.BasicAuth(KEY, "wrong").encode(), "Invalid credentials"),
        ("Bearer " + app_token(fresh_claims(exp=1)), "Invalid Token: expired"),
        ("Bearer " + app_token(fresh_claims(), alg="HS256"), "Invalid Token: alg is not RS256"),
        ("Bearer " + app_token(fresh_claims(application_id="other")), "unknown application_id"),
        ("Bearer " + app_token({"exp": 2**40}), "Invalid Token: no application_id"),
        ("Bearer abc.def", "Invalid Token: not a JWT"),
    ],
)
async def test_messages_api_credentials_are_refused_with_401_when_wrong(
    session: aiohttp.ClientSession, authorization: str | None, detail: str
) -> None:
    """Missing, unreadable or wrong Basic credentials and bad tokens get an RFC 7807 401."""
    config = SimulatorConfig(api_key=KEY, api_secret=SECRET, application_id=APP_ID)
    headers = {} if authorization is None else {"Authorization": authorization}
    async with await start_simulator(config) as simulator:
        answer = await send_messages(session, simulator.url, auth=None, headers=headers)
        stats = await simulator.stats()
    assert answer.status == 401
    assert answer.headers["Content-Type"].startswith("application/problem+json")
    assert answer.body["type"] == "https://developer.vonage.com/api-errors/#unathorized"
    assert detail in answer.body["detail"]
    assert answer.body["instance"] == answer.headers["X-Request-Id"]
    assert (stats["accepted"], stats["rejected"]) == (0, 1)


@pytest.mark.parametrize(
    ("fields", "fragment", "parameter"),
    [
        ({"channel": "whatsapp"}, "messages#1100", None),
        ({"message_type": "image"}, "messages#1140", None),
        ({"to": "+447911123456"}, "messages#1150", "to"),
        ({"text": ""}, "messages#1150", "text"),
        ({"text": "a" * 1001}, "messages#1150", "text"),
        ({"client_ref": "r" * 101}, "messages#1150", "client_ref"),
        ({"webhook_url": "ftp://x/status"}, "messages#1150", "webhook_url"),
        ({"sms": {"encoding_type": "binary"}}, "messages#1150", "sms.encoding_type"),
    ],
)
async def test_invalid_messages_api_parameters_get_422_naming_them(
    simulator: RunningSimulator,
    session: aiohttp.ClientSession,
    fields: dict[str, Any],
    fragment: str,
    parameter: str | None,
) -> None:
    """A request the SMS channel cannot take is a 422 whose type names the error."""
    answer = await send_messages(session, simulator.url, **fields)
    assert answer.status == 422
    assert answer.body["type"].endswith(fragment)
    if parameter is not None:
        assert answer.body["invalid_parameters"][0]["name"] == parameter


async def test_a_body_that_is_not_json_gets_422_invalid_json(
    simulator: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    """Vonage's own `invalid-json` problem."""
    url = simulator.url + MESSAGES_PATH
    answer = await post(session, url, data=b"to=1", auth=BASIC)
    assert (answer.status, answer.body["title"]) == (422, "Invalid JSON")


# --- Twilio answers -----------------------------------------------------------------------------


async def test_a_twilio_send_is_answered_201_with_twilios_message_resource(
    simulator: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    """Every field of Twilio's message JSON, as it stands at creation: queued, no price yet."""
    answer = await send_twilio(session, simulator.url)
    assert answer.status == 201
    sid = answer.body["sid"]
    assert re.fullmatch(r"SM[0-9a-f]{32}", sid)
    uri = f"/2010-04-01/Accounts/{SID}/Messages/{sid}"
    date = r"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d \+0000"
    assert re.fullmatch(date, answer.body["date_created"])
    assert answer.body == {
        "account_sid": SID,
        "api_version": "2010-04-01",
        "body": "Hi",
        "date_created": ANY,
        "date_sent": None,
        "date_updated": answer.body["date_created"],
        "direction": "outbound-api",
        "error_code": None,
        "error_message": None,
        "from": "+15005550006",
        "messaging_service_sid": None,
        "num_media": "0",
        "num_segments": "1",
        "price": None,
        "price_unit": None,
        "sid": sid,
        "status": "queued",
        "subresource_uris": {"media": f"{uri}/Media.json"},
        "tags": None,
        "to": "+" + TO,
        "uri": f"{uri}.json",
    }
    stats = await simulator.stats()
    assert stats["recipients"][TO]["messages"][0]["api"] == "twilio"


async def test_a_twilio_send_through_a_messaging_service_is_accepted_without_a_sender(
    simulator: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    """The service picks the sender later: status accepted, `from` null, `num_segments` "0"."""
    service = "MG" + "a" * 32
    form = {"To": "+" + TO, "MessagingServiceSid": service, "Body": THREE_SEGMENTS}
    url = simulator.url + twilio_path()
    answer = await post(session, url, data=form, auth=TWILIO_AUTH)
    assert answer.status == 201
    body = answer.body
    assert (body["status"], body["from"], body["num_segments"]) == ("accepted", None, "0")
    assert body["messaging_service_sid"] == service
    assert (await simulator.stats())["accepted_parts"] == 3


@pytest.mark.parametrize(
    ("config", "auth", "path_sid"),
    [
        ({"twilio_auth_token": TOKEN}, aiohttp.BasicAuth(SID, "wrong"), SID),
        ({"twilio_account_sid": SID}, aiohttp.BasicAuth("AC" + "f" * 32, TOKEN), "AC" + "f" * 32),
        ({}, TWILIO_AUTH, "AC" + "f" * 32),  # the path names another account
        ({}, None, SID),
    ],
)
async def test_twilio_credentials_are_refused_with_401_code_20003_when_wrong(
    session: aiohttp.ClientSession,
    config: dict[str, Any],
    auth: aiohttp.BasicAuth | None,
    path_sid: str,
) -> None:
    """A wrong token or account, a path that is not the Basic user's account, or no header."""
    async with await start_simulator(SimulatorConfig(**config)) as simulator:
        answer = await send_twilio(session, simulator.url, auth=auth, sid=path_sid)
    assert answer.status == 401
    assert answer.body == {
        "code": 20003,
        "message": "Authenticate",
        "more_info": "https://www.twilio.com/docs/errors/20003",
        "status": 401,
    }
    assert answer.headers["WWW-Authenticate"] == 'Basic realm="Twilio API"'


@pytest.mark.parametrize(
    ("fields", "code", "message"),
    [
        (
            {"To": "447911123456"},
            21211,
            "The 'To' number 447911123456 is not a valid phone number.",
        ),
        ({"To": ""}, 21604, "A 'To' phone number is required."),
        ({"From": ""}, 21603, "A 'From' phone number is required."),
        ({"Body": ""}, 21602, "Message body is required."),
        ({"Body": "a" * 1601}, 21617, ANY),
        ({"StatusCallback": "http://bad_host/status"}, 21609, ANY),
    ],
)
async def test_invalid_twilio_parameters_get_400_with_twilios_code(
    simulator: RunningSimulator,
    session: aiohttp.ClientSession,
    fields: dict[str, str],
    code: int,
    message: str,
) -> None:
    """Each refusal is Twilio's error JSON with its code and a link to its page."""
    form = {"To": "+" + TO, "From": "+15005550006", "Body": "Hi"} | fields
    url = simulator.url + twilio_path()
    answer = await post(session, url, data=form, auth=TWILIO_AUTH)
    assert answer.status == 400
    assert answer.body == {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": 400,
    }


# --- magic numbers, in each API's shape ---------------------------------------------------------


async def send_to(
    api: str, session: aiohttp.ClientSession, base_url: str, to: str, timeout_s: float | None = None
) -> Answer:
    if api == "messages":
        return await send_messages(session, base_url, to=to, timeout_s=timeout_s)
    return await send_twilio(session, base_url, To="+" + to, timeout_s=timeout_s)


@pytest.mark.parametrize(
    ("api", "suffix", "status", "error"),
    [
        ("messages", "9990", 422, "https://developer.vonage.com/api-errors/messages#1240"),
        ("messages", "9991", 422, "https://developer.vonage.com/api-errors/messages#1150"),
        ("messages", "9992", 401, "https://developer.vonage.com/api-errors/#unathorized"),
        ("messages", "9993", 402, "https://developer.vonage.com/api-errors/#low-balance"),
        ("twilio", "9990", 400, 21610),
        ("twilio", "9991", 400, 21211),
        ("twilio", "9992", 401, 20003),
        ("twilio", "9993", 401, 20003),
    ],
)
async def test_a_permanently_failing_magic_number_fails_every_time_in_the_apis_shape(
    simulator: RunningSimulator,
    session: aiohttp.ClientSession,
    api: str,
    suffix: str,
    status: int,
    error: str | int,
) -> None:
    """9990-9993: the same refusal on every request, never accepted."""
    to = "44770090" + suffix
    answers = [await send_to(api, session, simulator.url, to) for _ in range(2)]
    key = "type" if api == "messages" else "code"
    assert [(a.status, a.body[key]) for a in answers] == [(status, error)] * 2
    assert (await simulator.stats())["accepted"] == 0


@pytest.mark.parametrize(
    ("api", "suffix", "status", "error", "retry_after"),
    [
        ("messages", "9994", 429, "Rate Limit Hit", "1"),
        ("messages", "9995", 503, "Service Unavailable", "1"),
        ("messages", "9998", 500, "Internal Error", None),
        ("twilio", "9994", 429, 20429, None),
        ("twilio", "9995", 503, 20503, "1"),
        ("twilio", "9998", 500, 20500, None),
    ],
)
async def test_a_once_failing_magic_number_is_accepted_on_its_second_request(
    simulator: RunningSimulator,
    session: aiohttp.ClientSession,
    api: str,
    suffix: str,
    status: int,
    error: str | int,
    retry_after: str | None,
) -> None:
    """9994, 9995 and 9998 fail the first request only; only the 503 and Messages 429 say when."""
    to = "44770090" + suffix
    first = await send_to(api, session, simulator.url, to)
    key = "title" if api == "messages" else "code"
    assert (first.status, first.body[key]) == (status, error)
    assert first.headers.get("Retry-After") == retry_after
    second = await send_to(api, session, simulator.url, to)
    assert second.status == (202 if api == "messages" else 201)


@pytest.mark.parametrize("api", ["messages", "twilio"])
async def test_numbers_ending_9996_and_9997_are_accepted_then_unanswered_or_dropped(
    simulator: RunningSimulator, session: aiohttp.ClientSession, api: str
) -> None:
    """The client times out or sees a disconnect, yet both messages count as accepted."""
    with pytest.raises(TimeoutError):
        await send_to(api, session, simulator.url, "447700909996", timeout_s=0.2)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await send_to(api, session, simulator.url, "447700909997")
    stats = await simulator.stats()
    assert (stats["accepted"], stats["faults"]["timeout"], stats["faults"]["reset"]) == (2, 1, 1)


# --- throttling and arrivals --------------------------------------------------------------------


async def test_the_messages_api_throttle_answers_429_with_retry_after_in_seconds(
    session: aiohttp.ClientSession,
) -> None:
    """At 0.001/s with a bucket of 1 the second request waits about 1000 s, said in seconds."""
    async with await start_simulator(SimulatorConfig(rate_per_s=0.001, burst=1)) as simulator:
        assert (await send_messages(session, simulator.url)).status == 202
        throttled = await send_messages(session, simulator.url)
        stats = await simulator.stats()
    assert (throttled.status, throttled.body["title"]) == (429, "Rate Limit Hit")
    assert 990 < int(throttled.headers["Retry-After"]) <= 1000
    assert stats["throttled"] == 1


async def test_twilio_throttles_by_segments_so_a_three_segment_message_takes_three_tokens(
    session: aiohttp.ClientSession,
) -> None:
    """With a bucket of 3, a 3-segment message empties it: the next 1-segment one gets 20429."""
    async with await start_simulator(SimulatorConfig(rate_per_s=0.001, burst=3)) as simulator:
        assert (await send_twilio(session, simulator.url, Body=THREE_SEGMENTS)).status == 201
        throttled = await send_twilio(session, simulator.url)
        stats = await simulator.stats()
    assert (throttled.status, throttled.body["code"]) == (429, 20429)
    assert (stats["accepted"], stats["throttled"]) == (1, 1)


async def test_the_vonage_apis_throttle_by_requests_whatever_the_segments(
    session: aiohttp.ClientSession,
) -> None:
    """The same bucket of 3 lets three 3-segment messages through each Vonage API."""
    async with await start_simulator(SimulatorConfig(rate_per_s=0.001, burst=3)) as simulator:
        for _ in range(3):
            assert (await send_messages(session, simulator.url, text=THREE_SEGMENTS)).status == 202
            form = {"from": "Shop", "to": TO, "text": THREE_SEGMENTS}
            sms = await post(session, simulator.url + SMS_PATH, data=form, auth=BASIC)
            assert sms.body["messages"][0]["status"] == "0"
        stats = await simulator.stats()
    assert (stats["accepted"], stats["accepted_parts"], stats["throttled"]) == (6, 18, 0)


async def test_a_twilio_message_bigger_than_the_bucket_goes_when_the_bucket_is_full(
    session: aiohttp.ClientSession,
) -> None:
    """A bucket of 2 never holds 3 tokens: a full one lets 3 segments through, then owes one."""
    async with await start_simulator(SimulatorConfig(rate_per_s=0.001, burst=2)) as simulator:
        assert (await send_twilio(session, simulator.url, Body=THREE_SEGMENTS)).status == 201
        assert (await send_twilio(session, simulator.url)).status == 429


async def test_arrivals_weigh_each_request_by_its_segments_per_api(
    simulator: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    """Twilio 3 + 1 segments and a 2-part SMS API message: requests and segments, per API too."""
    await send_twilio(session, simulator.url, Body=THREE_SEGMENTS)
    await send_twilio(session, simulator.url, Body="ж" * 70)  # UCS-2, one segment
    form = {"from": "Shop", "to": TO, "text": "a" * 200}
    await post(session, simulator.url + SMS_PATH, data=form, auth=BASIC)
    arrivals = (await simulator.stats())["arrivals"]
    assert arrivals | {"span_s": 0, "by_api": None} == {
        "count": 3,
        "span_s": 0,
        "peak_1s": 3,
        "segments": 6,
        "segments_peak_1s": 6,
        "by_api": None,
    }
    twilio = arrivals["by_api"]["twilio"]
    assert (twilio["count"], twilio["segments"], twilio["segments_peak_1s"]) == (2, 4, 4)
    assert arrivals["by_api"]["vonage-sms"]["segments"] == 2
    assert arrivals["by_api"]["vonage-messages"] == {
        "count": 0,
        "span_s": 0.0,
        "peak_1s": 0,
        "segments": 0,
        "segments_peak_1s": 0,
    }


async def test_a_twilio_request_refused_at_the_door_still_counts_its_segments(
    session: aiohttp.ClientSession,
) -> None:
    """Over the concurrency cap: 429 code 20429, and its 3 segments in the arrivals."""
    async with await start_simulator(SimulatorConfig(max_concurrency=1)) as simulator:
        with pytest.raises(TimeoutError):
            await send_twilio(session, simulator.url, To="+447700909996", timeout_s=0.1)
        refused = await send_twilio(session, simulator.url, Body=THREE_SEGMENTS)
        stats = await simulator.stats()
    assert (refused.status, refused.body["code"]) == (429, 20429)
    assert stats["faults"]["http_429"] == 1
    assert stats["arrivals"]["by_api"]["twilio"]["segments"] == 4


# --- receipts -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call:
    url: str
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.body)
        return value

    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode()))


class Hook:
    """A webhook receiver on loopback that records each call as it came."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.answers: list[int] = []  # HTTP statuses to answer, in order; then 200
        self.url = ""
        self.app = web.Application()
        self.app.router.add_post("/{name}", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.append(Call(str(request.url), request.headers.copy(), await request.read()))
        return web.Response(status=self.answers.pop(0) if self.answers else 200)


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    listening = Hook()
    server = TestServer(listening.app)
    await server.start_server()
    listening.url = str(server.make_url(""))
    try:
        yield listening
    finally:
        await server.close()


async def simulate(**overrides: Any) -> RunningSimulator:
    """A simulator calling back at once, with no duplicates, intermediates or early receipts."""
    settings: dict[str, Any] = {
        "callback_delay_ms": 0.0,
        "callback_duplicate_rate": 0.0,
        "callback_intermediate_rate": 0.0,
        "callback_retry_s": 0.05,
        "seed": 7,
    }
    return await start_simulator(SimulatorConfig(**(settings | overrides)))


async def settle(simulator: RunningSimulator) -> dict[str, Any]:
    """Wait until no receipt is pending; the callbacks stats then."""
    async with asyncio.timeout(BOUND_S):
        await simulator.wait_for_callbacks_done()
    section: dict[str, Any] = (await simulator.stats())["callbacks"]
    return section


def claims_of(authorization: str) -> dict[str, Any]:
    payload = authorization.split(".")[1]
    value: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * 4))
    return value


async def test_a_messages_api_status_webhook_is_signed_json_with_the_documented_fields(
    hook: Hook, session: aiohttp.ClientSession
) -> None:
    """One `delivered` webhook to callback_url, its HS256 JWT verified with the receiver's check."""
    config = {"callback_url": hook.url + "/status", "signature_secret": HOOK_SECRET}
    async with await simulate(**config) as simulator:
        answer = await send_messages(session, simulator.url, client_ref="r-1")
        stats = await settle(simulator)
    [call] = hook.calls
    assert call.url == hook.url + "/status"
    assert call.headers["Content-Type"] == "application/json"
    status = call.json()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", status["timestamp"])
    assert status == {
        "message_uuid": answer.body["message_uuid"],
        "to": TO,
        "from": "Shop",
        "timestamp": ANY,
        "status": "delivered",
        "channel": "sms",
        "client_ref": "r-1",
        "usage": {"currency": "EUR", "price": "0.0333"},
        "destination": {"network_code": "23410"},
    }
    authorization = call.headers["Authorization"]
    now_s = time.time()
    assert (
        verify_messages_jwt(authorization, call.body, HOOK_SECRET, now_s=now_s, max_age_s=60)
        is None
    )
    assert verify_messages_jwt(authorization, call.body, "other", now_s=now_s, max_age_s=60)
    assert claims_of(authorization)["api_key"] == KEY
    assert stats["outcomes"] == {"r-1": "delivered"}


async def test_a_multipart_messages_api_send_gets_one_aggregated_webhook(
    hook: Hook, session: aiohttp.ClientSession
) -> None:
    """Three parts, one webhook: `sms.count_total` "3", and the usage of all three."""
    async with await simulate(callback_url=hook.url + "/status") as simulator:
        await send_messages(session, simulator.url, text=THREE_SEGMENTS)
        await settle(simulator)
    [call] = hook.calls
    status = call.json()
    assert (status["status"], status["sms"], status["usage"]["price"]) == (
        "delivered",
        {"count_total": "3"},
        "0.0999",
    )
    assert "Authorization" not in call.headers  # no secret: unsigned


async def test_a_messages_api_number_ending_9989_is_rejected_with_error_1330(
    hook: Hook, session: aiohttp.ClientSession
) -> None:
    """The message's own webhook_url wins over callback_url; the error names code 1330."""
    async with await simulate(callback_url=hook.url + "/default") as simulator:
        await send_messages(
            session,
            simulator.url,
            to="447700909989",
            client_ref="f",
            webhook_url=hook.url + "/own",
        )
        stats = await settle(simulator)
    [call] = hook.calls
    assert call.url == hook.url + "/own"
    status = call.json()
    assert status["status"] == "rejected"
    assert status["error"] == {
        "type": "https://developer.vonage.com/api-errors/messages#1330",
        "title": "1330",
        "detail": "Delivery failed",
        "instance": ANY,
    }
    assert stats["outcomes"] == {"f": "failed"}


async def test_a_messages_api_webhook_may_be_preceded_by_submitted(
    hook: Hook, session: aiohttp.ClientSession
) -> None:
    """At intermediate rate 1.0 a `submitted` webhook comes besides the final one."""
    config = {"callback_url": hook.url + "/status", "callback_intermediate_rate": 1.0}
    async with await simulate(**config) as simulator:
        await send_messages(session, simulator.url)
        await settle(simulator)
    assert sorted(call.json()["status"] for call in hook.calls) == ["delivered", "submitted"]


async def test_a_webhook_for_an_application_token_send_names_the_application(
    hook: Hook, session: aiohttp.ClientSession
) -> None:
    """The JWT's claims carry the application_id the send's token was for."""
    config = {"callback_url": hook.url + "/status", "signature_secret": HOOK_SECRET}
    bearer = {"Authorization": "Bearer " + app_token(fresh_claims())}
    async with await simulate(**config) as simulator:
        await send_messages(session, simulator.url, auth=None, headers=bearer)
        await settle(simulator)
    [call] = hook.calls
    assert claims_of(call.headers["Authorization"])["application_id"] == APP_ID


async def test_twilio_calls_back_sent_then_delivered_signed_over_the_url_it_called(
    hook: Hook, session: aiohttp.ClientSession
) -> None:
    """A form POST per status to StatusCallback, client_ref kept in its query, signature valid."""
    callback = hook.url + "/twilio?client_ref=r-7"
    async with await simulate(twilio_auth_token=TOKEN) as simulator:
        answer = await send_twilio(session, simulator.url, StatusCallback=callback)
        stats = await settle(simulator)
    sid = answer.body["sid"]
    by_status = {call.form()["MessageStatus"]: call for call in hook.calls}
    assert sorted(by_status) == ["delivered", "sent"]
    for status, call in by_status.items():
        assert call.url == callback
        assert call.headers["Content-Type"] == "application/x-www-form-urlencoded"
        fields = call.form()
        expected = {
            "AccountSid": SID,
            "ApiVersion": "2010-04-01",
            "From": "+15005550006",
            "MessageSid": sid,
            "MessageStatus": status,
            "SmsSid": sid,
            "SmsStatus": status,
            "To": "+" + TO,
        }
        if status == "delivered":
            expected["RawDlrDoneDate"] = ANY
            assert re.fullmatch(r"\d{10}", fields["RawDlrDoneDate"])
        assert fields == expected
        signature = call.headers["X-Twilio-Signature"]
        assert verify_twilio(call.url, fields.items(), signature, TOKEN) is None
        assert verify_twilio(call.url, fields.items(), signature, "other") is not None
    assert stats["outcomes"] == {"r-7": "delivered"}


async def test_twilio_calls_back_only_when_the_send_named_a_status_callback(
    hook: Hook, session: aiohttp.ClientSession
) -> None:
    """callback_url is for the Vonage APIs: a Twilio send without StatusCallback gets nothing."""
    async with await simulate(callback_url=hook.url + "/default") as simulator:
        await send_twilio(session, simulator.url)
        stats = await settle(simulator)
    assert hook.calls == []
    assert stats["decided"] == {"delivered": 0, "failed": 0}


async def test_a_twilio_number_ending_9989_is_undelivered_with_error_30003(
    hook: Hook, session: aiohttp.ClientSession
) -> None:
    """Signed with the token the send used when none is configured; keyed by sid without a ref."""
    async with await simulate() as simulator:
        answer = await send_twilio(
            session, simulator.url, To="+447700909989", StatusCallback=hook.url + "/twilio"
        )
        stats = await settle(simulator)
    final = next(c for c in hook.calls if c.form()["MessageStatus"] != "sent")
    fields = final.form()
    assert (fields["MessageStatus"], fields["ErrorCode"]) == ("undelivered", "30003")
    signature = final.headers["X-Twilio-Signature"]
    assert verify_twilio(final.url, fields.items(), signature, TOKEN) is None
    assert stats["outcomes"] == {answer.body["sid"]: "failed"}


async def test_a_twilio_callback_answered_500_is_sent_again_with_the_same_valid_signature(
    hook: Hook, session: aiohttp.ClientSession
) -> None:
    """Retries work as for the SMS API; each attempt is signed over the same URL and fields."""
    hook.answers = [500]
    async with await simulate() as simulator:
        await send_twilio(session, simulator.url, StatusCallback=hook.url + "/twilio?client_ref=r")
        stats = await settle(simulator)
    assert (stats["sent"], stats["acked"], stats["retried"]) == (3, 2, 1)
    first, again = (c for c in hook.calls if c.form() == hook.calls[0].form())
    assert first.headers["X-Twilio-Signature"] == again.headers["X-Twilio-Signature"]
    for call in hook.calls:
        signature = call.headers["X-Twilio-Signature"]
        assert verify_twilio(call.url, call.form().items(), signature, TOKEN) is None


async def test_an_early_messages_api_webhook_arrives_before_the_send_is_answered(
    hook: Hook, session: aiohttp.ClientSession
) -> None:
    """At early rate 1.0 the webhook is in by the time the 202 comes back."""
    config = {
        "callback_url": hook.url + "/status",
        "callback_early_rate": 1.0,
        "callback_delay_ms": 60_000.0,  # only the early path could deliver during this test
    }
    async with await simulate(**config) as simulator:
        answer = await send_messages(session, simulator.url)
        assert [call.json()["message_uuid"] for call in hook.calls] == [answer.body["message_uuid"]]


async def test_an_sms_api_callback_parameter_wins_over_callback_url(
    hook: Hook, session: aiohttp.ClientSession
) -> None:
    """The send's own `callback` gets its DLR; an unusable one is status 3."""
    async with await simulate(callback_url=hook.url + "/default") as simulator:
        form = {"from": "Shop", "to": TO, "text": "Hi", "callback": hook.url + "/own"}
        await post(session, simulator.url + SMS_PATH, data=form, auth=BASIC)
        await settle(simulator)
        bad = form | {"callback": "not a url"}
        refused = await post(session, simulator.url + SMS_PATH, data=bad, auth=BASIC)
    assert [call.url for call in hook.calls] == [hook.url + "/own"]
    assert refused.body["messages"][0] == {"status": "3", "error-text": "Invalid callback param"}


# --- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--twilio-account-sid", "AC123"], "twilio_account_sid must be AC and 32 hex digits"),
        (["--application-id", " "], "application_id must be non-empty"),
        (["--twilio-auth-token", ""], "twilio_auth_token must be non-empty"),
    ],
)
def test_a_bad_credential_option_is_a_one_line_usage_error(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    """mock-provider exits 2 with one `Error:` line naming the setting, before listening."""
    assert message in mock_provider_refusal(capsys, args)
