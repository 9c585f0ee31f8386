"""Where the receiver's CPU goes, thread by thread, with no network and no load generator: the
receiver's own HTTP connections, app, store (a real journal, fsynced) and the 100 ms hook in one
process, fed signed Vonage receipts at a steady rate through connections whose sockets are
replaced by a recorder; its ack latency from each request's bytes to its answer's.

Usage: python -m benchmarks.receiver_threads [--rate R] [--seconds S] [--rounds N] [--code REV ...]

Each `--code` (a revision or a tree, as for benchmarks.receiver_cpu) runs in a process of its
own, taking turns within every round. CPU is user + system from /proc/self/task over the feed,
each thread named by what it does; the fsync p99 is the disk's own, measured meanwhile (as
receiver_cpu does). Without sockets or a second process, the figures move less with the
machine's load than receiver_cpu's, and tell the threads apart; they leave out the socket
reads and writes (about a fifth of the event loop's share in receiver_cpu).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

SECRET = "bench-signature-secret"
METHOD = "sha256"
_CONNECTIONS = 256
_TICK_S = 0.002  # the feed sleeps when it is this far ahead of the rate


class _Answers:
    """How long each request waited for its answer (seconds); `all` is set at the last."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.waited_s: list[float] = []
        # A socket's id: when each of its requests not answered yet was fed, oldest first. A
        # connection is fed again after _CONNECTIONS requests, its last maybe still unanswered
        # (an ack slower than that, on a busy machine): its answers come in order.
        self.sent: dict[int, collections.deque[float]] = {}
        self.all = asyncio.Event()


class _Socket:
    """What a connection writes its answers to: when each answer went."""

    def __init__(self, answers: _Answers) -> None:
        self._answers = answers

    def write(self, data: bytes) -> None:
        answers = self._answers
        answers.waited_s.append(time.perf_counter() - answers.sent[id(self)].popleft())
        if len(answers.waited_s) >= answers.count:
            answers.all.set()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass


