"""Runs one schedule: the simulator in this process, `sms-blaster send` as real processes, faults
and stops triggered by progress (accepted messages or records so far), never by sleeping.

Progress is polled every few milliseconds with a deadline; a run that outlives its deadline is
killed and reported `hung`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp

from sms_blaster.simulator import CONFIG_PATH, RunningSimulator, SimulatorConfig, start_simulator
from tests.soak.invariants import Observation, RunObservation, Violation, check, secret_forms
from tests.soak.schedule import JOURNAL_FULL, Schedule, Trigger, make_schedule

POLL_S: Final = 0.005
RUN_DEADLINE_S: Final = 120.0
API_KEY: Final = "soakkey"
SENDER: Final = "Shop"
# Nothing listens here: Twilio sends name a StatusCallback only so the client ref reaches the
# simulator's stats.
TWILIO_CALLBACK: Final = "http://127.0.0.1:9/webhooks/twilio/status"
SIGNALS: Final = {
    "sigkill": signal.SIGKILL,
    "sigterm": signal.SIGTERM,
    "sigint2": signal.SIGINT,
    "sighup": signal.SIGHUP,
}


@dataclass(frozen=True, slots=True)
class Outcome:
    """One schedule's result: its violations and what happened, for the table."""

    seed: int
    rows: int
    runs: int
    stops: Counter[str]  # kinds that fired
    faults: Counter[str]  # static faults once a schedule, events once a run they started in
    violations: tuple[Violation, ...]
    peak_rss_kb: int = 0  # the most any of its runs took


@dataclass(slots=True)
class Credentials:
    secret: str
    account_sid: str
    auth_token: str

    def env(self) -> dict[str, str]:
        return {
            "VONAGE_API_KEY": API_KEY,
            "VONAGE_API_SECRET": self.secret,
            "TWILIO_ACCOUNT_SID": self.account_sid,
            "TWILIO_AUTH_TOKEN": self.auth_token,
        }

    def leak_forms(self) -> list[str]:
        return secret_forms([(API_KEY, self.secret), (self.account_sid, self.auth_token)])


