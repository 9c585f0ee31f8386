"""The same tests against both receipt stores: a journal file (SQLite) and a real redis-server.

Each backend keeps the receipts its own way; what a receiver promises does not depend on which:
a callback is stored once, processed at least once (emitted, then its hook run), a receipt proves
that a row left `unknown` was sent, and a final delivery state is never undone by a later one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, Unpack

import pytest
import redis.asyncio as aioredis

from sms_blaster.distributed import keys as k
from sms_blaster.distributed.keys import CampaignKeys
from sms_blaster.distributed.receipt_applier import ReceiptApplier
from sms_blaster.errors import JournalError
from sms_blaster.journal import schema
from sms_blaster.journal.receipt_journal import ReceiptJournal
from sms_blaster.journal.schema import RowState
from sms_blaster.models import Receipt, StoredReceipt
from sms_blaster.receiver import callbacks
from sms_blaster.receiver.stores import base
from sms_blaster.receiver.stores import redis as redis_store
from sms_blaster.receiver.stores.base import (
    CallbackQueue,
    ReceiptStore,
    StoreOptions,
    StoreStats,
    Waiting,
)
from sms_blaster.receiver.stores.redis import RedisReceiptStore
from sms_blaster.receiver.stores.sqlite import SqliteReceiptStore
from tests.redis_helpers import redis_server

CAMPAIGN = "spring"
CAMPAIGN_ID = "c0ffee123456"
WAIT_S = 10  # a bound on waits for processing, never reached when it works

_REDIS_STATES = {
    RowState.SENT: k.SENT,
    RowState.FAILED: k.FAILED,
    RowState.UNKNOWN: k.UNKNOWN,
    RowState.SKIPPED: k.SKIPPED,
}


def dlr(message_id: str, status: str = "delivered", line: int = 1) -> Receipt:
    """A Vonage delivery receipt for the message sent for `line` of the campaign."""
    return callbacks.vonage_dlr(
        {
            "msisdn": "447700900123",
            "to": "Shop",
            "messageId": message_id,
            "status": status,
            "err-code": "0",
            "client-ref": f"{CAMPAIGN_ID}-{line}",
        }
    )


class Backend(Protocol):
    """One kind of store, with a campaign beside it whose rows the receipts are tied to."""

    kind: str  # as _EMIT_BLOCKED_SCRIPT names it
    location: str  # the journal's path, or Redis's URL

    def store(self, **options: Any) -> ReceiptStore[Any]: ...

    async def add_row(self, line: int, state: RowState) -> None: ...

    async def apply(self, store: ReceiptStore[Any], count: int) -> None:
        """Return once `count` receipts stored so far are tied to their rows."""

    async def row_state(self, line: int) -> RowState: ...

    async def delivery(self, message_id: str) -> str:
        """The latest delivery state recorded for a message part."""


class SqliteBackend:
    kind = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = self.location = str(path)
        with contextlib.closing(schema.connect(self.path)) as connection:
            connection.execute(
                "INSERT INTO campaigns VALUES (?, ?, '/data/spring.csv', '', 'Shop', 'vonage', "
                "'to', '', 0)",
                (CAMPAIGN, CAMPAIGN_ID),
            )

    def store(self, **options: Any) -> ReceiptStore[Any]:
        return SqliteReceiptStore(self.path, **options)

    async def add_row(self, line: int, state: RowState) -> None:
        with contextlib.closing(schema.connect(self.path)) as connection:
            connection.execute(
                "INSERT INTO rows VALUES (?, ?, ?, 0, '447700900123', ?, 1, 'gsm7', 1, '', NULL, "
                "NULL, NULL, NULL, NULL, 0, NULL, NULL)",
                (CAMPAIGN, line, state.value, f"{CAMPAIGN_ID}-{line}"),
            )

    async def apply(self, store: ReceiptStore[Any], count: int) -> None:
        async with asyncio.timeout(WAIT_S):
            await store.wait_until(lambda: store.stats.matched >= count)

    async def row_state(self, line: int) -> RowState:
        return RowState(str(self._one("SELECT state FROM rows WHERE line = ?", line)))

    async def delivery(self, message_id: str) -> str:
        return str(self._one("SELECT delivery FROM deliveries WHERE message_id = ?", message_id))

    def _one(self, sql: str, *args: object) -> object:
        with contextlib.closing(sqlite3.connect(self.path)) as connection:
            (value,) = connection.execute(sql, args).fetchone()
        return value


class RedisBackend:
    kind = "redis"

    def __init__(self, url: str) -> None:
        self.url = self.location = url
        self.redis = aioredis.Redis.from_url(url, decode_responses=True)
        self.keys = CampaignKeys(CAMPAIGN)
        self.applier = ReceiptApplier(self.redis, "test")
        self.applied = 0  # receipts tied to their rows so far, as the store's `matched` counts

    async def start(self) -> None:
        await self.redis.hset(k.CAMPAIGNS, CAMPAIGN_ID, CAMPAIGN)
        await self.redis.hset(self.keys.meta, "campaign_id", CAMPAIGN_ID)  # as enqueue does
        await self.redis.hset(self.keys.meta, "provider", "vonage-sms")  # as a worker does
        await self.applier.ensure_group()

    def store(self, **options: Any) -> ReceiptStore[Any]:
        return RedisReceiptStore(self.url, **options)

    async def add_row(self, line: int, state: RowState) -> None:
        await self.redis.hset(self.keys.rows, str(line), _REDIS_STATES[state])
        await self.redis.hincrby(self.keys.counts, _counter(state), 1)

    async def apply(self, store: ReceiptStore[Any], count: int) -> None:
        async with asyncio.timeout(WAIT_S):
            while self.applied < count:
                self.applied += await self.applier.apply_waiting(block_ms=1000)

    async def row_state(self, line: int) -> RowState:
        code = await self.redis.hget(self.keys.rows, str(line))
        (state,) = (state for state, value in _REDIS_STATES.items() if value == code)
        counts = await self.redis.hgetall(self.keys.counts)
        assert int(counts.get(_counter(state), 0)) == 1  # the counters follow the row
        return state

    async def delivery(self, message_id: str) -> str:
        part = await self.redis.hget(self.keys.parts, message_id)
        assert isinstance(part, str)
        return part.split("|")[1]


def _counter(state: RowState) -> str:
    return state.value


@pytest.fixture(params=["sqlite", "redis"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        yield SqliteBackend(tmp_path / "campaign.journal")
        return
    with redis_server() as url:
        redis_backend = RedisBackend(url)
        await redis_backend.start()
        try:
            yield redis_backend
        finally:
            await redis_backend.redis.aclose()


@contextlib.asynccontextmanager
async def started(backend: Backend, **options: Any) -> AsyncIterator[ReceiptStore[Any]]:
    store = backend.store(queue_size=100, **options)
    await store.start()
    try:
        yield store
    finally:
        await store.close()


async def processed(store: ReceiptStore[Any], count: int) -> None:
    async with asyncio.timeout(WAIT_S):
        await store.wait_until(lambda: store.stats.processed >= count)


async def test_a_retried_callback_is_stored_once(backend: Backend) -> None:
    """The first callback is stored; the provider's retry of it is answered as a duplicate."""
    async with started(backend) as store:
        assert await store.submit(dlr("M1")) is True
        assert await store.submit(dlr("M1")) is False
        assert (store.stats.stored, store.stats.duplicates) == (1, 1)


