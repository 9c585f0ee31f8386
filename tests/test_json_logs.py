"""--log-format json: every stderr line of every command is one JSON object (ts, level, msg and
the line's figures), chosen by the flag or SMS_BLASTER_LOG_FORMAT; text stays as it was."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sms_blaster import logs
from sms_blaster.assembly import progress_mode
from sms_blaster.journal.optouts import OptOutJournal
from sms_blaster.logs import Level, LogFormat
from sms_blaster.models import Record, Status
from sms_blaster.output import FlowFigures, Progress, ProgressMode, RecordTotals
from sms_blaster.simulator import RunningSimulator, SimulatorConfig, start_simulator
from tests.cli_helpers import cli_env, number, run_cli, start_cli, write_csv

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
LEVELS = {"info", "warning", "error"}


def json_lines(stderr: str) -> list[dict[str, Any]]:
    """Every stderr line as a JSON object with ts, level and msg: fails on any other line."""
    lines = [json.loads(line) for line in stderr.splitlines()]
    for line in lines:
        assert TIMESTAMP.match(line["ts"]), line
        assert line["level"] in LEVELS, line
        assert isinstance(line["msg"], str), line
    return lines


@pytest.fixture
async def simulator() -> AsyncIterator[RunningSimulator]:
    running = await start_simulator(SimulatorConfig())
    yield running
    await running.close()


def campaign(tmp_path: Path, count: int) -> Path:
    rows = [("x", "+" + number(n)) for n in range(1, count + 1)] + [("x", "12")]
    return write_csv(tmp_path / "c.csv", rows, header="text,to")


def test_a_text_line_is_the_message_as_it_is() -> None:
    """The default format writes the text and a newline, nothing else, whatever the fields."""
    stream = io.StringIO()
    logs.say(stream, "sms-blaster: hello", Level.WARNING, rows=3)
    assert stream.getvalue() == "sms-blaster: hello\n"


def test_a_json_line_holds_the_time_level_message_and_fields() -> None:
    """One object on one line; a field cannot take the place of ts, level or msg."""
    stream = io.StringIO()
    with logs.using(LogFormat.JSON):
        logs.say(stream, "two\nlines", Level.WARNING, rows=3, msg="not this")
    text = stream.getvalue()
    assert text.count("\n") == 1
    line = json_lines(text)[0]
    assert (line["level"], line["msg"], line["rows"]) == ("warning", "two\nlines", 3)


def test_a_json_line_is_ascii_so_no_control_character_reaches_a_terminal() -> None:
    """A right-to-left override from the input is escaped in the line, kept in the value."""
    stream = io.StringIO()
    with logs.using(LogFormat.JSON):
        logs.say(stream, "to \u202e\x1b[2J", name="\u202e")
    assert stream.getvalue().isascii()
    assert json.loads(stream.getvalue())["name"] == "\u202e"


def test_the_timestamp_is_rfc_3339_in_utc_with_milliseconds() -> None:
    """1 s and 250 ms after the epoch."""
    assert logs.timestamp(1.25) == "1970-01-01T00:00:01.250Z"


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        ([], {}, LogFormat.TEXT),
        (["send", "--log-format", "json"], {}, LogFormat.JSON),
        (["--log-format=json", "send"], {}, LogFormat.JSON),
        (["send", "--log-format", "json", "--log-format", "text"], {}, LogFormat.TEXT),
        (["send"], {"SMS_BLASTER_LOG_FORMAT": "json"}, LogFormat.JSON),
        (["send", "--log-format", "text"], {"SMS_BLASTER_LOG_FORMAT": "json"}, LogFormat.TEXT),
        (["send", "--", "--log-format", "json"], {}, LogFormat.TEXT),
        (["send", "--log-format", "xml"], {}, LogFormat.TEXT),
        (["send", "--log-format"], {}, LogFormat.TEXT),
    ],
)
def test_the_format_is_read_from_the_command_line_before_click_parses_it(
    argv: list[str], environ: dict[str, str], expected: LogFormat
) -> None:
    """The last flag wins, then the environment, then text; a value click refuses gives text."""
    assert logs.format_from(argv, environ) is expected


def test_a_logging_record_is_a_json_line_with_its_logger_and_traceback() -> None:
    """ERROR and up are `error`; the traceback is one field of the one line."""
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "sms_blaster.receiver", logging.CRITICAL, __file__, 1, "bad %s", ("thing",),
            sys.exc_info(),
        )  # fmt: skip
    line = json_lines(logs.JsonFormatter().format(record))[0]
    assert (line["level"], line["msg"], line["logger"]) == ("error", "bad thing", record.name)
    assert "ValueError: boom" in line["exception"]


def test_a_json_progress_line_carries_the_counts_and_the_flow_figures() -> None:
    """rows, each status, the rate, and in flight, window, pace and throttles."""
    tally = RecordTotals()
    tally.add(Record(1, "447911123456", Status.SENT, "ref-1"))
    stream = io.StringIO()
    progress = Progress(
        stream, ProgressMode.LINES, tally, lambda: None, live=lambda: FlowFigures(2, 8, 30.04, 1)
    )
    with logs.using(LogFormat.JSON):
        progress.show()
    line = json_lines(stream.getvalue())[0]
    assert line["msg"].startswith("sms-blaster: 1 rows: 1 sent")
    assert {key: line[key] for key in ("rows", "sent", "failed", "unknown", "skipped")} == {
        "rows": 1, "sent": 1, "failed": 0, "unknown": 0, "skipped": 0
    }  # fmt: skip
    assert line["rate_per_s"] >= 0
    assert (line["in_flight"], line["window"], line["pace_per_s"], line["throttled"]) == (
        2, 8, 30.0, 1
    )  # fmt: skip


def test_json_logs_on_a_terminal_take_progress_lines_not_the_bar() -> None:
    """A bar redrawn in place is no log line."""
    with logs.using(LogFormat.JSON):
        assert progress_mode(None, stderr_is_tty=True) is ProgressMode.LINES
    assert progress_mode(None, stderr_is_tty=True) is ProgressMode.BAR


async def test_a_send_and_its_resume_write_only_json_lines_with_their_figures(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """The summary is one object with its counts, reasons, latency, cost and flow figures; the
    resume line names what it skipped."""
    path = campaign(tmp_path, 3)
    args = ["send", str(path), "--base-url", simulator.url, "--from", "Shop", "--rate", "500"]
    run = await run_cli(*args, "--log-format", "json")
    assert run.code == 1, run.stderr
    [summary] = json_lines(run.stderr)
    assert summary["msg"].startswith("sms-blaster: 4 rows in ")
    assert (summary["rows"], summary["sent"], summary["failed"]) == (4, 3, 1)
    assert summary["reasons"] == {"invalid_input/invalid_number": 1}
    assert summary["segments"] == 3
    assert summary["latency_p50_ms"] > 0
    assert {"rate_per_s", "latency_p99_ms", "cost", "throttles", "pace_per_s", "window"} <= set(
        summary
    )
    again = await run_cli(*args, env=cli_env(SMS_BLASTER_LOG_FORMAT="json"))
    resume, summary = json_lines(again.stderr)
    assert (resume["settled"], resume["were_inflight"]) == (4, 0)
    assert summary["skipped"] == 4


async def test_the_default_text_has_no_json(simulator: RunningSimulator, tmp_path: Path) -> None:
    """Without the flag or the variable the summary is the human lines."""
    path = campaign(tmp_path, 1)
    run = await run_cli("send", str(path), "--base-url", simulator.url, "--from", "Shop")
    assert run.stderr.startswith("sms-blaster: 2 rows in "), run.stderr
    assert "{" not in run.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["send", "c.csv", "--rate", "abc"],  # a bad value, in click's conversion
        ["send", "c.csv", "--no-such-option"],  # click's own usage error, in its parser
        ["report"],  # our own usage error
        ["optouts", "list"],
        ["mock-provider", "--port", "0", "--limiter", "nonsense"],
        ["receive", "--port", "0"],
        ["enqueue", "c.csv", "--redis", "redis://127.0.0.1:1/0", "--campaign", "x"],
        # --redis-grace 0: a worker waits for a Redis away at its start for the grace (a line)
        ["worker", "--redis", "redis://127.0.0.1:1/0", "--campaign", "x", "--redis-grace", "0"],
    ],
)
async def test_an_error_of_any_command_is_one_json_line_with_its_exit_code(
    args: list[str],
) -> None:
    """Exit 2 (or 4 for an unusable Redis), one line, `error`, the exit code a field."""
    run = await run_cli(*args, env=cli_env(SMS_BLASTER_LOG_FORMAT="json"))
    [line] = json_lines(run.stderr)
    assert run.code in (2, 4)
    assert (line["level"], line["exit_code"]) == ("error", run.code)
    assert line["msg"].startswith("Error: ")


async def test_a_log_format_that_is_no_format_is_refused_in_text() -> None:
    """Exit 2 before anything runs, naming the variable and the fix."""
    run = await run_cli("report", "x.journal", env=cli_env(SMS_BLASTER_LOG_FORMAT="xml"))
    assert run.code == 2
    assert run.stderr.startswith("Error: SMS_BLASTER_LOG_FORMAT=xml: ")
    assert "fix or unset SMS_BLASTER_LOG_FORMAT" in run.stderr


async def test_an_optouts_import_says_what_it_changed_in_json(tmp_path: Path) -> None:
    """The closing line carries the entries read and changed."""
    listed = tmp_path / "list.txt"
    listed.write_text(f"+{number(1)}\n+{number(2)}\n")
    store = str(tmp_path / "s.journal")
    OptOutJournal.open(store).close()
    run = await run_cli("optouts", "import", str(listed), "--store", store, "--log-format", "json")
    assert run.code == 0, run.stderr
    [line] = json_lines(run.stderr)
    assert (line["read"], line["changed"]) == (2, 2)


async def test_a_report_writes_nothing_on_stderr_in_json(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """The report itself is stdout's; stderr stays empty, so every line of it is JSON."""
    path = campaign(tmp_path, 1)
    sent = await run_cli("send", str(path), "--base-url", simulator.url, "--from", "Shop")
    assert sent.code == 1, sent.stderr
    run = await run_cli("report", str(tmp_path / "c.csv.journal"), "--log-format", "json")
    assert run.code == 0, run.stderr
    assert json_lines(run.stderr) == []


