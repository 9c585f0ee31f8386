"""A campaign's work queue on Redis: a stream read by a consumer group, and a row ledger that
keeps the journal's rule across hosts: a message whose request may have left is never resent.

    enqueue ─▶ stream entry (one per message) ─▶ XREADGROUP by a worker ─▶ in flight ─▶ settled
                                 └─ a dead worker's entries, after the lease: XAUTOCLAIM ─┘

Every state change is one Lua script, so a row's state and its stream entry move together:
- `inflight` marks a row `i:<worker>` before its request leaves; only the worker that owns the
  row (queued, or pending for that worker) may do so;
- a claimed entry of a dead worker is looked at first: queued or pending (the last request was
  refused) it is sent again; in flight it is marked in flight for the worker that claimed it,
  which settles it `unknown` (unless --retry-unknown); settled it is only acknowledged;
- `settle` writes the final state and its counters and acknowledges and deletes the entry, once:
  a row settled already, or taken over by another worker, is left alone.
A worker renews the lease of the entries it holds every third of the lease, so only a worker
that stopped (killed, partitioned, frozen) loses them.

A worker flushes a row's record to its output before it writes the row's end: Redis never holds
a row settled whose record a killed worker took with it. Killed in between, the worker leaves the
row in flight, and the takeover records it `unknown` (`worker_lost`) beside the record printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from sms_blaster.distributed import keys as k
from sms_blaster.distributed.keys import CampaignKeys, to_nano
from sms_blaster.distributed.lost import (
    CampaignLost,
    is_lost_reply,
    lost_error,
    mark,
    marker,
    what_is_gone,
)
from sms_blaster.distributed.outage import OUTAGE_ERRORS, RedisGate
from sms_blaster.distributed.redis_client import LOST_REPLY, unavailable
from sms_blaster.engine import Superseded
from sms_blaster.errors import RedisUnavailable
from sms_blaster.lookalikes import cost_saved, saved_and_added
from sms_blaster.models import Encoding, ErrorKind, Message, Record, RowError, Status

if TYPE_CHECKING:
    from sms_blaster.quiet_hours import Hold, QuietHours

log = logging.getLogger("sms_blaster.distributed")

_SETTLE_ATTEMPTS = 6  # about 3 s of Redis failing before the run stops
_INCARNATION = ["campaign_id", "created_at"]  # in the meta: set once, by the first enqueue
_CLAIMS_SETTLE_S = 2.0  # after an outage, how long claims under way may take to end (< a look)
_RECOVER_BATCH = 10_000  # entries of this worker looked at after an outage (its window's)
_DUE_BATCH = 1_000  # delayed messages moved back into the stream a call
_LAST_LOOK_S = 1.0  # past --redis-grace, the least a worker looks for Redis before it exits
_FIRST_LOOK_S = 0.05  # ... and how soon it looks again at first (doubling up to a second)
_LOOK_ERRORS: tuple[type[BaseException], ...] = (RedisError, *OUTAGE_ERRORS)

_STATE_OF = {
    Status.SENT: k.SENT,
    Status.FAILED: k.FAILED,
    Status.UNKNOWN: k.UNKNOWN,
    Status.SKIPPED: k.SKIPPED,
}


def _kept(meta: int) -> str:
    """A script's first lines: refuse to touch a campaign whose settings (KEYS[meta]) Redis
    lost, or that a worker found rolled back (its `lost` field), before any write, so a worker
    never leaves rows or counts in a Redis that lost it."""
    return (
        f"if redis.call('HEXISTS', KEYS[{meta}], 'campaign_id') == 0\n"
        f"   or redis.call('HEXISTS', KEYS[{meta}], 'lost') == 1 then\n"
        f"  return redis.error_reply('{LOST_REPLY} campaign')\nend\n"
    )


def _sequenced(meta: int, seen: int) -> str:
    """After `_kept`: the campaign's sequence (the meta's `seq`), advanced by every claim and
    settlement in the same script, must not be behind the one the worker saw last (ARGV[seen]):
    a Redis behind it went back to an older state (restarted from an older snapshot, a replica
    promoted behind its primary), and its ledger may hold rows sent since as queued. `seq` is
    the new value, for the script to return."""
    return (
        f"local seq = tonumber(redis.call('HGET', KEYS[{meta}], 'seq')) or 0\n"
        f"if seq < (tonumber(ARGV[{seen}]) or 0) then\n"
        f"  return redis.error_reply('{LOST_REPLY} rolled back')\nend\n"
        f"seq = redis.call('HINCRBY', KEYS[{meta}], 'seq', 1)\n"
    )


# A stream entry whose row the ledger does not hold: Redis lost the ledger (or part of it), and
# the row may have been sent already. Never sent on such an entry's word.
_ROW_LOST = f"return redis.error_reply('{LOST_REPLY} row')"

# KEYS: rows, queue, meta. ARGV: line, to, text, enc, seg, ref, plain, tz, from (repeated; plain:
# the parts of the text as given when smart encoding changed it, else ""; tz: the row's zones for
# quiet hours, space-separated, else ""; from: the sender a pool chose, "" for --from). Returns
# the entries
# added: a line already known (an enqueue run again) is not added twice. The meta's
# `segments_max` is what a worker reserves before it claims (the message is not known yet).
_ENQUEUE = (
    _kept(3)
    + """
local added = 0
local most = tonumber(redis.call('HGET', KEYS[3], 'segments_max')) or 0
for i = 1, #ARGV, 9 do
  if tonumber(ARGV[i + 4]) > most then most = tonumber(ARGV[i + 4]) end
  if redis.call('HSETNX', KEYS[1], ARGV[i], 'q') == 1 then
    redis.call('XADD', KEYS[2], '*', 'line', ARGV[i], 'to', ARGV[i + 1], 'text', ARGV[i + 2],
               'enc', ARGV[i + 3], 'seg', ARGV[i + 4], 'ref', ARGV[i + 5], 'plain', ARGV[i + 6],
               'tz', ARGV[i + 7], 'from', ARGV[i + 8])
    added = added + 1
  end
end
redis.call('HSET', KEYS[3], 'segments_max', most)
return added
"""
)

# The final state of a row, its counters, and the end of its stream entry.
# KEYS: rows, counts, errors, queue. ARGV: line, state, worker ("" for enqueue), entry ("" for
# none), status, error key ("" for none), segments, price ("" for none), group, then the segments
# and the cost smart encoding saved, and those it added ("" for a text sent as given; "" for no
# price), then the pool's sender ("" for --from): a sent row counts under `from:SENDER` and its
# segments under `from_segments:SENDER`, then the campaign's sequence the worker saw ("" for
# enqueue). KEYS[5]: meta. A worker's row missing from the ledger: Redis lost it (an enqueue's
# refused row is not in it yet). Returns {1 when written / 0, the campaign's sequence}.
_SETTLE = (
    _kept(5)
    + _sequenced(5, 15)
    + f"""
