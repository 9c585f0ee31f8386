"""The distributed scenarios of issue 7: aggregate throughput of 1, 2 and 4 `sms-blaster worker`
processes on one campaign, and the accuracy of the global limit they share.

Usage: python -m benchmarks.run --only distributed-throughput --only distributed-limit

Each scenario starts its own redis-server (Debian's, no persistence) on a free loopback port and
flushes it between runs; every worker, `enqueue` and `send` is a process of its own.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from benchmarks.clients import ENV, TEXT, send, send_argv, shown, write_campaign
from benchmarks.results import Check, Section, median_range, ratio
from benchmarks.scenarios import FAST, Context, need
from benchmarks.servers import BIN, NGINX, Simulator, free_port, nginx, simulator

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
CAMPAIGN = "bench"
WORKERS = (1, 2, 4)
LIMIT_WORKERS = 3
LIMIT_RATES = (300, 1000)


@dataclass(frozen=True, slots=True)
class RedisServer:
    url: str
    client: redis.Redis

    def flush(self) -> None:
        """Empty it and zero its counters, for the next run."""
        self.client.flushall()
        self.client.config_resetstat()

    def cpu_s(self) -> float:
        cpu = self.client.info("cpu")
        return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])

    def script_calls(self) -> int:
        """EVALSHA and EVAL calls since the last flush: one round trip each."""
        stats = self.client.info("commandstats")
        return sum(
            int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval")
        )

    def commands(self) -> int:
        """Commands since the last flush, those run inside scripts included."""
        return int(self.client.info("stats")["total_commands_processed"])


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    """Debian's redis-server on a free loopback port, without persistence; shut down after."""
    need("redis-server", Path(REDIS_SERVER).exists())
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as folder:
        port = free_port()
        argv = [
            REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--daemonize", "no", "--dir", folder,
            "--logfile", str(Path(folder) / "redis.log"),
        ]  # fmt: skip
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=port, decode_responses=True)
        try:
            deadline = time.monotonic() + 10
            while True:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start")
                with contextlib.suppress(redis.ConnectionError):
                    client.ping()
                    break
                time.sleep(0.02)
            yield RedisServer(f"redis://127.0.0.1:{port}/0", client)
        finally:
            with contextlib.suppress(redis.RedisError):
                client.shutdown(nosave=True)
            client.close()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def enqueue_argv(server: RedisServer, campaign: Path) -> list[str]:
    return [
        str(BIN), "enqueue", str(campaign), "--redis", server.url, "--campaign", CAMPAIGN,
        "--from", "Bench", "--text", TEXT, "--output", os.devnull,
    ]  # fmt: skip


def enqueue(server: RedisServer, campaign: Path, timeout_s: float = 120) -> float:
    """Run `sms-blaster enqueue`; its wall time in seconds."""
    started = time.perf_counter()
    done = subprocess.run(
        enqueue_argv(server, campaign), env=ENV, capture_output=True, text=True, timeout=timeout_s
    )
    elapsed_s = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"enqueue exited {done.returncode}: {done.stderr}")
    return elapsed_s


def worker_argv(server: RedisServer, url: str, *options: str) -> list[str]:
    return [
        str(BIN), "worker", "--redis", server.url, "--campaign", CAMPAIGN, "--base-url", url,
        "--no-progress", "--output", os.devnull, *options,
    ]  # fmt: skip


@dataclass(frozen=True, slots=True)
class WorkersRun:
    wall_s: float  # from the first worker's start to the last one's exit
    sent: int  # sent, by the workers' own summaries
    cpu_s: float  # user + system CPU of all the workers


def run_workers(argv: list[str], count: int, folder: Path, timeout_s: float) -> WorkersRun:
    """Start `count` workers at once and wait for them all; exit 0 or 1 is a result."""
    logs = [folder / f"worker-{n}.log" for n in range(count)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    processes = []
    for log in logs:
        with log.open("wb") as err:
            processes.append(subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=err))
    try:
        for process in processes:
            process.wait(timeout=max(1.0, started + timeout_s - time.perf_counter()))
        wall_s = time.perf_counter() - started
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    sent = 0
    for process, log in zip(processes, logs, strict=True):
        text = log.read_text()
        if process.returncode not in (0, 1):
            raise RuntimeError(f"worker exited {process.returncode}: {text[-2000:]}")
        match = re.search(r"([\d,]+) sent", text)
        if not match:
            raise RuntimeError(f"no summary line from a worker: {text[-2000:]}")
        sent += int(match.group(1).replace(",", ""))
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return WorkersRun(wall_s, sent, cpu_s)


