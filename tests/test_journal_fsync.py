"""The in-flight mark is on disk before its request leaves: the system calls of a real `send`.

strace records every write to the journal's WAL, every fsync and every request written to a
socket, in the order they happened. For each request (found by its client ref), a WAL write that
carried its `inflight` mark must be followed by an fsync of the WAL, and that fsync must have
returned before the request's write began: then not even a power cut can lose the mark of a
request that left.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import resource
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sms_blaster.simulator import RunningSimulator, SimulatorConfig, start_simulator
from tests.cli_helpers import cli_env, write_csv

ROWS = 100
SYSCALLS = "openat,close,write,pwrite64,writev,sendto,sendmsg,fsync,fdatasync"
STRACE = shutil.which("strace")

# With -xx every string is hex escapes: no quote, comma or parenthesis inside one.
_STRING = re.compile(rb'"((?:\\x[0-9a-f]{2})*)"')
_COMPLETE = re.compile(r"^(\d+)\s+\S+\s+(\w+)\((.*)\)\s+= (-?\d+)")
_UNFINISHED = re.compile(r"^(\d+)\s+\S+\s+(\w+)\((.*) <unfinished \.\.\.>$")
_RESUMED = re.compile(r"^(\d+)\s+\S+\s+<\.\.\. (\w+) resumed>(.*)\)\s+= (-?\d+)")
_REQUEST = re.compile(rb"&to=(\d+)&client-ref=([\w-]+)&")


@dataclass(frozen=True, slots=True)
class Call:
    """One system call; `entered` and `returned` are positions in the trace's order of events."""

    name: str
    args: str
    result: int
    entered: int
    returned: int

    @property
    def fd(self) -> int:
        return int(self.args.split(",", 1)[0])

    @property
    def data(self) -> bytes:
        """Every string argument, joined (the buffers of a writev too)."""
        return b"".join(
            bytes.fromhex(found.replace(b"\\x", b"").decode())
            for found in _STRING.findall(self.args.encode())
        )


def parse_trace(text: str) -> list[Call]:
    """The calls of an `strace -f -xx` log, a call another thread interrupted joined up again."""
    calls: list[Call] = []
    pending: dict[str, tuple[str, str, int]] = {}
    for position, line in enumerate(text.splitlines()):
        if found := _UNFINISHED.match(line):
            pid, name, args = found.groups()
            pending[pid] = (name, args, position)
        elif found := _RESUMED.match(line):
            pid, name, rest, result = found.groups()
            _, args, entered = pending.pop(pid)
            calls.append(Call(name, args + rest, int(result), entered, position))
        elif found := _COMPLETE.match(line):
            _, name, args, result = found.groups()
            calls.append(Call(name, args, int(result), position, position))
    return calls


@dataclass(frozen=True, slots=True)
class Request:
    client_ref: str
    to: str
    call: Call


def requests_unsynced(calls: list[Call], wal_path: str) -> tuple[list[Request], list[str]]:
    """Every request written to a socket, and the client refs of those that began before an
    fsync of the WAL had covered a WAL write carrying their `inflight` mark."""
    paths: dict[int, str] = {}  # fd -> path, as openat opened it
    marks: list[Call] = []  # writes to the WAL
    syncs: list[Call] = []  # fsyncs of the WAL (through any of its fds: they sync the file)
    requests: list[Request] = []
    for call in sorted(calls, key=lambda call: call.returned):
        if call.name == "openat":
            if call.result >= 0:
                paths[call.result] = call.data.decode()
        elif call.name == "close":
            paths.pop(call.fd, None)
        elif call.name in ("fsync", "fdatasync"):
            if paths.get(call.fd) == wal_path:
                syncs.append(call)
        elif paths.get(call.fd) == wal_path:
            marks.append(call)
        elif call.fd not in paths and (found := _REQUEST.search(call.data)):
            requests.append(Request(found[2].decode(), found[1].decode(), call))
    unsynced = []
    for request in requests:
        # A WITHOUT ROWID record holds its columns back to back: state, fingerprint (an integer
        # of up to 8 bytes), to_number, client_ref.
        mark = re.compile(
            b"inflight.{0,8}" + re.escape((request.to + request.client_ref).encode()), re.DOTALL
        )
        sent = request.call.entered
        written = [m.returned for m in marks if m.returned < sent and mark.search(m.data)]
        # Any synced copy will do: a later commit that rewrites the mark's page appends a frame,
        # and recovery keeps every frame up to the last intact commit.
        if not written or not any(written[0] < s.entered and s.returned < sent for s in syncs):
            unsynced.append(request.client_ref)
    return requests, unsynced


