"""Inputs no one would write, through the real CLI: no line ends, odd values, UTF-16, column
case, empty inputs and numbers with more than a number."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import json
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import threading
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sms_blaster.simulator import RunningSimulator, SimulatorConfig, start_simulator
from tests.cli_helpers import Run, cli_env, number, run_cli, start_cli, write_csv

MEGABYTE = 1 << 20
# The CLI's own peak (interpreter, aiohttp, phonenumbers) is about 46 MB here, with or without
# 50 MB of input without a line end; reading such a line whole took 144 MB.
PEAK_RSS_BOUND_KB = 100 * 1024


@pytest.fixture
async def simulator() -> AsyncIterator[RunningSimulator]:
    running = await start_simulator(SimulatorConfig())
    yield running
    await running.close()


def send_args(sim: RunningSimulator, path: Path | str, *extra: str) -> list[str]:
    return ["send", str(path), "--base-url", sim.url, "--from", "Shop", "--rate", "500", *extra]


def texts_sent(stats: dict[str, Any], to: str) -> list[str]:
    return [message["text"] for message in stats["recipients"].get(to, {}).get("messages", [])]


def error_lines(run: Run) -> list[str]:
    return [line for line in run.stderr.splitlines() if line.startswith("Error: ")]


# The CLI runs as the child of a small Python process that reports its peak RSS: a child forked
# from this test process would count this process's own peak (the whole suite's) as its own,
# since the kernel carries the resident high-water mark across fork and exec.
_MEASURED = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as report:
    report.write(str(usage.ru_maxrss))
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def run_measured(
    args: list[str], stdin_chunks: Iterable[bytes], timeout_s: float = 120
) -> tuple[Run, int]:
    """Run the CLI with stdin fed from `stdin_chunks`; its result and its own peak RSS in KiB.

    A hang is ended by a kill after `timeout_s`, so it fails the test, not the suite.
    """
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile("r") as peak,
    ):
        command = [sys.executable, "-c", _MEASURED, peak.name, "-m", "sms_blaster", *args]
        process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=out, stderr=err, env=cli_env()
        )
        killer = threading.Timer(timeout_s, process.kill)
        killer.start()
        try:
            assert process.stdin is not None
            try:
                for chunk in stdin_chunks:
                    process.stdin.write(chunk)
                process.stdin.close()
            except BrokenPipeError:
                pass  # the CLI stopped reading: what it did with what it read is the test
            process.wait()
        finally:
            killer.cancel()
        with contextlib.suppress(BrokenPipeError):
            process.stdin.close()
        out.seek(0)
        err.seek(0)
        peak_kb = int(peak.read() or 0)
        return Run(process.returncode, out.read(), err.read().decode()), peak_kb


def without_line_end(size_bytes: int) -> Iterator[bytes]:
    return itertools.repeat(b"x" * MEGABYTE, size_bytes // MEGABYTE)


# --- no line end ------------------------------------------------------------------------------


def assert_invalid_input(record: dict[str, Any], code: str, message: str) -> None:
    """The row's record is a failure of its input, with this code and message."""
    assert record["status"] == "failed"
    assert record["error"] == {"kind": "invalid_input", "code": code, "message": message}


async def test_dev_zero_ends_with_one_error_line_and_sends_nothing(
    simulator: RunningSimulator,
) -> None:
    """`send /dev/zero` is refused at once (exit 2), not read into memory forever."""
    run = await run_cli(*send_args(simulator, "/dev/zero"))
    assert run.code == 2, run.stderr
    assert error_lines(run) == [
        "Error: /dev/zero: the first line is longer than 65,536 characters "
        "(is there no line end?); give a CSV file (a header line, then one row a line) "
        "or a JSONL file (one object a line)"
    ]
    assert (await simulator.stats())["requests"] == 0


async def test_dev_zero_read_as_jsonl_ends_with_an_error_too(simulator: RunningSimulator) -> None:
    """As JSONL, a line before any object stands for the header: refused, exit 2."""
    run = await run_cli(*send_args(simulator, "/dev/zero", "--format", "jsonl"))
    assert run.code == 2, run.stderr
    assert "/dev/zero: the first line is longer than 65,536 characters" in run.stderr
    assert len(error_lines(run)) == 1


