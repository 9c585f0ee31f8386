"""Run the benchmark scenarios of issues 4 to 7 (the sender, the receiver, Twilio's segment rate,
workers on Redis) and write RESULTS.md.

Usage: python -m benchmarks.run [--quick] [--rounds N] [--only NAME ...] [--render]

Each scenario runs its competitors in the same run, taking turns (the machine is shared and
noisy: compare ratios, not absolute figures across runs). Every server is started on a free
loopback port and stopped by the script; every client is its own process. `--only` reruns some
scenarios and keeps the others' last figures (benchmarks/results.json holds them).
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks import (
    distributed,
    flow_zoo,
    https_ratio,
    journal_fsync,
    latency_windows,
    memory_tree,
    receiver_cpu,
    receiver_latency,
    receiver_scaleout,
    report_html,
    results,
    scenarios,
    sender_pool,
    twilio_rate,
)
from benchmarks.results import Check, Section
from benchmarks.scenarios import Context, Missing
from benchmarks.servers import ECHO_MODULE, NGINX

HERE = Path(__file__).parent

SCENARIOS: dict[str, Callable[[Context], Section]] = {
    "sim-zero": scenarios.simulator_zero,
    "sim-20ms": scenarios.simulator_20ms,
    "nginx": scenarios.nginx_throughput,
    "latency": scenarios.latency_hiding,
    "rate": scenarios.rate_accuracy,
    "limit": scenarios.finding_the_limit,
    "flow-zoo": flow_zoo.flow_zoo,
    "memory": scenarios.memory,
    "startup": scenarios.startup,
    "receiver-latency": receiver_latency.receiver_latency,
    "receiver-cpu": receiver_cpu.receiver_cpu,
    "receiver-scaleout": receiver_scaleout.receiver_scaleout,
    "rate-twilio": twilio_rate.rate_twilio,
    "distributed-throughput": distributed.distributed_throughput,
    "distributed-limit": distributed.distributed_limit,
    "distributed-unknown-limit": distributed.distributed_unknown_limit,
    "journal-fsync": journal_fsync.journal_fsync,
    "memory-tree": memory_tree.memory_tree,
    "latency-windows": latency_windows.latency_windows,
    "https": https_ratio.https_ratio,
    "sender-pool": sender_pool.sender_pool,
    "report-html": report_html.report_html,
}
# Scenarios that need only nginx, its echo module and GNU time, which they check themselves: run
# alone, they install nothing (setup.sh would add wrk and requests for the others).
NO_SETUP = {
    "journal-fsync", "flow-zoo", "memory-tree", "latency-windows", "https", "receiver-cpu",
    "report-html",
}  # fmt: skip


def missing_tools() -> list[str]:
    tools = {
        "nginx": Path(NGINX).exists(),
        "nginx echo module": ECHO_MODULE.exists(),
        "wrk": shutil.which("wrk") is not None,
        "GNU time": Path("/usr/bin/time").exists(),
        "requests (pip)": importlib.util.find_spec("requests") is not None,
    }
    return [name for name, present in tools.items() if not present]


def ensure_tools() -> None:
    """Run setup.sh when a tool is missing; a scenario that still lacks one reports it."""
    missing = missing_tools()
    if not missing:
        return
    print(f"benchmarks: missing {', '.join(missing)}; running benchmarks/setup.sh", flush=True)
    done = subprocess.run(["bash", str(HERE / "setup.sh"), sys.executable], check=False)
    importlib.invalidate_caches()
    if done.returncode != 0 or missing_tools():
        print(f"benchmarks: still missing {', '.join(missing_tools())}", flush=True)


def run_one(name: str, ctx: Context, command: str) -> Section:
    print(f"benchmarks: {name} ...", flush=True)
    started = time.monotonic()
    try:
        section = SCENARIOS[name](ctx)
    except Missing as exc:
        section = Section(
            name, [f"## {name}", "", f"Not run: {exc}."], [Check(f"not run: {exc}", "", False)]
        )
    section.command = command
    section.written = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    section.duration_s = time.monotonic() - started
    print(f"benchmarks: {name} took {section.duration_s:.0f} s", flush=True)
    return section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller runs, one round")
    parser.add_argument("--rounds", type=int, help="rounds per scenario (default 3; quick 1)")
    parser.add_argument(
        "--only",
        action="append",
        choices=list(SCENARIOS),
        metavar="NAME",
        help=f"run only this scenario (repeatable): {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--render",
        action="store_true",
        help="only rewrite RESULTS.md from results.json (after editing notes.md)",
    )
    args = parser.parse_args()
    if args.render:
        results.save(results.load(), list(SCENARIOS))
        return
    rounds = args.rounds or (1 if args.quick else 3)
    names = args.only or list(SCENARIOS)
    command = "python -m benchmarks.run" + (" --quick" if args.quick else "")
    command += f" --rounds {args.rounds}" if args.rounds else ""
    if not set(names) <= NO_SETUP:
        ensure_tools()
    started = time.monotonic()
    sections = results.load() if args.only else {}
    with tempfile.TemporaryDirectory(prefix="bench-") as folder:
        ctx = Context(Path(folder), args.quick, rounds)
        for name in names:
            only = f" --only {name}" if args.only else ""
            sections[name] = run_one(name, ctx, command + only)
            # Written after each scenario, so a long run that fails late keeps what it measured.
            text = results.save(sections, list(SCENARIOS))
    print(text)
    print(f"benchmarks: {len(names)} scenarios in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
