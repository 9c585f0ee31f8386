"""The receiver's store in Redis (`receive --redis`): callbacks kept in Redis's receipts stream
instead of a local journal, so any number of receivers behind a load balancer feed the workers of
every campaign (which tie receipts to their rows: distributed/receipt_applier.py).

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

import contextlib
import os
import socket
from collections.abc import Sequence
from typing import Any, Unpack

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from sms_blaster.distributed import keys as k
from sms_blaster.distributed.optouts import RedisOptOuts
from sms_blaster.distributed.redis_client import connect, unreachable
from sms_blaster.errors import JournalError
from sms_blaster.models import Delivery, Receipt, ReceiptKind, StoredReceipt
from sms_blaster.optouts.model import OptOut
from sms_blaster.receiver.stores.base import QueuedStore, StoreOptions

HOOKS_GROUP = "hooks"
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


class RedisReceiptStore(QueuedStore[str]):
    """Receipts in the shared stream, keyed by their entry id; processed through the "hooks"
    group, so each receipt is processed by one of the receivers."""

    _MAX_BATCH = 256
    _WHERE = " in Redis"
    # Left pending in the "hooks" group: a receiver (this one too) claims them after the delay.
    _SET_ASIDE = ", taken over again after a minute"

    def __init__(self, redis_url: str, **options: Unpack[StoreOptions]) -> None:
        super().__init__(**options)
        self._url = redis_url
        self._redis: aioredis.Redis | None = None
        self._consumer = f"{socket.gethostname()}-{os.getpid()}"

    @property
    def _processes(self) -> bool:
        # Without either, this receiver leaves the "hooks" group to receivers that have one.
        return self._hook is not None or self._emit is not None

    async def _open(self) -> None:
        redis = connect(self._url, 8)
        try:
            await redis.ping()
            with contextlib.suppress(ResponseError):  # the group exists already
                await redis.xgroup_create(k.RECEIPTS, HOOKS_GROUP, id="$", mkstream=True)
            with contextlib.suppress(ResponseError):
                await redis.xgroup_create(k.RECEIPTS, k.APPLIERS_GROUP, id="$", mkstream=True)
        except (RedisError, OSError) as exc:
            await redis.aclose(close_connection_pool=True)
            raise unreachable(self._url, exc) from exc
        self._redis = redis
        self._store = redis.register_script(_STORE)

    async def _close(self) -> None:
        if self._redis is not None:
            # The pool's connections too: the client does not close a pool it was given.
            await self._redis.aclose(close_connection_pool=True)

    async def _insert(
        self, receipts: Sequence[Receipt], received_at_s: float
    ) -> Sequence[StoredReceipt | None]:
        args: list[Any] = [_KEEP_MS]
        for receipt in receipts:
            fields = receipt_fields(receipt, received_at_s)
            args += [_duplicate_key(receipt), len(fields), *fields]
        try:
            # Unreachable, out of memory, a read-only replica...
            flags: Any = await self._store(keys=[k.RECEIPTS], args=args)
        except (RedisError, OSError) as exc:
            raise JournalError(str(exc)) from exc
        return [
            StoredReceipt(0, receipt, received_at_s) if flag else None
            for receipt, flag in zip(receipts, flags, strict=True)
        ]

    async def _record_optouts(self, changes: Sequence[OptOut]) -> None:
        await RedisOptOuts(self._db).record(changes)

    async def _next_to_process(self) -> Sequence[tuple[str, StoredReceipt]]:
        """What a stopped receiver held for a minute, then what no receiver read yet."""
        redis = self._db
        try:
            claimed: Any = await redis.xautoclaim(
                k.RECEIPTS, HOOKS_GROUP, self._consumer, _TAKE_OVER_MS, count=100
            )
            entries = list(claimed[1])
            if self._stopping:  # its cancellation was lost (see base._stop): no read that blocks
                return []  # what it claimed is taken over again after the delay
            read: Any = await redis.xreadgroup(
                HOOKS_GROUP, self._consumer, {k.RECEIPTS: ">"}, count=100, block=1000
            )
            entries += [entry for _, batch in read for entry in batch]
            gone = [entry_id for entry_id, fields in entries if not fields]  # trimmed since
            if gone:
                await redis.xack(k.RECEIPTS, HOOKS_GROUP, *gone)
        except RedisError as exc:
            raise JournalError(f"could not read receipts to process: {exc}") from exc
        return [(entry_id, receipt_from(fields)) for entry_id, fields in entries if fields]

    async def _mark(self, keys: Sequence[str]) -> None:
        """Acknowledged in the "hooks" group; one left unacknowledged is processed again after
        the take-over delay: at least once."""
        try:
            await self._db.xack(k.RECEIPTS, HOOKS_GROUP, *keys)
        except RedisError as exc:
            raise JournalError(str(exc)) from exc

    @property
    def _db(self) -> aioredis.Redis:
        assert self._redis is not None, "start() first"
        return self._redis
