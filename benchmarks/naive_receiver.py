"""A naive delivery-receipt handler, for comparison: process, store, then answer.

Usage: python -m benchmarks.naive_receiver STORE PORT_FILE [PROCESSING_S]

What a typical webhook handler does: for each Vonage DLR it does its processing (100 ms, like
`benchmarks.receipt_hooks:slow`), inserts the receipt into SQLite and commits (WAL,
synchronous=FULL, the same durability as `sms-blaster receive`), and only then answers 204.
The URL it listens on (a free loopback port) is written to PORT_FILE.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path

import uvloop
from aiohttp import web

SCHEMA = """
CREATE TABLE IF NOT EXISTS receipts (
    message_id  TEXT PRIMARY KEY,
    status      TEXT NOT NULL,
    client_ref  TEXT,
    received_at REAL NOT NULL,
    payload     TEXT NOT NULL
)
"""
_DB = web.AppKey("db", sqlite3.Connection)
_PROCESSING_S = web.AppKey("processing_s", float)


async def dlr(request: web.Request) -> web.Response:
    if request.method == "GET":
        fields = dict(request.query)
    elif request.content_type == "application/json":
        fields = await request.json()
    else:
        fields = {key: str(value) for key, value in (await request.post()).items()}
    await asyncio.sleep(request.app[_PROCESSING_S])
    # One statement in autocommit mode: its own transaction, on disk before the answer.
    request.app[_DB].execute(
        "INSERT OR IGNORE INTO receipts VALUES (?, ?, ?, ?, ?)",
        (
            fields["messageId"],
            fields["status"],
            fields.get("client-ref"),
            time.time(),
            json.dumps(fields),
        ),
    )
    return web.Response(status=204)


async def serve(store: str, processing_s: float, ready: Callable[[str], None]) -> None:
    db = sqlite3.connect(store, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.execute(SCHEMA)
    app = web.Application()
    app[_DB] = db
    app[_PROCESSING_S] = processing_s
    app.router.add_route("*", "/webhooks/dlr", dlr)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    host, port = runner.addresses[0][:2]
    ready(f"http://{host}:{port}")
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        db.close()


def main() -> None:
    processing_s = float(sys.argv[3]) if len(sys.argv) > 3 else 0.1
    port_file = Path(sys.argv[2])

    def ready(url: str) -> None:
        port_file.write_text(url + "\n")

    uvloop.run(serve(sys.argv[1], processing_s, ready))


if __name__ == "__main__":
    main()
