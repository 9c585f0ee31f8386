"""Rows marked in flight while they wait in line for a window place (`Window.ready`): the next
request leaves the moment one ends, no more rows than that are ever marked ahead, and each still
takes its rate slot once it has its place."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from sms_blaster.engine import Engine, EngineConfig, Window
from sms_blaster.models import Message, Outcome, Record, SendResult, Status
from sms_blaster.preparing import PreparedOnLoop
from sms_blaster.providers.base import Exchange
from sms_blaster.ratelimit import Unlimited
from sms_blaster.run_parts import ready_places
from sms_blaster.work import RowFeed
from tests.test_engine import FAST, ListSink, batches, preparer, rows


class LoggingLedger:
    """Marks at once and logs them; `on_mark` hears each mark's line."""

    def __init__(self, log: list[str], on_mark: Callable[[int], None] = lambda line: None):
        self.log = log
        self.on_mark = on_mark
        self.marked: set[int] = set()  # marked, not settled

    def admit(self, item: Message | Record) -> Record | None:
        return None

    def inflight(self, message: Message, attempt: int) -> Awaitable[None]:
        """Marked when called, as the journal marks (a coroutine would mark once awaited)."""
        self.log.append(f"mark {message.line}")
        self.marked.add(message.line)
        self.on_mark(message.line)
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def retrying(self, message: Message, attempts: int) -> None:
        self.marked.discard(message.line)

    def settle(self, record: Record, publish: Callable[[Record], None]) -> None:
        self.marked.discard(record.line)
        publish(record)


def sent(message: Message) -> Exchange:
    return Exchange(SendResult(Outcome.SENT, "0", message_ids=(f"id-{message.line}",)), 0.05)


class LoggingLimiter(Unlimited):
    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def acquire(self, cost: float = 1.0) -> None:
        self.log.append("slot")


async def test_a_row_marked_while_the_window_is_full_leaves_as_soon_as_a_request_ends() -> None:
    """Window 1, one row marked ahead: the second row is marked while the first request is out,
    and leaves right after its answer, with no mark between (before: marked only then); its
    rate slot it takes once it has its place, as every row does."""
    log: list[str] = []
    second_marked, answer = asyncio.Event(), asyncio.Event()

    def on_mark(line: int) -> None:
        if line == 2:
            second_marked.set()

    async def provider(message: Message) -> Exchange:
        log.append(f"send {message.line}")
        if message.line == 1:
            await answer.wait()
        log.append(f"answer {message.line}")
        return sent(message)

    sink = ListSink()
    engine = Engine(
        send=provider,
        limiter=LoggingLimiter(log),
        sink=sink,
        config=EngineConfig(1, FAST, ready=1),
        ledger=LoggingLedger(log, on_mark),
    )
    task = asyncio.create_task(RowFeed(PreparedOnLoop(batches(rows(2)), preparer()), engine).run())
    try:
        async with asyncio.timeout(5):
            await second_marked.wait()
        answer.set()
        async with asyncio.timeout(5):
            await task
    finally:
        task.cancel()
    assert log == [
        *("slot", "mark 1", "send 1"),
        *("mark 2", "answer 1", "slot", "send 2", "answer 2"),
    ]
    assert {r.status for r in sink.by_line().values()} == {Status.SENT}


async def test_a_full_window_holds_no_more_rows_marked_than_its_ready_places() -> None:
    """Window 3, 2 rows marked ahead, and a provider that does not answer: 3 requests out and 5
    rows marked, never more however long it waits; once it answers, every row is sent once."""
    log: list[str] = []
    answer, all_marked = asyncio.Event(), asyncio.Event()
    out = 0

    def on_mark(line: int) -> None:
        if sum(entry.startswith("mark") for entry in log) >= 5:
            all_marked.set()

    async def provider(message: Message) -> Exchange:
        nonlocal out
        out += 1
        log.append(f"send {message.line}")
        await answer.wait()
        out -= 1
        return sent(message)

    sink, ledger = ListSink(), LoggingLedger(log, on_mark)
    engine = Engine(
        send=provider,
        limiter=Unlimited(),
        sink=sink,
        config=EngineConfig(3, FAST, ready=2),
        ledger=ledger,
    )
    task = asyncio.create_task(RowFeed(PreparedOnLoop(batches(rows(20)), preparer()), engine).run())
    try:
        async with asyncio.timeout(5):
            await all_marked.wait()
        for _ in range(50):  # turns of the loop in which nothing more may be marked or sent
            await asyncio.sleep(0)
        assert (out, len(ledger.marked)) == (3, 5)
        assert engine.window.active == 3
        answer.set()
        async with asyncio.timeout(5):
            await task
    finally:
        task.cancel()
    records = sink.by_line()
    assert len(records) == 20
    assert {r.status for r in records.values()} == {Status.SENT}
    assert sorted(entry for entry in log if entry.startswith("send")) == sorted(
        f"send {n}" for n in range(1, 21)
    )


