"""The journal's reads behind `report --html`: time buckets, latency bins, outcomes, cost,
delivery and runs, aggregated in SQL from a journal written row by row here."""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from sms_blaster.errors import JournalError
from sms_blaster.html_report.figures import BIN_BASE_MS, BIN_RATIO, bin_of, percentile_of_bins
from sms_blaster.html_report.model import TOTAL, Bucket, CampaignView, CostLine, Count
from sms_blaster.journal.queries import add_ln
from sms_blaster.journal.report_data import load_views
from sms_blaster.journal.schema import connect

START_S = 1_800_000_000.0  # a multiple of every bucket width up to an hour


def _journal(tmp_path: Path, *, with_runs: bool = True) -> Path:
    """A campaign: 6 rows sent over three seconds, one failed, one skipped, one unknown, one
    pending; one run with three timeline seconds; receipts for three sent rows."""
    path = tmp_path / "c.journal"
    with contextlib.closing(connect(str(path))) as connection:
        if not with_runs:
            connection.executescript("DROP TABLE timeline; DROP TABLE runs;")
        connection.execute(
            "INSERT INTO campaigns VALUES ('spring', 'cid', 'in.csv', '', 'Shop', 'vonage-sms', "
            "'phone', '', ?)",
            (START_S,),
        )
        rows = [
            # line, state, segments, encoding, price, latency_ms, error_kind, updated_at
            (1, "sent", 1, "gsm7", "0.03", 10.0, None, START_S + 0.1),
            (2, "sent", 1, "gsm7", "0.03", 10.0, None, START_S + 0.5),
            (3, "sent", 2, "ucs2", "0.06", 100.0, None, START_S + 1.2),
            (4, "sent", 1, "gsm7", "0.03", 10.0, None, START_S + 2.3),
            (5, "sent", 1, "gsm7", "0.03", 10.0, None, START_S + 2.4),
            (6, "sent", 1, "gsm7", "0.03", None, None, START_S + 2.5),
            (7, "failed", 1, "gsm7", None, None, "rejected", START_S + 1.5),
            (8, "skipped", 1, "gsm7", None, None, "duplicate", START_S + 0.2),
            (9, "unknown", 1, "gsm7", None, None, "ambiguous", START_S + 2.0),
            (10, "pending", 1, "gsm7", None, None, "stopped", START_S + 2.0),
        ]
        connection.executemany(
            "INSERT INTO rows (campaign, line, state, fingerprint, to_number, client_ref, "
            "segments, encoding, attempts, message_ids, price, latency_ms, error_kind, "
            "updated_at) VALUES ('spring', ?, ?, 0, '447700900000', 'ref', ?, ?, 1, 'm', ?, ?, "
            "?, ?)",
            rows,
        )
        if with_runs:
            settings = json.dumps({"rate_per_s": 50.0, "sender": "Shop", "dry_run": False})
            connection.execute(
                "INSERT INTO runs VALUES (1, 'spring', ?, ?, 1, ?)",
                (START_S, START_S + 3.0, settings),
            )
            connection.executemany(
                "INSERT INTO timeline VALUES (1, ?, ?, ?, ?, 0, 2, 8, 50.0, ?, ?)",
                [
                    (START_S + 1.0, 3, 0, 3, 40.0, None),
                    (START_S + 2.0, 4, 2, 1, 30.0, 35.0),
                    (START_S + 3.0, 3, 0, 3, 32.0, 35.0),
                ],
            )
        connection.executemany(
            "INSERT INTO deliveries VALUES (?, 'cid', ?, 'vonage-sms', ?, 1, '0', '', NULL, ?)",
            [
                ("m1", 1, "delivered", START_S + 1.1),
                ("m2", 2, "delivered", START_S + 2.6),
                ("m4", 4, "failed", START_S + 2.9),
            ],
        )
    return path


def _view(path: Path) -> CampaignView:
    (view,) = load_views(str(path))
    return view


def _buckets(view: CampaignView) -> tuple[Bucket, ...]:
    total = view.total
    assert total is not None
    return total.buckets


def test_rows_are_counted_in_the_second_they_settled(tmp_path: Path) -> None:
    """Sent and failed rows land in the bucket of their updated_at."""
    buckets = _buckets(_view(_journal(tmp_path)))
    assert [(bucket.sent, bucket.failed) for bucket in buckets] == [(2, 0), (1, 1), (3, 0), (0, 0)]


def test_the_axis_covers_the_runs_and_the_receipts(tmp_path: Path) -> None:
    """The run ends at +3 s: the axis has a fourth second, with nothing sent in it."""
    view = _view(_journal(tmp_path))
    assert view.axis is not None
    assert (view.axis.start_s, view.axis.bucket_s, view.axis.buckets) == (START_S, 1, 4)


def test_a_timeline_second_counts_in_the_bucket_of_its_middle(tmp_path: Path) -> None:
    """The second written at +2.0 covers +1..+2: its requests and throttles are in bucket 1."""
    buckets = _buckets(_view(_journal(tmp_path)))
    assert [bucket.requests for bucket in buckets] == [3, 4, 3, None]
    assert [bucket.throttled for bucket in buckets] == [0, 2, 0, None]
    assert [bucket.limit_per_s for bucket in buckets] == [None, 35.0, 35.0, None]
    assert buckets[1].rate_ceiling_per_s == 50.0


def test_a_buckets_latency_percentiles_come_from_its_bins(tmp_path: Path) -> None:
    """Bucket 0 has two 10 ms sends: its p50 and p99 are within a bin of 10 ms."""
    buckets = _buckets(_view(_journal(tmp_path)))
    assert buckets[0].latency_p50_ms == pytest.approx(10.0, rel=BIN_RATIO - 1)
    assert buckets[1].latency_p99_ms == pytest.approx(100.0, rel=BIN_RATIO - 1)
    assert buckets[3].latency_p50_ms is None


