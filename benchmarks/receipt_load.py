"""An open-loop load of Vonage delivery receipts, retried like the provider retries them.

Usage: python -m benchmarks.receipt_load URL --rate R --count N [options]  ->  prints a JSON tally

Receipt i is due at start + i / R, whatever became of the ones before it (open loop: a slow
receiver cannot slow the load down and hide its own latency, which is what coordinated omission
means), and latency is measured from that due time, so the generator's own lateness counts
against the receiver, never for it. Each receipt carries a unique messageId and an sms-blaster
client-ref. A 503 is retried after its Retry-After, any other non-2xx answer or connection error
after --retry-wait-s, until it is acknowledged or --deadline-s runs out.

Receipts due in the first --warmup-s are sent but left out of the latency figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from sms_blaster.receiver.signatures import sign_vonage_sms

CAMPAIGN_ID = "0be0c4a1b2c3"  # the client-ref prefix `sms-blaster send` would have written


def receipt_fields(prefix: str, n: int, now_s: float) -> dict[str, str]:
    """A Vonage SMS API delivery receipt, as the provider posts it (POST JSON: all strings)."""
    now = time.gmtime(now_s)
    return {
        "msisdn": f"4474{n % 100_000_000:08d}",
        "to": "Bench",
        "network-code": "23410",
        "messageId": f"{prefix}{n:010X}",
        "price": "0.03330000",
        "status": "delivered",
        "scts": time.strftime("%y%m%d%H%M", now),
        "err-code": "0",
        "api-key": "bench-key",
        "client-ref": f"{CAMPAIGN_ID}-{n + 1}",
        "message-timestamp": time.strftime("%Y-%m-%d %H:%M:%S", now),
    }


def percentiles_ms(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {"p50": at(0.5), "p99": at(0.99), "p999": at(0.999), "max": ordered[-1] * 1000}


@dataclass(slots=True)
class Tally:
    first_status: Counter[str] = field(default_factory=Counter)  # first answer of each receipt
    statuses: Counter[str] = field(default_factory=Counter)  # every attempt
    retries: int = 0
    acked: list[str] = field(default_factory=list)
    gave_up: int = 0
    first_answer_s: list[float] = field(default_factory=list)  # measured receipts only
    ack_s: list[float] = field(default_factory=list)  # due time to the 2xx, retries included
    launch_lag_s: list[float] = field(default_factory=list)  # how late the generator sent


async def run(args: argparse.Namespace) -> tuple[list[str], dict[str, Any]]:
    """The acknowledged message ids, and the tally."""
    prefix = args.prefix or secrets.token_hex(3).upper()
    now = time.time()
    fields = (receipt_fields(prefix, n, now) for n in range(args.count))
    if args.signature_secret:  # signed as Vonage signs them: the receiver checks each `sig`
        secret, method = args.signature_secret, args.signature_method
        fields = (sign_vonage_sms(f, secret, method, now_s=now) for f in fields)
    bodies = [json.dumps(f, separators=(",", ":")).encode() for f in fields]
    headers = {"Content-Type": "application/json"}
    tally = Tally()
    timeout = aiohttp.ClientTimeout(total=args.timeout_s)
    connector = aiohttp.TCPConnector(limit=args.connections)
    clock = time.perf_counter
    loop = asyncio.get_running_loop()
    started = clock() + 0.05
    stop_at = started + args.count / args.rate + args.deadline_s
    measured_from = started + args.warmup_s
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)

    async def deliver(session: aiohttp.ClientSession, n: int, due: float) -> None:
        measured = due >= measured_from
        if measured:
            tally.launch_lag_s.append(clock() - due)
        first = True
        while True:
            wait_s = args.retry_wait_s
            try:
                async with session.post(args.url, data=bodies[n], headers=headers) as answer:
                    await answer.read()
                    status = str(answer.status)
                    if answer.status == 503:
                        wait_s = float(answer.headers.get("Retry-After", wait_s))
            except (aiohttp.ClientError, TimeoutError) as exc:
                status = type(exc).__name__
            answered = clock()
            tally.statuses[status] += 1
            if first:
                tally.first_status[status] += 1
                if measured:
                    tally.first_answer_s.append(answered - due)
                first = False
            if status.startswith("2"):
                tally.acked.append(f"{prefix}{n:010X}")
                if measured:
                    tally.ack_s.append(answered - due)
                return
            if answered + wait_s > stop_at:
                tally.gave_up += 1
                return
            tally.retries += 1
            await asyncio.sleep(wait_s)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks: set[asyncio.Task[None]] = set()
        n = 0
        while n < args.count:
            now_s = clock()
            while n < args.count and started + n / args.rate <= now_s:
                task = loop.create_task(deliver(session, n, started + n / args.rate))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                n += 1
            # At least a millisecond: uvloop fires shorter timers at once, which would spin.
            await asyncio.sleep(max(0.001, started + n / args.rate - clock()))
        scheduled_s = clock() - started
        if tasks:
            await asyncio.wait(set(tasks), timeout=max(0.1, stop_at - clock()))
        unanswered = len(tasks)
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = cpu.ru_utime + cpu.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime
    return tally.acked, {
        "prefix": prefix,
        "count": args.count,
        "rate": args.rate,
        "started_epoch_s": time.time() - (clock() - started),
        "scheduled_s": scheduled_s,
        "elapsed_s": clock() - started,
        "cpu_s": cpu_s,
        "acked": len(tally.acked),
        "acked_unique": len(set(tally.acked)),
        "gave_up": tally.gave_up,
        "unanswered": unanswered,
        "retries": tally.retries,
        "first_status": dict(tally.first_status),
        "statuses": dict(tally.statuses),
        "measured": len(tally.first_answer_s),
        "first_answer_ms": percentiles_ms(tally.first_answer_s),
        "ack_ms": percentiles_ms(tally.ack_s),
        "launch_lag_ms": percentiles_ms(tally.launch_lag_s),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url", help="the receipt route, e.g. http://127.0.0.1:8080/webhooks/dlr")
    parser.add_argument("--rate", type=float, required=True, help="receipts per second")
    parser.add_argument("--count", type=int, required=True, help="receipts in all")
    parser.add_argument("--warmup-s", type=float, default=0.0)
    parser.add_argument("--connections", type=int, default=512)
    parser.add_argument("--timeout-s", type=float, default=10.0, help="per attempt")
    parser.add_argument("--retry-wait-s", type=float, default=0.5)
    parser.add_argument("--deadline-s", type=float, default=30.0, help="after the last is due")
    parser.add_argument("--prefix", help="messageId prefix (default: random, unique per run)")
    parser.add_argument("--acked-file", help="write the acknowledged message ids here")
    parser.add_argument("--signature-secret", help="sign each receipt (Vonage SMS API `sig`)")
    parser.add_argument("--signature-method", default="sha256", help="md5hash, sha256, ...")
    args = parser.parse_args()
    acked, tally = uvloop.run(run(args))
    if args.acked_file:
        Path(args.acked_file).write_text("".join(f"{m}\n" for m in acked))
    print(json.dumps(tally))


if __name__ == "__main__":
    main()
