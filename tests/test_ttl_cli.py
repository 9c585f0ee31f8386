"""`--ttl` through the real CLI against the simulator: each provider gets the validity period in
its own field and unit, a value it cannot take is refused before anything is sent, expired
receipts reach the report's funnel, a dry run says what it would send, a resume may change it,
and distributed campaigns carry it from `enqueue` to the workers."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sms_blaster.simulator import RunningSimulator, SimulatorConfig, start_simulator
from tests.cli_helpers import Run, cli_env, receiver_process, run_cli, write_csv
from tests.redis_helpers import add_dlrs
from tests.test_providers_end_to_end import ROUTES, provider_args

SECRET = "ttl-secret"
TOKEN = "twilio-ttl-token"
ACCOUNT = "AC" + "0" * 32
ROWS = 12
EXPIRING = {3, 7, 11}  # rows whose numbers end in 9988: the simulator never reaches them in time


def campaign(tmp_path: Path) -> Path:
    rows = []
    for n in range(1, ROWS + 1):
        suffix = "9988" if n in EXPIRING else f"{n:04d}"
        rows.append((f"Ann{n}", f"4476{n:04d}{suffix}"))
    return write_csv(tmp_path / "codes.csv", rows)


def env() -> dict[str, str]:
    return cli_env(TWILIO_ACCOUNT_SID=ACCOUNT, TWILIO_AUTH_TOKEN=TOKEN)


@pytest.fixture
async def simulator() -> AsyncIterator[RunningSimulator]:
    async with await start_simulator(SimulatorConfig(seed=3)) as running:
        yield running


async def send(simulator: RunningSimulator, path: Path, *args: str, **extra: str) -> Run:
    return await run_cli(
        "send", str(path), "--base-url", simulator.url, "--text", "Your code: {name}",
        "--rate", "500", "--no-progress", *args, env=env() | extra,
    )  # fmt: skip


async def ttls_sent(simulator: RunningSimulator) -> list[object]:
    """The validity period of every message the simulator accepted, in seconds."""
    stats = await simulator.stats()
    return [
        message.get("ttl_s")
        for recipient in stats["recipients"].values()
        for message in recipient["messages"]
    ]


@pytest.mark.slow
@pytest.mark.parametrize("provider", list(ROUTES))
async def test_each_provider_gets_the_ttl_and_its_expired_receipts_reach_the_report(
    tmp_path: Path, provider: str
) -> None:
    """Every message carries 10 minutes in the API's unit; the ones never reached in time come
    back expired in the API's words, and the funnel counts them as expired, not failed."""
    path = campaign(tmp_path)
    journal = tmp_path / "codes.csv.journal"
    secrets = {"VONAGE_SIGNATURE_SECRET": SECRET, "TWILIO_AUTH_TOKEN": TOKEN}
    async with receiver_process("--store", str(journal), env=secrets) as receiver:
        callback_url = receiver.url + ROUTES[provider]
        config = SimulatorConfig(
            callback_url=callback_url,
            callback_delay_ms=10,
            callback_retry_s=0.2,
            signature_secret=SECRET,
            twilio_account_sid=ACCOUNT,
            twilio_auth_token=TOKEN,
            seed=5,
        )
        async with await start_simulator(config) as simulator:
            run = await send(
                simulator, path, "--ttl", "10m", "--callback-url", callback_url,
                *provider_args(provider),
            )  # fmt: skip
            async with asyncio.timeout(30):
                await simulator.wait_for_callbacks_done()
            stats = await simulator.stats()
            ttls = await ttls_sent(simulator)
        receiver.process.send_signal(signal.SIGTERM)
        code, _ = await receiver.finish()
    assert run.code == 0, run.stderr
    assert code == 0, "".join(receiver.stderr_lines)
    assert ttls == [600] * ROWS
    assert stats["callbacks"]["decided"] == {
        "delivered": ROWS - len(EXPIRING),
        "failed": 0,
        "expired": len(EXPIRING),
    }
    report = await run_cli("report", str(journal), "--json")
    assert report.code == 0, report.stderr
    (summary,) = json.loads(report.stdout)["campaigns"]
    delivery = summary["delivery"]
    assert (delivery["delivered"], delivery["failed"], delivery["expired"]) == (
        ROWS - len(EXPIRING),
        0,
        len(EXPIRING),
    )
    assert delivery["pending"] == 0
    text = await run_cli("report", str(journal))
    assert f"  expired               {len(EXPIRING)} (25.0%)" in text.stdout.decode()


def one_error(run: Run) -> str:
    """The run refused with exit 2 and one `Error:` line; that line."""
    assert run.code == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


