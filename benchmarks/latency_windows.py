"""Latency hiding at 50 ms with large windows: `send` against a server that answers every
request after 50 ms, at windows 100, 1,000 and 5,000, beside a control: the bare loop over the
lean transport (`bare_lean.py`) at the same window, which shows whether the server and the
machine keep up at all.

The ideal is window ÷ 50 ms: 2,000, 20,000 and 100,000 rows/s. A case gets about `seconds` of
rows at the lower of the ideal and `CAP_PER_S` (a bound on what two cores can do, so a
CPU-bound case still ends in seconds, not minutes). Each client's CPU time a row (user + system,
from the rusage of its process once waited for) says where the CPU bounds it: one core at
C µs a row allows 1,000,000 ÷ C rows/s.
"""

from __future__ import annotations

import functools
import resource
import statistics
from collections.abc import Callable
from pathlib import Path

from benchmarks import clients
from benchmarks.clients import send, send_argv, shown, write_campaign
from benchmarks.results import Check, Section, median_range, ratio
from benchmarks.scenarios import FAST, Context, Missing, need
from benchmarks.servers import ECHO_MODULE, NGINX, nginx

LATENCY_S = 0.05
WINDOWS = (100, 1000, 5000)
CAP_PER_S = 8000.0  # rows a case is sized for when the ideal is above what the CPU allows


def rows_for(window: int, seconds: float) -> int:
    return int(min(window / LATENCY_S, CAP_PER_S) * seconds)


def children_cpu_s() -> float:
    """CPU seconds used so far by the child processes this process has waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(rows: int, run: Callable[[], float]) -> tuple[float, float]:
    """`run`'s rows/s, and the CPU µs a row of the processes it started and waited for."""
    before = children_cpu_s()
    rate = run()
    return rate, (children_cpu_s() - before) / rows * 1e6


def send_rate(argv: list[str]) -> float:
    return send(argv, timeout_s=300).rows_per_s


def latency_windows(ctx: Context) -> Section:
    need("nginx", Path(NGINX).exists())
    if not ECHO_MODULE.exists():
        raise Missing("nginx's echo module is not installed (benchmarks/setup.sh installs it)")
    seconds = 3.0 if ctx.quick else 10.0
    sent: dict[int, list[float]] = {w: [] for w in WINDOWS}
    control: dict[int, list[float]] = {w: [] for w in WINDOWS}
    sent_cpu: dict[int, list[float]] = {w: [] for w in WINDOWS}  # µs a row
    control_cpu: dict[int, list[float]] = {w: [] for w in WINDOWS}
    campaigns = {
        w: write_campaign(ctx.folder / f"latency-w{w}.csv", rows_for(w, seconds)) for w in WINDOWS
    }
    # One connection a request in flight, and a few to spare.
    with nginx(LATENCY_S, connections=max(WINDOWS) + 256) as server:
        url = server.slow_url
        assert url is not None
        for _ in range(ctx.rounds):
            for w in WINDOWS:
                rows = rows_for(w, seconds)
                argv = send_argv(
                    url, campaigns[w], *FAST, "--window", str(w),
                    "--journal", str(ctx.journal("latency-windows")),
                )  # fmt: skip
                rate, cpu_us = timed(rows, functools.partial(send_rate, argv))
                sent[w].append(rate)
                sent_cpu[w].append(cpu_us)
                rate, cpu_us = timed(rows, functools.partial(clients.bare_lean, url, rows, w))
                control[w].append(rate)
                control_cpu[w].append(cpu_us)
    lines = [
        "## Latency hiding at 50 ms, windows 100 to 5,000",
        "",
        "nginx with the echo module (`echo_sleep 0.05`: every answer 50 ms late, one worker, "
        f"{max(WINDOWS) + 256:,} connections); `sms-blaster send --rate 1000000 --window W` "
        "(adaptive, the default; the lean transport opens up to W connections), CSV in, journal "
        "on, records to /dev/null. The control is the bare loop over the lean transport at the "
        f"same window. About {seconds:g} s of rows at the lower of W ÷ 50 ms and "
        f"{CAP_PER_S:,.0f}/s; {ctx.rounds_text}. CPU: µs of CPU a row (user + system, start-up "
        "included) of the client's process; one core at C µs a row allows 1,000,000 ÷ C rows/s.",
        "",
        "| window | ideal /s | rows | send rows/s | send / ideal | send CPU µs/row | control /s "
        "| control / ideal | control CPU µs/row | send / control |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    checks = []
    for w in WINDOWS:
        ideal = w / LATENCY_S
        shares = [a / ideal for a in sent[w]]
        control_shares = [c / ideal for c in control[w]]
        vs_control = [a / c for a, c in zip(sent[w], control[w], strict=True)]
        lines.append(
            f"| {w:,} | {ideal:,.0f} | {rows_for(w, seconds):,} | {median_range(sent[w])} | "
            f"{ratio(shares)} | {median_range(sent_cpu[w])} | {median_range(control[w])} | "
            f"{ratio(control_shares)} | {median_range(control_cpu[w])} | {ratio(vs_control)} |"
        )
        share = statistics.median(shares)
        cpu_bound = ideal * statistics.median(sent_cpu[w]) / 1e6  # cores the ideal would take
        checks.append(
            Check(
                f"window {w:,}: send {share:.2f} of {ideal:,.0f}/s "
                f"(control {statistics.median(control_shares):.2f}; the ideal would take "
                f"{cpu_bound:.1f} cores of send's CPU)",
                "≥ 0.95",
                share >= 0.95,
            )
        )
    lines += [
        "",
        "Command: "
        + shown(
            argv, **{url: "URL", str(campaigns[WINDOWS[-1]]): "rows.csv", argv[-1]: "fresh.journal"}
        ),
    ]
    return Section(name="latency hiding, windows to 5,000", lines=lines, checks=checks)
