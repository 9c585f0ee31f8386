"""The resident memory of a command and every process it starts, summed.

GNU time's `%M` reports one process (and the largest of its waited-for children, not their
sum), so a run that prepares rows in a second process needs its tree sampled: every
`period_s`, the VmRSS of the process and all its descendants (from /proc) is added up, and
the largest sum is the peak. A peak shorter than the period can be missed; the per-row growth
the benchmark looks for is not that short.

A forked child shares its parent's pages until either writes them, and VmRSS counts a shared
page in every process that maps it: the sum of VmRSS overstates a forked tree. The sum of the
proportional set size (Pss: a shared page split among its sharers) is the tree's fair share, and
is sampled beside it; it also splits the pages shared with processes outside the tree (the
C libraries any other Python on the machine maps), so it reads somewhat low.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True, slots=True)
class TreeRun:
    elapsed_s: float  # wall time of the command
    returncode: int
    stderr: str
    peak_tree_kb: int  # the largest sum of VmRSS over the tree seen in one sample
    peak_tree_pss_kb: int  # the largest sum of Pss over the tree seen in one sample
    peak_processes: int  # the most processes seen in the tree in one sample
    samples: int


def children_of() -> dict[int, list[int]]:
    """Parent pid -> child pids, for every process /proc shows now."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # The command name, in parentheses, may hold spaces: the fields follow the last ")".
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # it exited meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def tree(root: int) -> list[int]:
    """`root` and all its descendants, as /proc shows them now."""
    children = children_of()
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def rss_kb(pid: int) -> int:
    """VmRSS of `pid` in kB; 0 once it is gone (or a zombie, which has no VmRSS line)."""
    return _field_kb(PROC / str(pid) / "status", "VmRSS:")


def pss_kb(pid: int) -> int:
    """The proportional set size of `pid` in kB; 0 once it is gone."""
    return _field_kb(PROC / str(pid) / "smaps_rollup", "Pss:")


def _field_kb(path: Path, name: str) -> int:
    try:
        for line in path.read_text().splitlines():
            if line.startswith(name):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run(
    argv: Sequence[str],
    env: Mapping[str, str],
    timeout_s: float,
    cwd: Path | None = None,
    period_s: float = 0.1,
) -> TreeRun:
    """Run `argv` to its end, sampling its process tree's resident memory every `period_s`;
    its stdout is discarded. subprocess.TimeoutExpired (after killing it) past `timeout_s`."""
    started = time.perf_counter()
    peak_kb = peak_pss_kb = peak_processes = samples = 0
    # stderr to a file, read after the end: a pipe left unread could fill and stop the command.
    with (
        open(os.devnull, "wb") as null,
        tempfile.TemporaryFile() as err,
        subprocess.Popen(argv, env=env, cwd=cwd, stdout=null, stderr=err) as process,
    ):
        while process.poll() is None:
            if time.perf_counter() - started > timeout_s:
                process.kill()
                process.wait()
                raise subprocess.TimeoutExpired(list(argv), timeout_s)
            pids = tree(process.pid)
            peak_kb = max(peak_kb, sum(rss_kb(pid) for pid in pids))
            peak_pss_kb = max(peak_pss_kb, sum(pss_kb(pid) for pid in pids))
            peak_processes = max(peak_processes, len(pids))
            samples += 1
            time.sleep(period_s)
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    elapsed_s = time.perf_counter() - started
    return TreeRun(
        elapsed_s, process.returncode, stderr, peak_kb, peak_pss_kb, peak_processes, samples
    )
