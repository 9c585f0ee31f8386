"""The engine with a fake provider: one record per row, retries, stops and aborts."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from sms_blaster.engine import Engine, EngineConfig, StopReason, Window
from sms_blaster.models import (
    Encoding,
    ErrorKind,
    InputRow,
    Message,
    Outcome,
    Record,
    RowError,
    SendResult,
    Status,
)
from sms_blaster.prepare import Preparer, compile_template
from sms_blaster.preparing import PreparedOnLoop
from sms_blaster.providers.base import Exchange
from sms_blaster.ratelimit import Unlimited
from sms_blaster.retry import CONNECT_ERROR, RetryPolicy, SilentStart
from sms_blaster.work import PrepaidClaims, RowFeed

FAST = RetryPolicy(retries=3, base_s=0.0, cap_s=0.0)


class ListSink:
    def __init__(self) -> None:
        self.records: list[Record] = []

    def emit(self, record: Record) -> None:
        self.records.append(record)

    def by_line(self) -> dict[int, Record]:
        lines = Counter(record.line for record in self.records)
        assert all(count == 1 for count in lines.values()), "a row has more than one record"
        return {record.line: record for record in self.records}


def rows(count: int, start: int = 447911120000) -> list[InputRow]:
    return [InputRow(n, {"to": f"+{start + n}", "name": f"n{n}"}) for n in range(1, count + 1)]


async def batches(items: list[InputRow], size: int = 7) -> AsyncIterator[list[InputRow]]:
    for index in range(0, len(items), size):
        yield items[index : index + size]


def preparer() -> Preparer:
    return Preparer(to_column="to", template=compile_template("Hi {name}"), campaign="camp")


class FakeProvider:
    """Answers from a script keyed by the number's last digit; counts what it was sent."""

    def __init__(self, answer: Callable[[Message, int], SendResult]) -> None:
        self.answer = answer
        self.sent: Counter[str] = Counter()

    async def __call__(self, message: Message) -> Exchange:
        self.sent[message.to] += 1
        await asyncio.sleep(0)
        return Exchange(self.answer(message, self.sent[message.to]), 0.001)


def ok(message: Message, attempt: int) -> SendResult:
    return SendResult(Outcome.SENT, "0", message_ids=(f"id-{message.line}",))


def engine_for(provider: FakeProvider, sink: ListSink, window: int = 3) -> Engine:
    return Engine(
        send=provider,
        limiter=Unlimited(),
        sink=sink,
        config=EngineConfig(window, FAST),
    )


async def test_every_row_gets_exactly_one_record_and_every_message_is_sent_once() -> None:
    """100 rows, 100 records, 100 sends."""
    provider, sink = FakeProvider(ok), ListSink()
    await RowFeed(PreparedOnLoop(batches(rows(100)), preparer()), engine_for(provider, sink)).run()
    assert len(sink.by_line()) == 100
    assert all(record.status is Status.SENT for record in sink.records)
    assert set(provider.sent.values()) == {1}


async def test_invalid_and_duplicate_rows_are_recorded_without_sending() -> None:
    """Rows refused by preparation never reach the provider."""
    items = [*rows(3), InputRow(4, {"to": "nope", "name": "x"}), InputRow(5, rows(1)[0].fields)]
    provider, sink = FakeProvider(ok), ListSink()
    await RowFeed(PreparedOnLoop(batches(items), preparer()), engine_for(provider, sink)).run()
    records = sink.by_line()
    assert records[4].error is not None
    assert records[4].error.kind is ErrorKind.INVALID_INPUT
    assert records[5].status is Status.SKIPPED
    assert sum(provider.sent.values()) == 3


async def test_throttled_and_transient_answers_are_retried_until_sent() -> None:
    """A throttle then a transient error then success: sent, in three attempts."""
    script = [Outcome.THROTTLED, Outcome.TRANSIENT, Outcome.SENT]
    provider, sink = FakeProvider(lambda m, n: SendResult(script[n - 1])), ListSink()
    engine = engine_for(provider, sink)
    await RowFeed(PreparedOnLoop(batches(rows(5)), preparer()), engine).run()
    assert {(r.status, r.attempts) for r in sink.records} == {(Status.SENT, 3)}
    assert engine.counters.throttled == 5


