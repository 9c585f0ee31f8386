"""A dry run says what the real command would do, and touches nothing: the real CLI, the journal
of real runs against the simulator over loopback."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sms_blaster.simulator import RunningSimulator, SimulatorConfig, start_simulator
from tests.cli_helpers import Run, cli_env, run_cli, start_cli, write_csv
from tests.test_resume_cli import LOCK_HOLDER

ROWS = [("Ann", "447911123456"), ("Bob", "447911123457"), ("Cy", "447911123458")]


@pytest.fixture
async def simulator() -> AsyncIterator[RunningSimulator]:
    running = await start_simulator(SimulatorConfig())
    yield running
    await running.close()


def real(sim: RunningSimulator, path: Path, *extra: str) -> list[str]:
    return [
        "send", str(path), "--base-url", sim.url, "--from", "Shop", "--text", "Hi {name}",
        "--no-progress", *extra,
    ]  # fmt: skip


def dry(path: Path, *extra: str) -> list[str]:
    return [
        "send", str(path), "--dry-run", "--from", "Shop", "--text", "Hi {name}", "--no-progress",
        *extra,
    ]  # fmt: skip


def errors(run: Run) -> list[str]:
    return [line for line in run.stderr.splitlines() if line.startswith("Error:")]


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file of the directory, by name, as bytes."""
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def kinds(run: Run) -> dict[int, tuple[str, str | None, str | None]]:
    """Each line's status, error kind and error code."""
    return {
        line: (record["status"], record["error"]["kind"], record["error"]["code"])
        for line, record in run.by_line().items()
    }


