"""--output through the real CLI: never the journal or the input, appended on resume, and a
file that cannot be written stops the run like a closed stdout."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sms_blaster.journal import unsettled
from sms_blaster.simulator import RunningSimulator, SimulatorConfig, start_simulator
from tests.cli_helpers import cli_env, number, run_cli, write_csv


@pytest.fixture
async def simulator() -> AsyncIterator[RunningSimulator]:
    running = await start_simulator(SimulatorConfig())
    yield running
    await running.close()


def send_args(sim: RunningSimulator, path: Path | str, *extra: str) -> list[str]:
    return ["send", str(path), "--base-url", sim.url, "--from", "Shop", "--rate", "500", *extra]


def campaign(tmp_path: Path, count: int) -> Path:
    rows = [("x", "+" + number(n)) for n in range(1, count + 1)]
    return write_csv(tmp_path / "c.csv", rows, header="text,to")


def relative_to_cwd(path: Path) -> str:
    return os.path.relpath(path)


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize(
    "output",
    [
        "{dir}/c.csv.journal",
        "{dir}/./c.csv.journal",
        "{dir}/sub/../c.csv.journal",
        "{dir}/c.csv.journal-wal",
        "{dir}/c.csv.journal-shm",
        "{dir}/c.csv.journal.lock",
        "{dir}/link-to-journal",
        "{dir}/c.csv",
    ],
)
async def test_an_output_naming_the_journal_its_files_or_the_input_is_refused(
    simulator: RunningSimulator, tmp_path: Path, output: str
) -> None:
    """Compared by real path, existing or not: exit 2, one line, nothing sent, nothing written."""
    path = campaign(tmp_path, 2)
    (tmp_path / "sub").mkdir()
    (tmp_path / "link-to-journal").symlink_to(tmp_path / "c.csv.journal")
    run = await run_cli(*send_args(simulator, path, "--output", output.format(dir=tmp_path)))
    assert run.code == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("Error: --output "), run.stderr
    assert (await simulator.stats())["requests"] == 0
    assert not (tmp_path / "c.csv.journal").exists()


async def test_an_output_naming_an_explicit_journal_relatively_is_refused(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """--journal given absolute, --output the same file given relative to the working dir."""
    path = campaign(tmp_path, 2)
    journal = tmp_path / "j.db"
    relative = relative_to_cwd(journal)
    run = await run_cli(
        *send_args(simulator, path, "--journal", str(journal), "--output", relative)
    )
    assert run.code == 2, run.stderr
    assert "that is the journal" in run.stderr
    assert (await simulator.stats())["requests"] == 0


@pytest.mark.parametrize("option", ["--suppress", "--optouts"])
async def test_an_output_naming_an_opt_out_list_is_refused(
    simulator: RunningSimulator, tmp_path: Path, option: str
) -> None:
    """The opt-out list survives: writing records over it would send to people who opted out."""
    path = campaign(tmp_path, 2)
    optout = tmp_path / "optout.txt"
    optout.write_text(number(1) + "\n")
    run = await run_cli(*send_args(simulator, path, option, str(optout), "--output", str(optout)))
    assert run.code == 2, run.stderr
    assert f"the {option} list" in run.stderr
    assert optout.read_text() == number(1) + "\n"


@pytest.mark.slow
async def test_an_output_that_cannot_be_written_stops_the_run_with_exit_4(
    tmp_path: Path,
) -> None:
    """--output /dev/full: no more SMS once a write fails; the resume sends the rest once."""
    simulator = await start_simulator(SimulatorConfig(latency_ms=20))
    try:
        path = campaign(tmp_path, 300)
        run = await run_cli(*send_args(simulator, path, "--rate", "100", "--output", "/dev/full"))
        accepted_first = (await simulator.stats())["accepted"]
        resumed = await run_cli(*send_args(simulator, path, "--output", str(tmp_path / "o.jsonl")))
        stats = await simulator.stats()
    finally:
        await simulator.close()
    assert run.code == 4, run.stderr
    assert run.stderr.count("Error:") == 1
    assert "Traceback" not in run.stderr
    assert "/dev/full" in run.stderr
    assert accepted_first < 300
    assert resumed.code == 0, resumed.stderr
    assert stats["accepted"] == 300
    assert all(recipient["accepted"] == 1 for recipient in stats["recipients"].values())


async def test_a_write_error_at_the_last_flush_is_exit_4(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """Records small enough to wait in the buffer fail only at the close: still exit 4."""
    path = campaign(tmp_path, 2)
    run = await run_cli(*send_args(simulator, path, "--output", "/dev/full"))
    assert run.code == 4, run.stderr
    assert run.stderr.count("Error:") == 1
    assert "Traceback" not in run.stderr
    assert "cannot write the records" in run.stderr


async def test_a_resumed_campaign_appends_to_its_output(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """Re-running keeps the earlier run's sent records (message ids, prices) and adds its own."""
    path = campaign(tmp_path, 2)
    output = tmp_path / "o.jsonl"
    first = await run_cli(*send_args(simulator, path, "--output", str(output)))
    assert first.code == 0, first.stderr
    earlier = lines_of(output)
    with path.open("a") as handle:
        handle.write(f"x,+{number(3)}\n")
    again = await run_cli(*send_args(simulator, path, "--output", str(output)))
    assert again.code == 0, again.stderr
    records = lines_of(output)
    assert records[:2] == earlier
    assert [r["status"] for r in earlier] == ["sent", "sent"]
    later = sorted((r["line"], r["status"]) for r in records[2:])
    assert later == [(1, "skipped"), (2, "skipped"), (3, "sent")]


