"""The cost of fsyncing the in-flight marks: `send` with the journal's fsync (the default), with
`--no-fsync` and with `--no-journal`, taking turns, at zero and at 50 ms of provider latency."""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from pathlib import Path

from benchmarks.clients import send, send_argv, shown, write_campaign
from benchmarks.results import Check, Section, median_range, ratio
from benchmarks.scenarios import FAST, Context, need
from benchmarks.servers import ECHO_MODULE, NGINX, nginx

MODES = {
    "fsync": ("journal, fsync (the default)", ()),
    "no-fsync": ("journal, `--no-fsync`", ("--no-fsync",)),
    "no-journal": ("`--no-journal`", ("--no-journal",)),
}
LATENCIES = {0.0: 64, 0.05: 256}  # latency s -> window: 50 ms x 256 allows 5,120/s


def disk(folder: Path) -> str:
    """The file system and device the journals are written to."""
    done = subprocess.run(
        ["findmnt", "-n", "-o", "FSTYPE,SOURCE", "--target", str(folder)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return " on ".join(done.stdout.split()) or "unknown"


def fsync_ms(folder: Path, count: int = 200) -> list[float]:
    """Latencies of `count` fsyncs, each after a 4 kB append (what a small commit costs)."""
    latencies = []
    path = folder / "fsync-probe"
    with path.open("wb") as probe:
        for _ in range(count):
            probe.write(b"x" * 4096)
            probe.flush()
            started = time.perf_counter()
            os.fsync(probe.fileno())
            latencies.append((time.perf_counter() - started) * 1000)
    path.unlink()
    return sorted(latencies)


def journal_fsync(ctx: Context) -> Section:
    need("nginx", Path(NGINX).exists())
    need("nginx's echo module (libnginx-mod-http-echo)", ECHO_MODULE.exists())
    rows = 5000 if ctx.quick else 20000
    campaign = write_campaign(ctx.folder / "fsync.csv", rows)
    probe = fsync_ms(ctx.folder)
    load_before = os.getloadavg()[0]
    speeds: dict[tuple[float, str], list[float]] = {
        (latency, mode): [] for latency in LATENCIES for mode in MODES
    }
    shown_argv: list[str] = []
    with nginx(slow_s=0.05) as server:
        assert server.slow_url is not None
        urls = {0.0: server.url, 0.05: server.slow_url}
        order = list(MODES)
        for round_ in range(ctx.rounds):
            for latency, window in LATENCIES.items():
                # Each round starts with another mode: none always runs first (or last).
                for mode in order[round_ % 3 :] + order[: round_ % 3]:
                    options = MODES[mode][1]
                    journal = (
                        ("--journal", str(ctx.journal("fsync"))) if mode != "no-journal" else ()
                    )
                    argv = send_argv(
                        urls[latency], campaign, *FAST, "--window", str(window), *journal, *options
                    )
                    speeds[latency, mode].append(send(argv, timeout_s=300).rows_per_s)
                    if latency and mode == "fsync":
                        shown_argv = argv

    load_after = os.getloadavg()[0]

    def vs(latency: float, mode: str, other: str) -> list[float]:
        pairs = zip(speeds[latency, mode], speeds[latency, other], strict=True)
        return [a / b for a, b in pairs]

    lines = [
        "## Journal fsync: the cost of in-flight marks on disk before requests leave",
        "",
        f"Debian's nginx answering at once, and 50 ms late (echo module); {rows:,} rows, "
        f"`--rate 1000000`, window {LATENCIES[0.0]} at zero latency and {LATENCIES[0.05]} at 50 ms "
        f"(at most {LATENCIES[0.05] / 0.05:,.0f}/s). Journals in {ctx.folder.parent} "
        f"({disk(ctx.folder)}): a bare fsync after a 4 kB append takes "
        f"{statistics.median(probe):.2f} ms (p90 {probe[len(probe) * 9 // 10]:.2f} ms). "
        f"The three modes take turns, each round starting with another; {ctx.rounds_text}; "
        f"ratios are taken within a round. Load average {load_before:.1f} before, "
        f"{load_after:.1f} after.",
        "",
        "| latency | journal, fsync (default) rows/s | `--no-fsync` rows/s | `--no-journal` rows/s "
        "| fsync / no-fsync | fsync / no-journal |",
        "|---|---|---|---|---|---|",
    ]
    checks = []
    for latency in LATENCIES:
        on_off = vs(latency, "fsync", "no-fsync")
        on_none = vs(latency, "fsync", "no-journal")
        lines.append(
            f"| {latency * 1000:g} ms | {median_range(speeds[latency, 'fsync'])} | "
            f"{median_range(speeds[latency, 'no-fsync'])} | "
            f"{median_range(speeds[latency, 'no-journal'])} | {ratio(on_off)} | {ratio(on_none)} |"
        )
        checks.append(
            Check(
                f"{latency * 1000:g} ms: fsync / no-fsync {ratio(on_off)}, "
                f"fsync / no-journal {ratio(on_none)}",
                "none (reference)",
                None,
            )
        )
    lines += [
        "",
        "Command (50 ms, fsync): "
        + shown(
            shown_argv,
            **{
                urls[0.05]: "URL",
                str(campaign): "rows.csv",
                shown_argv[shown_argv.index("--journal") + 1]: "fresh.journal",
            },
        )
        + "; the others add `--no-fsync`, or have `--no-journal` in place of `--journal`.",
    ]
    return Section(name="journal fsync", lines=lines, checks=checks)
