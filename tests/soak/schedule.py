"""A schedule, drawn from one seed: a campaign, a provider API, faults, and the runs that send it.

Pure: the same seed gives the same schedule, so a failing one replays from its seed alone.
"""

from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import dataclass
from typing import Final

PROVIDERS: Final = ("vonage", "vonage-messages", "twilio")
# How a faulted run is stopped (triggered at a point of progress, or set as an option).
STOPS: Final = (
    "none",
    "sigkill",
    "sigterm",
    "sigint2",
    "sighup",
    "not_after",
    "error_rate",
    "output_full",
)
# A stop drawn apart from the others (`_journal_full`), so that the seeds of earlier schedules
# replay as they were: the run's files may not grow past a size, as on a full disk.
JOURNAL_FULL: Final = "journal_full"
# Faults for the whole of every faulted run: simulator settings.
STATIC_FAULTS: Final = ("throttle", "5xx", "reset_after", "reset_before", "timeout")
# Faults that start at a point of progress in one run.
EVENTS: Final = ("latency_spike", "revoke", "unreachable")

# Magic recipients of the simulator (last four digits) that a row may end in: rejected for the
# row itself, transient once, accepted then never answered, accepted then reset, failed receipt.
MAGIC_SUFFIXES: Final = (9990, 9991, 9994, 9995, 9998, 9989, 9996, 9997)
TEXTS: Final = {
    "gsm7": "Hi {name}, your code is {code}.",
    "ucs2": "Привет {name} 🎉 код {code}",
    "multipart_gsm7": "Dear {name}, " + "this is a long reminder about your order. " * 5 + "{code}",
    "multipart_ucs2": "Здравствуйте {name}! " + "Ваш заказ готов к выдаче. " * 4 + "{code}",
    # Two UCS-2 parts as written, one GSM-7 part once smart encoding replaces the look-alikes.
    "lookalikes": "Hi {name}, it\u2019s \u201cyour\u201d code \u2013 {code}\u2026 "
    + "see you soon \u2014 thanks! " * 3,
}
NAMES: Final = ("Ann", "Bob", 'O"Neil, Jr.', "Zoë", "Łucja", "李", "José", "Ada Lovelace", "")
INVALID_NUMBERS: Final = ("bad", "12345", "+44 12", "not-a-number", "+999999")


@dataclass(frozen=True, slots=True)
class Trigger:
    """An action taken once this run's progress (accepted messages or records) reaches `at`."""

    kind: str
    at: int
    value: float = 0.0  # the latency of a spike (ms), the --max-error-rate, the --not-after delay
    lasts: int = 0  # progress until an event is undone (0: until the run ends)


@dataclass(frozen=True, slots=True)
class FaultedRun:
    stop: Trigger
    events: tuple[Trigger, ...]


@dataclass(frozen=True, slots=True)
class Schedule:
    seed: int
    provider: str
    input_format: str  # csv | jsonl
    input_text: str
    rows: int
    template: str | None  # --text, or None for a text column
    text_kind: str
    sender_rate_per_s: float
    timeout_s: float
    retry_unknown: bool
    static_faults: dict[str, float]  # simulator settings for the faulted runs
    static_kinds: tuple[str, ...]  # the kinds of static_faults
    event_kinds: tuple[str, ...]  # the events some faulted run may start
    faulted_runs: tuple[FaultedRun, ...]  # then one resume without faults
    smart_encoding: str = "auto"  # --smart-encoding of every run

    @property
    def input_name(self) -> str:
        return "campaign." + self.input_format


def make_schedule(seed: int, max_rows: int = 400) -> Schedule:
    """The schedule of `seed`: at most `max_rows` rows (at least 1)."""
    rng = random.Random(seed)
    rows = _size(rng, max_rows)
    text_kind = rng.choice([*TEXTS, "column"])
    template = None if text_kind == "column" else TEXTS[text_kind]
    input_format = rng.choice(("csv", "jsonl"))
    table = _rows(rng, rows, text_kind)
    sendable = sum(1 for row in table if row["kind"] == "send")
    static_faults, fault_kinds = _static_faults(rng)
    events = [kind for kind in EVENTS if rng.random() < 0.25]
    runs: list[FaultedRun] = []
    for _ in range(rng.randint(1, 3)):
        stop = _stop(rng, sendable)
        run_events = tuple(
            Trigger(kind, rng.randint(0, max(sendable, 1)), *_event_value(rng, kind))
            for kind in events
            if rng.random() < 0.7
        )
        full = _journal_full(seed, len(runs), rows)
        runs.append(FaultedRun(stop if full is None else full, run_events))
    return Schedule(
        seed=seed,
        provider=rng.choice(PROVIDERS),
        input_format=input_format,
        input_text=_render(input_format, table),
        rows=rows,
        template=template,
        text_kind=text_kind,
        sender_rate_per_s=rng.choice((100.0, 200.0, 400.0)),
        timeout_s=rng.choice((0.5, 1.0, 2.0)),
        retry_unknown=rng.random() < 0.15,
        static_faults=static_faults,
        static_kinds=tuple(fault_kinds),
        event_kinds=tuple(events),
        faulted_runs=tuple(runs),
        smart_encoding=rng.choice(("auto", "always", "never")),
    )


