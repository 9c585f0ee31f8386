"""Rate accuracy for Twilio, which counts segments: `--rate R` is R segments a second, and a
message of three segments takes three slots of the limit.

Usage: python -m benchmarks.run --only rate-twilio

The simulator, in its own process, weighs each Twilio request by the segments of its Body and
counts them as they arrive (`arrivals.by_api.twilio`); the campaign mixes 1-, 2- and 3-segment
texts in GSM-7 and UCS-2.
"""

from __future__ import annotations

import csv
import os
import statistics
import subprocess
from pathlib import Path

from benchmarks.clients import ENV, MAGIC, shown
from benchmarks.results import Check, Section, median_range
from benchmarks.scenarios import Context
from benchmarks.servers import BIN, Simulator, simulator

RATES = (100, 1000)  # segments per second
SENDER = "+15005550006"
ACCOUNT_SID = "AC" + "5e" * 16
AUTH_TOKEN = "bench-twilio-token"
TWILIO_ENV = {**ENV, "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN}

_GSM = "Your parcel is on its way, reply STOP to opt out. "
_UCS = "Ваша посылка уже в пути, ответьте СТОП. "


def _fill(unit: str, length: int) -> str:
    return (unit * (length // len(unit) + 1))[:length]


# (encoding, characters, segments): GSM-7 fits 160 characters in one segment and 153 a part
# beyond; UCS-2 70, then 67 a part. Rows cycle through these in order: 2 segments on average.
SHAPES = (("GSM-7", 150, 1), ("GSM-7", 300, 2), ("GSM-7", 450, 3),
          ("UCS-2", 60, 1), ("UCS-2", 130, 2), ("UCS-2", 195, 3))  # fmt: skip
TEXTS = [(_fill(_GSM if code == "GSM-7" else _UCS, chars), parts) for code, chars, parts in SHAPES]


def write_campaign(path: Path, rows: int) -> int:
    """A CSV of `rows` distinct UK mobiles with a `text` column cycling through TEXTS; returns
    the campaign's segments."""
    segments = 0
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["to", "text"])
        n = written = 0
        while written < rows:
            n += 1
            if n % 10000 in MAGIC:
                continue
            text, parts = TEXTS[written % len(TEXTS)]
            writer.writerow([f"+4474{n:08d}", text])
            segments += parts
            written += 1
    return segments


def send_argv(url: str, campaign: Path, rate: int, journal: Path) -> list[str]:
    return [
        str(BIN), "send", str(campaign), "--provider", "twilio", "--base-url", url,
        "--from", SENDER, "--rate", str(rate), "--window", "64", "--no-progress",
        "--output", os.devnull, "--journal", str(journal),
    ]  # fmt: skip


def send(argv: list[str], timeout_s: float) -> str:
    """Run `sms-blaster send` with the Twilio credentials; its summary (stderr)."""
    done = subprocess.run(
        argv, env=TWILIO_ENV, capture_output=True, text=True, check=False, timeout=timeout_s
    )
    if done.returncode != 0:
        raise RuntimeError(f"send exited {done.returncode}: {done.stderr}")
    return done.stderr


def twilio_arrivals(sim: Simulator) -> dict[str, float]:
    arrivals = sim.stats()["arrivals"]
    assert isinstance(arrivals, dict)
    twilio: dict[str, float] = arrivals["by_api"]["twilio"]
    return twilio


def rate_twilio(ctx: Context) -> Section:
    seconds = 2.0 if ctx.quick else 5.0
    mean_segments = sum(parts for _, parts in TEXTS) / len(TEXTS)
    rows = {rate: int(rate * seconds / mean_segments) for rate in RATES}
    campaigns = {rate: ctx.folder / f"twilio-{rate}.csv" for rate in RATES}
    segments = {rate: write_campaign(campaigns[rate], rows[rate]) for rate in RATES}
    achieved: dict[int, list[float]] = {rate: [] for rate in RATES}
    peaks: dict[int, list[float]] = {rate: [] for rate in RATES}
    request_peaks: dict[int, list[float]] = {rate: [] for rate in RATES}
    pinned = ("--twilio-account-sid", ACCOUNT_SID, "--twilio-auth-token", AUTH_TOKEN)
    with simulator(*pinned) as sim:
        for _ in range(ctx.rounds):
            for rate in RATES:
                sim.reset()
                argv = send_argv(sim.url, campaigns[rate], rate, ctx.journal("twilio"))
                summary = send(argv, timeout_s=seconds * 10 + 30)
                twilio = twilio_arrivals(sim)
                if twilio["count"] != rows[rate] or twilio["segments"] != segments[rate]:
                    raise RuntimeError(
                        f"expected {rows[rate]} requests of {segments[rate]} segments, the "
                        f"simulator counted {twilio['count']} of {twilio['segments']}: "
                        f"{summary}"
                    )
                # The last send's own slots lie after its arrival: leave its segments out.
                last_parts = TEXTS[(rows[rate] - 1) % len(TEXTS)][1]
                achieved[rate].append((twilio["segments"] - last_parts) / twilio["span_s"] / rate)
                peaks[rate].append(twilio["segments_peak_1s"] / rate)
                request_peaks[rate].append(twilio["peak_1s"])
    mix = "; ".join(f"{code} of {chars} characters ({parts})" for code, chars, parts in SHAPES)
    lines = [
        "## Rate accuracy, Twilio (segments)",
        "",
        f"`sms-blaster send --provider twilio --rate R --window 64`, where R counts segments a "
        f"second (Twilio's cost is the message's segments), about {seconds:g} s per rate against "
        "the simulator in its own process (account SID and token pinned, given by "
        "`TWILIO_ACCOUNT_SID` / `TWILIO_AUTH_TOKEN`). The rows cycle through six texts (segments "
        f"in brackets; 2 a message on average; UCS-2 = Cyrillic): {mix}. Counted by the "
        "simulator's `arrivals.by_api.twilio`, each request weighed by its Body's segments: "
        "achieved = (segments - the last row's segments) / span (the last send's own slots lie "
        "after its arrival; were another row sent last, this would be at most 2 segments off, "
        "0.4 % at 100/s); peak = most segments in any sliding 1 s window, the first second "
        f"included. Every run checked: all rows arrived once, with the segments the campaign "
        f"holds. {ctx.rounds_text}.",
        "",
        "| R segments/s | rows | segments | achieved / R | peak 1 s segments / R "
        "| peak 1 s requests |",
        "|---|---|---|---|---|---|",
    ]
    checks = []
    for rate in RATES:
        lines.append(
            f"| {rate:,} | {rows[rate]:,} | {segments[rate]:,} | {median_range(achieved[rate], 3)} "
            f"| {median_range(peaks[rate], 3)} | {median_range(request_peaks[rate])} |"
        )
        got, peak = statistics.median(achieved[rate]), statistics.median(peaks[rate])
        checks += [
            Check(f"{rate:,} segments/s: achieved {got:.3f} x rate", "≥ 0.99", got >= 0.99),
            Check(
                f"{rate:,} segments/s: sliding 1 s peak {peak:.3f} x rate (worst round "
                f"{max(peaks[rate]):.3f})",
                "≤ 1.02",
                peak <= 1.02,
            ),
        ]
    last = campaigns[RATES[-1]]
    lines += [
        "",
        "Command: "
        + shown(argv, **{sim.url: "URL", str(last): "mixed.csv", argv[-1]: "fresh.journal"}),
        "",
        f"Simulator: `sms-blaster mock-provider --no-keep-messages --twilio-account-sid "
        f"{ACCOUNT_SID} --twilio-auth-token {AUTH_TOKEN}`.",
    ]
    return Section(name="rate accuracy, Twilio", lines=lines, checks=checks)
