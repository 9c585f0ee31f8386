"""What `sms-blaster receive` costs a receipt: its CPU at 1,000 and 2,000 signed receipts/s with
100 ms of processing each, its ack p99 beside the disk's own fsync p99 in the same run, and that
nothing acknowledged is lost.

Usage: python -m benchmarks.receiver_cpu [--quick] [--rounds N] [--code REV|DIR ...]  ->  a section
(`python -m benchmarks.run --only receiver-cpu` runs it and writes RESULTS.md.)

Each `--code` is a revision of this repository (its `sms_blaster` taken with `git archive`) or a
tree holding an `sms_blaster` package: the receivers of each take turns within every round, so
two revisions are compared on the same machine load. Without it, the repository's own code is
measured.

The receiver is a process of its own on a fresh store, with VONAGE_SIGNATURE_SECRET set and the
hook `benchmarks.receipt_hooks:slow`; the load (`benchmarks.receipt_load`, open loop, signed
receipts) is a second process. Its CPU is user + system from /proc/PID/stat over the load. While
the load runs, a thread of this process overwrites 4 KiB of a file next to the store and
fdatasyncs it every 10 ms: the disk's own fsync latency, which no acknowledgement can beat.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from benchmarks.receiver_latency import HOOK, WARMUP_S, load, store_ids
from benchmarks.results import Check, Section, median_range
from benchmarks.scenarios import Context
from benchmarks.servers import REPO, Served, listening, stop

RATES = (1000, 2000)
SECRET = "bench-signature-secret"
METHOD = "sha256"
TARGET_CORES_PER_1000 = 0.2
TARGET_OVER_FSYNC_MS = 2.0
_PROBE_EVERY_S = 0.01
_PROBE_BYTES = 4096
_PROBE_SLOTS = 256  # the probe file: this many blocks, overwritten in turn


@dataclass(frozen=True, slots=True)
class Run:
    cores: float  # the receiver's CPU over the load, in cores
    us_per_receipt: float  # the same, per receipt sent
    ack_p99_ms: float  # first answer of each measured receipt
    fsync_p99_ms: float  # the disk's own, in the same run
    lost: int  # acknowledged but not in the store
    unacked: int  # never acknowledged within the load's deadline


class FsyncProbe:
    """Overwrite a block of a file and fdatasync it, every 10 ms, in a thread; the latencies."""

    def __init__(self, folder: Path) -> None:
        self._path = folder / "fsync-probe"
        self._stop = threading.Event()
        self.latencies_s: list[float] = []

    def _run(self) -> None:
        block = os.urandom(_PROBE_BYTES)
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.pwrite(fd, bytes(_PROBE_BYTES * _PROBE_SLOTS), 0)
            os.fsync(fd)  # allocated and on disk: what follows are overwrites, as a WAL's are
            slot = 0
            while not self._stop.wait(_PROBE_EVERY_S):
                started = time.perf_counter()
                os.pwrite(fd, block, slot * _PROBE_BYTES)
                os.fdatasync(fd)
                self.latencies_s.append(time.perf_counter() - started)
                slot = (slot + 1) % _PROBE_SLOTS
        finally:
            os.close(fd)
            self._path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def running(self) -> Iterator[FsyncProbe]:
        thread = threading.Thread(target=self._run, name="fsync-probe", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()

    def p99_ms(self) -> float:
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000


@contextlib.contextmanager
def receiver(code: Path, store: Path, folder: Path) -> Iterator[Served]:
    """`sms-blaster receive` from the tree `code`, signatures on, the 100 ms hook."""
    url_file = folder / "receiver.url"
    url_file.unlink(missing_ok=True)
    argv = [
        sys.executable, "-m", "sms_blaster", "receive", "--store", str(store), "--port", "0",
        "--port-file", str(url_file), "--signature-method", METHOD, *HOOK,
    ]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(code), str(REPO)]),
        "VONAGE_SIGNATURE_SECRET": SECRET,
    }
    log = folder / "receiver.log"
    with log.open("ab") as err:
        # Run from `code`: `python -m` puts the working directory first on the path, ahead of
        # PYTHONPATH, so from the repository every tree would run the repository's own code.
        process = subprocess.Popen(argv, stderr=err, stdout=subprocess.DEVNULL, env=env, cwd=code)
    try:
        yield Served(listening("sms-blaster", process, url_file, 15, log), process)
    finally:
        stop(process, timeout_s=60)


def measure(code: Path, rate: int, seconds: float, ctx: Context) -> Run:
    store = ctx.journal("receiver-cpu")
    acked_file = ctx.folder / "acked.txt"
    signed = ("--signature-secret", SECRET, "--signature-method", METHOD)
    with receiver(code, store, ctx.folder) as process, FsyncProbe(store.parent).running() as probe:
        before = process.cpu_s()
        tally = load(process.url, rate, seconds, acked_file, *signed)
        used_s = process.cpu_s() - before
    acked = set(acked_file.read_text().split())
    return Run(
        cores=used_s / tally["elapsed_s"],
        us_per_receipt=used_s / tally["count"] * 1e6,
        ack_p99_ms=tally["first_answer_ms"]["p99"],
        fsync_p99_ms=probe.p99_ms(),
        lost=len(acked - store_ids(store)),
        unacked=tally["gave_up"] + tally["unanswered"],
    )


def receiver_cpu(ctx: Context, codes: tuple[Path, ...] = (REPO,)) -> Section:
    seconds = 3.0 if ctx.quick else 10.0
    runs: dict[tuple[Path, int], list[Run]] = {(c, r): [] for c in codes for r in RATES}
    for _ in range(ctx.rounds):
        for rate in RATES:
            for code in codes:
                runs[code, rate].append(measure(code, rate, seconds, ctx))
    return section(runs, ctx, seconds)


def _name(code: Path) -> str:
    return "this repository" if code == REPO else code.name


def tree_of(code: str, folder: Path) -> Path:
    """The tree to run for `--code`: a folder as it is, a revision as its `sms_blaster` under
    `folder` (named by its short hash, as the table names it)."""
    if Path(code).is_dir():
        return Path(code).resolve()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    tree = folder / commit
    tree.mkdir(exist_ok=True)
    archive = subprocess.run(
        ["git", "archive", commit, "sms_blaster"], cwd=REPO, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def section(runs: dict[tuple[Path, int], list[Run]], ctx: Context, seconds: float) -> Section:
    lines = [
        "## Receiver: CPU a receipt, signatures on, 100 ms processing",
        "",
        f"Signed Vonage delivery receipts (POST JSON, `sig` by HMAC-SHA256) open-loop for "
        f"{WARMUP_S:g} s of warm-up and {seconds:g} s measured, {ctx.rounds_text}, each run on a "
        "fresh store; 100 ms of processing a receipt (`benchmarks.receipt_hooks:slow`) after the "
        "ack. CPU is the receiver process's user + system time over the load. The fsync p99 is "
        "the disk's own, measured meanwhile: a 4 KiB overwrite and fdatasync every 10 ms next "
        "to the store.",
        "",
        "| code | rate /s | cores | µs a receipt | cores per 1,000/s | ack p99 ms "
        "| fsync p99 ms | ack p99 over fsync p99, ms | lost | never acked |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    checks = []
    for (code, rate), results in runs.items():
        cores = [r.cores for r in results]
        per_1000 = [r.cores * 1000 / rate for r in results]
        over = [r.ack_p99_ms - r.fsync_p99_ms for r in results]
        lost = sum(r.lost for r in results)
        unacked = sum(r.unacked for r in results)
        lines.append(
            f"| {_name(code)} | {rate:,} | {median_range(cores, 2)} | "
            f"{median_range([r.us_per_receipt for r in results], 0)} | "
            f"{median_range(per_1000, 3)} | {median_range([r.ack_p99_ms for r in results], 1)} | "
            f"{median_range([r.fsync_p99_ms for r in results], 1)} | {median_range(over, 1)} | "
            f"{lost:,} | {unacked:,} |"
        )
        if code != REPO:
            continue
        checks += [
            Check(
                f"{rate:,}/s: {statistics.median(per_1000):.3f} cores per 1,000 receipts/s",
                f"≤ {TARGET_CORES_PER_1000:g}",
                statistics.median(per_1000) <= TARGET_CORES_PER_1000,
            ),
            Check(
                f"{rate:,}/s: ack p99 {statistics.median(over):+.1f} ms from the disk's fsync p99",
                f"≤ {TARGET_OVER_FSYNC_MS:g} ms",
                statistics.median(over) <= TARGET_OVER_FSYNC_MS,
            ),
            Check(
                f"{rate:,}/s: {lost:,} lost, {unacked:,} never acknowledged",
                "nothing lost",
                lost == 0 and unacked == 0,
            ),
        ]
    lines += [
        "",
        f"Command: `python -m benchmarks.receiver_cpu --rounds {ctx.rounds}"
        + (" --quick" if ctx.quick else "")
        + "`; the receiver: `VONAGE_SIGNATURE_SECRET=… sms-blaster receive --store fresh.journal "
        f"--signature-method {METHOD} {' '.join(HOOK)}`.",
    ]
    return Section(name="receiver cpu", lines=lines, checks=checks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--code", action="append", help="a revision, or a tree with sms_blaster/")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-") as folder:
        trees = Path(folder) / "trees"
        trees.mkdir()
        codes = tuple(tree_of(code, trees) for code in args.code) if args.code else (REPO,)
        result = receiver_cpu(Context(Path(folder), args.quick, args.rounds), codes)
    print("\n".join(result.lines))
    for check in result.checks:
        print(f"{'ok  ' if check.met else 'MISS'} {check.measured}: {check.target}")


if __name__ == "__main__":
    main()