# -- aggregate throughput ------------------------------------------------------------------------


def distributed_throughput(ctx: Context) -> Section:
    need("nginx", Path(NGINX).exists())
    rows, window = (5000, 64) if ctx.quick else (15000, 64)
    # (workers, window each): the window of the issue, and a small one that shows what the
    # large one costs when processes outnumber cores.
    variants = [(1, window), (2, window), (4, window), (4, 8)]
    campaign = write_campaign(ctx.folder / "distributed.csv", rows)
    one_row = write_campaign(ctx.folder / "one-row.csv", 1)
    fixed_s: list[float] = []  # one worker, a campaign of one row: start-up and drain
    enqueue_s: list[float] = []
    wall: dict[tuple[int, int], list[float]] = {v: [] for v in variants}
    cpu_us: dict[tuple[int, int], list[float]] = {v: [] for v in variants}
    redis_us: dict[tuple[int, int], list[float]] = {v: [] for v in variants}
    scripts: dict[tuple[int, int], list[float]] = {v: [] for v in variants}
    commands: dict[tuple[int, int], list[float]] = {v: [] for v in variants}
    send_wall: list[float] = []
    send_own: list[float] = []
    with nginx() as web, redis_server() as server:
        for _ in range(ctx.rounds):
            reference = send_argv(
                web.url, campaign, *FAST, "--window", str(window), "--journal",
                str(ctx.journal("distributed")),
            )  # fmt: skip
            run = send(reference, timeout_s=300)
            send_wall.append(rows / run.elapsed_s)
            send_own.append(run.rows_per_s)
            server.flush()
            enqueue(server, one_row)
            argv = worker_argv(server, web.url, *FAST, "--window", str(window))
            fixed_s.append(run_workers(argv, 1, ctx.folder, timeout_s=60).wall_s)
            for variant in variants:
                count, each = variant
                server.flush()
                enqueue_s.append(enqueue(server, campaign))
                argv = worker_argv(server, web.url, *FAST, "--window", str(each))
                redis_before, calls_before = server.cpu_s(), server.script_calls()
                commands_before = server.commands()
                workers = run_workers(argv, count, ctx.folder, timeout_s=300)
                if workers.sent != rows:
                    raise RuntimeError(f"{count} workers sent {workers.sent:,} of {rows:,} rows")
                wall[variant].append(workers.wall_s)
                cpu_us[variant].append(workers.cpu_s / rows * 1e6)
                redis_us[variant].append((server.cpu_s() - redis_before) / rows * 1e6)
                scripts[variant].append((server.script_calls() - calls_before) / rows)
                commands[variant].append((server.commands() - commands_before) / rows)
    speed = {v: [rows / s for s in wall[v]] for v in variants}
    vs_send = {v: [a / b for a, b in zip(speed[v], send_wall, strict=True)] for v in variants}
    lines = [
        "## Distributed: aggregate throughput, zero latency",
        "",
        f"One campaign of {rows:,} rows enqueued into a fresh redis-server (Debian's, no "
        f"persistence, its own process), then N `sms-blaster worker` processes started at once "
        f"with `--rate 1000000 --window W` against Debian's nginx answering a fixed Vonage "
        f"success body (as in the nginx section); 2 cores for the workers, redis-server and "
        f"nginx together. Wall time from the workers' start to the last one's exit (start-up "
        f"and drain included, see below); every row sent once by the workers' own tallies. For "
        f"reference, one `sms-blaster send` of the same rows with its journal and `--window "
        f"{window}`, by its wall time (start-up included). Per row: the workers' user + system "
        f"CPU, redis-server's (`INFO cpu`), Lua script calls (`EVALSHA`, one round trip each: "
        f"claim and mark in flight, settle, take a rate slot) and all commands Redis ran "
        f"(those inside scripts included). The runs take turns, {ctx.rounds_text}.",
        "",
        "| run | rows/s (wall) | / one send | workers' CPU µs/row | Redis CPU µs/row "
        "| scripts/row | Redis commands/row |",
        "|---|---|---|---|---|---|---|",
        f"| `sms-blaster send`, journal on, window {window} | {median_range(send_wall)} "
        "| 1.00 | | | | |",
    ]
    for variant in variants:
        count, each = variant
        lines.append(
            f"| {count} worker{'s' if count > 1 else ''}, window {each} "
            f"| {median_range(speed[variant])} | {ratio(vs_send[variant])} "
            f"| {median_range(cpu_us[variant])} | {median_range(redis_us[variant], 1)} "
            f"| {median_range(scripts[variant], 2)} | {median_range(commands[variant], 1)} |"
        )
    enqueue_rate = [rows / s for s in enqueue_s]
    lines += [
        "",
        f"`sms-blaster send` by its own clock (without start-up): {median_range(send_own)} "
        f"rows/s. `sms-blaster enqueue` of the {rows:,} rows (read, validate, prepare, add to "
        f"the stream): {median_range(enqueue_s, 2)} s wall, {median_range(enqueue_rate)} "
        f"rows/s ({len(enqueue_s)} runs). One worker on a campaign of one row takes "
        f"{median_range(fixed_s, 2)} s wall: start-up (interpreter, imports, {window} + 8 Redis "
        "connections opened and the scripts loaded) and the drain, where idle window places "
        "wait up to 0.5 s on a blocking XREAD before they see the campaign settled; it is part "
        "of every run above.",
        "",
        "Commands: "
        + shown(enqueue_argv(server, campaign), **{server.url: "REDIS", str(campaign): "rows.csv"})
        + ", then N of "
        + shown(argv, **{server.url: "REDIS", web.url: "URL"}).replace("--window 8", "--window W")
        + "; reference: "
        + shown(
            reference,
            **{web.url: "URL", str(campaign): "rows.csv", reference[-1]: "fresh.journal"},
        ),
    ]
    checks = [
        Check(
            f"{count} worker{'s' if count > 1 else ''}, window {each}: "
            f"{statistics.median(speed[(count, each)]):,.0f} rows/s, "
            f"{statistics.median(vs_send[(count, each)]):.2f} x one `send`",
            "none (reference)",
            None,
        )
        for count, each in variants
    ]
    return Section(name="distributed throughput", lines=lines, checks=checks)


