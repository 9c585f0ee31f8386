"""A refused `enqueue` (exit 4 or 2) changes nothing in Redis: the campaign keeps its settings,
rows and "enqueue finished" marker, and its workers behave as the last enqueue that was not
refused set them (real processes, redis-server on loopback)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from sms_blaster.distributed import campaign_meta
from sms_blaster.distributed.keys import CampaignKeys
from sms_blaster.errors import JournalError
from sms_blaster.simulator import RunningSimulator
from tests.cli_helpers import cli_env, run_cli, start_cli
from tests.redis_helpers import redis_contents
from tests.test_distributed import Watched, records_of, simulator_with
from tests.test_quiet_hours_cli import AROUND_NOW, FREE_ZONE, HELD_ZONE

CAMPAIGN = "refusals"
META = f"smsb:c:{{{CAMPAIGN}}}:meta"
ZONES = [HELD_ZONE, FREE_ZONE, HELD_ZONE, FREE_ZONE]  # lines 1 and 3 inside the window now
POOL = "sender,rate\n447000000001,20\n447000000002,20\n"
# The first enqueue's settings, which a refused one (given none of them) must not take away.
SETTINGS = ("--quiet-hours", AROUND_NOW, "--tz-column", "tz", "--ttl", "12h")


def campaign_input(path: Path, zones: list[str]) -> Path:
    """A `name,to,tz` CSV: one UK mobile a row, in the zone given."""
    rows = "".join(f"m{k},+4474{k:04d}0001,{tz}\n" for k, tz in enumerate(zones))
    path.write_text("name,to,tz\n" + rows)
    return path


def enqueue(redis_url: str, *args: str) -> list[str]:
    return ["enqueue", *args, "--redis", redis_url, "--campaign", CAMPAIGN]


# Each gives the arguments of an enqueue (its input first) after the campaign's first one.


def first(tmp_path: Path) -> list[str]:
    """The first enqueue's input, sender and text."""
    return [
        str(tmp_path / "c.csv"),
        "--from-pool",
        str(tmp_path / "pool.csv"),
        "--text",
        "Hi {name}",
    ]


def another_pool(tmp_path: Path) -> list[str]:
    other = tmp_path / "other-pool.csv"
    other.write_text(POOL.replace("447000000002", "447000000003"))
    return [str(tmp_path / "c.csv"), "--from-pool", str(other), "--text", "Hi {name}"]


def the_pools_rates_edited(tmp_path: Path) -> list[str]:
    (tmp_path / "pool.csv").write_text(POOL.replace(",20", ",5"))
    return first(tmp_path)


def another_text(tmp_path: Path) -> list[str]:
    return [*first(tmp_path)[:-1], "Bye {name}"]


def from_instead_of_the_pool(tmp_path: Path) -> list[str]:
    return [str(tmp_path / "c.csv"), "--from", "Shop", "--text", "Hi {name}"]


def another_input(tmp_path: Path) -> list[str]:
    other = campaign_input(tmp_path / "other.csv", [FREE_ZONE])
    return [str(other), *first(tmp_path)[1:]]


def unreadable_optouts(tmp_path: Path) -> list[str]:
    return [*first(tmp_path), "--optouts", str(tmp_path / "no-such-list.csv")]


def output_not_writable(tmp_path: Path) -> list[str]:
    return [*first(tmp_path), "--output", str(tmp_path / "no-such-dir" / "refused.jsonl")]


# (the refused enqueue's arguments, its exit code, what its error line says)
Refusal = tuple[Callable[[Path], list[str]], int, str]
REFUSALS: dict[str, Refusal] = {
    "another pool": (another_pool, 4, "was enqueued with another --from-pool"),
    "the pool's rates edited": (the_pools_rates_edited, 4, "was enqueued with another --from-pool"),
    "another text": (another_text, 4, "was enqueued with another --text"),
    "--from instead of the pool": (from_instead_of_the_pool, 4, "was enqueued with another --from"),
    "another input": (another_input, 4, "was enqueued with another input"),
    "an unreadable --optouts": (unreadable_optouts, 2, "--optouts"),
    "an --output it cannot write": (output_not_writable, 2, "--output"),
}
refusals = pytest.mark.parametrize("refusal", list(REFUSALS.values()), ids=list(REFUSALS))


async def delayed_lines(redis_url: str) -> list[int]:
    client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        members = [str(m) for m in await client.zrange(f"smsb:c:{{{CAMPAIGN}}}:delayed", 0, -1)]
    finally:
        await client.aclose()
    return sorted(int(json.loads(member)[0]) for member in members)


async def meta(redis_url: str) -> dict[str, str]:
    client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        return {str(name): str(value) for name, value in (await client.hgetall(META)).items()}
    finally:
        await client.aclose()


async def enqueued_then_refused(
    redis_url: str, tmp_path: Path, refusal: Refusal
) -> tuple[dict[str, object], dict[str, object]]:
    """Enqueue the campaign with a pool, quiet hours and a ttl, then the refused enqueue (with
    none of those three); Redis's contents before and after it."""
    (tmp_path / "pool.csv").write_text(POOL)
    campaign_input(tmp_path / "c.csv", ZONES)
    enqueued = await run_cli(*enqueue(redis_url, *first(tmp_path), *SETTINGS))
    assert enqueued.code == 0, enqueued.stderr
    before = await redis_contents(redis_url)
    arguments, code, error = refusal
    refused = await run_cli(*enqueue(redis_url, *arguments(tmp_path)))
    assert refused.code == code, refused.stderr
    assert error in refused.stderr
    return before, await redis_contents(redis_url)


