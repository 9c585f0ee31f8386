"""SIGHUP, a dropped ssh session: the real CLI drains as for SIGTERM, its terminal gone or not."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from sms_blaster.simulator import SimulatorConfig, start_simulator
from tests.cli_helpers import cli_env, number, receiver_process, run_cli, start_cli, write_csv
from tests.test_transport_proxy import tls_simulator


@pytest.mark.slow
async def test_sighup_with_a_dead_terminal_drains_and_exits_130(tmp_path: Path) -> None:
    """Stderr a closed terminal (writes fail EIO), then SIGHUP: every row read gets one record."""
    simulator = await start_simulator(SimulatorConfig(latency_ms=300))
    master, terminal = os.openpty()
    try:
        rows = [("x", "+" + number(n)) for n in range(1, 201)]
        path = write_csv(tmp_path / "c.csv", rows, header="text,to")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sms_blaster", "send", str(path), "--base-url", simulator.url,
            "--from", "Shop", "--rate", "40", "--window", "8",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=terminal,
            env=cli_env(),
        )  # fmt: skip
        os.close(terminal)
        assert process.stdout is not None
        async with asyncio.timeout(30):
            first = await process.stdout.readline()
            assert json.loads(first)["status"] == "sent"
            os.close(master)  # the terminal is gone: every later write to stderr fails
            master = -1
            process.send_signal(signal.SIGHUP)
            stdout, _ = await process.communicate()
        stats = await simulator.stats()
    finally:
        if master >= 0:
            os.close(master)
        await simulator.close()
    assert process.returncode == 130
    records = [json.loads(first), *(json.loads(line) for line in stdout.decode().splitlines())]
    assert len({r["line"] for r in records}) == len(records) == 200
    sent = [r for r in records if r["status"] == "sent"]
    assert len(sent) == stats["accepted"] < 200
    assert all(r["status"] == "sent" or r["error"]["kind"] == "stopped" for r in records)


async def test_sighup_stops_the_receiver_like_sigterm(tmp_path: Path) -> None:
    """The receiver stores what it acknowledged and exits 0 on a hangup, not killed by it."""
    async with receiver_process("--store", str(tmp_path / "s.journal")) as receiver:
        receiver.process.send_signal(signal.SIGHUP)
        code, _ = await receiver.finish()
    assert code == 0, "".join(receiver.stderr_lines)
    assert any("stopped:" in line for line in receiver.stderr_lines)


@pytest.mark.slow
async def test_sighup_drains_a_worker_and_its_unsent_rows_go_back(
    redis_url: str, tmp_path: Path
) -> None:
    """A worker hung up on exits 130 after its requests in flight; another sends the rest once."""
    rows = [("x", "+" + number(n)) for n in range(1, 41)]
    path = write_csv(tmp_path / "c.csv", rows, header="text,to")
    enqueue = ["enqueue", str(path), "--redis", redis_url, "--campaign", "c", "--from", "Shop"]
    assert (await run_cli(*enqueue)).code == 0
    simulator = await start_simulator(SimulatorConfig(latency_ms=50))
    try:
        worker = ["worker", "--redis", redis_url, "--campaign", "c", "--base-url", simulator.url]
        first = await start_cli(*worker, "--rate", "20", "--window", "4")
        await simulator.wait_for_accepted(5)
        first.send_signal(signal.SIGHUP)
        async with asyncio.timeout(30):
            first_out, first_err = await first.communicate()
        second = await run_cli(*worker, "--rate", "500")
        stats = await simulator.stats()
    finally:
        await simulator.close()
    assert first.returncode == 130, first_err.decode()
    assert second.code == 0, second.stderr
    lines = [json.loads(line)["line"] for line in (first_out + second.stdout).splitlines()]
    assert sorted(lines) == list(range(1, 41))
    assert stats["accepted"] == 40


_WIND_DOWN = """
import asyncio, os, signal, sys
from sms_blaster import cli, run_signals, stopsignals

async def main():
    with run_signals.signal_handlers(asyncio.get_running_loop(), lambda: None):
        pass
    for sig in stopsignals.STOP_SIGNALS:  # the run is over; its journal and records still close
        os.kill(os.getpid(), sig)  # a default action would end the process here, at once
    print("alive", flush=True)

cli._run(main, use_uvloop=sys.argv[1] == "uvloop")  # as every command runs
for sig in stopsignals.STOP_SIGNALS:  # the loop is closed: only the exit code is left to give
    os.kill(os.getpid(), sig)
print("still alive", flush=True)
"""


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
async def test_a_stop_signal_after_the_drain_cannot_cut_the_wind_down_short(loop: str) -> None:
    """Once the run is over (journal commit and last records to come), a signal is not death,
    on either event loop, also once the loop is closed."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _WIND_DOWN, loop, stdout=asyncio.subprocess.PIPE, env=cli_env()
    )
    async with asyncio.timeout(30):
        stdout, _ = await process.communicate()
    assert process.returncode == 0
    assert stdout == b"alive\nstill alive\n"


def _ignore_sighup() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # what nohup does before it starts a command


