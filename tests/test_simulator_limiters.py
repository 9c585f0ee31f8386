"""The simulator's limiter shapes: their arithmetic told the time, and over loopback how each API
spells a refusal for each hint mode, the timeline of outcomes, the cap in service and the queue."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sms_blaster.simulator import (
    MESSAGES_PATH,
    SMS_PATH,
    TIMELINE_PATH,
    TWILIO_PATH,
    SimulatorConfig,
    ThrottleHint,
    start_simulator,
)
from sms_blaster.simulator.limiters import (
    FixedWindow,
    InService,
    Schedule,
    ServiceQueue,
    SlidingLog,
    TokenBucket,
    Verdict,
    parse,
)
from tests.cli_helpers import cli_env, mock_provider_refusal, number, run_cli, write_csv

KEY, SECRET = "abcd1234", "s3cr3t!"
BASIC = aiohttp.BasicAuth(KEY, SECRET)
SID = "AC" + "0123456789abcdef" * 2
TWILIO_AUTH = aiohttp.BasicAuth(SID, "twilio-token")
TO = "447911123456"
HANGS = "447911129996"  # magic: accepted, then never answered
DROPS = "447911129997"  # magic: accepted, then the connection drops
BOUND_S = 5.0  # no answer these tests wait for comes near this
LONG_MS = 60_000.0  # an answer no test waits for
ONE_PER_100_S = "sliding:1:100"  # the second send is refused, told about 100 s


# --- the pure shapes, told the time -------------------------------------------------------------


def refused_wait_s(verdict: Verdict) -> float | None:
    """The wait a refusal tells (None: unknown); fails if the verdict accepted."""
    assert not verdict.accepted
    return verdict.wait_s


def test_the_token_bucket_refills_one_token_per_one_over_rate_seconds() -> None:
    """At 10/s a drained bucket of 1 answers 0.1 s to wait, and has a token again exactly then."""
    bucket = TokenBucket(10, 1)
    assert bucket.admit(100.0).accepted
    assert bucket.admit(100.0).wait_s == pytest.approx(0.1)
    assert bucket.admit(100.05).wait_s == pytest.approx(0.05)
    assert bucket.admit(100.1).accepted


def test_a_cost_above_the_burst_is_taken_from_a_full_bucket_which_then_owes_it() -> None:
    """A 3-unit send through a bucket of 2 goes when full; the next waits for 2 units."""
    bucket = TokenBucket(1, 2)
    assert bucket.admit(0.0, cost=3).accepted
    assert bucket.admit(0.0).wait_s == pytest.approx(2.0)


def test_the_sliding_log_refuses_until_the_oldest_leaves_the_window() -> None:
    """Two per second: the third waits until the first is a second old, then passes."""
    log = SlidingLog(2)
    assert log.admit(10.0).accepted
    assert log.admit(10.4).accepted
    assert refused_wait_s(log.admit(10.5)) == pytest.approx(0.5)
    assert log.admit(11.0).accepted
    assert refused_wait_s(log.admit(11.0)) == pytest.approx(0.4)


def test_the_fixed_window_allows_a_burst_at_each_window_start() -> None:
    """Two per clock second: the third waits for the next whole second, which takes two more."""
    window = FixedWindow(2)
    assert window.admit(10.9).accepted
    assert window.admit(10.95).accepted
    assert refused_wait_s(window.admit(10.99)) == pytest.approx(0.01)
    assert window.admit(11.0).accepted
    assert window.admit(11.0).accepted
    assert not window.admit(11.0).accepted


def test_the_leaky_bucket_refuses_two_requests_closer_than_its_spacing() -> None:
    """150/s without a burst, as nginx counts: 7 whole milliseconds apart pass, 6 do not,
    whatever the average rate; a refusal does not move the clock it counts from."""
    leaky = parse("leaky:150")
    assert leaky.admit(1.0).accepted
    assert refused_wait_s(leaky.admit(1.006)) == pytest.approx(0.1 / 150)
    assert leaky.admit(1.007).accepted
    assert not leaky.admit(1.0139).accepted  # the 13th millisecond: 6 after the last one
    assert leaky.admit(1.014).accepted


def test_the_leaky_bucket_lets_its_burst_through_at_once() -> None:
    """A burst of 2: three in the same millisecond, the fourth refused."""
    leaky = parse("leaky:1000:2")
    assert [leaky.admit(5.0).accepted for _ in range(4)] == [True, True, True, False]


def test_random_refusals_refuse_about_their_share_whatever_the_pace() -> None:
    """`random:0.1` has no limit: a tenth refused at random, as many at 1 or 10,000 a second."""
    slow, fast = parse("random:0.1"), parse("random:0.1")
    slow_refused = sum(not slow.admit(n * 1.0).accepted for n in range(2000))
    fast_refused = sum(not fast.admit(n * 0.0001).accepted for n in range(2000))
    assert 150 <= slow_refused <= 250
    assert 150 <= fast_refused <= 250


def test_the_cap_in_service_refuses_without_a_wait_until_a_place_is_done() -> None:
    """With two in service the third is refused, wait unknown; one done lets the next in."""
    cap = InService(2)
    assert cap.admit(0.0).accepted
    assert cap.admit(0.0).accepted
    assert refused_wait_s(cap.admit(0.0)) is None
    cap.done(0.1)
    assert cap.admit(0.1).accepted


def test_the_queue_delays_each_accepted_request_by_the_work_ahead_of_it() -> None:
    """At 10/s each request waits one more service time than the one before."""
    queue = ServiceQueue(10, 5)
    assert [queue.admit(0.0).queued_s for _ in range(3)] == pytest.approx([0.1, 0.2, 0.3])


def test_the_queue_refuses_beyond_its_depth_and_says_when_there_is_room() -> None:
    """Depth 2 at 1/s: the fourth at once waits 1 s, and passes after exactly that."""
    queue = ServiceQueue(1, 2)
    assert all(queue.admit(0.0).accepted for _ in range(3))
    assert refused_wait_s(queue.admit(0.0)) == pytest.approx(1.0)
    assert queue.admit(1.0).accepted


def test_the_schedule_moves_to_the_next_phase_after_its_seconds() -> None:
    """One per second for 10 s from the first request, then three per second."""
    schedule = parse("sliding:1@10,sliding:3")
    assert schedule.admit(100.0).accepted
    assert not schedule.admit(100.5).accepted
    assert [schedule.admit(110.0).accepted for _ in range(4)] == [True, True, True, False]


def test_a_schedule_returns_a_place_to_the_phase_that_gave_it() -> None:
    """A cap's place taken in phase one and freed in phase two does not enlarge phase two."""
    schedule = Schedule([(InService(1), 10.0), (InService(1), None)])
    assert schedule.admit(0.0).accepted
    assert schedule.admit(10.0).accepted
    schedule.done(10.5)  # the request of phase one is answered
    assert not schedule.admit(10.5).accepted


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "the shape must be one of bucket, sliding, fixed, leaky, concurrency, queue, random"),
        ("drip:5", "'drip:5': the shape must be one of"),
        ("sliding", "sliding takes 1 or 2 numbers"),
        ("queue:150", "queue takes 2 numbers"),
        ("random:1", "SHARE must be below 1"),
        ("sliding:x", "'x' is not a number"),
        ("sliding:nan", "'nan' is not a finite number"),
        ("bucket:0", "every number must be above 0"),
        ("bucket:1e-320", "'1e-320' is out of range (1e-06 to 1e+09)"),
        ("sliding:1:1e300", "'1e300' is out of range"),
        ("concurrency:2.5", "CAP must be a whole number"),
        ("sliding:5,sliding:6", "every phase but the last needs @SECONDS"),
        ("sliding:5@0,sliding:6", "SECONDS must be above 0"),
    ],
)
def test_a_bad_spec_is_refused_with_what_is_wrong(spec: str, message: str) -> None:
    """parse raises ValueError naming the part and the problem."""
    with pytest.raises(ValueError, match=re.escape(message)):
        parse(spec)


