"""A real `send` whose records output fails (a pipe its reader closed, /dev/full, a file-size
limit): the rows it settled after the failure get their final records from the resume, plain or
`--only-new`, once; across the runs every row has exactly one final record."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import sqlite3
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sms_blaster.simulator import RunningSimulator, SimulatorConfig, start_simulator
from tests.cli_helpers import cli_env, write_csv

ROWS = 300
# A sparse gap before the records of the run under a file-size limit: the limit applies to every
# file the run writes, and the journal's write-ahead log must stay under it.
GAP_BYTES = 64 << 20
ROOM_BYTES = 30_000  # about 90 records fit under the limit


def _numbers(count: int) -> list[str]:
    return [f"447911{n:06d}" for n in range(1, count + 1)]


def _args(simulator: RunningSimulator, path: Path, *extra: str) -> list[str]:
    """Fast enough that a commit settles several rows: a flush writes several records."""
    return [
        "send", str(path), "--base-url", simulator.url, "--from", "Shop", "--no-progress",
        "--rate", "2000", "--window", "64", *extra,
    ]  # fmt: skip


async def _run(
    args: list[str],
    stdout: Any = asyncio.subprocess.PIPE,
    preexec: Callable[[], None] | None = None,
    *,
    unbuffered: bool = False,
) -> tuple[int, bytes, str]:
    """Run the CLI: its exit code, stdout (when piped) and stderr. Records buffered as a user's
    are, or with `unbuffered` through a raw stdout (PYTHONUNBUFFERED, set in many images)."""
    env = cli_env()
    env.pop("PYTHONUNBUFFERED", None)
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sms_blaster", *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=stdout, stderr=asyncio.subprocess.PIPE,
        env=env, preexec_fn=preexec,
    )  # fmt: skip
    async with asyncio.timeout(90):
        out, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out or b"", stderr.decode()


def _records(data: bytes) -> list[dict[str, Any]]:
    """The records among complete lines (the gap's zeros are none)."""
    return [json.loads(line) for line in data.split(b"\n")[:-1] if line.strip(b"\0")]


def _final(record: dict[str, Any]) -> bool:
    kind = (record["error"] or {}).get("kind")
    return kind not in ("stopped", "quiet_hours", "already_settled")


def _journal_rows(path: Path) -> dict[int, tuple[str, str, str | None]]:
    """Each row's state, message ids and price, as the journal holds them."""
    with contextlib.closing(sqlite3.connect(path)) as journal:
        found = journal.execute("SELECT line, state, message_ids, price FROM rows").fetchall()
    return {line: (state, ids, price) for line, state, ids, price in found}


def _settled(rows: dict[int, tuple[str, str, str | None]]) -> set[int]:
    return {line for line, (state, _, _) in rows.items() if state not in ("pending", "inflight")}


def _check_one_final_record_each(
    records: list[dict[str, Any]], rows: dict[int, tuple[str, str, str | None]], owed: set[int]
) -> None:
    """Every row one final record; an owed row's carries what the journal holds of it."""
    finals: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        if _final(record):
            finals[record["line"]].append(record)
    missing = [line for line in range(1, ROWS + 1) if not finals[line]]
    assert not missing, f"rows with no final record: {missing}"
    twice = {line: len(found) for line, found in finals.items() if len(found) > 1}
    assert not twice, f"rows with more than one final record: {twice}"
    for line in owed:
        (record,) = finals[line]
        state, ids, price = rows[line]
        assert record["status"] == state, record
        if state == "sent":
            assert record["message_ids"] == ids.split(), record
            assert record["price"] == price, record
            assert record["attempts"] >= 1, record
            assert record["latency_ms"] is not None, record


@contextlib.contextmanager
def _failing_stdout(kind: str) -> Iterator[int]:
    """A stdout every write to fails: a pipe whose reader closed it, or /dev/full."""
    if kind == "dev_full":
        fd = os.open("/dev/full", os.O_WRONLY)
    else:
        read_end, fd = os.pipe()
        os.close(read_end)  # the reader is gone before the first record
    try:
        yield fd
    finally:
        os.close(fd)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sink", "flags"),
    [("pipe_closed", []), ("pipe_closed", ["--only-new"]), ("dev_full", ["--only-new"])],
)
async def test_rows_settled_after_stdout_failed_get_their_records_from_the_resume(
    tmp_path: Path, sink: str, flags: list[str]
) -> None:
    """Nothing reaches the failing stdout; the journal settles the rows whose records were being
    written and those in flight. The resume (plain or `--only-new`) gives each of them its
    whole final record (not `already_settled`, not nothing), and the next one
    `already_settled`; the provider accepted each number once."""
    path = write_csv(tmp_path / "c.csv", [("m", "+" + n) for n in _numbers(ROWS)], "text,to")
    simulator = await start_simulator(SimulatorConfig(latency_ms=20, jitter_ms=10))
    try:
        with _failing_stdout(sink) as stdout:
            code, _, stderr = await _run(_args(simulator, path), stdout)
        assert code == 4, stderr
        assert "cannot write the records" in stderr
        assert "--only-new too" in stderr
        rows = _journal_rows(tmp_path / "c.csv.journal")
        owed = _settled(rows)
        assert owed, "the run settled no row after its output failed: nothing tested"
        code, resumed, stderr = await _run(_args(simulator, path, *flags))
        assert code in (0, 1), stderr
        assert f"{len(owed):,} rows whose records an earlier run could not write" in stderr
        code, second, stderr = await _run(_args(simulator, path))
        assert code in (0, 1), stderr
        stats = await simulator.stats()
    finally:
        await simulator.close()
    _check_one_final_record_each(_records(resumed), rows, owed)
    again = _records(second)
    assert sorted(record["line"] for record in again) == list(range(1, ROWS + 1))
    assert all(not _final(record) for record in again), "a second record of an owed row"
    assert len(stats["recipients"]) == ROWS
    assert all(recipient["accepted"] == 1 for recipient in stats["recipients"].values())


