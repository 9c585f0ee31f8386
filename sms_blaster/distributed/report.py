"""`report --redis URL --campaign NAME`: a distributed campaign's summary, read from Redis.

The same summary as a journal's, so the report looks the same: rows by state, errors, segments
and cost, and the delivery funnel once receipts were applied (this applies those waiting first).
The first and last send, the sends a minute and the latency percentiles come from the workers'
timeline (distributed.timeline), which `--html` also draws (distributed.report_view): to within a
second, and a latency to within its bin's width; a killed worker's last second is missing from them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from sms_blaster.distributed.keys import CampaignKeys, cost_of
from sms_blaster.distributed.receipt_applier import ReceiptApplier
from sms_blaster.distributed.timeline import RunTotals, Second
from sms_blaster.errors import UsageError
from sms_blaster.html_report.figures import BIN_BASE_MS, percentile_of_bins
from sms_blaster.journal.queries import (
    CampaignSummary,
    DeliveryFunnel,
    ErrorCount,
    LatencyPercentiles,
    MinuteCount,
    SenderCount,
    StateCounts,
)
from sms_blaster.providers.names import canonical, receipts_per_part

_SCAN = 5000
_SCAN_SECONDS = 1000  # seconds a call (each holds its lines)
_STATES = {"s": "sent", "f": "failed", "u": "unknown", "k": "skipped", "i": "inflight",
           "q": "pending", "p": "pending"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class SendTimes:
    """When a campaign's rows were sent and how long their requests took, from its timeline."""

    first_sent_at_s: float | None = None
    last_sent_at_s: float | None = None
    sent_per_minute: tuple[MinuteCount, ...] = ()
    latency: LatencyPercentiles | None = None


