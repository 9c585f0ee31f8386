"""The lean transport alone: the bare aiohttp loop's requests, posted through `LeanTransport`
with a provider that only counts, at the same concurrency.

Usage: python -m benchmarks.bare_lean URL COUNT CONCURRENCY  ->  prints requests/s
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Mapping

import uvloop

from benchmarks.bare_aiohttp import requests_for
from sms_blaster.models import Encoding, Message, Outcome, SendResult
from sms_blaster.providers.base import HttpRequest
from sms_blaster.providers.names import ProviderName
from sms_blaster.providers.redact import Redactor
from sms_blaster.transport.lean import LeanTransport

SENT = SendResult(Outcome.SENT, "0")


class Posting:
    """A provider whose message text is the index of a prebuilt body; every answer is sent."""

    name = ProviderName.VONAGE_SMS
    receipt_route = "/webhooks/dlr"
    redactor = Redactor.of(())

    def __init__(self, url: str, headers: Mapping[str, str], bodies: list[bytes]) -> None:
        self._url, self._headers, self._bodies = url, headers, bodies

    def build_request(self, message: Message) -> HttpRequest:
        return HttpRequest(self._url, self._bodies[message.line], self._headers)

    def parse_response(
        self, status: int, headers: Mapping[str, str], body: bytes, to: str = ""
    ) -> SendResult:
        return SENT

    def cost(self, message: Message) -> float:
        return 1.0


async def blast(url: str, count: int, concurrency: int) -> float:
    headers, bodies = requests_for(count, "l")
    provider = Posting(url + "/sms/json", headers, bodies)
    transport = LeanTransport(concurrency, 10.0)
    messages = [Message(n, "", "", Encoding.GSM7, 1, "") for n in range(count)]
    position = 0

    async def worker() -> None:
        nonlocal position
        while position < count:
            message = messages[position]
            position += 1
            await transport.send(provider, message)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await transport.close()
    return count / elapsed


def main() -> None:
    url, count, concurrency = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    print(f"{uvloop.run(blast(url, count, concurrency)):.1f}")


if __name__ == "__main__":
    main()