class Provider:
    """The simulator across stops and restarts on one port, and every message it accepted."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.port = 0
        self.running: RunningSimulator | None = None
        self.accepted_before: list[dict[str, Any]] = []  # by instances stopped earlier
        self.taken: set[str] = set()  # ids of messages already handed out

    async def start(self) -> None:
        self.running = await start_simulator(self.config, port=self.port)
        self.port = int(self.running.url.rsplit(":", 1)[1])

    async def stop(self) -> None:
        if self.running is not None:
            running, self.running = self.running, None
            await running.close()
            self.accepted_before += _accepted(await running.stats())

    async def take_accepted(self) -> list[dict[str, Any]]:
        """The messages accepted since the last call (between runs: the run's)."""
        now = [] if self.running is None else _accepted(await self.running.stats())
        taken = [m for m in self.accepted_before + now if m["id"] not in self.taken]
        self.taken.update(message["id"] for message in taken)
        return taken

    async def accepted_count(self) -> int:
        count = len(self.accepted_before)
        if self.running is not None:
            count += (await self.running.stats())["accepted"]
        return count

    async def configure(self, session: aiohttp.ClientSession, **changes: Any) -> None:
        """Change the running simulator through its control endpoint (and any later restart)."""
        self.config = _replace(self.config, changes)
        if self.running is not None:
            async with session.post(self.running.url + CONFIG_PATH, json=changes) as response:
                assert response.status == 200, await response.text()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _replace(config: SimulatorConfig, changes: dict[str, Any]) -> SimulatorConfig:
    return dataclasses.replace(config, **changes)


def _accepted(stats: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {**message, "to": to}
        for to, recipient in stats["recipients"].items()
        for message in recipient.get("messages", [])
    ]


@dataclass(slots=True)
class _Run:
    """The state of one running `send` process, as the poll loop sees it."""

    process: subprocess.Popen[bytes]
    stdout_path: Path
    accepted_at_start: int
    fired: list[str] = field(default_factory=list)
    pending_undo: list[tuple[int, Trigger]] = field(default_factory=list)


def replay_command(seed: int) -> str:
    return f"python -m tests.soak --seed {seed}"


def _children_get_default_signals() -> None:
    """Let SIGHUP and SIGINT reach the runs as a terminal would send them.

    A signal ignored here (under nohup, or in a background job of a script) stays ignored in
    every child; one handled here is reset to its default by exec. So handle, and ignore.
    """
    for number in (signal.SIGHUP, signal.SIGINT):
        if signal.getsignal(number) is signal.SIG_IGN:
            signal.signal(number, lambda _signal, _frame: None)


async def run_schedule(schedule: Schedule, workdir: Path) -> Outcome:
    """Run `schedule` in `workdir` and check the invariants."""
    _children_get_default_signals()
    credentials = Credentials(
        secret="sec" + os.urandom(8).hex(),
        account_sid="AC" + os.urandom(16).hex(),
        auth_token=os.urandom(16).hex(),
    )
    config = SimulatorConfig(
        api_key=API_KEY,
        api_secret=credentials.secret,
        twilio_account_sid=credentials.account_sid,
        twilio_auth_token=credentials.auth_token,
        seed=schedule.seed,
        callback_retry_s=3600.0,
    )
    base_config = config
    provider = Provider(config)
    await provider.start()
    input_path = workdir / schedule.input_name
    input_path.write_text(schedule.input_text, encoding="utf-8")
    runs: list[RunObservation] = []
    accepted: list[list[dict[str, Any]]] = []
    stops: Counter[str] = Counter()
    events_fired: Counter[str] = Counter()  # runs in which each event started
    async with aiohttp.ClientSession() as session:
        try:
            if schedule.static_faults:
                await provider.configure(session, **schedule.static_faults)
            for index, faulted in enumerate(schedule.faulted_runs):
                observed = await _one_run(
                    schedule, provider, session, credentials, workdir, index, faulted.stop,
                    faulted.events, events_fired,
                )  # fmt: skip
                runs.append(observed)
                accepted.append(await provider.take_accepted())
                if observed.stop_fired:
                    stops[faulted.stop.kind] += 1
                if provider.running is None:
                    await provider.start()
                await _undo_events(provider, session, base_config, faulted.events)
            clean = {name: getattr(base_config, name) for name in schedule.static_faults}
            if clean:
                await provider.configure(session, **clean)
            final = Trigger("none", 0)
            runs.append(
                await _one_run(
                    schedule,
                    provider,
                    session,
                    credentials,
                    workdir,
                    len(runs),
                    final,
                    (),
                    events_fired,
                )
            )
            accepted.append(await provider.take_accepted())
        finally:
            await provider.stop()
    journal_path = workdir / (schedule.input_name + ".journal")
    report = await _report(journal_path, credentials)
    observation = Observation(
        seed=schedule.seed,
        rows=schedule.rows,
        retry_unknown=schedule.retry_unknown,
        runs=runs,
        journal_rows=_journal_rows(journal_path),
        journal_bytes=_journal_bytes(journal_path),
        accepted=accepted,
        report=report,
        secrets=credentials.leak_forms(),
    )
    return Outcome(
        seed=schedule.seed,
        rows=schedule.rows,
        runs=len(runs),
        stops=stops,
        faults=Counter(schedule.static_kinds) + events_fired,
        violations=tuple(check(observation)),
        peak_rss_kb=max(run.peak_rss_kb for run in runs),
    )


def child_peak_rss_kb(usage: resource.struct_rusage) -> int:
    """A reaped child's own peak RSS, or 0 when it cannot be told: the kernel carries the
    resident high-water mark across fork and exec, so a child of a big process (the test suite)
    reports at least that process's peak. Run alone, the driver is small and the figure exact."""
    inherited_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(usage.ru_maxrss) if usage.ru_maxrss > inherited_kb else 0


def _send_args(schedule: Schedule, provider: Provider, stop: Trigger) -> list[str]:
    args = [
        "send", schedule.input_name, "--base-url", provider.url, "--from", SENDER,
        "--provider", schedule.provider, "--rate", str(schedule.sender_rate_per_s),
        "--timeout", str(schedule.timeout_s), "--default-region", "GB", "--no-progress",
        "--smart-encoding", schedule.smart_encoding,
    ]  # fmt: skip
    if schedule.template is not None:
        args += ["--text", schedule.template]
    if schedule.provider == "twilio":
        args += ["--callback-url", TWILIO_CALLBACK]
    if schedule.retry_unknown:
        args.append("--retry-unknown")
    if stop.kind == "not_after":
        when = dt.datetime.now().astimezone() + dt.timedelta(seconds=stop.value)
        args += ["--not-after", when.isoformat()]
    elif stop.kind == "error_rate":
        args += ["--max-error-rate", str(stop.value)]
    elif stop.kind == "output_full":
        args += ["--output", "/dev/full"]
    return args


def _files_capped(stop: Trigger) -> Callable[[], None] | None:
    """For a `journal_full` run: in the child, no file may grow past the stop's size (Python
    ignores SIGXFSZ: the write fails, as on a full disk)."""
    if stop.kind != JOURNAL_FULL:
        return None
    size = int(stop.value)

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return cap


def _env(credentials: Credentials) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SMS_BLASTER_", "VONAGE_", "TWILIO_"))
    }
    return {**env, **credentials.env()}


