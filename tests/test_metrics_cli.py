"""--metrics-file and --pushgateway: the real CLI against the simulator, a loopback gateway of
the test's own, and redis-server for a worker."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
import os
import signal
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from sms_blaster.simulator import RunningSimulator, SimulatorConfig, start_simulator
from tests.cli_helpers import cli_env, number, run_cli, start_cli, write_csv

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
async def simulator() -> AsyncIterator[RunningSimulator]:
    running = await start_simulator(SimulatorConfig())
    yield running
    await running.close()


def send_args(sim: RunningSimulator, path: Path, *extra: str) -> list[str]:
    return ["send", str(path), "--base-url", sim.url, "--from", "Shop", "--rate", "500",
            "--no-progress", *extra]  # fmt: skip


def campaign(tmp_path: Path, count: int, *, bad: int = 0) -> Path:
    rows = [("x", "+" + number(n)) for n in range(1, count + 1)] + [("x", "+44 12")] * bad
    return write_csv(tmp_path / "c.csv", rows, header="text,to")


def samples(text: str) -> Samples:
    """Every sample of a metrics file, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found[name, frozenset({"campaign": "default", **labels}.items())]


async def written(
    path: Path, ready: Callable[[Samples], bool] = bool, timeout_s: float = 30
) -> Samples:
    """The metrics file once a write of it is `ready` (polled, within `timeout_s`)."""
    async with asyncio.timeout(timeout_s):
        while (found := read(path)) is None or not ready(found):  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # another process's file: polled, no event to wait on
    return found


def read(path: Path) -> Samples | None:
    """The samples of the metrics file; None before its first write."""
    return samples(path.read_text()) if path.exists() else None


