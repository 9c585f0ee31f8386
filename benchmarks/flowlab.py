"""The flow control against every limiter shape, in virtual time: seconds of sending in a blink.

The real engine, pacer and flow controller run on an event loop whose clock jumps to the next
timer instead of waiting for it, against a provider stand-in in the same process that answers
through a limiter of `sms_blaster.simulator.limiters` after a fixed latency. Nothing here is
timed: the figures are what the provider accepted per (virtual) second, exactly as a server
counts them, so a sweep of shapes, limits and latencies runs in seconds and repeats exactly.

    python -m benchmarks.flowlab                  # the sweep, one line per case
    python -m benchmarks.flowlab sliding:150 50   # one case (shape, latency ms), per second
                                                  # (the sweep's own, where the shape is one)
    python -m benchmarks.flowlab --told           # the sweep paced at each true limit, no flow
                                                  # control: what a client told the limit gets
    python -m benchmarks.flowlab leaky:150 50 --told=0.9   # one case paced at 0.9 x its limit
    python -m benchmarks.flowlab --uneven         # answers slow at random: 50-500 ms uniform,
                                                  # 90 % in 60 ms and 10 % in 2 s, a long tail
    python -m benchmarks.flowlab sliding:600 tail # one case of it
    python -m benchmarks.flowlab --uneven --seeds=3 --jobs=2  # each case with 3 draws of its
                                                  # chance, 2 processes

What it cannot show is a busy machine's own delays: `benchmarks.flow_zoo` runs the real CLI
against the real simulator for that.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import math
import multiprocessing
import os
import random
import selectors
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from sms_blaster.engine import Engine, EngineConfig, Sink
from sms_blaster.flow import FlowController, FlowSettings
from sms_blaster.models import (
    Encoding,
    ErrorKind,
    InputRow,
    Message,
    Outcome,
    Record,
    SendResult,
    Status,
)
from sms_blaster.preparing import PreparedOnLoop
from sms_blaster.providers.base import Exchange
from sms_blaster.ratelimit import PacedLimiter
from sms_blaster.retry import RetryPolicy
from sms_blaster.simulator import limiters
from sms_blaster.work import RowFeed


class _VirtualSelector(selectors.DefaultSelector):
    """A selector whose wait moves the loop's clock forward instead of sleeping."""

    def __init__(self, clock: list[float]) -> None:
        super().__init__()
        self._clock = clock

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if not ready and timeout is not None and timeout > 0:
            self._clock[0] += timeout
        return ready


class VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._virtual = [0.0]
        super().__init__(_VirtualSelector(self._virtual))

    def time(self) -> float:
        return self._virtual[0]


@dataclass(frozen=True, slots=True)
class Hint:
    """How the stand-in spells a refusal's wait."""

    name: str
    wait: Callable[[float | None, random.Random], float | None]


HINTS = {
    "exact": Hint("exact", lambda wait_s, rng: wait_s),
    "none": Hint("none", lambda wait_s, rng: None),
    "wrong": Hint("wrong", lambda wait_s, rng: rng.uniform(0.0, 2.0)),
    "retry-after": Hint("retry-after", lambda wait_s, rng: max(1.0, math.ceil(wait_s or 1.0))),
}


# FlowSettings to try instead of the defaults, as JSON: FLOWLAB_SETTINGS='{"margin": 0.95}'.
OVERRIDES = json.loads(os.environ.get("FLOWLAB_SETTINGS", "{}"))
JITTER_S = 0.0005  # each way, uniform below this plus a share of the latency
JITTER_SHARE = 0.1


def jitter_s(latency_s: float) -> float:
    """The mean extra time of a request, both ways: half the jitter bound each way."""
    return JITTER_S + JITTER_SHARE * latency_s


_TAIL_SIGMA = math.log(10) / 2.326  # lognormal: median 150 ms, p99 1.5 s