async def _one_run(
    schedule: Schedule,
    provider: Provider,
    session: aiohttp.ClientSession,
    credentials: Credentials,
    workdir: Path,
    index: int,
    stop: Trigger,
    events: tuple[Trigger, ...],
    events_fired: Counter[str],
) -> RunObservation:
    args = _send_args(schedule, provider, stop)
    stdout_path = workdir / f"run{index + 1}.out"
    stderr_path = workdir / f"run{index + 1}.err"
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        # Popen, not asyncio's: the process is reaped by os.wait4, which gives its peak RSS.
        process = subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, "-m", "sms_blaster", *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            cwd=workdir,
            env=_env(credentials),
            preexec_fn=_files_capped(stop),
        )
    run = _Run(process, stdout_path, await provider.accepted_count())
    waiter = asyncio.get_running_loop().run_in_executor(None, os.wait4, process.pid, 0)
    hung = False
    try:
        async with asyncio.timeout(RUN_DEADLINE_S):
            await _drive(run, waiter, provider, session, stop, events)
            _, status, usage = await waiter
    except TimeoutError:
        hung = True
        if not waiter.done():
            process.kill()
        _, status, usage = await waiter
    code = os.waitstatus_to_exitcode(status)
    process.returncode = code  # reaped by wait4: keep Popen from waiting again
    if provider.running is None:
        await provider.start()  # the provider comes back once the run is over, at the latest
    options = ("not_after", "error_rate", "output_full", JOURNAL_FULL)
    fired = stop.kind in options or stop.kind in run.fired
    events_fired.update(kind for kind in run.fired if kind not in SIGNALS)
    return RunObservation(
        stop=stop.kind,
        stop_fired=fired,
        fatal_possible=any(event.kind in ("revoke", "unreachable") for event in events),
        code=code,
        stdout=stdout_path.read_bytes(),
        stderr=stderr_path.read_text(errors="replace"),
        peak_rss_kb=child_peak_rss_kb(usage),
        hung=hung,
        records_readable=stop.kind != "output_full",
    )


async def _drive(
    run: _Run,
    waiter: asyncio.Future[Any],
    provider: Provider,
    session: aiohttp.ClientSession,
    stop: Trigger,
    events: tuple[Trigger, ...],
) -> None:
    """Poll progress until the process ends, firing the stop and events as their points come."""
    to_fire = sorted([*events, stop] if stop.kind in SIGNALS else events, key=lambda t: t.at)
    second_sigint_at: int | None = None
    while not waiter.done():
        progress = await _progress(run, provider)
        while to_fire and to_fire[0].at <= progress and not waiter.done():
            trigger = to_fire.pop(0)
            run.fired.append(trigger.kind)
            if trigger.kind in SIGNALS:
                if not _started(run):
                    to_fire.insert(0, trigger)  # fired once the run is past its start-up
                    run.fired.pop()
                    break
                run.process.send_signal(SIGNALS[trigger.kind])
                if trigger.kind == "sigint2":
                    second_sigint_at = progress + trigger.lasts
            else:
                await _start_event(provider, session, trigger)
                run.pending_undo.append((progress + trigger.lasts, trigger))
        if second_sigint_at is not None and progress >= second_sigint_at and not waiter.done():
            run.process.send_signal(signal.SIGINT)
            second_sigint_at = None
        for item in list(run.pending_undo):
            until, trigger = item
            if trigger.lasts and progress >= until:
                run.pending_undo.remove(item)
                await _end_event(provider, session, trigger)
        await asyncio.wait({waiter}, timeout=POLL_S)