# --- over loopback ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: dict[str, Any]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def limited(spec: str = ONE_PER_100_S, **settings: Any) -> SimulatorConfig:
    return SimulatorConfig(limiter=spec, seed=7, **settings)


async def post(session: aiohttp.ClientSession, url: str, **kwargs: Any) -> Answer:
    timeout = aiohttp.ClientTimeout(total=BOUND_S)
    async with session.post(url, timeout=timeout, **kwargs) as response:
        return Answer(response.status, response.headers, await response.json(content_type=None))


async def send_sms(
    session: aiohttp.ClientSession, base_url: str, to: str = TO, key: str = KEY
) -> Answer:
    form = {"from": "Shop", "to": to, "text": "Hi"}
    auth = aiohttp.BasicAuth(key, SECRET)
    return await post(session, base_url + SMS_PATH, data=form, auth=auth)


async def send_messages(session: aiohttp.ClientSession, base_url: str) -> Answer:
    payload = {"message_type": "text", "channel": "sms", "to": TO, "from": "Shop", "text": "Hi"}
    return await post(session, base_url + MESSAGES_PATH, json=payload, auth=BASIC)


async def send_twilio(session: aiohttp.ClientSession, base_url: str, body: str = "Hi") -> Answer:
    form = {"To": "+" + TO, "From": "+15005550006", "Body": body}
    path = TWILIO_PATH.format(account_sid=SID)
    return await post(session, base_url + path, data=form, auth=TWILIO_AUTH)