async def test_a_ttl_the_provider_cannot_take_is_refused_before_anything_is_sent(
    tmp_path: Path, simulator: RunningSimulator
) -> None:
    """Twilio keeps a message at most 10 h: 12h is exit 2 naming the bound, no request made."""
    run = await send(simulator, campaign(tmp_path), "--ttl", "12h", *provider_args("twilio"))
    assert one_error(run) == (
        "Error: --ttl 12h: Twilio keeps a message at most 10h (36000 s); give 10h or less"
    )
    assert run.stdout == b""
    assert (await simulator.stats())["requests"] == 0


async def test_a_ttl_that_is_no_duration_is_a_usage_error_with_examples(
    tmp_path: Path, simulator: RunningSimulator
) -> None:
    """From the environment too, naming the variable."""
    run = await send(simulator, campaign(tmp_path), "--from", "Shop", SMS_BLASTER_TTL="4 hours")
    error = one_error(run)
    assert error.startswith("Error: SMS_BLASTER_TTL=4 hours: '4 hours' is not a duration")
    assert "e.g. 90s, 30m, 4h, 1d or 1h30m" in error
    assert (await simulator.stats())["requests"] == 0


async def test_the_ttl_can_come_from_the_environment(
    tmp_path: Path, simulator: RunningSimulator
) -> None:
    """SMS_BLASTER_TTL=1h30m: the SMS API gets 5400000 ms, which the simulator reads as 5400 s."""
    run = await send(simulator, campaign(tmp_path), "--from", "Shop", SMS_BLASTER_TTL="1h30m")
    assert run.code == 0, run.stderr
    assert await ttls_sent(simulator) == [5400] * ROWS


async def test_without_a_ttl_nothing_is_asked_of_the_provider(
    tmp_path: Path, simulator: RunningSimulator
) -> None:
    """The provider's default applies; the records say nothing of a ttl either."""
    run = await send(simulator, campaign(tmp_path), *provider_args("vonage-messages"))
    assert run.code == 0, run.stderr
    assert await ttls_sent(simulator) == [None] * ROWS
    assert all("ttl" not in json.dumps(record) for record in run.records)


async def test_a_dry_run_says_the_ttl_and_how_the_provider_would_get_it(
    tmp_path: Path, simulator: RunningSimulator
) -> None:
    """In its estimate line, in the provider's own field and unit; nothing sent."""
    run = await send(
        simulator, campaign(tmp_path), "--dry-run", "--ttl", "4h", *provider_args("vonage")
    )
    assert run.code == 0, run.stderr
    estimate = next(line for line in run.stderr.splitlines() if "dry run:" in line)
    assert estimate.endswith("; each valid for 4h (the Vonage SMS API ttl=14400000)")
    assert (await simulator.stats())["requests"] == 0


async def test_a_resume_may_change_the_ttl_like_the_rate(
    tmp_path: Path, simulator: RunningSimulator
) -> None:
    """The ttl is not part of what makes the campaign the same: the resume sends with its own."""
    path = campaign(tmp_path)
    first = await send(simulator, path, "--ttl", "1h", "--from", "Shop")
    assert first.code == 0, first.stderr
    more = path.read_text() + "Ann13,447600130013\n"
    path.write_text(more)
    again = await send(simulator, path, "--ttl", "2h", "--from", "Shop")
    assert again.code == 0, again.stderr
    assert await ttls_sent(simulator) == [3600] * ROWS + [7200]


# --- distributed: enqueue keeps it, each worker's provider must take it -------------------------


def enqueue(redis_url: str, path: Path, *extra: str) -> list[str]:
    return ["enqueue", str(path), "--redis", redis_url, "--campaign", "codes",
            "--from", "Shop", "--text", "Your code: {name}", *extra]  # fmt: skip


def worker(redis_url: str, simulator: RunningSimulator, *extra: str) -> list[str]:
    return ["worker", "--redis", redis_url, "--campaign", "codes", "--base-url", simulator.url,
            "--rate", "500", "--no-progress", *extra]  # fmt: skip


@pytest.mark.slow
async def test_workers_send_with_the_ttl_enqueue_gave_when_their_provider_takes_it(
    redis_url: str, tmp_path: Path, simulator: RunningSimulator
) -> None:
    """12h: a Twilio worker is refused (exit 2, nothing claimed), a Vonage one sends it."""
    path = campaign(tmp_path)
    queued = await run_cli(*enqueue(redis_url, path, "--ttl", "12h"))
    assert queued.code == 0, queued.stderr
    twilio = await run_cli(*worker(redis_url, simulator, "--provider", "twilio"), env=env())
    assert one_error(twilio) == (
        "Error: campaign 'codes' was enqueued with --ttl 12h: Twilio keeps a message at most "
        "10h (36000 s); give 10h or less in an `enqueue` of the campaign, or use another "
        "--provider"
    )
    assert (await simulator.stats())["requests"] == 0
    vonage = await run_cli(*worker(redis_url, simulator))
    assert vonage.code == 0, vonage.stderr
    assert len(vonage.records) == ROWS
    assert await ttls_sent(simulator) == [43_200] * ROWS


