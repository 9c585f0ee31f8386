"""A journal renamed (`mv`) while a real `send` holds it, or after it was SIGKILLed: SQLite keeps
the write-ahead log beside the name the run opened the journal by, so the file under its new
name lacks the last commits. Nothing may be sent twice through the new name."""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from sms_blaster.simulator import SimulatorConfig, start_simulator
from tests.cli_helpers import run_cli, start_cli, write_csv

ROWS = 300


def _final(record: dict[str, Any]) -> bool:
    """A record that settles its row: not a stop, a hold, or a resume's skip of a settled row."""
    kind = (record["error"] or {}).get("kind")
    return kind not in ("stopped", "quiet_hours", "already_settled")


def _campaign(tmp_path: Path) -> Path:
    numbers = [f"447922{n:06d}" for n in range(ROWS)]
    return write_csv(tmp_path / "c.csv", [(f"m{n}", "+" + n) for n in numbers], "text,to")


def _args(path: Path, url: str) -> list[str]:
    return ["send", str(path), "--base-url", url, "--from", "Shop", "--no-progress",
            "--rate", "200", "--window", "8"]  # fmt: skip


def _real(path: Path | str) -> str:
    """The path as a run names it: the journal's real path."""
    return os.path.realpath(path)


def _move(source: Path | str, target: Path | str) -> None:
    os.rename(source, target)


@pytest.mark.slow
async def test_a_journal_renamed_while_a_run_holds_it_stops_the_run_and_nothing_is_sent_twice(
    tmp_path: Path,
) -> None:
    """`mv` of the journal mid-run: the run went on, ended exit 0, and left its last commits in
    the WAL beside the old name; a resume with `--journal NEW` sent their rows again. Now the
    run stops (exit 4, one line naming the new name), the renamed file is whole, and the resume
    through the new name gives each row one final record and sends none twice."""
    path = _campaign(tmp_path)
    old, new = tmp_path / "c.csv.journal", tmp_path / "moved.journal"
    simulator = await start_simulator(SimulatorConfig(latency_ms=20, jitter_ms=20, seed=7))
    try:
        args = _args(path, simulator.url)
        process = await start_cli(*args)
        async with asyncio.timeout(60):
            await simulator.wait_for_accepted(40)
            old.rename(new)
            stdout, stderr = await process.communicate()
            resume = await run_cli(*args, "--journal", str(new))
        stats = await simulator.stats()
    finally:
        await simulator.close()

    accepted = Counter({to: r["accepted"] for to, r in stats["recipients"].items()})
    assert max(accepted.values()) == 1, "a row was accepted twice"
    records = [json.loads(line) for line in stdout.splitlines()] + resume.records
    finals = Counter(record["line"] for record in records if _final(record))
    assert finals == Counter(range(1, ROWS + 1)), "a row without one final record"
    errors = [line for line in stderr.decode().splitlines() if line.startswith("Error:")]
    assert process.returncode == 4, stderr.decode()
    assert len(errors) == 1
    assert f"renamed to {_real(new)} while this run held it" in errors[0]
    assert f"resume with --journal {_real(new)}" in errors[0]
    assert resume.code == 0, resume.stderr


@pytest.mark.slow
@pytest.mark.parametrize("way_on", ["renamed back", "its WAL moved beside it"])
async def test_a_journal_renamed_after_a_killed_run_is_refused_through_the_new_name(
    tmp_path: Path, way_on: str
) -> None:
    """kill -9, then `mv` of the journal alone: its WAL stays beside the old name, and a resume
    through the new name sent again every row whose marks were only in it. Now that resume (and
    its dry run) is refused, exit 4, sending nothing, with one line saying both ways on; either
    way (the journal renamed back, or its WAL moved beside it) resumes without a double send."""
    path = _campaign(tmp_path)
    old, new = tmp_path / "c.csv.journal", tmp_path / "moved.journal"
    simulator = await start_simulator(SimulatorConfig(latency_ms=20, jitter_ms=20, seed=8))
    try:
        args = _args(path, simulator.url)
        process = await start_cli(*args)
        async with asyncio.timeout(60):
            await simulator.wait_for_accepted(40)
            process.kill()
            await process.communicate()
            old.rename(new)
            before = (await simulator.stats())["accepted"]
            refused = await run_cli(*args, "--journal", str(new))
            dry = await run_cli(*args, "--journal", str(new), "--dry-run")
            after = (await simulator.stats())["accepted"]
            if way_on == "renamed back":
                new.rename(old)
                resume = await run_cli(*args)
            else:
                _move(f"{old}-wal", f"{new}-wal")
                resume = await run_cli(*args, "--journal", str(new))
        stats = await simulator.stats()
    finally:
        await simulator.close()

    accepted = Counter({to: r["accepted"] for to, r in stats["recipients"].items()})
    assert max(accepted.values()) == 1, "a row was accepted twice"
    assert after == before, "the refused runs sent"
    for run in (refused, dry):
        assert run.code == 4, run.stderr
        assert run.stdout == b""
        errors = [line for line in run.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1, run.stderr
        assert f"was renamed from {_real(old)}" in errors[0]
        assert f"rename it back to {_real(old)}" in errors[0]
        assert f"move {_real(old)}-wal to {_real(new)}-wal" in errors[0]
    assert resume.code in (0, 1), resume.stderr  # 1: rows the kill left unknown
    assert sorted(resume.by_line()) == list(range(1, ROWS + 1))  # one record a row
