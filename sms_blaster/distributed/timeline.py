"""A worker's timeline in Redis, for `report --redis ... --html`: once a second what the worker did
in that second, once its settings, and at its end when and how it ended.

    smsb:c:{name}:runs     hash  "<run>"        the worker, its start and settings (once)
                                 "<run>|totals" its totals so far (rewritten every second)
                                 "<run>|end"    when it ended, and its exit code (once)
    smsb:c:{name}:seconds  hash  "<worker>|<unix s at its end>" -> what it did in that second

`<run>` is "<worker>|<unix start>": a worker name run again is another run of the same series.
The figures come from two snapshots of the run (run_stats) a second apart, and one pipeline a
second writes them, never a call per row. They draw a picture, they are not the ledger: a write
Redis does not take at once (away, slow, restarting) is dropped and the run goes on at its pace;
the totals, rewritten every second, come back with Redis. A second's sent lines are kept with it,
so a receipt can be tied to when (and by which worker) its row was sent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from sms_blaster.distributed.keys import CampaignKeys
from sms_blaster.engine import Sink
from sms_blaster.html_report.figures import BIN_BASE_MS, bin_of
from sms_blaster.journal.timeline import TimelineSecond
from sms_blaster.models import Record, Status
from sms_blaster.run_stats import RunSnapshot
from sms_blaster.run_timeline import second_between, settings_json
from sms_blaster.settings import WORKER_SETTINGS, DistributedSettings, RunSettings
from sms_blaster.url_text import mask_password

log = logging.getLogger("sms_blaster.distributed")

_WRITE_TIMEOUT_S = 1.0  # a write not done by then is dropped, and its connection freed
_AFTER_SECOND_S = 0.01  # tick just after a whole second, so each bucket is one second


@dataclass(frozen=True, slots=True)
class Second:
    """What one worker did in one second: the JSON a `seconds` field holds."""

    figures: TimelineSecond  # as a journal keeps them
    from_s: float  # unix seconds where it started (figures.at_s: where it ended)
    latency: Mapping[int, int]  # rows sent in it, by latency bin (report_data's)
    lines: tuple[int, ...]  # the lines sent in it, ascending

    def to_json(self) -> str:
        return json.dumps(
            {
                **dataclasses.asdict(self.figures),
                "from_s": self.from_s,
                "latency": self.latency,
                "lines": pack_lines(self.lines),
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> Second:
        fields = json.loads(text)
        figures = TimelineSecond(
            **{field.name: fields[field.name] for field in dataclasses.fields(TimelineSecond)}
        )
        latency = {int(n): count for n, count in fields["latency"].items()}
        return cls(figures, fields["from_s"], latency, unpack_lines(fields["lines"]))


def pack_lines(lines: Iterable[int]) -> str:
    """Ascending lines as the gaps between them ("1201,1,2,1"): about two bytes a line, since
    workers claim rows nearly in order."""
    gaps, last = [], 0
    for line in lines:
        gaps.append(line - last)
        last = line
    return ",".join(map(str, gaps))


def unpack_lines(text: str) -> tuple[int, ...]:
    lines, last = [], 0
    for gap in text.split(",") if text else ():
        last += int(gap)
        lines.append(last)
    return tuple(lines)


@dataclass(frozen=True, slots=True)
class RunTotals:
    """One run's totals so far: the JSON of its `|totals` field."""

    worker: str
    started_at_s: float
    rows_by_status: Mapping[str, int]
    costs: Mapping[tuple[int, str], tuple[int, Decimal]]  # (segments, encoding) -> rows, cost
    latency: Mapping[int, int]  # rows sent, by latency bin

    def to_json(self) -> str:
        return json.dumps(
            {
                "worker": self.worker,
                "started_at": self.started_at_s,
                "rows": dict(self.rows_by_status),
                "costs": [
                    [segments, encoding, rows, str(cost)]
                    for (segments, encoding), (rows, cost) in sorted(self.costs.items())
                ],
                "latency": self.latency,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> RunTotals:
        fields = json.loads(text)
        return cls(
            worker=fields["worker"],
            started_at_s=fields["started_at"],
            rows_by_status=fields["rows"],
            costs={
                (segments, encoding): (rows, Decimal(cost))
                for segments, encoding, rows, cost in fields["costs"]
            },
            latency={int(n): count for n, count in fields["latency"].items()},
        )


def worker_settings(settings: RunSettings, dist: DistributedSettings) -> str:
    """The worker's settings as a journal keeps a run's (no secret), those that apply to a
    worker (settings.WORKER_SETTINGS, as the report shows them), with where it took part."""
    kept = {
        name: value
        for name, value in json.loads(settings_json(settings)).items()
        if name in WORKER_SETTINGS
    }
    kept |= {
        "redis_url": mask_password(dist.redis_url),
        "campaign": dist.campaign,
        "lease_s": dist.lease_s,
        "redis_grace_s": dist.redis_grace_s,
        "follow": dist.follow,
    }
    return json.dumps(kept, sort_keys=True)


class TimelineRecorder:
    """Writes one worker's timeline: `note` each record, `run` ticks every second until
    cancelled, `finish` writes the last second and the run's end."""

    __slots__ = (
        "_before",
        "_clock",
        "_costs",
        "_costs_paid",
        "_keys",
        "_latency_before",
        "_lines",
        "_redis",
        "_run",
        "_skip",
        "_sleep",
        "_snapshot",
        "_started_at_s",
        "_worker",
    )

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: CampaignKeys,
        worker: str,
        *,
        skip: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._worker = worker
        self._skip = skip  # True while Redis is known away: no write is tried
        self._clock = clock
        self._sleep = sleep
        self._snapshot: Callable[[], RunSnapshot] | None = None  # set by start()
        self._before: RunSnapshot | None = None
        self._latency_before: Counter[int] = Counter()
        self._run = ""
        self._started_at_s = 0.0
        self._lines: list[int] = []
        self._costs: Counter[tuple[int, str]] = Counter()
        self._costs_paid: dict[tuple[int, str], Decimal] = {}

    def note(self, record: Record) -> None:
        """Keep what the snapshots lack of a record: its line and its cost line, if sent."""
        if record.status is Status.SENT:
            self._lines.append(record.line)
            line = (record.segments or 0, record.encoding.value if record.encoding else "")
            self._costs[line] += 1
            if record.price is not None:
                self._costs_paid[line] = self._costs_paid.get(line, Decimal(0)) + record.price

    def tapping(self, sink: Sink) -> Sink:
        """`sink`, with each record noted on its way."""
        return _Tap(self, sink)

    async def start(self, snapshot: Callable[[], RunSnapshot], settings_json: str) -> None:
        """Take the run's first snapshot, and write its start and settings (dropped if Redis
        does not take them)."""
        self._snapshot = snapshot
        self._before = before = snapshot()
        self._latency_before = before.latency.counts_by(_latency_bin)
        self._started_at_s = before.at_s - before.elapsed_s
        self._run = f"{self._worker}|{self._started_at_s:.3f}"
        start = {"worker": self._worker, "started_at": self._started_at_s,
                 "settings": settings_json}  # fmt: skip
        await self._write({self._keys.runs: {self._run: json.dumps(start)}})

    async def run(self) -> None:
        """After start(): write a second's figures just after each whole second, until cancelled."""
        while True:
            now_s = self._clock()
            await self._sleep(math.floor(now_s) + 1 - now_s + _AFTER_SECOND_S)
            await self._write_second()

    async def finish(self, exit_code: int) -> None:
        """Write the last (partial) second, the totals and how the run ended."""
        if self._snapshot is None:
            return  # never started: nothing was sent
        await self._write_second(
            {f"{self._run}|end": json.dumps({"ended_at": self._clock(), "exit_code": exit_code})}
        )

    async def _write_second(self, extra: Mapping[str, str] | None = None) -> None:
        assert self._snapshot is not None, "start() first"
        assert self._before is not None
        after = self._snapshot()
        latency_after = after.latency.counts_by(_latency_bin)
        second = Second(
            second_between(self._before, after),
            self._before.at_s,
            latency_after - self._latency_before,
            tuple(sorted(self._lines)),
        )
        label = f"{self._worker}|{after.at_s:.3f}"
        idle = after.requests == self._before.requests and (
            after.rows_by_status == self._before.rows_by_status
        )
        self._before, self._latency_before = after, latency_after
        self._lines = []  # a second Redis did not take is dropped with its lines
        if idle and extra is None:
            return  # a worker waiting (--follow, quiet hours) writes nothing a second
        totals = RunTotals(
            worker=self._worker,
            started_at_s=self._started_at_s,
            rows_by_status=after.rows_by_status,
            costs={
                line: (rows, self._costs_paid.get(line, Decimal(0)))
                for line, rows in self._costs.items()
            },
            latency=latency_after,
        )
        runs = {f"{self._run}|totals": totals.to_json(), **(extra or {})}
        await self._write({self._keys.seconds: {label: second.to_json()}, self._keys.runs: runs})

    async def _write(self, fields: Mapping[str, Mapping[str, str]]) -> None:
        """HSET `fields` (key -> field -> value) in one script, or drop them. Nothing is written
        for a campaign whose settings Redis lost (a flush, a restart, an eviction between two
        seconds): the worker finds the loss on its next write to the queue, and must leave
        nothing of the campaign in that Redis but the marker (see `lost.py`)."""
        if self._skip():
            return
        keys = [self._keys.meta, *fields]
        args: list[str] = []
        for mapping in fields.values():
            args.append(str(len(mapping)))
            for field, value in mapping.items():
                args += (field, value)
        try:
            async with asyncio.timeout(_WRITE_TIMEOUT_S):
                await self._redis.eval(_KEPT_HSET, len(keys), *keys, *args)
        except (RedisError, OSError, TimeoutError) as exc:
            log.debug("timeline write dropped: %s", exc)


# KEYS: the campaign's meta, then each hash; ARGV: for each hash, its field count, then its
# fields and values. Written only while the meta holds the campaign's settings.
_KEPT_HSET = """
if redis.call('HEXISTS', KEYS[1], 'campaign_id') == 0 then return 0 end
local at = 1
for k = 2, #KEYS do
  local count = tonumber(ARGV[at])
  at = at + 1
  for _ = 1, count do
    redis.call('HSET', KEYS[k], ARGV[at], ARGV[at + 1])
    at = at + 2
  end
end
return 1
"""


def _latency_bin(latency_ms: float) -> int:
    return bin_of(latency_ms, BIN_BASE_MS)


class _Tap:
    __slots__ = ("_next", "_recorder")

    def __init__(self, recorder: TimelineRecorder, sink: Sink) -> None:
        self._recorder = recorder
        self._next = sink

    def emit(self, record: Record) -> None:
        self._recorder.note(record)
        self._next.emit(record)
