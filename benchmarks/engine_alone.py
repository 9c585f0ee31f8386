"""The engine's own CPU a row: claims handed out at once, a send answered in the next turn of the
loop with an accepted result, records written to a sink that drops them; no journal, no flow
control, no rate limit. What it measures is the engine's bookkeeping (window, claims, the next
step, the record) and the record's line, without the network.

Usage: python -m benchmarks.engine_alone [--rows N] [--rounds N]  ->  µs of CPU a row
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import time
from decimal import Decimal

import uvloop

from sms_blaster.engine import Claim, Engine, EngineConfig
from sms_blaster.models import Encoding, Message, Outcome, Record, SendResult
from sms_blaster.output import RecordTotals, RecordWriter
from sms_blaster.providers.base import Exchange
from sms_blaster.ratelimit import Unlimited

WINDOW = 64
ACCEPTED = SendResult(Outcome.SENT, "0", "", ("0A0000000123ABCD1",), Decimal("0.03330000"))


class _Claims:
    """Every message claimable at once."""

    def __init__(self, messages: list[Message]) -> None:
        self._messages = messages
        self._next = 0

    def claimers(self, window: int) -> int:
        return 2 * window  # as the rows of a `send` are claimed

    async def claim(self) -> Claim | Record | None:
        if self._next >= len(self._messages):
            return None
        message = self._messages[self._next]
        self._next += 1
        return Claim(message)


class _Dropped(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, data: object) -> int:
        return len(data)  # type: ignore[arg-type]  # bytes, as RecordWriter writes them


async def _run(messages: list[Message]) -> float:
    loop = asyncio.get_running_loop()

    async def send(message: Message) -> Exchange:
        answered = loop.create_future()
        loop.call_soon(answered.set_result, None)
        await answered
        return Exchange(ACCEPTED, 0.001)

    sink = RecordWriter(_Dropped(), RecordTotals())  # type: ignore[arg-type]
    engine = Engine(send=send, limiter=Unlimited(), sink=sink, config=EngineConfig(WINDOW))
    started = time.process_time()
    await engine.run(_Claims(messages))
    return (time.process_time() - started) * 1e6 / len(messages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    messages = [
        Message(line, "447400000001", "Hello, a benchmark message.", Encoding.GSM7, 1, f"r-{line}")
        for line in range(1, args.rows + 1)
    ]
    figures = [uvloop.run(_run(messages)) for _ in range(args.rounds)]
    low, high = min(figures), max(figures)
    print(f"{statistics.median(figures):.2f} ({low:.2f}-{high:.2f}) µs of CPU a row, engine alone")


if __name__ == "__main__":
    main()
