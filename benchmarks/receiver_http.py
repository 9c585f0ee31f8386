"""What the receiver's HTTP layer alone costs a callback: three servers that read a receipt's JSON
body and answer 204, at 1,000 receipts/s from `benchmarks.receipt_load`, CPU a request each.

Usage: python -m benchmarks.receiver_http [--rounds N] [--seconds S]  ->  a table

    web        aiohttp's web.Application and AppRunner, routing as the receiver does
    low-level  aiohttp.web_server.Server: aiohttp's parser and request, no application or router
    protocol   an asyncio.Protocol with httptools' parser and a prebuilt answer (keep-alive only)

`python -m benchmarks.receiver_http --serve KIND URL_FILE` runs one of them (uvloop), alone in
its process, so its CPU is its own. The servers take turns within each round.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import uvloop

from benchmarks.receiver_latency import WARMUP_S, load
from benchmarks.servers import served

KINDS = ("web", "low-level", "protocol")
RATE = 1000


def _ready(url_file: Path, url: str) -> None:
    url_file.write_text(url + "\n")


async def _serve_web(url_file: Path) -> None:
    from aiohttp import web

    async def dlr(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/webhooks/dlr", dlr)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    _ready(url_file, f"http://{host}:{port}")
    await asyncio.Event().wait()


async def _serve_low_level(url_file: Path) -> None:
    from aiohttp import web, web_server

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        await request.read()
        return web.Response(status=204)

    server = web_server.Server(handle, access_log=None)
    listener = await asyncio.get_running_loop().create_server(server, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    _ready(url_file, f"http://127.0.0.1:{port}")
    await asyncio.Event().wait()


_NO_CONTENT = b"HTTP/1.1 204 No Content\r\nServer: bench\r\n\r\n"


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        import httptools

        self._parser = httptools.HttpRequestParser(self)
        self._body: list[bytes] = []
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: Any) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        b"".join(self._body)
        self._body.clear()
        assert self._transport is not None
        self._transport.write(_NO_CONTENT)


async def _serve_protocol(url_file: Path) -> None:
    listener = await asyncio.get_running_loop().create_server(_Connection, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    _ready(url_file, f"http://127.0.0.1:{port}")
    await asyncio.Event().wait()


SERVERS = {"web": _serve_web, "low-level": _serve_low_level, "protocol": _serve_protocol}


def measure(kind: str, seconds: float, folder: Path) -> float:
    """CPU microseconds a request of the server `kind` at RATE/s."""
    url_file = folder / f"{kind}.url"
    url_file.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "benchmarks.receiver_http", "--serve", kind, str(url_file)]
    with served(argv, url_file, folder / f"{kind}.log") as server:
        before = server.cpu_s()
        tally = load(server.url, RATE, seconds, folder / "acked")
        used_s = server.cpu_s() - before
    return used_s / tally["count"] * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--serve", nargs=2, metavar=("KIND", "URL_FILE"))
    args = parser.parse_args()
    if args.serve:
        kind, url_file = args.serve
        uvloop.run(SERVERS[kind](Path(url_file)))
        return
    runs: dict[str, list[float]] = {kind: [] for kind in KINDS}
    with tempfile.TemporaryDirectory(prefix="bench-http-") as name:
        for _ in range(args.rounds):
            for kind in KINDS:
                runs[kind].append(measure(kind, args.seconds, Path(name)))
    print(f"{RATE:,} receipts/s, {WARMUP_S:g} s warm-up + {args.seconds:g} s, {args.rounds} rounds")
    print("| server | CPU µs a request, median (range) |")
    print("|---|---|")
    for kind, values in runs.items():
        print(f"| {kind} | {statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f}) |")


if __name__ == "__main__":
    main()