@refusals
async def test_a_refused_enqueue_leaves_redis_as_it_was(
    redis_url: str, tmp_path: Path, refusal: Refusal
) -> None:
    """Settings (window, ttl, pool), rows, and the "enqueue finished" marker: all unchanged."""
    before, after = await enqueued_then_refused(redis_url, tmp_path, refusal)
    kept = await meta(redis_url)
    settings = {name: kept.get(name) for name in ("quiet_hours", "ttl_s", "done")}
    assert settings == {"quiet_hours": AROUND_NOW, "ttl_s": "43200", "done": "1"}
    assert after == before


async def worker_to_its_end(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """A worker run to its end: (exit code, stdout, stderr). Fails at once, the worker killed,
    when it waits for the campaign's enqueue to finish (it would wait forever)."""
    watched = Watched(await start_cli(*argv, env=env))
    try:
        async with asyncio.timeout(60):
            waiting = await watched.wait_for("enqueue has not finished")
            if waiting:
                watched.process.kill()
            code, stdout, stderr = await watched.finish()
    finally:
        if watched.process.returncode is None:
            watched.process.kill()
            await watched.process.wait()
    assert not waiting, f"the worker waits for an enqueue to finish:\n{stderr}"
    return code, stdout.decode(), stderr


@pytest.mark.slow
@refusals
async def test_after_a_refused_enqueue_workers_keep_the_campaigns_settings(
    redis_url: str, tmp_path: Path, refusal: Refusal
) -> None:
    """A Twilio worker is refused the 12h ttl (exit 2, nothing sent); a Vonage one puts the rows
    inside quiet hours off, sends the others with the ttl, and exits with the campaign drained."""
    await enqueued_then_refused(redis_url, tmp_path, refusal)
    twilio_env = cli_env(TWILIO_ACCOUNT_SID="AC" + "0" * 32, TWILIO_AUTH_TOKEN="token")
    async with simulator_with() as simulator:
        code, _, stderr = await worker_to_its_end(
            *worker(redis_url, simulator, "--provider", "twilio"), env=twilio_env
        )
        assert code == 2, stderr
        assert f"campaign '{CAMPAIGN}' was enqueued with --ttl 12h" in stderr
        assert (await simulator.stats())["requests"] == 0

        code, stdout, stderr = await worker_to_its_end(*worker(redis_url, simulator))

        stats = await simulator.stats()
    assert code == 0, stderr
    assert {r["line"]: r["status"] for r in records_of(stdout.encode())} == {2: "sent", 4: "sent"}
    assert await delayed_lines(redis_url) == [1, 3]
    assert "2 rows wait for them to end" in stderr
    ttls = [m.get("ttl_s") for seen in stats["recipients"].values() for m in seen["messages"]]
    assert ttls == [43_200, 43_200]


@pytest.mark.parametrize(
    "refusal", [REFUSALS["an unreadable --optouts"], REFUSALS["an --output it cannot write"]],
    ids=["an unreadable --optouts", "an --output it cannot write"],
)  # fmt: skip
async def test_a_refused_first_enqueue_creates_no_campaign(
    redis_url: str, tmp_path: Path, refusal: Refusal
) -> None:
    """Redis stays empty, so a worker says the campaign was never enqueued (exit 2) rather
    than wait for an enqueue to finish."""
    (tmp_path / "pool.csv").write_text(POOL)
    campaign_input(tmp_path / "c.csv", ZONES)
    arguments, code, error = refusal
    refused = await run_cli(*enqueue(redis_url, *arguments(tmp_path), *SETTINGS))
    assert refused.code == code, refused.stderr
    assert error in refused.stderr
    assert await redis_contents(redis_url) == {}
    async with simulator_with() as simulator:
        code, _, stderr = await worker_to_its_end(*worker(redis_url, simulator))
    assert code == 2, stderr
    assert f"no campaign '{CAMPAIGN}'" in stderr


def worker(redis_url: str, simulator: RunningSimulator, *extra: str) -> list[str]:
    return ["worker", "--redis", redis_url, "--campaign", CAMPAIGN, "--base-url", simulator.url,
            "--no-progress", *extra]  # fmt: skip


def wanted(text: str) -> campaign_meta.EnqueueSettings:
    fields = {"input": "/c.csv", "text": text, "sender": "Shop", "to_column": "to",
              "default_region": ""}  # fmt: skip
    return campaign_meta.EnqueueSettings(f"id-{text}", fields, None, 3600, "")


async def test_two_enqueues_creating_a_campaign_at_once_leave_one_whole_campaign(
    redis_url: str,
) -> None:
    """Two first enqueues with other texts, at once (twenty times): one makes the campaign, the
    other is refused naming --text (never an empty field half written), and the settings are
    all the first's."""
    clients = [aioredis.from_url(redis_url, decode_responses=True) for _ in range(2)]
    try:
        for round_ in range(20):
            keys = CampaignKeys(f"race{round_}")
            ended = await asyncio.gather(
                *(campaign_meta.keep(client, keys, wanted(text))
                  for client, text in zip(clients, ["Hi", "Bye"], strict=True)),
                return_exceptions=True,
            )  # fmt: skip
            [kept] = [end for end in ended if isinstance(end, campaign_meta.Kept)]
            [refused] = [end for end in ended if isinstance(end, JournalError)]
            text = kept.campaign_id.removeprefix("id-")
            other = "Bye" if text == "Hi" else "Hi"
            assert f"another --text ({text!r}, now {other!r})" in str(refused)
            meta = await clients[0].hgetall(keys.meta)
            assert meta.keys() >= {"campaign_id", "created_at", "done", "ttl_s"}
            assert (meta["campaign_id"], meta["text"]) == (kept.campaign_id, text)
    finally:
        for client in clients:
            await client.aclose()