local state = redis.call('HGET', KEYS[1], ARGV[1])
if (not state) and ARGV[3] ~= '' then {_ROW_LOST} end
local first = state and string.sub(state, 1, 1)
local final = first == 's' or first == 'f' or first == 'u' or first == 'k'
local mine = (not state) or (ARGV[3] ~= '' and (state == 'q' or string.sub(state, 3) == ARGV[3]))
if ARGV[4] ~= '' and (final or mine) then
  redis.call('XACK', KEYS[4], ARGV[9], ARGV[4])
  redis.call('XDEL', KEYS[4], ARGV[4])
end
if final or not mine then return {{0, seq}} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[2], ARGV[5], 1)
if ARGV[6] ~= '' then redis.call('HINCRBY', KEYS[3], ARGV[6], 1) end
if ARGV[5] == 'sent' then
  redis.call('HINCRBY', KEYS[2], 'segments', ARGV[7])
  if ARGV[8] ~= '' then redis.call('HINCRBY', KEYS[2], 'cost_nano', ARGV[8]) end
  if ARGV[10] ~= '' then
    redis.call('HINCRBY', KEYS[2], 'texts_changed', 1)
    redis.call('HINCRBY', KEYS[2], 'segments_saved', ARGV[10])
    redis.call('HINCRBY', KEYS[2], 'segments_added', ARGV[12])
  end
  if ARGV[11] ~= '' then redis.call('HINCRBY', KEYS[2], 'cost_saved_nano', ARGV[11]) end
  if ARGV[13] ~= '' then redis.call('HINCRBY', KEYS[2], 'cost_added_nano', ARGV[13]) end
  if ARGV[14] ~= '' then
    redis.call('HINCRBY', KEYS[2], 'from:' .. ARGV[14], 1)
    redis.call('HINCRBY', KEYS[2], 'from_segments:' .. ARGV[14], ARGV[7])
  end
end
return {{1, seq}}
"""
)

# Claim the next new entry and mark its row in flight in one round trip: the rate slot is
# already taken, so the request leaves right after. KEYS: queue, rows, meta. ARGV: group, worker,
# the campaign's sequence the worker saw. Returns nil, or {entry id, fields, 1 when marked / 0
# when the row is not queued any more, the campaign's sequence}.
_CLAIM_NEW = (
    _kept(3)
    + _sequenced(3, 3)
    + f"""
local read = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', 1,
                        'STREAMS', KEYS[1], '>')
if not read then return nil end
local entry = read[1][2][1]
local fields = entry[2]
local line
for i = 1, #fields, 2 do
  if fields[i] == 'line' then line = fields[i + 1] end
end
local state = redis.call('HGET', KEYS[2], line)
if not state then {_ROW_LOST} end
if state == 'q' then
  redis.call('HSET', KEYS[2], line, 'i:' .. ARGV[2])
  return {{entry[1], fields, 1, seq}}
end
return {{entry[1], fields, 0, seq}}
"""
)

# KEYS: rows, meta. ARGV: line, worker, the campaign's sequence the worker saw. 1 when the row is
# now in flight for this worker (already in flight for it: a retry, which the engine allows only
# when no attempt may have been accepted).
_INFLIGHT = (
    _kept(2)
    + _sequenced(2, 3)
    + f"""
local state = redis.call('HGET', KEYS[1], ARGV[1])
if not state then {_ROW_LOST} end
if state == 'q' or state == 'p:' .. ARGV[2] or state == 'i:' .. ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], 'i:' .. ARGV[2])
  return 1
end
return 0
"""
)

# KEYS: rows, meta. ARGV: line, worker. The last request was refused: a retry waits.
_RETRYING = (
    _kept(2)
    + """
if redis.call('HGET', KEYS[1], ARGV[1]) == 'i:' .. ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], 'p:' .. ARGV[2])
end
return 0
"""
)

# A claimed message handed back unsent (the worker is stopping): queued again as a new entry.
# KEYS: rows, queue, meta. ARGV: worker, entry, group, then the message's nine fields (_ENQUEUE's
# order), then 1 when the claim marked it in flight but no request left, then the campaign's
# sequence the worker saw. An entry delivered
# before (a takeover of a stopped worker's row: its request may have left) is never queued again
# while in flight: its lease runs out and a takeover records it `unknown`.
_RELEASE = (
    _kept(3)
    + _sequenced(3, 14)
    + """
local state = redis.call('HGET', KEYS[1], ARGV[4])
local fresh = false
if ARGV[13] == '1' and state == 'i:' .. ARGV[1] then
  local pending = redis.call('XPENDING', KEYS[2], ARGV[3], ARGV[2], ARGV[2], 1)
  fresh = pending[1] ~= nil and tonumber(pending[1][4]) == 1
end
if state == 'q' or state == 'p:' .. ARGV[1] or fresh then
  redis.call('HSET', KEYS[1], ARGV[4], 'q')
  redis.call('XACK', KEYS[2], ARGV[3], ARGV[2])
  redis.call('XDEL', KEYS[2], ARGV[2])
  redis.call('XADD', KEYS[2], '*', 'line', ARGV[4], 'to', ARGV[5], 'text', ARGV[6],
             'enc', ARGV[7], 'seg', ARGV[8], 'ref', ARGV[9], 'plain', ARGV[10], 'tz', ARGV[11],
             'from', ARGV[12])
  return 1
end
return 0
"""
)

# An entry claimed from a worker that stopped. KEYS: rows, queue, meta. ARGV: line, worker, entry,
# retry unknown (1/0), group, the campaign's sequence the worker saw. Returns 'send', 'done', or
# 'unknown': the request may have left, and the row is this worker's to settle `unknown` (in
# flight for it until its record is out, so a takeover of this worker in between does the same).
_TAKE_OVER = (
    _kept(3)
    + _sequenced(3, 6)
    + f"""
local state = redis.call('HGET', KEYS[1], ARGV[1])
if not state then {_ROW_LOST} end
local first = state and string.sub(state, 1, 1)
if first == 's' or first == 'f' or first == 'u' or first == 'k' then
  redis.call('XACK', KEYS[2], ARGV[5], ARGV[3])
  redis.call('XDEL', KEYS[2], ARGV[3])
  return 'done'
end
if state == 'q' then return 'send' end
if first == 'p' or ARGV[4] == '1' then
  redis.call('HSET', KEYS[1], ARGV[1], 'p:' .. ARGV[2])
  return 'send'
end
redis.call('HSET', KEYS[1], ARGV[1], 'i:' .. ARGV[2])
return 'unknown'
"""
)


# After an outage: a Redis that lost its last writes (everysec, a promoted replica) may have lost
# the claim of a row this worker holds, which would let another worker claim it and send it
# again. KEYS: rows, meta. ARGV: worker, then the held lines.
_REMARK = (
    _kept(2)
    + """
