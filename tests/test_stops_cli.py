"""Runs that stop (a fatal answer, a provider that cannot be reached) lose no row, resumes that
leave rows unknown say so, and `report` counts a stopped run as its records do: the real CLI
against the simulator over loopback."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sms_blaster.simulator import RunningSimulator, SimulatorConfig, start_simulator
from tests.cli_helpers import Run, cli_env, run_cli, write_csv

ROWS = 300  # more than one batch of the input and more than a window
ACCOUNT = "AC" + "1" * 32


def numbers(count: int, suffix: int = 1) -> list[str]:
    """`count` distinct valid UK mobiles (E.164 digits) ending in the four digits `suffix`."""
    return [f"4474{k:04d}{suffix:04d}" for k in range(count)]


def campaign_csv(path: Path, tos: list[str]) -> Path:
    return write_csv(path, [(f"m{k}", "+" + to) for k, to in enumerate(tos)], header="text,to")


def outcome(record: dict[str, Any]) -> tuple[str, str | None, str | None]:
    """(status, error kind, error code) of a record."""
    error = record["error"]
    return record["status"], error and error["kind"], error and error["code"]


def errors(run: Run) -> list[str]:
    return [line for line in run.stderr.splitlines() if line.startswith("Error:")]


def accepted(stats: dict[str, Any]) -> dict[str, int]:
    return {to: int(counts["accepted"]) for to, counts in stats["recipients"].items()}


@dataclass(frozen=True)
class Refusal:
    """A provider set up so that the first run is refused account-wide, the resume is not."""

    provider: str
    sender: str
    config: SimulatorConfig
    code: str  # the error code of the rows the refusal answered
    wrong_env: dict[str, str] = field(default_factory=dict)
    right_env: dict[str, str] = field(default_factory=dict)
    wrong_url: str = "{url}"  # the --base-url of the first run, from the simulator's URL

    def url(self, sim: RunningSimulator, wrong: bool) -> str:
        return (
            self.wrong_url.format(url=sim.url, host=sim.url.removeprefix("http://"))
            if wrong
            else sim.url
        )


REFUSALS = {
    "sms-api-bad-secret": Refusal(
        "vonage", "Shop", SimulatorConfig(api_secret="right"), "4",
        {"VONAGE_API_SECRET": "wrong"}, {"VONAGE_API_SECRET": "right"},
    ),
    "messages-api-401": Refusal(
        "vonage-messages", "Shop", SimulatorConfig(api_secret="right"), "http_401",
        {"VONAGE_API_SECRET": "wrong"}, {"VONAGE_API_SECRET": "right"},
    ),
    "twilio-20003": Refusal(
        "twilio", "+15005550006",
        SimulatorConfig(twilio_account_sid=ACCOUNT, twilio_auth_token="right"), "20003",
        {"TWILIO_ACCOUNT_SID": ACCOUNT, "TWILIO_AUTH_TOKEN": "wrong"},
        {"TWILIO_ACCOUNT_SID": ACCOUNT, "TWILIO_AUTH_TOKEN": "right"},
    ),
    "wrong-path-404": Refusal(
        "vonage", "Shop", SimulatorConfig(), "http_404", wrong_url="{url}/no/such/api"
    ),
    "https-to-plain-http": Refusal(
        "vonage", "Shop", SimulatorConfig(), "tls_error", wrong_url="https://{host}"
    ),
}  # fmt: skip


def send_args(
    url: str, path: Path, *extra: str, provider: str = "vonage", sender: str = "Shop"
) -> list[str]:
    return [
        "send", str(path), "--base-url", url, "--provider", provider, "--from", sender,
        "--rate", "2000", "--no-progress", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("refusal", list(REFUSALS.values()), ids=list(REFUSALS))
async def test_rows_cut_off_by_a_fatal_answer_are_sent_once_by_the_resume(
    tmp_path: Path, refusal: Refusal
) -> None:
    """Exit 3, the refused rows recorded stopped with the provider's code; the resume sends all."""
    tos = numbers(ROWS)
    path = campaign_csv(tmp_path / "c.csv", tos)
    async with await start_simulator(refusal.config) as sim:
        args = {"provider": refusal.provider, "sender": refusal.sender}
        first = await run_cli(
            *send_args(refusal.url(sim, wrong=True), path, **args), env=cli_env(**refusal.wrong_env)
        )
        rerun = await run_cli(
            *send_args(refusal.url(sim, wrong=False), path, **args),
            env=cli_env(**refusal.right_env),
        )
        stats = await sim.stats()

    assert first.code == 3, first.stderr
    assert len(errors(first)) == 1
    outcomes = Counter(outcome(record) for record in first.by_line().values())
    assert set(outcomes) <= {("failed", "stopped", refusal.code), ("failed", "stopped", "fatal")}
    assert outcomes[("failed", "stopped", refusal.code)] >= 1
    assert rerun.code == 0, rerun.stderr
    assert Counter(outcome(record) for record in rerun.records) == {("sent", None, None): ROWS}
    assert accepted(stats) == dict.fromkeys(tos, 1)