def _file_size_limit(limit_bytes: int) -> Callable[[], None]:
    def limit() -> None:  # in the child, before it runs sms-blaster
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return limit


@pytest.mark.slow
@pytest.mark.parametrize("flags", [[], ["--only-new"]])
async def test_rows_settled_after_output_hit_the_file_size_limit_get_their_records_once(
    tmp_path: Path, flags: list[str]
) -> None:
    """--output FILE under a file-size limit: the flush that meets it writes some records whole
    and one cut short, and none after. The resume drops the cut one, gives each settled row
    whose record is not whole in FILE its final record, and no row whose record is whole a
    second one; the next resume `already_settled`."""
    numbers = _numbers(ROWS)
    path = write_csv(tmp_path / "c.csv", [("m", "+" + numbers[0])], "text,to")
    out = tmp_path / "out.jsonl"
    simulator = await start_simulator(SimulatorConfig(latency_ms=20, jitter_ms=10))
    try:
        # The campaign begun with its first row, so the run under the limit appends to FILE,
        # past a sparse gap (under the limit too) that keeps the journal's files under it.
        code, _, stderr = await _run(_args(simulator, path, "--output", str(out)))
        assert code == 0, stderr
        with path.open("a") as handle:
            handle.writelines(f"m,+{number}\n" for number in numbers[1:])
        os.truncate(out, out.stat().st_size + GAP_BYTES)
        with out.open("ab") as handle:
            handle.write(b"\n")
        limit = _file_size_limit(out.stat().st_size + ROOM_BYTES)
        code, _, stderr = await _run(_args(simulator, path, "--output", str(out)), preexec=limit)
        assert code == 4, stderr
        assert "cannot write the records" in stderr
        rows = _journal_rows(tmp_path / "c.csv.journal")
        written = {r["line"] for r in _records(out.read_bytes()) if _final(r)}
        owed = _settled(rows) - written
        assert owed, "every row settled has its record in FILE: nothing tested"
        code, _, stderr = await _run(_args(simulator, path, "--output", str(out), *flags))
        assert code in (0, 1), stderr
        records = _records(out.read_bytes())
        size = out.stat().st_size
        code, _, stderr = await _run(_args(simulator, path, "--output", str(out)))
        assert code in (0, 1), stderr
        stats = await simulator.stats()
    finally:
        await simulator.close()
    _check_one_final_record_each(records, rows, owed)
    again = _records(out.read_bytes()[size:])
    assert sorted(record["line"] for record in again) == list(range(1, ROWS + 1))
    assert all(not _final(record) for record in again), "a second record of an owed row"
    assert len(stats["recipients"]) == ROWS
    assert all(recipient["accepted"] == 1 for recipient in stats["recipients"].values())


@pytest.mark.slow
@pytest.mark.parametrize("unbuffered", [False, True])
async def test_stdout_appending_to_a_file_at_its_size_limit_leaves_each_row_one_record(
    tmp_path: Path, unbuffered: bool
) -> None:
    """`>> FILE` under a file-size limit: the flush that meets it writes some records whole and
    one cut short. The resume reads FILE back through stdout as it reads --output FILE (no
    second record for a whole one), starts its records on a line of their own (none glued to
    the cut one), and gives each other settled row its final record. A raw stdout
    (PYTHONUNBUFFERED) takes part of a record without an error: the rest is written again, and
    the error that follows is heard, not a cut record taken for written."""
    numbers = _numbers(ROWS)
    path = write_csv(tmp_path / "c.csv", [("m", "+" + numbers[0])], "text,to")
    out = tmp_path / "out.jsonl"
    simulator = await start_simulator(SimulatorConfig(latency_ms=20, jitter_ms=10))
    try:
        with out.open("ab") as stdout:
            code, _, stderr = await _run(_args(simulator, path), stdout)
        assert code == 0, stderr
        with path.open("a") as handle:
            handle.writelines(f"m,+{number}\n" for number in numbers[1:])
        os.truncate(out, out.stat().st_size + GAP_BYTES)
        with out.open("ab") as handle:
            handle.write(b"\n")
        limit = _file_size_limit(out.stat().st_size + ROOM_BYTES)
        with out.open("ab") as stdout:
            code, _, stderr = await _run(
                _args(simulator, path), stdout, preexec=limit, unbuffered=unbuffered
            )
        assert code == 4, stderr
        assert "cannot write the records" in stderr
        rows = _journal_rows(tmp_path / "c.csv.journal")
        written = {r["line"] for r in _records(out.read_bytes()) if _final(r)}
        owed = _settled(rows) - written
        assert owed, "every row settled has its record in FILE: nothing tested"
        with out.open("ab") as stdout:
            code, _, stderr = await _run(
                _args(simulator, path, "--only-new"), stdout, unbuffered=unbuffered
            )
        assert code in (0, 1), stderr
        stats = await simulator.stats()
    finally:
        await simulator.close()
    lines = [line for line in out.read_bytes().split(b"\n")[:-1] if line.strip(b"\0")]
    unreadable = []
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            unreadable.append(line)
    assert len(unreadable) <= 1, unreadable  # the record the limit cut, alone on its line
    _check_one_final_record_each(_records_readable(lines), rows, owed)
    assert all(recipient["accepted"] == 1 for recipient in stats["recipients"].values())


def _records_readable(lines: list[bytes]) -> list[dict[str, Any]]:
    found = []
    for line in lines:
        with contextlib.suppress(ValueError):
            found.append(json.loads(line))
    return found
