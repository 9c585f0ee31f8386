"""Headless Chromium driven over the DevTools protocol with aiohttp's websocket client.

`chromium(tmp_path)` starts Debian's chromium on a free debugging port, read from the line it
writes on stderr once it listens (the `DevToolsActivePort` file that says the same comes a moment
later: waiting for it would take a poll), and gives a `Page`: load a URL, evaluate JavaScript,
size the viewport, take a screenshot, and hear every console error and uncaught exception.
Without chromium a test is skipped, except in CI (`CI=true`), where it fails.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
)
START_TIMEOUT_S = 30.0


def chromium_path() -> str:
    """The chromium binary; skips the test without one (fails it in CI)."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    reason = "chromium is not installed (Debian: apt-get install chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason + "; CI must run the browser tests")
    pytest.skip(reason)


def artifacts_dir() -> Path:
    """Where a test keeps what CI shows: $CI_ARTIFACTS_DIR, else .ci/artifacts of the repo."""
    given = os.environ.get("CI_ARTIFACTS_DIR")
    path = Path(given) if given else Path(__file__).resolve().parent.parent / ".ci" / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path


class Page:
    """One tab, over its websocket: commands answered by id, events kept as they come."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self._socket = socket
        self._ids = itertools.count(1)
        self._answers: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._loaded = asyncio.Event()
        self.errors: list[str] = []  # console errors, uncaught exceptions, error log entries
        self._reader = asyncio.create_task(self._read())

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """A command's result; AssertionError when the browser answers with an error."""
        command_id = next(self._ids)
        answer = asyncio.get_running_loop().create_future()
        self._answers[command_id] = answer
        await self._socket.send_json({"id": command_id, "method": method, "params": params})
        message = await answer
        assert "error" not in message, f"{method}: {message['error']}"
        result: dict[str, Any] = message.get("result", {})
        return result

    async def load(self, url: str) -> None:
        """Navigate and wait for the load event."""
        self._loaded.clear()
        await self.send("Page.navigate", url=url)
        await self._loaded.wait()

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (JSON-able)."""
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    async def screenshot(self, path: Path) -> None:
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        await asyncio.to_thread(path.write_bytes, base64.b64decode(shot["data"]))

    async def _read(self) -> None:
        async for message in self._socket:
            if message.type is not aiohttp.WSMsgType.TEXT:
                continue
            data = message.json()
            if "id" in data:
                answer = self._answers.pop(data["id"], None)
                if answer is not None and not answer.done():
                    answer.set_result(data)
                continue
            self._event(data.get("method", ""), data.get("params", {}))
        for answer in self._answers.values():
            if not answer.done():
                answer.set_exception(AssertionError("the browser closed its websocket"))

    def _event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Page.loadEventFired":
            self._loaded.set()
        elif method == "Runtime.exceptionThrown":
            self.errors.append(str(params["exceptionDetails"]))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.errors.append(str(params.get("args")))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            self.errors.append(str(params["entry"].get("text")))

    async def close(self) -> None:
        await self._socket.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@contextlib.asynccontextmanager
async def chromium(tmp_path: Path) -> AsyncIterator[Page]:
    """A headless chromium with one tab, its console and log followed; killed at the end."""
    binary = chromium_path()
    profile = tmp_path / "chromium-profile"
    process = await asyncio.create_subprocess_exec(
        binary, *FLAGS, f"--user-data-dir={profile}", "about:blank",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            while b"DevTools listening on" not in (line := await process.stderr.readline()):
                assert line, "chromium exited before listening"
        # "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/<id>"
        port = line.decode().split("ws://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1]
        drain = asyncio.create_task(_drain(process.stderr))
        async with aiohttp.ClientSession() as session:
            async with session.put(f"http://127.0.0.1:{port}/json/new?about:blank") as response:
                target = await response.json()
            socket = await session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
            page = Page(socket)
            try:
                for domain in ("Page", "Runtime", "Log"):
                    await page.send(f"{domain}.enable")
                yield page
            finally:
                await page.close()
        drain.cancel()
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def _drain(stream: asyncio.StreamReader) -> None:
    """Chromium's stderr, read so a full pipe never blocks it."""
    while await stream.read(1 << 16):
        pass
