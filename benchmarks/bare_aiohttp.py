"""The yardstick: a bare aiohttp loop posting the same requests at the same concurrency.

Usage: python -m benchmarks.bare_aiohttp URL COUNT CONCURRENCY  ->  prints requests/s
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import sys
import time

import aiohttp
import uvloop


def requests_for(count: int, ref_prefix: str) -> tuple[dict[str, str], list[bytes]]:
    """The headers and `count` form bodies a benchmark client posts (no simulator magic suffix)."""
    token = base64.b64encode(b"bench-key:bench-secret").decode()
    headers = {
        "Authorization": f"Basic {token}",
        "Content-Type": "application/x-www-form-urlencoded",
    }
    numbers = (n for n in itertools.count(1) if n % 10000 < 9990)
    bodies = [
        f"from=Bench&to=4474{n:08d}&client-ref={ref_prefix}-{n}&text=Hello+there+{n}".encode()
        for n in itertools.islice(numbers, count)
    ]
    return headers, bodies


async def blast(url: str, count: int, concurrency: int) -> float:
    headers, bodies = requests_for(count, "b")
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        position = 0

        async def worker() -> None:
            nonlocal position
            while position < count:
                body = bodies[position]
                position += 1
                async with session.post(url + "/sms/json", data=body, headers=headers) as answer:
                    await answer.read()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return count / (time.perf_counter() - started)


def main() -> None:
    url, count, concurrency = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    print(f"{uvloop.run(blast(url, count, concurrency)):.1f}")


if __name__ == "__main__":
    main()