async def second_answer(
    session: aiohttp.ClientSession, hint: ThrottleHint, send: Any
) -> tuple[Answer, Answer]:
    async with await start_simulator(limited(throttle_hint=hint)) as simulator:
        first = await send(session, simulator.url)
        return first, await send(session, simulator.url)


def sms_wait_ms(answer: Answer) -> int | None:
    assert answer.status == 200
    element = answer.body["messages"][0]
    assert element["status"] == "1"
    match = re.fullmatch(
        r"Throughput Rate Exceeded - please wait (?:\[ (\d+) \] )?and retry", element["error-text"]
    )
    assert match is not None, element
    return None if match.group(1) is None else int(match.group(1))


@pytest.mark.parametrize("hint", list(ThrottleHint))
async def test_the_sms_api_spells_a_limiter_refusal_as_the_hint_mode_says(
    session: aiohttp.ClientSession, hint: ThrottleHint
) -> None:
    """Status 1 with the true wait in ms, with none, with 0-2 s; or HTTP 429 with Retry-After."""
    first, second = await second_answer(session, hint, send_sms)
    assert first.body["messages"][0]["status"] == "0"
    if hint is ThrottleHint.RETRY_AFTER:
        assert second.status == 429
        assert second.headers["Retry-After"] == "100"
        return
    wait_ms = sms_wait_ms(second)
    if hint is ThrottleHint.EXACT:
        assert wait_ms is not None
        assert 90_000 < wait_ms <= 100_000
    elif hint is ThrottleHint.NONE:
        assert wait_ms is None
    else:
        assert wait_ms is not None
        assert 1 <= wait_ms <= 2_000


@pytest.mark.parametrize("hint", list(ThrottleHint))
async def test_the_messages_api_spells_a_limiter_refusal_as_the_hint_mode_says(
    session: aiohttp.ClientSession, hint: ThrottleHint
) -> None:
    """HTTP 429 with Retry-After: the true wait in whole seconds, none, or 1-2 s when wrong."""
    first, second = await second_answer(session, hint, send_messages)
    assert first.status == 202
    assert second.status == 429
    retry_after = second.headers.get("Retry-After")
    if hint is ThrottleHint.NONE:
        assert retry_after is None
    elif hint is ThrottleHint.WRONG:
        assert retry_after in ("1", "2")
    else:
        assert retry_after == "100"


@pytest.mark.parametrize("hint", list(ThrottleHint))
async def test_twilio_spells_a_limiter_refusal_as_the_hint_mode_says(
    session: aiohttp.ClientSession, hint: ThrottleHint
) -> None:
    """HTTP 429 code 20429, without a wait as Twilio documents, except in retry-after mode."""
    first, second = await second_answer(session, hint, send_twilio)
    assert first.status == 201
    assert (second.status, second.body["code"]) == (429, 20429)
    expected = "100" if hint is ThrottleHint.RETRY_AFTER else None
    assert second.headers.get("Retry-After") == expected


