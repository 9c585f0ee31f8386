"""What handing an fsync to a thread costs the event loop: an executor's future chained to an
asyncio one, against a thread of its own fed by a queue that calls back once.

Each way runs `--fsyncs` fsyncs of a small file one after another (the journal runs one at a
time), the two ways taking turns; the figure is the loop thread's own CPU time (not wall time,
which the machine's other work would swamp) an fsync.
Run: `python -m benchmarks.fsync_handoff [--fsyncs N] [--rounds R]`.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import queue
import statistics
import tempfile
import threading
import time


def _fsync(fd: int) -> None:
    os.pwrite(fd, b"x" * 100, 0)
    os.fdatasync(fd)


async def executor_way(fd: int, fsyncs: int) -> float:
    loop = asyncio.get_running_loop()
    pool = concurrent.futures.ThreadPoolExecutor(1)
    finished = asyncio.Event()
    count = 0

    def synced(_: asyncio.Future[None]) -> None:
        nonlocal count
        count += 1
        if count < fsyncs:
            loop.run_in_executor(pool, _fsync, fd).add_done_callback(synced)
        else:
            finished.set()

    started = time.thread_time()
    loop.run_in_executor(pool, _fsync, fd).add_done_callback(synced)
    await finished.wait()
    elapsed = time.thread_time() - started
    pool.shutdown()
    return elapsed / fsyncs * 1e6


async def thread_way(fd: int, fsyncs: int) -> float:
    loop = asyncio.get_running_loop()
    wanted: queue.SimpleQueue[bool] = queue.SimpleQueue()
    finished = asyncio.Event()
    count = 0

    def synced() -> None:
        nonlocal count
        count += 1
        if count < fsyncs:
            wanted.put(True)
        else:
            finished.set()

    def run() -> None:
        while wanted.get():
            _fsync(fd)
            loop.call_soon_threadsafe(synced)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    started = time.thread_time()
    wanted.put(True)
    await finished.wait()
    elapsed = time.thread_time() - started
    wanted.put(False)
    thread.join()
    return elapsed / fsyncs * 1e6


async def measure(fsyncs: int, rounds: int) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {"executor": [], "own thread": []}
    with tempfile.NamedTemporaryFile() as file:
        for _ in range(rounds):
            found["executor"].append(await executor_way(file.fileno(), fsyncs))
            found["own thread"].append(await thread_way(file.fileno(), fsyncs))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fsyncs", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    found = asyncio.run(measure(args.fsyncs, args.rounds))
    print(f"{args.fsyncs:,} fsyncs, {args.rounds} rounds: the loop's CPU µs an fsync")
    for name, figures in found.items():
        print(
            f"{name:10} {statistics.median(figures):6.1f} ({min(figures):.1f}-{max(figures):.1f})"
        )


if __name__ == "__main__":
    main()
