"""The preparing process: rows read and prepared in a child, handed over in batches, and the
child's life (it ends with the run, at a stop, and with a parent that was killed)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sms_blaster.inputs import open_input
from sms_blaster.models import ErrorKind, InputRow, Message, Record
from sms_blaster.prepare import Preparer, compile_template
from sms_blaster.preparing import PreparedBatch, PreparingProcess
from sms_blaster.simulator import SimulatorConfig, start_simulator
from tests.cli_helpers import cli_env, number, start_cli


def preparer() -> Preparer:
    return Preparer(to_column="to", template=compile_template("Hi {name}"), campaign="camp")


def csv_rows(count: int) -> bytes:
    return b"".join(b"+%s,N%d\n" % (number(n).encode(), n) for n in range(1, count + 1))


async def collect(batches: PreparingProcess) -> list[PreparedBatch]:
    return [batch async for batch in batches]


@contextlib.asynccontextmanager
async def preparing(
    path: Path, chosen: Preparer, batch_rows: int
) -> AsyncIterator[PreparingProcess]:
    with open_input(str(path)) as source:
        process = await PreparingProcess.start(source, chosen, batch_rows)
        try:
            yield process
        finally:
            process.close()


async def test_every_row_comes_prepared_in_order_in_batches_of_the_size_asked(
    tmp_path: Path,
) -> None:
    """1,000 rows in batches of 256: each row once, in input order, as a message."""
    path = tmp_path / "c.csv"
    path.write_bytes(b"to,name\n" + csv_rows(1000))
    async with preparing(path, preparer(), 256) as process:
        batches = await collect(process)
    assert [len(batch.items) for batch in batches] == [256, 256, 256, 232]
    items = [item for batch in batches for item in batch.items]
    assert [item.line for item in items] == list(range(1, 1001))
    assert all(isinstance(item, Message) for item in items)


async def test_a_row_that_breaks_preparation_in_the_child_is_a_record_with_a_reason(
    tmp_path: Path,
) -> None:
    """An exception preparing a row is that row's record (invalid input), not a dead child."""

    class Fragile(Preparer):
        def prepare(self, row: InputRow) -> Message | Record:
            if row.line == 2:
                raise ValueError("boom")
            return super().prepare(row)

    path = tmp_path / "c.csv"
    path.write_bytes(b"to,name\n" + csv_rows(3))
    fragile = Fragile(to_column="to", template=compile_template("Hi {name}"), campaign="camp")
    async with preparing(path, fragile, 512) as process:
        (batch,) = await collect(process)
    record = batch.items[1]
    assert isinstance(record, Record)
    assert record.error is not None
    assert (record.error.kind, record.error.code) == (ErrorKind.INVALID_INPUT, "unreadable_row")
    assert "boom" in record.error.message


async def test_rows_from_a_pipe_come_before_the_pipe_ends(tmp_path: Path) -> None:
    """A partial batch is handed over once no more input is ready: a slow pipe's rows go on."""
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b"to,name\n" + csv_rows(3))
    with os.fdopen(read_fd, "rb", buffering=0) as stdin, open_input("-", stdin=stdin) as source:
        process = await PreparingProcess.start(source, preparer(), 512)
        try:
            async with asyncio.timeout(30):
                first = await anext(process)
            os.close(write_fd)
            write_fd = -1
            rest = await collect(process)
        finally:
            process.close()
            if write_fd >= 0:
                os.close(write_fd)
    assert [item.line for item in first.items] == [1, 2, 3]
    assert rest == []


async def test_close_kills_a_child_still_waiting_for_input() -> None:
    """Closing mid-input ends the child at once, however long its input stays open."""
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b"to,name\n" + csv_rows(1))
    try:
        with os.fdopen(read_fd, "rb", buffering=0) as stdin, open_input("-", stdin=stdin) as source:
            process = await PreparingProcess.start(source, preparer(), 512)
            pid = process.pid
            async with asyncio.timeout(30):
                await anext(process)
            process.close()
    finally:
        os.close(write_fd)
    assert process.pid == 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped, not a zombie


async def test_the_child_ignores_the_stop_signals(tmp_path: Path) -> None:
    """SIGTERM and SIGINT are the parent's to handle: the child reads on to the end."""
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b"to,name\n" + csv_rows(1))
    try:
        with os.fdopen(read_fd, "rb", buffering=0) as stdin, open_input("-", stdin=stdin) as source:
            process = await PreparingProcess.start(source, preparer(), 512)
            try:
                async with asyncio.timeout(30):
                    await anext(process)
                    os.kill(process.pid, signal.SIGTERM)
                    os.kill(process.pid, signal.SIGINT)
                    os.write(write_fd, b"+%s,N2\n" % number(2).encode())
                    os.close(write_fd)
                    write_fd = -1
                    rest = await collect(process)
            finally:
                process.close()
    finally:
        if write_fd >= 0:
            os.close(write_fd)
    assert [item.line for batch in rest for item in batch.items] == [2]