async def test_the_servers_say_where_they_listen_and_log_in_json(tmp_path: Path) -> None:
    """mock-provider and receive: the listening line with its url, the receiver's warnings
    (through `logging`) as objects of their logger, and nothing else on stderr."""
    for args in (
        ["mock-provider", "--port", "0"],
        ["receive", "--port", "0", "--store", str(tmp_path / "s.journal")],
    ):
        process = await start_cli(*args, "--log-format", "json")
        assert process.stderr is not None
        async with asyncio.timeout(20):
            seen = [await process.stderr.readline()]
            while b"listening on" not in seen[-1]:
                assert seen[-1], "exited before listening"
                seen.append(await process.stderr.readline())
            process.send_signal(signal.SIGTERM if args[0] == "receive" else signal.SIGINT)
            seen.append(await process.stderr.read())
            await process.wait()
        lines = json_lines(b"".join(seen).decode())
        listening = next(line for line in lines if "listening on" in line["msg"])
        assert listening["url"].startswith("http://127.0.0.1:")
        if args[0] == "receive":
            warnings = [line for line in lines if line["level"] == "warning"]
            assert warnings
            assert all(line["logger"] == "sms_blaster.receiver" for line in warnings)


async def test_enqueue_and_a_worker_write_only_json_lines(
    simulator: RunningSimulator, tmp_path: Path, redis_url: str
) -> None:
    """enqueue's count of rows queued and refused; the worker's start line and summary."""
    path = campaign(tmp_path, 3)
    common = ["--redis", redis_url, "--campaign", "json-logs", "--log-format", "json"]
    enqueued = await run_cli("enqueue", str(path), "--from", "Shop", *common)
    assert enqueued.code == 1, enqueued.stderr  # the row that is no number is refused
    [line] = json_lines(enqueued.stderr)
    assert (line["rows"], line["queued"], line["refused"]) == (4, 3, 1)
    worked = await run_cli("worker", "--base-url", simulator.url, "--no-progress", *common)
    assert worked.code == 0, worked.stderr
    lines = json_lines(worked.stderr)
    start = next(line for line in lines if "worker" in line)
    assert start["campaign"] == "json-logs"
    assert lines[-1]["sent"] == 3