def send_times(seconds: Iterable[Second], totals: Iterable[RunTotals]) -> SendTimes:
    """The workers' seconds and runs' totals as a report's send times: a second's sends count
    in the minute of its middle, percentiles are their bins' middles, rounded as a record's
    latency is (0.1 ms)."""
    first_s: float | None = None
    last_s: float | None = None
    by_minute: Counter[int] = Counter()
    for second in seconds:
        if not second.figures.sent:
            continue
        first_s = second.from_s if first_s is None else min(first_s, second.from_s)
        last_s = max(last_s or second.figures.at_s, second.figures.at_s)
        by_minute[int((second.from_s + second.figures.at_s) / 2) // 60 * 60] += second.figures.sent
    bins: Counter[int] = Counter()
    for run in totals:
        bins.update(run.latency)
    return SendTimes(
        first_s,
        last_s,
        tuple(MinuteCount(minute_s, sent) for minute_s, sent in sorted(by_minute.items())),
        latency_of_bins(bins),
    )


def latency_of_bins(bins: Mapping[int, int]) -> LatencyPercentiles | None:
    """Percentiles of latencies counted in bins: each its bin's geometric middle, to 0.1 ms."""
    p50, p90, p99, most = (
        percentile_of_bins(dict(bins), share, BIN_BASE_MS) for share in (0.5, 0.9, 0.99, 1.0)
    )
    if p50 is None or p90 is None or p99 is None or most is None:
        return None
    return LatencyPercentiles(round(p50, 1), round(p90, 1), round(p99, 1), round(most, 1))


async def read_seconds(redis: aioredis.Redis, keys: CampaignKeys) -> list[tuple[str, Second]]:
    """Every worker's recorded seconds, as (worker, second), in no order."""
    seconds = []
    async for label, value in redis.hscan_iter(keys.seconds, count=_SCAN_SECONDS):
        seconds.append((str(label).rpartition("|")[0], Second.from_json(str(value))))
    return seconds


async def read_totals(redis: aioredis.Redis, keys: CampaignKeys) -> tuple[RunTotals, ...]:
    fields: Any = await redis.hgetall(keys.runs)
    return tuple(
        RunTotals.from_json(value) for key, value in fields.items() if key.endswith("|totals")
    )


async def load_summary(
    redis: aioredis.Redis,
    name: str,
    url: str,
    receipts: RowReceipts | None = None,
    sends: SendTimes | None = None,
) -> CampaignSummary:
    """The campaign's summary; `receipts`: what its receipts say is read into it; `sends`: its
    send times, when the caller read the timeline already."""
    keys = CampaignKeys(name)
    meta: Any = await redis.hgetall(keys.meta)
    if not meta:
        raise UsageError(f"no campaign '{name}' at {url}: check --campaign (and --redis)")
    if sends is None:
        seconds = await read_seconds(redis, keys)
        sends = send_times((second for _, second in seconds), await read_totals(redis, keys))
    await _apply_receipts(redis)
    receipts = receipts or RowReceipts()
    async for _, value in redis.hscan_iter(keys.parts, count=_SCAN):
        receipts.add(str(value))
    states: Counter[str] = Counter()
    parts_of: dict[int, int] = {}  # sent rows of more than one part
    async for line, state in redis.hscan_iter(keys.rows, count=_SCAN):
        code = str(state)[:1]
        # A receipt proves a row left unknown or still in flight was sent, as the journal's
        # report takes it (the applier marks an unknown row sent; this covers one settled or
        # still in flight after its receipt was applied).
        if code in "ui" and int(line) in receipts.seen:
            code = "s"
        states[_STATES[code]] += 1
        if code == "s" and len(state) > 1 and state[1:].isdigit():
            parts_of[int(line)] = int(state[1:])
    counts: Any = await redis.hgetall(keys.counts)
    errors: Any = await redis.hgetall(keys.errors)
    provider = str(meta.get("provider", ""))
    return CampaignSummary(
        name=name,
        campaign_id=str(meta["campaign_id"]),
        input=str(meta.get("input", "")),
        sender=str(meta.get("sender", "")),
        provider=canonical(provider) or "(no worker yet)",
        created_at_s=float(meta.get("created_at", 0.0)),
        rows=StateCounts(**states),
        errors=_errors(errors),
        segments_sent=int(counts.get("segments", 0)),
        cost=cost_of(counts, "cost"),
        first_sent_at_s=sends.first_sent_at_s,
        last_sent_at_s=sends.last_sent_at_s,
        sent_per_minute=sends.sent_per_minute,
        latency=sends.latency,
        delivery=_funnel(receipts, states["sent"], parts_of, receipts_per_part(provider)),
        texts_changed=int(counts.get("texts_changed", 0)),
        segments_saved=int(counts.get("segments_saved", 0)),
        cost_saved=cost_of(counts, "cost_saved"),
        segments_added=int(counts.get("segments_added", 0)),
        cost_added=cost_of(counts, "cost_added"),
        sent_by_sender=_sent_by_sender(counts),
    )


def _sent_by_sender(counts: dict[str, Any]) -> tuple[SenderCount, ...]:
    """A pool's senders as the workers counted their sent rows, most sent first (as the
    journal's report orders them)."""
    found = [
        SenderCount(key[5:], int(sent), int(counts.get("from_segments:" + key[5:], 0)))
        for key, sent in counts.items()
        if key.startswith("from:")
    ]
    return tuple(sorted(found, key=lambda count: (-count.sent, count.sender)))


async def _apply_receipts(redis: aioredis.Redis) -> None:
    applier = ReceiptApplier(redis, "report")
    await applier.ensure_group()
    await applier.apply_waiting()


class RowReceipts:
    """What the receipts of a campaign say of each row, from its parts' latest states."""

    __slots__ = ("decided", "delivered", "errors", "expired", "failed", "final_at_s", "seen")

    def __init__(self, *, timed: bool = False) -> None:
        self.delivered: Counter[int] = Counter()  # delivered parts
        self.failed: Counter[int] = Counter()  # failed parts
        self.expired: set[int] = set()
        self.errors: Counter[tuple[str, str]] = Counter()
        self.seen: set[int] = set()
        # `timed`: the latest final receipt of each row, when `receive` stored it (unix s), and
        # each row's outcome once `decide` ran.
        self.final_at_s: dict[int, float] | None = {} if timed else None
        self.decided: dict[int, str] | None = {} if timed else None

    def add(self, value: str) -> None:
        """One part's latest state: "line|delivery|final|status|code|received"."""
        line_text, delivery, final, status, code, *received = value.split("|")
        line = int(line_text)
        self.seen.add(line)
        if delivery == "delivered":
            self.delivered[line] += 1
        elif delivery == "failed":
            self.failed[line] += 1
            self.errors[status, code] += 1
        elif delivery == "expired":
            self.expired.add(line)
        if self.final_at_s is not None and final == "1" and received:
            self.final_at_s[line] = max(float(received[0]), self.final_at_s.get(line, 0.0))

    def decide(self, parts_of: dict[int, int], per_part: bool) -> Counter[str]:
        """Rows by decided outcome (see `_outcomes`); a timed reader keeps each row's."""
        counts: Counter[str] = Counter()
        for line, outcome in self._outcomes(parts_of, per_part):
            counts[outcome] += 1
            if self.decided is not None:
                self.decided[line] = outcome
        return counts

    def _outcomes(self, parts_of: dict[int, int], per_part: bool) -> Iterator[tuple[int, str]]:
        """(line, delivered | failed | expired) of each row whose delivery is decided: failed
        when a part failed, else expired when one expired, else delivered once every part is
        (a provider with a receipt a part) or one is."""
        yield from ((line, "failed") for line in self.failed)
        yield from ((line, "expired") for line in self.expired - self.failed.keys())
        for line, count in self.delivered.items():
            if (
                line not in self.failed
                and line not in self.expired
                and count >= (parts_of.get(line, 1) if per_part else 1)
            ):
                yield line, "delivered"


def _funnel(
    receipts: RowReceipts, sent: int, parts_of: dict[int, int], per_part: bool
) -> DeliveryFunnel | None:
    if not receipts.seen:
        return None
    decided = receipts.decide(parts_of, per_part)
    return DeliveryFunnel(
        sent=sent,
        delivered=decided["delivered"],
        failed=decided["failed"],
        with_receipts=len(receipts.seen),
        errors=tuple(
            ErrorCount(status, code, count)
            for (status, code), count in receipts.errors.most_common()
        ),
        expired=decided["expired"],
    )


def _errors(counts: dict[str, Any]) -> tuple[ErrorCount, ...]:
    """`kind/code -> rows`, most frequent first."""
    found = []
    for key, count in counts.items():
        kind, _, code = str(key).partition("/")
        if int(count) > 0:
            found.append(ErrorCount(kind, code, int(count)))
    return tuple(sorted(found, key=lambda error: (-error.count, error.kind, error.code)))