async def test_a_run_writes_its_rows_segments_cost_and_exit_code_to_the_metrics_file(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """After a run the file holds its rows by status and error kind, and its exit code (1)."""
    metrics = tmp_path / "sms.prom"
    run = await run_cli(*send_args(simulator, campaign(tmp_path, 5, bad=1),
                                   "--metrics-file", str(metrics)))  # fmt: skip
    found = samples(metrics.read_text())
    assert run.code == 1
    assert value(found, "sms_blaster_rows_total", status="sent") == 5
    assert value(found, "sms_blaster_rows_total", status="failed") == 1
    assert value(found, "sms_blaster_row_errors_total", kind="invalid_input") == 1
    assert value(found, "sms_blaster_segments_total") == 5
    assert value(found, "sms_blaster_cost_total") > 0
    assert value(found, "sms_blaster_requests_total") == 5
    assert value(found, "sms_blaster_latency_seconds_count") == 5
    assert value(found, "sms_blaster_exit_code") == 1
    assert [path.name for path in os.scandir(tmp_path) if path.name.startswith("sms.prom.")] == []


@contextlib.asynccontextmanager
async def slow_run(
    tmp_path: Path, rows: int, metrics: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`send` of `rows` rows at 4/s with `--metrics-file metrics`, once it wrote the file (at
    its start); killed after the block if it still runs."""
    simulator = await start_simulator(SimulatorConfig())
    path = campaign(tmp_path, rows)
    process = await start_cli(
        *send_args(simulator, path, "--rate", "4", "--metrics-file", str(metrics))
    )
    try:
        await written(metrics)
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await simulator.close()


@pytest.mark.slow
async def test_the_metrics_file_is_rewritten_while_a_long_run_goes_on(tmp_path: Path) -> None:
    """A write during the run shows rows sent so far and no exit code yet."""
    metrics = tmp_path / "sms.prom"
    async with slow_run(tmp_path, 60, metrics) as process:
        # The first write is at the start, before any answer; the next one 10 s on.
        found = await written(
            metrics, lambda found: value(found, "sms_blaster_rows_total", status="sent") > 0
        )
        process.send_signal(signal.SIGTERM)
        await process.communicate()
    assert 0 < value(found, "sms_blaster_rows_total", status="sent") < 60
    assert math.isnan(value(found, "sms_blaster_exit_code"))


async def test_a_second_run_writing_the_same_metrics_file_is_refused_while_the_first_goes_on(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """Two runs would replace each other's figures: the second is exit 2, sends nothing, and
    names the run that holds the file."""
    metrics = tmp_path / "sms.prom"
    other = tmp_path / "other"
    other.mkdir()
    async with slow_run(tmp_path, 20, metrics) as process:
        run = await run_cli(*send_args(simulator, campaign(other, 2),
                                       "--metrics-file", str(metrics)))  # fmt: skip
        process.send_signal(signal.SIGTERM)
        await process.communicate()
    assert run.code == 2, run.stderr
    assert run.stderr.splitlines()[-1].startswith(
        f"Error: --metrics-file {metrics}: another run writes its metrics there (pid {process.pid}"
    )
    assert (await simulator.stats())["requests"] == 0


async def test_a_run_after_one_that_ended_writes_the_same_metrics_file(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """The lock goes with its run: the next run of the file is not refused."""
    metrics = tmp_path / "sms.prom"
    first = await run_cli(*send_args(simulator, campaign(tmp_path, 1), "--metrics-file",
                                     str(metrics), "--campaign", "a"))  # fmt: skip
    second = await run_cli(*send_args(simulator, campaign(tmp_path, 1), "--metrics-file",
                                      str(metrics), "--campaign", "b"))  # fmt: skip
    assert (first.code, second.code) == (0, 0), second.stderr
    assert value(samples(metrics.read_text()), "sms_blaster_exit_code", campaign="b") == 0


async def test_a_signal_leaves_exit_code_130_in_the_metrics_file(tmp_path: Path) -> None:
    """SIGTERM drains the run; its last write says 130."""
    metrics = tmp_path / "sms.prom"
    async with slow_run(tmp_path, 40, metrics) as process:
        process.send_signal(signal.SIGTERM)
        await process.communicate()
    assert process.returncode == 130
    assert value(samples(metrics.read_text()), "sms_blaster_exit_code") == 130


async def test_a_sigint_leaves_the_same_exit_code_in_the_metrics_file_and_the_journal(
    tmp_path: Path,
) -> None:
    """Ctrl-C stops the run: the metrics' last write and the journal's `runs` both say 130."""
    metrics = tmp_path / "sms.prom"
    async with slow_run(tmp_path, 40, metrics) as process:
        process.send_signal(signal.SIGINT)
        await process.communicate()
    assert process.returncode == 130
    with contextlib.closing(sqlite3.connect(tmp_path / "c.csv.journal")) as connection:
        (recorded,) = connection.execute("SELECT exit_code FROM runs").fetchone()
    assert (value(samples(metrics.read_text()), "sms_blaster_exit_code"), recorded) == (130, 130)


async def test_a_fatal_answer_leaves_exit_code_3_in_the_metrics_file(tmp_path: Path) -> None:
    """The provider refuses the credentials: the file's exit code is 3, as the process's."""
    simulator = await start_simulator(SimulatorConfig(api_secret="right"))
    metrics = tmp_path / "sms.prom"
    try:
        run = await run_cli(*send_args(simulator, campaign(tmp_path, 10),
                                       "--metrics-file", str(metrics)))  # fmt: skip
    finally:
        await simulator.close()
    assert run.code == 3
    found = samples(metrics.read_text())
    assert value(found, "sms_blaster_exit_code") == 3
    assert value(found, "sms_blaster_rows_total", status="sent") == 0


async def test_a_failed_run_keeps_the_last_success_of_an_earlier_run(tmp_path: Path) -> None:
    """A run that exits 0 sets the last success; a later failing run of the campaign keeps it."""
    simulator = await start_simulator(SimulatorConfig(api_secret="test-secret"))
    metrics = tmp_path / "sms.prom"
    path = campaign(tmp_path, 3)
    try:
        before_s = time.time()
        first = await run_cli(*send_args(simulator, path, "--metrics-file", str(metrics)))
        success_s = value(
            samples(metrics.read_text()), "sms_blaster_last_success_timestamp_seconds"
        )
        second = await run_cli(
            *send_args(simulator, path, "--metrics-file", str(metrics), "--no-journal"),
            env=cli_env(VONAGE_API_SECRET="wrong"),
        )
    finally:
        await simulator.close()
    assert (first.code, second.code) == (0, 3)
    assert success_s >= before_s
    found = samples(metrics.read_text())
    assert value(found, "sms_blaster_exit_code") == 3
    assert value(found, "sms_blaster_last_success_timestamp_seconds") == success_s


async def test_a_metrics_file_in_a_missing_directory_is_refused_before_anything_is_sent(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """One `Error:` line naming the option and the fix, exit 2, no request."""
    missing = str(tmp_path / "no" / "sms.prom")
    run = await run_cli(*send_args(simulator, campaign(tmp_path, 3), "--metrics-file", missing))
    stats = await simulator.stats()
    assert run.code == 2
    assert run.stderr.splitlines()[-1].startswith("Error: --metrics-file ")
    assert "create it" in run.stderr
    assert stats["requests"] == 0


async def test_a_metrics_file_that_is_the_input_is_refused_and_the_input_kept(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """The metrics never overwrite a file the run reads: exit 2, the input as it was."""
    path = campaign(tmp_path, 3)
    before = path.read_bytes()
    run = await run_cli(*send_args(simulator, path, "--metrics-file", str(path)))
    assert run.code == 2
    assert run.stderr.splitlines()[-1] == (
        f"Error: --metrics-file {path}: that is the input ({path}); write the metrics elsewhere"
    )
    assert path.read_bytes() == before


@pytest.mark.parametrize("suffix", [".journal.lock", ".journal-wal", ".journal-shm", ".journal"])
async def test_a_metrics_file_that_is_the_journal_or_a_file_beside_it_is_refused(
    simulator: RunningSimulator, tmp_path: Path, suffix: str
) -> None:
    """A rename over the journal's lock would let a second run in beside this one (rows sent
    twice), one over its WAL would lose its commits: exit 2 before anything is sent."""
    path = campaign(tmp_path, 3)
    target = f"{path}{suffix}"
    run = await run_cli(*send_args(simulator, path, "--metrics-file", target))
    assert run.code == 2, run.stderr
    assert run.stderr.splitlines()[-1].startswith(f"Error: --metrics-file {target}: that is ")
    assert (await simulator.stats())["requests"] == 0


async def test_a_metrics_file_from_the_environment_is_named_in_its_error(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """SMS_BLASTER_METRICS_FILE gives the option; its error names the variable."""
    missing = str(tmp_path / "no" / "sms.prom")
    run = await run_cli(
        *send_args(simulator, campaign(tmp_path, 3)),
        env=cli_env(SMS_BLASTER_METRICS_FILE=missing),
    )
    assert run.code == 2
    assert run.stderr.startswith(f"Error: SMS_BLASTER_METRICS_FILE={missing}: ")


async def test_a_pushgateway_that_is_no_url_is_refused_before_anything_is_sent(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """--pushgateway must be an http(s) URL: exit 2 with one `Error:` line."""
    run = await run_cli(*send_args(simulator, campaign(tmp_path, 3),
                                   "--pushgateway", "gateway:9091"))  # fmt: skip
    assert run.code == 2
    assert [line for line in run.stderr.splitlines() if line.startswith("Error:")] == [
        "Error: --pushgateway gateway:9091: not an http(s) URL; "
        "give one like http://pushgateway:9091"
    ]
    assert (await simulator.stats())["requests"] == 0


async def test_a_metrics_file_that_can_no_longer_be_written_warns_once_and_the_run_goes_on(
    tmp_path: Path,
) -> None:
    """Its directory removed mid-run: one warning, every row sent, exit 0."""
    directory = tmp_path / "textfile"
    directory.mkdir()
    metrics = directory / "sms.prom"
    async with slow_run(tmp_path, 8, metrics) as process:
        metrics.unlink()
        (directory / ".sms.prom.lock").unlink()  # the run's lock on the file, beside it
        directory.rmdir()
        stdout, stderr = await process.communicate()
    warnings = [line for line in stderr.decode().splitlines() if "--metrics-file" in line]
    assert process.returncode == 0
    assert len(stdout.splitlines()) == 8
    assert len(warnings) == 1
    assert warnings[0].endswith("; the run goes on")


async def test_a_dry_run_writes_no_metrics(simulator: RunningSimulator, tmp_path: Path) -> None:
    """A dry run's figures are estimates: the file is not written."""
    metrics = tmp_path / "sms.prom"
    run = await run_cli(*send_args(simulator, campaign(tmp_path, 3),
                                   "--dry-run", "--metrics-file", str(metrics)))  # fmt: skip
    assert run.code == 0
    assert not metrics.exists()


async def test_a_send_without_the_metrics_options_does_not_import_prometheus_client(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """The library is loaded only by runs that use it."""
    run = await run_cli(
        *send_args(simulator, campaign(tmp_path, 2)), env=cli_env(PYTHONPROFILEIMPORTTIME="1")
    )
    assert run.code == 0
    assert "sms_blaster.campaign" in run.stderr  # the import log is on
    assert "prometheus_client" not in run.stderr


@dataclass
class Gateway:
    """A Pushgateway stand-in on loopback: what it was pushed, in order."""

    status: int = 200
    pushes: list[tuple[str, str, str]] = field(default_factory=list)  # method, path, body
    authorizations: list[str | None] = field(default_factory=list)  # each push's header

    async def handle(self, request: web.Request) -> web.Response:
        self.pushes.append((request.method, request.path, await request.text()))
        self.authorizations.append(request.headers.get("Authorization"))
        return web.Response(status=self.status)


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[Gateway, str]]:
    recorded = Gateway()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", recorded.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield recorded, str(server.make_url("")).rstrip("/")
    await server.close()


async def test_the_metrics_are_pushed_to_the_gateway_grouped_by_campaign(
    simulator: RunningSimulator, gateway: tuple[Gateway, str], tmp_path: Path
) -> None:
    """A push at the start and one at exit (POST, job sms_blaster); the last has the counts."""
    recorded, url = gateway
    run = await run_cli(*send_args(simulator, campaign(tmp_path, 4), "--pushgateway", url))
    assert run.code == 0
    assert len(recorded.pushes) >= 2
    method, path, body = recorded.pushes[-1]
    assert (method, path) == ("POST", "/metrics/job/sms_blaster/campaign/default")
    found = samples(body)  # the grouping key labels them: the samples carry no campaign
    assert found["sms_blaster_rows_total", frozenset({("status", "sent")})] == 4
    assert found["sms_blaster_exit_code", frozenset()] == 0
    assert "sms_blaster_last_success_timestamp_seconds" in body


async def test_a_failed_run_pushes_no_last_success_so_the_gateway_keeps_the_earlier_one(
    gateway: tuple[Gateway, str], tmp_path: Path
) -> None:
    """POST replaces only the names pushed: a failed run leaves the last success out."""
    recorded, url = gateway
    simulator = await start_simulator(SimulatorConfig(api_secret="right"))
    try:
        run = await run_cli(*send_args(simulator, campaign(tmp_path, 3), "--pushgateway", url))
    finally:
        await simulator.close()
    assert run.code == 3
    assert "sms_blaster_last_success" not in "".join(body for _, _, body in recorded.pushes)
    assert samples(recorded.pushes[-1][2])["sms_blaster_exit_code", frozenset()] == 3


async def test_a_gateway_that_refuses_warns_once_and_every_row_is_sent(
    simulator: RunningSimulator, gateway: tuple[Gateway, str], tmp_path: Path
) -> None:
    """Every push answered 500: one warning on stderr, the run sends all and exits 0."""
    recorded, url = gateway
    recorded.status = 500
    run = await run_cli(*send_args(simulator, campaign(tmp_path, 6), "--pushgateway", url))
    assert run.code == 0
    assert len(run.records) == 6
    assert len(recorded.pushes) >= 2
    assert len([line for line in run.stderr.splitlines() if "--pushgateway" in line]) == 1


async def test_an_unreachable_gateway_never_stops_the_run(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """Nothing listens at the gateway's address: one warning, every row sent, exit 0."""
    server = TestServer(web.Application(), host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    await server.close()  # its port now refuses connections
    run = await run_cli(*send_args(simulator, campaign(tmp_path, 6), "--pushgateway", url))
    assert run.code == 0
    assert len(run.records) == 6
    assert len([line for line in run.stderr.splitlines() if "--pushgateway" in line]) == 1


async def test_a_gateway_password_never_reaches_stderr(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """A refused push to http://user:secret@...: the warning masks the password."""
    server = TestServer(web.Application(), host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("")).rstrip("/").replace("http://", "http://ops:s3cr3t@")
    await server.close()  # its port now refuses connections
    run = await run_cli(*send_args(simulator, campaign(tmp_path, 2), "--pushgateway", url))
    assert run.code == 0
    assert "s3cr3t" not in run.stderr
    assert "ops:***@" in run.stderr


async def test_a_gateway_url_with_a_user_and_password_pushes_with_basic_auth(
    simulator: RunningSimulator, gateway: tuple[Gateway, str], tmp_path: Path
) -> None:
    """http://user:pass@host:port: every push carries them as Basic auth, to the host's path."""
    recorded, url = gateway
    url = url.replace("http://", "http://ops:p%40ss@")
    run = await run_cli(*send_args(simulator, campaign(tmp_path, 2), "--pushgateway", url))
    assert run.code == 0, run.stderr
    assert recorded.pushes[-1][1] == "/metrics/job/sms_blaster/campaign/default"
    expected = "Basic " + base64.b64encode(b"ops:p@ss").decode()
    assert set(recorded.authorizations) == {expected}


async def test_a_gateway_behind_a_base_path_is_pushed_below_it(
    simulator: RunningSimulator, gateway: tuple[Gateway, str], tmp_path: Path
) -> None:
    """A reverse proxy's path is kept: the push goes to PATH/metrics/job/..."""
    recorded, url = gateway
    run = await run_cli(*send_args(simulator, campaign(tmp_path, 2),
                                   "--pushgateway", url + "/gateway/"))  # fmt: skip
    assert run.code == 0, run.stderr
    assert recorded.pushes[-1][1] == "/gateway/metrics/job/sms_blaster/campaign/default"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://127.0.0.1:abc", "not an http(s) URL"),
        ("http://ex ample:9091", "not an http(s) URL"),
        ("http://u:PW1@[::1", "not an http(s) URL"),
        ("http://gateway:9091/?job=x", "a query or a fragment"),
        ("http://gateway:9091/#top", "a query or a fragment"),
        ("http://gateway:9091/metrics/job/sms_blaster", "the push adds /metrics/job/"),
    ],
)
async def test_a_pushgateway_url_no_push_could_use_is_refused_before_anything_is_sent(
    simulator: RunningSimulator, tmp_path: Path, url: str, problem: str
) -> None:
    """Malformed, or holding what the push adds itself: one `Error:` line, exit 2, no request,
    no password."""
    run = await run_cli(*send_args(simulator, campaign(tmp_path, 2), "--pushgateway", url))
    errors = [line for line in run.stderr.splitlines() if line.startswith("Error:")]
    assert run.code == 2, run.stderr
    assert len(errors) == 1
    assert errors[0].startswith(f"Error: --pushgateway {url.replace('PW1', '***')}: {problem}")
    assert "PW1" not in run.stderr
    assert (await simulator.stats())["requests"] == 0


@pytest.mark.parametrize("kind", ["fifo", "symlink", "empty", "trailing slash", "unwritable"])
async def test_a_metrics_file_the_rename_could_not_replace_safely_is_refused(
    simulator: RunningSimulator, tmp_path: Path, kind: str
) -> None:
    """A FIFO, a symbolic link, no name, a directory's name or a directory that takes no new
    file: exit 2 naming the fix, before anything is sent, and the path left as it was."""
    target = tmp_path / "real.prom"
    target.write_text("kept\n")
    path = str(tmp_path / "sms.prom")
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink":
        os.symlink(target, path)
    elif kind == "empty":
        path = ""
    elif kind == "trailing slash":
        path = str(tmp_path / "m7dir") + "/"
    else:
        path = "/proc/sms_blaster.prom"  # no file can be created there, even by root
    run = await run_cli(*send_args(simulator, campaign(tmp_path, 2), "--metrics-file", path))
    assert run.code == 2, run.stderr
    assert run.stderr.splitlines()[-1].startswith(f"Error: --metrics-file {path}: ")
    assert "give" in run.stderr.splitlines()[-1]
    assert (await simulator.stats())["requests"] == 0
    assert target.read_text() == "kept\n"


@pytest.mark.slow
async def test_a_worker_writes_its_campaign_and_name_in_the_metrics_file(
    redis_url: str, simulator: RunningSimulator, tmp_path: Path
) -> None:
    """A worker's metrics carry the campaign and the worker's name, and the rows it settled."""
    rows = [(f"Ann{n}", "+" + number(n)) for n in range(1, 8)]
    path = write_csv(tmp_path / "c.csv", rows)
    enqueued = await run_cli("enqueue", str(path), "--redis", redis_url, "--campaign", "spring",
                             "--from", "Shop", "--text", "Hi {name}")  # fmt: skip
    metrics = tmp_path / "worker.prom"
    run = await run_cli("worker", "--redis", redis_url, "--campaign", "spring", "--base-url",
                        simulator.url, "--no-progress", "--name", "w1", "--rate", "500",
                        "--metrics-file", str(metrics))  # fmt: skip
    assert (enqueued.code, run.code) == (0, 0), run.stderr
    found = samples(metrics.read_text())
    labels = {"campaign": "spring", "worker": "w1"}
    assert found["sms_blaster_rows_total", frozenset({**labels, "status": "sent"}.items())] == 7
    assert found["sms_blaster_exit_code", frozenset(labels.items())] == 0