async def test_a_dry_run_over_a_settled_journal_would_send_nothing(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """Every row is skipped as already settled, as the real rerun would; exit 0."""
    path = write_csv(tmp_path / "c.csv", ROWS)
    assert (await run_cli(*real(simulator, path))).code == 0

    run = await run_cli(*dry(path))

    assert run.code == 0, run.stderr
    assert set(kinds(run).values()) == {("skipped", "already_settled", "sent")}
    assert all(record["dry_run"] is True for record in run.records)
    assert "dry run: 0 messages would be sent in 0 segments" in run.stderr


async def test_a_dry_run_would_send_only_the_rows_the_journal_has_not_settled(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """Rows added to the input after a run are the ones that would be sent."""
    path = write_csv(tmp_path / "c.csv", ROWS[:2])
    assert (await run_cli(*real(simulator, path))).code == 0
    write_csv(path, ROWS)

    run = await run_cli(*dry(path, "--price", "0.05"))

    assert run.code == 0, run.stderr
    assert kinds(run) == {
        1: ("skipped", "already_settled", "sent"),
        2: ("skipped", "already_settled", "sent"),
        3: ("skipped", "dry_run", "would_send"),
    }
    assert "dry run: 1 messages would be sent in 1 segments; cost 0.05" in run.stderr


async def test_dry_run_records_carry_the_rendered_text_and_no_ids_or_price(
    tmp_path: Path,
) -> None:
    """Rows that would be sent: skipped, dry_run/would_send, their text; nothing invented."""
    path = write_csv(tmp_path / "c.csv", ROWS[:2])

    run = await run_cli(*dry(path))

    assert run.code == 0, run.stderr
    for record, (name, _) in zip(run.records, ROWS, strict=False):
        assert record["text"] == f"Hi {name}"
        assert record["dry_run"] is True
        assert record["message_ids"] == []
        assert record["price"] is None
        assert record["error"]["kind"] == "dry_run"


# Runs the CLI as `python -m sms_blaster` does, then writes down which simulator modules it loaded.
IMPORT_PROBE = """
import runpy, sys
out_path = sys.argv.pop(1)
try:
    runpy.run_module("sms_blaster", run_name="__main__", alter_sys=True)
finally:
    loaded = sorted(name for name in sys.modules if name.startswith("sms_blaster.simulator"))
    with open(out_path, "w") as out:
        out.write(" ".join(loaded))
"""


@pytest.mark.slow
async def test_a_dry_run_loads_no_part_of_the_simulator(tmp_path: Path) -> None:
    """The dry run stops before any transport, so the simulator server is never imported."""
    path = write_csv(tmp_path / "c.csv", ROWS[:1])
    loaded = tmp_path / "loaded.txt"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", IMPORT_PROBE, str(loaded), *dry(path),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=cli_env(),
    )  # fmt: skip
    _, stderr = await process.communicate()

    assert process.returncode == 0, stderr.decode()
    assert loaded.read_text() == ""


@pytest.mark.slow
@pytest.mark.parametrize(
    "change",
    [
        ["--text", "Hello {name}"],
        ["--from", "Other"],
    ],
)
async def test_a_dry_run_refuses_changed_settings_as_the_real_run_does(
    simulator: RunningSimulator, tmp_path: Path, change: list[str]
) -> None:
    """The same `Error:` line and exit code as the real run; nothing on stdout."""
    path = write_csv(tmp_path / "c.csv", ROWS)
    assert (await run_cli(*real(simulator, path))).code == 0

    dry_run = await run_cli(*dry(path), *change)
    real_run = await run_cli(*real(simulator, path), *change)

    assert dry_run.code == real_run.code == 4, dry_run.stderr
    assert errors(dry_run) == errors(real_run)
    assert len(errors(dry_run)) == 1
    assert dry_run.stdout == b""


@pytest.mark.slow
async def test_a_dry_run_refuses_a_changed_input_as_the_real_run_does(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """A row that differs from the one the journal recorded: the same error, exit 4."""
    path = write_csv(tmp_path / "c.csv", ROWS)
    assert (await run_cli(*real(simulator, path))).code == 0
    write_csv(path, [ROWS[0], ("Bea", ROWS[1][1]), ROWS[2]])

    dry_run = await run_cli(*dry(path))
    real_run = await run_cli(*real(simulator, path))

    assert dry_run.code == real_run.code == 4, dry_run.stderr
    assert errors(dry_run) == errors(real_run)
    assert "line 2 of the input differs" in errors(dry_run)[0]


async def test_a_dry_run_leaves_the_journal_byte_for_byte_and_creates_no_file(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """The journal, its lock and the directory are as they were, new rows pending or not."""
    path = write_csv(tmp_path / "c.csv", ROWS[:2])
    assert (await run_cli(*real(simulator, path))).code == 0
    write_csv(path, ROWS)
    before = snapshot(tmp_path)

    run = await run_cli(*dry(path))

    assert run.code == 0, run.stderr
    assert snapshot(tmp_path) == before


async def test_a_dry_run_of_a_new_campaign_creates_no_journal(tmp_path: Path) -> None:
    """Nothing was there: nothing is left behind."""
    path = write_csv(tmp_path / "c.csv", ROWS)

    run = await run_cli(*dry(path))

    assert run.code == 0, run.stderr
    assert sorted(snapshot(tmp_path)) == ["c.csv"]


async def test_a_dry_run_reports_rows_an_earlier_run_left_in_flight_as_the_real_run_would(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """A row found in flight is `unknown` (not resent) in the dry run too, and exit 1; the
    journal still holds it in flight."""
    path = write_csv(tmp_path / "c.csv", ROWS)
    assert (await run_cli(*real(simulator, path))).code == 0
    journal = tmp_path / "c.csv.journal"
    with sqlite3.connect(journal) as connection:
        connection.execute("UPDATE rows SET state = 'inflight' WHERE line = 2")
    connection.close()
    before = snapshot(tmp_path)

    run = await run_cli(*dry(path))

    assert run.code == 1, run.stderr
    assert kinds(run)[2] == ("unknown", "ambiguous", "interrupted")
    assert snapshot(tmp_path) == before


async def test_a_dry_run_refuses_a_journal_a_live_run_holds(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """Exit 4 naming the holder, as the real run would; the holder's lock file is untouched."""
    path = write_csv(tmp_path / "c.csv", ROWS)
    assert (await run_cli(*real(simulator, path))).code == 0
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        LOCK_HOLDER,
        f"{path}.journal.lock",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert holder.stdin is not None
    assert holder.stdout is not None
    try:
        async with asyncio.timeout(10):
            assert await holder.stdout.readline() == b"locked\n"
        before = snapshot(tmp_path)
        run = await run_cli(*dry(path), env=cli_env())
        after = snapshot(tmp_path)
        holder.stdin.close()
        async with asyncio.timeout(10):
            await holder.wait()
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()

    assert run.code == 4, run.stderr
    [error] = errors(run)
    assert f"is in use by another sms-blaster run (pid {holder.pid} on testhost" in error
    assert after == before


@pytest.mark.slow
async def test_a_dry_run_after_a_killed_run_predicts_the_resume_and_leaves_journal_and_wal(
    tmp_path: Path,
) -> None:
    """Killed mid-run (a WAL left behind): the dry run reads through the WAL, says per row what
    the resume then does, and leaves the journal and its WAL byte for byte."""
    rows = [(f"N{n}", f"4474{n:04d}0001") for n in range(120)]
    path = write_csv(tmp_path / "c.csv", rows)
    simulator = await start_simulator(SimulatorConfig(latency_ms=60, jitter_ms=60, seed=3))
    try:
        args = real(simulator, path, "--rate", "100", "--window", "8")
        process = await start_cli(*args)
        async with asyncio.timeout(30):
            await simulator.wait_for_accepted(25)
            process.kill()
            await process.communicate()
        journal = tmp_path / "c.csv.journal"
        kept = {name: Path(f"{journal}{name}") for name in ("", "-wal")}
        assert kept["-wal"].exists()
        before = {name: file.read_bytes() for name, file in kept.items()}

        dry_run = await run_cli(*dry(path))
        after = {name: file.read_bytes() for name, file in kept.items()}
        resume = await run_cli(*args)
    finally:
        await simulator.close()

    assert after == before
    assert dry_run.code == resume.code, dry_run.stderr
    predicted = {
        line: ("sent", None, None) if kind[1] == "dry_run" else kind
        for line, kind in kinds(dry_run).items()
    }
    done = {
        line: (record["status"], None, None)
        if record["status"] == "sent"
        else (record["status"], record["error"]["kind"], record["error"]["code"])
        for line, record in resume.by_line().items()
    }
    assert predicted == done


@pytest.mark.parametrize("env", [{}, {"SMS_BLASTER_FROM_POOL": ""}])
async def test_a_dry_run_without_a_sender_is_refused_as_the_real_run_is(
    tmp_path: Path, env: dict[str, str]
) -> None:
    """No --from and no pool: the dry run exits 2 with the real run's Error: line."""
    path = write_csv(tmp_path / "c.csv", ROWS)
    args = ["send", str(path), "--text", "hi", "--no-progress"]

    real_run = await run_cli(*args, "--base-url", "http://127.0.0.1:9", env=cli_env(**env))
    dry_run = await run_cli(*args, "--dry-run", env=cli_env(**env))

    assert (dry_run.code, errors(dry_run)) == (real_run.code, errors(real_run))
    assert dry_run.code == 2
    assert dry_run.stdout == b""
