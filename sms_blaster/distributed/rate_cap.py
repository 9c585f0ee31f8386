"""A distributed campaign's rate when its workers were given different `--rate`s: the smallest.

`--rate` is the campaign's rate for all its workers together, and a worker given a smaller one
was told the provider (or the account's owner) allows no more, so the campaign keeps to the
smallest `--rate` of the workers running. Each worker keeps its own in one hash,
`smsb:c:{name}:rates` (worker -> "rate until"), renewed every second and dropped as it ends: one
that died without a word drops out _STALE_S after its last renewal. The smallest fresh one is the
limit's `cap` (`distributed.limiter`), which every reservation and every change of the shared
pace is held to on Redis itself: a worker started with a smaller `--rate` lowers it for all at
once (the others follow within RENEW_S, `RedisLimiter.cap`), and one started with a larger one
keeps to the campaign's rate as it found it, until it ends, and says so. When the workers with the
smaller rate are gone, workers started from then on are held to the smallest of the others.

A limit key deleted (by hand, an eviction) loses its `cap` until the next renewal (a second);
meanwhile a worker's reservations are held to the cap it read last (`RedisLimiter.cap`).

The same renewal keeps each worker's `--lease` (`smsb:c:{name}:leases`). A worker renews the
messages it holds every third of its own `--lease`, so a worker that took over what was idle
longer than its own shorter one took a healthy worker's messages (recorded `unknown`, or with
--retry-unknown sent a second time). So a worker takes over only what was idle longer than the
longest `--lease` of the campaign's running workers (`takeover_lease_s`); a worker that died
drops out of that _STALE_S after its last renewal, as its rate does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from sms_blaster.distributed.keys import CampaignKeys
from sms_blaster.distributed.limiter import limit_key
from sms_blaster.distributed.outage import OUTAGE_ERRORS, RedisGate

log = logging.getLogger("sms_blaster.distributed")

RENEW_S = 1.0  # how often a worker renews its rate, and so how late a change reaches the cap
_STALE_S = 5.0  # a rate not renewed for this long is a worker gone: it no longer counts
_LEAVE_S = 1.0  # the most a worker ending waits to drop its rate

# KEYS: the workers' rates, the limit, the workers' leases. ARGV: worker, its rate ("" to drop it
# and its lease), stale µs, TTL ms, its lease. Returns {the campaign's rate: the smallest fresh
# rate (stale ones are removed), also written as the limit's `cap`, the smallest of the other
# workers', the longest lease of the other fresh workers}, each "" when there is none (no worker
# left: the cap is removed).
_RENEW = """
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local untill_now = string.format('%.17g', now + ARGV[3])
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. untill_now)
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[5] .. ' ' .. untill_now)
end
local other_lease = ''
local leases = redis.call('HGETALL', KEYS[3])
for i = 1, #leases, 2 do
  local lease, untill = string.match(leases[i + 1], '^(%S+) (%S+)$')
  untill = tonumber(untill)
  if not lease or not untill or untill < now then
    redis.call('HDEL', KEYS[3], leases[i])
  elseif leases[i] ~= ARGV[1] then
    if other_lease == '' or tonumber(lease) > tonumber(other_lease) then other_lease = lease end
  end
end
redis.call('PEXPIRE', KEYS[3], ARGV[4])
local least, others
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local rate, untill = string.match(entries[i + 1], '^(%S+) (%S+)$')
  rate, untill = tonumber(rate), tonumber(untill)
  if not rate or not untill or untill < now then
    redis.call('HDEL', KEYS[1], entries[i])
  else
    if not least or rate < least then least = rate end
    if entries[i] ~= ARGV[1] and (not others or rate < others) then others = rate end
  end
end
local function str(x) return x and string.format('%.17g', x) or '' end
if not least then
  redis.call('HDEL', KEYS[2], 'cap')
  return {'', '', other_lease}
