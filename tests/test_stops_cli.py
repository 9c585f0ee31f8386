"""Runs that stop (a fatal answer, a provider that cannot be reached) lose no row, resumes that
leave rows unknown say so, and `report` counts a stopped run as its records do; a provider that
cannot be reached for less than --unreachable-timeout fails no row: the real CLI against the
simulator over loopback."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sms_blaster.simulator import RunningSimulator, SimulatorConfig, start_simulator
from tests.cli_helpers import Run, cli_env, run_cli, start_cli, write_csv

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


@pytest.mark.slow
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


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A loopback port bound but not listening: every connection to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@pytest.mark.slow
async def test_a_provider_nothing_can_connect_to_stops_the_run_with_exit_3_and_the_resume_sends_all(
    tmp_path: Path, refusing_port: int
) -> None:
    """Every connection refused for --unreachable-timeout: exit 3 early; the resume sends all."""
    tos = numbers(ROWS)
    path = campaign_csv(tmp_path / "c.csv", tos)
    dead = f"http://127.0.0.1:{refusing_port}"

    first = await run_cli(
        *send_args(dead, path, "--unreachable-timeout", "0.5", "--retries", "100")
    )
    async with await start_simulator(SimulatorConfig()) as sim:
        rerun = await run_cli(*send_args(sim.url, path))
        stats = await sim.stats()

    assert first.code == 3, first.stderr
    [error] = errors(first)
    assert error.startswith("Error: the run was stopped: no connection to the provider for ")
    assert "check --base-url and the network" in error
    assert {outcome(r) for r in first.by_line().values()} == {("failed", "stopped", "unreachable")}
    assert rerun.code == 0, rerun.stderr
    assert accepted(stats) == dict.fromkeys(tos, 1)


def journal_rows(journal: Path) -> list[tuple[str, int]]:
    """(state, attempts) of each row the journal holds, read while another process writes it."""
    try:
        connection = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    except sqlite3.OperationalError:  # not created yet
        return []
    try:
        return [(str(s), int(n)) for s, n in connection.execute("SELECT state, attempts FROM rows")]
    except sqlite3.OperationalError:  # its tables not created yet
        return []
    finally:
        connection.close()


async def _each_row_ended_or_tried(journal: Path, rows: int, attempts: int) -> None:
    """Return once each of `rows` rows has ended failed or been tried `attempts` times (its last
    attempt marked in flight before it leaves): with --retries 1, a third attempt follows two
    failed connections, which ended a row before they were free."""

    def seen() -> bool:
        found = journal_rows(journal)
        return len(found) == rows and all(n >= attempts or s == "failed" for s, n in found)

    # Another process's journal has no event to wait on: poll it, bounded by the caller's timeout.
    while not seen():  # noqa: ASYNC110
        await asyncio.sleep(0.02)


@pytest.mark.slow
async def test_an_outage_shorter_than_the_unreachable_timeout_fails_no_row(
    tmp_path: Path,
) -> None:
    """Every connection refused until each row has failed to connect more often than --retries 1
    allows, then the provider starts on that port: every row is sent, once, none failed."""
    rows = 20
    tos = numbers(rows)
    path, journal = campaign_csv(tmp_path / "c.csv", tos), tmp_path / "c.journal"
    extra = ("--retries", "1", "--unreachable-timeout", "600", "--journal", str(journal))
    with socket.socket() as refusing:  # bound, not listening: every connection is refused
        refusing.bind(("127.0.0.1", 0))
        port = int(refusing.getsockname()[1])
        process = await start_cli(*send_args(f"http://127.0.0.1:{port}", path, *extra))
        try:
            async with asyncio.timeout(60):
                await _each_row_ended_or_tried(journal, rows, attempts=3)
        except BaseException:
            process.kill()
            await process.communicate()
            raise
    async with await start_simulator(SimulatorConfig(), port=port) as sim:
        try:
            async with asyncio.timeout(120):
                stdout, stderr = await process.communicate()
        finally:
            if process.returncode is None:
                process.kill()
                await process.communicate()
        stats = await sim.stats()

    assert process.returncode is not None
    assert process.returncode is not None
    run = Run(process.returncode, stdout, stderr.decode())
    assert {outcome(r) for r in run.by_line().values()} == {("sent", None, None)}, run.stderr
    assert run.code == 0, run.stderr
    assert min(r["attempts"] for r in run.records) >= 3
    assert accepted(stats) == dict.fromkeys(tos, 1)


@pytest.mark.slow
async def test_a_provider_that_never_comes_back_stops_the_run_before_any_row_fails(
    tmp_path: Path, refusing_port: int
) -> None:
    """With --retries 1, failed connections use up no retries: --unreachable-timeout ends the
    run (exit 3), every row `stopped` and pending in the journal for the resume."""
    rows = 20
    path, journal = campaign_csv(tmp_path / "c.csv", numbers(rows)), tmp_path / "c.journal"
    dead = f"http://127.0.0.1:{refusing_port}"
    extra = ("--retries", "1", "--unreachable-timeout", "1", "--journal", str(journal))

    first = await run_cli(*send_args(dead, path, *extra), timeout_s=120)

    assert first.code == 3, first.stderr
    assert {outcome(r) for r in first.by_line().values()} == {("failed", "stopped", "unreachable")}
    assert len(first.records) == rows
    assert {state for state, _ in journal_rows(journal)} == {"pending"}


@pytest.mark.parametrize(
    ("option", "env"),
    [("nan", None), ("inf", None), ("0", None), (None, "-1"), (None, "inf")],
    ids=["nan", "inf", "zero", "env-negative", "env-inf"],
)
async def test_an_unreachable_timeout_that_is_not_a_positive_number_exits_2(
    tmp_path: Path, refusing_port: int, option: str | None, env: str | None
) -> None:
    """--unreachable-timeout (or SMS_BLASTER_UNREACHABLE_TIMEOUT) must be finite and above 0."""
    path = campaign_csv(tmp_path / "c.csv", numbers(3))
    extra = [] if option is None else ["--unreachable-timeout", option]
    environment = cli_env(**({} if env is None else {"SMS_BLASTER_UNREACHABLE_TIMEOUT": env}))
    run = await run_cli(
        *send_args(f"http://127.0.0.1:{refusing_port}", path, *extra), env=environment
    )
    assert run.code == 2
    [line] = run.stderr.splitlines()
    assert line.startswith("Error: ")
    assert "--unreachable-timeout" in line
    if env is not None:  # a bad environment value is named as the variable it came from
        assert line.startswith(f"Error: SMS_BLASTER_UNREACHABLE_TIMEOUT={env}: ")
    assert run.stdout == b""


@pytest.mark.slow
async def test_report_after_a_stopped_run_counts_the_rows_as_the_records_do(
    tmp_path: Path,
) -> None:
    """Every record is a journal row; the stopped ones are pending and counted as stopped."""
    path = campaign_csv(tmp_path / "c.csv", numbers(ROWS))
    async with await start_simulator(SimulatorConfig(api_secret="right")) as sim:
        first = await run_cli(*send_args(sim.url, path))
    journal = str(tmp_path / "c.csv.journal")

    as_json = await run_cli("report", journal, "--json")
    as_text = await run_cli("report", journal)

    assert first.code == 3, first.stderr
    records = first.by_line()
    stopped = sum(record["error"]["kind"] == "stopped" for record in records.values())
    assert stopped == len(records) <= ROWS  # how far the input was read depends on timing
    [campaign] = json.loads(as_json.stdout)["campaigns"]
    rows = campaign["rows"]
    assert (rows["total"], rows["pending"], rows["stopped"]) == (len(records),) * 3
    assert campaign["last_line"] == max(records)
    assert (
        f"rows after line {max(records):,}, if any, were not read yet "
        "(a stopped run reads no further); re-run to send"
    ) in as_text.stdout.decode().splitlines()


@pytest.mark.slow
async def test_a_row_left_unknown_stays_unknown_when_a_retry_unknown_resume_is_refused(
    tmp_path: Path,
) -> None:
    """The earlier request may have been accepted: a refused resend does not make it pending."""
    tos = numbers(2) + numbers(1, suffix=9997)  # 9997: accepted, then the connection drops
    path = campaign_csv(tmp_path / "c.csv", tos)
    async with await start_simulator(SimulatorConfig(api_secret="right")) as sim:
        right = cli_env(VONAGE_API_SECRET="right")
        first = await run_cli(*send_args(sim.url, path), env=right)
        refused = await run_cli(
            *send_args(sim.url, path, "--retry-unknown"), env=cli_env(VONAGE_API_SECRET="wrong")
        )
        third = await run_cli(*send_args(sim.url, path), env=right)
        stats = await sim.stats()

    assert first.code == 1, first.stderr
    assert refused.code == 3, refused.stderr
    assert outcome(refused.by_line()[3]) == ("failed", "stopped", "4")
    assert third.code == 1, third.stderr
    assert outcome(third.by_line()[3]) == ("skipped", "already_settled", "unknown")
    assert "1 rows are unknown from earlier runs" in third.stderr
    assert accepted(stats) == dict.fromkeys(tos, 1)


async def test_the_help_of_max_error_rate_names_the_window_and_the_first_judged_send() -> None:
    """--help says what the breaker does: the last 100 sends, judged from the 20th on."""
    run = await run_cli("send", "--help")
    text = " ".join(run.stdout.decode().split())
    assert (
        "share of the last 100 sends failed or are unknown (of the sends so far, from the 20th on)"
        in text
    )


@pytest.mark.slow
async def test_a_worker_refused_account_wide_hands_its_rows_back_and_the_next_sends_each_once(
    redis_url: str, tmp_path: Path
) -> None:
    """Bad credentials stop a worker (exit 3); no row is lost or unknown: the next sends all."""
    tos = numbers(60)
    path = campaign_csv(tmp_path / "c.csv", tos)
    queue = ["--redis", redis_url, "--campaign", "stops"]
    enqueue = await run_cli("enqueue", str(path), *queue, "--from", "Shop")
    assert enqueue.code == 0, enqueue.stderr
    async with await start_simulator(SimulatorConfig(api_secret="right")) as sim:
        worker = ["worker", *queue, "--base-url", sim.url, "--rate", "2000", "--no-progress"]
        refused = await run_cli(*worker, env=cli_env(VONAGE_API_SECRET="wrong"))
        second = await run_cli(*worker, env=cli_env(VONAGE_API_SECRET="right"))
        stats = await sim.stats()

    assert refused.code == 3, refused.stderr
    assert second.code == 0, second.stderr
    assert {outcome(r) for r in second.records} == {("sent", None, None)}
    assert accepted(stats) == dict.fromkeys(tos, 1)


class AnsweringWhenTold:
    """A loopback Vonage SMS API that holds every request until told to answer, then answers
    each with its message id and says when the answers are written."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.received: list[str] = []
        self.all_received = asyncio.Event()
        self.release = asyncio.Event()
        self.answered = 0
        self.all_answered = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_post("/sms/json", self.sms)

    async def sms(self, request: web.Request) -> web.StreamResponse:
        to = str((await request.post())["to"])
        self.received.append(to)
        if len(self.received) == self.expected:
            self.all_received.set()
        await self.release.wait()
        body = json.dumps(
            {"message-count": "1", "messages": [
                {"to": to, "message-id": f"id-{to}", "status": "0",
                 "remaining-balance": "3.14", "message-price": "0.0333", "network": "23410"}
            ]}
        ).encode()  # fmt: skip
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body)
        await response.write_eof()  # handed to the kernel: in the client's socket
        self.answered += 1
        if self.answered == self.expected:
            self.all_answered.set()
        return response


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["--uvloop", "--no-uvloop"])
async def test_answers_that_came_while_the_run_was_stopped_past_its_timeout_are_read(
    tmp_path: Path, loop: str
) -> None:
    """A run stopped (SIGSTOP, Ctrl-Z) for longer than --timeout with requests in flight, whose
    answers came meanwhile: on waking it reads them, rather than timing the requests out first
    (which records rows the provider accepted `unknown`). The stop has to outlast the timeout:
    that wait is the scenario itself, not a synchronisation."""
    timeout_s = 0.5
    provider = AnsweringWhenTold(expected=3)
    server = TestServer(provider.app)
    await server.start_server()
    tos = numbers(3)
    path = campaign_csv(tmp_path / "c.csv", tos)
    process = await start_cli(
        "send", str(path), "--base-url", str(server.make_url("")), "--from", "Shop",
        "--rate", "1000", "--no-progress", "--timeout", str(timeout_s), loop,
    )  # fmt: skip
    try:
        async with asyncio.timeout(30):
            await provider.all_received.wait()
        last_request_s = asyncio.get_running_loop().time()
        os.kill(process.pid, signal.SIGSTOP)
        try:
            provider.release.set()
            async with asyncio.timeout(30):
                await provider.all_answered.wait()
            # Every request's deadline passes while the run is stopped.
            await asyncio.sleep(
                last_request_s + timeout_s + 0.3 - asyncio.get_running_loop().time()
            )
        finally:
            os.kill(process.pid, signal.SIGCONT)
        async with asyncio.timeout(30):
            stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await server.close()
    assert process.returncode is not None
    run = Run(process.returncode, stdout, stderr.decode())
    assert [outcome(record) for record in run.records] == [("sent", None, None)] * 3
    assert run.code == 0, run.stderr
