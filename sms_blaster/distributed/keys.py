"""The Redis keys of a distributed campaign, and what each holds.

    smsb:campaigns                  hash   campaign id -> campaign name (receipts carry the id)
    smsb:c:{name}:meta              hash   campaign_id, created_at, what a later run must agree
                                           on (input, text, sender, to_column, default_region;
                                           provider: the first worker's), pool, ttl_s,
                                           quiet_hours, segments_max, done (1 once an enqueue
                                           read its whole input); an enqueue's checks and
                                           writes: distributed.campaign_meta
    smsb:c:{name}:queue             stream one entry per message: line, to, text, enc, seg, ref, tz
    smsb:c:{name}:delayed           zset   messages put off by quiet hours, by ready time (ms)
    smsb:c:{name}:rows              hash   line -> state code (below): the no-double-send ledger
    smsb:c:{name}:prints            string each line's row as an enqueue read it (8 hex digits a
                                           line: its CRC-32), so a changed input is refused
                                           (see distributed.row_prints)
    smsb:c:{name}:counts            hash   final records by status, segments sent, cost (in
                                           whole nano-units: exact, as a float sum is not)
    smsb:c:{name}:errors            hash   "kind/code" -> rows
    smsb:c:{name}:parts             hash   message id -> "line delivery final status code
                                           received" (receipts; received: unix s)
    smsb:c:{name}:runs              hash   each worker's run: start, settings, totals, end
    smsb:c:{name}:seconds           hash   "worker|unix second" -> that second's figures
                                           (see distributed.timeline)
    smsb:c:{name}:lost              string written (alone) by a worker that found the campaign
                                           lost by Redis: what, when, who (see distributed.lost)
    smsb:c:{name}:rates             hash   worker -> "its --rate, until when" (running workers;
                                           the campaign keeps to the smallest: rate_cap)
    smsb:c:{name}:leases            hash   worker -> "its --lease, until when" (takeovers wait for
                                           the longest: rate_cap)
    smsb:limit:{name}               hash   the global rate limit (see distributed.limiter)
    smsb:flow:{name}:answers        list   answers reported to the campaign's flow controller
    smsb:flow:{name}:leader         string the worker running it (a lease, see shared_flow)
    smsb:flow:{name}:marks          hash   worker -> the time up to which its answers are reported
    smsb:receipts                   stream receipts stored by `receive --redis`, applied by workers
    smsb:{optouts}:entries          hash   number -> its opt-out entry (JSON; distributed.optouts)
    smsb:{optouts}:seq              string the last change's number
    smsb:{optouts}:log              zset   number, scored by its last change: workers follow it

Row states (one character, to keep a million rows small):

    q queued   i:<worker> in flight (the request may have left)   p:<worker> pending (the last
    request was refused; a retry waits)   s sent (s<n>: sent in n parts)   f failed   u unknown
    k skipped

The braces keep every key of one campaign in one Redis Cluster hash slot, so its Lua scripts may
touch them together.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

CAMPAIGNS = "smsb:campaigns"
RECEIPTS = "smsb:receipts"
OPTOUTS = "smsb:{optouts}:entries"  # one hash slot for the three: a script writes them together
OPTOUTS_SEQ = "smsb:{optouts}:seq"
OPTOUTS_LOG = "smsb:{optouts}:log"
OPTOUTS_MESSAGES = "smsb:{optouts}:messages"  # inbound keywords applied (provider:message id)
SENDERS_GROUP = "senders"
APPLIERS_GROUP = "appliers"

QUEUED, INFLIGHT, PENDING = "q", "i", "p"
SENT, FAILED, UNKNOWN, SKIPPED = "s", "f", "u", "k"
FINAL = frozenset({SENT, FAILED, UNKNOWN, SKIPPED})


@dataclass(frozen=True, slots=True)
class CampaignKeys:
    name: str

    @property
    def _prefix(self) -> str:
        return f"smsb:c:{{{self.name}}}"

    @property
    def meta(self) -> str:
        return f"{self._prefix}:meta"

    @property
    def queue(self) -> str:
        return f"{self._prefix}:queue"

    @property
    def rows(self) -> str:
        return f"{self._prefix}:rows"

    @property
    def prints(self) -> str:
        return f"{self._prefix}:prints"

    @property
    def counts(self) -> str:
        return f"{self._prefix}:counts"

    @property
    def errors(self) -> str:
        return f"{self._prefix}:errors"

    @property
    def parts(self) -> str:
        return f"{self._prefix}:parts"

    @property
    def runs(self) -> str:
        return f"{self._prefix}:runs"

    @property
    def seconds(self) -> str:
        return f"{self._prefix}:seconds"

    @property
    def delayed(self) -> str:
        return f"{self._prefix}:delayed"

    @property
    def lost(self) -> str:
        return f"{self._prefix}:lost"

    @property
    def rates(self) -> str:
        return f"{self._prefix}:rates"

    @property
    def leases(self) -> str:
        return f"{self._prefix}:leases"

    @property
    def limit(self) -> str:
        """The name given to the global limiter (its key is derived from it)."""
        return self.name


_NANO = Decimal(10) ** 9  # a counter's cost units a currency unit: HINCRBY keeps them exact


def to_nano(cost: Decimal) -> str:
    """`cost` as whole nano-units for a `_nano` counter (a price's ninth decimal at most)."""
    return str(int((cost * _NANO).to_integral_value(ROUND_HALF_EVEN)))


def cost_of(counts: Mapping[str, Any], name: str) -> Decimal:
    """The cost counted under `name`: its `_nano` counter, plus what an sms-blaster before it
    added as a float sum under `name` itself."""
    try:
        legacy = Decimal(str(counts.get(name, "0")))
    except InvalidOperation:
        legacy = Decimal(0)
    return Decimal(int(counts.get(f"{name}_nano", 0))) / _NANO + legacy
