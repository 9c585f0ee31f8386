"""How fast `sms-blaster receive` acknowledges delivery receipts while each one's processing takes
100 ms, beside a naive receiver that processes and stores before it answers.

Usage: python -m benchmarks.receiver_latency [--quick] [--rounds N]  ->  prints its section
(`python -m benchmarks.run --only receiver-latency` runs it and writes RESULTS.md.)

Each receiver is a process of its own on a fresh store, started for one run and stopped after it
(SIGTERM: it drains); the load is `benchmarks.receipt_load`, open loop, in a third process. After
the run the acknowledged message ids are compared with the store's: an id acknowledged and not
stored is lost.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.clients import shown
from benchmarks.results import Check, Section, median_range
from benchmarks.scenarios import Context
from benchmarks.servers import (
    REPO,
    Served,
    free_port,
    naive_receiver,
    nginx_main_config,
    python_path,
    receiver,
    run_nginx,
)

RATES = (1000, 2000)
WARMUP_S = 1.0
TARGET_P99_MS = 10.0
HOOK = ("--hook", "benchmarks.receipt_hooks:slow", "--hook-concurrency", "1000")
SMS_BLASTER = "sms-blaster receive"
NAIVE = "naive: process 100 ms, store, then answer"
FLOOR = "nginx `return 204` (the load generator's own floor)"


@dataclass(frozen=True, slots=True)
class Run:
    tally: dict[str, Any]  # receipt_load's
    stored: int | None  # receipts in the store after the receiver stopped
    lost: int | None  # acknowledged but not in the store
    processed: int | None  # stored receipts sms-blaster processed (hook, correlation) after the ack
    behind: int | None  # stored but not processed yet when the load ended
    cpu_share: float | None  # the receiver's CPU over the run, in cores
    others: float  # CPU of everything else on the machine (not receiver, not generator), cores

    def ms(self, key: str) -> float:
        value: float = self.tally["first_answer_ms"][key]
        return value


def load_argv(url: str, rate: int, seconds: float, acked_file: Path, *options: str) -> list[str]:
    count = int(rate * (WARMUP_S + seconds))
    return [
        sys.executable, "-m", "benchmarks.receipt_load", url + "/webhooks/dlr", "--rate",
        str(rate), "--count", str(count), "--warmup-s", f"{WARMUP_S:g}", "--acked-file",
        str(acked_file), *options,
    ]  # fmt: skip


def load(url: str, rate: int, seconds: float, acked_file: Path, *options: str) -> dict[str, Any]:
    """Run the load generator against `url`; its tally (the acked ids are in `acked_file`).

    `options` go to `benchmarks.receipt_load` as they are (say, a signature secret)."""
    done = subprocess.run(
        load_argv(url, rate, seconds, acked_file, *options),
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        timeout=WARMUP_S + seconds + 90,
    )
    tally: dict[str, Any] = json.loads(done.stdout)
    return tally


def store_ids(store: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(store)) as db:
        return {row[0] for row in db.execute("SELECT message_id FROM receipts")}


def processed(store: Path) -> int:
    with contextlib.closing(sqlite3.connect(store)) as db:
        count: int = db.execute("SELECT COUNT(*) FROM receipts WHERE processed = 1").fetchone()[0]
        return count


def measure(
    server: contextlib.AbstractContextManager[Served],
    store: Path,
    rate: int,
    seconds: float,
    acked_file: Path,
    *,
    processes: bool,
) -> Run:
    """One run against a receiver on a fresh `store`; the store is read once it has stopped."""
    with server as process:
        before, machine = process.cpu_s(), machine_busy_s()
        tally = load(process.url, rate, seconds, acked_file)
        used = process.cpu_s() - before
        others = max(0.0, machine_busy_s() - machine - used - tally["cpu_s"])
        behind = len(store_ids(store)) - processed(store) if processes else None
    acked = set(acked_file.read_text().split())
    ids = store_ids(store)
    done = processed(store) if processes else None
    elapsed_s = tally["elapsed_s"]
    return Run(
        tally, len(ids), len(acked - ids), done, behind, used / elapsed_s, others / elapsed_s
    )


def floor(rate: int, seconds: float, folder: Path) -> Run:
    """The same load against nginx answering 204 at once: the generator's own latency."""
    port = free_port()
    http = f"    server {{ listen 127.0.0.1:{port}; location / {{ return 204; }} }}"
    with run_nginx(folder, nginx_main_config(folder, http), port) as url:
        machine = machine_busy_s()
        tally = load(url, rate, seconds, folder / "acked")
        others = max(0.0, machine_busy_s() - machine - tally["cpu_s"])  # nginx included
    return Run(tally, None, None, None, None, None, others / tally["elapsed_s"])


