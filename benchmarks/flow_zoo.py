"""The limiter zoo: does adaptive flow control find a provider's limit whatever shape its limiter
has? Each case is one run of the real `sms-blaster send` (journal on, `--rate` 5 x the limit,
`--window 64`) against `mock-provider --limiter SPEC`, or against nginx's `limit_req`, a limiter
that is not ours. The figures come from the server's side: the simulator's timeline of arrivals
(`GET /_simulator/timeline`) or nginx's access log, never the client's view.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from benchmarks.clients import ENV, TEXT, shown, write_campaign
from benchmarks.results import Check, Section
from benchmarks.scenarios import Context, need
from benchmarks.servers import (
    BIN,
    ECHO_MODULE,
    NGINX,
    VONAGE_OK,
    free_port,
    nginx_main_config,
    run_nginx,
    simulator,
)
from sms_blaster.simulator.stats import arrival_summary

LIMITS_PER_S = (30, 150, 1000)
LATENCIES_MS = (2.0, 50.0)
CAP_LATENCY_MS = 50.0  # the concurrency cap's latency: CAP places hold CAP x 20 requests/s
TOLD_LIMIT_PER_S = 150  # where the client is also run told the limit (--no-adaptive --rate L)
NGINX_LIMITS_PER_S = (150, 1000)
# Rows for this long at the limit (SLOW_RUN_S at 30/s); 77 runs of the full sweep take about 20
# minutes when the client keeps to the limit, and a run is stopped at twice its length and 15 s.
RUN_S, SLOW_RUN_S, QUICK_RUN_S = 20.0, 20.0, 8.0
PHASE_S, QUICK_PHASE_S = 8, 4  # each of the schedule's three phases
WINDOW = 64
CEILING = 5  # --rate is this many times the limit
WARMUP_S = 2  # seconds left out of the goodput
SETTLED = 0.9  # a second is settled when it accepts this share of the limit
# The targets of the issue.
GOODPUT, CAP_GOODPUT, THROTTLED, SETTLE_S = 0.95, 0.90, 0.02, 5
TOLD_GOODPUT, TOLD_PEAK, REPORTED = 0.99, 1.02, 0.05


@dataclass(frozen=True, slots=True)
class Case:
    """One run: which server, limiter and client options, and the limit in force each second."""

    shape: str  # e.g. "sliding:L"; the table's first column
    phases: tuple[tuple[float, int | None], ...]  # (limit/s, seconds) in turn; the last for ever
    latency_ms: float
    run_s: float  # rows for about this long at the limit
    server: tuple[str, ...]  # mock-provider options, or () for nginx
    client: tuple[str, ...] = ()  # send options besides the common ones
    told: bool = False  # --no-adaptive --rate L
    nginx_burst: int | None = None  # nginx limit_req with this burst instead of the simulator
    cap: bool = False  # a concurrency cap: its own goodput target

    @property
    def limit_per_s(self) -> float:
        """The limit in force at the end (what a client should report)."""
        return self.phases[-1][0]

    def limit_at(self, second: int) -> float:
        for limit, seconds in self.phases:
            if seconds is None or second < seconds:
                return limit
            second -= seconds
        return self.phases[-1][0]

    @property
    def changes(self) -> list[int]:
        """The seconds at which a phase starts (0 included)."""
        starts, at = [0], 0
        for _, seconds in self.phases[:-1]:
            at += seconds or 0
            starts.append(at)
        return starts

    @property
    def rows(self) -> int:
        scheduled = sum(limit * (seconds or 0) for limit, seconds in self.phases)
        if len(self.phases) == 1:
            return math.ceil(self.limit_per_s * self.run_s)
        # The last phase as long as the others.
        return math.ceil(scheduled + self.limit_per_s * (self.phases[0][1] or 0))

    @property
    def deadline_s(self) -> float:
        """When the run is stopped: twice as long as the rows take at the limit, and 15 s."""
        expected_s = self.run_s if len(self.phases) == 1 else 3 * (self.phases[0][1] or 0)
        return 2 * expected_s + 15

    @property
    def where(self) -> str:
        latency = "nginx" if self.nginx_burst is not None else f"{self.latency_ms:g} ms"
        return f"{self.phases[0][0]:g}/s, {latency}"


def adaptive_cases(limit: int, latency_ms: float, run_s: float, phase_s: int) -> list[Case]:
    """The shapes at one limit and latency (the concurrency cap has its own latency)."""
    latency = ("--latency-ms", f"{latency_ms:g}")

    def case(shape: str, spec: str, *more: str) -> Case:
        return Case(
            shape, ((limit, None),), latency_ms, run_s, ("--limiter", spec, *latency, *more)
        )

    schedule = ((limit, phase_s), (0.4 * limit, phase_s), (1.33 * limit, None))
    spec = ",".join(
        f"sliding:{rate:g}@{seconds}" if seconds else f"sliding:{rate:g}"
        for rate, seconds in schedule
    )
    return [
        case("sliding:L", f"sliding:{limit}"),
        case("fixed:L", f"fixed:{limit}"),
        case("bucket:L:L", f"bucket:{limit}:{limit}"),
        case("bucket:L", f"bucket:{limit}"),
        case("bucket:L:L/10", f"bucket:{limit}:{max(1, limit // 10)}"),
        Case(
            "sliding:L,0.4L,1.33L",
            schedule,
            latency_ms,
            run_s,
            ("--limiter", spec, *latency),
        ),
        case("sliding:L hint none", f"sliding:{limit}", "--throttle-hint", "none"),
        case("sliding:L hint wrong", f"sliding:{limit}", "--throttle-hint", "wrong", "--seed", "1"),
        case("sliding:L hint retry-after", f"sliding:{limit}", "--throttle-hint", "retry-after"),
        case("queue:L:20", f"queue:{limit}:20"),
    ]


def cap_case(limit: int, run_s: float) -> Case:
    """`concurrency:C` at 50 ms, C x 20 about the limit (8 at 150/s: 160/s)."""
    places = max(1, round(limit / 20))
    true_limit = places * 1000 / CAP_LATENCY_MS
    options = ("--limiter", f"concurrency:{places}", "--latency-ms", f"{CAP_LATENCY_MS:g}")
    return Case(f"concurrency:{places}", ((true_limit, None),), CAP_LATENCY_MS, run_s, options,
                cap=True)  # fmt: skip


def nginx_case(limit: int, burst: int, run_s: float) -> Case:
    return Case(f"nginx limit_req burst {burst}", ((limit, None),), 0.0, run_s, (),
                nginx_burst=burst)  # fmt: skip


def told(case: Case) -> Case:
    return Case(case.shape, case.phases, case.latency_ms, case.run_s, case.server, case.client,
                told=True, cap=case.cap)  # fmt: skip


def cases(quick: bool) -> list[Case]:
    if quick:
        some = adaptive_cases(TOLD_LIMIT_PER_S, 2.0, QUICK_RUN_S, QUICK_PHASE_S)
        chosen = [some[0], some[3], some[8]]  # sliding, bucket with a small burst, retry-after
        return [*chosen, told(some[0]), nginx_case(TOLD_LIMIT_PER_S, 15, QUICK_RUN_S)]
    every = []
    for limit in LIMITS_PER_S:
        run_s = SLOW_RUN_S if limit < 100 else RUN_S
        for latency_ms in LATENCIES_MS:
            every += adaptive_cases(limit, latency_ms, run_s, PHASE_S)
        every.append(cap_case(limit, run_s))
    at_told = [*adaptive_cases(TOLD_LIMIT_PER_S, 2.0, RUN_S, PHASE_S), cap_case(150, RUN_S)]
    # A fixed rate cannot follow a schedule; told one limit, it is told the wrong one for two
    # phases of three, which says nothing of the client.
    every += [told(case) for case in at_told if len(case.phases) == 1]
    for limit in NGINX_LIMITS_PER_S:
        every += [nginx_case(limit, 0, RUN_S), nginx_case(limit, limit // 10, RUN_S)]
    return every


# -- the figures, from the server's timeline -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Figures:
    goodput: float  # accepted / limit in force, whole seconds from WARMUP_S to the end of demand
    throttled: float  # throttled / all arrivals
    settle_s: float | None  # the worst wait to settle, from t=0 and from each change; None: never
    peak: float  # the busiest sliding second of arrivals / the client's --rate
    reported: float | None  # the limit the client reported / the true one; None: not reported
    # Every row one record, `sent`, and the server accepted as many as rows (None: unfinished).
    exactly_once: bool | None
    per_second: list[int]  # accepted in each whole second, t=0 at the first arrival
    finished: bool  # the client exited by itself before the deadline


def accepted_per_second(arrivals: list[list[int]]) -> list[int]:
    seconds: Counter[int] = Counter()
    for t_ms, accepted, _, _ in arrivals:
        seconds[t_ms // 1000] += accepted
    last = max(seconds, default=-1)
    return [seconds[second] for second in range(last + 1)]


def demand_end(case: Case, per_second: list[int]) -> int:
    """The first second in which the client had less than a second's worth of rows left to send:
    the seconds after it measure the run's tail, not the client's pace."""
    done = 0
    for second, accepted in enumerate(per_second):
        if case.rows - done < case.limit_at(second):
            return second
        done += accepted
    return len(per_second)


def settle_s(case: Case, per_second: list[int], end: int) -> float | None:
    """The worst, over t=0 and each change, of the seconds until every later second (to the next
    change, or `end`) accepted at least SETTLED x the limit in force; None if one never did."""
    worst = 0.0
    starts = [start for start in case.changes if start < end]
    if not starts:
        return None  # nothing arrived: a run that never sent (see its stderr)
    for start, stop in zip(starts, [*starts[1:], end], strict=True):
        settled = stop
        for second in range(stop - 1, start - 1, -1):
            if per_second[second] < SETTLED * case.limit_at(second):
                break
            settled = second
        if settled == stop:
            return None
        worst = max(worst, settled - start)
    return worst


def figures(
    case: Case,
    arrivals: list[list[int]],
    records: list[dict[str, object]],
    stderr: str,
    finished: bool,
) -> Figures:
    per_second = accepted_per_second(arrivals)
    end = demand_end(case, per_second)
    measured = range(WARMUP_S, end)
    capacity = sum(case.limit_at(second) for second in measured)
    goodput = sum(per_second[second] for second in measured) / capacity if capacity else 0.0
    total = sum(a + t + o for _, a, t, o in arrivals)
    throttled = sum(t for _, _, t, _ in arrivals) / total if total else 0.0
    by_ms = {t_ms: a + t + o for t_ms, a, t, o in arrivals}
    peak = arrival_summary(by_ms)["peak_1s"] / rate_per_s(case)
    match = re.search(r"the provider's limit looked like ([\d,.]+)/s", stderr)
    reported = float(match.group(1).replace(",", "")) / case.limit_per_s if match else None
    statuses = {int(str(record["line"])): record["status"] for record in records}
    exactly_once = finished and (
        len(records) == len(statuses) == case.rows
        and set(statuses.values()) == {"sent"}
        and sum(a for _, a, _, _ in arrivals) == case.rows
    )
    return Figures(
        goodput,
        throttled,
        settle_s(case, per_second, end),
        peak,
        reported,
        exactly_once if finished else None,
        per_second,
        finished,
    )


def rate_per_s(case: Case) -> float:
    return case.limit_per_s if case.told else CEILING * max(limit for limit, _ in case.phases)


# -- running a case ------------------------------------------------------------------------------


def simulator_timeline(url: str) -> list[list[int]]:
    with urllib.request.urlopen(url + "/_simulator/timeline", timeout=30) as answer:
        arrivals: list[list[int]] = json.load(answer)["arrivals"]
        return arrivals


def nginx_timeline(log: Path) -> list[list[int]]:
    """The same rows from nginx's access log (`$msec $status` per request)."""
    counts: dict[int, list[int]] = {}
    for line in log.read_text().splitlines():
        stamp, status = line.split()
        at_ms = round(float(stamp) * 1000)
        row = counts.setdefault(at_ms, [0, 0, 0])
        row[0 if status == "200" else 1 if status == "429" else 2] += 1
    if not counts:
        return []
    first = min(counts)
    return [[at_ms - first, *counts[at_ms]] for at_ms in sorted(counts)]