async def test_retries_run_out_as_exhausted() -> None:
    """A transient error on every attempt ends failed/exhausted after 1 + retries attempts."""
    provider = FakeProvider(lambda m, n: SendResult(Outcome.TRANSIENT, "5", "Internal Error"))
    sink = ListSink()
    await RowFeed(PreparedOnLoop(batches(rows(2)), preparer()), engine_for(provider, sink)).run()
    for record in sink.records:
        assert record.status is Status.FAILED
        assert record.attempts == 1 + FAST.retries
        assert record.error is not None
        assert (record.error.kind, record.error.code) == (ErrorKind.EXHAUSTED, "5")


def refused(message: Message, attempt: int) -> SendResult:
    return SendResult(Outcome.TRANSIENT, CONNECT_ERROR, "cannot connect: Connection refused")


async def test_failed_connections_do_not_use_up_the_retries_of_a_row() -> None:
    """Five refused connections, then the provider answers: sent, though --retries is 1."""
    provider = FakeProvider(lambda m, n: refused(m, n) if n <= 5 else ok(m, n))
    sink = ListSink()
    engine = Engine(
        send=provider,
        limiter=Unlimited(),
        sink=sink,
        config=EngineConfig(3, RetryPolicy(retries=1, base_s=0.0, cap_s=0.0)),
    )
    await RowFeed(PreparedOnLoop(batches(rows(4)), preparer()), engine).run()
    assert {(r.status, r.attempts) for r in sink.records} == {(Status.SENT, 6)}


async def test_a_row_past_the_cap_of_failed_connections_says_the_provider_was_unreachable() -> None:
    """No --unreachable-timeout and a provider never reached: the row still ends, exhausted,
    with the code `unreachable`."""
    sink = ListSink()
    engine = Engine(
        send=FakeProvider(refused),
        limiter=Unlimited(),
        sink=sink,
        config=EngineConfig(3, RetryPolicy(retries=1, base_s=0.0, cap_s=0.0, connect_retries=2)),
    )
    await RowFeed(PreparedOnLoop(batches(rows(2)), preparer()), engine).run()
    for record in sink.records:
        assert (record.status, record.attempts) == (Status.FAILED, 3)
        assert record.error is not None
        assert (record.error.kind, record.error.code) == (ErrorKind.EXHAUSTED, "unreachable")
        assert record.error.message.startswith("no connection to the provider in 3 attempts: ")


async def test_an_ambiguous_answer_is_unknown_and_not_resent() -> None:
    """A timeout after the request left: unknown, one request only."""
    provider = FakeProvider(lambda m, n: SendResult(Outcome.AMBIGUOUS, "timeout", "no answer"))
    sink = ListSink()
    await RowFeed(PreparedOnLoop(batches(rows(4)), preparer()), engine_for(provider, sink)).run()
    assert {r.status for r in sink.records} == {Status.UNKNOWN}
    assert set(provider.sent.values()) == {1}


async def test_a_fatal_answer_stops_the_run_after_at_most_a_window() -> None:
    """Bad credentials: no new request leaves, reading stops, every row read is stopped."""
    provider = FakeProvider(lambda m, n: SendResult(Outcome.FATAL, "4", "Bad Credentials"))
    sink, window = ListSink(), 3
    engine = engine_for(provider, sink, window)
    feed = RowFeed(PreparedOnLoop(batches(rows(50)), preparer()), engine)
    await feed.run()
    assert engine.control.reason is StopReason.FATAL
    sent = sum(provider.sent.values())
    assert sent <= window
    records = sink.by_line()
    assert sorted(records) == list(range(1, feed.last_line + 1))
    assert feed.last_line < 50, "the input is not read to the end after a stop"
    codes = Counter((r.error.kind, r.error.code) for r in records.values() if r.error)
    # The refused rows say nothing wrong about themselves: stopped, with the provider's code.
    assert codes[(ErrorKind.STOPPED, "4")] == sent
    assert codes[(ErrorKind.STOPPED, "fatal")] == len(records) - sent


