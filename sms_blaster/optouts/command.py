"""`sms-blaster optouts list|add|remove|import|export`: the opt-out list of a journal or of Redis.

Each subcommand is a coroutine over a `ListStore` (the journal's list, or Redis's) that returns
its exit code; what is wrong with its input is a UsageError before anything is written.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import BinaryIO, Protocol, TextIO

from sms_blaster import logs
from sms_blaster.errors import UsageError
from sms_blaster.inputs import InputFormat
from sms_blaster.journal.optouts import OptOutJournal
from sms_blaster.optouts.files import read_entries, write_entries
from sms_blaster.optouts.model import IMPORT, MANUAL, OptOut, phone_number


class ListStore(Protocol):
    """Where the list is kept."""

    async def record(self, changes: Sequence[OptOut]) -> int: ...

    async def entries(self, *, opted_out_only: bool = False) -> list[OptOut]: ...

    async def close(self) -> None: ...


class _JournalList:
    __slots__ = ("_journal", "_path")

    def __init__(self, path: str) -> None:
        self._path = path
        self._journal: OptOutJournal | None = None

    async def _open(self) -> OptOutJournal:
        if self._journal is None:
            self._journal = await asyncio.to_thread(OptOutJournal.open, self._path)
        return self._journal

    async def record(self, changes: Sequence[OptOut]) -> int:
        return await asyncio.to_thread((await self._open()).record, changes)

    async def entries(self, *, opted_out_only: bool = False) -> list[OptOut]:
        journal = await self._open()
        return await asyncio.to_thread(lambda: journal.entries(opted_out_only=opted_out_only))

    async def close(self) -> None:
        if self._journal is not None:
            self._journal.close()


class _RedisList:
    __slots__ = ("_list", "_redis", "_url")

    def __init__(self, url: str) -> None:
        from sms_blaster.distributed.optouts import RedisOptOuts
        from sms_blaster.distributed.redis_client import connect

        self._url = url
        self._redis = connect(url, 2)
        self._list = RedisOptOuts(self._redis)

    async def record(self, changes: Sequence[OptOut]) -> int:
        from sms_blaster.distributed.redis_client import ping

        await ping(self._redis, self._url)
        return await self._list.record(changes)

    async def entries(self, *, opted_out_only: bool = False) -> list[OptOut]:
        from sms_blaster.distributed.redis_client import ping

        await ping(self._redis, self._url)
        return await self._list.entries(opted_out_only=opted_out_only)

    async def close(self) -> None:
        await self._redis.aclose(close_connection_pool=True)


def list_store(store_path: str | None, redis_url: str | None) -> ListStore:
    """The list of `--store JOURNAL` or `--redis URL`, one of the two."""
    if (store_path is None) == (redis_url is None):
        raise UsageError(
            "optouts: give --store JOURNAL (the receiver's store) or --redis URL, one of the two"
        )
    if store_path is not None:
        if not os.path.isfile(store_path):
            raise UsageError(
                f"--store {store_path}: no such journal; give the receiver's --store file"
            )
        return _JournalList(store_path)
    assert redis_url is not None
    return _RedisList(redis_url)


async def run_list(store: ListStore, out: TextIO, *, show_all: bool) -> int:
    """The numbers out (all entries with `show_all`), one a line."""
    try:
        entries = await store.entries(opted_out_only=not show_all)
    finally:
        await store.close()
    for entry in entries:
        when = dt.datetime.fromtimestamp(entry.at_s, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        state = "out" if entry.opted_out else "in"
        fields = (entry.number, state, when, _shown(entry.source), _shown(entry.reason))
        out.write("\t".join(fields).rstrip())
        out.write("\n")
    return 0


# Controls (a tab or a newline would split the line's fields; an escape sequence would drive the
# terminal), shown escaped as Python writes them.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def _shown(text: str) -> str:
    return _CONTROL.sub(lambda found: ascii(found.group())[1:-1], text)


async def run_change(
    store: ListStore, numbers: Sequence[str], opted_out: bool, reason: str, region: str | None
) -> int:
    """Opt `numbers` out (or back in), as of now."""
    now_s = time.time()
    changes = []
    for value in numbers:
        number = phone_number(value, region)
        if number is None:
            hint = "" if region else " (a national number needs --default-region)"
            raise UsageError(f"{value!r} is not a valid number{hint}; fix or remove it")
        changes.append(OptOut(number, opted_out, now_s, MANUAL, reason))
    try:
        await store.record(changes)
    finally:
        await store.close()
    return 0


async def run_import(
    store: ListStore, path: str, region: str | None, stdin: BinaryIO | None
) -> int:
    """Add the entries of a list (all read and checked before any is written)."""
    try:
        entries = await asyncio.to_thread(
            read_entries, path, region, source=IMPORT, now_s=time.time(), stdin=stdin
        )
        changed = await store.record(entries)
    finally:
        await store.close()
    logs.say(
        sys.stderr,
        f"sms-blaster: {len(entries):,} entries read, {changed:,} changed the list",
        read=len(entries),
        changed=changed,
    )
    return 0


async def run_export(store: ListStore, path: str, list_format: str, stdout: TextIO) -> int:
    """Write every entry as CSV or JSONL to `path` ("-": stdout)."""
    fmt = _format(path, list_format)
    try:
        entries = await store.entries()
    finally:
        await store.close()
    if path == "-":
        write_entries(entries, stdout, fmt)
        stdout.flush()
        return 0
    await asyncio.to_thread(_write_file, path, entries, fmt)
    return 0


def _write_file(path: str, entries: list[OptOut], fmt: InputFormat) -> None:
    try:
        with open(path, "w", encoding="utf-8", newline="") as out:
            write_entries(entries, out, fmt)
    except OSError as exc:
        raise UsageError(f"{path}: cannot write the list ({exc.strerror})") from exc


def _format(path: str, list_format: str) -> InputFormat:
    if list_format != "auto":
        return InputFormat(list_format)
    return InputFormat.JSONL if path.endswith((".jsonl", ".ndjson")) else InputFormat.CSV
