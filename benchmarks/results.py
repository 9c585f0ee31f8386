"""Sections of RESULTS.md: kept in results.json so `--only NAME` replaces one and keeps the rest."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).parent
STORE = HERE / "results.json"
RESULTS = HERE / "RESULTS.md"
NOTES = HERE / "notes.md"


@dataclass(frozen=True, slots=True)
class Check:
    """One row of the summary table; `met` is None where the issue sets no target."""

    measured: str
    target: str
    met: bool | None


@dataclass(slots=True)
class Section:
    name: str
    lines: list[str]
    checks: list[Check] = field(default_factory=list)
    command: str = ""
    written: str = ""
    duration_s: float = 0.0


def median_range(values: list[float], digits: int = 0) -> str:
    """'median (min-max)', with thousands separators."""
    form = f",.{digits}f"
    low, high = min(values), max(values)
    if len(values) == 1:
        return format(values[0], form)
    return f"{statistics.median(values):{form}} ({low:{form}}-{high:{form}})"


def ratio(values: list[float]) -> str:
    return median_range(values, 2)


def load() -> dict[str, Section]:
    if not STORE.exists():
        return {}
    sections = {}
    for key, data in json.loads(STORE.read_text()).items():
        checks = [Check(**check) for check in data.pop("checks")]
        sections[key] = Section(**data, checks=checks)
    return sections


def save(sections: dict[str, Section], order: list[str]) -> str:
    """Store the sections (by scenario key) and render RESULTS.md in `order`; return its text."""
    keys = [key for key in order if key in sections]
    STORE.write_text(json.dumps({key: asdict(sections[key]) for key in keys}, indent=1) + "\n")
    text = render([sections[key] for key in keys])
    RESULTS.write_text(text)
    return text


def render(sections: list[Section]) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        "# Benchmark results",
        "",
        f"Rendered {stamp} on {os.cpu_count()} cores, Python {sys.version.split()[0]}. "
        "Each section names the command that measured it and when; `make bench` runs them all "
        "(`python -m benchmarks.run`), `python -m benchmarks.run --only NAME` one. Servers and "
        "clients are separate processes on loopback; the machine is shared and noisy, so compare "
        "ratios taken within one section, not absolute figures across sections. Median (range) "
        "over the rounds; a target is judged on the median.",
        "",
        "## Summary",
        "",
        "| scenario | measured | target | met |",
        "|---|---|---|---|",
    ]
    for section in sections:
        for check in section.checks:
            met = "n/a" if check.met is None else ("yes" if check.met else "**no**")
            lines.append(f"| {section.name} | {check.measured} | {check.target} | {met} |")
    lines.append("")
    for section in sections:
        lines += [
            *section.lines,
            "",
            f"_Measured by `{section.command}` on {section.written} "
            f"in {section.duration_s:.0f} s._",
            "",
        ]
    if NOTES.exists():  # hand-written analysis, kept below the figures
        lines += [NOTES.read_text()]
    return "\n".join(lines)