for i = 2, #ARGV do
  if redis.call('HGET', KEYS[1], ARGV[i]) == 'q' then
    redis.call('HSET', KEYS[1], ARGV[i], 'i:' .. ARGV[1])
  end
end
return 0
"""
)

# Renew the lease of the entries this worker holds, each only while it is still this worker's:
# its pending entry owned by this worker (XAUTOCLAIM by another moves it first) and its row not
# in flight or refused for another worker. A plain XCLAIM would take back an entry another
# worker took over while this one was frozen past --lease. KEYS: queue, rows, meta. ARGV: group,
# worker, the campaign's sequence the worker saw, then entry and line, repeated. Returns {the
# lines taken over by another worker, the lines settled already}: by this worker (its end just
# written) or by another that took the row over and settled it.
_RENEW = (
    _kept(3)
    + _sequenced(3, 3)
    + """
local taken, done = {}, {}
for i = 4, #ARGV, 2 do
  local entry, line = ARGV[i], ARGV[i + 1]
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], entry, entry, 1)
  local owner = pending[1] and pending[1][2]
  local state = redis.call('HGET', KEYS[2], line)
  local kind = state and string.sub(state, 1, 2)
  local other = (kind == 'i:' or kind == 'p:') and string.sub(state, 3) ~= ARGV[2]
  local first = state and string.sub(state, 1, 1)
  if (owner and owner ~= ARGV[2]) or other then
    taken[#taken + 1] = line
  elseif first == 's' or first == 'f' or first == 'u' or first == 'k' then
    done[#done + 1] = line
  elseif owner then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, entry, 'JUSTID')
  end
end
return {taken, done}
"""
)

# A campaign found rolled back: every script refuses it from now on (`_kept`). KEYS: meta.
# ARGV: what happened. A meta already gone is not made again.
_MARK_ROLLED_BACK = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'lost', ARGV[1]) end
return 0
"""

# A claimed message inside quiet hours: queued again, but in the delayed set until its ready
# time, not in the stream. KEYS: rows, queue, delayed, meta. ARGV: worker, entry, group, ready time
# (ms), line, the message's fields as a JSON array (_ENQUEUE's order). Only a row this worker
# holds and never sent (queued, marked by its claim, or refused) is put off; 1 when it was.
_DEFER = (
    _kept(4)
    + """
local state = redis.call('HGET', KEYS[1], ARGV[5])
if state == 'q' or state == 'i:' .. ARGV[1] or state == 'p:' .. ARGV[1] then
  redis.call('HSET', KEYS[1], ARGV[5], 'q')
  redis.call('XACK', KEYS[2], ARGV[3], ARGV[2])
  redis.call('XDEL', KEYS[2], ARGV[2])
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[6])
  return 1
end
return 0
"""
)

# Delayed messages whose ready time came: back into the stream. KEYS: delayed, queue, meta. ARGV:
# now (ms; +inf for all of them), most to move. Returns how many moved.
_DUE = (
    _kept(3)
    + """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, member in ipairs(due) do
  local f = cjson.decode(member)
  redis.call('XADD', KEYS[2], '*', 'line', f[1], 'to', f[2], 'text', f[3], 'enc', f[4],
             'seg', f[5], 'ref', f[6], 'plain', f[7], 'tz', f[8], 'from', f[9])
  redis.call('ZREM', KEYS[1], member)
end
return #due
"""
)

# Is the campaign drained: enqueued to its end, no entry held or waiting in the stream (those
# after the group's last delivered one; its `lag` may be unknown once entries were deleted), all
# at one moment. KEYS: meta, queue, rows, counts, delayed. ARGV: group. Returns _ENQUEUING,
# _BUSY, or the rows neither settled nor put off (the ledger's rows less those its counts hold
# final and those delayed): more than 0, rows Redis lost the entries of, never settled.
_ENQUEUING, _BUSY = -2, -1
_DRAINED = (
    _kept(1)
    + f"""
if redis.call('HGET', KEYS[1], 'done') ~= '1' then return {_ENQUEUING} end
if redis.call('EXISTS', KEYS[2]) == 0 then
  return redis.error_reply('NOGROUP the stream is gone')
end
local last, pending
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[2])) do
  local fields = {{}}
  for i = 1, #group, 2 do fields[group[i]] = group[i + 1] end
  if fields['name'] == ARGV[1] then
    last, pending = fields['last-delivered-id'], fields['pending']
  end
end
if not last then return redis.error_reply('NOGROUP the consumer group is gone') end
if pending > 0 then return {_BUSY} end
if #redis.call('XRANGE', KEYS[2], '(' .. last, '+', 'COUNT', 1) > 0 then return {_BUSY} end
local settled = 0
for _, n in ipairs(redis.call('HMGET', KEYS[4], 'sent', 'failed', 'unknown', 'skipped')) do
  settled = settled + (tonumber(n) or 0)
end
return redis.call('HLEN', KEYS[3]) - settled - redis.call('ZCARD', KEYS[5])
"""
)

# Every script, for loading them before the first send.
SCRIPTS = (
    _ENQUEUE, _SETTLE, _CLAIM_NEW, _INFLIGHT, _RETRYING, _RELEASE, _TAKE_OVER, _REMARK, _RENEW,
    _DEFER, _DUE, _DRAINED,
)  # fmt: skip


# The fields of a stream entry, in the order message_fields gives their values (the scripts'
# ARGV order).
ENTRY_FIELDS = ("line", "to", "text", "enc", "seg", "ref", "plain", "tz", "from")


def message_fields(message: Message) -> list[str]:
    """The stream entry of a message, in _ENQUEUE's argument order."""
    return [
        str(message.line),
        message.to,
        message.text,
        message.encoding.value,
        str(message.segments),
        message.client_ref,
        "" if message.plain_segments is None else str(message.plain_segments),
        " ".join(message.time_zones),
        message.sender or "",
    ]


def message_from(fields: dict[str, str]) -> Message:
    plain = fields.get("plain")  # absent from an entry an older sms-blaster queued
    return Message(
        int(fields["line"]),
        fields["to"],
        fields["text"],
        Encoding(fields["enc"]),
        int(fields["seg"]),
        fields["ref"],
        plain_segments=int(plain) if plain else None,
        time_zones=tuple(fields.get("tz", "").split()),
        sender=fields.get("from") or None,  # an entry of an older enqueue has none
    )


def _ready_s(hold: Hold) -> float:
    """When a message put off by `hold` is looked at again: the end of its quiet hours, or in an
    hour when no hour within two days is outside them in all its zones."""
    return hold.until_s if hold.until_s is not None else time.time() + 3600


def _saved(record: Record) -> tuple[str, str, str, str]:
    """The segments and the cost smart encoding saved on a sent row, then those it added to it
    (`always`); "" for a row sent as given, and costs "" for no price."""
    plain, segments = record.plain_segments, record.segments or 0
    if plain is None or record.status is not Status.SENT:
        return "", "", "", ""
    saved, added = saved_and_added(plain - segments)
    price = record.price
    if price is None:
        return str(saved), "", str(added), ""
    cost, cost_added = saved_and_added(cost_saved(price, segments, plain))
    return str(saved), to_nano(cost), str(added), to_nano(cost_added)


async def _nothing_to_flush() -> bool:
    return True  # no records of its own (enqueue prints those Redis says are its to print)


def _redis_error(exc: RedisError) -> RedisUnavailable:
    return unavailable("Redis", exc)


class CampaignQueue:
    """One process's handle on a campaign's queue: enqueue, claim, and the row ledger."""

    def __init__(
        self,
        redis: aioredis.Redis,
        campaign: str,
        *,
        worker: str = "",
        lease_s: float = 60.0,
        retry_unknown: bool = False,
        follow: bool = False,
        stopping: Callable[[], bool] = lambda: False,
        on_error: Callable[[str], None] = lambda message: None,
        block_s: float = 0.5,
        gate: RedisGate | None = None,
        quiet: QuietHours | None = None,
    ) -> None:
        self.keys = CampaignKeys(campaign)
        self._release_keys = [self.keys.rows, self.keys.queue, self.keys.meta]
        self.quiet = quiet  # --quiet-hours of the campaign: rows inside it are put off
        self._window = "" if quiet is None else str(quiet.window)
        self._redis = redis
        self._worker = worker
        self._lease_ms = int(lease_s * 1000)
        # Messages idle longer than this are taken over: the longest --lease of the campaign's
        # running workers (`take_over_after`), who renew theirs at a third of it.
        self._takeover_lease_s: Callable[[], float] = lambda: lease_s
        self._retry_unknown = retry_unknown
        self._follow = follow
        self._stopping = stopping
        self._on_error = on_error  # a row's end could not be written: the run must stop
        self._block_ms = int(block_s * 1000)
        # The messages this worker holds, by line: their stream entry and the message itself.
        self._held: dict[int, tuple[str, Message]] = {}
        self._autoclaim_cursor = "0-0"
        self._told_waiting = False
        self._next_autoclaim_s = 0.0
        self._enqueue = redis.register_script(_ENQUEUE)
        self._settle = redis.register_script(_SETTLE)
        self._inflight = redis.register_script(_INFLIGHT)
        self._retrying = redis.register_script(_RETRYING)
        self._take_over = redis.register_script(_TAKE_OVER)
        self._release = redis.register_script(_RELEASE)
        self._claim_new = redis.register_script(_CLAIM_NEW)
        self._remark = redis.register_script(_REMARK)
        self._renew_owned = redis.register_script(_RENEW)
        self._defer = redis.register_script(_DEFER)
        self._due = redis.register_script(_DUE)
        self._drain_state = redis.register_script(_DRAINED)
        self._next_due_s = 0.0
        self._put_off_s: dict[int, float] = {}  # by line: held as it was about to leave, until
        self._marked: set[int] = set()  # claimed and marked in flight by the same script
        self._pending_writes: set[asyncio.Task[Any]] = set()
        self._retry_marks: dict[int, asyncio.Task[Any]] = {}  # by line, until written
        self._renewer: asyncio.Task[None] | None = None
        # Set as the queue closes: the renewer ends at its next turn even when its cancellation
        # was lost (redis-py sends a command through asyncio.wait_for, which on Python 3.11 drops
        # a cancellation that lands as the command is written, CPython issue 86296).
        self._closing = asyncio.Event()
        self._renewed_s = time.monotonic()  # the last renewal of the held entries' lease
        # Lines another worker took over (this one was frozen past --lease): never sent here.
        self._taken: set[int] = set()
        # By held line: when its lease was last confirmed (before the claim or renewal call).
        self._confirmed_s: dict[int, float] = {}
        self._ending: set[int] = set()  # held lines this worker settled (its end being written)
        self.dropped = 0  # of those, messages whose request had not left: no record here
        self._confirming: asyncio.Future[None] | None = None  # a renewal before a send
        self._seq_seen = 0  # the highest campaign sequence a script returned (`_sequenced`)
        # By line: the ends (final state or hand-back) that could not be written because Redis
        # was gone past --redis-grace; `hand_back` writes them if Redis answers in time.
        self._left: dict[int, Callable[[], Awaitable[Any]]] = {}
        self._gate = gate or RedisGate()
        self._gate.on_back(self._recover)
        self._claiming = 0  # claims under way, whose answers may still come
        self._claims_idle = asyncio.Event()
        self._claims_idle.set()
        self.unwritten = 0  # rows whose end could not be written: another worker takes them
        # Rows settled here whose end Redis refused: another worker took them over after --lease
        # first (this one frozen, or Redis paused, past it) and printed its own record of them.
        self.taken_first = 0
        self._releasing: set[int] = set()  # lines being handed back: `q` is meant for them
        self._records_out: Callable[[], Awaitable[bool]] = _nothing_to_flush
        self.lost: str | None = None  # Redis lost the campaign (or its queue): what, and the fix
        self._incarnation: list[Any] | None = None  # the meta's campaign_id and created_at
        self._loss: asyncio.Future[CampaignLost] | None = None

    # --- enqueue --------------------------------------------------------------------------------

    async def ensure_group(self) -> None:
        """Create the stream and its consumer group (from the first entry) unless they exist."""
        try:
            await self._redis.xgroup_create(self.keys.queue, k.SENDERS_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def add(self, messages: Iterable[Message]) -> int:
        """Queue messages not queued before; returns how many were added."""
        args: list[str] = []
        for message in messages:
            args += message_fields(message)
        if not args:
            return 0
        keys = [self.keys.rows, self.keys.queue, self.keys.meta]
        added = await self._enqueue(keys=keys, args=args)
        return int(added)

    async def record(self, record: Record) -> bool:
        """Keep the final record of a row that will not be queued (invalid, duplicate)."""
        return await self._write_final(record, "")

    # --- claims (the engine's Claims) -----------------------------------------------------------

    async def claim(self) -> Message | Record | None:
        try:
            return await self._gate.call(self._counted_claim, new_work=True)
        except RedisError as exc:
            raise await self._error(exc) from exc

    async def _error(self, exc: RedisError) -> RedisUnavailable:
        """The run's error for a Redis error: the campaign's loss, once it is one."""
        if is_lost_reply(exc) or self.lost is not None:
            return await self._lost()
        return _redis_error(exc)

    async def _lost(self, what: str | None = None) -> CampaignLost:
        """Redis lost the campaign, its queue or rows of its ledger: find out what, once, leave
        the marker of it (see distributed.lost), shut the gate so nothing more is written into
        that Redis, and stop the run."""
        if self._loss is None:
            self._loss = asyncio.ensure_future(self._find_loss(what))
        return await asyncio.shield(self._loss)

    async def _find_loss(self, what: str | None) -> CampaignLost:
        rolled_back = None
        try:
            # Another worker's finding first (a rollback leaves nothing missing to find).
            rolled_back = None if what else await self._rolled_back()
            what = (
                what
                or await marker(self._redis, self.keys)
                or rolled_back
                or await what_is_gone(self._redis, self.keys)
            )
        except RedisError:
            what = f"Redis lost campaign '{self.keys.name}' or its queue"
        await mark(self._redis, self.keys, what, self._worker)
        if rolled_back:
            # Every script refuses the campaign from now on, for every worker: one that wrote
            # nothing since the older state would not see it behind, and would send rows again.
            with contextlib.suppress(RedisError):
                await self._redis.eval(_MARK_ROLLED_BACK, 1, self.keys.meta, what)
        error = lost_error(what)
        self.lost = str(error)
        self._gate.shut(self.lost)
        self._on_error(self.lost)
        return error

    async def _rolled_back(self) -> str | None:
        """What happened, when the campaign's sequence in Redis is behind the one this worker
        saw: Redis went back to an older state of it."""
        seen = self._seq_seen  # before the read: a script answered meanwhile may go past it
        *incarnation, seq_text = await self._redis.hmget(self.keys.meta, [*_INCARNATION, "seq"])
        if incarnation[0] is None or (
            self._incarnation is not None and incarnation != self._incarnation
        ):
            return None  # lost, or enqueued again since: not the same campaign gone back
        seq = int(seq_text or 0)
        if seq >= seen:
            return None
        return (
            f"Redis went back to an older state of campaign '{self.keys.name}' (its sequence "
            f"{seq:,} is behind the {seen:,} this worker saw: restarted from an older "
            "snapshot, an RDB or an AOF not fsynced always, or a replica promoted behind its "
            "primary): rows sent since may be queued again in it"
        )

    async def _counted_claim(self) -> Message | Record | None:
        self._claiming += 1
        self._claims_idle.clear()
        try:
            return await self._claim()
        finally:
            self._claiming -= 1
            if not self._claiming:
                self._claims_idle.set()

    async def _claim(self) -> Message | Record | None:
        while not self._stopping():
            await self._move_due()
            item = await self._claim_abandoned() or await self._claim_next()
            if isinstance(item, Message) and await self._put_off(item):
                continue
            if item is not None:
                return item
            if not self._follow and await self._drained():
                return None
            # Nothing new: wait for an entry without polling hard, then claim it as above.
            self._next_autoclaim_s = 0.0
            await self._redis.xread({self.keys.queue: "$"}, count=1, block=self._block_ms)
        return None

    async def _claim_next(self) -> Message | None:
        """The next new entry, already marked in flight for this worker."""
        while True:
            asked_s = time.monotonic()  # Redis's idle time of the entry starts after this
            claimed: Any = await self._claim_new(
                keys=[self.keys.queue, self.keys.rows, self.keys.meta],
                args=[k.SENDERS_GROUP, self._worker, self._seq_seen],
            )
            if claimed is None:
                return None
            entry_id, flat, marked, seq = claimed
            self._saw(seq)
            message = message_from(dict(zip(flat[::2], flat[1::2], strict=True)))
            if not marked:  # settled or taken already: only acknowledge it
                await self._release_entry(entry_id)
                continue
            self._held[message.line] = (entry_id, message)
            self._confirmed_s[message.line] = asked_s
            self._marked.add(message.line)
            return message

    async def _put_off(self, message: Message) -> bool:
        """Put a claimed message inside quiet hours off until they end (the delayed set; no
        record: the worker that sends it prints it); False to send it now."""
        hold = None if self.quiet is None else self.quiet.hold(message)
        if hold is None:
            return False
        entry_id, _ = self._held.pop(message.line)
        self._marked.discard(message.line)
        await self._defer_entry(entry_id, message, _ready_s(hold))
        return True

    def held_record(self, message: Message) -> Record | None:
        """Just before a message's first request leaves: the record of one inside quiet hours
        now (a window opened while it waited for its slot), which `settle` puts off instead of
        printing; None to send it."""
        hold = None if self.quiet is None else self.quiet.hold(message)
        if hold is None or self.quiet is None:
            return None
        self._put_off_s[message.line] = _ready_s(hold)
        return self.quiet.record(message, hold)

    def _defer_entry(self, entry_id: str, message: Message, ready_s: float) -> Awaitable[Any]:
        return self._defer(
            keys=[self.keys.rows, self.keys.queue, self.keys.delayed, self.keys.meta],
            args=[
                self._worker, entry_id, k.SENDERS_GROUP, int(ready_s * 1000), message.line,
                json.dumps(message_fields(message)),
            ],
        )  # fmt: skip

    async def _move_due(self) -> None:
        """At most once a second: follow the campaign's window (an enqueue may change it), and
        move the delayed messages whose quiet hours ended back into the stream."""
        now = time.monotonic()
        if now < self._next_due_s:
            return
        self._next_due_s = now + 1.0
        await self.follow_window()
        if self.quiet is not None:
            await self._move_delayed(int(time.time() * 1000))

    async def follow_window(self) -> None:
        """Judge by the campaign's window as its last enqueue set it ("" for none)."""
        window = str(await self._redis.hget(self.keys.meta, "quiet_hours") or "")
        if window != self._window:
            from sms_blaster.quiet_hours import QuietHours, parse_window  # only runs that use it

            self._window = window
            self.quiet = QuietHours(parse_window(window)) if window else None

    async def waiting(self) -> tuple[int, list[float]]:
        """The messages put off in Redis: how many, and the ready times (s) of the earliest and
        of the earliest still ahead."""
        now_ms = int(time.time() * 1000)
        delayed = self.keys.delayed
        count = int(await self._redis.zcard(delayed))
        first = await self._redis.zrange(delayed, 0, 0, withscores=True)
        ahead = await self._redis.zrangebyscore(
            delayed, f"({now_ms}", "+inf", start=0, num=1, withscores=True
        )
        return count, [score / 1000 for _, score in [*first, *ahead]]

    async def release_delayed(self) -> None:
        """Move every delayed message back into the stream (the campaign's window changed:
        each is judged again under the new one)."""
        await self._move_delayed("+inf")

    async def _move_delayed(self, until_ms: int | str) -> None:
        keys = [self.keys.delayed, self.keys.queue, self.keys.meta]
        while await self._due(keys=keys, args=[until_ms, _DUE_BATCH]) == _DUE_BATCH:
            pass

    async def _release_entry(self, entry_id: str) -> None:
        await self._redis.xack(self.keys.queue, k.SENDERS_GROUP, entry_id)

    async def _claim_abandoned(self) -> Message | Record | None:
        """An entry whose worker stopped renewing its lease, at most once a second."""
        now = time.monotonic()
        if now < self._next_autoclaim_s:
            return None
        while True:
            asked_s = time.monotonic()
            cursor, entries, *_ = await self._redis.xautoclaim(
                self.keys.queue,
                k.SENDERS_GROUP,
                self._worker,
                min_idle_time=max(self._lease_ms, int(self._takeover_lease_s() * 1000)),
                start_id=self._autoclaim_cursor,
                count=1,
            )
            self._autoclaim_cursor = cursor
            if not entries:
                self._next_autoclaim_s = now + 1.0
                return None
            entry_id, fields = entries[0]
            if fields is None:  # deleted since: nothing to do
                continue
            if self._held.get(int(fields["line"]), ("", None))[0] == entry_id:
                # This worker's own entry, its lease lapsed while Redis (or this process) was
                # held up: the claim renewed it; taken over, the row would be recorded twice.
                continue
            message = message_from(fields)
            verdict = await self._take_over(
                keys=[self.keys.rows, self.keys.queue, self.keys.meta],
                args=[
                    message.line,
                    self._worker,
                    entry_id,
                    int(self._retry_unknown),
                    k.SENDERS_GROUP,
                    self._seq_seen,
                ],
            )
            if verdict in ("send", "unknown"):
                self._confirmed_s[message.line] = asked_s
            if verdict == "send":
                log.info("took over line %d from a stopped worker", message.line)
                self._held[message.line] = (entry_id, message)
                return message
            if verdict == "unknown":
                self._held[message.line] = (entry_id, message)  # settled as any row it holds
                error = RowError(
                    ErrorKind.AMBIGUOUS,
                    "worker_lost",
                    "the worker sending it stopped while the request was in flight; "
                    "it may have been sent",
                )
                return Record(
                    message.line,
                    message.to,
                    Status.UNKNOWN,
                    message.client_ref,
                    0,
                    segments=message.segments,
                    encoding=message.encoding,
                    error=error,
                    plain_segments=message.plain_segments,
                    sender=message.sender,  # the sender its request may have left from
                )

    async def _drained(self) -> bool:
        """Every row was enqueued and every entry was settled; a row neither settled nor in the
        queue (nor put off) is a loss, which stops the run rather than let it end well."""
        keys = self.keys
        state = int(
            await self._drain_state(
                keys=[keys.meta, keys.queue, keys.rows, keys.counts, keys.delayed],
                args=[k.SENDERS_GROUP],
            )
        )
        if state > 0:
            raise await self._lost(
                f"{state:,} rows of campaign '{keys.name}' are not settled and in no entry of "
                "its queue: Redis lost their entries (deleted, or the stream or its consumer "
                "group deleted, flushed or evicted); those in flight may have been sent "
                f"(`sms-blaster report --redis URL --campaign {keys.name}` counts them)"
            )
        if state == _ENQUEUING:
            if not self._told_waiting:
                self._told_waiting = True
                log.warning(
                    "the campaign's enqueue has not finished (or was stopped): waiting for more "
                    "messages; run `sms-blaster enqueue` again to complete it"
                )
            return False
        return state == 0

    # --- the ledger (the engine's Ledger) -------------------------------------------------------

    def admit(self, item: Message | Record) -> Record | None:
        return None  # the enqueue decided: every claimed message is to be handled

    async def inflight(self, message: Message, attempt: int) -> None:
        if self._lease_in_doubt(message.line) and message.line not in self._taken:
            # Held up past a good part of the lease (frozen, stopped): another worker may have
            # taken this message over and recorded it. Sent only once Redis confirms it is
            # still this worker's, and its lease renewed; what is left is a freeze between this
            # check and the request's write.
            try:
                await self._gate.call(
                    functools.partial(self._confirm_lease, message.line), new_work=True
                )
            except RedisError as exc:
                raise await self._error(exc) from exc
        if message.line in self._taken:
            self._marked.discard(message.line)
            self._held.pop(message.line, None)
            self.dropped += 1
            raise Superseded(f"line {message.line} was taken over by another worker")
        if message.line in self._marked:  # marked by the claim itself: the first attempt
            self._marked.discard(message.line)
            return
        retry_mark = self._retry_marks.pop(message.line, None)
        if retry_mark is not None:
            # The `p:` mark of the last attempt is written first: written after this one, it
            # would leave a request in flight marked as refused, which a takeover resends.
            await asyncio.gather(retry_mark, return_exceptions=True)
        try:
            mine = await self._gate.call(
                lambda: self._inflight(
                    keys=[self.keys.rows, self.keys.meta],
                    args=[message.line, self._worker, self._seq_seen],
                ),
                new_work=True,
            )
        except RedisError as exc:
            raise await self._error(exc) from exc
        if not mine:
            # Another worker owns the row now: it records it; this one lets go of its entry.
            self._held.pop(message.line, None)
            self._marked.discard(message.line)
            raise Superseded(f"line {message.line} was taken over by another worker")

    def retrying(self, message: Message, attempts: int) -> None:
        args: list[str | int] = [message.line, self._worker]
        mark = self._spawn(
            self._gate.call(
                lambda: self._retrying(keys=[self.keys.rows, self.keys.meta], args=args)
            )
        )
        self._retry_marks[message.line] = mark
        mark.add_done_callback(functools.partial(self._mark_written, message.line))

    def _mark_written(self, line: int, task: asyncio.Task[Any]) -> None:
        if self._retry_marks.get(line) is task:
            del self._retry_marks[line]

    def write_records_first(self, flushed: Callable[[], Awaitable[bool]]) -> None:
        """Wait for `flushed` (False: the records could not be written) before writing a row's
        end: the row's record is then out of the process."""
        self._records_out = flushed

    def settle(self, record: Record, publish: Callable[[Record], None]) -> None:
        self._ending.add(record.line)
        ready_s = self._put_off_s.pop(record.line, None)
        stopped = record.error is not None and record.error.kind is ErrorKind.STOPPED
        if record.line in self._taken and (ready_s is not None or stopped):
            # Taken over by another worker, and no request of it left from here: that worker
            # records it, this one prints nothing and writes nothing.
            self._marked.discard(record.line)
            self.dropped += 1
            return
        if ready_s is not None:
            # Inside quiet hours as it was about to leave: put off, with no record (the worker
            # that sends it prints it); held (its lease renewed) until the delayed set has it.
            self._marked.discard(record.line)
            entry, put_off = self._held[record.line]
            write = functools.partial(self._defer_entry, entry, put_off, ready_s)
            self._spawn(self._until_written(record.line, write))
            return
        # Published at once, and flushed before the row's end is written (`_end`); the row
        # stays held (never taken over) until then, and a worker that dies first leaves it to
        # the lease, which records it `unknown`.
        publish(record)
        # A stopped row was never accepted (a request that may have been is unknown), even one
        # a fatal answer refused while marked in flight: its release must not wait on `retrying`.
        never_sent = record.line in self._marked or stopped
        self._marked.discard(record.line)
        entry_id, message = self._held.get(record.line, ("", None))
        if stopped and message:
            # Never sent (the worker is stopping): back to the queue for another worker.
            fields = message_fields(message)
            args = [
                self._worker, entry_id, k.SENDERS_GROUP, *fields, str(int(never_sent)),
                self._seq_seen,
            ]  # fmt: skip
            keys = self._release_keys
            self._releasing.add(record.line)
            self._spawn(
                self._until_written(record.line, functools.partial(self._release_call, keys, args))
            )
        else:
            self._spawn(self._end(record, entry_id))

    async def _end(self, record: Record, entry_id: str) -> None:
        """Write a row's end once its record is out."""
        if not await self._records_out():
            # The output failed and the run stops: the row stays in flight for a takeover,
            # which records it (`unknown` when the request may have left).
            self.unwritten += 1
            return
        await self._until_written(record.line, functools.partial(self._write_end, record, entry_id))

    async def _write_end(self, record: Record, entry_id: str) -> None:
        if await self._write_final(record, entry_id):
            return
        # Refused: written by this worker already (a try again after a lost answer), or the
        # row is another worker's now.
        state = await self._redis.hget(self.keys.rows, str(record.line))
        if state is None or state[0] != _STATE_OF[record.status]:
            self.taken_first += 1

    async def _until_written(self, line: int, write: Callable[[], Awaitable[Any]]) -> None:
        """Write a row's end, trying again while Redis fails; the entry stays held (its lease
        renewed) until then, so no other worker takes over a row that was settled."""
        delay_s = 0.1
        for attempt in range(_SETTLE_ATTEMPTS):
            try:
                await self._gate.call(write)  # waits out a Redis outage, up to --redis-grace
                break
            except _LOOK_ERRORS as exc:  # a connection's own OSError too, past the grace
                if is_lost_reply(exc) or self.lost is not None:
                    # Nowhere to write it: the record printed is all that is left of the row.
                    self.unwritten += 1
                    await self._lost()
                    return
                if self._gate.gone:
                    # Past --redis-grace (this call failed, or was not tried): the run stops;
                    # `hand_back` writes it if Redis answers in time.
                    self._left[line] = write
                    return
                if attempt == _SETTLE_ATTEMPTS - 1 or self._gate.abandoned:
                    self.unwritten += 1
                    self._on_error(f"Redis: cannot record line {line} ({exc})")
                    return
                log.warning("could not record line %d in Redis, trying again: %s", line, exc)
                await asyncio.sleep(delay_s)
                delay_s *= 2
        self._held.pop(line, None)
        self._releasing.discard(line)

    async def _write_final(self, record: Record, entry_id: str) -> bool:
        error = record.error
        state = _STATE_OF[record.status]
        if record.status is Status.SENT and (record.segments or 1) > 1:
            state += str(record.segments)  # the report counts a sent row's parts
        saved, cost_saved, added, cost_added = _saved(record)
        done = await self._settle(
            keys=[
                self.keys.rows,
                self.keys.counts,
                self.keys.errors,
                self.keys.queue,
                self.keys.meta,
            ],
            args=[
                record.line,
                state,
                self._worker,
                entry_id,
                record.status.value,
                f"{error.kind.value}/{error.code}" if error else "",
                record.segments or 0,
                "" if record.price is None else to_nano(record.price),
                k.SENDERS_GROUP,
                saved,
                cost_saved,
                added,
                cost_added,
                record.sender or "",
                self._seq_seen if self._worker else "",
            ],
        )
        written, seq = done
        self._saw(seq)
        return bool(written)

    def _saw(self, seq: Any) -> None:
        """Keep the campaign's sequence as a script returned it: Redis found behind it later
        went back to an older state (see `_sequenced`)."""
        self._seq_seen = max(self._seq_seen, int(seq))

    def _spawn(self, write: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(write)
        self._pending_writes.add(task)
        task.add_done_callback(self._written)
        return task

    def _written(self, task: asyncio.Task[Any]) -> None:
        self._pending_writes.discard(task)
        if not task.cancelled() and task.exception() is not None and self.lost is None:
            log.error("could not record a row in Redis: %s", task.exception())

    # --- leases -------------------------------------------------------------------------------

    def take_over_after(self, lease_s: Callable[[], float]) -> None:
        """Take over only messages idle longer than `lease_s()` (and this worker's --lease)."""
        self._takeover_lease_s = lease_s

    def start(self) -> None:
        """Renew the lease of the held entries every third of the lease."""
        self._renewer = asyncio.create_task(self._renew_leases(), name="lease-renewer")

    async def _renew_leases(self) -> None:
        while not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._lease_ms / 3000):
                    await self._closing.wait()
            if (
                self._closing.is_set()
                or self._gate.down
                or self._gate.gone
                or self.lost is not None
            ):
                continue  # renewed once Redis is back (`_recover`); gone: left to lapse; lost: none
            with contextlib.suppress(*_LOOK_ERRORS):  # a raw OSError must not end the renewer
                await self._renew()

    async def _renew(self) -> None:
        """Renew the lease of the held entries still this worker's; those another worker took
        over are let go of, and never sent here (`inflight`)."""
        held: list[Any] = []
        for line, (entry_id, _) in self._held.items():
            held += [entry_id, line]
        renewed_s = time.monotonic()  # before the call: Redis's idle time starts after it
        if held:
            taken, done = await self._renew_owned(
                keys=[self.keys.queue, self.keys.rows, self.keys.meta],
                args=[k.SENDERS_GROUP, self._worker, self._seq_seen, *held],
            )
            # Settled, and not by this worker (whose end of it is written, or being written):
            # another worker took it over and settled it.
            finished = {int(line) for line in done} - self._ending
            lines = ({int(line) for line in taken} | finished) - self._taken
            if lines:
                log.warning(
                    "%d claimed messages were taken over by another worker (this one was held "
                    "up past --lease): not sent here, that worker records them (lines %s)",
                    len(lines),
                    ", ".join(map(str, sorted(lines)[:10])) + (", ..." if len(lines) > 10 else ""),
                )
            for line in lines:
                self._taken.add(line)
                self._held.pop(line, None)
                self._marked.discard(line)
            for line in map(int, held[1::2]):
                if line not in lines:
                    self._confirmed_s[line] = renewed_s
        # Only the held entries' are kept (those let go of since are dropped here).
        self._confirmed_s = {
            line: at_s for line, at_s in self._confirmed_s.items() if line in self._held
        }
        self._ending &= self._held.keys()
        self._renewed_s = renewed_s

    def _lease_in_doubt(self, line: int) -> bool:
        """Whether the entry's lease was last confirmed (claimed, or renewed) so long ago that
        another worker may have taken it over: more than half the lease (renewals come every
        third of it, so only a process or host held up, a SIGSTOP or a VM paused, gets here;
        the monotonic clock runs on while the process is stopped). Per entry: a claim whose
        answer was read only after such a pause is as old as the call that made it."""
        confirmed_s = self._confirmed_s.get(line, float("-inf"))
        return time.monotonic() - confirmed_s > self._lease_ms / 2000

    async def _confirm_lease(self, line: int) -> None:
        """Renew the held entries' lease now, once for the sends that wait on it together; again
        when the renewal under way began before this entry was held."""
        for _ in range(2):
            if self._confirming is None or self._confirming.done():
                self._confirming = asyncio.ensure_future(self._renew())
            await asyncio.shield(self._confirming)
            if line in self._taken or not self._lease_in_doubt(line):
                return

    def _release_call(self, keys: list[str], args: list[Any]) -> Awaitable[Any]:
        return self._release(keys=keys, args=args)

    @property
    def left(self) -> tuple[int, int]:
        """What Redis was gone for past --redis-grace: (claimed messages never sent, to hand
        back; rows' ends, to write)."""
        back = sum(1 for line in self._left if line in self._releasing)
        return back, len(self._left) - back

    def hand_back_s(self, most_s: float) -> float:
        """How long `hand_back` looks for Redis: until the lease of the held entries runs out
        (other workers may take them over from then on), `most_s` at most, a second at least."""
        lease_left_s = self._renewed_s + self._lease_ms / 1000 - time.monotonic()
        return max(min(lease_left_s, most_s), _LAST_LOOK_S)

    async def hand_back(
        self, interrupted: Callable[[], Awaitable[object]], look_s: float
    ) -> tuple[int, int]:
        """Past --redis-grace, the run over: look for Redis for `look_s`, and once it answers
        hand back the claimed messages never sent and write the rows' ends left. Ends early
        when `interrupted` returns (a stop signal). What is still left after: (messages, ends).

        Left alone, a message the claim marked in flight is taken over after --lease and
        recorded `unknown` (`worker_lost`) though no request left."""
        if not self._left:
            return 0, 0
        until_s = time.monotonic() + look_s
        looking = asyncio.ensure_future(self._look_until(until_s))
        stop = asyncio.ensure_future(interrupted())
        try:
            await asyncio.wait((looking, stop), return_when=asyncio.FIRST_COMPLETED)
        finally:
            looking.cancel()
            stop.cancel()
            await asyncio.gather(looking, stop, return_exceptions=True)
        return self.left

    async def _look_until(self, until_s: float) -> None:
        delay_s = _FIRST_LOOK_S
        while (left_s := until_s - time.monotonic()) > 0:
            try:
                async with asyncio.timeout(left_s):
                    if not await self._redis.exists(self.keys.meta):
                        return  # a Redis that came back empty: nothing is written into it
                    await self._recover()  # claims whose answer was lost go back too
                    if self.lost is not None:
                        return  # the campaign Redis holds is not this one: nothing is written
                    for line, write in list(self._left.items()):
                        await write()
                        del self._left[line]
                        self._held.pop(line, None)
                        self._releasing.discard(line)
                return
            except _LOOK_ERRORS as exc:
                if isinstance(exc, ResponseError) and is_lost_reply(exc):
                    await self._lost()
                    return  # the campaign is gone: nothing is written, nothing to wait for
            await asyncio.sleep(min(delay_s, max(until_s - time.monotonic(), 0)))
            delay_s = min(delay_s * 2, 1.0)

    async def _recover(self) -> None:
        """Redis is back: renew the leases at once (the outage ate into them), mark the held
        rows in flight again where Redis lost the mark, and hand back the entries this worker
        claimed by a call whose answer was lost (it never sent them). Redis back without the
        campaign (it kept no data, or was flushed meanwhile) or its queue: the run stops."""
        try:
            found = await self._redis.hmget(self.keys.meta, _INCARNATION)
            if found[0] is None:
                await self._lost()
                return
            if await self._rolled_back():
                await self._lost()
                return
            if self._incarnation is not None and found != self._incarnation:
                await self._lost(
                    f"Redis lost campaign '{self.keys.name}' while this worker waited for it, "
                    "and the campaign was enqueued again meanwhile: the rows sent before are in "
                    "no ledger"
                )
                return
            await self._take_up_again()
        except ResponseError as exc:
            if not is_lost_reply(exc):
                raise
            await self._lost()

    async def _take_up_again(self) -> None:
        await self._renew()
        held = {entry_id: message for entry_id, message in self._held.values()}
        lines = [message.line for message in held.values() if message.line not in self._releasing]
        if lines:
            await self._remark(keys=[self.keys.rows, self.keys.meta], args=[self._worker, *lines])
        try:
            # Claims still under way would hold entries not in `held` yet; no new one starts
            # before this step ends. A claim that hangs leaves its entry to the lease.
            async with asyncio.timeout(_CLAIMS_SETTLE_S):
                await self._claims_idle.wait()
        except TimeoutError:
            log.warning("claims under way did not end: entries they took wait for the lease")
            return
        pending: Any = await self._redis.xpending_range(
            self.keys.queue,
            k.SENDERS_GROUP,
            min="-",
            max="+",
            count=_RECOVER_BATCH,
            consumername=self._worker,
        )
        for item in pending:
            entry_id = str(item["message_id"])
            # Held now, not only when this step began: a claim that ended during the wait above
            # holds its entry too, and its row is being sent (handed back, another worker would
            # send it again).
            if entry_id in held or any(entry_id == e for e, _ in self._held.values()):
                continue
            found: Any = await self._redis.xrange(self.keys.queue, entry_id, entry_id)
            if not found:
                continue
            message = message_from(found[0][1])
            args: list[str | int] = [
                self._worker, entry_id, k.SENDERS_GROUP, *message_fields(message), "1",
                self._seq_seen,
            ]  # fmt: skip
            if await self._release(keys=self._release_keys, args=args):
                log.info(
                    "line %d, claimed as Redis went away, goes back to the queue", message.line
                )

    def know(self, meta: Mapping[str, Any]) -> None:
        """The campaign as the worker found it: one that Redis lost and an `enqueue` made again
        while the worker waited for Redis is told from it (`_recover`)."""
        self._incarnation = [meta.get(field) for field in _INCARNATION]
        self._saw(meta.get("seq") or 0)

    async def check_kept(self) -> None:
        """At the run's end: a campaign Redis lost as the run stopped for another reason (a full
        Redis evicting its keys) is found lost too, and marked, so no later `enqueue` of it
        sends its rows again. Nothing when Redis does not answer at once."""
        if self.lost is not None or self._gate.down:
            return
        try:
            async with asyncio.timeout(_CLAIMS_SETTLE_S):
                kept = await self._redis.hexists(self.keys.meta, "campaign_id")
        except (RedisError, OSError, TimeoutError):
            return
        if not kept:
            await self._lost()

    async def writes_done(self) -> None:
        """Return once the writes under way ended (a cancel leaves them running)."""
        while self._pending_writes:
            await asyncio.wait(set(self._pending_writes))

    async def close(self) -> None:
        """Finish the writes under way and stop renewing leases."""
        self._closing.set()  # the renewer ends at its next turn, should the cancel be lost
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
        await asyncio.gather(*self._pending_writes, return_exceptions=True)
