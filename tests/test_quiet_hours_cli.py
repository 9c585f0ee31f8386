"""--quiet-hours through the real CLI against the simulator: held rows, resumes, dry runs."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sms_blaster.simulator import RunningSimulator, SimulatorConfig, start_simulator
from tests.cli_helpers import cli_env, run_cli

# Rows in UTC are inside a window around now (in UTC); rows 12 hours ahead are outside it.
HELD_ZONE, FREE_ZONE = "UTC", "Etc/GMT-12"


@pytest.fixture
async def simulator() -> AsyncIterator[RunningSimulator]:
    running = await start_simulator(SimulatorConfig())
    yield running
    await running.close()


def window(start_h: float, end_h: float) -> str:
    """A window from `start_h` to `end_h` hours from now, in UTC's clock."""
    now = dt.datetime.now(dt.UTC)
    start, end = now + dt.timedelta(hours=start_h), now + dt.timedelta(hours=end_h)
    return f"{start:%H:%M}-{end:%H:%M}"


AROUND_NOW = window(-1, 1)
LATER = window(2, 3)


def campaign(path: Path, zones: list[str]) -> Path:
    """A `text,to,tz` CSV: one UK mobile a row, in the zone given."""
    rows = "".join(f"m{k},+4474{k:04d}0001,{tz}\n" for k, tz in enumerate(zones))
    path.write_text("text,to,tz\n" + rows)
    return path


def send_args(sim: RunningSimulator, path: Path, *extra: str) -> list[str]:
    return [
        "send", str(path), "--base-url", sim.url, "--from", "Shop", "--rate", "500",
        "--no-progress", "--tz-column", "tz", *extra,
    ]  # fmt: skip


def journal_states(path: Path) -> dict[int, tuple[str, str | None]]:
    with sqlite3.connect(path) as connection:
        rows = connection.execute("SELECT line, state, error_kind FROM rows").fetchall()
    return {line: (state, kind) for line, state, kind in rows}