class SettledAbove:
    """A ledger whose earlier run settled (sent) every row above `line`."""

    def __init__(self, line: int) -> None:
        self.line = line

    def admit(self, item: Message | Record) -> Record | None:
        if item.line <= self.line:
            return None
        error = RowError(ErrorKind.ALREADY_SETTLED, "sent", "sent in an earlier run")
        return Record(item.line, item.to, Status.SKIPPED, item.client_ref, error=error)

    async def inflight(self, message: Message, attempt: int) -> None:
        return None

    def retrying(self, message: Message, attempts: int) -> None:
        return None

    def settle(self, record: Record, publish: Callable[[Record], None]) -> None:
        publish(record)


async def test_rows_read_after_a_stop_that_an_earlier_run_settled_keep_their_settled_record() -> (
    None
):
    """A stop must not report (or let the journal keep) a row sent earlier as stopped."""
    provider = FakeProvider(lambda m, n: SendResult(Outcome.FATAL, "4", "Bad Credentials"))
    sink = ListSink()
    engine = Engine(
        send=provider,
        limiter=Unlimited(),
        sink=sink,
        config=EngineConfig(1, FAST),
        ledger=SettledAbove(100),
    )
    # One batch of 200 rows: the queue holds 64, so the stop comes long before row 101 is read.
    await RowFeed(PreparedOnLoop(batches(rows(200), size=200), preparer()), engine).run()
    records = sink.by_line()
    assert len(records) == 200
    assert {r.status for line, r in records.items() if line > 100} == {Status.SKIPPED}
    assert {r.error.kind for line, r in records.items() if line <= 100 and r.error} == {
        ErrorKind.STOPPED
    }


async def test_an_abort_records_requests_in_flight_as_unknown() -> None:
    """Cancelling mid-request: the in-flight rows are unknown, queued ones stopped, none lost."""
    started = asyncio.Event()
    gate = asyncio.Event()

    async def hang(message: Message) -> Exchange:
        started.set()
        await gate.wait()
        raise AssertionError("never released")

    sink = ListSink()
    engine = Engine(
        send=hang,
        limiter=Unlimited(),
        sink=sink,
        config=EngineConfig(2, FAST),
    )
    items = rows(10)
    task = asyncio.create_task(
        RowFeed(PreparedOnLoop(batches(items, size=10), preparer()), engine).run()
    )
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    records = sink.by_line()
    assert len(records) == 10
    statuses = Counter(r.status for r in records.values())
    assert statuses[Status.UNKNOWN] == 2
    assert statuses[Status.FAILED] == 8


async def test_a_graceful_stop_lets_requests_in_flight_finish() -> None:
    """A stop while requests are in flight: they complete as sent, the rest are stopped."""
    release = asyncio.Event()
    in_flight = 0

    async def slow(message: Message) -> Exchange:
        nonlocal in_flight
        in_flight += 1
        if in_flight == 2:
            engine.control.stop(StopReason.INTERRUPTED)
            release.set()
        await release.wait()
        return Exchange(ok(message, 1), 0.01)

    sink = ListSink()
    engine = Engine(send=slow, limiter=Unlimited(), sink=sink, config=EngineConfig(2, FAST))
    feed = RowFeed(PreparedOnLoop(batches(rows(20)), preparer()), engine)
    await feed.run()
    records = sink.by_line()
    assert sorted(records) == list(range(1, feed.last_line + 1))
    statuses = Counter(r.status for r in records.values())
    assert statuses == {Status.SENT: 2, Status.FAILED: len(records) - 2}


async def test_an_ambiguous_attempt_keeps_the_row_unknown_whatever_follows() -> None:
    """--retry-unknown: a timeout, then 503s: it may have been sent, so unknown, not failed."""
    script = [Outcome.AMBIGUOUS, Outcome.TRANSIENT, Outcome.TRANSIENT, Outcome.TRANSIENT]
    provider = FakeProvider(lambda m, n: SendResult(script[min(n, 4) - 1], "x"))
    sink = ListSink()
    engine = Engine(
        send=provider,
        limiter=Unlimited(),
        sink=sink,
        config=EngineConfig(2, RetryPolicy(retries=2, base_s=0.0, retry_unknown=True)),
    )
    await RowFeed(PreparedOnLoop(batches(rows(3)), preparer()), engine).run()
    assert {(r.status, r.attempts) for r in sink.records} == {(Status.UNKNOWN, 3)}


