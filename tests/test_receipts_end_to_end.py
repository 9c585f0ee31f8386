"""A campaign end to end with delivery receipts: the simulator sends and calls back, a real
`receive` process stores the receipts in the campaign's journal, and `report` shows every message
delivered or failed exactly as the simulator decided."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
from pathlib import Path

import pytest

from sms_blaster.simulator import SimulatorConfig, start_simulator
from sms_blaster.simulator.callbacks import CallbackFormat
from tests.cli_helpers import receiver_process, run_cli, write_csv

ROWS = 120
SECRET = "end-to-end-secret"
LONG = "x" * 170  # with the template, two GSM-7 parts: two receipts to aggregate


def campaign_rows() -> list[tuple[str, str]]:
    rows = []
    for n in range(1, ROWS + 1):
        name = LONG if n % 5 == 0 else f"Ann{n}"
        suffix = "9989" if n % 17 == 0 else f"{n:04d}"  # 9989: the simulator fails one part
        rows.append((name, f"4474{n:04d}{suffix}"))
    return rows


def row_deliveries(journal: Path) -> dict[str, str]:
    """client_ref -> delivered | failed | pending, aggregated over the parts' receipts."""
    with contextlib.closing(sqlite3.connect(journal)) as connection:
        found = connection.execute(
            "SELECT r.client_ref, "
            "  CASE WHEN SUM(d.delivery = 'failed') > 0 THEN 'failed' "
            "       WHEN SUM(d.delivery = 'delivered') = r.segments THEN 'delivered' "
            "       ELSE 'pending' END "
            "FROM rows AS r JOIN campaigns AS c ON c.name = r.campaign "
            "JOIN deliveries AS d ON d.campaign_id = c.campaign_id AND d.line = r.line "
            "GROUP BY r.campaign, r.line"
        ).fetchall()
    return dict(found)


@pytest.mark.slow
async def test_report_shows_every_message_delivered_or_failed_as_the_simulator_decided(
    tmp_path: Path,
) -> None:
    """Receipts per part, duplicated, out of order, some before the send answer, all signed."""
    rows = write_csv(tmp_path / "campaign.csv", campaign_rows())
    journal = tmp_path / "campaign.csv.journal"
    env_secret = {"VONAGE_SIGNATURE_SECRET": SECRET}
    async with receiver_process(
        "--store", str(journal), "--signature-method", "sha256", env=env_secret
    ) as receiver:
        config = SimulatorConfig(
            callback_url=receiver.url + "/webhooks/dlr",
            callback_format=CallbackFormat.JSON,
            callback_delay_ms=20,
            callback_duplicate_rate=0.2,
            callback_early_rate=0.2,
            dlr_fail_rate=0.1,
            callback_retry_s=0.2,
            signature_secret=SECRET,
            signature_method="sha256",
            seed=7,
        )
        simulator = await start_simulator(config)
        try:
            run = await run_cli(
                "send", str(rows), "--base-url", simulator.url, "--from", "Shop",
                "--text", "Hello {name}, your order is on its way.", "--rate", "500",
                "--no-progress",
            )  # fmt: skip
            assert run.code == 0, run.stderr
            async with asyncio.timeout(30):
                await simulator.wait_for_callbacks_done()
            stats = await simulator.stats()
        finally:
            await simulator.close()
        receiver.process.send_signal(signal.SIGTERM)  # drains and processes what it stored
        code, _ = await receiver.finish()
    assert code == 0, "".join(receiver.stderr_lines)
    callbacks = stats["callbacks"]
    assert callbacks["given_up"] == 0
    decided: dict[str, str] = callbacks["outcomes"]
    assert len(decided) == ROWS
    assert set(decided.values()) == {"delivered", "failed"}

    assert row_deliveries(journal) == decided
    with contextlib.closing(sqlite3.connect(journal)) as connection:
        (stored,) = connection.execute("SELECT COUNT(*) FROM receipts").fetchone()
    assert stored < callbacks["acked"], "duplicates were acknowledged and stored once"

    report = await run_cli("report", str(journal), "--json")
    assert report.code == 0, report.stderr
    (campaign,) = json.loads(report.stdout)["campaigns"]
    delivery = campaign["delivery"]
    failed = sum(outcome == "failed" for outcome in decided.values())
    assert delivery["sent"] == ROWS
    assert delivery["failed"] == failed
    assert delivery["delivered"] == ROWS - failed
    assert delivery["pending"] == 0
    assert delivery["with_receipts"] == ROWS
