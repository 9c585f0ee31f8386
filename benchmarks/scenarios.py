"""The scenarios of issue 4. Each runs its competitors in the same run, taking turns, and returns
a Section: its table for RESULTS.md and its rows of the summary.
"""

from __future__ import annotations

import itertools
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import clients
from benchmarks.clients import ENV, send, send_argv, shown, write_campaign
from benchmarks.results import Check, Section, median_range, ratio
from benchmarks.servers import ECHO_MODULE, NGINX, Simulator, nginx, simulator

FAST = ("--rate", "1000000")  # no pacing: the window and the CPU set the pace


@dataclass(frozen=True, slots=True)
class Context:
    folder: Path  # temp folder for campaigns, journals, logs
    quick: bool
    rounds: int

    @property
    def rounds_text(self) -> str:
        return f"{self.rounds} round" + ("s" if self.rounds != 1 else "")

    def journal(self, label: str) -> Path:
        """A fresh journal path: a reused one would skip the rows an earlier round settled."""
        for n in range(1_000_000):
            path = self.folder / f"{label}-{n}.journal"
            if not path.exists():
                return path
        raise RuntimeError("no free journal name")


class Missing(Exception):
    """A tool the scenario needs is not installed."""


def need(tool: str, present: bool) -> None:
    if not present:
        raise Missing(f"{tool} is not installed (benchmarks/setup.sh installs it)")


# -- throughput against the simulator (the first scenarios, kept for their history) ---------------


def simulator_throughput(ctx: Context, latency_ms: float) -> Section:
    """sms-blaster with and without its journal, and a bare aiohttp loop, taking turns."""
    rows, window = (5000, 64) if ctx.quick else (40000, 64)
    campaign = write_campaign(ctx.folder / "throughput.csv", rows)
    journal_on: list[float] = []
    journal_off: list[float] = []
    bare_loop: list[float] = []
    with simulator("--latency-ms", str(latency_ms)) as sim:
        for _ in range(ctx.rounds):
            on = send_argv(
                sim.url,
                campaign,
                *FAST,
                "--window",
                str(window),
                "--journal",
                str(ctx.journal("sim")),
            )
            journal_on.append(send(on, timeout_s=300).rows_per_s)
            off = send_argv(sim.url, campaign, *FAST, "--window", str(window), "--no-journal")
            journal_off.append(send(off, timeout_s=300).rows_per_s)
            bare_loop.append(clients.bare(sim.url, rows, window))
    vs_bare = [a / b for a, b in zip(journal_on, bare_loop, strict=True)]
    on_off = [a / b for a, b in zip(journal_on, journal_off, strict=True)]
    ceiling = (
        f"; the window allows {window / latency_ms * 1000:,.0f}/s."
        if latency_ms
        else ". The Python simulator needs a core of its own here, so this is a CPU contest on 2 "
        "cores; the nginx section measures the client alone."
    )
    name = f"simulator, {latency_ms:g} ms"
    return Section(
        name=name,
        lines=[
            f"## Throughput against the simulator, {latency_ms:g} ms latency",
            "",
            f"{rows:,} rows, window {window}, the simulator (Python, aiohttp) in its own process "
            f"answering after {latency_ms:g} ms{ceiling} The clients take turns, "
            f"{ctx.rounds_text}.",
            "",
            "| client | rows/s |",
            "|---|---|",
            f"| `sms-blaster send`, journal on (CSV in, prepare, records out) | "
            f"{median_range(journal_on)} |",
            f"| `sms-blaster send --no-journal` | {median_range(journal_off)} |",
            f"| bare aiohttp loop, same concurrency | {median_range(bare_loop)} |",
            f"| journal on / bare aiohttp | {ratio(vs_bare)} |",
            f"| journal on / journal off | {ratio(on_off)} |",
            "",
            "Command: "
            + shown(on, **{sim.url: "URL", str(campaign): "rows.csv", on[-1]: "fresh.journal"}),
        ],
        checks=[
            Check(f"journal on / bare aiohttp {ratio(vs_bare)}", "none (reference)", None),
        ],
    )