async def test_a_row_that_breaks_preparation_is_a_record_and_the_run_goes_on() -> None:
    """An unexpected error on one row: that row is invalid input, the others are sent."""

    class Fragile(Preparer):
        def prepare(self, row: InputRow) -> Message | Record:
            if row.line == 2:
                raise ValueError("boom")
            return super().prepare(row)

    provider, sink = FakeProvider(ok), ListSink()
    engine = Engine(
        send=provider,
        limiter=Unlimited(),
        sink=sink,
        config=EngineConfig(2, FAST),
    )
    fragile = Fragile(to_column="to", template=compile_template("Hi {name}"), campaign="c")
    await RowFeed(PreparedOnLoop(batches(rows(3)), fragile), engine).run()
    records = sink.by_line()
    assert [records[n].status for n in (1, 2, 3)] == [Status.SENT, Status.FAILED, Status.SENT]


async def test_an_error_while_sending_makes_the_row_unknown() -> None:
    """A failure below the provider seam may follow the request: unknown, and no crash."""

    async def broken(message: Message) -> Exchange:
        raise RuntimeError("bug")

    sink = ListSink()
    engine = Engine(
        send=broken,
        limiter=Unlimited(),
        sink=sink,
        config=EngineConfig(2, FAST),
    )
    await RowFeed(PreparedOnLoop(batches(rows(3)), preparer()), engine).run()
    assert {r.status for r in sink.by_line().values()} == {Status.UNKNOWN}


async def test_a_stop_does_not_wait_for_a_slow_input() -> None:
    """Stopped while the input has nothing more to give: the run ends without reading more."""
    gate = asyncio.Event()

    async def slow_input() -> AsyncIterator[list[InputRow]]:
        yield rows(2)
        await gate.wait()  # a pipe whose writer has gone quiet
        yield rows(2, start=447911130000)

    class Watched(ListSink):
        def __init__(self) -> None:
            super().__init__()
            self.two = asyncio.Event()

        def emit(self, record: Record) -> None:
            super().emit(record)
            if len(self.records) == 2:
                self.two.set()

    provider, sink = FakeProvider(ok), Watched()
    engine = engine_for(provider, sink)
    task = asyncio.create_task(RowFeed(PreparedOnLoop(slow_input(), preparer()), engine).run())
    await sink.two.wait()
    engine.control.stop(StopReason.INTERRUPTED)
    async with asyncio.timeout(5):
        await task
    assert sorted(sink.by_line()) == [1, 2]


async def test_a_waiter_cancelled_while_the_window_frees_up_leaves_it_consistent() -> None:
    """Cancel a waiter, then free a place before it runs: no error, the place goes on."""
    window = Window(1)
    await window.enter()
    waiting = asyncio.ensure_future(window.enter())
    await asyncio.sleep(0)
    waiting.cancel()
    window.leave(passed=False)
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await window.enter()
    assert window.active == 1


async def test_a_window_cut_holds_back_attempts_already_waiting_for_their_rate_slot() -> None:
    """Cut the window while four attempts wait for the pacer: the provider sees one at a time."""
    released, all_waiting = asyncio.Event(), asyncio.Event()
    waiting = 0

    class HeldLimiter(Unlimited):
        async def acquire(self, cost: float = 1.0) -> None:
            nonlocal waiting
            waiting += 1
            if waiting == 4:
                all_waiting.set()
            await released.wait()

    in_service = peak = 0

    async def provider(message: Message) -> Exchange:
        nonlocal in_service, peak
        in_service += 1
        peak = max(peak, in_service)
        await asyncio.sleep(0)
        in_service -= 1
        return Exchange(SendResult(Outcome.SENT, "0"), 0.0)

    sink = ListSink()
    engine = Engine(send=provider, limiter=HeldLimiter(), sink=sink, config=EngineConfig(4, FAST))
    task = asyncio.create_task(RowFeed(PreparedOnLoop(batches(rows(4)), preparer()), engine).run())
    await all_waiting.wait()
    engine.window.resize(1)
    released.set()
    async with asyncio.timeout(5):
        await task
    assert len(sink.records) == 4
    assert peak == 1