@dataclass(frozen=True, slots=True)
class Latency:
    """How long the stand-in takes to answer an accepted request: fixed (the case's
    `latency_ms`, and a little jitter), or uneven as real providers' are."""

    name: str
    p99_s: float  # sizes the window: 1.25 x limit x this
    mean_s: float = 0.0  # sizes a cap in service whose rate is the limit

    def draw_s(self, fixed_s: float, rng: random.Random) -> float:
        if self.name == "uniform":  # 50-500 ms at random
            return rng.uniform(0.05, 0.5)
        if self.name == "bimodal":  # 90 % in 60 ms, 10 % in 2 s
            return 0.06 if rng.random() < 0.9 else 2.0
        if self.name == "tail":  # long-tailed: median 150 ms, p99 1.5 s
            return 0.15 * math.exp(rng.gauss(0, _TAIL_SIGMA))
        return fixed_s + rng.uniform(0, JITTER_S + JITTER_SHARE * fixed_s)


LATENCIES = {
    "fixed": Latency("fixed", 0.0),
    "uniform": Latency("uniform", 0.4955, 0.275),
    "bimodal": Latency("bimodal", 2.0, 0.9 * 0.06 + 0.1 * 2.0),
    "tail": Latency("tail", 1.5, 0.15 * math.exp(_TAIL_SIGMA**2 / 2)),
}


@dataclass(slots=True)
class Provider:
    """Answers through a limiter after `latency_s`; a cap in service refuses at once."""

    limiter: limiters.Limiter
    latency_s: float
    hint: Hint
    latency: Latency = LATENCIES["fixed"]
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    accepted: collections.Counter[int] = field(default_factory=collections.Counter)  # per 10 ms
    throttled: collections.Counter[int] = field(default_factory=collections.Counter)
    in_service_refusals_fast: bool = True
    refs: set[str] = field(default_factory=set)  # the messages accepted
    duplicates: int = 0  # accepted a second time

    async def send(self, message: Message) -> Exchange:
        loop = asyncio.get_running_loop()
        jitter_s = JITTER_S + JITTER_SHARE * self.latency_s  # network and client delays
        await asyncio.sleep(self.rng.uniform(0, jitter_s))
        arrived_s = loop.time()
        verdict = self.limiter.admit(arrived_s)
        slot = int(arrived_s * 100)
        if not verdict.accepted:
            self.throttled[slot] += 1
            fast = verdict.wait_s is None and self.in_service_refusals_fast
            latency_s = 0.0005 if fast else self.latency_s
            if not fast and self.latency.p99_s:
                latency_s = self.latency.draw_s(self.latency_s, self.rng)
            await asyncio.sleep(latency_s)
            wait_s = self.hint.wait(
                self.latency_s if verdict.wait_s is None else verdict.wait_s, self.rng
            )
            result = SendResult(Outcome.THROTTLED, "1", "throttled", wait_s=wait_s)
            return Exchange(result, latency_s)
        self.accepted[slot] += 1
        if message.client_ref in self.refs:
            self.duplicates += 1
        self.refs.add(message.client_ref)
        latency_s = self.latency.draw_s(self.latency_s, self.rng) + verdict.queued_s
        await asyncio.sleep(latency_s)
        self.limiter.done(loop.time())
        return Exchange(SendResult(Outcome.SENT, "0", message_ids=("x",)), latency_s)


class _Preparer:
    def prepare(self, row: InputRow) -> Message:
        return Message(row.line, "447700900000", "hi", Encoding.GSM7, 1, f"r-{row.line}")

    def client_ref(self, line: int) -> str:
        return f"r-{line}"

    def raw_to(self, row: InputRow) -> str:
        return "447700900000"


@dataclass(slots=True)
class _Records(Sink):
    by_status: collections.Counter[Status] = field(default_factory=collections.Counter)
    exhausted: int = 0

    def emit(self, record: Record) -> None:
        self.by_status[record.status] += 1
        if record.error is not None and record.error.kind is ErrorKind.EXHAUSTED:
            self.exhausted += 1


