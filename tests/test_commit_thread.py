"""The commit thread's gather: a thread woken by a first callback waits for more only while
callbacks come fast, and never makes a callback that waited for a commit under way wait again.

The thread's clock and sleep are the test's: its sleep tells the loop it was called, then blocks
until the test lets it go, so each test knows what the thread does without timing it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

from sms_blaster.models import Receipt, ReceiptKind, StoredReceipt
from sms_blaster.receiver.stores.base import StoreStats, Waiting
from sms_blaster.receiver.stores.commit_thread import CommitThread, Outcome

_GATHER_S = 0.002
# Callbacks fed one at a time until the thread gathers: it decides when a callback wakes it, and a
# thread still on its way back to sleep when the next comes takes it without (on a busy machine,
# again and again); the rate is known after four.
_TRIES = 500


class Clock:
    """Seconds the test moves on; read by the commit thread."""

    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


class Sleeper:
    """The thread's sleep: each call is recorded and announced to the loop, and returns once the
    test lets it go."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.calls: list[float] = []
        self.called: asyncio.Future[None] = loop.create_future()
        self._go = threading.Event()

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        self._loop.call_soon_threadsafe(self._announce)
        assert self._go.wait(10), "the test never let the thread's sleep end"
        self._go.clear()

    def _announce(self) -> None:
        if not self.called.done():
            self.called.set_result(None)

    def end(self) -> None:
        self.called = self._loop.create_future()
        self._go.set()


class Writer:
    """The thread's write: records each group; blocks while `hold` is clear."""

    def __init__(self) -> None:
        self.groups: list[list[str]] = []
        self.hold = threading.Event()
        self.hold.set()
        self.writing = threading.Event()
        self._next_id = 0

    def __call__(self, receipts: list[Receipt]) -> Sequence[StoredReceipt | None]:
        self.writing.set()
        assert self.hold.wait(10), "the test never let the write end"
        self.groups.append([receipt.message_id for receipt in receipts])
        stored = []
        for receipt in receipts:
            self._next_id += 1
            stored.append(StoredReceipt(self._next_id, receipt, 0.0))
        return stored


def _receipt(n: int) -> Receipt:
    return Receipt(
        provider="vonage-sms",
        kind=ReceiptKind.DLR,
        message_id=f"M{n}",
        status="delivered",
        delivery=None,
        to=None,
        sender=None,
        client_ref=None,
        error_code="",
        price=None,
        event_at=None,
        payload="{}",
    )


def _settle(group: list[Waiting], outcome: Outcome, elapsed_s: float) -> None:
    assert not isinstance(outcome, Exception)
    for (_, done), item in zip(group, outcome, strict=True):
        done.set_result(item is not None)


async def _started(clock: Clock, sleeper: Sleeper, writer: Writer) -> CommitThread:
    intake = CommitThread(
        100,
        StoreStats(),
        writer,
        _settle,
        most=512,
        name="test-commit",
        gather_s=_GATHER_S,
        group=3,
        clock=clock,
        sleep=sleeper,
    )
    intake.start()
    return intake


async def _alone_or_gathered(
    intake: CommitThread, sleeper: Sleeper, clock: Clock, n: int, apart_s: float
) -> bool:
    """Submit one callback `apart_s` after the last; True once it is committed alone, False
    when the thread sleeps on it instead (a gather)."""
    clock.now_s += apart_s
    done = intake.submit(_receipt(n))
    either: set[asyncio.Future[Any]] = {done, sleeper.called}
    await asyncio.wait(either, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    if done.done():
        return True
    assert sleeper.called.done()
    return False


async def test_callbacks_that_come_fast_gather_once_the_rate_is_known() -> None:
    """At 1,000 callbacks/s, each first committed alone, the thread soon waits up to the gather
    for the next two: those that come meanwhile share the first one's commit."""
    loop = asyncio.get_running_loop()
    clock, sleeper, writer = Clock(), Sleeper(loop), Writer()
    intake = await _started(clock, sleeper, writer)
    try:
        n = 0
        while await _alone_or_gathered(intake, sleeper, clock, n, 0.001):
            n += 1
            assert n < _TRIES, "the thread never gathered at 1,000 callbacks/s"
        assert sleeper.calls == [_GATHER_S]  # two more at ~1,000/s take 2 ms: the gather's most
        first = n
        others = [intake.submit(_receipt(first + 1)), intake.submit(_receipt(first + 2))]
        sleeper.end()
        await asyncio.wait_for(asyncio.gather(*others), 10)
    finally:
        await intake.stop()
    assert writer.groups[:first] == [[f"M{k}"] for k in range(first)]
    assert writer.groups[first:] == [[f"M{first}", f"M{first + 1}", f"M{first + 2}"]]


async def test_sparse_callbacks_are_committed_at_once() -> None:
    """One callback a second: fewer than one more expected within the gather, so none waits."""
    loop = asyncio.get_running_loop()
    clock, sleeper, writer = Clock(), Sleeper(loop), Writer()
    intake = await _started(clock, sleeper, writer)
    try:
        for n in range(20):
            assert await _alone_or_gathered(intake, sleeper, clock, n, 1.0)
    finally:
        await intake.stop()
    assert sleeper.calls == []
    assert writer.groups == [[f"M{n}"] for n in range(20)]


async def test_callbacks_that_waited_for_a_commit_under_way_do_not_wait_again() -> None:
    """Fast callbacks that come while a commit runs are the next group the moment it ends: the
    thread was not asleep, so no gather holds them."""
    loop = asyncio.get_running_loop()
    clock, sleeper, writer = Clock(), Sleeper(loop), Writer()
    intake = await _started(clock, sleeper, writer)
    try:
        n = 0
        while await _alone_or_gathered(intake, sleeper, clock, n, 0.001):
            n += 1
            assert n < _TRIES, "the thread never gathered at 1,000 callbacks/s"
        writer.hold.clear()  # the gathered commit will run until the test lets it end
        writer.writing.clear()
        sleeper.end()
        assert await asyncio.to_thread(writer.writing.wait, 10)
        clock.now_s += 0.001
        later = [intake.submit(_receipt(n + 1)), intake.submit(_receipt(n + 2))]
        writer.hold.set()
        await asyncio.wait_for(asyncio.gather(*later), 10)
    finally:
        await intake.stop()
    assert len(sleeper.calls) == 1  # the gather before the held commit only
    assert writer.groups[-2:] == [[f"M{n}"], [f"M{n + 1}", f"M{n + 2}"]]