class ScriptedClaims:
    """Hands out messages, then a settled row's record, then nothing; logs each claim."""

    def __init__(self, messages: list[Message], settled: list[Record], log: list[str]) -> None:
        self.items: list[Message | Record] = [*messages, *settled]
        self.log = log

    async def claim(self) -> Message | Record | None:
        await asyncio.sleep(0)
        self.log.append("claim")
        return self.items.pop(0) if self.items else None


class SlotLoggingLimiter(Unlimited):
    """A limiter that reserves a slot before the wait for it, like the shared Redis limit; logs
    each call."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def acquire(self, cost: float = 1.0) -> None:
        self.log.append(f"slot {cost:g}")

    async def take(self, cost: float = 1.0) -> float:
        self.log.append(f"take {cost:g}")
        return cost

    async def wait(self, slot: float) -> None:
        self.log.append(f"wait {slot:g}")


def claimed_messages(count: int, segments: int = 1) -> list[Message]:
    return [
        Message(n, f"44791112{n:04d}", "Hi", Encoding.GSM7, segments, f"camp-{n}")
        for n in range(1, count + 1)
    ]


def prepaid_engine(
    provider: FakeProvider, limiter: SlotLoggingLimiter, sink: ListSink, window: int
) -> Engine:
    return Engine(
        send=provider,
        limiter=limiter,
        sink=sink,
        config=EngineConfig(window, FAST),
        cost=lambda m: m.segments,
    )


async def test_claimed_messages_are_each_sent_once_and_records_of_settled_ones_passed_on() -> None:
    """Claims on a shared queue: every claim ends as one record; a claimed record is emitted,
    never sent."""
    log: list[str] = []
    settled = Record(99, "447911120099", Status.SENT, "camp-99", 1)
    claims = ScriptedClaims(claimed_messages(20), [settled], log)
    provider, sink, limiter = FakeProvider(ok), ListSink(), SlotLoggingLimiter(log)
    engine = prepaid_engine(provider, limiter, sink, 4)
    await engine.run(PrepaidClaims(claims, limiter, engine.control))
    records = sink.by_line()
    assert sorted(records) == [*range(1, 21), 99]
    assert set(provider.sent.values()) == {1}
    assert sum(provider.sent.values()) == 20


async def test_a_rate_slot_is_taken_before_each_claim_and_the_rest_of_the_cost_after() -> None:
    """A lease never waits on the limiter: slot, claim, then the remaining segments' slots."""
    log: list[str] = []
    claims = ScriptedClaims(claimed_messages(1, segments=3), [], log)
    limiter = SlotLoggingLimiter(log)
    engine = prepaid_engine(FakeProvider(ok), limiter, ListSink(), 1)
    await engine.run(PrepaidClaims(claims, limiter, engine.control))
    assert log == ["take 1", "claim", "wait 1", "slot 2", "take 1", "claim"]


async def test_a_claimed_message_is_retried_with_full_cost_slots() -> None:
    """After the first attempt each retry takes the message's whole cost again."""
    log: list[str] = []
    claims = ScriptedClaims(claimed_messages(1, segments=2), [], log)
    script = [Outcome.THROTTLED, Outcome.SENT]
    provider = FakeProvider(lambda m, n: SendResult(script[n - 1]))
    sink, limiter = ListSink(), SlotLoggingLimiter(log)
    engine = prepaid_engine(provider, limiter, sink, 1)
    await engine.run(PrepaidClaims(claims, limiter, engine.control))
    assert log == ["take 1", "claim", "wait 1", "slot 1", "slot 2", "take 1", "claim"]
    assert sink.records[0].status is Status.SENT
    assert engine.window.active == 0


async def test_with_a_slot_limiter_the_claim_happens_between_taking_a_slot_and_its_wait() -> None:
    """The claim's round trip overlaps the wait, so the request leaves right at its slot."""
    log: list[str] = []
    claims = ScriptedClaims(claimed_messages(1), [], log)
    limiter = SlotLoggingLimiter(log)
    engine = prepaid_engine(FakeProvider(ok), limiter, ListSink(), 1)
    await engine.run(PrepaidClaims(claims, limiter, engine.control))
    assert log == ["take 1", "claim", "wait 1", "take 1", "claim"]