async def test_each_stored_receipt_is_emitted_then_given_to_the_hook(backend: Backend) -> None:
    """Every stored receipt reaches --emit and then the hook, and counts as processed after."""
    seen: list[tuple[str, str]] = []

    def emit(batch: Sequence[StoredReceipt]) -> None:
        seen.extend(("emit", item.receipt.message_id) for item in batch)

    async def hook(item: StoredReceipt) -> None:
        seen.append(("hook", item.receipt.message_id))

    async with started(backend, emit=emit, hook=hook) as store:
        for n in range(3):
            assert await store.submit(dlr(f"M{n}")) is True
        await processed(store, 3)
    ids = ["M0", "M1", "M2"]
    assert sorted(seen) == [("emit", id_) for id_ in ids] + [("hook", id_) for id_ in ids]
    assert all(seen.index(("emit", id_)) < seen.index(("hook", id_)) for id_ in ids)


async def test_emit_writes_from_a_daemon_thread(backend: Backend) -> None:
    """--emit runs outside the event loop in a daemon thread, so a blocked stdout cannot keep the
    process from exiting (the pool of asyncio.to_thread is waited for at exit)."""
    threads: list[threading.Thread] = []

    def emit(batch: Sequence[StoredReceipt]) -> None:
        threads.append(threading.current_thread())

    async with started(backend, emit=emit) as store:
        await store.submit(dlr("M1"))
        await processed(store, 1)
    assert [(thread.daemon, thread.name) for thread in threads] == [(True, "sms-blaster-emit")]


