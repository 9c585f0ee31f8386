"""Measure the same workloads on two git revisions of sms-blaster, in one run on one machine.

Usage: python -m benchmarks.compare REV_A REV_B [--rounds N]

Each revision is checked out with `git worktree add --detach` into a temp folder (removed at the
end) and run as `python -m sms_blaster` on that checkout with this interpreter, so nothing is
installed and only the command line is used: a revision may lay out its modules as it likes.
Within each round every workload runs on A, then on B, so the machine's noise (the machine is
shared) falls on both alike. Each revision sends to its own simulator; nginx is shared.

Prints a Markdown table on stdout (progress goes to stderr): per workload the median of A, the
median of B and B/A, the median of the per-round ratios with their range.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from benchmarks import clients
from benchmarks.clients import send, send_argv, write_campaign
from benchmarks.results import median_range
from benchmarks.servers import REPO, Cli, Simulator, nginx, simulator

FAST = ("--rate", "1000000")  # no pacing: the window and the CPU set the pace
WINDOW = ("--window", "64")
NGINX_ROWS = 20_000
SIMULATOR_ROWS = 5_000
SIMULATOR_LATENCY_MS = 20
RATE_PER_S = 1000
RATE_ROWS = 3_000  # 3 s at the rate
HELP_RUNS = 10
SEND_TIMEOUT_S = 180.0


@dataclass(frozen=True, slots=True)
class Revision:
    """One side of the comparison: a checkout and the simulators started from it."""

    label: str  # "A" or "B"
    name: str  # as given on the command line
    commit: str  # short hash
    cli: Cli
    simulator_20ms: Simulator
    simulator_zero: Simulator


@dataclass(frozen=True, slots=True)
class Metric:
    """A row of the table."""

    name: str
    unit: str
    digits: int


@dataclass(frozen=True, slots=True)
class Workload:
    """What one run measures on one revision: a figure for each of its metrics."""

    name: str
    measure: Callable[[Revision, Path], dict[Metric, float]]


NGINX_ON = Metric("`send` to nginx, 0 ms, journal on, window 64, 20,000 rows", "rows/s", 0)
NGINX_OFF = Metric("`send --no-journal` to nginx, 0 ms, window 64, 20,000 rows", "rows/s", 0)
SIMULATOR_20MS = Metric("`send` to the simulator, 20 ms, window 64, 5,000 rows", "rows/s", 0)
RATE = Metric("`send --rate 1000 --no-adaptive` to the simulator: achieved / rate", "", 3)
STARTUP = Metric("`sms-blaster --help` start-up, median of 10", "ms", 0)
NGINX_RSS = Metric("peak RSS of the `send` to nginx with journal (GNU time %M)", "MB", 1)
METRICS = [NGINX_ON, NGINX_OFF, SIMULATOR_20MS, RATE, STARTUP, NGINX_RSS]


def workloads(nginx_url: str, folder: Path) -> list[Workload]:
    """The workloads, each a bounded run of the command line; campaigns are written once."""
    big = write_campaign(folder / "nginx.csv", NGINX_ROWS)
    small = write_campaign(folder / "simulator.csv", SIMULATOR_ROWS)
    paced = write_campaign(folder / "rate.csv", RATE_ROWS)

    def nginx_journal_on(rev: Revision, scratch: Path) -> dict[Metric, float]:
        argv = send_argv(nginx_url, big, *FAST, *WINDOW, "--journal", str(scratch / "journal"),
                         cli=rev.cli)  # fmt: skip
        run = send(argv, SEND_TIMEOUT_S, rss_file=scratch / "rss", cli=rev.cli)
        assert run.peak_rss_kb is not None
        return {NGINX_ON: run.rows_per_s, NGINX_RSS: run.peak_rss_kb / 1024}

    def nginx_journal_off(rev: Revision, scratch: Path) -> dict[Metric, float]:
        argv = send_argv(nginx_url, big, *FAST, *WINDOW, "--no-journal", cli=rev.cli)
        return {NGINX_OFF: send(argv, SEND_TIMEOUT_S, cli=rev.cli).rows_per_s}

    def simulator_20ms(rev: Revision, scratch: Path) -> dict[Metric, float]:
        argv = send_argv(rev.simulator_20ms.url, small, *FAST, *WINDOW,
                         "--journal", str(scratch / "journal"), cli=rev.cli)  # fmt: skip
        return {SIMULATOR_20MS: send(argv, SEND_TIMEOUT_S, cli=rev.cli).rows_per_s}

    def rate(rev: Revision, scratch: Path) -> dict[Metric, float]:
        sim = rev.simulator_zero
        sim.reset()
        argv = send_argv(sim.url, paced, "--rate", str(RATE_PER_S), *WINDOW, "--no-adaptive",
                         "--journal", str(scratch / "journal"), cli=rev.cli)  # fmt: skip
        send(argv, SEND_TIMEOUT_S, cli=rev.cli)
        arrivals = sim.stats()["arrivals"]
        assert isinstance(arrivals, dict)
        return {RATE: (arrivals["count"] - 1) / arrivals["span_s"] / RATE_PER_S}

    def startup(rev: Revision, scratch: Path) -> dict[Metric, float]:
        return {STARTUP: clients.startup_s(HELP_RUNS, cli=rev.cli) * 1000}

    return [
        Workload("nginx, journal on", nginx_journal_on),
        Workload("nginx, journal off", nginx_journal_off),
        Workload("simulator, 20 ms", simulator_20ms),
        Workload("rate 1000/s", rate),
        Workload("start-up", startup),
    ]


# -- the pure part: figures to a table ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Figures:
    """Per metric, one figure a round for each side, in round order."""

    a: dict[Metric, list[float]]
    b: dict[Metric, list[float]]


def unit(metric: Metric) -> str:
    return f" {metric.unit}" if metric.unit else ""


def named(name: str, commit: str) -> str:
    """`main (094fe7a)`, or the commit alone when that is the name given."""
    same = commit.startswith(name) or name.startswith(commit)
    return f"`{commit}`" if same else f"{name} (`{commit}`)"


def table(figures: Figures, a: tuple[str, str], b: tuple[str, str], rounds: int) -> str:
    """The Markdown report; `a` and `b` are (name given, short commit)."""
    lines = [
        f"## Compared: A {named(*a)}, B {named(*b)}",
        "",
        f"{rounds} round{'s' if rounds != 1 else ''}, A then B for each workload within a round, "
        f"on {os.cpu_count()} cores, Python {sys.version.split()[0]}. A and B: median of the "
        "rounds; B/A: median of the per-round ratios (their range).",
        "",
        f"| workload | A: {named(*a)} | B: {named(*b)} | B/A |",
        "|---|---|---|---|",
    ]
    for metric in METRICS:
        if metric not in figures.a:
            continue
        on_a, on_b = figures.a[metric], figures.b[metric]
        ratios = [y / x for x, y in zip(on_a, on_b, strict=True)]
        lines.append(
            f"| {metric.name} | {median_range(on_a, metric.digits)}{unit(metric)} "
            f"| {median_range(on_b, metric.digits)}{unit(metric)} | {median_range(ratios, 3)} |"
        )
    lines += [
        "",
        "Higher is better for rows/s, lower for MB and ms, nearer 1 for achieved / rate. A ratio "
        "whose range spans 1.000 is within this run's noise.",
    ]
    return "\n".join(lines)


# -- the effects: checkouts, servers, runs ---------------------------------------------------------


def git(*args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False, timeout=60
    )
    if done.returncode != 0:
        raise SystemExit(f"compare: git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


@contextlib.contextmanager
def checkout(name: str, folder: Path) -> Iterator[tuple[str, Cli]]:
    """A detached worktree of revision `name` in `folder`: (short commit, how to run it)."""
    commit = git("rev-parse", "--verify", "--short", f"{name}^{{commit}}")
    git("worktree", "add", "--detach", "--quiet", str(folder), commit)
    try:
        cli = Cli.checkout(folder)
        found = subprocess.run(
            [sys.executable, "-c", "import sms_blaster; print(sms_blaster.__file__)"],
            env=cli.env, cwd=cli.cwd, capture_output=True, text=True, check=True, timeout=60,
        ).stdout.strip()  # fmt: skip
        if not Path(found).is_relative_to(folder):
            raise SystemExit(f"compare: {name} imports sms_blaster from {found}, not {folder}")
        # The first start compiles the checkout's bytecode: keep that out of the start-up figure.
        subprocess.run(cli.argv("--help"), env=cli.env, cwd=cli.cwd, capture_output=True,
                       check=True, timeout=60)  # fmt: skip
        yield commit, cli
    finally:
        git("worktree", "remove", "--force", str(folder))


@contextlib.contextmanager
def revision(label: str, name: str, folder: Path) -> Iterator[Revision]:
    """Revision `name` checked out in `folder`, with its simulators running."""
    with (
        checkout(name, folder) as (commit, cli),
        simulator("--latency-ms", str(SIMULATOR_LATENCY_MS), cli=cli) as slow,
        simulator(cli=cli) as zero,
    ):
        yield Revision(label, name, commit, cli, slow, zero)


def measure(sides: list[Revision], work: list[Workload], rounds: int, folder: Path) -> Figures:
    """Every workload on every side, round after round; A then B within a round."""
    figures: list[dict[Metric, list[float]]] = [{} for _ in sides]
    for n in range(1, rounds + 1):
        for workload in work:
            for side, into in zip(sides, figures, strict=True):
                with tempfile.TemporaryDirectory(dir=folder) as scratch:
                    started = time.monotonic()
                    got = workload.measure(side, Path(scratch))
                for metric, value in got.items():
                    into.setdefault(metric, []).append(value)
                shown = ", ".join(f"{value:,.{m.digits}f}{unit(m)}" for m, value in got.items())
                print(
                    f"compare: round {n}/{rounds}, {workload.name}, {side.label} ({side.name}): "
                    f"{shown} in {time.monotonic() - started:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
    return Figures(*figures)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("rev_a", metavar="REV_A", help="the baseline revision (any git name)")
    parser.add_argument("rev_b", metavar="REV_B", help="the revision compared with it")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="compare-") as name,
        nginx() as server,
        revision("A", args.rev_a, Path(name) / "a") as a,
        revision("B", args.rev_b, Path(name) / "b") as b,
    ):
        folder = Path(name)
        figures = measure([a, b], workloads(server.url, folder), args.rounds, folder)
    print(table(figures, (a.name, a.commit), (b.name, b.commit), args.rounds))
    print(f"compare: {time.monotonic() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