# -- limiter accuracy ----------------------------------------------------------------------------


def distributed_limit(ctx: Context) -> Section:
    seconds = 2.0 if ctx.quick else 5.0
    window, latency_ms = 32, 5.0
    campaigns = {
        rate: write_campaign(ctx.folder / f"limit-{rate}.csv", int(rate * seconds))
        for rate in LIMIT_RATES
    }
    achieved: dict[int, list[float]] = {rate: [] for rate in LIMIT_RATES}
    peaks: dict[int, list[float]] = {rate: [] for rate in LIMIT_RATES}
    scripts: dict[int, list[float]] = {rate: [] for rate in LIMIT_RATES}
    with simulator("--latency-ms", f"{latency_ms:g}") as sim, redis_server() as server:
        for _ in range(ctx.rounds):
            for rate in LIMIT_RATES:
                rows = int(rate * seconds)
                server.flush()
                enqueue(server, campaigns[rate])
                sim.reset()
                argv = worker_argv(
                    server, sim.url, "--rate", str(rate), "--window", str(window), "--no-adaptive"
                )
                calls_before = server.script_calls()
                workers = run_workers(argv, LIMIT_WORKERS, ctx.folder, seconds * 10 + 60)
                arrivals = sim.stats()["arrivals"]
                assert isinstance(arrivals, dict)
                if workers.sent != rows or arrivals["count"] != rows:
                    raise RuntimeError(
                        f"{rows:,} rows: the workers sent {workers.sent:,}, the simulator "
                        f"counted {arrivals['count']:,} requests"
                    )
                achieved[rate].append((arrivals["count"] - 1) / arrivals["span_s"] / rate)
                peaks[rate].append(arrivals["peak_1s"] / rate)
                scripts[rate].append((server.script_calls() - calls_before) / rows)
    lines = [
        "## Distributed: limiter accuracy",
        "",
        f"{LIMIT_WORKERS} `sms-blaster worker` processes on one campaign share `--rate R "
        "--no-adaptive` (told the rate) "
        f"(one GCRA limit in Redis), each `--window {window}`, against the simulator in its own "
        f"process answering after {latency_ms:g} ms; about {seconds:g} s of rows per rate "
        "(R times that). Counted by the simulator as requests arrive: achieved = (arrivals - 1) / "
        "span; peak = most arrivals in any sliding 1 s window, the first second included. "
        f"Every run checked: each row sent once (the workers' tallies and the simulator's "
        f"count). Scripts/row: Lua script calls (`EVALSHA`) a row, from the workers' start to "
        f"their exit. {ctx.rounds_text}.",
        "",
        "| R /s | rows | achieved / R | peak 1 s / R | scripts/row |",
        "|---|---|---|---|---|",
    ]
    checks = []
    for rate in LIMIT_RATES:
        lines.append(
            f"| {rate:,} | {int(rate * seconds):,} | {median_range(achieved[rate], 3)} "
            f"| {median_range(peaks[rate], 3)} | {median_range(scripts[rate], 2)} |"
        )
        got, peak = statistics.median(achieved[rate]), statistics.median(peaks[rate])
        checks += [
            Check(
                f"{LIMIT_WORKERS} workers, {rate:,}/s: achieved {got:.3f} x rate",
                "≥ 0.97",
                got >= 0.97,
            ),
            Check(
                f"{LIMIT_WORKERS} workers, {rate:,}/s: sliding 1 s peak {peak:.3f} x rate "
                f"(worst round {max(peaks[rate]):.3f})",
                "≤ 1.02",
                peak <= 1.02,
            ),
        ]
    lines += [
        "",
        f"Commands: enqueue as in the throughput section, then {LIMIT_WORKERS} of "
        + shown(argv, **{server.url: "REDIS", sim.url: "URL"})
        + f"; simulator: `sms-blaster mock-provider --no-keep-messages --latency-ms "
        f"{latency_ms:g}`.",
    ]
    return Section(name="distributed limit", lines=lines, checks=checks)


