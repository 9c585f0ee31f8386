"""Run the real `sms-blaster` CLI as a process, against servers of the test's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sms_blaster.cli import main

CREDENTIALS = {"VONAGE_API_KEY": "test-key", "VONAGE_API_SECRET": "test-secret"}


@dataclass(frozen=True)
class Run:
    code: int
    stdout: bytes
    stderr: str

    @property
    def records(self) -> list[dict[str, Any]]:
        """Every stdout line parsed as JSON: fails if stdout holds anything but records."""
        return [json.loads(line) for line in self.stdout.decode().splitlines()]

    def by_line(self) -> dict[int, dict[str, Any]]:
        records = self.records
        by_line = {record["line"]: record for record in records}
        assert len(by_line) == len(records), "a row has more than one record"
        return by_line


def cli_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SMS_BLASTER_", "VONAGE_", "TWILIO_"))
    }
    return {**env, **CREDENTIALS, **extra}


async def start_cli(
    *args: str, env: dict[str, str] | None = None, stdin: bool = False
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sms_blaster",
        *args,
        stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env or cli_env(),
    )


async def run_cli(
    *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None, timeout_s: float = 60
) -> Run:
    process = await start_cli(*args, env=env, stdin=stdin is not None)
    async with asyncio.timeout(timeout_s):
        stdout, stderr = await process.communicate(stdin)
    assert process.returncode is not None
    return Run(process.returncode, stdout, stderr.decode())


def write_csv(path: Path, rows: list[tuple[str, str]], header: str = "name,phone") -> Path:
    path.write_text(header + "\n" + "".join(f"{name},{phone}\n" for name, phone in rows))
    return path


def number(n: int) -> str:
    """A valid UK mobile number (E.164 digits) ending in the four digits of `n`."""
    return f"4479111{n:05d}"


class StderrLines:
    """A process's stderr lines as they come, so a test can wait for one instead of sleeping."""

    def __init__(self, lines: list[str] | None = None) -> None:
        self.lines = [] if lines is None else lines
        self._ended = False
        self._changed = asyncio.Condition()

    async def read(self, stderr: asyncio.StreamReader) -> None:
        async for raw in stderr:
            async with self._changed:
                self.lines.append(raw.decode())
                self._changed.notify_all()
        async with self._changed:
            self._ended = True
            self._changed.notify_all()

    async def wait_for(self, text: str) -> bool:
        """Whether a line contains `text`, once one does or stderr ended."""

        def seen() -> bool:
            return any(text in line for line in self.lines)

        async with self._changed:
            await self._changed.wait_for(lambda: seen() or self._ended)
        return seen()


@dataclass
class ReceiverProcess:
    process: asyncio.subprocess.Process
    url: str
    stderr_lines: list[str] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None
    stderr: StderrLines | None = None

    async def wait_for_line(self, text: str, timeout_s: float = 10) -> bool:
        """Whether a stderr line contains `text`, once one does or stderr ended."""
        assert self.stderr is not None
        async with asyncio.timeout(timeout_s):
            return await self.stderr.wait_for(text)

    async def finish(self, timeout_s: float = 20) -> tuple[int, bytes]:
        """Wait for the exit; the exit code and everything written to stdout."""
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout_s):
            stdout = await self.process.stdout.read()
            code = await self.process.wait()
            if self.reader is not None:
                await self.reader
        return code, stdout


@contextlib.asynccontextmanager
async def receiver_process(
    *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[ReceiverProcess]:
    """`sms-blaster receive --port 0 ARGS`, running until the block ends (then killed)."""
    process = await start_cli("receive", "--port", "0", *args, env=cli_env(**(env or {})))
    assert process.stderr is not None
    stderr = process.stderr
    lines: list[str] = []
    try:
        async with asyncio.timeout(20):
            while True:
                line = (await stderr.readline()).decode()
                assert line, "the receiver exited before listening: " + "".join(lines)
                lines.append(line)
                if "listening on " in line:
                    break
        url = line.split("listening on ", 1)[1].split()[0]
        rest = StderrLines(lines)
        yield ReceiverProcess(process, url, lines, asyncio.create_task(rest.read(stderr)), rest)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def mock_provider_refusal(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    """`mock-provider ARGS`, run in-process: it must exit 2 with one `Error:` line, before
    listening; that line."""
    with pytest.raises(SystemExit) as exited:
        main(["mock-provider", "--port", "0", *args])
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("Error: ")
    return str(lines[0])