def simulator_zero(ctx: Context) -> Section:
    return simulator_throughput(ctx, 0.0)


def simulator_20ms(ctx: Context) -> Section:
    return simulator_throughput(ctx, 20.0)


# -- 1. raw throughput against nginx ------------------------------------------------------------


def nginx_throughput(ctx: Context) -> Section:
    need("nginx", Path(NGINX).exists())
    need("wrk", shutil.which("wrk") is not None)
    rows, window = (5000, 64) if ctx.quick else (40000, 64)
    wrk_s, sequential_rows = (2.0, 500) if ctx.quick else (5.0, 2000)
    campaign = write_campaign(ctx.folder / "nginx.csv", rows)
    results: dict[str, list[float]] = {k: [] for k in ("on", "off", "bare", "wrk", "seq")}
    with nginx() as server:
        url = server.url
        for _ in range(ctx.rounds):
            on = send_argv(
                url,
                campaign,
                *FAST,
                "--window",
                str(window),
                "--journal",
                str(ctx.journal("nginx")),
            )
            results["on"].append(send(on, timeout_s=300).rows_per_s)
            off = send_argv(url, campaign, *FAST, "--window", str(window), "--no-journal")
            results["off"].append(send(off, timeout_s=300).rows_per_s)
            results["bare"].append(clients.bare(url, rows, window))
            results["wrk"].append(clients.wrk(url, window, wrk_s, ctx.folder))
            results["seq"].append(clients.sequential(url, sequential_rows))

    def vs_bare(key: str) -> list[float]:
        return [a / b for a, b in zip(results[key], results["bare"], strict=True)]

    on_bare = statistics.median(vs_bare("on"))
    table = [
        ("`sms-blaster send`, journal on (CSV in, prepare, records out)", "on", f"{rows:,} rows"),
        ("`sms-blaster send --no-journal`", "off", f"{rows:,} rows"),
        ("bare aiohttp loop (uvloop), same concurrency", "bare", f"{rows:,} requests"),
        ("`wrk -t1`, same connections, POST of the same form", "wrk", f"{wrk_s:g} s"),
        (
            "sequential `requests.Session` loop (what provider SDKs do)",
            "seq",
            f"{sequential_rows:,} requests",
        ),
    ]
    lines = [
        "## Raw throughput, zero latency, against nginx",
        "",
        f"Debian's nginx (one worker, its own core) answers every `POST /sms/json` with a fixed "
        f"Vonage success body, so the server costs almost nothing and the client's CPU sets the "
        f"pace. Concurrency {window} (`--window {window}`, 64 connections). The clients take "
        f"turns, {ctx.rounds_text}; ratios are taken within a round.",
        "",
        "| client | run | requests/s | / bare aiohttp |",
        "|---|---|---|---|",
    ]
    for label, key, size in table:
        lines.append(f"| {label} | {size} | {median_range(results[key])} | {ratio(vs_bare(key))} |")
    lines += [
        "",
        "Command: " + shown(on, **{url: "URL", str(campaign): "rows.csv", on[-1]: "fresh.journal"}),
    ]
    return Section(
        name="raw throughput, nginx",
        lines=lines,
        checks=[
            Check(
                f"sms-blaster / bare aiohttp {ratio(vs_bare('on'))} "
                f"({statistics.median(results['on']):,.0f} vs "
                f"{statistics.median(results['bare']):,.0f} /s)",
                "≥ 0.85",
                on_bare >= 0.85,
            )
        ],
    )


# -- 2. latency hiding ---------------------------------------------------------------------------