async def test_fifty_megabytes_of_header_on_stdin_are_refused_in_flat_memory(
    simulator: RunningSimulator,
) -> None:
    """A pipe of 50 MB without a line end: exit 2 after the bound, the process stays small."""
    args = send_args(simulator, "-")
    run, peak_kb = await asyncio.to_thread(run_measured, args, without_line_end(50 * MEGABYTE))
    assert run.code == 2, run.stderr
    assert "<stdin>: the first line is longer than 65,536 characters" in run.stderr
    assert peak_kb < PEAK_RSS_BOUND_KB


async def test_a_fifty_megabyte_row_is_one_failed_record_and_the_next_row_is_sent(
    simulator: RunningSimulator,
) -> None:
    """The long row fails as malformed_row, reading goes on at its line end, memory stays flat."""
    chunks = itertools.chain(
        [b"to,text\n+" + number(1).encode() + b","],
        without_line_end(50 * MEGABYTE),
        [b"\n+" + number(2).encode() + b",hello\n"],
    )
    run, peak_kb = await asyncio.to_thread(run_measured, send_args(simulator, "-"), chunks)
    assert run.code == 1, run.stderr
    records = run.by_line()
    assert_invalid_input(records[1], "malformed_row", "row longer than 65,536 characters")
    assert records[2]["status"] == "sent"
    assert texts_sent(await simulator.stats(), number(2)) == ["hello"]
    assert peak_kb < PEAK_RSS_BOUND_KB


# --- one rule for values ----------------------------------------------------------------------