async def test_a_resume_drops_a_record_cut_short_before_appending(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """A run killed mid-write left half a line: the resumed output is still one record a line."""
    path = campaign(tmp_path, 2)
    output = tmp_path / "o.jsonl"
    assert (await run_cli(*send_args(simulator, path, "--output", str(output)))).code == 0
    with output.open("a") as handle:
        handle.write('{"line": 2, "to": "44791')
    with path.open("a") as handle:
        handle.write(f"x,+{number(3)}\n")
    again = await run_cli(*send_args(simulator, path, "--output", str(output)))
    assert again.code == 0, again.stderr
    lines = [r["line"] for r in lines_of(output)]  # in completion order within each run
    assert sorted(lines[:2]) == [1, 2]
    assert sorted(lines[2:]) == [1, 2, 3]


async def test_a_new_campaign_refuses_a_non_empty_output(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """Another campaign's records are not truncated: exit 2 before anything is sent."""
    path = campaign(tmp_path, 2)
    output = tmp_path / "o.jsonl"
    output.write_text('{"line": 1, "status": "sent"}\n')
    run = await run_cli(*send_args(simulator, path, "--output", str(output)))
    assert run.code == 2, run.stderr
    assert "--force" in run.stderr
    assert output.read_text() == '{"line": 1, "status": "sent"}\n'
    assert (await simulator.stats())["requests"] == 0


async def test_force_lets_a_new_campaign_overwrite_its_output(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """With --force the file holds this run's records only."""
    path = campaign(tmp_path, 2)
    output = tmp_path / "o.jsonl"
    output.write_text('{"line": 9, "status": "sent"}\n')
    run = await run_cli(*send_args(simulator, path, "--output", str(output), "--force"))
    assert run.code == 0, run.stderr
    assert [(r["line"], r["status"]) for r in lines_of(output)] == [(1, "sent"), (2, "sent")]


def enqueue_args(redis_url: str, path: Path, *extra: str) -> list[str]:
    return ["enqueue", str(path), "--redis", redis_url, "--campaign", "spring", "--from", "Shop",
            *extra]  # fmt: skip


async def test_enqueue_refuses_a_non_empty_output_for_a_new_campaign(
    redis_url: str, tmp_path: Path
) -> None:
    """A new campaign's enqueue does not truncate another file: exit 2, nothing queued."""
    path = write_csv(tmp_path / "c.csv", [("x", "+" + number(1)), ("x", "12")], "text,to")
    output = tmp_path / "refused.jsonl"
    output.write_text("keep\n")
    run = await run_cli(*enqueue_args(redis_url, path, "--output", str(output)))
    assert run.code == 2, run.stderr
    assert "--force" in run.stderr
    assert output.read_text() == "keep\n"
    assert "queued" not in run.stderr


@pytest.mark.slow
async def test_a_worker_appends_to_its_output(
    redis_url: str, simulator: RunningSimulator, tmp_path: Path
) -> None:
    """A worker run again (a campaign goes on) adds its records after the ones already there."""
    path = write_csv(tmp_path / "c.csv", [("x", "+" + number(1))], "text,to")
    assert (await run_cli(*enqueue_args(redis_url, path))).code == 0
    output = tmp_path / "worker.jsonl"
    output.write_text('{"line": 9}\n')
    run = await run_cli(
        "worker", "--redis", redis_url, "--campaign", "spring", "--base-url", simulator.url,
        "--no-progress", "--output", str(output),
    )  # fmt: skip
    assert run.code == 0, run.stderr
    assert [(r["line"], r.get("status")) for r in lines_of(output)] == [(9, None), (1, "sent")]


async def test_enqueue_to_an_output_that_cannot_be_written_is_exit_4(
    redis_url: str, tmp_path: Path
) -> None:
    """The records of refused rows cannot be written: one Error line and exit 4, not silence."""
    path = write_csv(tmp_path / "c.csv", [("x", "+" + number(1)), ("x", "12")], "text,to")
    run = await run_cli(*enqueue_args(redis_url, path, "--output", "/dev/full"))
    assert run.code == 4, run.stderr
    assert run.stderr.count("Error:") == 1
    assert "Traceback" not in run.stderr
    assert "/dev/full" in run.stderr


async def test_an_output_naming_the_file_stdin_is_redirected_from_is_refused(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """`send - --output list.csv --force < list.csv` would truncate its own input: exit 2."""
    path = campaign(tmp_path, 2)
    before = path.read_text()
    args = " ".join(send_args(simulator, "-", "--output", str(path), "--force"))
    shell = await asyncio.create_subprocess_exec(
        "bash", "-c", f"{sys.executable} -m sms_blaster {args} < {path}",
        stderr=asyncio.subprocess.PIPE, env=cli_env(),
    )  # fmt: skip
    async with asyncio.timeout(30):
        _, stderr = await shell.communicate()
    assert shell.returncode == 2, stderr.decode()
    assert "that is the input" in stderr.decode()
    assert path.read_text() == before
    assert (await simulator.stats())["requests"] == 0


@pytest.mark.parametrize("side", ["-wal", ".lock", "kept"])
async def test_an_output_naming_a_file_beside_the_journal_a_link_leads_to_is_refused(
    simulator: RunningSimulator, tmp_path: Path, side: str
) -> None:
    """`--journal LINK`: SQLite keeps the WAL beside the file the link leads to, and the kept
    records are named by that file's identity; an --output naming either is refused, not
    written over (a clean end removed the kept records' file, and the records with it)."""
    path = campaign(tmp_path, 2)
    (tmp_path / "real").mkdir()
    journal = tmp_path / "real" / "j"
    journal.write_bytes(b"")  # an empty file: the journal is made in it
    (tmp_path / "link").symlink_to(journal)
    kept = unsettled.path_of(str(journal))
    output = kept if side == "kept" else f"{journal}{side}"
    args = ("--journal", str(tmp_path / "link"), "--output", str(output))
    run = await run_cli(*send_args(simulator, path, *args))
    assert run.code == 2, run.stderr
    assert run.stderr.startswith("Error: --output "), run.stderr
    assert (await simulator.stats())["requests"] == 0


def _send_appending(argv: list[str], path: Path) -> int:
    """`sms-blaster ARGV >> PATH`: the exit code."""
    with open(path, "ab") as out:
        return subprocess.run(
            [sys.executable, "-m", "sms_blaster", *argv],
            stdout=out, stderr=subprocess.DEVNULL, env=cli_env(), check=False,
        ).returncode  # fmt: skip


async def test_records_appended_to_a_file_a_stopped_run_cut_short_start_on_a_line_of_their_own(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """`>> FILE` after a run whose last record a full disk cut short: the next run's first
    record is not glued to the torn line (it would be lost with it)."""
    path = campaign(tmp_path, 2)
    out = tmp_path / "records.jsonl"
    out.write_bytes(b'{"line": 1, "to": "4479')  # the torn record of an earlier run
    code = await asyncio.to_thread(_send_appending, send_args(simulator, path, "--no-journal"), out)
    assert code == 0
    torn, *records = out.read_bytes().decode().splitlines()
    assert torn == '{"line": 1, "to": "4479'
    assert sorted(json.loads(line)["line"] for line in records) == [1, 2]