async def test_a_stop_records_the_ready_rows_never_sent_as_stopped() -> None:
    """Window 2, 2 rows marked ahead: a fatal answer while they wait in line, and they never
    leave, and are `stopped` (pending in the ledger, so a resume sends them)."""
    log: list[str] = []
    all_marked, answer = asyncio.Event(), asyncio.Event()

    def on_mark(line: int) -> None:
        if sum(entry.startswith("mark") for entry in log) >= 4:
            all_marked.set()

    async def provider(message: Message) -> Exchange:
        log.append(f"send {message.line}")
        await answer.wait()
        return Exchange(SendResult(Outcome.FATAL, "4", "Bad Credentials"), 0.05)

    sink, ledger = ListSink(), LoggingLedger(log, on_mark)
    engine = Engine(
        send=provider,
        limiter=Unlimited(),
        sink=sink,
        config=EngineConfig(2, FAST, ready=2),
        ledger=ledger,
    )
    task = asyncio.create_task(RowFeed(PreparedOnLoop(batches(rows(10)), preparer()), engine).run())
    try:
        async with asyncio.timeout(5):
            await all_marked.wait()
        answer.set()
        async with asyncio.timeout(5):
            await task
    finally:
        task.cancel()
    assert [entry for entry in log if entry.startswith("send")] == ["send 1", "send 2"]
    assert {"mark 3", "mark 4"} <= set(log)
    records = sink.by_line()
    assert len(records) == 10
    assert all(r.status is Status.FAILED and r.error is not None for r in records.values())
    assert {records[3].error.code, records[4].error.code} == {"fatal"}  # type: ignore[union-attr]
    assert not ledger.marked  # every row marked was settled or made pending again


def test_a_journalled_run_marks_a_fifth_of_the_window_ahead() -> None:
    """The bound README states: at most a fifth of the window (at least one row) marked ahead."""
    assert [ready_places(w) for w in (1, 8, 10, 100, 1000)] == [1, 2, 2, 20, 200]


async def test_places_go_oldest_first_and_head_starts_begin_in_turn() -> None:
    """A full window of 1 with 2 head starts: the first two waiters with one begin at once, a
    waiter without one between them keeps its turn, the third begins once one is over, and the
    places are given in the order the waiters came."""
    window = Window(1, ready=2)
    assert window.take()
    begun: list[str] = []
    a = window.place(lambda: begun.append("a"))
    plain = window.place()
    b = window.place(lambda: begun.append("b"))
    c = window.place(lambda: begun.append("c"))
    assert begun == ["a", "b"]
    window.head_start_over()  # a's request left (it never needed its place, say)
    assert begun == ["a", "b", "c"]
    served = []
    for name, waiter in (("a", a), ("plain", plain), ("b", b), ("c", c)):
        window.leave(passed=False)
        assert waiter is not None
        assert waiter.done()
        served.append(name)
    assert served == ["a", "plain", "b", "c"]
    assert window.active == 1


async def test_a_waiter_whose_turn_comes_before_its_head_start_is_marked_as_any_row() -> None:
    """No head start free: the waiter gets its place without one, and never begins one after."""
    window = Window(1, ready=1)
    assert window.take()
    begun: list[str] = []
    first = window.place(lambda: begun.append("first"))
    second = window.place(lambda: begun.append("second"))
    assert begun == ["first"]
    window.leave(passed=False)  # first's turn
    window.leave(passed=False)  # second's turn, while first's head start still counts
    assert first is not None
    assert second is not None
    assert (first.done(), second.done()) == (True, True)
    window.head_start_over()
    assert begun == ["first"]
