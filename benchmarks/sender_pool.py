"""Sender pools: each sender at its own rate and the global --rate together (`--from-pool`).

Usage: python -m benchmarks.run --only sender-pool

Two campaigns against the simulator in its own process, which counts each sender's accepted
requests as they arrive (`senders` in its stats) and holds every sender to one request in any
sliding second (`--sender-limiter sliding:1`), so a sender sent too fast shows as throttles:

- balanced: 50 senders at 1/s, `--rate 40`; the bound is min(40, 50 x 1) = 40/s;
- skewed: 10 US senders and 40 UK senders, all at 1/s, `--rate 40`, 80 % of the recipients in the
  US: the US senders bound the run, at 10/s for 80 % of the rows, so the bound is 10 / 0.8 =
  12.5 rows/s (the UK rows go by meanwhile, in the look-ahead's turns).

achieved = (rows - 1) / span of arrivals / bound; per-sender peak = the most requests of one
sender in any sliding second.
"""

from __future__ import annotations

import collections
import os
import statistics
import subprocess
from pathlib import Path

from benchmarks.clients import ENV, shown
from benchmarks.results import Check, Section, median_range
from benchmarks.scenarios import Context
from benchmarks.servers import BIN, Simulator, simulator
from sms_blaster.pool import parse_pool

GLOBAL_RATE = 40


def _write(folder: Path, name: str, numbers: list[str], senders: list[str]) -> tuple[Path, float]:
    """The campaign and its pool file; and its bound: rows / the longest the global rate or any
    sender needs for its rows (each sender as the pool chooses it for the recipients)."""
    pool_text = "sender,rate,country\n" + "".join(senders)
    pool = parse_pool(pool_text.splitlines(), name)
    loads = collections.Counter(pool.choose(number.lstrip("+")) for number in numbers)
    rates = pool.by_sender
    senders_s = [rows / rates[str(sender)].rate_per_s for sender, rows in loads.items()]
    longest_s = max(len(numbers) / GLOBAL_RATE, *senders_s)
    campaign = folder / f"{name}.csv"
    campaign.write_text("to\n" + "".join(number + "\n" for number in numbers))
    (folder / f"{name}-pool.csv").write_text(pool_text)
    return campaign, len(numbers) / longest_s


def _even(senders: list[str], per_sender: int) -> list[str]:
    """UK numbers, `per_sender` for each sender of the pool: a campaign spread evenly."""
    pool = parse_pool(["sender,rate\n", *senders], "even")
    taken: collections.Counter[str | None] = collections.Counter()
    numbers = []
    for n in range(10**6):
        number = f"4474{n:08d}"
        sender = pool.choose(number)
        if taken[sender] < per_sender:
            taken[sender] += 1
            numbers.append("+" + number)
            if len(numbers) == per_sender * len(senders):
                return numbers
    raise RuntimeError("not enough numbers")


def _argv(url: str, campaign: Path, journal: Path) -> list[str]:
    return [
        str(BIN), "send", str(campaign), "--from-pool", str(campaign.with_name(
            campaign.stem + "-pool.csv")), "--text", "Your code is ready", "--base-url", url,
        "--rate", str(GLOBAL_RATE), "--no-progress", "--output", os.devnull,
        "--journal", str(journal),
    ]  # fmt: skip


def _run(sim: Simulator, argv: list[str], rows: int, timeout_s: float) -> dict[str, float]:
    sim.reset()
    done = subprocess.run(
        argv, env=ENV, capture_output=True, text=True, check=False, timeout=timeout_s
    )
    if done.returncode != 0:
        raise RuntimeError(f"send exited {done.returncode}: {done.stderr}")
    stats = sim.stats()
    arrivals = stats["arrivals"]
    senders = stats["senders"]
    assert isinstance(arrivals, dict)
    assert isinstance(senders, dict)
    if stats["accepted"] != rows:
        raise RuntimeError(f"expected {rows} accepted, got {stats['accepted']}: {done.stderr}")
    return {
        "rate": (rows - 1) / arrivals["span_s"],
        "peak": max(summary["peak_1s"] for summary in senders.values()),
        "throttled": float(stats["throttled"]),  # type: ignore[arg-type]
    }


