"""The text report's exact latency percentiles, picked from the latency bins, against the sort of
every sent row's latency they replaced."""

from __future__ import annotations

import contextlib
import math
import sqlite3
from collections.abc import Iterator

from hypothesis import given
from hypothesis import strategies as st

from sms_blaster.journal.queries import (
    LatencyBin,
    LatencyPercentiles,
    latency_bins,
    latency_percentiles,
)
from sms_blaster.journal.schema import SCHEMA

# Latencies as a run records them (a few equal ones for ties, sub-millisecond to minutes), with
# some rows that have none, or are not sent.
LATENCIES = st.one_of(
    st.floats(min_value=0.0, max_value=120_000.0, allow_nan=False),
    st.sampled_from([0.0, 0.05, 0.1, 1.0, 12.5, 12.5, 100.0]),
)
ROWS = st.lists(
    st.tuples(st.sampled_from(["sent", "sent", "sent", "failed"]), st.none() | LATENCIES),
    max_size=300,
)


@contextlib.contextmanager
def _journal(rows: list[tuple[str, float | None]]) -> Iterator[sqlite3.Connection]:
    with contextlib.closing(sqlite3.connect(":memory:", isolation_level=None)) as connection:
        connection.executescript(SCHEMA)
        connection.executemany(
            "INSERT INTO rows (campaign, line, state, fingerprint, to_number, client_ref, "
            "attempts, message_ids, latency_ms, updated_at) "
            "VALUES ('c', ?, ?, 0, '447700900000', 'ref', 1, '', ?, 0)",
            [(line, state, latency_ms) for line, (state, latency_ms) in enumerate(rows)],
        )
        yield connection


def _sorted_every_row(connection: sqlite3.Connection) -> LatencyPercentiles | None:
    """The percentiles as `report` read them before: nearest rank over a sort of every sent
    row's latency."""
    count, max_ms = connection.execute(
        "SELECT COUNT(latency_ms), MAX(latency_ms) FROM rows WHERE campaign = 'c' "
        "AND state = 'sent'"
    ).fetchone()
    if not count:
        return None
    ranks = [max(1, math.ceil(fraction * count)) for fraction in (0.5, 0.9, 0.99)]
    by_rank = dict(
        connection.execute(
            "SELECT rank, latency_ms FROM ("
            "  SELECT latency_ms, ROW_NUMBER() OVER (ORDER BY latency_ms) AS rank FROM rows"
            "  WHERE campaign = 'c' AND state = 'sent' AND latency_ms IS NOT NULL"
            ") WHERE rank IN (?, ?, ?)",
            ranks,
        )
    )
    p50, p90, p99 = (float(by_rank[rank]) for rank in ranks)
    return LatencyPercentiles(p50, p90, p99, float(max_ms))


@given(ROWS)
def test_percentiles_from_the_bins_equal_those_of_a_sort_of_every_row(
    rows: list[tuple[str, float | None]],
) -> None:
    """Any latencies, ties and tiny campaigns included: the same nearest-rank values."""
    with _journal(rows) as connection:
        assert latency_percentiles(connection, "c") == _sorted_every_row(connection)


@given(ROWS)
def test_bins_whose_ranges_overlap_still_give_the_exact_percentiles(
    rows: list[tuple[str, float | None]],
) -> None:
    """Bins out of order (a libm rounding the other way) fall back to sorting every row."""
    with _journal(rows) as connection:
        bins = latency_bins(connection, "c")
        if len(bins) > 1:  # make the lowest bin reach past the next one's least latency
            low, high = sorted(bins)[:2]
            bins[low] = LatencyBin(bins[low].count, bins[low].min_ms, bins[high].min_ms)
        assert latency_percentiles(connection, "c", bins) == _sorted_every_row(connection)


def test_a_campaign_with_no_latency_has_no_percentiles() -> None:
    """Sent rows without a latency (proved sent by a receipt) give none."""
    with _journal([("sent", None), ("failed", 3.0)]) as connection:
        assert latency_percentiles(connection, "c") is None