# -- finding an unknown limit together -------------------------------------------------------------

UNKNOWN_LIMIT_PER_S = 300
UNKNOWN_CEILING_PER_S = 1500
_POLL_S = 0.1
_SETTLE_S = 2.0  # the start (slow start, the first throttles) is left out of the share


@dataclass(frozen=True, slots=True)
class UnknownLimitRun:
    share: float  # accepted per second after the first _SETTLE_S, over the limit
    throttled_share: float  # throttled answers over requests
    exactly_once: bool  # every row accepted once, none twice
    estimates: list[str]  # the workers' summaries: the limit they reported


def _accepted_over_time(
    sim: Simulator, processes: list[subprocess.Popen[bytes]]
) -> list[tuple[float, int]]:
    """(seconds, accepted so far) every _POLL_S while any worker runs."""
    samples: list[tuple[float, int]] = []
    while any(process.poll() is None for process in processes):
        accepted = sim.stats()["accepted"]
        assert isinstance(accepted, int)
        samples.append((time.perf_counter(), accepted))
        time.sleep(_POLL_S)
    return samples


def _share_after_start(samples: list[tuple[float, int]], rows: int, limit_per_s: float) -> float:
    """Accepted per second from _SETTLE_S after the first acceptance to the last, over the limit."""
    started = next(t for t, accepted in samples if accepted > 0)
    settled = next((t, a) for t, a in samples if t >= started + _SETTLE_S)
    ended = next(((t, a) for t, a in samples if a >= rows), samples[-1])
    return (ended[1] - settled[1]) / (ended[0] - settled[0]) / limit_per_s


