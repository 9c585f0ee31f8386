"""`receive --redis`: callbacks stored in Redis's receipts stream instead of a local journal, so any
number of receivers behind a load balancer feed the workers of every campaign.

    handler ──submit──▶ bounded queue ──▶ one script per batch: new? XADD : duplicate ──▶ ack
    receipts stream ──▶ group "appliers": workers tie receipts to their campaigns
                    └─▶ group "hooks": receivers run --emit and --hook, each receipt once

A callback is acknowledged once the script that stores it has returned: it is then in Redis's
memory, and on disk as Redis's persistence says (`appendonly yes` with `appendfsync always` for
the guarantee the SQLite store gives; `everysec` risks the last second on a power cut). A full
queue or an unreachable Redis answers 503, so the provider retries. Duplicates (providers retry for
days) are recognised by a key per receipt kept for a week. The hooks run at least once: a receipt
is acknowledged in the "hooks" group only after its hook ended, and one a stopped receiver held is
taken over by another after a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from sms_blaster.distributed import keys as k
from sms_blaster.distributed.redis_client import connect, shown
from sms_blaster.errors import JournalError
from sms_blaster.journal.receipts import StoredReceipt
from sms_blaster.models import Delivery, Receipt, ReceiptKind
from sms_blaster.receiver.store import CallbackQueue, Hook, StoreBusy, StoreStats, Waiting

log = logging.getLogger("sms_blaster.receiver")

HOOKS_GROUP = "hooks"
_MAX_BATCH = 256
_KEEP_MS = 7 * 24 * 3600 * 1000  # duplicates recognised, and stream entries kept, for a week
_TAKE_OVER_MS = 60_000

# KEYS: the stream. ARGV: keep ms, then per receipt: its duplicate key, its field count, fields.
# Returns one flag per receipt: 1 stored, 0 a duplicate.
_STORE = """
local stored = {}
local i = 2
local oldest = tonumber(redis.call('TIME')[1]) * 1000 - tonumber(ARGV[1])
while i <= #ARGV do
  local seen = 'smsb:receipt-seen:' .. ARGV[i]
  local count = tonumber(ARGV[i + 1])
  if redis.call('SET', seen, '1', 'NX', 'PX', ARGV[1]) then
    redis.call('XADD', KEYS[1], 'MINID', '~', oldest, '*', unpack(ARGV, i + 2, i + 1 + count))
    table.insert(stored, 1)
  else
    table.insert(stored, 0)
  end
  i = i + 2 + count
