"""The provider simulator: a real loopback server that must answer like the Vonage SMS API."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from typing import Any
from unittest.mock import ANY

import aiohttp
import pytest

from sms_blaster.simulator import SimulatorConfig, serve, start_simulator
from sms_blaster.simulator.answers import basic_credentials
from sms_blaster.simulator.provider import RESET_PATH, STATS_PATH, RunningSimulator
from sms_blaster.simulator.sms_api import SMS_PATH, wait_ms
from sms_blaster.simulator.stats import arrival_summary

KEY, SECRET = "abcd1234", "s3cr3t!"
TO = "447911123456"
BASIC = aiohttp.BasicAuth(KEY, SECRET)
LONG_GSM = "a" * 200  # 2 parts of at most 153 septets
Answer = tuple[int, dict[str, Any]]


@pytest.fixture
async def simulator() -> AsyncIterator[RunningSimulator]:
    async with await start_simulator(SimulatorConfig()) as running:
        yield running


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def send(
    session: aiohttp.ClientSession,
    url: str,
    extra: dict[str, str] | None = None,
    *,
    auth: aiohttp.BasicAuth | None = BASIC,
    timeout_s: float | None = None,
    **fields: str,
) -> Answer:
    """POST a form body to /sms/json; `to`, `from` and `text` default to a valid message."""
    form = {"from": "Shop", "to": TO, "text": "Hello"} | (extra or {}) | fields
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with session.post(url + SMS_PATH, data=form, auth=auth, timeout=timeout) as response:
        return response.status, await response.json(content_type=None)


def first(answer: Answer) -> dict[str, Any]:
    """The first element of `messages` in an HTTP 200 answer."""
    status, body = answer
    assert status == 200
    element: dict[str, Any] = body["messages"][0]
    return element


async def test_form_body_with_basic_auth_is_accepted_with_the_exact_vonage_shape(
    simulator: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    """A form post with Basic auth gets HTTP 200 and Vonage's success body, numbers as strings."""
    status, body = await send(session, simulator.url, {"client-ref": "run-1"})
    assert status == 200
    assert body == {
        "message-count": "1",
        "messages": [
            {
                "to": TO,
                "message-id": ANY,
                "status": "0",
                "remaining-balance": "99.96670000",
                "message-price": "0.03330000",
                "network": "23410",
                "client-ref": "run-1",
            }
        ],
    }
    assert re.fullmatch(r"[0-9A-F]{16}", body["messages"][0]["message-id"])