def nginx_limit_config(folder: Path, port: int, limit: int, burst: int) -> str:
    # `return` would answer in the rewrite phase, before limit_req looks: echo answers after it.
    burst_text = f" burst={burst} nodelay" if burst else ""
    server = f"""
    log_format zoo '$msec $status';
    limit_req_zone $binary_remote_addr zone=sms:1m rate={limit}r/s;
    server {{
        listen 127.0.0.1:{port};
        access_log {folder}/access.log zoo;
        location = /sms/json {{
            limit_req zone=sms{burst_text};
            limit_req_status 429;
            default_type application/json;
            echo -n '{VONAGE_OK}';
        }}
    }}"""
    return nginx_main_config(folder, server, f"load_module {ECHO_MODULE};")


@contextmanager
def server_for(case: Case, folder: Path) -> Iterator[tuple[str, Path | None]]:
    """The URL to send to, and nginx's access log (None: ask the simulator's timeline)."""
    if case.nginx_burst is None:
        with simulator(*case.server) as sim:
            yield sim.url, None
        return
    port = free_port()
    config = nginx_limit_config(folder, port, int(case.limit_per_s), case.nginx_burst)
    with run_nginx(folder, config, port) as url:
        yield url, folder / "access.log"


def send_options(case: Case) -> list[str]:
    rate = rate_per_s(case)
    options = ["--rate", f"{rate:g}", "--window", str(WINDOW)]
    return [*options, "--no-adaptive"] if case.told else options