def _cpu_by_thread() -> dict[str, float]:
    """CPU seconds of each thread of this process, by its Python name."""
    names = {thread.native_id: thread.name for thread in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    cpu: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        name = names.get(int(tid), "other")
        cpu[name] = cpu.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return cpu


def _request(fields: dict[str, str]) -> bytes:
    body = json.dumps(fields).encode()
    return (
        b"POST /webhooks/dlr HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAccept: */*\r\n"
        b"Accept-Encoding: gzip, deflate\r\nUser-Agent: Python/3.11 aiohttp/3.9.5\r\n"
        b"Content-Length: %d\r\nContent-Type: application/json\r\n\r\n%s" % (len(body), body)
    )


async def _feed(rate: float, seconds: float, folder: Path) -> dict[str, Any]:
    from benchmarks.receipt_load import receipt_fields
    from benchmarks.receiver_cpu import FsyncProbe
    from sms_blaster.receiver.app import ReceiverApp, load_hook
    from sms_blaster.receiver.http import Server, _Connection
    from sms_blaster.receiver.metrics import Metrics
    from sms_blaster.receiver.refusals import RefusalLog
    from sms_blaster.receiver.signatures import sign_vonage_sms
    from sms_blaster.receiver.stores.sqlite import SqliteReceiptStore
    from sms_blaster.settings import ReceiveSettings

    store_path = str(folder / "receipts.journal")
    settings = ReceiveSettings(store_path=store_path, vonage_secret=SECRET, signature_method=METHOD)
    metrics = Metrics()
    store = SqliteReceiptStore(
        store_path,
        queue_size=settings.queue_size,
        hook=load_hook("benchmarks.receipt_hooks:slow"),
        hook_concurrency=1000,
        observe_commit=metrics.observe_commit,
    )
    await store.start()
    app = ReceiverApp(settings, store, metrics)
    server = Server(app.handle, refusals=RefusalLog(logging.getLogger("bench")), metrics=metrics)
    count = int(rate * seconds)
    answers = _Answers(count)
    connections = []
    for _ in range(_CONNECTIONS):
        connection = _Connection(server)
        socket = _Socket(answers)
        connection.connection_made(socket)  # type: ignore[arg-type]
        connections.append((connection, id(socket)))
    now_s = time.time()
    requests = [
        _request(sign_vonage_sms(receipt_fields("T", n, now_s), SECRET, METHOD, now_s=now_s))
        for n in range(count)
    ]
    gc.collect()
    gc.freeze()  # as `receive` does once started
    loop = asyncio.get_running_loop()
    with FsyncProbe(folder).running() as probe:
        before = _cpu_by_thread()
        start = loop.time()
        for n, request in enumerate(requests):
            ahead_s = start + n / rate - loop.time()
            if ahead_s > _TICK_S:
                await asyncio.sleep(ahead_s)
            connection, socket_id = connections[n % len(connections)]
            answers.sent.setdefault(socket_id, collections.deque()).append(time.perf_counter())
            connection.data_received(request)
        async with asyncio.timeout(30):
            await answers.all.wait()  # the last answers: a commit or two away
        used = {
            name: (cpu_s - before.get(name, 0.0)) / count * 1e6
            for name, cpu_s in _cpu_by_thread().items()
            if name != "fsync-probe"
        }
    commits = store.stats.commits
    await store.close()
    waited_s = answers.waited_s
    measured = sorted(waited_s[len(waited_s) // 10 :])  # the first tenth warms up
    return {
        "code": str(Path(sys.modules["sms_blaster"].__file__ or "").parent.parent),
        "us_by_thread": used,
        "ack_p50_ms": measured[len(measured) // 2] * 1000,
        "ack_p99_ms": measured[int(len(measured) * 0.99)] * 1000,
        "fsync_p99_ms": probe.p99_ms(),
        "per_commit": count / commits,
    }


def _run_one(args: argparse.Namespace) -> None:
    import uvloop

    with tempfile.TemporaryDirectory(prefix="bench-") as folder:
        result = uvloop.run(_feed(args.rate, args.seconds, Path(folder)))
    print(json.dumps(result))


# The threads the table names, in its order: the event loop, the insert (commit) thread, the
# second store thread (correlation, marks, reads); the rest (the checkpointer) is summed.
_THREADS = ("MainThread", "sms-blaster-store-insert", "sms-blaster-store")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--code", action="append", help="a revision, or a tree with sms_blaster/")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        _run_one(args)
        return
    from benchmarks.receiver_cpu import tree_of
    from benchmarks.servers import REPO

    with tempfile.TemporaryDirectory(prefix="bench-") as folder:
        codes = [tree_of(code, Path(folder)) for code in args.code] if args.code else [REPO]
        runs: dict[Path, list[dict[str, Any]]] = {code: [] for code in codes}
        for _ in range(args.rounds):
            for code in codes:
                argv = [sys.executable, "-m", "benchmarks.receiver_threads", "--one",
                        "--rate", str(args.rate), "--seconds", str(args.seconds)]  # fmt: skip
                env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code), str(REPO)])}
                # From `code`: `python -m` puts the working directory first on the path.
                done = subprocess.run(argv, env=env, cwd=code, capture_output=True, text=True)
                if done.returncode:
                    sys.exit(done.stderr)
                runs[code].append(json.loads(done.stdout))
    _print(runs, args)


def _print(runs: dict[Path, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    from benchmarks.results import median_range

    print(f"{args.rate:,.0f} receipts/s for {args.seconds:g} s, {args.rounds} rounds; µs a receipt")
    print("| code | event loop | insert thread | second store thread | rest | all threads "
          "| ack p50 ms | ack p99 ms | fsync p99 ms | receipts a commit |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for code, results in runs.items():
        cells = []
        for name in _THREADS:
            cells.append(median_range([r["us_by_thread"].get(name, 0.0) for r in results]))
        rest = [
            sum(us for name, us in r["us_by_thread"].items() if name not in _THREADS)
            for r in results
        ]
        total = [sum(r["us_by_thread"].values()) for r in results]
        cells += [median_range(rest), median_range(total)]
        for key in ("ack_p50_ms", "ack_p99_ms", "fsync_p99_ms", "per_commit"):
            cells.append(median_range([r[key] for r in results], 1))
        print(f"| {code.name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