def code_measured() -> str:
    """The sms_blaster code a run measured: the commit, and whether the tree had changes."""
    found = subprocess.run(
        [sys.executable, "-c", "import sms_blaster; print(sms_blaster.__path__[0])"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": python_path()},
        cwd="/",
    ).stdout.strip()
    if Path(found) != REPO / "sms_blaster":
        return f"sms_blaster from {found} (PYTHONPATH)"
    git = ["git", "-C", str(REPO)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    changed = subprocess.run(
        [*git, "status", "--porcelain", "--", "sms_blaster"], capture_output=True, text=True
    )
    dirty = " plus uncommitted changes to sms_blaster/" if changed.stdout.strip() else ""
    return f"sms_blaster at commit {head.stdout.strip()}{dirty}"


def machine_busy_s() -> float:
    """CPU seconds all cores have spent busy since boot (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as stat:
        ticks = [int(t) for t in stat.readline().split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def receiver_latency(ctx: Context) -> Section:
    seconds = 3.0 if ctx.quick else 10.0
    runs: dict[tuple[str, int], list[Run]] = {
        (label, rate): [] for label in (SMS_BLASTER, NAIVE) for rate in RATES
    }
    folder = ctx.folder
    acked = folder / "acked.txt"
    code = code_measured()  # before: the tree may change while it runs
    for _ in range(ctx.rounds):
        for rate in RATES:
            store = ctx.journal("sms-blaster-receive")
            server = receiver(store, folder, "sms-blaster", *HOOK)
            run = measure(server, store, rate, seconds, acked, processes=True)
            runs[SMS_BLASTER, rate].append(run)
            store = ctx.journal("naive-receiver")
            server = naive_receiver(store, folder, "naive")
            runs[NAIVE, rate].append(measure(server, store, rate, seconds, acked, processes=False))
    with tempfile.TemporaryDirectory(prefix="bench-nginx-") as name:
        for rate in RATES:  # one round: it measures the generator, not a receiver
            runs[FLOOR, rate] = [floor(rate, seconds, Path(name))]
    return section(runs, ctx, seconds, code)


def section(
    runs: dict[tuple[str, int], list[Run]], ctx: Context, seconds: float, code: str
) -> Section:
    lines = [
        "## Receiver: acknowledgement latency while processing takes 100 ms",
        "",
        f"Vonage delivery receipts (POST JSON, a unique `messageId` and an sms-blaster "
        f"`client-ref` each) sent open-loop at a fixed rate for {WARMUP_S:g} s of warm-up "
        f"(not counted) and {seconds:g} s measured, {ctx.rounds_text}, receivers taking turns, "
        "each on a fresh store. Latency is from each receipt's scheduled send time to its first "
        "answer, so a slow answer cannot delay the next sends and hide itself. A 503 is retried "
        "after its `Retry-After`, like the provider. The receipt's processing, 100 ms, is "
        "`benchmarks.receipt_hooks:slow` for sms-blaster (run after the ack) and the same sleep "
        "inside the naive handler (before its SQLite commit, WAL and synchronous=FULL like "
        "sms-blaster's, and its 204). Two cores: the load generator, the receiver and nginx "
        "(last rows) share them with whatever else runs on the machine (the CPU columns).",
        "",
        "| receiver | rate /s | p50 ms | p99 ms | max ms | 503s | acked / stored / lost "
        "| receiver CPU, cores | generator | other processes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    checks = []
    for (label, rate), results in runs.items():
        p50 = [r.ms("p50") for r in results]
        p99 = [r.ms("p99") for r in results]
        worst = [r.ms("max") for r in results]
        busy = sum(r.tally["statuses"].get("503", 0) for r in results)
        acked = sum(r.tally["acked_unique"] for r in results)
        if results[0].stored is None:
            counts = f"{acked:,} / n/a / n/a"
        else:
            stored = sum(r.stored or 0 for r in results)
            lost = sum(r.lost or 0 for r in results)
            counts = f"{acked:,} / {stored:,} / {lost:,}"
        cpu = [r.cpu_share for r in results if r.cpu_share is not None]
        cpu_text = median_range(cpu, 2) if cpu else "n/a"
        generator = [r.tally["cpu_s"] / r.tally["elapsed_s"] for r in results]
        others = [r.others for r in results]
        lines.append(
            f"| {label} | {rate:,} | {median_range(p50, 1)} | {median_range(p99, 1)} | "
            f"{median_range(worst, 1)} | {busy:,} | {counts} | {cpu_text} | "
            f"{median_range(generator, 2)} | {median_range(others, 2)} |"
        )
    for rate in RATES:
        ours, naive = runs[SMS_BLASTER, rate], runs[NAIVE, rate]
        p99_ms = statistics.median(r.ms("p99") for r in ours)
        naive_p99_ms = statistics.median(r.ms("p99") for r in naive)
        sent = sum(r.tally["count"] for r in ours)
        lost = sum(r.lost or 0 for r in ours)
        unacked = sum(r.tally["gave_up"] + r.tally["unanswered"] for r in ours)
        busy = sum(r.tally["statuses"].get("503", 0) for r in ours)
        checks += [
            Check(
                f"{rate:,}/s, 100 ms processing: ack p99 {p99_ms:.1f} ms "
                f"(naive {naive_p99_ms:.0f} ms)",
                f"≤ {TARGET_P99_MS:g} ms",
                p99_ms <= TARGET_P99_MS,
            ),
            Check(
                f"{rate:,}/s: {lost:,} of {sent:,} lost, {unacked:,} never acknowledged, "
                f"{busy:,} answered 503 and retried",
                "nothing lost",
                lost == 0 and unacked == 0,
            ),
        ]
    ours_runs = [r for rate in RATES for r in runs[SMS_BLASTER, rate]]
    stored = sum(r.stored or 0 for r in ours_runs)
    done = sum(r.processed or 0 for r in ours_runs)
    behind = {rate: max(r.behind or 0 for r in runs[SMS_BLASTER, rate]) for rate in RATES}
    left = {
        rate: sum((r.stored or 0) - (r.processed or 0) for r in runs[SMS_BLASTER, rate])
        for rate in RATES
    }
    lag = max(r.tally["launch_lag_ms"]["p99"] for rs in runs.values() for r in rs)
    example = load_argv("URL", RATES[-1], seconds, Path("acked.txt"))
    example[0] = "python"
    lines += [
        "",
        f"Processing after the ack (correlation, then the 100 ms hook; a receipt counts once its "
        f"hook has ended): {done:,} of the {stored:,} receipts sms-blaster stored were processed "
        "by the time it stopped (SIGTERM drains; what is left is processed at the next start: "
        + ", ".join(f"{left[rate]:,} at {rate:,}/s" for rate in RATES)
        + "); when the load ended, at most "
        + ", ".join(f"{behind[rate]:,} at {rate:,}/s" for rate in RATES)
        + " were stored and not yet processed. Lost = acknowledged 2xx but not in the store "
        "after the receiver stopped (ids compared one by one). The generator sent up to "
        f"{lag:.1f} ms late (worst p99 of its own launch lag; counted in the latency). Other "
        "processes = CPU the rest of the machine used meanwhile (other work on this shared "
        "machine; nginx itself in the last rows).",
        "",
        "Commands: `PYTHONPATH=. sms-blaster receive --store fresh.journal --port 0 "
        f"{' '.join(HOOK)}`, `python -m benchmarks.naive_receiver fresh.db URL_FILE`, and the "
        "load: " + shown(example) + f". Measured: {code}.",
    ]
    return Section(name="receiver latency", lines=lines, checks=checks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-") as folder:
        result = receiver_latency(Context(Path(folder), args.quick, args.rounds))
    print("\n".join(result.lines))


if __name__ == "__main__":
    main()