def latency_hiding(ctx: Context) -> Section:
    latency_s = 0.05
    windows = [10, 100, 400]
    seconds = 1.5 if ctx.quick else 4.0
    achieved: dict[int, list[float]] = {w: [] for w in windows}
    bare_loop: dict[int, list[float]] = {w: [] for w in windows}
    echo = Path(NGINX).exists() and ECHO_MODULE.exists()
    campaigns = {
        w: write_campaign(ctx.folder / f"latency-{w}.csv", rows_for(w, seconds)) for w in windows
    }
    server_cm = nginx(latency_s) if echo else simulator("--latency-ms", str(latency_s * 1000))
    with server_cm as server:
        url = server.slow_url if not isinstance(server, Simulator) else server.url
        assert url is not None
        for _ in range(ctx.rounds):
            for w in windows:
                argv = send_argv(
                    url,
                    campaigns[w],
                    *FAST,
                    "--window",
                    str(w),
                    "--journal",
                    str(ctx.journal("latency")),
                )
                achieved[w].append(send(argv, timeout_s=300).rows_per_s)
                bare_loop[w].append(clients.bare(url, rows_for(w, seconds), w))
    server_text = (
        "nginx with the echo module (`echo_sleep 0.05`: every answer 50 ms late)"
        if echo
        else "the simulator with `--latency-ms 50` (nginx's echo module is not installed)"
    )
    lines = [
        "## Latency hiding, 50 ms",
        "",
        f"{server_text}; `sms-blaster send --rate 1000000 --window W` (adaptive, the default). "
        f"About {seconds:g} s of rows at the ideal rate W ÷ 50 ms; {ctx.rounds_text}.",
        "",
        "| window | ideal /s | sms-blaster rows/s | share of ideal | bare aiohttp /s | share "
        "| sms-blaster / bare |",
        "|---|---|---|---|---|---|---|",
    ]
    checks = []
    for w in windows:
        ideal = w / latency_s
        shares = [a / ideal for a in achieved[w]]
        bare_shares = [b / ideal for b in bare_loop[w]]
        vs_bare = [a / b for a, b in zip(achieved[w], bare_loop[w], strict=True)]
        lines.append(
            f"| {w} | {ideal:,.0f} | {median_range(achieved[w])} | {ratio(shares)} | "
            f"{median_range(bare_loop[w])} | {ratio(bare_shares)} | {ratio(vs_bare)} |"
        )
        share = statistics.median(shares)
        target = "≥ 0.95" if w <= 100 else "none (CPU-bound above ~100)"
        checks.append(
            Check(
                f"window {w}: {share:.2f} of {ideal:,.0f}/s",
                target,
                share >= 0.95 if w <= 100 else None,
            )
        )
    return Section(name="latency hiding, 50 ms", lines=lines, checks=checks)


def rows_for(window: int, seconds: float) -> int:
    return int(window / 0.05 * seconds)


# -- 3. rate accuracy ----------------------------------------------------------------------------