# A receiver whose --emit never returns (a stdout nobody reads), stopped: it must still exit.
_EMIT_BLOCKED_SCRIPT = """
import asyncio, sys, threading
from sms_blaster.receiver import callbacks
from sms_blaster.receiver.stores.redis import RedisReceiptStore
from sms_blaster.receiver.stores.sqlite import SqliteReceiptStore

async def main(kind, location):
    emitting = threading.Event()
    def emit(batch):
        emitting.set()
        threading.Event().wait()  # blocked for ever
    kind_of = {"sqlite": SqliteReceiptStore, "redis": RedisReceiptStore}[kind]
    store = kind_of(location, queue_size=10, emit=emit)
    await store.start()
    await store.submit(callbacks.vonage_dlr({"messageId": "M1", "status": "delivered"}))
    await asyncio.get_running_loop().run_in_executor(None, emitting.wait)
    await store.close(grace_s=0.1)
    print("closed", flush=True)

asyncio.run(main(*sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_blocked_emit_does_not_keep_the_process_from_exiting(backend: Backend) -> None:
    """Stopped while --emit is blocked, the process still exits (asyncio.to_thread's pool would
    be waited for at exit without a limit)."""
    process = subprocess.run(
        [sys.executable, "-c", _EMIT_BLOCKED_SCRIPT, backend.kind, backend.location],
        capture_output=True,
        text=True,
        timeout=60,  # a bound for the hang this test is about, never reached when it passes
        check=False,
    )
    assert (process.returncode, process.stdout) == (0, "closed\n"), process.stderr


async def test_a_batch_whose_processing_fails_is_tried_again_without_a_restart(
    backend: Backend, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception out of processing (here --emit, twice) leaves its batch held and tried
    again: every receipt is then emitted once and hooked once, the log has one line for the
    failure (not one a try) and one once it got through, and storing never stopped."""
    monkeypatch.setattr(base, "_RETRY_S", 0.05)  # rather than 2 s between tries
    emitted: list[str] = []
    hooked: list[str] = []
    failures = 2

    def emit(batch: Sequence[StoredReceipt]) -> None:
        nonlocal failures
        if failures:
            failures -= 1
            raise RuntimeError("emit failed")
        emitted.extend(item.receipt.message_id for item in batch)

    async def hook(item: StoredReceipt) -> None:
        hooked.append(item.receipt.message_id)

    caplog.set_level(logging.WARNING, "sms_blaster.receiver")
    async with started(backend, emit=emit, hook=hook) as store:
        for n in range(3):
            assert await store.submit(dlr(f"M{n}")) is True
        await processed(store, 3)
    assert sorted(emitted) == sorted(hooked) == ["M0", "M1", "M2"]
    lines = [record.getMessage() for record in caplog.records]
    assert len([line for line in lines if line.startswith("could not process")]) == 1
    assert len([line for line in lines if "after 2 failed tries" in line]) == 1