@pytest.mark.slow
async def test_a_run_started_under_nohup_goes_on_after_a_hangup(tmp_path: Path) -> None:
    """SIGHUP ignored when the run started (nohup) stays ignored: every row is sent, exit 0."""
    simulator = await start_simulator(SimulatorConfig(latency_ms=100))
    try:
        rows = [("x", "+" + number(n)) for n in range(1, 61)]
        path = write_csv(tmp_path / "c.csv", rows, header="text,to")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sms_blaster", "send", str(path), "--base-url", simulator.url,
            "--from", "Shop", "--rate", "40", "--window", "4",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=cli_env(), preexec_fn=_ignore_sighup,
        )  # fmt: skip
        assert process.stdout is not None
        async with asyncio.timeout(60):
            first = await process.stdout.readline()
            process.send_signal(signal.SIGHUP)
            stdout, stderr = await process.communicate()
        stats = await simulator.stats()
    finally:
        await simulator.close()
    assert process.returncode == 0, stderr.decode()
    records = [json.loads(first), *(json.loads(line) for line in stdout.decode().splitlines())]
    assert sorted(r["line"] for r in records) == list(range(1, 61))
    assert {r["status"] for r in records} == {"sent"}
    assert stats["accepted"] == 60


async def _threads(pid: int, at_least: int) -> None:
    # Another process's state has no event to wait on: poll it, bounded by the caller's timeout.
    while len(os.listdir(f"/proc/{pid}/task")) < at_least:  # noqa: ASYNC110
        await asyncio.sleep(0.01)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["sigterm", "sighup"])
async def test_a_stop_signal_before_the_run_starts_exits_130_not_killed(
    sig: signal.Signals,
) -> None:
    """A signal while the first row is awaited on stdin (nothing sent yet) is exit 130."""
    process = await start_cli(
        "send", "-", "--base-url", "http://127.0.0.1:9", "--from", "Shop", stdin=True
    )
    async with asyncio.timeout(30):
        await _threads(process.pid, 2)  # the input's reader thread: start-up is over
        process.send_signal(sig)
        _, stderr = await process.communicate()
    assert process.returncode == 130, stderr.decode()
    assert stderr.decode() == "Error: interrupted while starting: nothing was done\n"


@pytest.mark.slow
async def test_two_stop_signals_at_once_while_input_is_awaited_record_every_row_read(
    tmp_path: Path,
) -> None:
    """SIGINT then SIGTERM in one breath (a double Ctrl-C, systemd's SIGTERM + SIGHUP), the
    input a pipe still open: exit 130, and every row read has one record, as in the journal."""
    simulator = await start_simulator(SimulatorConfig(latency_ms=3000))
    journal, output = tmp_path / "j.journal", tmp_path / "out.jsonl"
    try:
        process = await start_cli(
            "send", "-", "--base-url", simulator.url, "--from", "Shop", "--no-progress",
            "--journal", str(journal), "--output", str(output), stdin=True,
        )  # fmt: skip
        assert process.stdin is not None
        rows = b"".join(b"x,+%s\n" % number(n).encode() for n in range(1, 6))
        process.stdin.write(b"text,to\n" + rows)  # and the pipe stays open: more may come
        await process.stdin.drain()
        async with asyncio.timeout(30):
            while not (await simulator.stats())["arrivals"]["count"]:  # noqa: ASYNC110
                await asyncio.sleep(0.01)  # polling another process's state: no event to wait on
            process.send_signal(signal.SIGINT)
            process.send_signal(signal.SIGTERM)
            _, stderr = await process.communicate()
    finally:
        await simulator.close()
    assert process.returncode == 130, stderr.decode()
    assert "Traceback" not in stderr.decode()
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert sorted(r["line"] for r in records) == [1, 2, 3, 4, 5]
    assert {r["status"] for r in records} <= {"unknown", "failed"}


@pytest.mark.parametrize("transport", ["lean", "aiohttp"])
async def test_a_second_signal_while_connections_are_still_opening_leaves_their_rows_stopped(
    tmp_path: Path, transport: str
) -> None:
    """A provider that takes the TCP connections and never finishes their TLS handshakes: a
    first SIGTERM drains, a second (once the first was taken) aborts. No byte of any request
    was written, so every row is `stopped`, none `unknown`, and the resume sends each once."""
    rows = [(f"r{n}", number(n)) for n in range(1, 13)]
    path = write_csv(tmp_path / "c.csv", rows)
    args = (
        "send", str(path), "--from", "Shop", "--text", "hi", "--window", "8",
        "--journal", str(tmp_path / "j.db"), "--transport", transport,
    )  # fmt: skip
    held: list[asyncio.StreamWriter] = []
    handshakes = asyncio.Event()

    async def never_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        handshakes.set()
        await reader.read()  # the client's hello, unanswered, until it goes away

    server = await asyncio.start_server(never_answers, "127.0.0.1", 0)
    silent_url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with tls_simulator(tmp_path) as (simulator, cert):
        env = cli_env(SSL_CERT_FILE=str(cert.cert))
        process = await start_cli(*args, "--base-url", silent_url, env=env)
        assert process.stderr is not None
        async with asyncio.timeout(30):
            await handshakes.wait()  # a connection is opening: its request waits for it
            process.send_signal(signal.SIGTERM)
            said = b""
            while b"stopping:" not in said:  # the first signal taken: the next one aborts
                line = await process.stderr.readline()
                assert line, said.decode()
                said += line
            process.send_signal(signal.SIGTERM)
            stdout, stderr = await process.communicate()
        for writer in held:
            writer.close()
        server.close()
        resume = await run_cli(*args, "--base-url", simulator.url, env=env)
        stats = await simulator.stats()
    first = [json.loads(line) for line in stdout.splitlines()]
    assert process.returncode == 130, (said + stderr).decode()
    assert sorted(record["line"] for record in first) == list(range(1, 13))
    assert {(r["status"], r["error"]["kind"]) for r in first} == {("failed", "stopped")}
    assert resume.code == 0, resume.stderr
    assert sorted(r["line"] for r in resume.records if r["status"] == "sent") == list(range(1, 13))
    assert (stats["requests"], stats["accepted"]) == (12, 12)