async def test_an_empty_csv_cell_in_a_placeholder_is_missing_value_not_an_empty_insert(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """`Hi {name}` with an empty or blank name fails as missing_value; nothing is sent for it."""
    rows = [("", "+" + number(1)), ("  ", "+" + number(2)), ("Ann", "+" + number(3))]
    path = write_csv(tmp_path / "c.csv", rows)
    run = await run_cli(*send_args(simulator, path, "--text", "Hi {name}!"))
    assert run.code == 1, run.stderr
    records = run.by_line()
    for line in (1, 2):
        assert_invalid_input(records[line], "missing_value", "no value for 'name'")
    stats = await simulator.stats()
    assert (texts_sent(stats, number(1)), texts_sent(stats, number(3))) == ([], ["Hi Ann!"])


async def test_a_jsonl_row_with_a_key_given_twice_is_refused_not_sent_to_either_number(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """`{"to": A, "to": B}` went to B (json keeps the last), exit 0: a guess. Now the row is a
    failed record naming the key, nothing is sent for it, and the run exits 1."""
    path = tmp_path / "c.jsonl"
    path.write_text(
        f'{{"to": "+{number(1)}", "to": "+{number(2)}", "text": "hi"}}\n'
        f'{{"to": "+{number(3)}", "text": "hi"}}\n'
    )
    run = await run_cli(*send_args(simulator, path))
    assert run.code == 1, run.stderr
    records = run.by_line()
    assert_invalid_input(records[1], "malformed_row", "key 'to' appears twice; keep one")
    assert records[2]["status"] == "sent"
    stats = await simulator.stats()
    assert (texts_sent(stats, number(1)), texts_sent(stats, number(2))) == ([], [])


async def test_jsonl_values_follow_the_same_rule_and_numbers_keep_their_digits(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """Null, list, object and boolean fail naming the column; numbers go as written."""
    rows = [
        {"to": int(number(1)), "name": None},
        {"to": [int(number(2))], "name": "Ann"},
        {"to": int(number(3)), "name": {"first": "Ann"}},
        {"to": int(number(4)), "name": True},
        {"to": int(number(5)), "name": "Ann", "text": ["a", "b"]},
        {"to": int(number(6)), "name": 447911123456},
        {"to": int(number(7)), "name": 2.50},
    ]
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    run = await run_cli(*send_args(simulator, path, "--text", "Hi {name}"))
    assert run.code == 1, run.stderr
    errors = {line: record["error"] for line, record in run.by_line().items()}
    assert errors[1] == {
        "kind": "invalid_input",
        "code": "missing_value",
        "message": "no value for 'name'",
    }
    assert errors[2]["message"] == "'to' is a JSON list; give a string or a number"
    assert errors[3]["message"] == "'name' is a JSON object; give a string or a number"
    assert errors[4]["message"] == "'name' is a JSON boolean; give a string or a number"
    assert {errors[line]["code"] for line in (2, 3, 4)} == {"invalid_value"}
    assert errors[5] is None  # a list in a column the message does not use is no matter
    stats = await simulator.stats()
    assert texts_sent(stats, number(6)) == ["Hi 447911123456"]
    assert texts_sent(stats, number(7)) == ["Hi 2.5"]
    assert stats["accepted"] == 3


async def test_a_list_in_the_text_column_is_invalid_value(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """Without --text, the text column follows the same rule: a list is not a message."""
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"to": "+" + number(1), "text": ["Hi", "there"]}) + "\n")
    run = await run_cli(*send_args(simulator, path))
    assert run.code == 1, run.stderr
    assert run.records[0]["error"]["code"] == "invalid_value"
    assert (await simulator.stats())["accepted"] == 0


async def test_a_quote_left_open_at_the_end_fails_its_row_instead_of_sending_the_rest(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """An unclosed quote does not make one message of the rows after it."""
    path = tmp_path / "c.csv"
    path.write_text(f'to,text\n+{number(1)},"oops\n+{number(2)},two\n')
    run = await run_cli(*send_args(simulator, path))
    assert run.code == 1, run.stderr
    assert run.records[0]["error"] == {
        "kind": "invalid_input",
        "code": "malformed_row",
        "message": "unreadable CSV row: a quoted field is never closed (a stray '\"'?)",
    }
    assert (await simulator.stats())["requests"] == 0


async def test_a_blank_text_template_is_refused_before_sending(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """`--text '  '` would fail every row as empty: one error line up front instead."""
    path = write_csv(tmp_path / "c.csv", [("Ann", "+" + number(1))])
    run = await run_cli(*send_args(simulator, path, "--text", "  "))
    assert run.code == 2, run.stderr
    assert error_lines(run) == [
        "Error: --text is empty; give the message, e.g. --text 'Hello {name}'"
    ]


# --- UTF-16 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
async def test_a_utf16_file_with_a_bom_is_sent_whatever_encoding_says(
    simulator: RunningSimulator, tmp_path: Path, codec: str
) -> None:
    """A UTF-16 BOM decides the encoding, even with --encoding latin-1."""
    path = tmp_path / "c.csv"
    path.write_bytes(f"\ufeffname,phone\r\nZoë,+{number(1)}\r\n".encode(codec))
    run = await run_cli(*send_args(simulator, path, "--text", "Hi {name}", "--encoding", "latin-1"))
    assert run.code == 0, run.stderr
    assert texts_sent(await simulator.stats(), number(1)) == ["Hi Zoë"]


async def test_utf16_jsonl_with_a_bom_on_stdin_is_sent(simulator: RunningSimulator) -> None:
    """Stdin too: the BOM is read before the format is sniffed."""
    data = (json.dumps({"to": "+" + number(1), "text": "hé"}) + "\n").encode("utf-16")  # BOM, LE
    run = await run_cli(*send_args(simulator, "-"), stdin=data)
    assert run.code == 0, run.stderr
    assert texts_sent(await simulator.stats(), number(1)) == ["hé"]


async def test_utf16_without_a_bom_is_refused_with_a_hint(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """Every other byte NUL: exit 2, naming --encoding utf-16-le."""
    path = tmp_path / "c.csv"
    path.write_bytes(f"name,phone\nAnn,+{number(1)}\n".encode("utf-16-le"))
    run = await run_cli(*send_args(simulator, path, "--text", "Hi {name}"))
    assert run.code == 2, run.stderr
    assert error_lines(run) == [
        f"Error: {path}: looks like UTF-16 without a byte order mark (every other byte is NUL); "
        "use --encoding utf-16-le (or utf-16-be)"
    ]


# --- column names ------------------------------------------------------------------------------


async def test_columns_and_placeholders_match_ignoring_case_and_spaces(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """A ` Phone ` column is the number column; {NAME} takes the `Name` column."""
    path = write_csv(tmp_path / "c.csv", [("Ann", "+" + number(1))], header="Name, Phone ")
    run = await run_cli(*send_args(simulator, path, "--text", "Hi {NAME}"))
    assert run.code == 0, run.stderr
    assert texts_sent(await simulator.stats(), number(1)) == ["Hi Ann"]


async def test_to_column_matches_ignoring_case(simulator: RunningSimulator, tmp_path: Path) -> None:
    """--to-column cell finds the `Cell` column."""
    path = write_csv(tmp_path / "c.csv", [("Ann", "+" + number(1))], header="text,Cell")
    run = await run_cli(*send_args(simulator, path, "--to-column", "cell"))
    assert run.code == 0, run.stderr
    assert (await simulator.stats())["accepted"] == 1


async def test_columns_differing_only_in_case_are_refused_naming_both(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """`phone` and `Phone` in one header: exit 2, both named."""
    path = write_csv(tmp_path / "c.csv", [("1", "2")], header="phone,Phone")
    run = await run_cli(*send_args(simulator, path, "--text", "Hi"))
    assert run.code == 2, run.stderr
    assert "columns 'phone' and 'Phone' differ only in case" in run.stderr
    assert len(error_lines(run)) == 1


# --- empty inputs ------------------------------------------------------------------------------


@pytest.mark.parametrize("content", ["", "name,phone\n", "name,phone\r\n\r\n  \n"])
async def test_an_empty_or_header_only_file_is_exit_2_naming_it(
    simulator: RunningSimulator, tmp_path: Path, content: str
) -> None:
    """A cron job fed an empty export hears of it: one error line, exit 2."""
    path = tmp_path / "c.csv"
    path.write_text(content)
    run = await run_cli(*send_args(simulator, path, "--text", "Hi"))
    assert run.code == 2, run.stderr
    [line] = error_lines(run)
    assert line.startswith(f"Error: {path}: no rows to send")
    assert run.stdout == b""


async def test_empty_stdin_is_exit_2(simulator: RunningSimulator) -> None:
    """Stdin that ends with no row is refused the same way."""
    run = await run_cli(*send_args(simulator, "-", "--text", "Hi"), stdin=b"to\n")
    assert run.code == 2, run.stderr
    assert error_lines(run) == [
        "Error: <stdin>: no rows to send (the input ended after the header); nothing was sent"
    ]


async def test_a_resume_with_every_row_settled_is_not_empty(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """Rows settled by an earlier run are rows: the resume exits 0 and sends nothing again."""
    path = write_csv(tmp_path / "c.csv", [("Ann", "+" + number(1))])
    first = await run_cli(*send_args(simulator, path, "--text", "Hi {name}"))
    assert first.code == 0, first.stderr
    again = await run_cli(*send_args(simulator, path, "--text", "Hi {name}"))
    assert again.code == 0, again.stderr
    assert again.records[0]["error"]["kind"] == "already_settled"
    assert (await simulator.stats())["accepted"] == 1


async def pipe_drained(writer: asyncio.StreamWriter) -> None:
    """Wait until the reader has taken every byte written to the pipe (FIONREAD reaches 0)."""
    fd = writer.transport.get_extra_info("pipe").fileno()
    for _ in range(2000):
        if not struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0]:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the CLI did not read its stdin in 20 s")


async def test_ctrl_c_while_waiting_for_the_first_row_ends_the_run(
    simulator: RunningSimulator,
) -> None:
    """A header and then nothing yet on a pipe: the first SIGINT ends the run, exit 130."""
    process = await start_cli(*send_args(simulator, "-", "--text", "Hi"), stdin=True)
    assert process.stdin is not None
    process.stdin.write(b"to\n")
    await process.stdin.drain()
    await pipe_drained(process.stdin)
    process.send_signal(signal.SIGINT)
    async with asyncio.timeout(20):
        _, stderr = await process.communicate()
    assert process.returncode == 130, stderr
    assert (await simulator.stats())["requests"] == 0


# --- numbers -----------------------------------------------------------------------------------


async def test_a_number_with_an_extension_is_invalid_and_not_sent(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """`+44 7911 100001 ext 5` fails as invalid_number saying why; nothing is sent."""
    rows = [("Ann", "+44 7911 100001 ext 5"), ("Bob", "+44 7911 100002 x5")]
    path = write_csv(tmp_path / "c.csv", rows)
    run = await run_cli(*send_args(simulator, path, "--text", "Hi {name}"))
    assert run.code == 1, run.stderr
    records = run.by_line()
    assert records[1]["error"] == {
        "kind": "invalid_input",
        "code": "invalid_number",
        "message": "not a valid phone number: it has an extension ('ext 5'), which an SMS "
        "cannot reach; remove it",
    }
    assert records[2]["error"]["code"] == "invalid_number"
    assert (await simulator.stats())["requests"] == 0
