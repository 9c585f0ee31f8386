"""`report --html` on a journal of 1,000,000 rows: wall time and peak RSS of the whole process.

The journal is built directly with SQL (no send could write a million rows here in reasonable
time): one campaign sent over three runs of an hour with gaps between them, about 278 rows a
second, latencies spread over two orders of magnitude, some failed and skipped rows, a delivery
receipt for 90 % of the sent rows, and the runs' timeline a row a second. `report --json` of the
same journal takes turns with it, for reference (the page includes the text report's totals).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from pathlib import Path

from benchmarks.results import Check, Section, median_range
from benchmarks.scenarios import Context, need
from benchmarks.servers import INSTALLED
from sms_blaster.journal.schema import connect

TIME = "/usr/bin/time"
ROWS = 1_000_000
RUNS = 3
RUN_S = 3600
GAP_S = 1800
START_S = 1_800_000_000.0
TARGET_S, TARGET_MB = 5.0, 100.0


def _run_start_s(run: int) -> float:
    return START_S + run * (RUN_S + GAP_S)


def build_journal(path: Path, rows: int = ROWS) -> None:
    """A journal of one campaign of `rows` rows, three runs, timeline and receipts."""
    per_run = rows // RUNS + 1
    with contextlib.closing(connect(str(path))) as connection:
        connection.execute("PRAGMA synchronous = OFF")
        connection.execute("BEGIN")
        connection.execute(
            "INSERT INTO campaigns VALUES ('bench', 'benchcid', 'bench.csv', 'Hello {name}', "
            "'Bench', 'vonage-sms', 'to', '', ?)",
            (START_S,),
        )
        # Row i is sent in run i / per_run, evenly over its hour; 1 in 50 failed, 1 in 97 skipped,
        # 1 in 20 in two UCS-2 parts; latency from 5 to about 500 ms.
        connection.execute(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < :rows - 1) "
            "INSERT INTO rows (campaign, line, state, fingerprint, to_number, client_ref, "
            "segments, encoding, attempts, message_ids, price, latency_ms, error_kind, "
            "error_code, error_message, updated_at) "
            "SELECT 'bench', i + 1, "
            "CASE WHEN i % 50 = 7 THEN 'failed' WHEN i % 97 = 3 THEN 'skipped' ELSE 'sent' END, "
            "i, '4474' || (10000000 + i), 'benchcid-' || (i + 1), "
            "CASE WHEN i % 20 = 0 THEN 2 ELSE 1 END, "
            "CASE WHEN i % 20 = 0 THEN 'ucs2' ELSE 'gsm7' END, 1, 'm' || i, "
            "CASE WHEN i % 50 = 7 OR i % 97 = 3 THEN NULL WHEN i % 20 = 0 THEN '0.06660000' "
            "ELSE '0.03330000' END, "
            "CASE WHEN i % 50 = 7 OR i % 97 = 3 THEN NULL "
            "ELSE 5.0 + (i * 7919 % 1000) * (i * 104729 % 1000) / 2000.0 END, "
            "CASE WHEN i % 50 = 7 THEN 'rejected' WHEN i % 97 = 3 THEN 'duplicate' END, "
            "CASE WHEN i % 50 = 7 THEN '6' WHEN i % 97 = 3 THEN 'duplicate' END, NULL, "
            f"{START_S} + (i / :per_run) * {RUN_S + GAP_S} + (i % :per_run) * {RUN_S}.0 / :per_run "
            "FROM n",
            {"rows": rows, "per_run": per_run},
        )
        connection.execute(
            "INSERT INTO deliveries SELECT message_ids, 'benchcid', line, 'vonage-sms', "
            "CASE WHEN line % 30 = 0 THEN 'failed' ELSE 'delivered' END, 1, "
            "CASE WHEN line % 30 = 0 THEN '1' ELSE '0' END, '', NULL, "
            "updated_at + 0.5 + (line * 31 % 100) / 10.0 "
            "FROM rows WHERE campaign = 'bench' AND state = 'sent' AND line % 10 != 0"
        )
        settings = json.dumps({"rate_per_s": 300.0, "sender": "Bench", "window": 64})
        for run in range(RUNS):
            started_s = _run_start_s(run)
            connection.execute(
                "INSERT INTO runs VALUES (?, 'bench', ?, ?, 0, ?)",
                (run + 1, started_s, started_s + RUN_S, settings),
            )
            connection.executemany(
                "INSERT INTO timeline VALUES (?, ?, 280, ?, 278, 5, 16, 64, 300.0, 281.0, 290.0)",
                [
                    (run + 1, started_s + second, 1 if second % 600 == 0 else 0)
                    for second in range(1, RUN_S + 1)
                ],
            )
        connection.execute("COMMIT")


def _timed(argv: list[str], out: Path) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds (user + system) and peak RSS (MB) of one process, its stdout
    to `out`."""
    rss_file = out.with_suffix(".rss")
    started = time.perf_counter()
    with out.open("wb") as stdout:
        subprocess.run(
            [TIME, "-f", "%U %S %M", "-o", str(rss_file), *argv],
            stdout=stdout, stderr=subprocess.PIPE, check=True, timeout=300,
        )  # fmt: skip
    elapsed_s = time.perf_counter() - started
    user_s, system_s, rss_kb = rss_file.read_text().split()[-3:]
    return elapsed_s, float(user_s) + float(system_s), int(rss_kb) / 1024


