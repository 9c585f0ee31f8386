"""SIGKILL a real `send` again and again at random moments, then let it finish: every row ends
with one final record across the runs, in `--output FILE` and on stdout alike, and a resume's
`already_settled` record of a row sent earlier carries its message ids and price."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sqlite3
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from sms_blaster.simulator import SimulatorConfig, start_simulator
from tests.cli_helpers import cli_env, write_csv

ROWS = 240
KILLS = 3


def _env() -> dict[str, str]:
    """The CLI's environment with stdout buffered as a user's is: PYTHONUNBUFFERED (set in some
    shells and CI) would write each record at once and hide a record still buffered."""
    env = cli_env()
    env.pop("PYTHONUNBUFFERED", None)
    return env


def _records(data: bytes) -> list[dict[str, Any]]:
    """The complete lines of a records stream (a kill may cut the last one short)."""
    return [json.loads(line) for line in data.split(b"\n")[:-1] if line]


def _append(path: Path) -> BinaryIO:
    """The file the runs' stdout goes to, as `>> FILE` (opened off the loop's coroutines)."""
    return open(path, "ab")


def _final(record: dict[str, Any]) -> bool:
    """A record that settles its row: not a stop, a hold, or a resume's skip of a settled row."""
    kind = (record["error"] or {}).get("kind")
    return kind not in ("stopped", "quiet_hours", "already_settled")


async def _kill_when_accepted(args: list[str], accepted: int, stdout: Any, simulator: Any) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sms_blaster", *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=stdout, stderr=asyncio.subprocess.DEVNULL,
        env=_env(),
    )  # fmt: skip
    try:
        await simulator.wait_for_accepted(accepted)
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


@pytest.mark.slow
@pytest.mark.parametrize(("seed", "to_stdout"), [(1, False), (2, False), (3, True)])
async def test_a_send_killed_at_random_moments_leaves_each_row_one_final_record(
    tmp_path: Path, seed: int, to_stdout: bool
) -> None:
    """Each run is killed just after the simulator accepted a random count of messages (what a
    run had settled then, with records still buffered, was the loss: 5-10 rows a kill); the
    last run finishes. Then each row has one final record, and each row the simulator accepted
    once, none twice."""
    rng = random.Random(seed)
    numbers = [f"447911{n:06d}" for n in range(ROWS)]
    path = write_csv(tmp_path / "c.csv", [(f"m{n}", "+" + n) for n in numbers], "text,to")
    out = tmp_path / "out.jsonl"
    simulator = await start_simulator(SimulatorConfig(latency_ms=20, jitter_ms=20, seed=seed))
    args = ["send", str(path), "--base-url", simulator.url, "--from", "Shop", "--no-progress"]
    args += ["--rate", "400", "--window", "16"]
    if not to_stdout:
        args += ["--output", str(out)]
    try:
        async with asyncio.timeout(120):
            with _append(out) as stdout:
                accepted = 0
                for _ in range(KILLS):
                    # Past what the earlier runs accepted: this run sends some of its own.
                    accepted = (await simulator.stats())["accepted"] + rng.randint(5, 50)
                    sink = stdout if to_stdout else asyncio.subprocess.DEVNULL
                    await _kill_when_accepted(args, accepted, sink, simulator)
                last = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "sms_blaster", *args,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=stdout if to_stdout else asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.PIPE, env=_env(),
                )  # fmt: skip
                _, stderr = await last.communicate()
        stats = await simulator.stats()
    finally:
        await simulator.close()

    assert last.returncode in (0, 1), stderr.decode()
    records = _records(out.read_bytes())
    finals: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        if _final(record):
            finals[record["line"]].append(record)
    no_record = [line for line in range(1, ROWS + 1) if not finals[line]]
    assert not no_record, f"rows with no final record (the journal settled them): {no_record}"
    twice = {line: [r["status"] for r in rs] for line, rs in finals.items() if len(rs) > 1}
    # stdout appends to a file here (`>> FILE`): the journal keeps its size as it keeps
    # --output FILE's, so a kill between a flush and its commit leaves records the resume
    # takes as their rows' outcomes, not an `unknown` beside them.
    assert not twice, f"rows with more than one final record: {twice}"
    accepted_by = Counter({to: r["accepted"] for to, r in stats["recipients"].items()})
    assert max(accepted_by.values()) == 1, "a row was accepted twice"
    with contextlib.closing(sqlite3.connect(tmp_path / "c.csv.journal")) as journal:
        states = dict(journal.execute("SELECT line, state FROM rows").fetchall())
    assert sorted(states) == list(range(1, ROWS + 1))
    assert set(states.values()) <= {"sent", "unknown"}
    sent = {r["line"]: r for rs in finals.values() for r in rs if r["status"] == "sent"}
    journal_sent = {line for line, state in states.items() if state == "sent"}
    assert journal_sent == set(sent)
    # The last run's records of rows sent earlier carry what the journal holds of them.
    for record in records:
        error = record["error"] or {}
        if error.get("kind") == "already_settled" and error.get("code") == "sent":
            earlier = sent[record["line"]]
            assert record["message_ids"] == earlier["message_ids"], record
            assert record["price"] == earlier["price"], record