async def test_twilio_weighs_a_send_by_its_segments_in_any_limiter(
    session: aiohttp.ClientSession,
) -> None:
    """Three segments fill a sliding log of 3 at once; the next one-segment send is refused."""
    async with await start_simulator(limited("sliding:3:100")) as simulator:
        assert (await send_twilio(session, simulator.url, "a" * 400)).status == 201
        assert (await send_twilio(session, simulator.url)).status == 429


async def test_the_cap_in_service_hints_the_latency_when_exact(
    session: aiohttp.ClientSession,
) -> None:
    """A concurrency refusal knows no wait, so it tells the configured latency."""
    config = limited("concurrency:1", latency_ms=LONG_MS)
    async with await start_simulator(config) as simulator:
        held = asyncio.create_task(send_sms(session, simulator.url))
        await simulator.wait_for_accepted(1)
        assert sms_wait_ms(await send_sms(session, simulator.url)) == LONG_MS
        held.cancel()


async def test_the_timeline_counts_each_arrival_accepted_throttled_or_other(
    session: aiohttp.ClientSession,
) -> None:
    """Two accepted, one refused by the limiter, one bad credential: rows from t=0 that sum so."""
    async with await start_simulator(limited("sliding:2:100", api_key=KEY)) as simulator:
        for _ in range(3):
            await send_sms(session, simulator.url)
        await send_sms(session, simulator.url, key="wrong-key")
        async with session.get(simulator.url + TIMELINE_PATH) as response:
            rows = (await response.json())["arrivals"]
    assert rows[0][0] == 0
    assert [row[0] for row in rows] == sorted({row[0] for row in rows})
    assert [sum(row[column] for row in rows) for column in (1, 2, 3)] == [2, 1, 1]


async def test_a_reset_clears_the_timeline(session: aiohttp.ClientSession) -> None:
    """After POST /_simulator/reset the timeline has no arrivals."""
    async with await start_simulator(limited()) as simulator:
        await send_sms(session, simulator.url)
        await session.post(simulator.url + "/_simulator/reset")
        async with session.get(simulator.url + TIMELINE_PATH) as response:
            assert await response.json() == {"arrivals": []}


async def test_the_cap_in_service_refuses_at_once_without_the_latency(
    session: aiohttp.ClientSession,
) -> None:
    """With the one place held by a minute-long answer, the next send is refused meanwhile."""
    async with await start_simulator(limited("concurrency:1", latency_ms=LONG_MS)) as simulator:
        held = asyncio.create_task(send_sms(session, simulator.url))
        await simulator.wait_for_accepted(1)
        refusal = await send_sms(session, simulator.url)
        assert refusal.body["messages"][0]["status"] == "1"
        assert not held.done()
        held.cancel()


async def test_the_cap_in_service_frees_the_place_once_the_answer_goes_out(
    session: aiohttp.ClientSession,
) -> None:
    """With one place, sends one after another are all accepted."""
    async with await start_simulator(limited("concurrency:1", latency_ms=5)) as simulator:
        for _ in range(3):
            assert (await send_sms(session, simulator.url)).body["messages"][0]["status"] == "0"


@pytest.mark.parametrize("to", [HANGS, DROPS])
async def test_the_cap_in_service_frees_the_place_of_a_dropped_or_unanswered_send(
    session: aiohttp.ClientSession, to: str
) -> None:
    """An accepted send that is never answered, or dropped, does not hold its place for ever."""
    async with await start_simulator(limited("concurrency:1")) as simulator:
        lost = asyncio.create_task(send_sms(session, simulator.url, to=to))
        await simulator.wait_for_accepted(1)
        if to == DROPS:
            with pytest.raises(aiohttp.ClientError):
                await lost
        assert (await send_sms(session, simulator.url)).body["messages"][0]["status"] == "0"
        lost.cancel()


async def test_the_queue_delays_the_answer_by_the_wait_in_it(
    session: aiohttp.ClientSession,
) -> None:
    """Served at one per 1000 s, an accepted send is still waiting after a later refusal answers."""
    config = limited("queue:0.001:5", api_key=KEY)
    async with await start_simulator(config) as simulator:
        queued = asyncio.create_task(send_sms(session, simulator.url))
        await simulator.wait_for_accepted(1)
        bad_key = await send_sms(session, simulator.url, key="wrong-key")
        assert bad_key.body["messages"][0]["status"] == "4"
        assert not queued.done()
        queued.cancel()


