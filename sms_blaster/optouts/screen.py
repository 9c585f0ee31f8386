"""What a run checks before each send: the opt-out list, followed while the run sends.

`send --optouts PATH` (a journal holding the list, or a CSV/JSONL/plain list) and every worker
(Redis's list, and `--optouts PATH` besides) build an `OptOutScreen`. The engine asks it about each
message just before its first request leaves (its window place and rate slot taken); a number on
the list gets a `skipped`/`opted_out` record instead of the request. A journal's list and Redis's
are read again every `FOLLOW_EVERY_S` (only what changed, by the list's change numbers), so a STOP
stored while a campaign runs stops every send to that number that leaves more than about a second
later. A file's list is read once. A dry run asks it as it reads each row.

A send answered by Twilio with 21610 (the recipient had sent STOP to that sender) adds the number
to the list it came from when that list can be written (a journal, Redis), so the next campaign
skips it before it costs a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Protocol

from sms_blaster.background import cancel
from sms_blaster.engine import Sink
from sms_blaster.errors import JournalError, OptionValueError, UsageError
from sms_blaster.journal.optouts import OptOutJournal
from sms_blaster.models import ErrorKind, Message, Record, RowError, Status
from sms_blaster.optouts.files import option_error, read_entries
from sms_blaster.optouts.model import (
    IMPORT,
    TWILIO_UNSUBSCRIBED,
    TWILIO_UNSUBSCRIBED_CODE,
    Changes,
    OptOut,
)
from sms_blaster.providers.names import ProviderName
from sms_blaster.settings import RunSettings

log = logging.getLogger("sms_blaster.optouts")

FOLLOW_EVERY_S = 1.0
OPTED_OUT = RowError(ErrorKind.OPTED_OUT, "opted_out", "the number opted out (STOP); not sent")
_SQLITE_HEADER = b"SQLite format 3\x00"


class OptOutSource(Protocol):
    """A list that can be followed (a journal's, Redis's) and written."""

    async def changes_since(self, seq: int) -> Changes: ...

    async def record(self, changes: list[OptOut]) -> int: ...


def skipped(message: Message) -> Record:
    """The record of a message to a number that opted out."""
    return Record(
        message.line, message.to, Status.SKIPPED, message.client_ref, 0, (), message.segments,
        message.encoding, error=OPTED_OUT, fingerprint=message.fingerprint,
    )  # fmt: skip


class OptOutScreen:
    """The numbers a run must not message, as its lists hold them now."""

    __slots__ = ("_numbers", "_seqs", "_sources", "_writes", "added")

    def __init__(self, numbers: set[int], sources: list[OptOutSource] | None = None) -> None:
        self._numbers = numbers
        self._sources = sources or []
        self._seqs = [0] * len(self._sources)
        self._writes: set[asyncio.Task[int]] = set()
        self.added = 0  # numbers this run added (answered 21610)

    def __call__(self, message: Message) -> Record | None:
        """The `skipped`/`opted_out` record of a message to a number on the list, else None."""
        return skipped(message) if int(message.to) in self._numbers else None

    def __contains__(self, number: int) -> bool:
        return number in self._numbers

    async def refresh(self) -> None:
        """Take in what changed in the followed lists since the last look."""
        for index, source in enumerate(self._sources):
            changes = await source.changes_since(self._seqs[index])
            self._numbers -= changes.back_in
            self._numbers |= changes.out
            self._seqs[index] = changes.last_seq

    async def follow(self, every_s: float = FOLLOW_EVERY_S) -> None:
        """Refresh every `every_s` until cancelled. A failed look is tried again; the first
        failure and the recovery are logged, not every look between (Redis may be away for the
        whole of a worker's grace)."""
        failing = False
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.refresh()
            except JournalError as exc:
                if not failing:
                    log.error("cannot read the opt-out list (trying every %g s): %s", every_s, exc)
                failing = True
                continue
            if failing:
                log.info("the opt-out list is read again")
                failing = False

    def watching(self, sink: Sink, clock: Callable[[], float] = time.time) -> Sink:
        """`sink`, seeing each record first: a send answered 21610 adds its number to the list
        (and to the first list that can be written)."""
        return _Unsubscribed(self, sink, clock)

    def unsubscribed(self, number: str, now_s: float) -> None:
        """The provider says `number` opted out: on the list from now on, and written to the
        first list that can be (in the background; `written` waits for it)."""
        self._numbers.add(int(number))
        self.added += 1
        if self._sources:
            change = OptOut(number, True, now_s, TWILIO_UNSUBSCRIBED, TWILIO_UNSUBSCRIBED_CODE)
            task = asyncio.ensure_future(self._sources[0].record([change]))
            self._writes.add(task)
            task.add_done_callback(self._written)

    def _written(self, task: asyncio.Task[int]) -> None:
        self._writes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("could not add an unsubscribed number to the opt-out list: %s",
                      task.exception())  # fmt: skip

    async def written(self) -> None:
        """Wait for the numbers added so far to be written."""
        await asyncio.gather(*self._writes, return_exceptions=True)


class _Unsubscribed:
    """A sink that hears of 21610 answers before passing each record on."""

    __slots__ = ("_clock", "_screen", "_sink")

    def __init__(self, screen: OptOutScreen, sink: Sink, clock: Callable[[], float]) -> None:
        self._screen = screen
        self._sink = sink
        self._clock = clock

    def emit(self, record: Record) -> None:
        error = record.error
        if error is not None and error.code == TWILIO_UNSUBSCRIBED_CODE:
            self._screen.unsubscribed(record.to, self._clock())
        self._sink.emit(record)


def watch_unsubscribed(
    screen: OptOutScreen | None, settings: RunSettings
) -> Callable[[Sink], Sink]:
    """What a run's records pass through on their way to `sink`: the screen's watch of 21610
    answers when the run sends through Twilio, else nothing."""
    if screen is None or settings.provider is not ProviderName.TWILIO:
        return lambda sink: sink
    return screen.watching


class JournalSource:
    """A journal's list, read and written off the event loop (one connection each way)."""

    __slots__ = ("_follow", "_path", "_reader", "_writer")

    def __init__(self, path: str, *, follow: bool = True) -> None:
        self._path = path
        self._follow = follow  # False: read once, creating nothing (a dry run)
        self._reader: OptOutJournal | None = None
        self._writer: OptOutJournal | None = None

    async def changes_since(self, seq: int) -> Changes:
        if self._reader is None:
            self._reader = await asyncio.to_thread(
                functools.partial(OptOutJournal.open_read_only, self._path, follow=self._follow)
            )
        return await asyncio.to_thread(self._reader.changes_since, seq)

    async def record(self, changes: list[OptOut]) -> int:
        if self._writer is None:
            self._writer = await asyncio.to_thread(OptOutJournal.open, self._path)
        return await asyncio.to_thread(self._writer.record, changes)

    def close(self) -> None:
        for journal in (self._reader, self._writer):
            if journal is not None:
                journal.close()


def is_journal(path: str) -> bool:
    """Whether `path` is an SQLite file (a journal); UsageError when it cannot be read."""
    try:
        with open(path, "rb") as handle:
            return handle.read(len(_SQLITE_HEADER)) == _SQLITE_HEADER
    except OSError as exc:
        raise OptionValueError(
            "--optouts",
            path,
            f"cannot read it ({exc.strerror}); give the receiver's store (a journal) "
            "or an exported list",
        ) from exc


@contextlib.asynccontextmanager
async def open_screen(
    path: str | None,
    region: str | None,
    followed: Sequence[OptOutSource] = (),
    *,
    dry_run: bool = False,
) -> AsyncIterator[OptOutScreen | None]:
    """The screen of `--optouts PATH` and the `followed` lists (Redis's), loaded and followed
    until the block ends (read once, creating nothing, for a dry run); None when there is no
    list at all. UsageError for a list that cannot be read, JournalError for a journal or Redis
    that cannot be."""
    if dry_run:
        yield await load_screen(path, region, followed)
        return
    screen, journal = await _loaded(path, region, followed, follow=True)
    if screen is None:
        yield None
        return
    try:
        following = asyncio.create_task(screen.follow(), name="optouts-follow")
        try:
            yield screen
        finally:
            await cancel(following)  # again, should a read of Redis lose the cancellation
            await screen.written()
    finally:
        if journal is not None:
            journal.close()


async def load_screen(
    path: str | None, region: str | None, followed: Sequence[OptOutSource] = ()
) -> OptOutScreen | None:
    """The screen as the lists hold it now, not followed, and nothing created beside a journal
    (for `enqueue` and a dry run)."""
    screen, journal = await _loaded(path, region, followed, follow=False)
    if journal is not None:
        journal.close()
    return screen


async def _loaded(
    path: str | None, region: str | None, followed: Sequence[OptOutSource], *, follow: bool
) -> tuple[OptOutScreen | None, JournalSource | None]:
    sources = list(followed)
    numbers: set[int] = set()
    journal = None
    if path is not None:
        if is_journal(path):
            journal = JournalSource(path, follow=follow)
            sources.append(journal)
        else:
            try:
                entries = await asyncio.to_thread(
                    read_entries, path, region, source=IMPORT, now_s=time.time()
                )
            except OptionValueError:
                raise
            except UsageError as exc:
                raise option_error("--optouts", path, exc) from exc
            numbers = {int(entry.number) for entry in entries if entry.opted_out}
    if path is None and not sources:
        return None, None
    screen = OptOutScreen(numbers, sources)
    try:
        await screen.refresh()
    except BaseException:
        if journal is not None:
            journal.close()
        raise
    return screen, journal