async def test_a_slot_taken_before_a_claim_covers_the_claim_cost() -> None:
    """A campaign of 3-segment messages reserves 3 before each claim and nothing after."""
    log: list[str] = []
    claims = ScriptedClaims(claimed_messages(1, segments=3), [], log)
    limiter = SlotLoggingLimiter(log)
    engine = prepaid_engine(FakeProvider(ok), limiter, ListSink(), 1)
    await engine.run(PrepaidClaims(claims, limiter, engine.control, cost=3))
    assert log == ["take 3", "claim", "wait 3", "take 3", "claim"]


async def test_an_abort_between_two_slices_of_the_feed_records_each_row_once() -> None:
    """Cancelled at any of the feed's yields (window 1, a send that never answers): every row
    read has exactly one record, none recorded twice as stopped."""

    async def never_answers(message: Message) -> Exchange:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    for turns in range(1, 12):
        sink = ListSink()
        engine = Engine(
            send=never_answers,
            limiter=Unlimited(),
            sink=sink,
            config=EngineConfig(1, FAST),
        )
        run = asyncio.create_task(
            RowFeed(PreparedOnLoop(batches(rows(200), size=200), preparer()), engine).run()
        )
        for _ in range(turns):
            await asyncio.sleep(0)  # the feed yields every few rows: stop at each of them
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        lines = [record.line for record in sink.records]
        assert sorted(lines) == list(range(1, 201)), f"cancelled after {turns} turns"


class Witnessed(FakeProvider):
    """Answers from the script, each with a witness of its connection already decided: `in_sync`
    (None: no witness)."""

    def __init__(self, answer: Callable[[Message, int], SendResult], in_sync: bool | None) -> None:
        super().__init__(answer)
        self.in_sync = in_sync

    async def __call__(self, message: Message) -> Exchange:
        exchange = await super().__call__(message)
        if self.in_sync is None:
            return exchange
        witness = asyncio.get_running_loop().create_future()
        witness.set_result(self.in_sync)
        return Exchange(exchange.result, exchange.latency_s, in_sync=witness)


@pytest.mark.parametrize(
    "answer",
    [
        SendResult(Outcome.THROTTLED, "1", "Throughput Rate Exceeded"),
        SendResult(Outcome.TRANSIENT, "503", "service unavailable", wait_s=0.0),
        SendResult(Outcome.FATAL, "401", "the provider refused the credentials"),
    ],
)
async def test_an_answer_followed_by_one_too_many_is_not_trusted_to_send_again(
    answer: SendResult,
) -> None:
    """An answer that would have its row sent again, its connection then showing a second
    answer: the one read may have been another request's, so the row is unknown, sent once.
    A fatal one still stops the run at once (whichever request's, it refuses the account): the
    rows not sent yet are stopped, left to the resume."""
    provider, sink = Witnessed(lambda m, n: answer if n == 1 else ok(m, n), False), ListSink()
    engine = engine_for(provider, sink)
    await RowFeed(PreparedOnLoop(batches(rows(4)), preparer()), engine).run()
    assert set(provider.sent.values()) == {1}
    fatal = answer.outcome is Outcome.FATAL
    assert engine.control.reason is (StopReason.FATAL if fatal else None)
    for record in sink.records:
        if fatal and not record.attempts:
            assert record.error is not None
            assert record.error.kind is ErrorKind.STOPPED
            continue
        assert record.status is Status.UNKNOWN
        assert record.error is not None
        assert (record.error.kind, record.error.code) == (ErrorKind.AMBIGUOUS, "two_answers")


async def test_an_answer_whose_connection_showed_nothing_more_is_sent_again() -> None:
    """The same throttle, its connection quiet after it: retried and sent."""
    throttled = SendResult(Outcome.THROTTLED, "1", "Throughput Rate Exceeded")
    provider, sink = Witnessed(lambda m, n: throttled if n == 1 else ok(m, n), True), ListSink()
    await RowFeed(PreparedOnLoop(batches(rows(4)), preparer()), engine_for(provider, sink)).run()
    assert {(r.status, r.attempts) for r in sink.records} == {(Status.SENT, 2)}


def lost(message: Message, attempt: int) -> SendResult:
    return SendResult(Outcome.AMBIGUOUS, "connection_lost", "[Errno 104] Connection reset by peer")


