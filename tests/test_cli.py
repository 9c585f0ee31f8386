"""The real CLI against the built-in simulator over loopback HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sms_blaster.simulator import RunningSimulator, SimulatorConfig, start_simulator
from tests.cli_helpers import cli_env, number, run_cli, start_cli, write_csv


@pytest.fixture
async def simulator() -> AsyncIterator[RunningSimulator]:
    running = await start_simulator(SimulatorConfig())
    yield running
    await running.close()


def send_args(sim: RunningSimulator, path: Path | str, *extra: str) -> list[str]:
    return ["send", str(path), "--base-url", sim.url, "--from", "Shop", "--rate", "500", *extra]


def accepted(stats: dict[str, Any], to: str) -> int:
    return int(stats["recipients"].get(to, {}).get("accepted", 0))


def requests(stats: dict[str, Any], to: str) -> int:
    return int(stats["recipients"].get(to, {}).get("requests", 0))


async def test_every_valid_unique_row_arrives_once_with_its_text_and_type(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """Valid rows arrive once, rendered, as GSM-7 or unicode; bad rows get records, not sends."""
    rows = [(f"Name{n}", "+" + number(n)) for n in range(1, 21)]
    rows += [("Łukasz", "+" + number(21)), ("Zoë", "07911 100022")]
    rows += [("Dup", "0" + number(3)[2:]), ("Bad", "12345"), ("Empty", "")]
    path = write_csv(tmp_path / "c.csv", rows)
    run = await run_cli(
        *send_args(simulator, path, "--text", "Hi {name}!", "--default-region", "GB")
    )
    assert run.code == 1, run.stderr
    records = run.by_line()
    assert sorted(records) == list(range(1, len(rows) + 1))
    stats = await simulator.stats()
    for line in range(1, 23):
        name, _ = rows[line - 1]
        to = number(line)
        assert records[line]["status"] == "sent"
        assert records[line]["to"] == to
        assert accepted(stats, to) == 1
        sent = stats["recipients"][to]["messages"][0]
        assert sent["text"] == f"Hi {name}!"
        assert sent["type"] == ("unicode" if line > 20 else "text")
        assert sent["client_ref"] == records[line]["client_ref"]
    assert records[23]["status"] == "skipped"
    assert records[23]["error"]["kind"] == "duplicate"
    assert records[24]["error"]["code"] == "invalid_number"
    assert records[25]["error"]["code"] == "missing_value"
    assert stats["accepted"] == 22
    assert stats["non_gsm_as_text"] == 0


async def test_jsonl_on_stdin_is_sent(simulator: RunningSimulator) -> None:
    """JSONL piped on stdin ('-') works, numbers as JSON numbers included."""
    lines = [json.dumps({"to": int(number(n)), "text": f"msg {n}"}) for n in range(1, 6)]
    run = await run_cli(*send_args(simulator, "-"), stdin="\n".join(lines).encode())
    assert run.code == 0, run.stderr
    assert {r["status"] for r in run.records} == {"sent"}
    assert (await simulator.stats())["accepted"] == 5


async def test_stdout_holds_only_records_and_the_summary_goes_to_stderr(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """Pipelines get JSONL on stdout; people get the summary on stderr."""
    path = write_csv(tmp_path / "c.csv", [("A", "+" + number(1))], header="text,to")
    run = await run_cli(*send_args(simulator, path))
    assert run.code == 0, run.stderr
    assert len(run.records) == 1
    assert "1 sent" in run.stderr


@pytest.mark.slow
async def test_throttled_and_transient_answers_are_retried_and_land_once(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """Throttled once, 503 once, status 5 once: each is sent on the retry, accepted exactly once."""
    tos = [number(9994), number(19994), number(9995), number(9998), number(1)]
    path = write_csv(tmp_path / "c.csv", [(f"m{to}", "+" + to) for to in tos], header="text,to")
    run = await run_cli(*send_args(simulator, path))
    assert run.code == 0, run.stderr
    records = run.by_line()
    assert [records[n]["attempts"] for n in range(1, 6)] == [2, 2, 2, 2, 1]
    stats = await simulator.stats()
    assert all(accepted(stats, to) == 1 for to in tos)
    assert stats["throttled"] == 2


async def test_an_ambiguous_fault_is_unknown_and_not_resent(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """Accepted then no answer, or accepted then reset: unknown, and only one request each."""
    tos = [number(9996), number(9997), number(2)]
    path = write_csv(tmp_path / "c.csv", [("x", "+" + to) for to in tos], header="text,to")
    run = await run_cli(*send_args(simulator, path, "--timeout", "0.5", "--retries", "5"))
    assert run.code == 1, run.stderr
    records = run.by_line()
    assert [records[n]["status"] for n in (1, 2, 3)] == ["unknown", "unknown", "sent"]
    assert records[1]["error"] == {
        "kind": "ambiguous",
        "code": "timeout",
        "message": "no answer in time; it may have been sent",
    }
    stats = await simulator.stats()
    assert [requests(stats, to) for to in tos] == [1, 1, 1]


async def test_permanent_errors_fail_the_row_and_the_run_goes_on(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """Barred and invalid numbers are failed/rejected with the provider's code."""
    tos = [number(9990), number(9991), number(3)]
    path = write_csv(tmp_path / "c.csv", [("x", "+" + to) for to in tos], header="text,to")
    run = await run_cli(*send_args(simulator, path))
    assert run.code == 1
    records = run.by_line()
    assert [(records[n]["status"], records[n]["error"]["code"]) for n in (1, 2)] == [
        ("failed", "7"),
        ("failed", "6"),
    ]
    assert records[3]["status"] == "sent"