def rate_accuracy(ctx: Context) -> Section:
    rates = [100, 1000, 5000]
    seconds = 2.0 if ctx.quick else 5.0
    achieved: dict[int, list[float]] = {r: [] for r in rates}
    peaks: dict[int, list[float]] = {r: [] for r in rates}
    campaigns = {r: write_campaign(ctx.folder / f"rate-{r}.csv", int(r * seconds)) for r in rates}
    with simulator() as sim:
        for _ in range(ctx.rounds):
            for rate in rates:
                sim.reset()
                argv = send_argv(
                    sim.url,
                    campaigns[rate],
                    "--rate",
                    str(rate),
                    "--window",
                    "64",
                    "--no-adaptive",  # told the rate: the pacer's accuracy, not a slow start
                    "--journal",
                    str(ctx.journal("rate")),
                )
                send(argv, timeout_s=seconds * 10 + 30)
                arrivals = sim.stats()["arrivals"]
                assert isinstance(arrivals, dict)
                achieved[rate].append((arrivals["count"] - 1) / arrivals["span_s"] / rate)
                peaks[rate].append(arrivals["peak_1s"] / rate)
    lines = [
        "## Rate accuracy",
        "",
        f"About {seconds:g} s per rate, `sms-blaster send --rate R --window 64 --no-adaptive` "
        "(told the rate) against the "
        "simulator, which counts requests as they arrive: achieved = (arrivals - 1) / span; "
        "peak = most arrivals in any sliding 1 s window, the first second included. "
        f"{ctx.rounds_text}.",
        "",
        "| target /s | achieved / target | peak 1 s / target |",
        "|---|---|---|",
    ]
    checks = []
    for rate in rates:
        lines.append(
            f"| {rate:,} | {median_range(achieved[rate], 3)} | {median_range(peaks[rate], 3)} |"
        )
        got, peak = statistics.median(achieved[rate]), statistics.median(peaks[rate])
        checks += [
            Check(f"{rate:,}/s: achieved {got:.3f} x rate", "≥ 0.99", got >= 0.99),
            Check(
                f"{rate:,}/s: sliding 1 s peak {peak:.3f} x rate (worst round "
                f"{max(peaks[rate]):.3f})",
                "≤ 1.02",
                peak <= 1.02,
            ),
        ]
    lines += [
        "",
        "Command: "
        + shown(
            argv,
            **{sim.url: "URL", str(campaigns[rates[-1]]): "rows.csv", argv[-1]: "fresh.journal"},
        ),
    ]
    return Section(name="rate accuracy", lines=lines, checks=checks)


# -- 4. finding the limit ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LimitRun:
    goodput_share: float  # accepted/s from second 2 to the end, as a share of the limit
    throttled_share: float  # throttled answers / requests
    per_second: list[int]  # accepted in each whole second from the first arrival
    duration_s: float


def watch(
    process: subprocess.Popen[bytes], sim: Simulator, limit: float, deadline_s: float
) -> LimitRun:
    """Poll the simulator's counts once a second while the client runs; t=0 at the first arrival."""
    stop_at = time.monotonic() + deadline_s
    while sim.stats()["requests"] == 0:  # a short fast poll only until the first request lands
        if process.poll() is not None or time.monotonic() > stop_at:
            raise RuntimeError("the client sent nothing")
        time.sleep(0.01)
    t0 = time.monotonic()
    samples: list[tuple[float, int]] = [(0.0, accepted(sim))]
    tick = 1
    while process.poll() is None:
        if time.monotonic() > stop_at:
            process.kill()
            raise RuntimeError(f"the client ran past {deadline_s:g} s")
        try:
            process.wait(timeout=max(0.0, t0 + tick - time.monotonic()))
        except subprocess.TimeoutExpired:
            samples.append((time.monotonic() - t0, accepted(sim)))
            tick += 1
    end_s = time.monotonic() - t0
    stats = sim.stats()
    samples.append((end_s, accepted(sim)))
    at_2s = interpolate(samples, 2.0)
    goodput = (samples[-1][1] - at_2s) / (end_s - 2.0) if end_s > 2.0 else 0.0
    requests, throttled = stats["requests"], stats["throttled"]
    assert isinstance(requests, int)
    assert isinstance(throttled, int)
    whole = [count for t, count in samples if abs(t - round(t)) < 0.1 and t > 0]
    per_second = [b - a for a, b in zip([samples[0][1], *whole], whole, strict=False)]
    return LimitRun(goodput / limit, throttled / requests, per_second, end_s)


def accepted(sim: Simulator) -> int:
    count = sim.stats()["accepted"]
    assert isinstance(count, int)
    return count


def interpolate(samples: list[tuple[float, int]], at_s: float) -> float:
    for (t1, c1), (t2, c2) in itertools.pairwise(samples):
        if t1 <= at_s <= t2:
            return c1 + (c2 - c1) * (at_s - t1) / (t2 - t1) if t2 > t1 else c2
    return float(samples[-1][1])