async def test_a_provider_that_answers_nothing_stops_the_run_after_a_few_unknown_rows() -> None:
    """Every connection reset after its request, from the first (an http:// URL to a TLS port):
    the run stops, fatal, after SilentStart.LOST_LIMIT unknown rows (and those in flight), the
    rest stopped to be sent by the resume, not all of them unknown."""
    provider, sink, window = FakeProvider(lost), ListSink(), 1
    engine = engine_for(provider, sink, window)
    feed = RowFeed(PreparedOnLoop(batches(rows(40)), preparer()), engine)
    await feed.run()
    assert engine.control.reason is StopReason.FATAL
    records = sink.by_line()
    unknown = [r for r in records.values() if r.status is Status.UNKNOWN]
    assert len(unknown) == sum(provider.sent.values()) <= SilentStart.LOST_LIMIT + window
    assert all(
        r.error is not None and r.error.kind is ErrorKind.STOPPED
        for r in records.values()
        if r.status is not Status.UNKNOWN
    )


async def test_losses_after_the_provider_answered_once_do_not_stop_the_run() -> None:
    """One row accepted, then every connection reset: each row unknown, the run goes on."""
    provider = FakeProvider(lambda m, n: ok(m, n) if m.line == 1 else lost(m, n))
    sink = ListSink()
    engine = engine_for(provider, sink, 1)
    await RowFeed(PreparedOnLoop(batches(rows(20)), preparer()), engine).run()
    assert engine.control.reason is None
    assert [r.status for r in sorted(sink.records, key=lambda r: r.line)] == [Status.SENT] + [
        Status.UNKNOWN
    ] * 19


@pytest.mark.parametrize(("in_sync", "named_late"), [(False, False), (True, True)])
async def test_a_row_exhausted_by_an_answer_not_trusted_is_unknown_not_left_to_the_resume(
    in_sync: bool, named_late: bool
) -> None:
    """--retries 0 and a 503 read as the row's answer, then one answer too many on its
    connection (or an answer too many naming it later): the row is unknown, not failed
    exhausted, which the resume would send again."""
    answer = SendResult(Outcome.TRANSIENT, "http_503", "service unavailable", wait_s=0.0)

    async def send(message: Message) -> Exchange:
        witness = asyncio.get_running_loop().create_future()
        witness.set_result(in_sync)
        return Exchange(answer, 0.001, in_sync=witness, named_late=lambda: named_late)

    sink = await sent_without_retries(send, 3)
    for record in sink.records:
        assert record.status is Status.UNKNOWN
        assert record.error is not None
        assert record.error.code == "two_answers"


async def test_a_row_left_to_the_resume_is_judged_once_its_own_answer_would_have_come() -> None:
    """--retries 0 and a 503 whose connection looked quiet; the row's own acceptance is read
    late, after the watch but before the request's --timeout: the row is unknown, not failed
    exhausted (the resume would send it again)."""
    answer = SendResult(Outcome.TRANSIENT, "http_503", "service unavailable", wait_s=0.0)
    named: set[str] = set()

    async def send(message: Message) -> Exchange:
        loop = asyncio.get_running_loop()
        witness = loop.create_future()
        witness.set_result(True)
        by_s = loop.time() + 0.05
        loop.call_at(by_s - 0.04, named.add, message.to)  # its own answer, read late
        return Exchange(
            answer, 0.001, in_sync=witness, named_late=lambda: message.to in named, late_by_s=by_s
        )

    sink = await sent_without_retries(send, 3)
    assert {(r.status, r.error.code if r.error else "") for r in sink.records} == {
        (Status.UNKNOWN, "two_answers")
    }


async def sent_without_retries(
    send: Callable[[Message], Awaitable[Exchange]], count: int
) -> ListSink:
    """`count` rows through an engine of window 2 and --retries 0; their records."""
    sink = ListSink()
    engine = Engine(
        send=send,
        limiter=Unlimited(),
        sink=sink,
        config=EngineConfig(2, RetryPolicy(retries=0, base_s=0.0, cap_s=0.0)),
    )
    await RowFeed(PreparedOnLoop(batches(rows(count)), preparer()), engine).run()
    return sink