def report_html(ctx: Context) -> Section:
    need("GNU time", Path(TIME).exists())
    rows = 100_000 if ctx.quick else ROWS
    journal = ctx.folder / "report-html.journal"
    started = time.perf_counter()
    build_journal(journal, rows)
    build_s = time.perf_counter() - started
    size_mb = os.path.getsize(journal) / 1e6
    program = INSTALLED.argv("report", str(journal))
    html: list[tuple[float, float, float]] = []
    text: list[tuple[float, float, float]] = []
    for _ in range(ctx.rounds):
        html.append(_timed([*program, "--html", "-"], ctx.folder / "report.html"))
        text.append(_timed([*program, "--json"], ctx.folder / "report.json"))
    page_kb = os.path.getsize(ctx.folder / "report.html") / 1e3
    html_s, html_mb = [s for s, _, _ in html], [mb for _, _, mb in html]
    load = os.getloadavg()[0]
    lines = [
        "## `report --html` on a large journal",
        "",
        f"A journal of {rows:,} rows built with SQL ({size_mb:,.0f} MB, {build_s:.0f} s to build):"
        f" one campaign over {RUNS} runs of an hour with half-hour gaps, receipts for 90 % of "
        "the sent rows, a timeline row a second. Each process timed whole with GNU `time` "
        f"(wall, CPU, peak RSS), `--html` and `--json` taking turns, {ctx.rounds_text}; load "
        f"average {load:.1f} at the end. The page is {page_kb:,.0f} kB.",
        "",
        "| command | wall s | CPU s | peak RSS MB |",
        "|---|---|---|---|",
        *(
            f"| {label} | {median_range([s for s, _, _ in runs], 2)} | "
            f"{median_range([cpu for _, cpu, _ in runs], 2)} | "
            f"{median_range([mb for _, _, mb in runs], 1)} |"
            for label, runs in (
                ("`report JOURNAL --html -`", html),
                ("`report JOURNAL --json` (reference)", text),
            )
        ),
    ]
    worst_s, worst_mb = max(html_s), max(html_mb)
    checks = [
        Check(f"`report --html`, {rows:,} rows: {worst_s:.2f} s at worst", "< 5 s",
              worst_s < TARGET_S),
        Check(f"`report --html`, {rows:,} rows: peak RSS {worst_mb:.1f} MB at worst", "< 100 MB",
              worst_mb < TARGET_MB),
    ]  # fmt: skip
    return Section(name="report --html", lines=lines, checks=checks)
