"""aiolimiter's AsyncLimiter against sms-blaster's PacedLimiter, in one process: how evenly each
lets sends leave at a rate, how many leave at once, and the CPU each costs.

aiolimiter is not a dependency (the README's "How it is built" says why): install it to run this.
Usage: python -m benchmarks.aiolimiter_pacing [--seconds 3] [--workers 64] [RATE ...]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import time
from collections.abc import Awaitable, Callable

from aiolimiter import AsyncLimiter

from sms_blaster.ratelimit import PacedLimiter

Acquire = Callable[[], Awaitable[object]]


def limiters(rate_per_s: float) -> dict[str, Callable[[], Acquire]]:
    """Each limiter as a maker of its acquire, so every run starts on a fresh one."""

    def paced() -> Acquire:
        return PacedLimiter(rate_per_s).acquire

    def bucket_of_a_second() -> Acquire:
        return AsyncLimiter(rate_per_s, 1.0).acquire  # aiolimiter's usual shape: R per second

    def bucket_of_one() -> Acquire:
        return AsyncLimiter(1, 1.0 / rate_per_s).acquire  # one send per 1/R s: no burst allowed

    return {
        "PacedLimiter(R)": paced,
        "AsyncLimiter(R, 1 s)": bucket_of_a_second,
        "AsyncLimiter(1, 1/R s)": bucket_of_one,
    }


async def run(acquire: Acquire, sends: int, workers: int) -> tuple[list[float], float]:
    """Times (s from the start) at which `sends` acquires returned, and the CPU s it took."""
    times: list[float] = []
    loop = asyncio.get_running_loop()
    started_s, cpu_started_s = loop.time(), time.process_time()

    async def worker() -> None:
        while len(times) < sends:
            await acquire()
            times.append(loop.time() - started_s)

    await asyncio.gather(*(worker() for _ in range(workers)))
    return sorted(times[:sends]), time.process_time() - cpu_started_s


def peak_1s(times: list[float]) -> int:
    """The most sends in any sliding second (the first second included)."""
    return max(bisect.bisect_left(times, t + 1.0) - i for i, t in enumerate(times))


def row(name: str, rate_per_s: float, times: list[float], cpu_s: float) -> str:
    span_s = times[-1] - times[0]
    achieved = (len(times) - 1) / span_s / rate_per_s if span_s else float("inf")
    first_10ms = bisect.bisect_left(times, 0.01)
    return (
        f"| {name} | {rate_per_s:,.0f} | {achieved:.3f} | {peak_1s(times) / rate_per_s:.3f} "
        f"| {first_10ms} | {cpu_s * 1000 / len(times):.3f} |"
    )


async def main(rates: list[float], seconds: float, workers: int) -> None:
    print(
        "| limiter | R /s | achieved / R | peak 1 s / R | sends in the first 10 ms | CPU ms/send |"
    )
    print("|---|---|---|---|---|---|")
    for rate_per_s in rates:
        for name, make in limiters(rate_per_s).items():
            times, cpu_s = await run(make(), int(rate_per_s * seconds), workers)
            print(row(name, rate_per_s, times, cpu_s))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("rates", nargs="*", type=float, default=[100.0, 1000.0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--workers", type=int, default=64)
    args = parser.parse_args()
    asyncio.run(main(args.rates, args.seconds, args.workers))