NEEDS_PROC = pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs /proc")


@contextlib.asynccontextmanager
async def sending_from_stdin() -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """`send` reading three rows from a pipe left open, once its first request has arrived: the
    process and its preparing child, blocked on the pipe."""
    simulator = await start_simulator(SimulatorConfig(latency_ms=3000))
    try:
        process = await start_cli(
            "send", "-", "--base-url", simulator.url, "--from", "Shop", "--no-journal",
            "--text", "Hi {name}", stdin=True,
        )  # fmt: skip
        assert process.stdin is not None
        process.stdin.write(b"to,name\n" + csv_rows(3))  # and the pipe stays open
        await process.stdin.drain()
        async with asyncio.timeout(30):
            while not (await simulator.stats())["arrivals"]["count"]:  # noqa: ASYNC110
                await asyncio.sleep(0.01)  # polling another process's state: no event to wait on
            (child,) = _children(process.pid)
            yield process, child
    finally:
        await simulator.close()


@NEEDS_PROC
async def test_the_child_dies_when_the_sender_is_killed() -> None:
    """SIGKILL of `send` reading stdin: its preparing child, blocked on the open pipe, is gone."""
    async with sending_from_stdin() as (process, child):
        gone = os.pidfd_open(child)
        loop = asyncio.get_running_loop()
        try:
            process.kill()
            await process.wait()
            ended = asyncio.Event()
            loop.add_reader(gone, ended.set)
            await ended.wait()  # a pidfd reads ready once its process has exited
            loop.remove_reader(gone)
        finally:
            os.close(gone)
    assert ended.is_set()


@NEEDS_PROC
async def test_a_child_killed_mid_run_stops_the_run_and_the_rows_taken_keep_their_records() -> None:
    """The preparing child killed (out of memory, say): the run stops as at any other stop
    (the requests in flight finish), exit 4 with an `Error:` line, no traceback, and every row
    the sender had taken has one record."""
    async with sending_from_stdin() as (process, child):
        os.kill(child, signal.SIGKILL)
        stdout, stderr = await process.communicate()
    assert process.returncode == 4
    assert (
        stderr.decode()
        .splitlines()[-1]
        .startswith(
            "Error: the process preparing rows was killed by SIGKILL; no new request was sent"
        )
    )
    assert "Traceback" not in stderr.decode()
    lines = sorted(json.loads(line)["line"] for line in stdout.decode().splitlines())
    assert lines == [1, 2, 3]


async def test_a_stop_mid_input_leaves_one_record_for_each_row_taken_and_none_after(
    tmp_path: Path,
) -> None:
    """SIGTERM while the child is batches ahead: lines 1..k have one record each (sent or
    stopped), and the rows it had prepared beyond them have none (they stay pending)."""
    simulator = await start_simulator(SimulatorConfig(latency_ms=200))
    path, output = tmp_path / "c.csv", tmp_path / "out.jsonl"
    path.write_bytes(b"to,name\n" + csv_rows(5000))
    try:
        process = await start_cli(
            "send", str(path), "--base-url", simulator.url, "--from", "Shop", "--no-progress",
            "--text", "Hi {name}", "--window", "4", "--output", str(output),
        )  # fmt: skip
        async with asyncio.timeout(30):
            while not (await simulator.stats())["arrivals"]["count"]:  # noqa: ASYNC110
                await asyncio.sleep(0.01)  # polling another process's state: no event to wait on
            process.send_signal(signal.SIGTERM)
            _, stderr = await process.communicate()
    finally:
        await simulator.close()
    assert process.returncode == 130, stderr.decode()
    records = [json.loads(line) for line in output.read_text().splitlines()]
    lines = [record["line"] for record in records]
    assert sorted(lines) == list(range(1, len(lines) + 1))
    assert len(lines) < 5000
    assert {record["status"] for record in records} <= {"sent", "failed"}
    assert all(r["status"] == "sent" or r["error"]["kind"] == "stopped" for r in records)


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as handle:
        return [int(field) for field in handle.read().split()]


async def test_a_run_with_stdin_closed_sends_every_row_and_exits_cleanly(tmp_path: Path) -> None:
    """`<&-` (cron, daemons): the first pipe or socket would take descriptor 0, and the event
    loop aborted the process (exit 134) when it closed it."""
    simulator = await start_simulator(SimulatorConfig())
    path = tmp_path / "c.csv"
    path.write_bytes(b"to,name\n" + csv_rows(20))
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sms_blaster", "send", str(path), "--base-url", simulator.url,
            "--from", "Shop", "--no-progress", "--text", "Hi {name}",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=cli_env(),
            preexec_fn=lambda: os.close(0),
        )  # fmt: skip
        async with asyncio.timeout(60):
            stdout, stderr = await process.communicate()
    finally:
        await simulator.close()
    assert process.returncode == 0, stderr.decode()
    assert len(stdout.decode().splitlines()) == 20