async def test_a_receipt_processing_never_takes_is_set_aside_and_the_rest_go_on(
    backend: Backend, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A receipt whose processing always fails (a bug its content meets) holds up neither the
    receipts of its batch nor those after it: after its tries, each is processed alone, and the
    one that still fails is left unprocessed in the store, to be handed out again."""
    monkeypatch.setattr(base, "_RETRY_S", 0.01)
    emitted: list[str] = []

    def emit(batch: Sequence[StoredReceipt]) -> None:
        if any(item.receipt.message_id == "POISON" for item in batch):
            raise RuntimeError("a bug")
        emitted.extend(item.receipt.message_id for item in batch)

    caplog.set_level(logging.WARNING, "sms_blaster.receiver")
    async with started(backend, emit=emit) as store:
        await asyncio.gather(*(store.submit(dlr(name)) for name in ("A", "POISON", "B")))
        await store.submit(dlr("C"))
        async with asyncio.timeout(WAIT_S):
            await store.wait_until(lambda: store.stats.processed >= 3)
    assert sorted(emitted) == ["A", "B", "C"]  # each once, the poison never
    lines = [record.getMessage() for record in caplog.records]
    assert any("each alone" in line and "1 left in the store" in line for line in lines)


async def test_a_hook_that_raises_is_counted_and_its_receipt_still_processed(
    backend: Backend,
) -> None:
    """A failing hook is logged and counted; its receipt is processed, not retried for ever."""

    async def broken(item: StoredReceipt) -> None:
        raise RuntimeError("the user's hook failed")

    async with started(backend, hook=broken) as store:
        await store.submit(dlr("M1"))
        await processed(store, 1)
        assert store.stats.hook_errors == 1


async def test_a_hook_failing_on_every_receipt_logs_one_traceback_and_a_count(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """A hook with a bug fails on every receipt: one traceback is logged, the rest are counted
    (in `hook_errors`, and in a line at the stop), so the log is not buried under one a receipt."""

    async def broken(item: StoredReceipt) -> None:
        raise RuntimeError("the user's hook failed")

    caplog.set_level("ERROR", logger="sms_blaster")
    async with started(backend, hook=broken) as store:
        for number in range(20):
            await store.submit(dlr(f"M{number}", line=number + 1))
        await processed(store, 20)
        assert store.stats.hook_errors == 20
    tracebacks = [record for record in caplog.records if record.exc_text]
    assert len(tracebacks) == 1
    assert "19 more times with builtins.RuntimeError" in caplog.text


async def test_a_hook_that_calls_sys_exit_is_a_failed_hook_not_a_stopped_receiver(
    backend: Backend,
) -> None:
    """`sys.exit()` in a hook is logged and counted like any failure, and its receipt processed:
    raised out of the store, it stopped the receiver, and each restart ran it again."""

    async def exits(item: StoredReceipt) -> None:
        raise SystemExit(5)

    async with started(backend, hook=exits) as store:
        await store.submit(dlr("M1"))
        await processed(store, 1)
        assert store.stats.hook_errors == 1


async def test_closing_stores_the_callbacks_still_queued(backend: Backend) -> None:
    """Callbacks submitted before close are stored, and their handlers hear so."""
    store = backend.store(queue_size=100)
    await store.start()
    waiting = [store.submit(dlr(f"M{n}")) for n in range(5)]
    await store.close()
    assert [await done for done in waiting] == [True] * 5


# --- stopping -----------------------------------------------------------------------------------
# A close must end whatever the store's tasks are doing: a receiver that does not stop on SIGTERM
# is killed by its supervisor, and a deploy waits for it. At worst a close waits for the Redis read
# under way (its 1 s block); CLOSE_S is a bound for a hang, never reached when it works.
CLOSE_S = WAIT_S
ROUNDS = 3  # the race below is met in most rounds: three make a hang all but certain to show


async def _close_after_processing(backend: Backend, first: str, second: str) -> list[str]:
    """A store with a hook: `first` stored and processed, `second` stored, then close (bounded);
    the receipts hooked."""
    hooked: list[str] = []

    async def hook(item: StoredReceipt) -> None:
        hooked.append(item.receipt.message_id)

    store = backend.store(queue_size=10, hook=hook)
    await store.start()
    await store.submit(dlr(first))
    await processed(store, 1)
    assert await store.submit(dlr(second)) is True
    async with asyncio.timeout(CLOSE_S):
        await store.close()
    return hooked


@pytest.mark.slow
async def test_a_close_just_after_a_receipt_was_processed_ends(backend: Backend) -> None:
    """Closed as the processing task sends its next read, the store still stops.

    The race of the SIGTERM that did not stop a receiver: with M1 processed and M2 stored, close
    cancels the processing task just as it sends XAUTOCLAIM or XREADGROUP, where redis-py (a socket
    timeout set) awaits asyncio.wait_for, which on Python 3.11 returns normally when cancelled as
    the write ends: the task carried on reading for ever and close waited for it. Now it ends at
    its next turn, after that read at worst."""
    for round_ in range(ROUNDS):
        hooked = await _close_after_processing(backend, f"A{round_}", f"B{round_}")
        assert hooked[0] == f"A{round_}"


class _LosesACancellation(RedisReceiptStore):
    """A Redis store one of whose calls does what redis-py's write does on Python 3.11 (it awaits
    asyncio.wait_for, CPython issue 86296): a cancellation that arrives as the awaited call ends
    is lost, and the call returns normally."""

    def __init__(self, redis_url: str, **options: Unpack[StoreOptions]) -> None:
        super().__init__(redis_url, **options)
        self.entered = asyncio.Event()

    async def _lose_one(self) -> None:
        if self.entered.is_set():
            return
        self.entered.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()  # until close cancels the task


class _ReadLosesACancellation(_LosesACancellation):
    async def _next_to_process(self) -> Sequence[tuple[str, StoredReceipt]]:
        await self._lose_one()
        return await super()._next_to_process()


class _MarkLosesACancellation(_LosesACancellation):
    async def _mark(self, keys: Sequence[str]) -> None:
        await self._lose_one()
        await super()._mark(keys)


async def _noop_hook(item: StoredReceipt) -> None:
    pass


async def test_a_processing_task_whose_cancellation_is_lost_still_stops(redis_url: str) -> None:
    """The processing task carries on after a lost cancellation: it stops at its next step
    rather than reading for ever."""
    store = _ReadLosesACancellation(redis_url, queue_size=10, hook=_noop_hook)
    await store.start()
    async with asyncio.timeout(CLOSE_S):
        await store.entered.wait()
        await store.close()


async def test_a_marking_task_whose_cancellation_is_lost_still_stops(redis_url: str) -> None:
    """Cancelled while it acknowledges, the marking task ends its pass and stops; close marks
    what is left."""
    store = _MarkLosesACancellation(redis_url, queue_size=10, hook=_noop_hook)
    await store.start()
    await store.submit(dlr("M1"))
    async with asyncio.timeout(CLOSE_S):
        await store.entered.wait()
        await store.close()
    assert store.stats.processed == 1


async def test_a_writer_whose_cancellation_is_lost_still_stops() -> None:
    """A commit that loses the writer's cancellation (a Redis script, sent as any command) ends
    the writer at its next turn rather than leaving it waiting for callbacks for ever."""
    entered = asyncio.Event()

    async def commit(batch: list[Waiting]) -> None:
        entered.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()

    intake = CallbackQueue(10, StoreStats(), commit, most=8)
    intake.start()
    intake.submit(dlr("M1"))
    async with asyncio.timeout(CLOSE_S):
        await entered.wait()
        await intake.stop()


async def test_a_hook_cut_short_by_close_runs_again_after_the_take_over_delay(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the SQLite store does: close gives a hook under way its grace, then cuts it short and
    ends; its receipt stays unacknowledged, and a receiver takes it over after the delay."""
    started = asyncio.Event()

    async def endless(item: StoredReceipt) -> None:
        started.set()
        await asyncio.Event().wait()

    store = RedisReceiptStore(redis_url, queue_size=10, hook=endless)
    await store.start()
    await store.submit(dlr("H1"))
    async with asyncio.timeout(CLOSE_S):
        await started.wait()
        await store.close(grace_s=0.1)
    assert store.stats.processed == 0
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        pending = await client.xpending(k.RECEIPTS, redis_store.HOOKS_GROUP)
    finally:
        await client.aclose()
    assert pending["pending"] == 1  # not acknowledged: another receiver takes it over

    finished: list[str] = []

    async def quick(item: StoredReceipt) -> None:
        finished.append(item.receipt.message_id)

    monkeypatch.setattr(redis_store, "_TAKE_OVER_MS", 0)  # rather than a minute
    again = RedisReceiptStore(redis_url, queue_size=10, hook=quick)
    await again.start()
    await processed(again, 1)
    async with asyncio.timeout(CLOSE_S):
        await again.close()
    assert finished[0] == "H1"  # (a take-over delay of 0 may hand it out twice: at least once)


