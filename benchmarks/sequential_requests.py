"""What the provider SDKs do: one `requests.Session`, one message after another.

Usage: python -m benchmarks.sequential_requests URL COUNT  ->  prints requests/s
"""

from __future__ import annotations

import sys
import time

import requests


def blast(url: str, count: int) -> float:
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    with requests.Session() as session:
        session.auth = ("bench-key", "bench-secret")
        started = time.perf_counter()
        for n in range(1, count + 1):
            body = f"from=Bench&to=4474{n:08d}&client-ref=s-{n}&text=Hello+there+{n}"
            answer = session.post(url + "/sms/json", data=body, headers=headers, timeout=10)
            answer.raise_for_status()
            answer.json()
        return count / (time.perf_counter() - started)


def main() -> None:
    url, count = sys.argv[1], int(sys.argv[2])
    print(f"{blast(url, count):.1f}")


if __name__ == "__main__":
    main()
