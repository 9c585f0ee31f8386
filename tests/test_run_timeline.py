"""A journal run's own record: its settings without secrets, and its seconds."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import sqlite3
from decimal import Decimal
from pathlib import Path

from sms_blaster.journal.store import Journal
from sms_blaster.output import LatencyHistogram
from sms_blaster.run_stats import RunSnapshot
from sms_blaster.run_timeline import record_run, second_between, settings_json
from sms_blaster.settings import RunSettings
from sms_blaster.simulator import SimulatorConfig, start_simulator
from sms_blaster.url_text import mask_url_password
from tests.cli_helpers import Run, number, run_cli, write_csv
from tests.test_journal import PARAMS


def _snapshot(at_s: float, sent: int, requests: int, throttled: int) -> RunSnapshot:
    return RunSnapshot(
        at_s=at_s,
        elapsed_s=at_s - 100.0,
        rows_by_status={"sent": sent, "failed": 1},
        errors={},
        segments=sent,
        cost=Decimal(0),
        requests=requests,
        throttled=throttled,
        in_flight=3,
        window=8,
        rate_ceiling_per_s=50.0,
        pace_per_s=40.0,
        limit_per_s=42.5,
        latency=LatencyHistogram(),
    )


def test_the_settings_keep_no_credential() -> None:
    """The API key, secret and token are left out of the settings the journal keeps."""
    settings = RunSettings(api_key="KEY123", api_secret="SECRET456", auth_token="TOKEN789")
    text = settings_json(settings)
    assert not any(secret in text for secret in ("KEY123", "SECRET456", "TOKEN789"))
    assert json.loads(text)["rate_per_s"] == 30.0


def test_a_password_in_a_url_setting_is_masked() -> None:
    """A callback URL with a password keeps its user and host, not the password."""
    settings = RunSettings(callback_url="https://hooks:pa55word@example.com/dlr")
    kept = json.loads(settings_json(settings))["callback_url"]
    assert kept == "https://hooks:***@example.com/dlr"


def test_secret_query_values_of_a_url_setting_are_masked() -> None:
    """A callback URL's token, password and signature values are masked, its other values kept."""
    settings = RunSettings(callback_url="https://h.example/dlr?Token=T1&password=P2&sig=S3&id=7")
    kept = json.loads(settings_json(settings))["callback_url"]
    assert kept == "https://h.example/dlr?Token=***&password=***&sig=***&id=7"


def test_text_that_is_not_a_url_is_kept_as_it_is() -> None:
    """A template with an @ in it is no URL: nothing is masked."""
    assert mask_url_password("mail me@example.com: {name}") == "mail me@example.com: {name}"


def test_a_second_is_the_difference_of_two_snapshots() -> None:
    """Requests, throttles and sends are counted over the second; the flow state at its end."""
    second = second_between(_snapshot(101.0, 10, 12, 1), _snapshot(102.0, 25, 30, 4))
    assert (second.at_s, second.sent, second.failed, second.requests, second.throttled) == (
        102.0, 15, 0, 18, 3,
    )  # fmt: skip
    assert (second.pace_per_s, second.limit_per_s, second.window) == (40.0, 42.5, 8)


def test_a_timeline_table_of_another_shape_never_stops_the_run(tmp_path: Path) -> None:
    """A journal whose `timeline` has another shape: every row sent once, exit 0, one warning."""
    journal = tmp_path / "campaign.csv.journal"
    with contextlib.closing(sqlite3.connect(journal)) as connection:
        connection.execute("CREATE TABLE timeline (run INTEGER NOT NULL, note TEXT NOT NULL)")
        connection.commit()
    rows = write_csv(tmp_path / "campaign.csv", [(f"Ann{n}", number(n)) for n in range(1, 31)])

    async def send() -> tuple[Run, int]:
        async with await start_simulator(SimulatorConfig()) as simulator:
            result = await run_cli(
                "send", str(rows), "--from", "Shop", "--text", "Hi {name}", "--rate", "1000000",
                "--no-progress", "--journal", str(journal), "--base-url", simulator.url,
            )  # fmt: skip
            return result, (await simulator.stats())["accepted"]

    result, accepted = asyncio.run(send())
    assert (result.code, accepted) == (0, 30), result.stderr
    assert result.stderr.count("cannot record the run") == 1, result.stderr
    with contextlib.closing(sqlite3.connect(journal)) as connection:
        states = connection.execute("SELECT state, COUNT(*) FROM rows GROUP BY state")
        assert dict(states.fetchall()) == {"sent": 30}


def test_a_ctrl_c_ending_the_run_records_130(tmp_path: Path) -> None:
    """A KeyboardInterrupt out of the run leaves exit code 130 in `runs`, as the process exits."""
    path = str(tmp_path / "j")

    async def interrupted() -> None:
        journal = Journal.open(path, PARAMS)
        journal.start()
        try:
            with contextlib.suppress(KeyboardInterrupt):
                async with record_run(
                    journal, RunSettings(), lambda: _snapshot(0, 0, 0, 0), io.StringIO()
                ):
                    raise KeyboardInterrupt
        finally:
            await journal.close()

    asyncio.run(interrupted())
    with contextlib.closing(sqlite3.connect(path)) as connection:
        assert connection.execute("SELECT exit_code FROM runs").fetchall() == [(130,)]