async def receipts_for_row(backend: Backend, state: RowState, *statuses: str) -> None:
    """Line 1 in `state`, then one receipt a status for its message M1, each applied in turn."""
    await backend.add_row(1, state)
    async with started(backend) as store:
        for applied, status in enumerate(statuses, start=1):
            await store.submit(dlr("M1", status))
            await backend.apply(store, applied)


async def test_a_receipt_proves_an_unknown_row_was_sent(backend: Backend) -> None:
    """A row whose answer was lost becomes sent once a receipt for its message arrives."""
    await receipts_for_row(backend, RowState.UNKNOWN, "accepted")
    assert await backend.row_state(1) is RowState.SENT


async def test_a_receipt_leaves_a_failed_row_failed(backend: Backend) -> None:
    """Only an `unknown` row is promoted: a receipt does not rewrite a row's other states."""
    await receipts_for_row(backend, RowState.FAILED, "delivered")
    assert await backend.row_state(1) is RowState.FAILED


async def test_a_final_state_is_never_undone_by_a_later_receipt(backend: Backend) -> None:
    """A late intermediate receipt after `delivered` leaves the part delivered."""
    await receipts_for_row(backend, RowState.SENT, "delivered", "buffered")
    assert await backend.delivery("M1") == "delivered"


async def test_an_expired_part_is_final_like_a_failed_one(backend: Backend) -> None:
    """Its validity period ran out: a late `buffered` cannot bring it back."""
    await receipts_for_row(backend, RowState.SENT, "expired", "buffered")
    assert await backend.delivery("M1") == "expired"