def can_trace() -> str | None:
    """Why strace cannot be used here, or None."""
    if STRACE is None:
        return "strace is not installed (apt-get install strace)"
    done = subprocess.run([STRACE, "-o", "/dev/null", "true"], capture_output=True, check=False)
    if done.returncode != 0:
        return f"strace cannot trace here (ptrace not permitted?): {done.stderr.decode().strip()}"
    return None


@pytest.fixture
async def simulator() -> AsyncIterator[RunningSimulator]:
    running = await start_simulator(SimulatorConfig())
    yield running
    await running.close()


async def traced_send(
    sim: RunningSimulator, tmp_path: Path, *extra: str
) -> tuple[list[Request], list[str]]:
    """Run `send` of ROWS rows under strace; its requests and the refs of those left unsynced."""
    calls = await traced_calls(sim, tmp_path, *extra)
    return requests_unsynced(calls, f"{tmp_path / 'rows.journal'}-wal")


async def traced_calls(sim: RunningSimulator, tmp_path: Path, *extra: str) -> list[Call]:
    """The system calls of `send` of ROWS rows (journal `rows.journal`), run under strace."""
    why_not = can_trace()
    if why_not is not None:
        pytest.skip(why_not)
    assert STRACE is not None
    rows = [(f"m{k}", f"+4474{k:04d}0001") for k in range(ROWS)]
    campaign = write_csv(tmp_path / "rows.csv", rows, header="text,to")
    journal, trace = tmp_path / "rows.journal", tmp_path / "trace.txt"
    process = await asyncio.create_subprocess_exec(
        STRACE, "-f", "-tt", "-s", "4096", "-xx", "-e", f"trace={SYSCALLS}", "-o", str(trace),
        sys.executable, "-m", "sms_blaster", "send", str(campaign), "--base-url", sim.url,
        "--from", "Shop", "--rate", "2000", "--window", "32", "--no-progress",
        "--journal", str(journal), *extra,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=cli_env(),
    )  # fmt: skip
    async with asyncio.timeout(60):
        _, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    return parse_trace(trace.read_text())