async def test_the_queue_adds_nothing_when_it_is_empty_and_fast(
    session: aiohttp.ClientSession,
) -> None:
    """Served at 1000/s with room for 5, a few sends in turn are all accepted."""
    async with await start_simulator(limited("queue:1000:5")) as simulator:
        for _ in range(3):
            assert (await send_sms(session, simulator.url)).body["messages"][0]["status"] == "0"


def test_a_config_with_a_rate_and_a_limiter_is_refused() -> None:
    """One throttle: a limiter replaces rate_per_s and burst."""
    with pytest.raises(ValueError, match="give limiter or rate_per_s"):
        SimulatorConfig(rate_per_s=10, limiter="sliding:10")


def test_a_config_with_a_bad_limiter_names_it() -> None:
    """The spec and parse's message."""
    with pytest.raises(ValueError, match=r"limiter 'sliding:-1': 'sliding:-1': every number"):
        SimulatorConfig(limiter="sliding:-1")


async def test_the_limiter_and_hint_change_while_running(session: aiohttp.ClientSession) -> None:
    """POST /_simulator/config with a limiter and a hint: the next sends meet them."""
    async with await start_simulator(SimulatorConfig()) as simulator:
        change = {"limiter": ONE_PER_100_S, "throttle_hint": "retry-after"}
        async with session.post(simulator.url + "/_simulator/config", json=change) as response:
            assert await response.json() == change
        await send_sms(session, simulator.url)
        assert (await send_sms(session, simulator.url)).status == 429


async def test_an_unknown_hint_in_a_config_change_is_a_400(
    session: aiohttp.ClientSession,
) -> None:
    """The running simulator keeps its settings."""
    async with await start_simulator(SimulatorConfig()) as simulator:
        change = {"throttle_hint": "sometimes"}
        async with session.post(simulator.url + "/_simulator/config", json=change) as response:
            assert response.status == 400


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--limiter", "sliding:10", "--rate", "5"], "give --rate (and --burst) or --limiter"),
        (["--limiter", "sliding:10", "--burst", "5"], "give --rate (and --burst) or --limiter"),
        (["--limiter", "sliding:x"], "Error: --limiter sliding:x: 'sliding:x': 'x' is not a"),
        (["--limiter", "tap:4"], "Error: --limiter tap:4: 'tap:4': the shape must be one of"),
    ],
)
def test_a_bad_limiter_option_is_a_one_line_usage_error(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    """mock-provider exits 2 with one `Error:` line, before listening."""
    assert message in mock_provider_refusal(capsys, args)


# --- the real client ----------------------------------------------------------------------------


PROVIDERS = {
    "vonage": [],
    "vonage-messages": ["--provider", "vonage-messages"],
    "twilio": ["--provider", "twilio"],
}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("provider", "hint"),
    [("vonage", hint) for hint in ThrottleHint]
    + [("vonage-messages", ThrottleHint.NONE), ("twilio", ThrottleHint.RETRY_AFTER)],
)
async def test_the_client_reads_every_hint_form_as_throttled(
    tmp_path: Path, provider: str, hint: ThrottleHint
) -> None:
    """`sms-blaster send` counts the refusals as throttled answers and sends every row once."""
    config = SimulatorConfig(limiter="sliding:3", throttle_hint=hint, seed=7)
    async with await start_simulator(config) as simulator:
        path = write_csv(tmp_path / "c.csv", [(f"N{n}", "+" + number(n)) for n in range(1, 9)])
        env = cli_env(TWILIO_ACCOUNT_SID=SID, TWILIO_AUTH_TOKEN="twilio-token")
        run = await run_cli(
            "send",
            str(path),
            "--base-url",
            simulator.url,
            "--from",
            "+15005550006" if provider == "twilio" else "Shop",
            "--text",
            "Hi {name}",
            "--rate",
            "100",
            *PROVIDERS[provider],
            env=env,
        )
        stats = await simulator.stats()
    assert run.code == 0, run.stderr
    assert [record["status"] for record in run.records] == ["sent"] * 8
    assert stats["accepted"] == 8
    match = re.search(r"flow: (\d+) throttled answers", run.stderr)
    assert match is not None, run.stderr
    assert int(match.group(1)) == stats["throttled"] > 0
