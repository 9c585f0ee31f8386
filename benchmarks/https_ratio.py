"""`send` over HTTPS and over plain HTTP, each against the bare aiohttp loop over the same
scheme: zero-latency nginx, CSV in, journal on, records to /dev/null, window 64. The figures of
`python -m benchmarks.transports [--tls]`, for the lean transport (the default), as a scenario.
"""

from __future__ import annotations

import contextlib
import statistics
from pathlib import Path

from benchmarks import transports
from benchmarks.results import Check, Section
from benchmarks.scenarios import Context, need
from benchmarks.servers import NGINX, nginx

TARGETS = {"plain HTTP": 3.0, "TLS": 2.0}  # send ÷ bare aiohttp


def https_ratio(ctx: Context) -> Section:
    need("nginx", Path(NGINX).exists())
    rows, window = (5_000, 64) if ctx.quick else (20_000, 64)
    lines = [
        "## HTTPS beside plain HTTP",
        "",
        f"{rows:,} rows a run, window {window}, {ctx.rounds_text} taking turns; TLS: nginx with a "
        "fresh self-signed certificate that `SSL_CERT_FILE` trusts, one handshake a connection. "
        "`send` is `--transport lean` (the default); the bare loops post the same forms.",
    ]
    checks = []
    for scheme, target in TARGETS.items():
        with contextlib.ExitStack() as stack:
            folder = ctx.folder / f"https-{scheme.split()[0].lower()}"
            folder.mkdir(exist_ok=True)
            if scheme == "TLS":
                url = stack.enter_context(transports.tls_nginx(folder))
            else:
                url = stack.enter_context(nginx()).url
            figures = transports.measure(url, folder, rows, ctx.rounds, window, ("lean",))
        lines += ["", f"Over {scheme}:", "", *transports.table(figures)]
        vs_bare = statistics.median(figures.vs_bare("lean"))
        checks.append(
            Check(
                f"send / bare aiohttp over {scheme}: {vs_bare:.2f} "
                f"({statistics.median(figures.run_s['lean']):,.0f} vs "
                f"{statistics.median(figures.run_s['bare']):,.0f} /s)",
                f"≥ {target:g}",
                vs_bare >= target,
            )
        )
    lines += ["", "Command: `python -m benchmarks.transports --rows N [--tls]` gives the same."]
    return Section(name="https", lines=lines, checks=checks)