end
redis.call('HSET', KEYS[2], 'cap', str(least))
local pace = tonumber(redis.call('HGET', KEYS[2], 'rate'))
if pace and pace > least then
  -- Lowered: the pace goes down to it, and slots taken ahead of the next 0.1 s are taken anew.
  redis.call('HSET', KEYS[2], 'rate', str(least))
  local tat = tonumber(redis.call('HGET', KEYS[2], 'tat')) or now
  redis.call('HSET', KEYS[2], 'tat', str(math.min(tat, now + 100000)))
  redis.call('HINCRBY', KEYS[2], 'gen', 1)
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return {str(least), str(others), other_lease}
"""

SCRIPTS = (_RENEW,)


class RateCap:
    """One worker's `--rate` among its campaign's: keeps it in Redis, and follows the smallest."""

    __slots__ = (
        "_gate", "_keys", "_lease_s", "_rate_per_s", "_redis", "_renew", "_worker",
        "takeover_lease_s",
    )  # fmt: skip

    def __init__(
        self,
        redis: aioredis.Redis,
        campaign: str,
        worker: str,
        rate_per_s: float,
        *,
        lease_s: float = 60.0,
        gate: RedisGate | None = None,
    ) -> None:
        self._redis = redis
        keys = CampaignKeys(campaign)
        self._keys = [keys.rates, limit_key(campaign), keys.leases]
        self._worker = worker
        self._rate_per_s = rate_per_s  # this worker's --rate
        self._lease_s = lease_s  # ...and --lease
        # What this worker takes over: messages idle longer than the longest --lease running.
        self.takeover_lease_s = lease_s
        self._gate = gate or RedisGate()
        self._renew = redis.register_script(_RENEW)

    async def join(self, say: Callable[[str], None]) -> float:
        """Add this worker's --rate; the campaign's rate now (this worker keeps to it until it
        ends), said on stderr when it is not this worker's --rate; and when another worker runs
        with a longer --lease, that this one takes over only what was idle longer than it."""
        least, others = await self._write(self._rate_per_s)
        if self.takeover_lease_s > self._lease_s:
            say(
                f"sms-blaster: --lease {self._lease_s:g} s, but another worker of the campaign "
                f"runs with --lease {self.takeover_lease_s:g} s and renews its messages that "
                "seldom: this worker takes over only messages idle longer than "
                f"{self.takeover_lease_s:g} s while it runs"
            )
        campaign = min(least or self._rate_per_s, self._rate_per_s)
        if campaign < self._rate_per_s:
            say(
                f"sms-blaster: --rate {self._rate_per_s:g}/s, but another worker of the campaign "
                f"runs with --rate {campaign:g}/s: the campaign keeps to the smallest --rate of "
                f"its workers, {campaign:g}/s for all of them together"
            )
        elif others is not None and others > self._rate_per_s:
            say(
                f"sms-blaster: --rate {self._rate_per_s:g}/s is below the {others:g}/s of the "
                "campaign's other workers: the campaign keeps to the smallest --rate of its "
                f"workers, {self._rate_per_s:g}/s for all of them together"
            )
        return campaign

    async def run(self, campaign_per_s: float, lowered: Callable[[float], None]) -> None:
        """Renew this worker's rate every RENEW_S, until cancelled; `lowered` is told the
        campaign's rate when a worker started since lowered it below `campaign_per_s`."""
        while True:
            await asyncio.sleep(RENEW_S)  # other processes' writes: no event to wait on
            if self._gate.down or self._gate.gone:
                continue  # renewed once Redis is back
            with contextlib.suppress(RedisError, *OUTAGE_ERRORS):
                least, _ = await self._write(self._rate_per_s)
                if least is not None and least < campaign_per_s:
                    campaign_per_s = least
                    lowered(least)

    async def leave(self) -> None:
        """Drop this worker's rate: workers started after it are not held to it."""
        if self._gate.down or self._gate.gone:
            return  # it lapses by itself
        # Bounded: a Redis frozen as the worker ends must not hold it (the rate lapses).
        with contextlib.suppress(RedisError, TimeoutError, *OUTAGE_ERRORS):
            async with asyncio.timeout(_LEAVE_S):
                await self._write(None)

    async def _write(self, rate_per_s: float | None) -> tuple[float | None, float | None]:
        """Write (or drop) this worker's rate and lease: (the campaign's rate, the other workers'
        smallest); `takeover_lease_s` follows the longest lease running."""
        args: list[str | int] = [
            self._worker,
            "" if rate_per_s is None else repr(rate_per_s),
            int(_STALE_S * 1e6),
            86_400_000,
            repr(self._lease_s),
        ]
        least, others, lease = await self._renew(keys=self._keys, args=args)
        self.takeover_lease_s = max(self._lease_s, float(lease) if lease else 0.0)
        return (float(least) if least else None), (float(others) if others else None)