def _started(run: _Run) -> bool:
    """Whether the run holds its journal's lock: sms-blaster is past the interpreter's start-up,
    where a signal kills any Python program by default (nothing was read or sent then)."""
    pid = f"pid {run.process.pid} "
    for lock in run.stdout_path.parent.glob("*.journal.lock"):
        with contextlib.suppress(OSError):
            if lock.read_text().startswith(pid):
                return True
    return False


async def _progress(run: _Run, provider: Provider) -> int:
    """Messages accepted or records written in this run so far, whichever is more."""
    size_records = run.stdout_path.read_bytes().count(b"\n")
    accepted = await provider.accepted_count() - run.accepted_at_start
    return max(accepted, size_records)


async def _start_event(provider: Provider, session: aiohttp.ClientSession, event: Trigger) -> None:
    if event.kind == "latency_spike":
        await provider.configure(session, latency_ms=event.value)
    elif event.kind == "revoke":
        await provider.configure(session, api_secret="revoked-secret", twilio_auth_token="0" * 32)
    elif event.kind == "unreachable":
        await provider.stop()


async def _end_event(provider: Provider, session: aiohttp.ClientSession, event: Trigger) -> None:
    if event.kind == "latency_spike":
        await provider.configure(session, latency_ms=0.0)
    elif event.kind == "unreachable" and provider.running is None:
        await provider.start()


async def _undo_events(
    provider: Provider,
    session: aiohttp.ClientSession,
    base: SimulatorConfig,
    events: tuple[Trigger, ...],
) -> None:
    """Before the next run: the credentials restored, latency back to normal."""
    kinds = {event.kind for event in events}
    if "latency_spike" in kinds:
        await provider.configure(session, latency_ms=base.latency_ms)
    if "revoke" in kinds:
        await provider.configure(
            session, api_secret=base.api_secret, twilio_auth_token=base.twilio_auth_token
        )


async def _report(journal: Path, credentials: Credentials) -> dict[str, Any] | None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sms_blaster", "report", "--json", str(journal),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=_env(credentials),
    )  # fmt: skip
    stdout, _ = await process.communicate()
    try:
        value = json.loads(stdout)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _journal_bytes(journal: Path) -> bytes:
    """The journal and its WAL, shared-memory and lock files, to look for credentials in."""
    return b"".join(path.read_bytes() for path in sorted(journal.parent.glob(journal.name + "*")))


def _journal_rows(journal: Path) -> list[dict[str, Any]]:
    if not journal.exists():
        return []
    connection = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        connection.row_factory = sqlite3.Row
        query = (
            "SELECT line, state, client_ref, message_ids, error_kind, error_code FROM rows "
            "ORDER BY line"
        )
        return [dict(row) for row in connection.execute(query)]
    finally:
        connection.close()


def run_seed(seed: int, max_rows: int = 400, keep_failing: Path | None = None) -> Outcome:
    """Run the schedule of `seed` in a fresh directory, copied to `keep_failing`/seed-N on a
    violation."""
    schedule = make_schedule(seed, max_rows)
    with tempfile.TemporaryDirectory(prefix=f"soak-{seed}-") as directory:
        outcome = asyncio.run(run_schedule(schedule, Path(directory)))
        if outcome.violations and keep_failing is not None:
            shutil.copytree(directory, keep_failing / f"seed-{seed}", dirs_exist_ok=True)
    return outcome


def run_seed_in(seed: int, directory: Path, max_rows: int = 400) -> Outcome:
    """Run the schedule of `seed` in `directory`, which must be new or empty, and keep its files."""
    directory.mkdir(parents=True, exist_ok=True)
    if any(directory.iterdir()):
        raise SystemExit(f"Error: {directory} is not empty; give --keep a new directory")
    return asyncio.run(run_schedule(make_schedule(seed, max_rows), directory))