def finding_the_limit(ctx: Context) -> Section:
    limit, ceiling, window = 400, 2000, 64
    seconds = 4.0 if ctx.quick else 10.0
    rows = int(limit * seconds)
    deadline_s = seconds * 6 + 30
    campaign = write_campaign(ctx.folder / "limit.csv", rows)
    base = ("--rate", str(ceiling), "--window", str(window))
    variants: dict[str, tuple[str, ...]] = {
        "`sms-blaster send` (adaptive, the default)": base,
        "`sms-blaster send --no-adaptive --retries 50` (fixed rate)": (
            *base,
            "--no-adaptive",
            "--retries",
            "50",
        ),
        "naive: aiohttp, same window, resends at once on status 1": (),
    }
    runs: dict[str, list[LimitRun]] = {label: [] for label in variants}
    with simulator("--rate", str(limit)) as sim:
        for _ in range(ctx.rounds):
            for label, options in variants.items():
                sim.reset()
                if options:
                    argv = send_argv(
                        sim.url, campaign, *options, "--journal", str(ctx.journal("limit"))
                    )
                else:
                    argv = [
                        sys.executable,
                        "-m",
                        "benchmarks.naive_client",
                        sim.url,
                        str(rows),
                        str(window),
                        str(deadline_s),
                    ]
                with (ctx.folder / "limit.log").open("wb") as log:
                    process = subprocess.Popen(
                        argv, env=ENV, stdout=log, stderr=log, cwd=Path(__file__).parent.parent
                    )
                    try:
                        runs[label].append(watch(process, sim, limit, deadline_s))
                    finally:
                        if process.poll() is None:
                            process.kill()
                        process.wait()
    lines = [
        "## Finding the limit",
        "",
        f"The simulator throttles above {limit}/s (status 1, its `--rate {limit}`); the client "
        f"is not told and has a ceiling of `--rate {ceiling}`, `--window {window}`. {rows:,} rows "
        f"(about {seconds:g} s at the limit); {ctx.rounds_text}. Goodput = messages accepted "
        "per second from second 2 to the end (t = 0 at the first request; the simulator's count "
        "polled once a second), as a share of the limit. Throttled = throttled answers / all "
        "requests, both counted by the simulator.",
        "",
        "| client | goodput / limit | throttled / requests | run s "
        "| accepted per second (last round) |",
        "|---|---|---|---|---|",
    ]
    for label, results in runs.items():
        per_second = ", ".join(str(n) for n in results[-1].per_second[:14])
        more = ", …" if len(results[-1].per_second) > 14 else ""
        lines.append(
            f"| {label} | {ratio([r.goodput_share for r in results])} | "
            f"{median_range([r.throttled_share for r in results], 3)} | "
            f"{median_range([r.duration_s for r in results], 1)} | {per_second}{more} |"
        )
    adaptive = runs[next(iter(variants))]
    goodput = statistics.median(r.goodput_share for r in adaptive)
    throttled = statistics.median(r.throttled_share for r in adaptive)
    return Section(
        name="finding the limit",
        lines=lines,
        checks=[
            Check(f"adaptive goodput {goodput:.3f} x limit after 2 s", "≥ 0.95", goodput >= 0.95),
            Check(f"adaptive throttled {throttled:.2%} of requests", "≤ 2 %", throttled <= 0.02),
        ],
    )


# -- 5. memory -----------------------------------------------------------------------------------


