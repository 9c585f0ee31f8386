"""`send` over each transport against zero-latency nginx, beside the bare aiohttp loop, taking
turns in one run: CSV in, journal on (fsynced), records out, window 64; and the bare loop's
requests over the lean transport alone (`bare_lean.py`).

Usage: python -m benchmarks.transports [--rows N] [--rounds N] [--window N] [--tls]
Prints a table of rows/s: the run's own figure (its summary line) and the whole process's.
With --tls, nginx answers over TLS with a fresh self-signed certificate that SSL_CERT_FILE
trusts (the handshakes are in the figures: one a connection).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from benchmarks import clients
from benchmarks.clients import send, send_argv, write_campaign
from benchmarks.results import median_range, ratio
from benchmarks.scenarios import FAST
from benchmarks.servers import VONAGE_OK, free_port, nginx, nginx_main_config, run_nginx
from tests.test_deploy_configs import make_certificate

TRANSPORTS = ("lean", "aiohttp")


@contextlib.contextmanager
def tls_nginx(folder: Path) -> Iterator[str]:
    """nginx answering `POST /sms/json` over TLS; SSL_CERT_FILE set to trust it meanwhile."""
    cert = make_certificate(folder)  # for 127.0.0.1, among others
    port = free_port()
    server = f"""
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert.cert};
        ssl_certificate_key {cert.key};
        location = /sms/json {{ default_type application/json; return 200 '{VONAGE_OK}'; }}
    }}"""
    before = os.environ.get("SSL_CERT_FILE")
    os.environ["SSL_CERT_FILE"] = str(cert.cert)  # every client process inherits it
    try:
        with run_nginx(folder, nginx_main_config(folder, server), port) as url:
            yield url.replace("http://", "https://")
    finally:
        if before is None:
            del os.environ["SSL_CERT_FILE"]
        else:
            os.environ["SSL_CERT_FILE"] = before


@dataclass(frozen=True, slots=True)
class Figures:
    """Rows/s of each client, one a round, the rounds taken in turns."""

    run_s: dict[str, list[float]]  # the run's own figure (its summary line), and the bare loops
    whole: dict[str, list[float]]  # rows ÷ the whole process's wall time

    def vs_bare(self, name: str) -> list[float]:
        return [a / b for a, b in zip(self.run_s[name], self.run_s["bare"], strict=True)]


def measure(
    url: str,
    folder: Path,
    rows: int,
    rounds: int,
    window: int,
    transports: tuple[str, ...] = TRANSPORTS,
) -> Figures:
    """`send` over each of `transports`, the bare aiohttp loop and the same loop over the lean
    transport, taking turns for `rounds` rounds."""
    run_s: dict[str, list[float]] = {name: [] for name in (*transports, "bare", "bare_lean")}
    whole: dict[str, list[float]] = {name: [] for name in transports}
    campaign = write_campaign(folder / "rows.csv", rows)
    for round_number in range(rounds):
        for transport in transports:
            journal = folder / f"{transport}-{round_number}.journal"
            argv = send_argv(
                url, campaign, *FAST, "--window", str(window),
                "--journal", str(journal), "--transport", transport,
            )  # fmt: skip
            done = send(argv, timeout_s=600)
            run_s[transport].append(done.rows_per_s)
            whole[transport].append(rows / done.elapsed_s)
        run_s["bare"].append(clients.bare(url, rows, window))
        run_s["bare_lean"].append(clients.bare_lean(url, rows, window))
    return Figures(run_s, whole)


def table(figures: Figures) -> list[str]:
    lines = [
        "| client | rows/s (run) | rows/s (whole process) | run / bare aiohttp |",
        "|---|---|---|---|",
    ]
    for transport in figures.whole:
        lines.append(
            f"| send --transport {transport} | {median_range(figures.run_s[transport])} | "
            f"{median_range(figures.whole[transport])} | {ratio(figures.vs_bare(transport))} |"
        )
    lines += [
        f"| bare aiohttp loop | {median_range(figures.run_s['bare'])} | | 1 |",
        f"| the same loop over LeanTransport | {median_range(figures.run_s['bare_lean'])} | | "
        f"{ratio(figures.vs_bare('bare_lean'))} |",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=40_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--tls", action="store_true", help="over TLS")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-transports-")))
        url = (
            stack.enter_context(tls_nginx(folder)) if args.tls else stack.enter_context(nginx()).url
        )
        figures = measure(url, folder, args.rows, args.rounds, args.window)
    over = "TLS" if args.tls else "plain HTTP"
    print(f"{args.rows:,} rows, window {args.window}, {args.rounds} rounds taking turns, {over}")
    print("\n".join(table(figures)))


if __name__ == "__main__":
    main()