async def test_bad_credentials_stop_the_run_with_exit_3_after_at_most_a_window(
    tmp_path: Path,
) -> None:
    """The provider refuses the key: exit 3, at most --window requests, every row recorded."""
    simulator = await start_simulator(SimulatorConfig(api_key="right", api_secret="right-secret"))
    try:
        rows = [("x", "+" + number(n)) for n in range(1, 41)]
        path = write_csv(tmp_path / "c.csv", rows, header="text,to")
        run = await run_cli(*send_args(simulator, path, "--window", "4"))
        stats = await simulator.stats()
    finally:
        await simulator.close()
    assert run.code == 3
    assert stats["requests"] <= 4
    assert stats["accepted"] == 0
    assert len(run.by_line()) == 40
    errors = [line for line in run.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1
    assert "Bad Credentials" in errors[0]
    assert "test-secret" not in run.stderr


@pytest.mark.slow
async def test_sigint_drains_requests_in_flight_and_exits_130(tmp_path: Path) -> None:
    """First SIGINT: no new request, in-flight ones finish, every row read has one record."""
    simulator = await start_simulator(SimulatorConfig(latency_ms=300))
    try:
        rows = [("x", "+" + number(n)) for n in range(1, 201)]
        path = write_csv(tmp_path / "c.csv", rows, header="text,to")
        process = await start_cli(*send_args(simulator, path, "--rate", "40", "--window", "8"))
        assert process.stdout is not None
        first = await process.stdout.readline()
        assert json.loads(first)["status"] == "sent"
        process.send_signal(signal.SIGINT)
        stdout, stderr = await process.communicate()
        stats = await simulator.stats()
    finally:
        await simulator.close()
    assert process.returncode == 130, stderr.decode()
    records = [json.loads(first), *(json.loads(line) for line in stdout.decode().splitlines())]
    assert len({r["line"] for r in records}) == len(records) == 200
    sent = [r for r in records if r["status"] == "sent"]
    assert len(sent) == stats["accepted"] < 200
    assert all(r["status"] == "sent" or r["error"]["kind"] == "stopped" for r in records)
    assert "interrupted" in stderr.decode()


async def test_dry_run_needs_no_credentials(tmp_path: Path) -> None:
    """--dry-run sends nothing, so it needs no credentials: every row would be sent."""
    path = write_csv(tmp_path / "c.csv", [("x", "+" + number(n)) for n in range(1, 4)], "text,to")
    env = {k: v for k, v in cli_env().items() if not k.startswith("VONAGE_")}
    run = await run_cli(
        "send", str(path), "--from", "MyShop", "--dry-run", "--rate", "100", env=env
    )
    assert run.code == 0, run.stderr
    assert {(r["status"], r["error"]["code"]) for r in run.records} == {("skipped", "would_send")}


@pytest.mark.parametrize(
    ("args", "header", "message"),
    [
        ([], "name,cell", "no number column"),
        (
            ["--to-column", "mobile"],
            "name,cell",
            "c.csv has no such column (columns: name, cell)",
        ),
        (["--text", "Hi {first}"], "name,to", "no column 'first'"),
        (["--text", "Hi {name"], "name,to", "lone '{'"),
        ([], "name,to", "no 'text' column"),
        (["--rate", "-1"], "text,to", "--rate"),
        (["--window", "0"], "text,to", "--window"),
        (["--api-key", ""], "text,to", "no Vonage API key"),
    ],
)
async def test_usage_errors_exit_2_with_one_line_before_anything_is_sent(
    simulator: RunningSimulator, tmp_path: Path, args: list[str], header: str, message: str
) -> None:
    """A bad flag, column or template: one line on stderr naming it, exit 2, no request."""
    path = write_csv(tmp_path / "c.csv", [("x", "+" + number(1))], header=header)
    env = cli_env(VONAGE_API_KEY="") if "--api-key" in args else None
    run = await run_cli(*send_args(simulator, path, *args), env=env)
    assert run.code == 2
    assert run.stdout == b""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("Error: ")
    assert message in lines[0]
    assert (await simulator.stats())["requests"] == 0


async def test_a_missing_input_file_is_a_usage_error(simulator: RunningSimulator) -> None:
    """The file name and the problem on one line, exit 2."""
    run = await run_cli(*send_args(simulator, "nowhere.csv"))
    assert run.code == 2
    assert run.stderr.strip().splitlines() == [run.stderr.strip()]
    assert "nowhere.csv" in run.stderr


@pytest.mark.slow
async def test_a_second_sigint_aborts_and_records_requests_in_flight_as_unknown(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """Requests that hang: the second SIGINT ends the run at once; in-flight rows are unknown."""
    tos = [number(1), *(number(n * 10000 + 9996) for n in range(10))]
    path = write_csv(tmp_path / "c.csv", [("x", "+" + to) for to in tos], header="text,to")
    process = await start_cli(*send_args(simulator, path, "--window", "3", "--timeout", "60"))
    assert process.stdout is not None
    assert process.stderr is not None
    async with asyncio.timeout(30):
        first = json.loads(await process.stdout.readline())
        assert first["status"] == "sent"
        await simulator.wait_for_accepted(4)  # the window is full of hung requests
        process.send_signal(signal.SIGINT)
        assert b"stopping" in await process.stderr.readline()
        process.send_signal(signal.SIGINT)
        stdout, stderr = await process.communicate()
    assert process.returncode == 130, stderr.decode()
    records = [first, *(json.loads(line) for line in stdout.decode().splitlines())]
    assert sorted(r["line"] for r in records) == list(range(1, 12))
    stats = await simulator.stats()
    unknown = [r for r in records if r["status"] == "unknown"]
    assert 1 <= len(unknown) <= 3
    for record in records:
        if record["status"] == "failed":
            assert record["error"]["kind"] == "stopped"
            assert requests(stats, record["to"]) == 0
    assert "aborted" in stderr.decode()


async def test_stdin_is_read_when_no_input_is_named(simulator: RunningSimulator) -> None:
    """With rows piped in and no INPUT argument, stdin is the input."""
    run = await run_cli(
        "send", "--base-url", simulator.url, "--from", "Shop",
        stdin=f"to,text\n+{number(7)},hello\n".encode(),
    )  # fmt: skip
    assert run.code == 0, run.stderr
    assert [r["status"] for r in run.records] == ["sent"]


@pytest.mark.slow
async def test_a_closed_stdout_stops_the_run_with_exit_4(tmp_path: Path) -> None:
    """`send … | head -n 1`: records cannot be written, so no more SMS are sent."""
    simulator = await start_simulator(SimulatorConfig(latency_ms=20))
    try:
        rows = [("x", "+" + number(n)) for n in range(1, 301)]
        path = write_csv(tmp_path / "c.csv", rows, header="text,to")
        command = " ".join(["sms-blaster", *send_args(simulator, path, "--rate", "100")])
        shell = await asyncio.create_subprocess_exec(
            "bash", "-c",
            f"{sys.executable} -m sms_blaster {command.removeprefix('sms-blaster ')} "
            f"2>{tmp_path}/err | head -n 1 >/dev/null; echo ${{PIPESTATUS[0]}} >{tmp_path}/code",
            env=cli_env(),
        )  # fmt: skip
        async with asyncio.timeout(30):
            await shell.wait()
        stats = await simulator.stats()
    finally:
        await simulator.close()
    assert (tmp_path / "code").read_text().strip() == "4"
    error = (tmp_path / "err").read_text()
    assert error.count("Error:") == 1
    assert "cannot write the records" in error
    assert "Traceback" not in error
    assert stats["accepted"] < 300


@pytest.mark.slow
async def test_adaptive_flow_settles_under_a_limit_the_client_was_not_told(
    tmp_path: Path,
) -> None:
    """The provider throttles above 100/s, the client may send 500/s: few throttles, all once."""
    simulator = await start_simulator(SimulatorConfig(rate_per_s=100))
    try:
        rows = [("x", "+" + number(n)) for n in range(1, 301)]
        path = write_csv(tmp_path / "c.csv", rows, header="text,to")
        run = await run_cli(*send_args(simulator, path, "--rate", "500", "--window", "8"))
        stats = await simulator.stats()
    finally:
        await simulator.close()
    assert run.code == 0, run.stderr
    assert stats["accepted"] == 300
    assert all(r["accepted"] == 1 for r in stats["recipients"].values())
    assert stats["throttled"] < 30, "the flow control kept throttling"
    assert "the provider's limit looked like" in run.stderr


@pytest.mark.parametrize("form", [[], ["--json"], ["--html", "-"]])
async def test_a_report_whose_reader_is_gone_is_one_error_line_with_exit_4(
    tmp_path: Path, form: list[str]
) -> None:
    """`report JOURNAL | head -1`: the pipe closed under the report is said in one line and
    exit 4, as `send` says a closed output, not a BrokenPipeError traceback."""
    simulator = await start_simulator(SimulatorConfig())
    try:
        path = write_csv(tmp_path / "c.csv", [("x", "+" + number(1))], header="text,to")
        assert (await run_cli(*send_args(simulator, path))).code == 0
    finally:
        await simulator.close()
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the report writes a byte
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sms_blaster", "report", f"{path}.journal", *form,
            stdout=write_end, stderr=asyncio.subprocess.PIPE, env=cli_env(),
        )  # fmt: skip
    finally:
        os.close(write_end)
    async with asyncio.timeout(30):
        _, stderr = await process.communicate()
    lines = stderr.decode().splitlines()
    assert lines == ["Error: cannot write the report (Broken pipe)"]
    assert process.returncode == 4


def close_stdout() -> None:
    """In the child: stdout closed, as `>&-` leaves it."""
    os.close(1)


@pytest.mark.parametrize("output", [False, True])
async def test_a_send_whose_stdout_is_closed_is_refused_unless_records_go_to_output(
    tmp_path: Path, output: bool
) -> None:
    """`send … >&-`: the records would be lost (and the run exit 0), so nothing is sent: one
    `Error:` line, exit 2. With --output the records have a place, and the run goes on."""
    simulator = await start_simulator(SimulatorConfig())
    try:
        path = write_csv(tmp_path / "c.csv", [("x", "+" + number(1))], header="text,to")
        extra = ["--output", str(tmp_path / "out.jsonl")] if output else []
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sms_blaster", *send_args(simulator, path, *extra),
            stderr=asyncio.subprocess.PIPE, env=cli_env(), preexec_fn=close_stdout,
        )  # fmt: skip
        async with asyncio.timeout(30):
            _, stderr = await process.communicate()
        requests = (await simulator.stats())["requests"]
    finally:
        await simulator.close()
    if output:
        assert process.returncode == 0, stderr.decode()
        assert requests == 1
        [record] = map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())
        assert record["status"] == "sent"
        return
    assert stderr.decode().splitlines() == [
        "Error: stdout is closed, so the records would be lost: give --output FILE, or send "
        "stdout to a file or pipe (>/dev/null to throw the records away)"
    ]
    assert process.returncode == 2
    assert requests == 0