@pytest.mark.slow
async def test_every_request_leaves_after_an_fsync_covering_its_inflight_mark(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """Every request's mark is in the WAL and fsynced before the request's first byte is written."""
    requests, unsynced = await traced_send(simulator, tmp_path)
    assert len(requests) == ROWS
    assert unsynced == []


@pytest.mark.slow
async def test_with_no_fsync_requests_leave_before_their_marks_are_on_disk(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """--no-fsync lets requests leave with their marks in the OS's cache only (the check bites)."""
    requests, unsynced = await traced_send(simulator, tmp_path, "--no-fsync")
    assert len(requests) == ROWS
    assert len(unsynced) > ROWS // 2


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["--uvloop", "--no-uvloop"])
async def test_no_descriptor_is_closed_twice(
    simulator: RunningSimulator, tmp_path: Path, loop: str
) -> None:
    """Each close finds its descriptor open: a second close of a number another thread has
    opened meanwhile (the WAL's) would close that file under it."""
    calls = await traced_calls(simulator, tmp_path, loop)
    failed = [call for call in calls if call.name == "close" and call.result < 0]
    assert failed == []


def journal_states(path: Path) -> dict[str, str]:
    """Client ref -> state of every row the journal holds."""
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return dict(connection.execute("SELECT client_ref, state FROM rows").fetchall())


def small_files() -> None:
    """In the child: files may not grow past 256 kB (Python ignores SIGXFSZ: writes fail)."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))


async def test_a_journal_the_disk_refuses_stops_the_run_and_no_request_leaves_unmarked(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """A commit failing in the writer thread stops the run (exit 4); every row sent is in it."""
    rows = [(f"m{k}", f"+4474{k:08d}") for k in range(5000)]
    campaign = write_csv(tmp_path / "rows.csv", rows, header="text,to")
    journal = tmp_path / "rows.journal"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sms_blaster", "send", str(campaign), "--base-url", simulator.url,
        "--from", "Shop", "--rate", "100000", "--no-progress", "--journal", str(journal),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=cli_env(),
        preexec_fn=small_files,
    )  # fmt: skip
    async with asyncio.timeout(60):
        stdout, stderr = await process.communicate()
    assert process.returncode == 4, stderr.decode()
    assert "cannot write the journal" in stderr.decode()
    sent = [r["client_ref"] for r in map(json.loads, stdout.splitlines()) if r["status"] == "sent"]
    states = journal_states(journal)
    assert sent
    assert all(states.get(ref) in ("inflight", "sent") for ref in sent)


async def test_a_run_the_disk_stopped_and_its_resume_end_every_row_with_one_final_record(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """Records of rows the failed journal could not settle are left to the resume: across both
    runs each row has one final record, and no number was accepted twice."""
    rows = [(f"m{k}", f"+4474{k:08d}") for k in range(3000)]
    campaign = write_csv(tmp_path / "rows.csv", rows, header="text,to")
    journal = tmp_path / "rows.journal"
    argv = [
        sys.executable, "-m", "sms_blaster", "send", str(campaign), "--base-url", simulator.url,
        "--from", "Shop", "--rate", "100000", "--no-progress", "--journal", str(journal),
    ]  # fmt: skip
    outputs: list[bytes] = []
    for limit in (small_files, None):
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=cli_env(), preexec_fn=limit,
        )  # fmt: skip
        async with asyncio.timeout(60):
            stdout, stderr = await process.communicate()
        outputs.append(stdout)
        if limit is not None:
            assert process.returncode == 4, stderr.decode()
            assert "records from the resume" in stderr.decode()
    final: dict[int, int] = {}
    for stdout in outputs:
        for record in map(json.loads, stdout.splitlines()):
            kind = (record.get("error") or {}).get("kind")
            if kind not in ("stopped", "already_settled"):
                final[record["line"]] = final.get(record["line"], 0) + 1
    assert len(final) == len(rows)
    assert set(final.values()) == {1}
    recipients = (await simulator.stats())["recipients"]
    assert max(entry["accepted"] for entry in recipients.values()) == 1


async def test_rows_marked_ahead_when_the_disk_stopped_the_run_are_said_to_stay_unknown(
    tmp_path: Path,
) -> None:
    """Rows marked in flight while they waited for a window place, whose requests never left,
    stay in flight in a journal that can no longer be written: the failed run's record of each
    says the resume records it unknown, and a row whose record says the resume sends it is sent
    by the resume, not left unknown."""
    simulator = await start_simulator(SimulatorConfig(latency_ms=3))
    try:
        rows = [(f"m{k}", f"+4474{k:08d}") for k in range(3000)]
        campaign = write_csv(tmp_path / "rows.csv", rows, header="text,to")
        argv = [
            sys.executable, "-m", "sms_blaster", "send", str(campaign), "--base-url",
            simulator.url, "--from", "Shop", "--rate", "100000", "--no-progress",
            "--journal", str(tmp_path / "rows.journal"),
        ]  # fmt: skip
        runs: list[dict[int, dict[str, Any]]] = []
        for limit in (small_files, None):
            process = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env=cli_env(), preexec_fn=limit,
            )  # fmt: skip
            async with asyncio.timeout(60):
                stdout, stderr = await process.communicate()
            assert process.returncode == (4 if limit else 1), stderr.decode()
            runs.append({r["line"]: r for r in map(json.loads, stdout.splitlines())})
        requests = (await simulator.stats())["recipients"]
    finally:
        await simulator.close()
    failed_run, resume = runs
    stopped = {
        line: record["error"]["message"]
        for line, record in failed_run.items()
        if record["error"] and record["error"]["kind"] == "stopped"
    }
    kept_unknown = {
        line
        for line, record in resume.items()
        if record["error"] and record["error"]["code"] == "interrupted"
    }
    said_unknown = {line for line, text in stopped.items() if "records it unknown" in text}
    assert not kept_unknown & (stopped.keys() - said_unknown)
    assert said_unknown, "no row was marked ahead when the journal failed"
    assert said_unknown <= kept_unknown
    for line in said_unknown:  # never sent, by either run
        assert "4474" + f"{line - 1:08d}" not in requests