async def test_a_crash_and_a_python_warning_are_json_lines_too() -> None:
    """A bug's traceback is one `error` object; a warning is a `warning` object."""
    code = (
        "import sys, warnings; from sms_blaster import logs; "
        "logs.use(logs.LogFormat.JSON, sys.stderr); "
        "warnings.warn('careful'); raise ValueError('boom')"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stderr=asyncio.subprocess.PIPE, env=cli_env()
    )
    async with asyncio.timeout(20):
        _, stderr = await process.communicate()
    warning, crash = json_lines(stderr.decode())
    assert warning["level"] == "warning"
    assert "careful" in warning["msg"]
    assert crash["level"] == "error"
    assert "ValueError: boom" in crash["exception"]


async def test_a_dry_runs_json_summary_carries_its_estimate(tmp_path: Path) -> None:
    """Messages, segments, cost at --price and duration at --rate, under `dry_run`."""
    path = campaign(tmp_path, 2)
    run = await run_cli(
        "send", str(path), "--from", "Shop", "--dry-run", "--price", "0.05", "--rate", "1",
        "--log-format", "json",
    )  # fmt: skip
    assert run.code == 1, run.stderr  # the row that is no number
    [summary] = json_lines(run.stderr)
    assert summary["dry_run"] == {
        "messages": 2, "segments": 2, "segments_saved": 0, "segments_added": 0, "cost": "0.10",
        "duration_s": 2,
    }  # fmt: skip


async def test_credentials_a_provider_echoes_stay_masked_in_json_lines(tmp_path: Path) -> None:
    """Exit 3 on bad credentials; the error line holds the mask, never the secret."""
    secret = "s3cr3t-Value-42"
    echoing = await start_simulator(SimulatorConfig(echo_credentials=True))
    try:
        run = await run_cli(
            "send", str(campaign(tmp_path, 1)), "--base-url", echoing.url, "--from", "Shop",
            "--no-journal", "--log-format", "json",
            env=cli_env(VONAGE_API_KEY="key-1", VONAGE_API_SECRET=secret),
        )  # fmt: skip
    finally:
        await echoing.close()
    assert run.code == 3, run.stderr
    error = json_lines(run.stderr)[-1]
    assert error["exit_code"] == 3
    assert "[redacted]" in error["msg"]
    assert secret not in run.stderr
