"""`send` over each transport against zero-latency nginx, beside the bare aiohttp loop, taking
turns in one run: CSV in, journal on (fsynced), records out, window 64; and the bare loop's
requests over the lean transport alone (`bare_lean.py`).

Usage: python -m benchmarks.transports [--rows N] [--rounds N] [--window N]
Prints a table of rows/s: the run's own figure (its summary line) and the whole process's.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks import clients
from benchmarks.clients import send, send_argv, write_campaign
from benchmarks.results import median_range, ratio
from benchmarks.scenarios import FAST
from benchmarks.servers import nginx

TRANSPORTS = ("lean", "aiohttp")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=40_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=int, default=64)
    args = parser.parse_args()
    run_s: dict[str, list[float]] = {name: [] for name in (*TRANSPORTS, "bare", "bare_lean")}
    whole: dict[str, list[float]] = {name: [] for name in TRANSPORTS}
    with tempfile.TemporaryDirectory(prefix="bench-transports-") as name, nginx() as server:
        folder = Path(name)
        campaign = write_campaign(folder / "rows.csv", args.rows)
        for round_number in range(args.rounds):
            for transport in TRANSPORTS:
                journal = folder / f"{transport}-{round_number}.journal"
                argv = send_argv(
                    server.url, campaign, *FAST, "--window", str(args.window),
                    "--journal", str(journal), "--transport", transport,
                )  # fmt: skip
                done = send(argv, timeout_s=600)
                run_s[transport].append(done.rows_per_s)
                whole[transport].append(args.rows / done.elapsed_s)
            run_s["bare"].append(clients.bare(server.url, args.rows, args.window))
            run_s["bare_lean"].append(clients.bare_lean(server.url, args.rows, args.window))
    print(f"{args.rows:,} rows, window {args.window}, {args.rounds} rounds taking turns")
    print("| client | rows/s (run) | rows/s (whole process) | run / bare aiohttp |")
    print("|---|---|---|---|")
    for transport in TRANSPORTS:
        vs_bare = [a / b for a, b in zip(run_s[transport], run_s["bare"], strict=True)]
        print(
            f"| send --transport {transport} | {median_range(run_s[transport])} | "
            f"{median_range(whole[transport])} | {ratio(vs_bare)} |"
        )
    print(f"| bare aiohttp loop | {median_range(run_s['bare'])} | | 1 |")
    lean_bare = [a / b for a, b in zip(run_s["bare_lean"], run_s["bare"], strict=True)]
    print(
        f"| the same loop over LeanTransport | {median_range(run_s['bare_lean'])} | | "
        f"{ratio(lean_bare)} |"
    )


if __name__ == "__main__":
    main()
