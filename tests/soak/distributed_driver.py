"""Runs one distributed schedule: the simulator in this process, a restartable redis-server,
`sms-blaster enqueue` and rounds of `sms-blaster worker` processes. Stops and events fire at a
point of progress (messages accepted or records written in the round, polled), never after a
sleep; only a short Redis outage lasts a drawn time, as the scenario (not a synchronisation).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
import redis

from sms_blaster.simulator import SimulatorConfig
from tests.redis_helpers import RestartableRedis
from tests.soak.distributed_invariants import DistributedObservation, check_distributed
from tests.soak.distributed_schedule import (
    LEASE_S,
    REDIS_GRACE_S,
    DistributedSchedule,
    Round,
    make_distributed_schedule,
)
from tests.soak.driver import (
    API_KEY,
    POLL_S,
    SENDER,
    TWILIO_CALLBACK,
    Credentials,
    Outcome,
    Provider,
    _children_get_default_signals,
    _end_event,
    _env,
    _start_event,
    _undo_events,
    child_peak_rss_kb,
)
from tests.soak.invariants import RunObservation
from tests.soak.schedule import Trigger

CAMPAIGN: Final = "soak"
ROUND_DEADLINE_S: Final = 120.0
CLEAN_ROUNDS: Final = 4  # rounds without faults, at most, to finish the campaign
CLEAN_WORKERS: Final = 2
STARTED: Final = b"sms-blaster: worker "  # a worker's first line: connected, signals handled next
SIGNALS: Final = {
    "worker_sigkill": signal.SIGKILL,
    "worker_sigterm": signal.SIGTERM,
    "worker_sigint2": signal.SIGINT,
}


@dataclass(slots=True)
class _Process:
    """One sms-blaster process, reaped by os.wait4 (for its peak RSS)."""

    process: subprocess.Popen[bytes]
    waiter: asyncio.Future[Any]
    out_path: Path
    err_path: Path
    offset: int  # the output's size when it started: workers append
    stop: str = "none"  # what happened to it
    stop_fired: bool = False
    fatal_possible: bool = False

    @property
    def done(self) -> bool:
        return self.waiter.done()

    def started(self) -> bool:
        return STARTED in self.err_path.read_bytes()

    def records_written(self) -> int:
        with self.out_path.open("rb") as out:
            out.seek(self.offset)
            return out.read().count(b"\n")

    async def finish(self) -> RunObservation:
        """Its observation, once it ended (killed, and `hung`, if it has not): before another
        process appends to its output."""
        hung = not self.done
        if hung:
            self.process.kill()
        _, status, usage = await self.waiter
        code = os.waitstatus_to_exitcode(status)
        self.process.returncode = code  # reaped by wait4: keep Popen from waiting again
        with self.out_path.open("rb") as out:
            out.seek(self.offset)
            stdout = out.read()
        return RunObservation(
            stop=self.stop,
            stop_fired=self.stop_fired,
            fatal_possible=self.fatal_possible,
            code=code,
            stdout=stdout,
            stderr=self.err_path.read_text(errors="replace"),
            peak_rss_kb=child_peak_rss_kb(usage),
            hung=hung,
        )


def _start(args: list[str], out_path: Path, err_path: Path, credentials: Credentials) -> _Process:
    out_path.touch()
    offset = out_path.stat().st_size
    with err_path.open("wb") as err:
        # Popen, not asyncio's: the process is reaped by os.wait4, which gives its peak RSS.
        process = subprocess.Popen(
            [sys.executable, "-m", "sms_blaster", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=out_path.parent,
            env=_env(credentials),
        )
    waiter = asyncio.get_running_loop().run_in_executor(None, os.wait4, process.pid, 0)
    return _Process(process, waiter, out_path, err_path, offset)


def replay_distributed(seed: int) -> str:
    return f"python -m tests.soak --distributed --seed {seed}"


class _Soak:
    """One schedule's world: the provider, Redis, the credentials and the processes so far."""

    def __init__(self, schedule: DistributedSchedule, workdir: Path) -> None:
        self.schedule = schedule
        self.workdir = workdir
        self.credentials = Credentials(
            secret="sec" + os.urandom(8).hex(),
            account_sid="AC" + os.urandom(16).hex(),
            auth_token=os.urandom(16).hex(),
        )
        self.base_config = SimulatorConfig(
            api_key=API_KEY,
            api_secret=self.credentials.secret,
            twilio_account_sid=self.credentials.account_sid,
            twilio_auth_token=self.credentials.auth_token,
            seed=schedule.seed,
            callback_retry_s=3600.0,
        )
        self.provider = Provider(self.base_config)
        executable = shutil.which("redis-server")
        if executable is None:
            raise SystemExit("Error: redis-server is not on PATH: apt-get install redis-server")
        (workdir / "redis").mkdir()
        self.redis = RestartableRedis(executable, workdir / "redis")
        self.workers: list[_Process] = []
        self.observed: list[RunObservation] = []  # of the workers, once their round ended
        self.stops: Counter[str] = Counter()
        self.events: Counter[str] = Counter()

    def worker_args(self, slot: int) -> list[str]:
        campaign = self.schedule.campaign
        args = [
            "worker", "--redis", self.redis.url, "--campaign", CAMPAIGN,
            "--provider", campaign.provider, "--base-url", self.provider.url,
            "--rate", str(self.schedule.rate_per_s), "--window", str(self.schedule.window),
            "--timeout", str(campaign.timeout_s), "--lease", str(LEASE_S),
            "--redis-grace", str(REDIS_GRACE_S), "--no-progress",
            "--output", f"worker{slot + 1}.jsonl",
        ]  # fmt: skip
        if campaign.provider == "twilio":
            args += ["--callback-url", TWILIO_CALLBACK]
        return args

    async def enqueue(self) -> RunObservation:
        campaign = self.schedule.campaign
        (self.workdir / campaign.input_name).write_text(campaign.input_text, encoding="utf-8")
        args = [
            "enqueue", campaign.input_name, "--redis", self.redis.url, "--campaign", CAMPAIGN,
            "--from", SENDER, "--default-region", "GB", "--output", "enqueue.jsonl",
        ]  # fmt: skip
        if campaign.template is not None:
            args += ["--text", campaign.template]
        process = _start(args, self.workdir / "enqueue.jsonl", self.workdir / "enqueue.err",
                         self.credentials)  # fmt: skip
        await asyncio.wait({process.waiter}, timeout=ROUND_DEADLINE_S)
        return await process.finish()

    def start_workers(self, count: int) -> list[_Process]:
        started = []
        for slot in range(count):
            number = len(self.workers) + 1
            process = _start(
                self.worker_args(slot),
                self.workdir / f"worker{slot + 1}.jsonl",
                self.workdir / f"worker-run{number}.err",
                self.credentials,
            )
            self.workers.append(process)
            started.append(process)
        return started

    async def faulted_round(self, plan: Round, session: aiohttp.ClientSession) -> None:
        workers = self.start_workers(plan.workers)
        fatal = any(event.kind in ("revoke", "unreachable") for event in plan.events)
        for worker in workers:
            worker.fatal_possible = fatal
        if plan.stop.kind.startswith("redis"):
            for worker in workers:
                worker.stop = plan.stop.kind
        elif plan.stop.kind != "none":
            workers[plan.target].stop = plan.stop.kind
        accepted_at_start = await self.provider.accepted_count()
        to_fire = sorted(plan.events, key=lambda trigger: trigger.at)
        pending_undo: list[tuple[int, Trigger]] = []
        stop_pending = plan.stop.kind != "none"
        second_sigint_at: int | None = None
        outage: _Outage | None = None
        loop = asyncio.get_running_loop()
        deadline_s = loop.time() + ROUND_DEADLINE_S
        while not all(worker.done for worker in workers) and loop.time() < deadline_s:
            progress = max(
                await self.provider.accepted_count() - accepted_at_start,
                sum(worker.records_written() for worker in workers),
            )
            while to_fire and to_fire[0].at <= progress:
                trigger = to_fire.pop(0)
                self.events[trigger.kind] += 1
                await _start_event(self.provider, session, trigger)
                pending_undo.append((progress + trigger.lasts, trigger))
            for item in list(pending_undo):
                if item[1].lasts and progress >= item[0]:
                    pending_undo.remove(item)
                    await _end_event(self.provider, session, item[1])
            if stop_pending and progress >= plan.stop.at and _ready(plan, workers):
                stop_pending = False
                self.stops[plan.stop.kind] += 1
                if plan.stop.kind in SIGNALS:
                    target = workers[plan.target]
                    target.stop_fired = True
                    target.process.send_signal(SIGNALS[plan.stop.kind])
                    if plan.stop.kind == "worker_sigint2":
                        second_sigint_at = progress + plan.stop.lasts
                else:
                    for worker in workers:
                        worker.stop_fired = not worker.done
                    await asyncio.to_thread(self.redis.kill)
                    outage = _Outage(plan.stop.kind, plan.outage_s, loop.time())
            if second_sigint_at is not None and progress >= second_sigint_at:
                second_sigint_at = None
                target = workers[plan.target]
                if not target.done:
                    target.process.send_signal(signal.SIGINT)
            if outage is not None and outage.over(workers, loop.time()):
                outage = None
                await asyncio.to_thread(self.redis.start)
            await asyncio.wait({worker.waiter for worker in workers}, timeout=POLL_S)
        if outage is not None:
            await asyncio.to_thread(self.redis.start)
        await self._finish(workers)
        if self.provider.running is None:
            await self.provider.start()
        await _undo_events(self.provider, session, self.base_config, plan.events)

    async def clean_round(self) -> None:
        workers = self.start_workers(CLEAN_WORKERS)
        await asyncio.wait({worker.waiter for worker in workers}, timeout=ROUND_DEADLINE_S)
        await self._finish(workers)

    async def _finish(self, workers: list[_Process]) -> None:
        self.observed += [await worker.finish() for worker in workers]

    def open_rows(self) -> int:
        """Rows not yet final in Redis (queued, in flight, pending)."""
        return sum(1 for state in self.row_states().values() if state[:1] in ("q", "i", "p"))

    def row_states(self) -> dict[int, str]:
        client = redis.Redis.from_url(self.redis.url, decode_responses=True)
        try:
            states: dict[str, str] = client.hgetall(f"smsb:c:{{{CAMPAIGN}}}:rows")  # type: ignore[assignment]
            return {int(line): state for line, state in states.items()}
        finally:
            client.close()

    def refs(self) -> dict[str, int]:
        """Client ref -> line: a row's ref is the campaign's id and its line (settled rows have
        left the stream, and a row whose worker was killed may have no record)."""
        client = redis.Redis.from_url(self.redis.url, decode_responses=True)
        try:
            campaign_id: Any = client.hget(f"smsb:c:{{{CAMPAIGN}}}:meta", "campaign_id")
        finally:
            client.close()
        return {f"{campaign_id}-{line}": line for line in range(1, self.schedule.rows + 1)}

    async def report(self) -> dict[str, Any] | None:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sms_blaster", "report", "--redis", self.redis.url,
            "--campaign", CAMPAIGN, "--json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=_env(self.credentials),
        )  # fmt: skip
        stdout, _ = await process.communicate()
        try:
            value = json.loads(stdout)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def redis_bytes(self) -> bytes:
        directory = self.workdir / "redis"
        return b"".join(
            path.read_bytes() for path in sorted(directory.rglob("*")) if path.is_file()
        )