def run_unknown_limit(
    server: RedisServer, sim: Simulator, argv: list[str], rows: int, folder: Path
) -> UnknownLimitRun:
    logs = [folder / f"unknown-{n}.log" for n in range(LIMIT_WORKERS)]
    processes: list[subprocess.Popen[bytes]] = []
    for log in logs:
        with log.open("wb") as err:
            processes.append(subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=err))
    try:
        samples = _accepted_over_time(sim, processes)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
    stats = sim.stats()
    recipients = stats["recipients"]
    assert isinstance(recipients, dict)
    accepted = [entry["accepted"] for entry in recipients.values()]
    requests, throttled = stats["requests"], stats["throttled"]
    assert isinstance(requests, int)
    assert isinstance(throttled, int)
    estimates = [
        match.group(1)
        for log in logs
        if (match := re.search(r"limit looked like ([\d,.]+)/s", log.read_text()))
    ]
    return UnknownLimitRun(
        _share_after_start(samples, rows, UNKNOWN_LIMIT_PER_S),
        throttled / requests,
        len(accepted) == rows and set(accepted) == {1},
        estimates,
    )


def distributed_unknown_limit(ctx: Context) -> Section:
    seconds = 10.0 if ctx.quick else 20.0
    rows = int(UNKNOWN_LIMIT_PER_S * seconds)
    window = 64
    campaign = write_campaign(ctx.folder / "unknown-limit.csv", rows)
    share: list[float] = []
    throttled: list[float] = []
    once: list[bool] = []
    estimates: list[str] = []
    options = ("--rate", str(UNKNOWN_LIMIT_PER_S))
    with simulator(*options) as sim, redis_server() as server:
        for _ in range(ctx.rounds):
            server.flush()
            enqueue(server, campaign)
            sim.reset()
            argv = worker_argv(
                server, sim.url, "--rate", str(UNKNOWN_CEILING_PER_S), "--window", str(window)
            )
            run = run_unknown_limit(server, sim, argv, rows, ctx.folder)
            share.append(run.share)
            throttled.append(run.throttled_share * 100)
            once.append(run.exactly_once)
            estimates += run.estimates
    lines = [
        "## Distributed: finding an unknown limit together",
        "",
        f"{LIMIT_WORKERS} `sms-blaster worker` processes on one campaign of {rows:,} rows "
        f"(about {seconds:g} s at the limit), each `--rate {UNKNOWN_CEILING_PER_S} --window "
        f"{window}`, against the simulator throttling above {UNKNOWN_LIMIT_PER_S}/s (its token "
        "bucket), a limit the workers are not told. Counted by the simulator, polled every "
        f"{_POLL_S:g} s: accepted per second from {_SETTLE_S:g} s after the first acceptance to "
        "the last row's, over the limit; throttled answers over requests; every row accepted "
        f"exactly once. {ctx.rounds_text}.",
        "",
        "| accepted / limit | throttled % of requests | exactly once | workers' estimates /s |",
        "|---|---|---|---|",
        f"| {median_range(share, 3)} | {median_range(throttled, 2)} | {all(once)} "
        f"| {', '.join(estimates) or 'none'} |",
        "",
        f"Commands: enqueue as in the throughput section, then {LIMIT_WORKERS} of "
        + shown(argv, **{server.url: "REDIS", sim.url: "URL"})
        + f"; simulator: `sms-blaster mock-provider --no-keep-messages {' '.join(options)}`.",
    ]
    got, worst = statistics.median(share), max(throttled)
    checks = [
        Check(f"{LIMIT_WORKERS} workers, unknown {UNKNOWN_LIMIT_PER_S}/s: {got:.3f} x the limit",
              "≥ 0.90", got >= 0.90),
        Check(f"{LIMIT_WORKERS} workers, unknown limit: worst round {worst:.2f} % throttled",
              "≤ 2 %", worst <= 2.0),
        Check(f"{LIMIT_WORKERS} workers, unknown limit: every row accepted once: {all(once)}",
              "every round", all(once)),
    ]  # fmt: skip
    return Section(name="distributed unknown limit", lines=lines, checks=checks)