@dataclass(frozen=True, slots=True)
class Case:
    shape: str
    limit_per_s: float  # the true limit (the first phase's for a schedule)
    latency_ms: float = 2.0
    hint: str = "exact"
    seconds: float = 20.0
    ceiling: float = 5.0  # --rate as a multiple of the limit
    window: int = 64  # at least; more where the highest limit needs more in service
    adaptive: bool = True
    told_share: float = 1.0  # not adaptive: paced at this share of the true limit
    limits: tuple[tuple[float, float], ...] = ()  # (from second, limit) for a schedule
    latency: str = "fixed"  # or uneven: see LATENCIES
    seed: int = 0  # another draw of the same case's jitter and answers
    flow: tuple[tuple[str, float], ...] = ()  # FlowSettings other than the defaults: (name, value)


@dataclass(frozen=True, slots=True)
class Outcome_:
    case: Case
    per_second: list[int]  # accepted per whole second from the first arrival
    goodput_share: float  # from second 2 on, of the limit in force
    throttled_share: float
    settled_s: float | None  # first second from which every later second >= 90 % of the limit
    reported_per_s: float | None
    records: collections.Counter[Status]
    rows: int
    early_throttles: int  # in the first 2 s
    throttles: int
    duplicates: int  # messages the provider accepted twice
    # After each change of a schedule's limit, seconds until every later second of its phase
    # was >= 90 % of the new limit (None: never).
    resettled_s: tuple[float | None, ...] = ()


def limit_at(case: Case, second: int) -> float:
    limit = case.limit_per_s
    for start_s, value in case.limits:
        if second >= start_s:
            limit = value
    return limit


async def _batches(rows: int) -> AsyncIterator[list[InputRow]]:
    for start in range(1, rows + 1, 256):
        yield [InputRow(line, {}) for line in range(start, min(rows + 1, start + 256))]


async def _run(case: Case) -> Outcome_:
    loop = asyncio.get_running_loop()
    latency = LATENCIES[case.latency]
    provider = Provider(
        limiters.parse(case.shape),
        case.latency_ms / 1000,
        HINTS[case.hint],
        latency,
        random.Random(7 + case.seed),
    )
    told_per_s = case.told_share * case.limit_per_s
    ceiling = case.ceiling * case.limit_per_s if case.adaptive else told_per_s
    pacer = PacedLimiter(ceiling, clock=loop.time)
    # A window that holds the highest limit's requests in service, with room: the lab measures
    # finding the limit, not a window too small for it.
    in_service_s = case.latency_ms / 1000 + jitter_s(case.latency_ms / 1000)
    peak = max(limit_at(case, s) for s in range(int(case.seconds) + 1))
    window = max(case.window, math.ceil(1.5 * peak * in_service_s))
    if latency.p99_s:  # as a user sizes it for uneven answers: 1.25 x limit x p99 latency
        window = max(case.window, math.ceil(1.25 * peak * latency.p99_s))
    chosen: dict[str, Any] = {**dict(case.flow), **OVERRIDES}
    settings = dataclasses.replace(FlowSettings(ceiling, window), **chosen)
    flow = FlowController(settings, loop.time()) if case.adaptive else None
    rows = int(case.seconds * max(limit_at(case, s) for s in range(int(case.seconds) + 1)))
    records = _Records()
    engine = Engine(
        send=provider.send,
        limiter=pacer,
        sink=records,
        config=EngineConfig(window, RetryPolicy()),
        flow=flow,
        clock=loop.time,
        draw=random.Random(11 + case.seed).random,
    )
    feed = RowFeed(PreparedOnLoop(_batches(rows), _Preparer()), engine)
    # Stop after `seconds`: what is left is not the point.
    try:
        async with asyncio.timeout(case.seconds):
            await feed.run()
    except TimeoutError:
        pass
    return _summarise(case, provider, flow, records, rows)