def sender_pool(ctx: Context) -> Section:
    seconds = 10 if ctx.quick else 30
    uk_senders = [f"4470000{n:05d},1,\n" for n in range(50)]
    balanced, balanced_bound = _write(
        ctx.folder, "balanced", _even(uk_senders, GLOBAL_RATE * seconds // 50), uk_senders
    )
    us_rows = 10 * seconds  # the US senders' 10/s for `seconds`
    mixed = [f"+1201555{n:04d}" for n in range(us_rows)]
    mixed += [f"+4474{n:08d}" for n in range(us_rows // 4)]
    mixed.sort(key=lambda number: (number[-4:], number))  # countries mixed, as in a real list
    skewed, skewed_bound = _write(
        ctx.folder, "skewed", mixed,
        [f"1201555{9000 + n:04d},1,US\n" for n in range(10)]
        + [f"4470000{n:05d},1,GB\n" for n in range(40)],
    )  # fmt: skip
    cases = {
        "balanced: 50 x 1/s, --rate 40": (balanced, GLOBAL_RATE * seconds // 50 * 50,
                                          balanced_bound),
        "skewed: 10 US + 40 UK x 1/s, 80 % US, --rate 40": (skewed, len(mixed), skewed_bound),
    }  # fmt: skip
    figures: dict[str, list[dict[str, float]]] = {case: [] for case in cases}
    with simulator("--sender-limiter", "sliding:1") as sim:
        for _ in range(ctx.rounds):
            for case, (campaign, rows, _bound) in cases.items():
                argv = _argv(sim.url, campaign, ctx.journal("pool"))
                figures[case].append(_run(sim, argv, rows, timeout_s=seconds * 4 + 30))
    lines = [
        "## Sender pools",
        "",
        "`sms-blaster send --from-pool POOL --rate 40` against the simulator in its own process, "
        "which holds each sender to one request in any sliding second "
        "(`--sender-limiter sliding:1`) and counts each sender's accepted requests by arrival. "
        "achieved = (rows - 1) / span of arrivals / bound; bound = rows / the longest that the "
        "global rate or any one sender (at its rate, for the rows the pool gives it) needs. "
        "Balanced: recipients picked so that each of the 50 senders gets as many (the pool's "
        "hash spreads a finite list unevenly, and the most loaded sender would bound the run), "
        "so the bound is min(global, sum of senders) = 40/s. Skewed: 80 % of the rows in the "
        "US, on 10 of the 50 senders, as the hash spreads them. "
        f"{ctx.rounds_text}.",
        "",
        "| case | rows | bound rows/s | achieved / bound | most of one sender in any 1 s "
        "| throttled |",
        "|---|---|---|---|---|---|",
    ]
    checks = []
    for case, (_campaign, rows, bound) in cases.items():
        got = [figure["rate"] / bound for figure in figures[case]]
        peaks = [figure["peak"] for figure in figures[case]]
        throttled = [figure["throttled"] for figure in figures[case]]
        lines.append(
            f"| {case} | {rows:,} | {bound:.1f} | {median_range(got, 3)} | {median_range(peaks)} "
            f"| {median_range(throttled)} |"
        )
        checks += [
            Check(f"{case}: achieved {statistics.median(got):.3f} x bound", "≥ 0.98",
                  statistics.median(got) >= 0.98),
            Check(f"{case}: most of one sender in any second {max(peaks):g}", "≤ 1",
                  max(peaks) <= 1),
        ]  # fmt: skip
    lines += [
        "",
        "Command: "
        + shown(
            argv,
            **{
                sim.url: "URL",
                argv[2]: "campaign.csv",
                argv[4]: "pool.csv",
                argv[-1]: "fresh.journal",
            },
        ),
    ]
    return Section(name="sender pools", lines=lines, checks=checks)