def test_receipts_count_by_when_the_rows_last_final_receipt_came(tmp_path: Path) -> None:
    """A delivered row in bucket 1 and 2, a failed one in bucket 2."""
    buckets = _buckets(_view(_journal(tmp_path)))
    assert [(bucket.delivered, bucket.delivery_failed) for bucket in buckets] == [
        (0, 0), (1, 0), (1, 1), (0, 0),
    ]  # fmt: skip


def test_outcomes_give_failures_by_kind_and_skips_by_reason(tmp_path: Path) -> None:
    """Each final state, and the rows not final yet."""
    outcomes = _view(_journal(tmp_path)).outcomes
    assert outcomes.sent == 6
    assert outcomes.failed_by_kind == (Count("rejected", 1),)
    assert outcomes.skipped_by_reason == (Count("duplicate", 1),)
    assert (outcomes.unknown, outcomes.not_final, outcomes.total) == (1, 1, 10)


def test_cost_is_summed_by_segment_count_and_encoding(tmp_path: Path) -> None:
    """Prices are summed as decimals, a line per segment count and encoding."""
    view = _view(_journal(tmp_path))
    assert view.costs == (
        CostLine(1, "gsm7", 5, Decimal("0.15")),
        CostLine(2, "ucs2", 1, Decimal("0.06")),
    )


def test_the_latency_histogram_holds_every_sent_row_with_a_latency(tmp_path: Path) -> None:
    """Five sent rows have a latency; the percentiles are the exact ones `report` gives."""
    latency = _view(_journal(tmp_path)).latency
    assert latency is not None
    assert sum(item.count for item in latency.bins_ms) == 5
    assert (latency.p50_ms, latency.p99_ms) == (10.0, 100.0)


def test_time_to_delivery_counts_each_delivered_row(tmp_path: Path) -> None:
    """Two rows delivered (1.0 s and 2.1 s after their send); the failed one is not counted."""
    delivery = _view(_journal(tmp_path)).delivery
    assert delivery is not None
    assert (delivery.sent, delivery.delivered, delivery.failed) == (6, 2, 1)
    assert sum(item.count for item in delivery.time_to_delivery_s) == 2


def test_runs_carry_their_settings(tmp_path: Path) -> None:
    """The run's settings as a flag would give them."""
    (run,) = _view(_journal(tmp_path)).runs
    assert (run.exit_code, run.ended_at_s) == (1, START_S + 3.0)
    assert dict(run.settings) == {"rate_per_s": "50.0", "sender": "Shop", "dry_run": "false"}


def test_an_older_journal_says_what_it_did_not_record(tmp_path: Path) -> None:
    """Without runs and timeline the rows still fill the buckets, and a note says why the rest
    is missing."""
    view = _view(_journal(tmp_path, with_runs=False))
    assert view.not_recorded
    assert view.runs == ()
    assert [bucket.requests for bucket in _buckets(view)] == [None, None, None]
    assert [bucket.sent for bucket in _buckets(view)] == [2, 1, 3]


def test_a_journal_has_one_series_the_total(tmp_path: Path) -> None:
    """A journal's campaign is sent by one worker: its series is the total."""
    view = _view(_journal(tmp_path))
    assert [series.worker for series in view.series] == [TOTAL]


def test_a_campaign_with_nothing_settled_has_no_axis(tmp_path: Path) -> None:
    """No row settled, no run, no receipt: nothing to draw over time."""
    path = tmp_path / "empty.journal"
    with contextlib.closing(connect(str(path))) as connection:
        connection.execute(
            "INSERT INTO campaigns VALUES ('x', 'cid', 'in.csv', '', 'Shop', 'vonage-sms', "
            "'phone', '', 0)"
        )
    view = _view(path)
    assert (view.axis, view.series, view.latency, view.delivery) == (None, (), None, None)


def test_the_sql_bins_are_the_bins_python_computes() -> None:
    """SQLite's ln() and Python's log() put latencies in the same bins."""
    samples = [0.01, 0.1, 0.5, 1.0, 9.99, 10.0, 250.0, 12345.6]
    with contextlib.closing(sqlite3.connect(":memory:")) as connection:
        add_ln(connection)
        for sample in samples:
            (sql_bin,) = connection.execute(
                "SELECT CAST(ln(MAX(?, ?) / ?) / ? AS INTEGER)",
                (sample, BIN_BASE_MS, BIN_BASE_MS, math.log(BIN_RATIO)),
            ).fetchone()
            assert sql_bin == bin_of(sample, BIN_BASE_MS)


def test_a_percentile_of_bins_is_the_middle_of_its_bin() -> None:
    """99 samples in bin 10 and one in bin 40: p50 in bin 10, p99 too, the max's bin beyond."""
    bins = {10: 99, 40: 1}
    p50 = percentile_of_bins(bins, 0.5, 1.0)
    assert p50 is not None
    assert BIN_RATIO**10 < p50 < BIN_RATIO**11
    assert percentile_of_bins({}, 0.5, 1.0) is None


def test_a_price_that_is_not_a_number_is_refused_as_the_text_report_refuses_it(
    tmp_path: Path,
) -> None:
    """The page's cost comes from its pass over the rows: a bad price is the same JournalError."""
    path = _journal(tmp_path)
    with contextlib.closing(connect(str(path))) as connection:
        connection.execute("UPDATE rows SET price = 'free' WHERE line = 1")
    with pytest.raises(JournalError, match=r"has a price that is not a number \('free'\)"):
        _view(path)