async def test_an_intermediate_state_is_replaced_by_a_later_one(backend: Backend) -> None:
    """Until a part is final, its latest receipt is its state."""
    await receipts_for_row(backend, RowState.SENT, "buffered", "failed")
    assert await backend.delivery("M1") == "failed"


def twilio_status(message_id: str, status: str, line: int | None, **fields: str) -> Receipt:
    """A Twilio status callback, as an unsigned route (`--accept-unsigned twilio`) takes it."""
    client_ref = None if line is None else f"{CAMPAIGN_ID}-{line}"
    return callbacks.twilio_status(
        {"MessageSid": message_id, "MessageStatus": status, **fields}, client_ref
    )


async def test_a_receipt_from_another_providers_route_never_changes_a_row(
    backend: Backend,
) -> None:
    """The campaign was sent through the Vonage SMS API: a Twilio status naming its rows (a
    forgery on a route that takes Twilio callbacks unsigned) neither fails a sent row nor proves
    an unknown one sent; the Vonage receipt after it still applies."""
    await backend.add_row(1, RowState.SENT)
    await backend.add_row(2, RowState.UNKNOWN)
    async with started(backend) as store:
        await store.submit(dlr("M1", "delivered", line=1))
        await backend.apply(store, 1)
        await store.submit(twilio_status("SMFORGED1", "undelivered", 1, ErrorCode="30003"))
        await store.submit(twilio_status("SMFORGED2", "delivered", 2))
        await store.submit(dlr("M3", "delivered", line=3))  # in order after them
        await backend.apply(store, 2)
    assert await backend.row_state(1) is RowState.SENT
    assert await backend.row_state(2) is RowState.UNKNOWN
    assert await backend.delivery("M1") == "delivered"
    with pytest.raises((TypeError, AssertionError)):  # no part recorded for either
        await backend.delivery("SMFORGED1")


def test_a_receipt_is_refused_by_a_row_of_another_provider_or_twilio_account(
    tmp_path: Path,
) -> None:
    """In the journal: a receipt whose row was sent through another provider (found by client
    ref or by message id), or through another Twilio account than its AccountSid, is kept
    `applied = 2` and never tried again; the same account's is applied."""
    backend = SqliteBackend(tmp_path / "campaign.journal")
    twilio_id = "0123456789ab"
    with contextlib.closing(schema.connect(backend.path)) as connection:
        connection.execute(
            "INSERT INTO campaigns VALUES ('tw', ?, '/data/tw.csv', '', 'Shop', 'twilio', 'to', "
            "'', 0)",
            (twilio_id,),
        )
        connection.execute(
            "INSERT INTO runs (campaign, started_at, settings) VALUES ('tw', 0, ?)",
            ('{"account_sid": "AC1", "provider": "twilio"}',),
        )
        connection.execute(
            "INSERT INTO rows VALUES (?, 1, 'sent', 0, '447700900123', ?, 1, 'gsm7', 1, 'VM1', "
            "NULL, NULL, NULL, NULL, NULL, 0, NULL, NULL)",
            (CAMPAIGN, f"{CAMPAIGN_ID}-1"),
        )
    for line in (1, 2):
        with contextlib.closing(schema.connect(backend.path)) as connection:
            connection.execute(
                "INSERT INTO rows VALUES ('tw', ?, 'unknown', 0, '447700900123', ?, 1, 'gsm7', "
                "1, '', NULL, NULL, NULL, NULL, NULL, 0, NULL, NULL)",
                (line, f"{twilio_id}-{line}"),
            )
    batch = [
        twilio_status("SM1", "failed", 1),  # a Vonage row by client ref
        twilio_status("VM1", "failed", None),  # the same row by its recorded message id
        callbacks.twilio_status(
            {"MessageSid": "SM2", "MessageStatus": "delivered", "AccountSid": "AC2"},
            f"{twilio_id}-1",
        ),  # another Twilio account
        callbacks.twilio_status(
            {"MessageSid": "SM3", "MessageStatus": "delivered", "AccountSid": "AC1"},
            f"{twilio_id}-2",
        ),  # its own
    ]
    journal = ReceiptJournal.open(backend.path)
    try:
        stored = [item for item in journal.insert(batch, 1.0) if item is not None]
        applied = journal.apply(stored, 2.0, page=0)
        again = journal.unapplied(0, 10)
    finally:
        journal.close()
    assert (applied.matched, applied.refused) == (1, 3)
    assert again == []  # the sweep does not take the refused ones again
    with contextlib.closing(sqlite3.connect(backend.path)) as connection:
        receipts = connection.execute("SELECT message_id, applied FROM receipts ORDER BY id")
        assert receipts.fetchall() == [("SM1", 2), ("VM1", 2), ("SM2", 2), ("SM3", 1)]
        rows = connection.execute("SELECT campaign, line, state FROM rows ORDER BY campaign, line")
        assert rows.fetchall() == [(CAMPAIGN, 1, "sent"), ("tw", 1, "unknown"), ("tw", 2, "sent")]
        parts = connection.execute("SELECT message_id FROM deliveries").fetchall()
        assert parts == [("SM3",)]