def run_case(case: Case, campaign: Path, folder: Path) -> tuple[Figures, str]:
    """One run of the client against a fresh server; the figures and the command line."""
    records_path, journal = folder / "records.jsonl", folder / "run.journal"
    deadline_s = case.deadline_s
    with server_for(case, folder) as (url, access_log):
        argv = [
            str(BIN), "send", str(campaign), "--base-url", url, "--from", "Bench",
            "--no-progress", "--text", TEXT, "--output", str(records_path),
            "--journal", str(journal), *send_options(case), *case.client,
        ]  # fmt: skip
        with (folder / "stderr").open("w+") as err:
            process = subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=err)
            try:
                process.wait(timeout=deadline_s)
                finished = True
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                finished = False
            err.seek(0)
            stderr = err.read()
        arrivals = nginx_timeline(access_log) if access_log else simulator_timeline(url)
    records = [json.loads(line) for line in records_path.read_text().splitlines() if line]
    names = {url: "URL", str(campaign): "rows.csv", str(records_path): "records.jsonl"}
    command = shown(argv, **names, **{str(journal): "fresh.journal"})
    return figures(case, arrivals, records, stderr, finished), command


def flow_zoo(ctx: Context) -> Section:
    need("nginx", Path(NGINX).exists())
    need("nginx's echo module (libnginx-mod-http-echo)", ECHO_MODULE.exists())
    runs: list[tuple[Case, Figures]] = []
    command = ""
    for number, case in enumerate(cases(ctx.quick), 1):
        campaign = ctx.folder / f"zoo-{case.rows}.csv"
        if not campaign.exists():
            write_campaign(campaign, case.rows)
        with tempfile.TemporaryDirectory(dir=ctx.folder) as name:
            started = time.monotonic()
            result, command = run_case(case, campaign, Path(name))
            mode = "told" if case.told else "adaptive"
            print(
                f"benchmarks: flow-zoo {number}: {case.shape} at {case.where} ({mode}): goodput "
                f"{result.goodput:.3f}, throttled {result.throttled:.3f} in "
                f"{time.monotonic() - started:.0f} s",
                flush=True,
            )
            runs.append((case, result))
    return Section("flow zoo", table(ctx, runs, command), checks(runs))


