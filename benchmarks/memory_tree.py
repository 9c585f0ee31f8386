"""Memory of a whole `send` run at 100,000 and 1,000,000 rows: every process it starts, summed.

CSV in, records to a file, journal on, zero-latency nginx, no pacing, window 64. The peak is the
largest sum of VmRSS over the process tree, sampled every 100 ms (`process_tree.py`), beside GNU
time's `%M` of the main process; a run that prepares rows in a second process shows it in the
tree's peak and process count.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from benchmarks import clients, process_tree
from benchmarks.clients import CREDENTIALS, ENV, SendRun, send_argv, shown, write_campaign
from benchmarks.results import Check, Section
from benchmarks.scenarios import FAST, Context, need
from benchmarks.servers import NGINX, nginx


@dataclass(frozen=True, slots=True)
class Measured:
    rows: int
    tree_mb: float  # the peak of the tree's summed VmRSS
    tree_pss_mb: float  # the peak of the tree's summed Pss (shared pages split among sharers)
    main_mb: float  # GNU time's %M of the `send` process
    processes: int  # the most processes of the run seen at once (the time wrapper not counted)
    rows_per_s: float
    records_mb: float
    journal_mb: float


def measure(ctx: Context, url: str, rows: int, timeout_s: float) -> tuple[Measured, list[str]]:
    campaign = write_campaign(ctx.folder / f"memory-tree-{rows}.csv", rows)
    journal = ctx.journal(f"memory-tree-{rows}")
    records = journal.with_suffix(".jsonl")
    rss_file = journal.with_suffix(".rss")
    argv = send_argv(url, campaign, *FAST, "--window", "64", "--journal", str(journal))
    argv[argv.index("--output") + 1] = str(records)
    wrapped = [clients.TIME, "-f", "%M", "-o", str(rss_file), *argv]
    try:
        run = process_tree.run(wrapped, {**ENV, **CREDENTIALS}, timeout_s)
    finally:
        campaign.unlink()
    if run.returncode not in (0, 1):
        raise RuntimeError(f"send exited {run.returncode}: {run.stderr}")
    measured = Measured(
        rows=rows,
        tree_mb=run.peak_tree_kb / 1024,
        tree_pss_mb=run.peak_tree_pss_kb / 1024,
        main_mb=int(rss_file.read_text().split()[-1]) / 1024,
        processes=run.peak_processes - 1,
        rows_per_s=SendRun(run.elapsed_s, run.stderr).rows_per_s,
        records_mb=records.stat().st_size / 1e6,
        journal_mb=journal.stat().st_size / 1e6,
    )
    records.unlink()
    shown_argv = shown(
        argv,
        **{url: "URL", str(campaign): "rows.csv", str(journal): "fresh.journal",
           str(records): "records.jsonl"},
    )  # fmt: skip
    return measured, [shown_argv]


def memory_tree(ctx: Context) -> Section:
    need("nginx", Path(NGINX).exists())
    need("GNU time", Path(clients.TIME).exists())
    sizes = (10_000, 100_000) if ctx.quick else (100_000, 1_000_000)
    timeout_s = 600.0
    done: list[Measured] = []
    command: list[str] = []
    with nginx() as server:
        for rows in sizes:
            try:
                measured, command = measure(ctx, server.url, rows, timeout_s)
            except subprocess.TimeoutExpired:
                break
            done.append(measured)
    lines = [
        "## Memory of the whole run",
        "",
        "`sms-blaster send`, CSV in, records to a file, journal on, zero-latency nginx, "
        "`--rate 1000000 --window 64`; one run a size. Tree peak: the largest sum of VmRSS over "
        "the run's processes (sampled every 100 ms, GNU time's own ~2 MB included); Pss: the "
        "same with each shared page split among the processes sharing it (a forked child's "
        "pages are counted once, but so are pages shared with any process outside the run, such as "
        "other Pythons on the machine: it reads low); main: GNU `time -f %M` of the `send` "
        "process. The targets are judged on the tree's VmRSS.",
        "",
        "| rows | tree peak MB | tree Pss MB | main process MB | processes | rows/s | records MB "
        "| journal MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in done:
        lines.append(
            f"| {m.rows:,} | {m.tree_mb:.1f} | {m.tree_pss_mb:.1f} | {m.main_mb:.1f} | "
            f"{m.processes} | "
            f"{m.rows_per_s:,.0f} | {m.records_mb:.0f} | {m.journal_mb:.0f} |"
        )
    if len(done) < len(sizes):
        lines.append(f"| {sizes[len(done)]:,} | timed out after {timeout_s:.0f} s | | | | | | |")
        return Section(
            name="memory, whole run",
            lines=lines,
            checks=[Check(f"{sizes[-1]:,} rows timed out", "≤ 100 MB", False)],
        )
    small, large = done
    lines += ["", "Command: " + command[0]]
    growth = large.tree_mb - small.tree_mb
    return Section(
        name="memory, whole run",
        lines=lines,
        checks=[
            Check(
                f"all processes {large.tree_mb:.1f} MB at {large.rows:,} rows",
                "≤ 100 MB",
                large.tree_mb <= 100,
            ),
            Check(
                f"growth {small.rows:,} → {large.rows:,}: {growth:+.1f} MB", "≤ 10 MB", growth <= 10
            ),
        ],
    )