def _size(rng: random.Random, max_rows: int) -> int:
    # Mostly small campaigns, so that many schedules fit in a soak; one in eight is large.
    draw = rng.random()
    if draw < 0.55:
        size = rng.randint(1, 30)
    elif draw < 0.88:
        size = rng.randint(31, 120)
    else:
        size = rng.randint(121, 400)
    return max(1, min(size, max_rows))


def _number(rng: random.Random, suffix: int) -> str:
    """A valid UK mobile ending in the four digits `suffix`, written in one of the usual ways."""
    digits = f"44791{rng.randint(0, 999):03d}{suffix:04d}"
    shape = rng.random()
    if shape < 0.6:
        return "+" + digits
    if shape < 0.8:
        return f"+44 {digits[2:6]} {digits[6:]}"
    return "0" + digits[2:]  # national, read with --default-region GB


def _rows(rng: random.Random, count: int, text_kind: str) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    valid: list[str] = []
    for _ in range(count):
        draw = rng.random()
        kind = "send"
        if draw < 0.05:
            to, kind = rng.choice(INVALID_NUMBERS), "invalid"
        elif draw < 0.12 and valid:
            to, kind = rng.choice(valid), "duplicate"
        else:
            suffix = rng.choice(MAGIC_SUFFIXES) if draw < 0.17 else rng.randint(0, 8999)
            to = _number(rng, suffix)
            digits = "".join(ch for ch in to if ch.isdigit())
            digits = "44" + digits[1:] if digits.startswith("0") else digits
            if digits in seen:
                kind = "duplicate"
            seen.add(digits)
            valid.append(to)
        row = {
            "to": to,
            "name": rng.choice(NAMES),
            "code": str(rng.randint(0, 999999)),
            "kind": kind,
        }
        if text_kind == "column":
            row["text"] = rng.choice(list(TEXTS.values())).format(
                name=row["name"], code=row["code"]
            )
        rows.append(row)
    return rows


def _render(input_format: str, table: list[dict[str, str]]) -> str:
    columns = [name for name in table[0] if name != "kind"]
    if input_format == "jsonl":
        return "".join(json.dumps({k: row[k] for k in columns}) + "\n" for row in table)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([row[k] for k in columns] for row in table)
    return out.getvalue()


def _static_faults(rng: random.Random) -> tuple[dict[str, float], list[str]]:
    faults: dict[str, float] = {}
    kinds = []
    if rng.random() < 0.35:
        kinds.append("throttle")
        faults["rate_per_s"] = rng.choice((40.0, 80.0, 150.0))
        faults["burst"] = rng.choice((1.0, 5.0, 20.0))
    if rng.random() < 0.3:
        kinds.append("5xx")
        faults["error_5xx_rate"] = rng.choice((0.05, 0.15, 0.3))
    after = before = 0.0
    if rng.random() < 0.25:
        kinds.append("reset_after")
        after = rng.choice((0.02, 0.05, 0.1))
    if rng.random() < 0.25:
        kinds.append("reset_before")
        before = rng.choice((0.02, 0.05, 0.1))
    if rng.random() < 0.25:
        kinds.append("timeout")
        faults["timeout_rate"] = rng.choice((0.02, 0.05, 0.1))
    if after:
        faults["reset_rate"] = after
    if before:
        faults["reset_before_rate"] = before
    return faults, kinds


def _stop(rng: random.Random, sendable: int) -> Trigger:
    kind = rng.choice(STOPS)
    at = rng.randint(0, max(sendable, 1))
    if kind == "not_after":
        # Seconds after the run starts: start-up alone takes 0.5-2 s on a loaded machine.
        return Trigger(kind, 0, value=rng.uniform(2.5, 6.0))
    if kind == "error_rate":
        return Trigger(kind, 0, value=rng.choice((0.02, 0.05, 0.1)))
    if kind == "sigint2":
        return Trigger(kind, at, lasts=rng.randint(0, 5))  # progress between the two SIGINTs
    return Trigger(kind, at)


def _journal_full(seed: int, index: int, rows: int) -> Trigger | None:
    """One faulted run in nine: its files may not grow past a size (the journal's disk fills
    mid-run; the records, on stdout, stay below it), from a stream of its own."""
    rng = random.Random(f"fsize:{seed}:{index}")
    if rng.random() >= 1 / 9:
        return None
    return Trigger(JOURNAL_FULL, 0, value=max(rng.randint(64, 384), rows) * 1024)


def _event_value(rng: random.Random, kind: str) -> tuple[float, int]:
    if kind == "latency_spike":
        return rng.choice((200.0, 700.0, 2500.0)), rng.randint(1, 30)
    if kind == "unreachable":
        return 0.0, rng.randint(1, 10)  # records written while the provider is down
    return 0.0, 0  # revoked until the run ends