@dataclass(slots=True)
class _Outage:
    """Redis away: a short outage ends `outage_s` after the kill once every worker said it lost
    Redis (or ended), within half the grace whatever; a long one once every worker ended (past
    --redis-grace, they exit 4)."""

    kind: str
    outage_s: float
    began_s: float

    def over(self, workers: list[_Process], now_s: float) -> bool:
        if self.kind == "redis_long":
            return all(worker.done for worker in workers)
        away_s = now_s - self.began_s
        noticed = all(
            worker.done or b"Redis lost" in worker.err_path.read_bytes() for worker in workers
        )
        return away_s >= self.outage_s and (noticed or away_s >= REDIS_GRACE_S / 4)


def _ready(plan: Round, workers: list[_Process]) -> bool:
    """Whether the stop may fire: its worker (every worker, for Redis) is past start-up."""
    if plan.stop.kind in SIGNALS:
        target = workers[plan.target]
        return target.done or target.started()
    return all(worker.done or worker.started() for worker in workers)


async def run_distributed(schedule: DistributedSchedule, workdir: Path) -> Outcome:
    """Run `schedule` in `workdir` and check the invariants."""
    _children_get_default_signals()
    soak = _Soak(schedule, workdir)
    await soak.provider.start()
    await asyncio.to_thread(soak.redis.start)
    rounds = 0
    try:
        async with aiohttp.ClientSession() as session:
            enqueue = await soak.enqueue()
            campaign = schedule.campaign
            if campaign.static_faults:
                await soak.provider.configure(session, **campaign.static_faults)
            for plan in schedule.faulted_rounds:
                await soak.faulted_round(plan, session)
                rounds += 1
            clean = {name: getattr(soak.base_config, name) for name in campaign.static_faults}
            if clean:
                await soak.provider.configure(session, **clean)
            for _ in range(CLEAN_ROUNDS):
                if not soak.open_rows():
                    break
                await soak.clean_round()
                rounds += 1
        report = await soak.report()
        observation = DistributedObservation(
            seed=schedule.seed,
            rows=schedule.rows,
            enqueue=enqueue,
            workers=soak.observed,
            row_states=soak.row_states(),
            refs=soak.refs(),
            accepted=await soak.provider.take_accepted(),
            report=report,
            redis_bytes=soak.redis_bytes(),
            secrets=soak.credentials.leak_forms(),
        )
    finally:
        for worker in soak.workers:
            if not worker.done:
                worker.process.kill()
        await asyncio.to_thread(soak.redis.kill)
        await soak.provider.stop()
    runs = [observation.enqueue, *observation.workers]
    return Outcome(
        seed=schedule.seed,
        rows=schedule.rows,
        runs=rounds,
        stops=soak.stops,
        faults=Counter(campaign.static_kinds) + soak.events,
        violations=tuple(check_distributed(observation)),
        peak_rss_kb=max(run.peak_rss_kb for run in runs),
    )


def run_distributed_seed(seed: int, max_rows: int, keep_failing: Path | None = None) -> Outcome:
    """Run the distributed schedule of `seed` in a fresh directory, copied to
    `keep_failing`/seed-N on a violation."""
    schedule = make_distributed_schedule(seed, max_rows)
    with tempfile.TemporaryDirectory(prefix=f"dsoak-{seed}-") as directory:
        outcome = asyncio.run(run_distributed(schedule, Path(directory)))
        if outcome.violations and keep_failing is not None:
            shutil.copytree(directory, keep_failing / f"seed-{seed}", dirs_exist_ok=True)
    return outcome


def run_distributed_in(seed: int, directory: Path, max_rows: int) -> Outcome:
    """Run the distributed schedule of `seed` in `directory` (new or empty) and keep its files."""
    directory.mkdir(parents=True, exist_ok=True)
    if any(directory.iterdir()):
        raise SystemExit(f"Error: {directory} is not empty; give --keep a new directory")
    return asyncio.run(run_distributed(make_distributed_schedule(seed, max_rows), directory))