def test_one_batch_of_receipts_is_applied_as_the_receipts_one_by_one(tmp_path: Path) -> None:
    """A batch correlated in one transaction ends as its receipts applied in turn would: a part's
    later receipt meets what an earlier one of the batch left, each `unknown` row with a receipt
    in the batch is sent and no other row changes, and only receipts with a row count."""
    backend = SqliteBackend(tmp_path / "campaign.journal")
    for line, state in ((1, RowState.UNKNOWN), (2, RowState.UNKNOWN), (3, RowState.UNKNOWN),
                        (4, RowState.FAILED)):  # fmt: skip
        asyncio.run(backend.add_row(line, state))
    no_row = callbacks.vonage_dlr({"messageId": "X9", "status": "delivered"})  # no client ref
    batch = [
        dlr("M1", "delivered", line=1),
        dlr("M1", "buffered", line=1),  # late: the part stays delivered
        dlr("M2", "buffered", line=2),
        dlr("M2", "failed", line=2),  # later: replaces buffered
        no_row,
        dlr("M4", "delivered", line=4),
    ]
    journal = ReceiptJournal.open(backend.path)
    try:
        stored = [item for item in journal.insert(batch, 1.0) if item is not None]
        applied = journal.apply(stored, 2.0, page=0)
    finally:
        journal.close()
    assert (applied.matched, applied.refused) == (5, 0)
    assert asyncio.run(backend.delivery("M1")) == "delivered"
    assert asyncio.run(backend.delivery("M2")) == "failed"
    states = [asyncio.run(backend.row_state(line)) for line in (1, 2, 3, 4)]
    assert states == [RowState.SENT, RowState.SENT, RowState.UNKNOWN, RowState.FAILED]
    with contextlib.closing(sqlite3.connect(backend.path)) as connection:
        flags = connection.execute("SELECT message_id, applied FROM receipts ORDER BY id")
        assert flags.fetchall() == [
            ("M1", 1), ("M1", 1), ("M2", 1), ("M2", 1), ("X9", 0), ("M4", 1)
        ]  # fmt: skip


async def test_a_store_that_cannot_be_opened_refuses_to_start(tmp_path: Path) -> None:
    """Neither store starts on what it cannot open: the receiver exits instead of answering."""
    unreachable: list[Callable[[], Awaitable[None]]] = [
        SqliteReceiptStore(str(tmp_path / "missing" / "x.journal"), queue_size=1).start,
        RedisReceiptStore("redis://127.0.0.1:1/0", queue_size=1).start,
    ]
    for start in unreachable:
        with pytest.raises(JournalError):
            await start()


@pytest.mark.slow
def test_the_receiver_and_its_stores_import_no_command_module() -> None:
    """The receiver's modules depend on no command (send, enqueue, worker, report, the CLI)."""
    script = (
        "import sys, sms_blaster.receiver.app, sms_blaster.receiver.stores.redis; "
        "print(' '.join(sorted(sys.modules)))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    commands = {
        "sms_blaster.campaign",
        "sms_blaster.cli",
        "sms_blaster.distributed.run",
        "sms_blaster.distributed.report",
        "sms_blaster.report",
    }
    assert commands.isdisjoint(loaded)
