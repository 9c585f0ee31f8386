"""Run the benchmark scenarios against the simulator in its own process; write RESULTS.md.

Usage: python -m benchmarks.run [--quick]

Each scenario runs its competitors in the same run (the machine is shared and noisy: compare
ratios, not absolute figures across runs). Client and server are separate processes on loopback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).parent
BIN = Path(sys.executable).parent / "sms-blaster"
MAGIC = range(9990, 9999)  # the simulator's magic suffixes: keep them out of benchmark data
ENV = {**os.environ, "VONAGE_API_KEY": "bench-key", "VONAGE_API_SECRET": "bench-secret"}


@dataclass(frozen=True)
class Simulator:
    url: str

    def reset(self) -> None:
        request = urllib.request.Request(self.url + "/_simulator/reset", b"", method="POST")
        urllib.request.urlopen(request).close()

    def stats(self) -> dict[str, object]:
        with urllib.request.urlopen(self.url + "/_simulator/stats") as answer:
            data: dict[str, object] = json.load(answer)
            return data


@contextlib.contextmanager
def simulator(*options: str) -> Iterator[Simulator]:
    with tempfile.TemporaryDirectory() as folder:
        url_file = Path(folder) / "url"
        process = subprocess.Popen(
            [
                str(BIN),
                "mock-provider",
                "--port",
                "0",
                "--port-file",
                str(url_file),
                "--no-keep-messages",
                *options,
            ],
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while not url_file.exists() or not url_file.read_text().strip():
                if time.monotonic() > deadline:
                    raise RuntimeError("the simulator did not start")
                time.sleep(0.05)
            yield Simulator(url_file.read_text().strip())
        finally:
            process.terminate()
            process.wait()


def write_campaign(path: Path, rows: int) -> Path:
    """A CSV of `rows` distinct valid UK mobile numbers, none with a magic suffix."""
    with path.open("w") as out:
        out.write("to,name\n")
        n = written = 0
        while written < rows:
            n += 1
            if n % 10000 in MAGIC:
                continue
            out.write(f"+4474{n:08d},Name{n}\n")
            written += 1
    return path


def send(sim: Simulator, campaign: Path, *options: str) -> tuple[float, str]:
    """Run `sms-blaster send`; the wall time and the summary it printed."""
    started = time.perf_counter()
    done = subprocess.run(
        [str(BIN), "send", str(campaign), "--base-url", sim.url, "--from", "Bench", "--no-progress",
         "--text", "Hello {name}, a benchmark message.", "--output", os.devnull, *options],
        env=ENV, capture_output=True, text=True, check=False,
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"send exited {done.returncode}: {done.stderr}")
    return elapsed, done.stderr


def bare(sim: Simulator, rows: int, concurrency: int) -> float:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bare_aiohttp", sim.url, str(rows), str(concurrency)],
        capture_output=True, text=True, check=True, cwd=HERE.parent,
    )  # fmt: skip
    return float(done.stdout)


def sms_blaster_rate(summary: str) -> float:
    """Rows per second from the summary line (the run's own clock, without process start-up)."""
    match = re.search(r"([\d,]+) rows in ([\d.]+) s", summary)
    assert match, summary
    return int(match.group(1).replace(",", "")) / float(match.group(2))


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def throughput(
    folder: Path, rows: int, window: int, repeats: int, latency_ms: float = 0.0
) -> list[str]:
    """sms-blaster with and without its journal, and a bare aiohttp loop, taking turns."""
    campaign = write_campaign(folder / "throughput.csv", rows)
    journal_on, journal_off, bare_loop = [], [], []
    with simulator("--latency-ms", str(latency_ms)) as sim:
        for attempt in range(repeats):
            fast = ("--rate", "1000000", "--window", str(window))
            journal = str(folder / f"throughput-{latency_ms:g}-{attempt}.journal")
            journal_on.append(sms_blaster_rate(send(sim, campaign, *fast, "--journal", journal)[1]))
            journal_off.append(sms_blaster_rate(send(sim, campaign, *fast, "--no-journal")[1]))
            bare_loop.append(bare(sim, rows, window))
    vs_bare = [on / b for on, b in zip(journal_on, bare_loop, strict=True)]
    on_off = [on / off for on, off in zip(journal_on, journal_off, strict=True)]
    ceiling = f"; the window allows {window / latency_ms * 1000:,.0f}/s" if latency_ms else ""
    return [
        f"## Throughput, {latency_ms:g} ms latency",
        "",
        f"{rows:,} rows, window {window}, the simulator in its own process answering after "
        f"{latency_ms:g} ms{ceiling}. The three clients take turns, {repeats} rounds; median "
        "(range). Ratios are taken within a round.",
        "",
        "| client | rows/s |",
        "|---|---|",
        f"| `sms-blaster send`, journal on (CSV in, prepare, records out) | {spread(journal_on)} |",
        f"| `sms-blaster send --no-journal` | {spread(journal_off)} |",
        f"| bare aiohttp loop, same concurrency | {spread(bare_loop)} |",
        f"| journal on / bare aiohttp | {ratio_spread(vs_bare)} |",
        f"| journal on / journal off | {ratio_spread(on_off)} |",
        "",
    ]


def ratio_spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def rate_accuracy(folder: Path, rates: list[int], seconds: float) -> list[str]:
    lines = [
        "## Rate accuracy",
        "",
        f"About {seconds:g} s per rate, counted by the simulator as requests arrive; peak = most",
        "requests in any sliding 1 s window, the first second included.",
        "",
        "| target /s | achieved /s | achieved / target | peak 1 s | peak / target |",
        "|---|---|---|---|---|",
    ]
    with simulator() as sim:
        for rate in rates:
            rows = int(rate * seconds)
            campaign = write_campaign(folder / f"rate-{rate}.csv", rows)
            sim.reset()
            send(sim, campaign, "--rate", str(rate), "--window", "64")
            arrivals = sim.stats()["arrivals"]
            assert isinstance(arrivals, dict)
            achieved = (arrivals["count"] - 1) / arrivals["span_s"]
            peak = arrivals["peak_1s"]
            ratio, peak_ratio = achieved / rate, peak / rate
            lines.append(
                f"| {rate:,} | {achieved:,.1f} | {ratio:.3f} | {peak:,} | {peak_ratio:.3f} |"
            )
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller runs, for a smoke test")
    args = parser.parse_args()
    rows, repeats, seconds = (5000, 1, 2.0) if args.quick else (40000, 3, 5.0)
    command = "python -m benchmarks.run --quick" if args.quick else "make bench"
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        sections = [
            *throughput(folder, rows, 64, repeats),
            *throughput(folder, rows, 64, repeats, latency_ms=20.0),
            *rate_accuracy(folder, [100, 1000], seconds),
        ]
    report = [
        "# Benchmark results",
        "",
        f"Written by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{os.cpu_count()} cores, Python {sys.version.split()[0]}.",
        "",
        *sections,
    ]
    notes = HERE / "notes.md"  # hand-written analysis, kept below the figures
    if notes.exists():
        report += ["", notes.read_text()]
    text = "\n".join(report)
    (HERE / "RESULTS.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
