"""Latency hiding at 50 ms with large windows: `send` against a server that answers every
request after 50 ms, at windows 100, 1,000 and 5,000, beside a control: the bare loop over the
lean transport (`bare_lean.py`) at the same window, which shows whether the server and the
machine keep up at all.

The ideal is window ÷ 50 ms: 2,000, 20,000 and 100,000 rows/s. A case gets about `seconds` of
rows at the lower of the ideal and `cap_per_s` (a bound on what two cores can do, so a
CPU-bound case still ends in seconds, not minutes).
"""

from __future__ import annotations

import statistics
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


def latency_windows(ctx: Context) -> Section:
    need("nginx", Path(NGINX).exists())
    if not ECHO_MODULE.exists():
        raise Missing("nginx's echo module is not installed (benchmarks/setup.sh installs it)")
    seconds = 3.0 if ctx.quick else 10.0
    sent: dict[int, list[float]] = {w: [] for w in WINDOWS}
    control: dict[int, list[float]] = {w: [] for w in WINDOWS}
    campaigns = {
        w: write_campaign(ctx.folder / f"latency-w{w}.csv", rows_for(w, seconds)) for w in WINDOWS
    }
    # One connection a request in flight, and a few to spare.
    with nginx(LATENCY_S, connections=max(WINDOWS) + 256) as server:
        url = server.slow_url
        assert url is not None
        for _ in range(ctx.rounds):
            for w in WINDOWS:
                argv = send_argv(
                    url, campaigns[w], *FAST, "--window", str(w),
                    "--journal", str(ctx.journal("latency-windows")),
                )  # fmt: skip
                sent[w].append(send(argv, timeout_s=300).rows_per_s)
                control[w].append(clients.bare_lean(url, rows_for(w, seconds), w))
    lines = [
        "## Latency hiding at 50 ms, windows 100 to 5,000",
        "",
        "nginx with the echo module (`echo_sleep 0.05`: every answer 50 ms late, one worker, "
        f"{max(WINDOWS) + 256:,} connections); `sms-blaster send --rate 1000000 --window W` "
        "(adaptive, the default; the lean transport opens up to W connections), CSV in, journal "
        "on, records to /dev/null. The control is the bare loop over the lean transport at the "
        f"same window. About {seconds:g} s of rows at the lower of W ÷ 50 ms and "
        f"{CAP_PER_S:,.0f}/s; {ctx.rounds_text}.",
        "",
        "| window | ideal /s | rows | send rows/s | send / ideal | control /s | control / ideal "
        "| send / control |",
        "|---|---|---|---|---|---|---|---|",
    ]
    checks = []
    for w in WINDOWS:
        ideal = w / LATENCY_S
        shares = [a / ideal for a in sent[w]]
        control_shares = [c / ideal for c in control[w]]
        vs_control = [a / c for a, c in zip(sent[w], control[w], strict=True)]
        lines.append(
            f"| {w:,} | {ideal:,.0f} | {rows_for(w, seconds):,} | {median_range(sent[w])} | "
            f"{ratio(shares)} | {median_range(control[w])} | {ratio(control_shares)} | "
            f"{ratio(vs_control)} |"
        )
        share = statistics.median(shares)
        checks.append(
            Check(
                f"window {w:,}: send {share:.2f} of {ideal:,.0f}/s "
                f"(control {statistics.median(control_shares):.2f})",
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