async def test_enqueue_refuses_a_ttl_no_provider_takes(redis_url: str, tmp_path: Path) -> None:
    """Longer than 7 days: exit 2 before the campaign is created."""
    run = await run_cli(*enqueue(redis_url, campaign(tmp_path), "--ttl", "8d"))
    assert one_error(run) == (
        "Error: --ttl 8d: no provider keeps a message longer than 7d (604800 s); give 7d or less"
    )


@pytest.mark.slow
async def test_the_distributed_report_counts_expired_receipts_apart(
    redis_url: str, tmp_path: Path, simulator: RunningSimulator
) -> None:
    """Receipts waiting in Redis: an expired part stays expired after a late intermediate one,
    and the funnel counts it on its own."""
    assert (await run_cli(*enqueue(redis_url, campaign(tmp_path), "--ttl", "1h"))).code == 0
    sent = await run_cli(*worker(redis_url, simulator))
    assert sent.code == 0, sent.stderr
    refs = {r["line"]: (r["client_ref"], r["message_ids"][0]) for r in sent.records}
    add_dlrs(redis_url, [
        (*refs[line], delivery, status, code) for line, delivery, status, code in [
            (1, "expired", "expired", "2"),
            (1, "pending", "buffered", ""),  # late and intermediate: changes nothing
            (2, "delivered", "delivered", ""),
            (3, "failed", "failed", "3"),
        ]
    ])  # fmt: skip
    report = await run_cli("report", "--redis", redis_url, "--campaign", "codes", "--json")
    assert report.code == 0, report.stderr
    (summary,) = json.loads(report.stdout)["campaigns"]
    delivery = summary["delivery"]
    assert (delivery["delivered"], delivery["failed"], delivery["expired"]) == (1, 1, 1)
    assert delivery["pending"] == ROWS - 3


async def test_a_ttl_from_the_environment_the_provider_cannot_take_names_the_variable(
    tmp_path: Path, simulator: RunningSimulator
) -> None:
    """SMS_BLASTER_TTL=30d with Twilio: the error names the variable and how to fix it."""
    run = await send(simulator, campaign(tmp_path), *provider_args("twilio"), SMS_BLASTER_TTL="30d")
    assert one_error(run) == (
        "Error: SMS_BLASTER_TTL=30d: Twilio keeps a message at most 10h (36000 s); give 10h or "
        "less (for '--ttl'); fix or unset SMS_BLASTER_TTL"
    )
    assert (await simulator.stats())["requests"] == 0


async def test_enqueue_names_the_variable_of_a_ttl_no_provider_takes(
    redis_url: str, tmp_path: Path
) -> None:
    """SMS_BLASTER_TTL=30d for enqueue: over 7 days, and the line names the variable."""
    run = await run_cli(*enqueue(redis_url, campaign(tmp_path)), env=cli_env(SMS_BLASTER_TTL="30d"))
    assert one_error(run).startswith("Error: SMS_BLASTER_TTL=30d: no provider keeps a message")
    assert one_error(run).endswith("(for '--ttl'); fix or unset SMS_BLASTER_TTL")


@pytest.mark.parametrize("ttl", ["5" * 5000, "\u0661\u0660m", "\uff11\uff10m"])
async def test_a_ttl_of_endless_or_non_ascii_digits_is_a_usage_error(
    tmp_path: Path, simulator: RunningSimulator, ttl: str
) -> None:
    """Exit 2, one line in our own words, nothing sent: never Python's digit limit, and never
    10 minutes read from Arabic-Indic or full-width digits."""
    run = await send(simulator, campaign(tmp_path), "--from", "Shop", "--ttl", ttl)
    assert run.code == 2
    error = one_error(run)
    assert "sys.set_int_max_str_digits" not in error
    assert "too many digits" in error or "is not a duration" in error
    assert len(error) < 300
    assert (await simulator.stats())["requests"] == 0


async def test_a_ttl_of_endless_digits_from_the_environment_is_one_short_line(
    tmp_path: Path, simulator: RunningSimulator
) -> None:
    """SMS_BLASTER_TTL of 5000 digits: the line names the variable and shows the start only."""
    run = await send(simulator, campaign(tmp_path), "--from", "Shop", SMS_BLASTER_TTL="5" * 5000)
    error = one_error(run)
    assert error.startswith("Error: SMS_BLASTER_TTL=" + "5" * 200 + "…: ")
    assert "too many digits" in error
    assert len(error) < 500