async def test_rows_inside_quiet_hours_are_skipped_not_sent_and_the_run_exits_0(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """Rows whose zone is inside the window: skipped/quiet_hours; the others sent; exit 0."""
    path = campaign(tmp_path / "c.csv", [HELD_ZONE, FREE_ZONE, HELD_ZONE, FREE_ZONE])

    run = await run_cli(*send_args(simulator, path, "--quiet-hours", AROUND_NOW))

    assert run.code == 0, run.stderr
    outcomes = {
        line: (r["status"], r["error"] and r["error"]["code"]) for line, r in run.by_line().items()
    }
    assert outcomes == {
        1: ("skipped", "UTC"),
        2: ("sent", None),
        3: ("skipped", "UTC"),
        4: ("sent", None),
    }
    assert {r["error"]["kind"] for r in run.records if r["error"]} == {"quiet_hours"}
    assert f"quiet hours {AROUND_NOW}: 2 rows wait for them to end" in run.stderr
    assert (await simulator.stats())["requests"] == 2


async def test_held_rows_stay_pending_in_the_journal(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """The journal keeps a held row pending (quiet_hours), a sent one sent."""
    path = campaign(tmp_path / "c.csv", [HELD_ZONE, FREE_ZONE])

    await run_cli(*send_args(simulator, path, "--quiet-hours", AROUND_NOW))

    states = journal_states(tmp_path / "c.csv.journal")
    assert states == {1: ("pending", "quiet_hours"), 2: ("sent", None)}


async def test_a_resume_inside_quiet_hours_holds_the_rows_again_not_as_settled(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """Run again inside the window: the held row is judged again (quiet_hours, not settled)."""
    path = campaign(tmp_path / "c.csv", [HELD_ZONE, FREE_ZONE])
    await run_cli(*send_args(simulator, path, "--quiet-hours", AROUND_NOW))

    rerun = await run_cli(*send_args(simulator, path, "--quiet-hours", AROUND_NOW))

    assert rerun.code == 0, rerun.stderr
    kinds = {line: r["error"]["kind"] for line, r in rerun.by_line().items()}
    assert kinds == {1: "quiet_hours", 2: "already_settled"}
    assert (await simulator.stats())["requests"] == 1


async def test_a_resume_outside_quiet_hours_sends_the_held_rows_once(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """Once the window is over (here: a window later today), the resume sends what waited."""
    path = campaign(tmp_path / "c.csv", [HELD_ZONE, FREE_ZONE, HELD_ZONE])
    await run_cli(*send_args(simulator, path, "--quiet-hours", AROUND_NOW))

    rerun = await run_cli(*send_args(simulator, path, "--quiet-hours", LATER))

    assert rerun.code == 0, rerun.stderr
    statuses = {line: r["status"] for line, r in rerun.by_line().items()}
    assert statuses == {1: "sent", 2: "skipped", 3: "sent"}
    recipients = (await simulator.stats())["recipients"]
    assert {to: int(counts["accepted"]) for to, counts in recipients.items()} == {
        "447400000001": 1, "447400010001": 1, "447400020001": 1,
    }  # fmt: skip
    assert "quiet hours" not in rerun.stderr


async def test_a_dry_run_shows_which_rows_would_wait(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """--dry-run (window from the environment): held rows are quiet_hours, the rest would_send."""
    path = campaign(tmp_path / "c.csv", [HELD_ZONE, FREE_ZONE])

    run = await run_cli(
        *send_args(simulator, path, "--dry-run"),
        env=cli_env(SMS_BLASTER_QUIET_HOURS=AROUND_NOW),
    )

    assert run.code == 0, run.stderr
    codes = {line: r["error"]["code"] for line, r in run.by_line().items()}
    assert codes == {1: "UTC", 2: "would_send"}
    assert "1 row would wait for them to end" in run.stderr
    assert (await simulator.stats())["requests"] == 0


async def test_a_zone_column_value_that_is_no_zone_fails_that_row_only(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """A row in 'Mars/Olympus': failed, unknown_time_zone; the run goes on; exit 1."""
    path = campaign(tmp_path / "c.csv", ["Mars/Olympus", FREE_ZONE])

    run = await run_cli(*send_args(simulator, path, "--quiet-hours", AROUND_NOW))

    assert run.code == 1, run.stderr
    first, second = run.by_line()[1], run.by_line()[2]
    assert (first["status"], first["error"]["kind"], first["error"]["code"]) == (
        "failed", "invalid_input", "unknown_time_zone",
    )  # fmt: skip
    assert second["status"] == "sent"


@pytest.mark.parametrize(
    "value", ["localtime", "posixrules", "right/UTC", "posix/Asia/Tokyo", "Factory"]
)
async def test_a_zone_column_value_that_zoneinfo_opens_but_is_no_iana_zone_fails_its_row(
    simulator: RunningSimulator, tmp_path: Path, value: str
) -> None:
    """A file of the zone data that names no place (the machine's zone, an alias): its row fails."""
    path = campaign(tmp_path / "c.csv", [value])

    run = await run_cli(*send_args(simulator, path, "--quiet-hours", LATER))

    assert run.code == 1, run.stderr
    record = run.by_line()[1]
    assert (record["status"], record["error"]["code"]) == ("failed", "unknown_time_zone")
    assert (await simulator.stats())["requests"] == 0


@pytest.mark.parametrize("value", ["9pm-8am", "21:00-21:00", "24:00-08:00"])
async def test_a_malformed_window_exits_2_with_one_error_line_and_sends_nothing(
    simulator: RunningSimulator, tmp_path: Path, value: str
) -> None:
    """--quiet-hours that is no window: exit 2, one `Error:` line, no request."""
    path = campaign(tmp_path / "c.csv", [FREE_ZONE])

    run = await run_cli(*send_args(simulator, path, "--quiet-hours", value))

    assert run.code == 2
    [line] = run.stderr.splitlines()
    assert line.startswith(f"Error: --quiet-hours {value}: ")
    assert "HH:MM-HH:MM" in line
    assert (await simulator.stats())["requests"] == 0


async def test_a_malformed_window_from_the_environment_names_the_variable(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """SMS_BLASTER_QUIET_HOURS=9-17: exit 2, one `Error:` line naming the variable, no request."""
    path = campaign(tmp_path / "c.csv", [FREE_ZONE])

    run = await run_cli(*send_args(simulator, path), env=cli_env(SMS_BLASTER_QUIET_HOURS="9-17"))

    assert run.code == 2
    [line] = run.stderr.splitlines()
    assert line.startswith("Error: SMS_BLASTER_QUIET_HOURS=9-17: not a window; give HH:MM-HH:MM")
    assert "fix or unset SMS_BLASTER_QUIET_HOURS" in line
    assert (await simulator.stats())["requests"] == 0


async def test_a_zone_column_missing_from_the_input_exits_2(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """--tz-column names no column: exit 2, the error lists the columns."""
    path = campaign(tmp_path / "c.csv", [FREE_ZONE])

    run = await run_cli(
        *send_args(simulator, path, "--quiet-hours", AROUND_NOW, "--tz-column", "zone")
    )

    assert run.code == 2
    [line] = run.stderr.splitlines()
    assert line == (
        f"Error: --tz-column zone: {path} has no such column (columns: text, to, tz); "
        "name the time zone column"
    )


async def test_a_zone_column_without_quiet_hours_exits_2(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """--tz-column alone judges nothing: exit 2, the error asks for both."""
    path = campaign(tmp_path / "c.csv", [FREE_ZONE])

    run = await run_cli(*send_args(simulator, path))

    assert run.code == 2
    assert run.stderr.splitlines() == [
        "Error: --tz-column needs --quiet-hours; give both, or neither"
    ]


async def test_no_journal_from_the_environment_is_named_as_the_fix_of_quiet_hours(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """SMS_BLASTER_NO_JOURNAL=1: the fix names the variable, not a --no-journal never typed."""
    path = campaign(tmp_path / "c.csv", [FREE_ZONE])
    run = await run_cli(
        *send_args(simulator, path, "--quiet-hours", LATER),
        env=cli_env(SMS_BLASTER_NO_JOURNAL="1"),
    )
    assert run.code == 2, run.stderr
    assert run.stderr.splitlines() == [
        "Error: --quiet-hours needs a journal: held rows wait in it for the next run; "
        "the environment gives --no-journal (SMS_BLASTER_NO_JOURNAL): unset it"
    ]
    assert (await simulator.stats())["requests"] == 0


async def test_quiet_hours_without_a_journal_exit_2_before_anything_is_sent(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """--no-journal, or stdin without --journal: held rows could not wait anywhere: exit 2."""
    path = campaign(tmp_path / "c.csv", [FREE_ZONE])
    no_journal = await run_cli(*send_args(simulator, path, "--quiet-hours", LATER, "--no-journal"))
    piped = await run_cli(
        *send_args(simulator, Path("-"), "--quiet-hours", LATER), stdin=path.read_bytes()
    )

    assert (no_journal.code, piped.code) == (2, 2)
    assert no_journal.stderr.splitlines() == [
        "Error: --quiet-hours needs a journal: held rows wait in it for the next run; "
        "drop --no-journal"
    ]
    assert piped.stderr.splitlines() == [
        "Error: --quiet-hours needs a journal: held rows wait in it for the next run; "
        "give --journal PATH"
    ]
    assert (await simulator.stats())["requests"] == 0