def memory(ctx: Context) -> Section:
    need("nginx", Path(NGINX).exists())
    need("GNU time", Path(clients.TIME).exists())
    sizes = [10_000, 100_000] if ctx.quick else [100_000, 1_000_000]
    timeout_s = 600.0
    peaks: dict[int, float | None] = {}
    speeds: dict[int, float] = {}
    journal_mb: dict[int, float] = {}
    with nginx() as server:
        for size in sizes:
            campaign = write_campaign(ctx.folder / f"memory-{size}.csv", size)
            journal = ctx.journal(f"memory-{size}")
            argv = send_argv(
                server.url, campaign, *FAST, "--window", "64", "--journal", str(journal)
            )
            try:
                run = send(argv, timeout_s, rss_file=ctx.folder / f"memory-{size}.rss")
            except subprocess.TimeoutExpired:
                peaks[size] = None
                continue
            assert run.peak_rss_kb is not None
            peaks[size] = run.peak_rss_kb / 1024
            speeds[size] = run.rows_per_s
            journal_mb[size] = journal.stat().st_size / 1e6
            campaign.unlink()
    small, large = sizes
    lines = [
        "## Memory",
        "",
        "Peak resident set of the `sms-blaster send` process (GNU `time -f %M`), zero latency "
        "against nginx, journal on, records to /dev/null, window 64; one round per size (the "
        f"1M run takes minutes; it is bounded at {timeout_s:.0f} s).",
        "",
        "| rows | peak RSS MB | rows/s | journal MB |",
        "|---|---|---|---|",
    ]
    for size in sizes:
        peak = peaks[size]
        if peak is None:
            lines.append(f"| {size:,} | timed out after {timeout_s:.0f} s | | |")
        else:
            lines.append(
                f"| {size:,} | {peak:.1f} | {speeds[size]:,.0f} | {journal_mb[size]:.0f} |"
            )
    lines += [
        "",
        "Command: "
        + shown(
            argv, **{server.url: "URL", str(campaign): "rows.csv", str(journal): "fresh.journal"}
        ),
    ]
    peak_small, peak_large = peaks[small], peaks[large]
    if peak_small is None or peak_large is None:
        checks = [Check(f"{large:,} rows: timed out after {timeout_s:.0f} s", "≤ 100 MB", False)]
    else:
        growth = peak_large - peak_small
        checks = [
            Check(f"peak RSS {peak_large:.1f} MB at {large:,} rows", "≤ 100 MB", peak_large <= 100),
            Check(f"growth {small:,} → {large:,}: {growth:+.1f} MB", "≤ 10 MB", growth <= 10),
        ]
    return Section(name="memory", lines=lines, checks=checks)


# -- 6. start-up ---------------------------------------------------------------------------------


def startup(ctx: Context) -> Section:
    runs = 10
    helps = [clients.startup_s(runs) for _ in range(ctx.rounds)]
    floor = []
    for _ in range(ctx.rounds):
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], check=True, timeout=30)
            times.append(time.perf_counter() - started)
        floor.append(statistics.median(times))
    imports = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import sms_blaster.cli"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stderr
    heaviest = heaviest_imports(imports, 5)
    median_s = statistics.median(helps)
    return Section(
        name="start-up",
        lines=[
            "## Start-up",
            "",
            f"Wall time of `sms-blaster --help` (a new process each time), median of {runs} runs, "
            f"{ctx.rounds_text}; the interpreter alone (`python -c pass`) for reference.",
            "",
            "| command | seconds |",
            "|---|---|",
            f"| `sms-blaster --help` | {median_range([h * 1000 for h in helps])} ms |",
            f"| `python -c pass` | {median_range([f * 1000 for f in floor])} ms |",
            "",
            "Heaviest imports of `sms_blaster.cli` (`python -X importtime`, cumulative): "
            + ", ".join(heaviest)
            + ".",
        ],
        checks=[Check(f"`sms-blaster --help` {median_s:.3f} s", "≤ 0.25 s", median_s <= 0.25)],
    )


def heaviest_imports(report: str, count: int) -> list[str]:
    """The packages outside sms_blaster that took longest to import, from `-X importtime`."""
    totals: dict[str, int] = {}
    for line in report.splitlines():
        parts = line.split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        package = parts[2].strip().split(".")[0]
        if package not in ("sms_blaster", "site") and not package.startswith("_"):
            totals[package] = max(totals.get(package, 0), int(parts[1]))
    top = sorted(totals.items(), key=lambda item: -item[1])[:count]
    return [f"{name} {us / 1000:.0f} ms" for name, us in top]