end
return stored
"""


def receipt_fields(receipt: Receipt, received_at_s: float) -> list[str]:
    """The stream entry of a receipt, as alternating names and values."""
    fields = {
        "provider": receipt.provider,
        "kind": receipt.kind.value,
        "message_id": receipt.message_id,
        "status": receipt.status,
        "delivery": receipt.delivery.value if receipt.delivery else "",
        "to": receipt.to or "",
        "from": receipt.sender or "",
        "client_ref": receipt.client_ref or "",
        "error_code": receipt.error_code,
        "price": receipt.price or "",
        "event_at": receipt.event_at or "",
        "received_at": f"{received_at_s:.3f}",
        "payload": receipt.payload,
    }
    return [item for pair in fields.items() for item in pair]


def receipt_from(fields: dict[str, str]) -> StoredReceipt:
    receipt = Receipt(
        provider=fields["provider"],
        kind=ReceiptKind(fields["kind"]),
        message_id=fields["message_id"],
        status=fields["status"],
        delivery=Delivery(fields["delivery"]) if fields.get("delivery") else None,
        to=fields.get("to") or None,
        sender=fields.get("from") or None,
        client_ref=fields.get("client_ref") or None,
        error_code=fields.get("error_code", ""),
        price=fields.get("price") or None,
        event_at=fields.get("event_at") or None,
        payload=fields.get("payload", "{}"),
    )
    return StoredReceipt(0, receipt, float(fields.get("received_at", 0.0)))


def _duplicate_key(receipt: Receipt) -> str:
    return "|".join(
        (receipt.provider, receipt.kind.value, receipt.message_id, receipt.status,
         receipt.error_code)
    )  # fmt: skip


class RedisReceiptStore:
    """The receiver's store in distributed mode (the same surface as ReceiptStore)."""

    def __init__(
        self,
        redis_url: str,
        *,
        queue_size: int,
        hook: Hook | None = None,
        hook_concurrency: int = 256,
        emit: Callable[[Sequence[StoredReceipt]], None] | None = None,
        observe_commit: Callable[[float, int], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._url = redis_url
        self._redis: aioredis.Redis | None = None
        self.stats = StoreStats()
        self._callbacks = CallbackQueue(queue_size, self.stats)
        self._hook = hook
        self._hooks_free = asyncio.Semaphore(hook_concurrency)
        self._emit = emit
        self._observe_commit = observe_commit
        self._clock = clock
        self._consumer = f"{socket.gethostname()}-{os.getpid()}"
        self._tasks: list[asyncio.Task[None]] = []
        self._hook_tasks: set[asyncio.Task[None]] = set()

    @property
    def depth(self) -> int:
        return len(self._callbacks)

    async def start(self) -> None:
        """Connect (JournalError when Redis cannot be reached) and start storing."""
        redis = connect(self._url, 8)
        try:
            await redis.ping()
            with contextlib.suppress(ResponseError):  # the group exists already
                await redis.xgroup_create(k.RECEIPTS, HOOKS_GROUP, id="$", mkstream=True)
            with contextlib.suppress(ResponseError):
                await redis.xgroup_create(k.RECEIPTS, k.APPLIERS_GROUP, id="$", mkstream=True)
        except (RedisError, OSError) as exc:
            await redis.aclose()
            raise JournalError(f"--redis {shown(self._url)}: cannot reach Redis ({exc})") from exc
        self._redis = redis
        self._store = redis.register_script(_STORE)
        self._tasks = [asyncio.create_task(self._write_batches(), name="receipt-writer")]
        if self._hook is not None or self._emit is not None:
            self._tasks.append(asyncio.create_task(self._process(), name="receipt-hooks"))

    def submit(self, receipt: Receipt) -> asyncio.Future[bool]:
        """See CallbackQueue.submit."""
        return self._callbacks.submit(receipt)

    async def close(self, grace_s: float = 5.0) -> None:
        self._callbacks.closing = True
        deadline = asyncio.get_running_loop().time() + grace_s
        refused = await self._callbacks.drain(deadline)
        if refused:
            log.error("Redis could not take %d queued callbacks: they get 503", refused)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await asyncio.gather(*self._hook_tasks, return_exceptions=True)
        for task in (*self._tasks, *self._hook_tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, *self._hook_tasks, return_exceptions=True)
        if self._redis is not None:
            await self._redis.aclose()

    async def _write_batches(self) -> None:
        while True:
            batch = await self._callbacks.batch(_MAX_BATCH)
            try:
                await self._commit(batch)
            finally:
                self._callbacks.taken(batch)

    async def _commit(self, batch: list[Waiting]) -> None:
        started = time.perf_counter()
        received_at_s = self._clock()
        args: list[Any] = [_KEEP_MS]
        for receipt, _ in batch:
            fields = receipt_fields(receipt, received_at_s)
            args += [_duplicate_key(receipt), len(fields), *fields]
        try:
            assert self._redis is not None
            flags: Any = await self._store(keys=[k.RECEIPTS], args=args)
        except Exception as exc:  # unreachable, out of memory, read-only replica...
            self.stats.failed_commits += 1
            log.error("could not store %d receipts in Redis, answering 503: %s", len(batch), exc)
            for _, done in batch:
                if not done.done():
                    done.set_exception(StoreBusy("the store could not write"))
            return
        self.stats.commits += 1
        if self._observe_commit is not None:
            self._observe_commit(time.perf_counter() - started, len(batch))
        for (_, done), flag in zip(batch, flags, strict=True):
            new = bool(flag)
            self.stats.stored += new
            self.stats.duplicates += not new
            if not done.done():
                done.set_result(new)

    async def _process(self) -> None:
        """Run --emit and the hook on every stored receipt, once, shared by the receivers."""
        assert self._redis is not None
        redis = self._redis
        while True:
            try:
                claimed: Any = await redis.xautoclaim(
                    k.RECEIPTS, HOOKS_GROUP, self._consumer, _TAKE_OVER_MS, count=100
                )
                entries = list(claimed[1])
                read: Any = await redis.xreadgroup(
                    HOOKS_GROUP, self._consumer, {k.RECEIPTS: ">"}, count=100, block=1000
                )
                entries += [entry for _, batch in read for entry in batch]
            except RedisError as exc:
                log.error("could not read receipts to process: %s", exc)
                await asyncio.sleep(1)
                continue
            gone = [entry_id for entry_id, fields in entries if not fields]  # trimmed since
            if gone:
                await redis.xack(k.RECEIPTS, HOOKS_GROUP, *gone)
            items = [(entry_id, receipt_from(fields)) for entry_id, fields in entries if fields]
            if items and self._emit is not None:
                # From a thread: a stdout nobody reads slows processing only, never the acks.
                await asyncio.to_thread(self._emit, [item for _, item in items])
            for entry_id, item in items:
                await self._handle(entry_id, item)

    async def _handle(self, entry_id: str, item: StoredReceipt) -> None:
        if self._hook is None:
            await self._ack(entry_id)
            return
        await self._hooks_free.acquire()
        task = asyncio.create_task(self._run_hook(self._hook, entry_id, item))
        self._hook_tasks.add(task)
        task.add_done_callback(self._hook_tasks.discard)

    async def _run_hook(
        self, hook: Callable[[StoredReceipt], Awaitable[None]], entry_id: str, item: StoredReceipt
    ) -> None:
        try:
            await hook(item)
        except Exception:
            self.stats.hook_errors += 1
            log.exception("the receipt hook failed for %s", item.receipt.message_id)
        finally:
            self._hooks_free.release()
        await self._ack(entry_id)

    async def _ack(self, entry_id: str) -> None:
        assert self._redis is not None
        try:
            await self._redis.xack(k.RECEIPTS, HOOKS_GROUP, entry_id)
            self.stats.processed += 1
        except RedisError as exc:  # processed again after the take-over delay: at least once
            log.error("could not acknowledge a processed receipt: %s", exc)