async def test_json_body_with_credentials_in_the_body_is_accepted(
    simulator: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    """A JSON body carrying api_key and api_secret is read like a form."""
    payload = {"api_key": KEY, "api_secret": SECRET, "from": "Shop", "to": TO, "text": "Hi"}
    async with session.post(simulator.url + SMS_PATH, json=payload) as response:
        body = await response.json()
    assert body["messages"][0]["status"] == "0"


async def test_wrong_credentials_get_status_4() -> None:
    """With credentials configured, any other key gets status 4 Bad Credentials."""
    config = SimulatorConfig(api_key=KEY, api_secret=SECRET)
    async with await start_simulator(config) as simulator, aiohttp.ClientSession() as session:
        answer = await send(session, simulator.url, auth=aiohttp.BasicAuth(KEY, "wrong"))
        stats = await simulator.stats()
    assert first(answer) == {"status": "4", "error-text": "Bad Credentials"}
    assert (stats["accepted"], stats["rejected"]) == (0, 1)


async def test_missing_credentials_get_status_2(
    simulator: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    """No Basic header and no api_key in the body: status 2 Missing api_key."""
    answer = await send(session, simulator.url, auth=None)
    assert first(answer) == {"status": "2", "error-text": "Missing api_key"}


async def test_a_missing_parameter_gets_status_2_naming_it(
    simulator: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    """An empty `to` gets status 2 `Missing to param`."""
    answer = await send(session, simulator.url, to="")
    assert first(answer) == {"status": "2", "error-text": "Missing to param"}


@pytest.mark.parametrize(
    ("fields", "error_text"),
    [
        ({"to": "+447911123456"}, "Invalid to address"),
        ({"to": "123456"}, "Invalid to address"),
        ({"type": "binary"}, "Invalid type param"),
    ],
)
async def test_an_invalid_parameter_gets_status_3(
    simulator: RunningSimulator,
    session: aiohttp.ClientSession,
    fields: dict[str, str],
    error_text: str,
) -> None:
    """`to` outside \\d{7,15} or a `type` other than text/unicode gets status 3."""
    answer = await send(session, simulator.url, fields)
    assert first(answer) == {"status": "3", "error-text": error_text}


async def test_a_long_gsm_text_is_two_parts_with_distinct_ids_and_decreasing_balance(
    simulator: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    """200 GSM-7 characters give two elements, each with its own id, charged one after the other."""
    status, body = await send(session, simulator.url, text=LONG_GSM)
    parts = body["messages"]
    assert (status, body["message-count"], len(parts)) == (200, "2", 2)
    assert parts[0]["message-id"] != parts[1]["message-id"]
    assert [part["remaining-balance"] for part in parts] == ["99.96670000", "99.93340000"]


async def test_unicode_messages_are_counted_in_ucs2_parts(
    simulator: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    """71 Cyrillic letters fit one GSM-sized SMS by length but take two UCS-2 parts."""
    status, body = await send(session, simulator.url, text="ж" * 71, type="unicode")
    assert (status, body["message-count"]) == (200, "2")
    assert (await simulator.stats())["accepted_parts"] == 2


async def test_non_gsm_text_sent_as_type_text_is_counted(
    simulator: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    """A `type=text` message with an emoji bumps non_gsm_as_text; the same as unicode does not."""
    await send(session, simulator.url, text="Hi 😀")
    await send(session, simulator.url, text="Hi 😀", type="unicode")
    assert (await simulator.stats())["non_gsm_as_text"] == 1


@pytest.mark.parametrize(
    ("to", "status", "error_text"),
    [
        ("447700909990", "7", "Number barred."),
        ("447700909991", "6", "Invalid Message"),
        ("447700909992", "4", "Bad Credentials"),
        ("447700909993", "9", "Quota Exceeded - rejected"),
    ],
)
async def test_a_permanently_failing_magic_number_fails_every_time(
    simulator: RunningSimulator,
    session: aiohttp.ClientSession,
    to: str,
    status: str,
    error_text: str,
) -> None:
    """Numbers ending 9990-9993 get the same refusal on every request and are never accepted."""
    answers = [first(await send(session, simulator.url, to=to)) for _ in range(2)]
    assert answers == [{"status": status, "error-text": error_text}] * 2
    assert (await simulator.stats())["accepted"] == 0


@pytest.mark.parametrize(
    ("to", "status", "error_text"),
    [
        ("447700909994", "1", "Throughput Rate Exceeded - please wait [ 50 ] and retry"),
        ("447700909998", "5", "Server Error"),
    ],
)
async def test_a_once_failing_magic_number_is_accepted_on_its_second_request(
    simulator: RunningSimulator,
    session: aiohttp.ClientSession,
    to: str,
    status: str,
    error_text: str,
) -> None:
    """Numbers ending 9994 and 9998 fail their first request only."""
    assert first(await send(session, simulator.url, to=to)) == {
        "status": status,
        "error-text": error_text,
    }
    assert first(await send(session, simulator.url, to=to))["status"] == "0"


async def test_a_number_ending_9995_gets_http_503_once_then_is_accepted(
    simulator: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    """The first request gets HTTP 503 and is not accepted; the second is accepted."""
    status, _ = await send(session, simulator.url, to="447700909995")
    assert status == 503
    assert first(await send(session, simulator.url, to="447700909995"))["status"] == "0"
    stats = await simulator.stats()
    assert (stats["accepted"], stats["faults"]["http_503"]) == (1, 1)


async def test_a_number_ending_9996_is_accepted_but_never_answered(
    simulator: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    """The client times out, yet the message counts as accepted."""
    with pytest.raises(TimeoutError):
        await send(session, simulator.url, to="447700909996", timeout_s=0.2)
    stats = await simulator.stats()
    assert (stats["accepted"], stats["faults"]["timeout"]) == (1, 1)


async def test_a_number_ending_9997_is_accepted_then_disconnected(
    simulator: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    """The client sees the server disconnect, yet the message counts as accepted."""
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await send(session, simulator.url, to="447700909997")
    stats = await simulator.stats()
    assert (stats["accepted"], stats["faults"]["reset"]) == (1, 1)


async def test_a_burst_above_the_bucket_is_throttled_with_a_wait_in_ms() -> None:
    """At 0.001/s with a bucket of 1, the second request is refused with the wait until a token."""
    config = SimulatorConfig(rate_per_s=0.001, burst=1)
    async with await start_simulator(config) as simulator, aiohttp.ClientSession() as session:
        accepted = first(await send(session, simulator.url))
        throttled = first(await send(session, simulator.url))
        stats = await simulator.stats()
    assert accepted["status"] == "0"
    assert throttled["status"] == "1"
    wait = re.fullmatch(
        r"Throughput Rate Exceeded - please wait \[ (\d+) \] and retry", throttled["error-text"]
    )
    assert wait is not None
    assert 990_000 < int(wait[1]) <= 1_000_000  # a token every 1000 s
    assert (stats["accepted"], stats["throttled"]) == (1, 1)


async def test_the_throttle_is_per_api_key() -> None:
    """Another key has its own bucket, so it is accepted while the first key is throttled."""
    config = SimulatorConfig(rate_per_s=0.001, burst=1)
    async with await start_simulator(config) as simulator, aiohttp.ClientSession() as session:
        await send(session, simulator.url)
        other = aiohttp.BasicAuth("other-key", SECRET)
        assert first(await send(session, simulator.url, auth=other))["status"] == "0"


def test_the_wait_is_whole_milliseconds_rounded_up_and_at_least_one() -> None:
    """Clients sleep the wait they are told, so it never rounds down to an early retry."""
    assert [wait_ms(0.0001), wait_ms(0.0501), wait_ms(0.05)] == [1, 51, 50]


def test_basic_credentials_are_read_from_the_authorization_header() -> None:
    """`Basic base64(key:secret)` gives the pair; anything unreadable gives empty strings."""
    assert basic_credentials(BASIC.encode()) == (KEY, SECRET)
    assert basic_credentials("Bearer abc") == ("", "")
    assert basic_credentials("Basic !!!") == ("", "")


async def test_a_request_beyond_max_concurrency_gets_http_429_with_retry_after() -> None:
    """With the one slot held by a request that never answers, the next gets HTTP 429."""
    config = SimulatorConfig(max_concurrency=1)
    async with await start_simulator(config) as simulator, aiohttp.ClientSession() as session:
        with pytest.raises(TimeoutError):
            await send(session, simulator.url, to="447700909996", timeout_s=0.1)
        form = {"from": "Shop", "to": TO, "text": "Hi"}
        async with session.post(simulator.url + SMS_PATH, data=form, auth=BASIC) as response:
            assert (response.status, response.headers["Retry-After"]) == (429, "1")
        stats = await simulator.stats()
    assert (stats["accepted"], stats["faults"]["http_429"], stats["max_in_flight"]) == (1, 1, 1)


async def test_the_503_fault_refuses_before_accepting() -> None:
    """At error_5xx_rate 1.0 every request gets HTTP 503 and nothing is accepted."""
    config = SimulatorConfig(error_5xx_rate=1.0, seed=1)
    async with await start_simulator(config) as simulator, aiohttp.ClientSession() as session:
        status, _ = await send(session, simulator.url)
        stats = await simulator.stats()
    assert status == 503
    assert (stats["accepted"], stats["faults"]["http_503"]) == (0, 1)


async def test_the_timeout_fault_accepts_then_never_answers() -> None:
    """At timeout_rate 1.0 a client with a 0.2 s timeout times out on an accepted message."""
    config = SimulatorConfig(timeout_rate=1.0, seed=1)
    async with await start_simulator(config) as simulator, aiohttp.ClientSession() as session:
        with pytest.raises(TimeoutError):
            await send(session, simulator.url, timeout_s=0.2)
        stats = await simulator.stats()
    assert (stats["accepted"], stats["faults"]["timeout"]) == (1, 1)


async def test_the_reset_fault_accepts_then_drops_the_connection() -> None:
    """At reset_rate 1.0 the client sees a disconnect, yet the message is accepted."""
    config = SimulatorConfig(reset_rate=1.0, seed=1)
    async with await start_simulator(config) as simulator, aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await send(session, simulator.url)
        stats = await simulator.stats()
    assert (stats["accepted"], stats["faults"]["reset"]) == (1, 1)


async def test_latency_is_added_before_the_answer() -> None:
    """With latency_ms 50 no answer comes sooner than 50 ms."""
    config = SimulatorConfig(latency_ms=50)
    async with await start_simulator(config) as simulator, aiohttp.ClientSession() as session:
        started_s = time.perf_counter()
        await send(session, simulator.url)
        assert time.perf_counter() - started_s >= 0.05


async def test_closing_does_not_wait_for_a_request_that_never_answers() -> None:
    """close() wakes hung requests, so it returns at once instead of after an hour."""
    simulator = await start_simulator(SimulatorConfig())
    async with aiohttp.ClientSession() as session:
        hung = asyncio.create_task(send(session, simulator.url, to="447700909996"))
        async with asyncio.timeout(5):
            while (await simulator.stats())["requests"] < 1:  # noqa: ASYNC110
                await asyncio.sleep(0.01)  # until the server has taken it: no event to wait on
        assert not hung.done()
        async with asyncio.timeout(5):  # far less than the hour the request would hang
            await simulator.close()
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await hung


async def test_stats_count_requests_and_messages_per_recipient(
    simulator: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    """The stats endpoint lists each number's requests, acceptances and messages."""
    await send(session, simulator.url, {"client-ref": "r-1"}, text=LONG_GSM)
    await send(session, simulator.url, to="447700909990")
    async with session.get(simulator.url + STATS_PATH) as response:
        stats = await response.json()
    assert stats == await simulator.stats()
    assert stats["recipients"] == {
        TO: {
            "requests": 1,
            "accepted": 1,
            "messages": [
                {
                    "api": "vonage-sms",
                    "id": ANY,
                    "from": "Shop",
                    "text": LONG_GSM,
                    "type": "text",
                    "client_ref": "r-1",
                    "parts": 2,
                }
            ],
        },
        "447700909990": {"requests": 1, "accepted": 0, "messages": []},
    }
    assert (stats["requests"], stats["accepted_parts"], stats["rejected"]) == (2, 2, 1)


async def test_stats_leave_out_messages_when_keep_messages_is_off() -> None:
    """Benchmarks turn keep_messages off so the stats stay small."""
    config = SimulatorConfig(keep_messages=False)
    async with await start_simulator(config) as simulator, aiohttp.ClientSession() as session:
        await send(session, simulator.url)
        stats = await simulator.stats()
    assert stats["recipients"] == {TO: {"requests": 1, "accepted": 1}}


async def test_the_reset_endpoint_zeroes_the_stats(
    simulator: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    """After POST /_simulator/reset every counter is zero and no recipient is listed."""
    await send(session, simulator.url)
    async with session.post(simulator.url + RESET_PATH) as response:
        assert response.status == 204
    stats = await simulator.stats()
    assert (stats["requests"], stats["accepted"], stats["recipients"]) == (0, 0, {})
    assert set(stats["faults"].values()) == {0}


async def test_the_reset_endpoint_makes_once_failing_numbers_fail_again(
    simulator: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    """The memory of which numbers had their first request is cleared too."""
    await send(session, simulator.url, to="447700909998")
    async with session.post(simulator.url + RESET_PATH):
        pass
    assert first(await send(session, simulator.url, to="447700909998"))["status"] == "5"


async def test_serve_reports_its_url_and_stops_when_cancelled() -> None:
    """serve() calls on_ready with the real port, answers, and closes the port on cancel."""
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    server = asyncio.create_task(serve(SimulatorConfig(), "127.0.0.1", 0, ready.set_result))
    url = await asyncio.wait_for(ready, timeout=5)
    assert re.fullmatch(r"http://127\.0\.0\.1:[1-9]\d*", url)
    async with aiohttp.ClientSession() as session:
        assert first(await send(session, url))["status"] == "0"
        server.cancel()
        with pytest.raises(asyncio.CancelledError):
            await server
        with pytest.raises(aiohttp.ClientConnectionError):
            await send(session, url)


def test_an_impossible_config_is_refused_with_what_to_change() -> None:
    """A probability above 1 is a ValueError that names the field."""
    with pytest.raises(ValueError, match="reset_rate is a probability between 0 and 1"):
        SimulatorConfig(reset_rate=1.5)


def test_arrival_summary_finds_the_busiest_sliding_second() -> None:
    """The peak is over any 1000 ms window, not calendar seconds: 3 + 4 across a boundary."""
    arrivals = {0: 1, 600: 3, 1100: 4, 1700: 1, 2500: 2}
    summary = arrival_summary(arrivals)
    assert summary == {"count": 11, "span_s": 2.5, "peak_1s": 7}
    assert arrival_summary({}) == {"count": 0, "span_s": 0.0, "peak_1s": 0}


async def test_stats_count_every_request_as_an_arrival() -> None:
    """Throttled and refused requests count too: the provider counts requests, not successes."""
    async with await start_simulator(SimulatorConfig(rate_per_s=1, burst=1)) as simulator:
        async with aiohttp.ClientSession() as session:
            for n in range(3):
                await session.post(
                    simulator.url + SMS_PATH,
                    data={
                        "api_key": "k",
                        "api_secret": "s",
                        "from": "X",
                        "to": f"4479111{n:05d}",
                        "text": "hi",
                    },
                )
        stats = await simulator.stats()
    assert stats["arrivals"]["count"] == 3
    assert stats["arrivals"]["peak_1s"] == 3
    assert stats["throttled"] == 2
