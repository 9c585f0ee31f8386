"""Scale-out: `sms-blaster receive` processes behind Debian's nginx, receivers SIGKILLed under
load, and no receipt lost.

Usage: python -m benchmarks.receiver_scaleout [--count N] [--rate R] [--quick]  (prints its section)
(`python -m benchmarks.run --only receiver-scaleout` runs it and writes RESULTS.md.)

Three receivers on one store (a shared SQLite journal in WAL mode: one host), behind nginx with
benchmarks/nginx-receivers.conf: A (weight 3) and B (weight 1), C the backup. The load generator
(`benchmarks.receipt_load`) sends N unique Vonage delivery receipts at a fixed rate through
nginx and retries any non-2xx or connection error after 0.5 s, like the provider. Two runs, each
on a fresh store: A is SIGKILLed midway; then A at a third and B at two thirds, so that the
backup takes over. After each: every acknowledged receipt is in the store, the retries, and who
answered before and after each kill (nginx's log of `$upstream_addr`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.receiver_latency import code_measured
from benchmarks.results import Check, Section
from benchmarks.scenarios import Context
from benchmarks.servers import REPO, Served, free_port, nginx_main_config, receiver, run_nginx

TEMPLATE = Path(__file__).parent / "nginx-receivers.conf"
NAMES = ("A", "B", "backup")
RETRY_WAIT_S = 0.5


def nginx_http(listen_port: int, receivers: dict[str, Served], access_log: Path) -> str:
    """The template with its placeholders filled in."""
    text = TEMPLATE.read_text()
    values = {
        "@LISTEN@": f"127.0.0.1:{listen_port}",
        "@ACCESS_LOG@": str(access_log),
        "@RECEIVER_A@": address(receivers["A"].url),
        "@RECEIVER_B@": address(receivers["B"].url),
        "@RECEIVER_BACKUP@": address(receivers["backup"].url),
    }
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    return text


def address(url: str) -> str:
    return url.removeprefix("http://")


@dataclass(frozen=True, slots=True)
class Phase:
    label: str
    answered_by: Counter[str]  # requests by the receiver that answered (the last one tried)
    passed_on: int  # requests nginx passed to another receiver after one failed
    not_2xx: int  # answers the provider saw that were not 2xx
    request_ms: list[float]  # nginx's $request_time of each request, sorted


@dataclass(frozen=True, slots=True)
class ScaleoutRun:
    label: str
    count: int
    tally: dict[str, Any]  # receipt_load's
    stored: int  # distinct message ids in the store
    lost: int  # acknowledged but not in the store
    phases: list[Phase]
    unprocessed: int  # stored, never processed: left by a killed receiver
    processed_on_restart: bool  # a receiver started after the run processed them


def run_once(
    folder: Path, count: int, rate: float, kill_at: dict[str, float], label: str
) -> ScaleoutRun:
    """One run on a fresh store; `kill_at`: receiver name -> share of the run when SIGKILLed."""
    folder.mkdir()
    store = folder / "shared.journal"
    access_log = folder / "access.log"
    acked_file = folder / "acked.txt"
    kills: list[tuple[str, float]] = []
    with contextlib.ExitStack() as stack:
        receivers = {
            name: stack.enter_context(receiver(store, folder, f"receiver-{name}"))
            for name in NAMES  # one after the other: the first creates the tables
        }
        port = free_port()
        http = nginx_http(port, receivers, access_log)
        url = stack.enter_context(run_nginx(folder, nginx_main_config(folder, http), port))
        argv = [
            sys.executable, "-m", "benchmarks.receipt_load", url + "/webhooks/dlr", "--rate",
            f"{rate:g}", "--count", str(count), "--retry-wait-s", f"{RETRY_WAIT_S:g}",
            "--deadline-s", "60", "--acked-file", str(acked_file),
        ]  # fmt: skip
        duration_s = count / rate
        load = subprocess.Popen(argv, stdout=subprocess.PIPE, cwd=REPO, text=True)
        started = time.monotonic()
        for name, share in sorted(kill_at.items(), key=lambda item: item[1]):
            time.sleep(max(0.0, started + share * duration_s - time.monotonic()))
            receivers[name].process.send_signal(signal.SIGKILL)
            kills.append((name, time.time()))
        out, _ = load.communicate(timeout=duration_s + 120)
        if load.returncode != 0:
            raise RuntimeError(f"the load generator exited {load.returncode}")
        tally: dict[str, Any] = json.loads(out)
    # The receivers are stopped (SIGTERM, drained) and nginx has flushed its log.
    acked = set(acked_file.read_text().split())
    ids = message_ids(store)
    unprocessed = count_unprocessed(store)
    restarted = unprocessed == 0 or processes_leftovers(store, folder)
    ports = {address(served.url): name for name, served in receivers.items()}
    return ScaleoutRun(
        label,
        count,
        tally,
        len(ids),
        len(acked - ids),
        phases(access_log, ports, kills),
        unprocessed,
        restarted,
    )


def message_ids(store: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(store)) as db:
        return {row[0] for row in db.execute("SELECT DISTINCT message_id FROM receipts")}


def count_unprocessed(store: Path) -> int:
    with contextlib.closing(sqlite3.connect(store)) as db:
        count: int = db.execute("SELECT COUNT(*) FROM receipts WHERE processed = 0").fetchone()[0]
        return count


def processes_leftovers(store: Path, folder: Path) -> bool:
    """Start a receiver on the store: it processes what a killed one stored but did not."""
    with receiver(store, folder, "restarted"):
        deadline = time.monotonic() + 20
        while count_unprocessed(store) and time.monotonic() < deadline:
            time.sleep(0.1)
    return count_unprocessed(store) == 0


def phases(access_log: Path, ports: dict[str, str], kills: list[tuple[str, float]]) -> list[Phase]:
    """Split nginx's log at the kills: who answered, what was passed on, what was not 2xx."""
    bounds = [t for _, t in kills]
    labels = ["before the first kill"] + [f"after killing {name}" for name, _ in kills]
    answered: list[Counter[str]] = [Counter() for _ in labels]
    passed_on = [0] * len(labels)
    not_2xx = [0] * len(labels)
    request_ms: list[list[float]] = [[] for _ in labels]
    for line in access_log.read_text().splitlines():
        msec, status, rest = line.split(" ", 2)
        tried = [a.strip() for a in rest.split('"')[1].split(",")]
        index = sum(float(msec) >= t for t in bounds)
        answered[index][ports.get(tried[-1], tried[-1])] += 1
        passed_on[index] += len(tried) > 1
        not_2xx[index] += not status.startswith("2")
        request_ms[index].append(float(rest.rsplit(" ", 1)[1]) * 1000)
    return [
        Phase(label, answered[i], passed_on[i], not_2xx[i], sorted(request_ms[i]))
        for i, label in enumerate(labels)
    ]


def quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def receiver_scaleout(ctx: Context, count: int | None = None, rate: float = 1000.0) -> Section:
    count = count or (5000 if ctx.quick else 20_000)
    code = code_measured()  # before: the tree may change while it runs
    plans = {
        "A (weight 3) SIGKILLed midway": {"A": 0.5},
        "A SIGKILLed at 1/3, B at 2/3: the backup takes over": {"A": 1 / 3, "B": 2 / 3},
    }
    runs = [
        run_once(ctx.folder / f"scaleout-{n}", count, rate, kill_at, label)
        for n, (label, kill_at) in enumerate(plans.items())
    ]
    return section(runs, count, rate, code)


def section(runs: list[ScaleoutRun], count: int, rate: float, code: str) -> Section:
    lines = [
        "## Receiver scale-out behind nginx, receivers killed under load",
        "",
        f"Three `sms-blaster receive` processes on one store (a shared SQLite journal, WAL, "
        f"on this host) behind Debian's nginx with `benchmarks/nginx-receivers.conf`: A weight 3, "
        f"B weight 1, the third a `backup`; nginx passes a request that fails on one receiver "
        f"(refused, reset, timeout, 502/503) to the next, POSTs included. The load: {count:,} "
        f"unique Vonage delivery receipts (POST JSON) at {rate:,.0f}/s through nginx, each "
        f"retried {RETRY_WAIT_S:g} s after any non-2xx answer or connection error, like the "
        "provider. One shared store rather than one per receiver: a callback that reaches a "
        "second receiver (nginx passing it on after the first died mid-request, or the "
        "provider's retry) is then stored once, by the store's unique key, and campaign "
        "correlation needs the campaign's own journal anyway. Counted by nginx's access log "
        "(`$upstream_addr`, every receiver tried), split at the moments of the kills.",
        "",
        "| run | acked / sent | distinct ids stored | lost | provider retries "
        "| non-2xx seen by the provider | left unprocessed by the killed |",
        "|---|---|---|---|---|---|---|",
    ]
    checks = []
    for run in runs:
        tally = run.tally
        not_2xx = sum(n for status, n in tally["statuses"].items() if not status.startswith("2"))
        leftovers = f"{run.unprocessed:,}" + (
            " (processed when a receiver restarted)"
            if run.unprocessed and run.processed_on_restart
            else ""
        )
        lines.append(
            f"| {run.label} | {tally['acked_unique']:,} / {run.count:,} | {run.stored:,} | "
            f"{run.lost:,} | {tally['retries']:,} | {not_2xx:,} | {leftovers} |"
        )
        complete = run.lost == 0 and run.stored == run.count == tally["acked_unique"]
        checks.append(
            Check(
                f"{run.label}: {run.stored:,} of {run.count:,} stored, {run.lost:,} lost, "
                f"{tally['retries']:,} provider retries",
                "every receipt stored",
                complete and run.processed_on_restart,
            )
        )
    lines += ["", "Who answered (nginx's log), before and after each kill:", ""]
    lines += [
        "| run | phase | A | B | backup | passed on by nginx | non-2xx "
        "| nginx request time p50 / p99 / max ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        for phase in run.phases:
            by = phase.answered_by
            total = sum(by.values()) or 1
            shares = " | ".join(f"{by[name]:,} ({by[name] / total:.0%})" for name in NAMES)
            times = phase.request_ms
            lines.append(
                f"| {run.label} | {phase.label} | {shares} | {phase.passed_on:,} | "
                f"{phase.not_2xx:,} | {quantile(times, 0.5):.0f} / {quantile(times, 0.99):.0f} "
                f"/ {quantile(times, 1.0):.0f} |"
            )
    latency = runs[0].tally["ack_ms"]
    lines += [
        "",
        f"Acknowledgement through nginx (first run, from the scheduled send to the 2xx, retries "
        f"included): p50 {latency['p50']:.1f} ms, p99 {latency['p99']:.1f} ms, max "
        f"{latency['max']:.0f} ms.",
        "",
        f"Command: `python -m benchmarks.receiver_scaleout --count {count} --rate {rate:g}`"
        "; receivers: `sms-blaster receive --store shared.journal --port 0 --port-file F`. "
        f"Measured: {code}.",
    ]
    return Section(name="receiver scale-out", lines=lines, checks=checks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--quick", action="store_true", help="5,000 receipts")
    args = parser.parse_args()
    count = 5000 if args.quick else args.count
    with tempfile.TemporaryDirectory(prefix="bench-") as folder:
        result = receiver_scaleout(Context(Path(folder), args.quick, 1), count, args.rate)
    print("\n".join(result.lines))
    print("\n".join(f"- {c.measured}: {'met' if c.met else 'NOT met'}" for c in result.checks))


if __name__ == "__main__":
    main()