def _summarise(
    case: Case,
    provider: Provider,
    flow: FlowController | None,
    records: _Records,
    rows: int,
) -> Outcome_:
    first = min([*provider.accepted, *provider.throttled], default=0)
    per_second: collections.Counter[int] = collections.Counter()
    for slot, count in provider.accepted.items():
        per_second[(slot - first) // 100] += count
    seconds = int(case.seconds - first / 100) - 1
    series = [per_second[s] for s in range(seconds)]
    measured = series[2:]
    limits = [limit_at(case, s) for s in range(2, seconds)]
    goodput = sum(measured) / sum(limits) if limits else 0.0
    throttled = sum(provider.throttled.values())
    requests = throttled + sum(provider.accepted.values())
    early = sum(n for slot, n in provider.throttled.items() if slot - first < 200)
    settled = None
    for start in range(seconds):
        if all(series[s] >= 0.9 * limit_at(case, s) for s in range(start, seconds)):
            settled = float(start)
            break
    reported = flow.known_limit_per_s if flow is not None else None
    changes = [int(start_s) for start_s, _ in case.limits]
    resettled = tuple(
        _settled_s(series, case, start, end)
        for start, end in zip(changes, [*changes[1:], seconds], strict=False)
    )
    return Outcome_(
        case,
        series,
        goodput,
        throttled / requests if requests else 0.0,
        settled,
        reported,
        records.by_status,
        rows,
        early,
        throttled,
        provider.duplicates,
        resettled,
    )


def _settled_s(series: list[int], case: Case, start: int, end: int) -> float | None:
    """Seconds after `start` from which every second before `end` was >= 90 % of the limit."""
    for first in range(start, end):
        if all(series[s] >= 0.9 * limit_at(case, s) for s in range(first, end)):
            return float(first - start)
    return None


def run(case: Case) -> Outcome_:
    loop = VirtualLoop()
    try:
        return loop.run_until_complete(_run(case))
    finally:
        loop.close()


def zoo(limit: float, latency_ms: float) -> list[Case]:
    """The shapes of the sweep at one limit and latency."""
    small = limit / 10
    cap = max(1, round(limit * 0.05))  # about 50 ms in service
    in_service_s = 0.05 + jitter_s(0.05)  # the stand-in's latency, and its jitter on average
    cases = [
        Case(f"sliding:{limit:g}", limit, latency_ms),
        Case(f"fixed:{limit:g}", limit, latency_ms),
        Case(f"bucket:{limit:g}:{limit:g}", limit, latency_ms),
        Case(f"bucket:{limit:g}", limit, latency_ms),
        Case(f"bucket:{limit:g}:{small:g}", limit, latency_ms),
        Case(f"concurrency:{cap}", cap / in_service_s, 50.0),
        Case(
            f"sliding:{limit:g}@10,sliding:{0.4 * limit:g}@10,sliding:{1.33 * limit:g}",
            limit,
            latency_ms,
            seconds=32,
            limits=((10, 0.4 * limit), (20, 1.33 * limit)),
        ),
        Case(f"sliding:{limit:g}", limit, latency_ms, hint="none"),
        Case(f"sliding:{limit:g}", limit, latency_ms, hint="wrong"),
        Case(f"sliding:{limit:g}", limit, latency_ms, hint="retry-after"),
        Case(f"queue:{limit:g}:20", limit, latency_ms),
        Case(f"leaky:{limit:g}", limit, latency_ms),
        Case(f"leaky:{limit:g}:{small:g}", limit, latency_ms),
        Case("random:0.01", limit, latency_ms, ceiling=1.0),  # no limit: the ceiling is all
    ]
    return cases


UNEVEN_LIMITS = (30.0, 150.0, 600.0)


def uneven_zoo(limit: float, latency: str) -> list[Case]:
    """The shapes of the uneven sweep at one limit and latency model."""
    cap = max(2, round(limit * LATENCIES[latency].mean_s))
    return [
        Case(f"sliding:{limit:g}", limit, latency=latency),
        Case(f"fixed:{limit:g}", limit, latency=latency),
        Case(f"bucket:{limit:g}:{limit:g}", limit, latency=latency),
        Case(f"bucket:{limit:g}:{limit / 10:g}", limit, latency=latency),
        Case(f"bucket:{limit:g}:1", limit, latency=latency),
        Case(f"queue:{limit:g}:20", limit, latency=latency),
        Case(f"concurrency:{cap}", cap / LATENCIES[latency].mean_s, latency=latency),
    ]


def line(result: Outcome_) -> str:
    case = result.case
    final = limit_at(case, int(case.seconds))
    reported = "-" if result.reported_per_s is None else f"{result.reported_per_s / final:.2f}"
    settled = "never" if result.settled_s is None else f"{result.settled_s:g}"
    latency = f"{case.latency_ms:>4g}ms" if case.latency == "fixed" else f"{case.latency:>6}"
    return (
        f"{case.shape:<48} {case.hint:<11} {latency} "
        f"goodput {result.goodput_share:6.1%}  throttled {result.throttled_share:6.2%}  "
        f"settled {settled:>5}  reported {reported:>5}  early {result.early_throttles} "
        f"later {result.throttles - result.early_throttles}"
        + "".join(f"  resettled {'never' if s is None else f'{s:g}'}" for s in result.resettled_s)
        + (f"  seed {case.seed}" if case.seed else "")
    )


def _case(shape: str, latency: str, hint: str, limit: float) -> Case:
    if latency in LATENCIES:
        sweeps = [uneven_zoo(base, latency) for base in (*UNEVEN_LIMITS, limit)]
        for cases in sweeps:
            for case in cases:
                if case.shape == shape:
                    return dataclasses.replace(case, hint=hint)
        return Case(shape, limit, hint=hint, latency=latency)
    latency_ms = float(latency)
    for cases in (zoo(base, latency_ms) for base in (30.0, 150.0, 1000.0, limit)):
        for case in cases:
            if (case.shape, case.hint) == (shape, hint):
                return case
    return Case(shape, limit, latency_ms, hint=hint)


def main(argv: list[str]) -> None:
    # --told paces at the true limit, --told=SHARE at that share of it; no flow control.
    shares = [arg.partition("=")[2] or "1" for arg in argv if arg.partition("=")[0] == "--told"]
    told = float(shares[-1]) if shares else None
    uneven = "--uneven" in argv
    seeds = [int(arg.partition("=")[2]) for arg in argv if arg.partition("=")[0] == "--seeds"]
    jobs = [int(arg.partition("=")[2]) for arg in argv if arg.partition("=")[0] == "--jobs"]
    options = ("--told", "--uneven", "--seeds", "--jobs")
    argv = [arg for arg in argv if arg.partition("=")[0] not in options]
    if argv:
        shape, latency = argv[0], argv[1] if len(argv) > 1 else "2"
        hint = argv[2] if len(argv) > 2 else "exact"
        limit = float(shape.split(":")[1].split("@")[0])
        # The sweep's own case where there is one (a schedule's limits, a cap's true rate).
        case = _case(shape, latency, hint, limit)
        if told is not None:
            case = dataclasses.replace(case, adaptive=False, told_share=told)
        result = run(case)
        print(line(result))
        print("per second:", result.per_second)
        return
    if uneven:
        sweep = [
            case
            for limit in UNEVEN_LIMITS
            for name in ("uniform", "bimodal", "tail")
            for case in uneven_zoo(limit, name)
        ]
    else:
        sweep = [
            case
            for limit in (30.0, 150.0, 1000.0)
            for latency_ms in (2.0, 50.0)
            for case in zoo(limit, latency_ms)
        ]
    sweep = [
        dataclasses.replace(case, seed=seed)
        for case in sweep
        for seed in range(seeds[-1] if seeds else 1)
    ]
    if told is not None:  # paced at the true limit (or a share of it), no flow control:
        # what any client can do
        sweep = [dataclasses.replace(case, adaptive=False, told_share=told) for case in sweep]
    if jobs and jobs[-1] > 1:
        with multiprocessing.Pool(jobs[-1]) as pool:
            for text in pool.imap(_line_of, sweep):
                print(text, flush=True)
        return
    for case in sweep:
        print(_line_of(case), flush=True)


def _line_of(case: Case) -> str:
    return line(run(case))


if __name__ == "__main__":
    main(sys.argv[1:])
