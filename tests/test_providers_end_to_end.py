"""The same campaign through each provider by the CLI, against the simulator: every row sent
exactly once, and every delivery receipt (each API's own, signed) stored by a real `receive`
process and counted by `report` as the simulator decided."""

from __future__ import annotations

import asyncio
import json
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from sms_blaster.providers.names import ProviderName
from sms_blaster.simulator import SimulatorConfig, start_simulator
from tests.cli_helpers import cli_env, receiver_process, run_cli, write_csv

SECRET = "provider-e2e-secret"
TOKEN = "twilio-e2e-token"
ACCOUNT = "AC" + "0" * 32
ROUTES = {
    "vonage": "/webhooks/dlr",
    "vonage-messages": "/webhooks/messages/status",
    "twilio": "/webhooks/twilio/status",
}
ROWS = 40


def campaign(tmp_path: Path) -> tuple[Path, list[str]]:
    """GSM-7, UCS-2 and two-part texts, one invalid number and one duplicate."""
    rows = []
    for n in range(1, ROWS + 1):
        name = "Łukasz" if n % 7 == 0 else ("x" * 170 if n % 5 == 0 else f"Ann{n}")
        suffix = "9989" if n % 13 == 0 else f"{n:04d}"  # 9989: the simulator fails the receipt
        rows.append((name, f"4475{n:04d}{suffix}"))
    numbers = [number for _, number in rows]
    rows += [("Bad", "12345"), ("Again", numbers[0])]
    return write_csv(tmp_path / "campaign.csv", rows), numbers


def provider_args(provider: str) -> list[str]:
    if provider == "twilio":
        return ["--provider", "twilio", "--from", "+15005550006"]
    return ["--provider", provider, "--from", "Shop"]


@pytest.mark.slow
@pytest.mark.parametrize("provider", list(ROUTES))
async def test_a_campaign_through_each_provider_is_sent_once_and_its_receipts_counted(
    tmp_path: Path, provider: str
) -> None:
    """Exactly once per valid row; refused rows recorded; the funnel matches the decisions."""
    path, numbers = campaign(tmp_path)
    journal = tmp_path / "campaign.csv.journal"
    secrets = {"VONAGE_SIGNATURE_SECRET": SECRET, "TWILIO_AUTH_TOKEN": TOKEN}
    async with receiver_process("--store", str(journal), env=secrets) as receiver:
        config = SimulatorConfig(
            callback_url=receiver.url + ROUTES[provider],
            callback_delay_ms=10,
            callback_duplicate_rate=0.2,
            callback_retry_s=0.2,
            signature_secret=SECRET,
            twilio_account_sid=ACCOUNT,
            twilio_auth_token=TOKEN,
            seed=11,
        )
        simulator = await start_simulator(config)
        try:
            env = cli_env(TWILIO_ACCOUNT_SID=ACCOUNT, TWILIO_AUTH_TOKEN=TOKEN)
            run = await run_cli(
                "send", str(path), "--base-url", simulator.url, "--rate", "400",
                "--text", "Hello {name}, your order is on its way.", "--no-progress",
                "--callback-url", receiver.url + ROUTES[provider], *provider_args(provider),
                env=env,
            )  # fmt: skip
            async with asyncio.timeout(30):
                await simulator.wait_for_callbacks_done()
            stats = await simulator.stats()
        finally:
            await simulator.close()
        receiver.process.send_signal(signal.SIGTERM)
        code, _ = await receiver.finish()
    assert run.code == 1, run.stderr  # the invalid row
    assert code == 0, "".join(receiver.stderr_lines)
    records = run.by_line()
    assert Counter(r["status"] for r in records.values()) == {"sent": ROWS, "failed": 1,
                                                             "skipped": 1}  # fmt: skip
    recipients: dict[str, Any] = stats["recipients"]
    assert sorted(recipients) == sorted(numbers)
    assert all(r["accepted"] == 1 for r in recipients.values()), "each row sent once"
    assert {m["api"] for r in recipients.values() for m in r["messages"]} == {
        ProviderName(provider)
    }
    decided: dict[str, str] = stats["callbacks"]["outcomes"]
    assert len(decided) == ROWS
    failed = sum(outcome == "failed" for outcome in decided.values())
    assert failed >= ROWS // 13

    report = await run_cli("report", str(journal), "--json")
    assert report.code == 0, report.stderr
    (summary,) = json.loads(report.stdout)["campaigns"]
    assert summary["provider"] == ProviderName(provider)
    delivery = summary["delivery"]
    assert (delivery["sent"], delivery["delivered"], delivery["failed"], delivery["pending"]) == (
        ROWS,
        ROWS - failed,
        failed,
        0,
    )
