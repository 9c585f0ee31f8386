"""The pure arithmetic both backends (a journal, Redis) use to fill the page's model: latency
bins, histograms and percentiles read from them, and a run's settings as text.

Both must count the same way, so the page of a journal and of a distributed campaign draw the
same bins: this module is the one place the bins are defined.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Protocol

from sms_blaster.html_report.model import HistogramBin, SenderSent, SmartEncoding

# Latency bins: each BIN_RATIO times as wide as the one before, from BIN_BASE_MS (a p99 read
# from them is within 10 %, 150 bins from 0.1 ms to 200 s).
BIN_BASE_MS = 0.1
BIN_RATIO = 1.1
# Time to delivery: the same bins, in seconds from 0.01 s.
DELIVERY_BASE_S = 0.01


def bin_of(value: float, base: float) -> int:
    """The bin a value falls in (as the journal's SQL counts it): 0 below `base`, then
    log-spaced."""
    return max(0, int(math.log(max(value, base) / base) / math.log(BIN_RATIO)))


def bin_bounds(index: int, base: float) -> tuple[float, float]:
    """Where bin `index` starts and ends."""
    return base * BIN_RATIO**index, base * BIN_RATIO ** (index + 1)


def percentile_of_bins(bins: Mapping[int, int], fraction: float, base: float) -> float | None:
    """The nearest-rank percentile, as the geometric middle of the bin it falls in."""
    total = sum(bins.values())
    if not total:
        return None
    rank = max(1, math.ceil(fraction * total))
    seen = 0
    for index in sorted(bins):
        seen += bins[index]
        if seen >= rank:
            low, high = bin_bounds(index, base)
            return math.sqrt(low * high)
    raise AssertionError("unreachable: rank is at most the total")


def histogram(bins: Iterable[tuple[int, int]], base: float) -> tuple[HistogramBin, ...]:
    """(bin, count) pairs as the page's histogram: every bin from the lowest to the highest
    with samples, an empty one at zero (dropping it would draw bins far apart side by side)."""
    counts = dict(bins)
    if not counts:
        return ()
    return tuple(
        HistogramBin(*bin_bounds(index, base), counts.get(index, 0))
        for index in range(min(counts), max(counts) + 1)
    )


def setting_pairs(settings_json: str) -> tuple[tuple[str, str], ...]:
    """A run's settings (a JSON object) as (option, value as a flag gives it: `true`, `30.0`,
    "" for none), by option; none for text that is no JSON object."""
    try:
        settings = json.loads(settings_json)
    except ValueError:
        return ()
    if not isinstance(settings, dict):
        return ()
    return tuple((option, _setting_text(value)) for option, value in sorted(settings.items()))


def _setting_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class SmartTotals(Protocol):
    """Smart encoding's totals as a backend counted them (a journal's, a campaign summary)."""

    @property
    def texts_changed(self) -> int: ...
    @property
    def segments_saved(self) -> int: ...
    @property
    def cost_saved(self) -> Decimal: ...
    @property
    def segments_added(self) -> int: ...
    @property
    def cost_added(self) -> Decimal: ...


class SenderTotals(Protocol):
    @property
    def sender(self) -> str: ...
    @property
    def sent(self) -> int: ...
    @property
    def segments(self) -> int: ...


def smart_encoding(totals: SmartTotals) -> SmartEncoding:
    return SmartEncoding(
        totals.texts_changed,
        totals.segments_saved,
        totals.cost_saved,
        totals.segments_added,
        totals.cost_added,
    )


def senders(counts: Iterable[SenderTotals]) -> tuple[SenderSent, ...]:
    return tuple(SenderSent(count.sender, count.sent, count.segments) for count in counts)
