"""The sending process's CPU a row, its event loop's thread apart, on two git revisions.

Usage: python -m benchmarks.loop_cpu REV_A REV_B [--rows N] [--rounds N]

`send` to zero-latency nginx (window 64, `--rate 1000000`, records to /dev/null), journal on
and `--no-journal`, A then B within each round. Each revision runs from a detached checkout, as
`benchmarks.compare` does; the process reports at exit its event loop's thread's own CPU time
(the main thread's, `RUSAGE_THREAD`) and the whole process's (`RUSAGE_SELF`: every thread, not the
preparing child), so a change that moves work to another thread shows where it went. CPU time,
not wall time: the machine is shared, and another process's load lengthens the wall time of both
sides alike but the CPU of neither.

Prints a Markdown table on stdout: µs a row, median of the rounds (range), and rows/s.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from benchmarks.clients import CREDENTIALS, SendRun, send_argv, write_campaign
from benchmarks.compare import FAST, WINDOW
from benchmarks.compare import checkout as compare_checkout
from benchmarks.results import median_range
from benchmarks.servers import Cli, nginx

# Runs the CLI as `python -m sms_blaster` does, and writes the CPU figures to a file at exit.
_WRAPPER = """
import atexit, os, resource, runpy, sys

def report():
    thread = resource.getrusage(resource.RUSAGE_THREAD)
    process = resource.getrusage(resource.RUSAGE_SELF)
    with open(os.environ["LOOP_CPU_FILE"], "w") as out:
        out.write(f"{os.getpid()} {thread.ru_utime + thread.ru_stime} "
                  f"{process.ru_utime + process.ru_stime}")

atexit.register(report)
sys.argv[0] = "sms-blaster"
runpy.run_module("sms_blaster", run_name="__main__", alter_sys=True)
"""


@dataclass(frozen=True, slots=True)
class Run:
    loop_us: float  # the event loop's thread's CPU a row
    process_us: float  # the whole process's CPU a row
    rows_per_s: float  # the run's own figure (its summary line)


@contextlib.contextmanager
def checkout(name: str, folder: Path) -> Iterator[tuple[str, Cli]]:
    """`compare`'s checkout of revision `name`, run through the wrapper that reports CPU."""
    with compare_checkout(name, folder) as (commit, cli):
        yield commit, Cli((sys.executable, "-c", _WRAPPER), cli.env, cli.cwd)


def run(cli: Cli, argv: list[str], rows: int, scratch: Path) -> Run:
    figures = scratch / "cpu"
    assert cli.env is not None
    done = subprocess.run(
        argv, env={**cli.env, **CREDENTIALS, "LOOP_CPU_FILE": str(figures)}, cwd=cli.cwd,
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    if done.returncode not in (0, 1):
        raise RuntimeError(f"send exited {done.returncode}: {done.stderr}")
    _, loop_s, process_s = figures.read_text().split()
    rows_per_s = SendRun(0.0, done.stderr).rows_per_s
    return Run(float(loop_s) / rows * 1e6, float(process_s) / rows * 1e6, rows_per_s)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("rev_a", metavar="REV_A")
    parser.add_argument("rev_b", metavar="REV_B")
    parser.add_argument("--rows", type=int, default=40_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="loop-cpu-") as name,
        nginx() as server,
        checkout(args.rev_a, Path(name) / "a") as (commit_a, cli_a),
        checkout(args.rev_b, Path(name) / "b") as (commit_b, cli_b),
    ):
        folder = Path(name)
        campaign = write_campaign(folder / "rows.csv", args.rows)
        sides = {"A": cli_a, "B": cli_b}
        modes = {"journal on": ("--journal",), "--no-journal": ("--no-journal",)}
        runs: dict[tuple[str, str], list[Run]] = {}
        for n in range(1, args.rounds + 1):
            for mode, options in modes.items():
                for label, cli in sides.items():
                    with tempfile.TemporaryDirectory(dir=folder) as scratch:
                        extra = (
                            (*options, f"{scratch}/journal") if mode == "journal on" else options
                        )
                        argv = send_argv(server.url, campaign, *FAST, *WINDOW, *extra, cli=cli)
                        got = run(cli, argv, args.rows, Path(scratch))
                    runs.setdefault((mode, label), []).append(got)
                    print(f"loop_cpu: round {n}, {mode}, {label}: {got}", file=sys.stderr)
    print(f"{args.rows:,} rows, {args.rounds} rounds, A `{commit_a}` B `{commit_b}`, "
          f"{os.cpu_count()} cores; µs a row: median (range)")  # fmt: skip
    print()
    print("| run | loop thread A | loop thread B | process A | process B | rows/s A | rows/s B |")
    print("|---|---|---|---|---|---|---|")
    for mode in modes:
        a, b = runs[(mode, "A")], runs[(mode, "B")]
        cells = [
            median_range([r.loop_us for r in a], 1), median_range([r.loop_us for r in b], 1),
            median_range([r.process_us for r in a], 1), median_range([r.process_us for r in b], 1),
            median_range([r.rows_per_s for r in a]), median_range([r.rows_per_s for r in b]),
        ]  # fmt: skip
        print(f"| {mode} | {' | '.join(cells)} |")
    ratios = [
        y.loop_us / x.loop_us
        for x, y in zip(runs[("journal on", "A")], runs[("journal on", "B")], strict=True)
    ]
    print(f"\njournal on, loop thread B/A: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
