"""The opt-out list in Redis: written by `receive --redis`, `optouts --redis` and workers answered
21610; read by every worker, which follows its changes while it sends.

An entry per number in one hash (JSON: out, at, source, reason); each change takes the next number
from a counter and scores the number in a sorted set, so a reader asks only for what changed after
the last change it saw. One script applies a batch, so two writers cannot interleave between the
read of an entry and its replacement.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from sms_blaster.distributed import keys as k
from sms_blaster.errors import RedisUnavailable
from sms_blaster.optouts.model import Changes, OptOut

# KEYS: entries, seq, log, messages applied. ARGV: per change number, out (1/0), at (s), source,
# reason, message ("" for none). A message applied before changes nothing (a retried or replayed
# callback). Replaces an entry only as OptOut.supersedes says (later wins; at the same time, out
# wins), and leaves one that holds the same values alone. Returns the changes made.
_RECORD = """
local changed = 0
for i = 1, #ARGV, 6 do
  local number, out, at = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local replace = true
  if ARGV[i + 5] ~= '' and redis.call('SADD', KEYS[4], ARGV[i + 5]) == 0 then replace = false end
  local old = redis.call('HGET', KEYS[1], number)
  if replace and old then
    local entry = cjson.decode(old)
    local old_at = tonumber(entry.at)
    if at < old_at or (at == old_at and out < entry.out) then replace = false end
    if at == old_at and out == entry.out and entry.source == ARGV[i + 3]
       and entry.reason == ARGV[i + 4] then replace = false end
  end
  if replace then
    local seq = redis.call('INCR', KEYS[2])
    redis.call('HSET', KEYS[1], number, cjson.encode(
      {out = out, at = ARGV[i + 2], source = ARGV[i + 3], reason = ARGV[i + 4]}))
    redis.call('ZADD', KEYS[3], seq, number)
    changed = changed + 1
  end
end
return changed
"""

_KEYS = [k.OPTOUTS, k.OPTOUTS_SEQ, k.OPTOUTS_LOG, k.OPTOUTS_MESSAGES]
_BATCH = 1000  # changes a script applies


class RedisOptOuts:
    """The opt-out list of the Redis behind `redis`; RedisUnavailable when it fails."""

    __slots__ = ("_record", "_redis")

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._record = redis.register_script(_RECORD)

    async def record(self, changes: Iterable[OptOut]) -> int:
        """Apply changes, a script per `_BATCH` (an import of a long list must not hold Redis for
        long); how many changed the list."""
        changed = 0
        args: list[Any] = []
        for change in changes:
            # Milliseconds, written as text: a retried change compares equal to the one stored.
            at = f"{change.at_s:.3f}"
            args += [change.number, int(change.opted_out), at, change.source, change.reason]
            args.append(change.message)
            if len(args) >= 6 * _BATCH:
                changed += await self._run(args)
                args = []
        return changed + (await self._run(args) if args else 0)

    async def _run(self, args: list[Any]) -> int:
        try:
            return int(await self._record(keys=_KEYS, args=args))
        except (RedisError, OSError) as exc:
            raise RedisUnavailable(f"Redis (the opt-out list): {exc}") from exc

    async def changes_since(self, seq: int) -> Changes:
        """The numbers whose entry changed after `seq` (0: all of them)."""
        try:
            logged: Any = await self._redis.zrangebyscore(
                k.OPTOUTS_LOG, f"({seq}", "+inf", withscores=True
            )
            numbers = [number for number, _ in logged]
            values: Any = await self._redis.hmget(k.OPTOUTS, numbers) if numbers else []
        except (RedisError, OSError) as exc:
            raise RedisUnavailable(f"Redis (the opt-out list): {exc}") from exc
        out: set[int] = set()
        back_in: set[int] = set()
        for number, value in zip(numbers, values, strict=True):
            if value is not None:
                (out if json.loads(value)["out"] else back_in).add(int(number))
        last = max((int(score) for _, score in logged), default=seq)
        return Changes(frozenset(out), frozenset(back_in), last)

    async def entries(self, *, opted_out_only: bool = False) -> list[OptOut]:
        """Every entry, by number; only the numbers out with `opted_out_only`."""
        try:
            stored: Any = await self._redis.hgetall(k.OPTOUTS)
        except (RedisError, OSError) as exc:
            raise RedisUnavailable(f"Redis (the opt-out list): {exc}") from exc
        entries = [_entry(number, value) for number, value in sorted(stored.items())]
        return [entry for entry in entries if entry.opted_out or not opted_out_only]


def _entry(number: str, value: str) -> OptOut:
    fields = json.loads(value)
    return OptOut(
        number, bool(fields["out"]), float(fields["at"]), fields["source"], fields["reason"]
    )
