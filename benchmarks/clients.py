"""The competitors, each run as its own process: sms-blaster, a bare aiohttp loop, wrk, a
sequential requests.Session loop and a naive resend-at-once client. Every run is bounded in time.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.servers import INSTALLED, Cli

HERE = Path(__file__).parent
MAGIC = range(9990, 9999)  # the simulator's magic suffixes: keep them out of benchmark data
CREDENTIALS = {"VONAGE_API_KEY": "bench-key", "VONAGE_API_SECRET": "bench-secret"}
ENV = {**os.environ, **CREDENTIALS}
TEXT = "Hello {name}, a benchmark message."
TIME = "/usr/bin/time"


def write_campaign(path: Path, rows: int) -> Path:
    """A CSV of `rows` distinct valid UK mobile numbers, none with a magic suffix."""
    with path.open("w") as out:
        out.write("to,name\n")
        n = written = 0
        while written < rows:
            n += 1
            if n % 10000 in MAGIC:
                continue
            out.write(f"+4474{n:08d},Name{n}\n")
            written += 1
    return path


def send_argv(url: str, campaign: Path, *options: str, cli: Cli = INSTALLED) -> list[str]:
    return [
        *cli.program, "send", str(campaign), "--base-url", url, "--from", "Bench", "--no-progress",
        "--text", TEXT, "--output", os.devnull, *options,
    ]  # fmt: skip


def shown(argv: list[str], **names: str) -> str:
    """A command line for the report: the temp paths and ports replaced by readable names."""
    words = [Path(argv[0]).name, *argv[1:]]
    text = " ".join(f"'{w}'" if " " in w else w for w in words)
    for value, name in names.items():
        text = text.replace(value, name)
    return f"`{text}`"


@dataclass(frozen=True, slots=True)
class SendRun:
    elapsed_s: float  # wall time of the process
    summary: str  # what it printed on stderr
    peak_rss_kb: int | None = None

    @property
    def counts(self) -> dict[str, int]:
        """The summary's rows, sent, failed, unknown and skipped."""
        match = re.search(
            r"([\d,]+) rows in [\d.]+ s: ([\d,]+) sent, ([\d,]+) failed, ([\d,]+) unknown, "
            r"([\d,]+) skipped",
            self.summary,
        )
        if not match:
            raise RuntimeError(f"no summary line in: {self.summary}")
        names = ("rows", "sent", "failed", "unknown", "skipped")
        return {
            name: int(value.replace(",", ""))
            for name, value in zip(names, match.groups(), strict=True)
        }

    @property
    def rows_per_s(self) -> float:
        """Rows per second from the summary line (the run's own clock, without start-up)."""
        match = re.search(r"([\d,]+) rows in ([\d.]+) s", self.summary)
        if not match:
            raise RuntimeError(f"no summary line in: {self.summary}")
        return int(match.group(1).replace(",", "")) / float(match.group(2))


def send(
    argv: list[str],
    timeout_s: float,
    rss_file: Path | None = None,
    cli: Cli = INSTALLED,
    *,
    all_sent: bool = True,
) -> SendRun:
    """Run `sms-blaster send` (`argv` from `send_argv` with the same `cli`); exit 1 (some rows
    failed) is a result, anything else an error. With `all_sent`, a run that did not send every
    row is an error too: a figure of rows that went another way (refused, unknown) measures
    another path than the one it is quoted for.

    With `rss_file`, GNU time writes the process's peak resident set there (kB) and it is read.
    """
    wrapper = [TIME, "-f", "%M", "-o", str(rss_file)] if rss_file else []
    started = time.perf_counter()
    done = subprocess.run(
        [*wrapper, *argv],
        env={**(os.environ if cli.env is None else cli.env), **CREDENTIALS},
        cwd=cli.cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout_s,
    )
    elapsed = time.perf_counter() - started
    if done.returncode not in (0, 1):
        raise RuntimeError(f"send exited {done.returncode}: {done.stderr}")
    rss = int(rss_file.read_text().split()[-1]) if rss_file else None
    run = SendRun(elapsed, done.stderr, rss)
    if all_sent and run.counts["sent"] != run.counts["rows"]:
        raise RuntimeError(f"not every row was sent: {done.stderr}")
    return run


def _module(name: str, *args: str, timeout_s: float) -> str:
    done = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", *args],
        capture_output=True, text=True, check=True, cwd=HERE.parent, timeout=timeout_s,
    )  # fmt: skip
    return done.stdout


def bare(url: str, rows: int, concurrency: int, timeout_s: float = 300) -> float:
    """Requests/s of the bare aiohttp loop."""
    return float(_module("bare_aiohttp", url, str(rows), str(concurrency), timeout_s=timeout_s))


def bare_lean(url: str, rows: int, concurrency: int, timeout_s: float = 300) -> float:
    """Requests/s of the same loop over the lean transport."""
    return float(_module("bare_lean", url, str(rows), str(concurrency), timeout_s=timeout_s))


def sequential(url: str, rows: int, timeout_s: float = 120) -> float:
    """Requests/s of one requests.Session posting one message after another."""
    return float(_module("sequential_requests", url, str(rows), timeout_s=timeout_s))


def naive(url: str, rows: int, window: int, deadline_s: float) -> dict[str, float]:
    """The resend-at-once client; its own tally."""
    out = _module("naive_client", url, str(rows), str(window), str(deadline_s),
                  timeout_s=deadline_s + 30)  # fmt: skip
    tally: dict[str, float] = json.loads(out)
    return tally


WRK_SCRIPT = """\
wrk.method = "POST"
wrk.body = "from=Bench&to=447400000001&client-ref=w-1&text=Hello+Name1%2C+a+benchmark+message."
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Basic {token}"
"""


def wrk(url: str, connections: int, duration_s: float, folder: Path) -> float:
    """Requests/s of wrk posting the same form body, one thread (one core, like the others)."""
    script = folder / "post.lua"
    token = base64.b64encode(b"bench-key:bench-secret").decode()
    script.write_text(WRK_SCRIPT.format(token=token))
    executable = shutil.which("wrk") or "wrk"
    argv = [executable, "-t1", f"-c{connections}", f"-d{duration_s:g}s", "-s", str(script),
            url + "/sms/json"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=duration_s + 30)
    match = re.search(r"Requests/sec:\s+([\d.]+)", done.stdout)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: .*", done.stdout)
    if not match or errors:
        raise RuntimeError(f"wrk: {done.stdout}")
    return float(match.group(1))


def startup_s(runs: int, cli: Cli = INSTALLED) -> float:
    """Median wall time of `sms-blaster --help` over `runs` runs."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(
            cli.argv("--help"),
            env=cli.env,
            cwd=cli.cwd,
            capture_output=True,
            check=True,
            timeout=30,
        )
        times.append(time.perf_counter() - started)
    return statistics.median(times)
