"""The simulator's control endpoint and its reset-before-read fault, over loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from sms_blaster.simulator import CONFIG_PATH, SMS_PATH, SimulatorConfig, start_simulator
from sms_blaster.simulator.provider import RunningSimulator

KEY, SECRET = "soakkey", "right-secret"
FORM = {"from": "Shop", "to": "447911123456", "text": "Hello"}


@pytest.fixture
async def simulator() -> AsyncIterator[RunningSimulator]:
    async with await start_simulator(SimulatorConfig(api_key=KEY, api_secret=SECRET)) as running:
        yield running


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def send_status(session: aiohttp.ClientSession, url: str) -> str:
    """The SMS API status of one send with the right credentials."""
    auth = aiohttp.BasicAuth(KEY, SECRET)
    async with session.post(url + SMS_PATH, data=FORM, auth=auth) as response:
        body = await response.json(content_type=None)
    return str(body["messages"][0]["status"])


async def configure(
    session: aiohttp.ClientSession, url: str, changes: Any
) -> tuple[int, dict[str, Any]]:
    async with session.post(url + CONFIG_PATH, json=changes) as response:
        return response.status, await response.json()


async def test_credentials_revoked_through_the_control_endpoint_are_refused(
    simulator: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    """A secret changed mid-run makes the old one bad credentials (status 4)."""
    assert await configure(session, simulator.url, {"api_secret": "rotated"}) == (
        200,
        {"api_secret": "rotated"},
    )
    assert await send_status(session, simulator.url) == "4"


async def test_credentials_restored_through_the_control_endpoint_are_accepted_again(
    simulator: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    """Revoking and then restoring the secret lets sends through again."""
    await configure(session, simulator.url, {"api_secret": "rotated"})
    await configure(session, simulator.url, {"api_secret": SECRET})
    assert await send_status(session, simulator.url) == "0"


async def test_the_control_endpoint_refuses_a_setting_it_cannot_change(
    simulator: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    """Only faults, latency, throttle and credentials can change: anything else is a 400."""
    status, body = await configure(session, simulator.url, {"price_per_part": "1"})
    assert status == 400
    assert "cannot change price_per_part" in body["error"]


async def test_the_control_endpoint_refuses_an_invalid_value(
    simulator: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    """A probability above 1 is refused, and the running settings stay as they were."""
    status, body = await configure(session, simulator.url, {"timeout_rate": 2})
    assert status == 400
    assert "timeout_rate is a probability" in body["error"]
    assert await send_status(session, simulator.url) == "0"


async def test_a_reset_before_the_request_is_read_accepts_nothing(
    session: aiohttp.ClientSession,
) -> None:
    """With reset_before_rate 1 every connection drops unanswered and nothing is accepted."""
    config = SimulatorConfig(reset_before_rate=1.0)
    async with await start_simulator(config) as simulator:
        auth = aiohttp.BasicAuth(KEY, SECRET)
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await session.post(simulator.url + SMS_PATH, data=FORM, auth=auth)
        stats = await simulator.stats()
    assert (stats["accepted"], stats["faults"]["reset_before"]) == (0, 1)