# -- the report ----------------------------------------------------------------------------------


def shown_settle(value: float | None) -> str:
    return "never" if value is None else f"{value:g}"


def shown_share(value: float | None) -> str:
    return "not reported" if value is None else f"{value:.3f}"


def table(ctx: Context, runs: list[tuple[Case, Figures]], command: str) -> list[str]:
    lines = [
        "## Flow control against the limiter zoo",
        "",
        "One run of `sms-blaster send` per row (journal on, `--rate` 5 x the limit, "
        f"`--window {WINDOW}`, records kept) against `mock-provider --no-keep-messages --limiter "
        "SPEC`, or nginx `limit_req` (rate = the limit, burst 0 or L/10 with `nodelay`, status "
        "429) in front of a fixed Vonage answer. Rows for about "
        f"{QUICK_RUN_S if ctx.quick else RUN_S:g} s at the limit"
        f"{'' if ctx.quick else f' ({SLOW_RUN_S:g} s at 30/s)'}; the schedule's phases last "
        f"{QUICK_PHASE_S if ctx.quick else PHASE_S} s each; a run still going at twice that and "
        "15 s is stopped (unfinished). Figures from the server's timeline, "
        "t = 0 at the first arrival: goodput = accepted per whole second from second "
        f"{WARMUP_S} until the client had less than a second's worth of rows left, as a share of "
        "the limit in force; throttled = throttled / all arrivals; settled = seconds until every "
        f"later second accepted ≥ {SETTLED:.0%} of the limit (the schedule: the worst of t = 0 "
        "and each change); reported = the limit the client's summary gave / the true (final) "
        "one; once = every row one record, `sent`, and the server accepted as many as rows. "
        "`concurrency:C` answers after 50 ms, so its limit is C x 20/s. One round per case.",
        "",
        "| shape | limit, latency | goodput | throttled | settled s | reported | once "
        "| accepted per second |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for case, result in runs:
        if case.told:
            continue
        lines.append(row(case, result, shown_settle(result.settle_s), shown_share(result.reported)))
    lines += [
        "",
        f"Told the limit: `--no-adaptive --rate L` at {TOLD_LIMIT_PER_S}/s (the cap: its C x 20); "
        "peak = the busiest sliding second of arrivals (ms resolution) / the rate.",
        "",
        "| shape | limit, latency | goodput | throttled | peak / rate | once "
        "| accepted per second |",
        "|---|---|---|---|---|---|---|",
    ]
    for case, result in runs:
        if case.told:
            lines.append(row(case, result, f"{result.peak:.3f}"))
    lines += ["", f"Command (the last run): {command}"]
    return lines


def row(case: Case, result: Figures, *middle: str) -> str:
    seconds = ", ".join(str(n) for n in result.per_second[:12])
    more = ", …" if len(result.per_second) > 12 else ""
    late = "" if result.finished else " (stopped at the deadline)"
    once = {True: "yes", False: "**no**", None: "unfinished"}[result.exactly_once]
    return (
        f"| {case.shape}{late} | {case.where} | {result.goodput:.3f} | {result.throttled:.3f} | "
        + " | ".join(middle)
        + f" | {once} | {seconds}{more} |"
    )


def checks(runs: list[tuple[Case, Figures]]) -> list[Check]:
    adaptive = [(case, result) for case, result in runs if not case.told]
    told_runs = [(case, result) for case, result in runs if case.told]

    def judged(
        name: str,
        target: str,
        pairs: list[tuple[Case, Figures]],
        value: Callable[[Case, Figures], str],
        met: Callable[[Case, Figures], bool],
    ) -> Check:
        failing = [
            f"{case.shape} at {case.where}: {value(case, result)}"
            for case, result in pairs
            if not met(case, result)
        ]
        shown_failing = "; ".join(failing[:4]) + ("; …" if len(failing) > 4 else "")
        text = f"{name}: {len(pairs) - len(failing)} of {len(pairs)} runs"
        return Check(text + (f" (not: {shown_failing})" if failing else ""), target, not failing)

    def goodput_floor(case: Case) -> float:
        return CAP_GOODPUT if case.cap else GOODPUT

    return [
        judged(
            "zoo goodput",
            "≥ 0.95 x limit (cap ≥ 0.90)",
            adaptive,
            lambda case, result: f"{result.goodput:.3f}",
            lambda case, result: result.goodput >= goodput_floor(case),
        ),
        judged(
            "zoo throttled",
            "≤ 2 % of requests",
            adaptive,
            lambda case, result: f"{result.throttled:.1%}",
            lambda case, result: result.throttled <= THROTTLED,
        ),
        judged(
            "zoo settled",
            "within 5 s (and of each change)",
            adaptive,
            lambda case, result: shown_settle(result.settle_s),
            lambda case, result: result.settle_s is not None and result.settle_s <= SETTLE_S,
        ),
        judged(
            "zoo reported limit",
            "within ±5 %",
            adaptive,
            lambda case, result: shown_share(result.reported),
            lambda case, result: (
                result.reported is not None and abs(result.reported - 1) <= REPORTED
            ),
        ),
        judged(
            "zoo exactly once (finished runs)",
            "every row sent once",
            [(case, result) for case, result in runs if result.finished],
            lambda case, result: "no",
            lambda case, result: bool(result.exactly_once),
        ),
        judged(
            "zoo runs finished",
            "before twice their length and 15 s",
            runs,
            lambda case, result: "stopped",
            lambda case, result: result.finished,
        ),
        judged(
            "zoo told the limit: goodput",
            "≥ 0.99 x limit",
            told_runs,
            lambda case, result: f"{result.goodput:.3f}",
            lambda case, result: result.goodput >= TOLD_GOODPUT,
        ),
        judged(
            "zoo told the limit: busiest second",
            "≤ 1.02 x rate",
            told_runs,
            lambda case, result: f"{result.peak:.3f}",
            lambda case, result: result.peak <= TOLD_PEAK,
        ),
    ]
