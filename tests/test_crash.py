"""SIGKILL a real send mid-campaign, re-run the same command: nothing sent twice, nothing lost."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from sms_blaster.run_parts import ready_places
from sms_blaster.simulator import SimulatorConfig, start_simulator
from tests.cli_helpers import run_cli, start_cli, write_csv

ROWS = 120
WINDOW = 8


def journal_states(path: Path) -> dict[str, str]:
    """Number -> state of every row of the journal."""
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return dict(connection.execute("SELECT to_number, state FROM rows").fetchall())


@pytest.mark.slow
@pytest.mark.parametrize("kill_after_accepted", [1, 25, 70])
async def test_a_killed_run_resumes_without_sending_twice_or_losing_a_row(
    tmp_path: Path, kill_after_accepted: int
) -> None:
    """Killed with requests in flight, then re-run: each row accepted at most once, all settled,
    and the only rows not sent are the unknown ones: at most the requests a window holds out,
    and the rows marked ahead while it was full (`ready_places`)."""
    numbers = [f"4474{n:04d}0001" for n in range(ROWS)]
    path = write_csv(tmp_path / "c.csv", [(f"m{n}", "+" + n) for n in numbers], "text,to")
    config = SimulatorConfig(latency_ms=60, jitter_ms=60, seed=kill_after_accepted)
    simulator = await start_simulator(config)
    try:
        args = ["send", str(path), "--base-url", simulator.url, "--from", "Shop"]
        args += ["--rate", "100", "--window", str(WINDOW), "--no-progress"]
        process = await start_cli(*args)
        async with asyncio.timeout(30):
            await simulator.wait_for_accepted(kill_after_accepted)
            process.kill()
            await process.communicate()
            rerun = await run_cli(*args)
            third = await run_cli(*args)
        stats = await simulator.stats()
    finally:
        await simulator.close()

    accepted = Counter({to: r["accepted"] for to, r in stats["recipients"].items()})
    assert max(accepted.values()) == 1, "a row was accepted twice"
    states = journal_states(tmp_path / "c.csv.journal")
    assert sorted(states) == sorted(numbers), "a row has no journal state"
    not_sent = {to for to, state in states.items() if state != "sent"}
    assert all(states[to] == "unknown" for to in not_sent)
    assert len(not_sent) <= WINDOW + ready_places(WINDOW)
    assert {to for to, state in states.items() if state == "sent"} <= set(accepted)
    assert rerun.code == (1 if not_sent else 0), rerun.stderr
    records = rerun.by_line()
    assert len(records) == ROWS
    assert {r["status"] for r in records.values()} <= {"sent", "skipped", "unknown"}
    assert sum(r["status"] == "unknown" for r in records.values()) == len(not_sent)
    assert third.code == (1 if not_sent else 0), third.stderr  # unknown rows stay unknown
    assert {r["status"] for r in third.records} == {"skipped"}
