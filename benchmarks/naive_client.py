"""A naive client: an aiohttp loop at a fixed window that resends at once when throttled.

Usage: python -m benchmarks.naive_client URL COUNT WINDOW DEADLINE_S  ->  prints a JSON tally

Each of COUNT messages is posted until the answer is not Vonage status 1 ("throttled"), with no
pause and no rate limit: what a sender that ignores the provider's hint does. Bounded by
DEADLINE_S and by a cap on the requests per message.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import aiohttp
import uvloop

from benchmarks.bare_aiohttp import requests_for

MAX_ATTEMPTS = 100_000  # per message; with the deadline, keeps the loop bounded


async def blast(url: str, count: int, window: int, deadline_s: float) -> dict[str, float]:
    headers, bodies = requests_for(count, "n")
    tally = {"rows": count, "accepted": 0, "requests": 0, "throttled": 0, "gave_up": 0}
    started = time.perf_counter()
    stop_at = started + deadline_s
    connector = aiohttp.TCPConnector(limit=window)
    async with aiohttp.ClientSession(connector=connector) as session:
        position = 0

        async def worker() -> None:
            nonlocal position
            while position < count:
                body = bodies[position]
                position += 1
                for _ in range(MAX_ATTEMPTS):
                    if time.perf_counter() > stop_at:
                        tally["gave_up"] += 1
                        return
                    tally["requests"] += 1
                    async with session.post(
                        url + "/sms/json", data=body, headers=headers
                    ) as answer:
                        status = (await answer.json())["messages"][0]["status"]
                    if status != "1":
                        tally["accepted"] += status == "0"
                        break
                    tally["throttled"] += 1
                else:
                    tally["gave_up"] += 1

        await asyncio.gather(*(worker() for _ in range(window)))
    return {**tally, "elapsed_s": time.perf_counter() - started}


def main() -> None:
    url, count, window, deadline_s = sys.argv[1], *map(int, sys.argv[2:4]), float(sys.argv[4])
    print(json.dumps(uvloop.run(blast(url, count, window, deadline_s))))


if __name__ == "__main__":
    main()
