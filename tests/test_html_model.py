"""The HTML report's model: its time axis and its histograms."""

from __future__ import annotations

from sms_blaster.html_report.figures import BIN_BASE_MS, bin_bounds, histogram
from sms_blaster.html_report.model import MAX_POINTS, TimeAxis, choose_axis


def test_a_short_run_gets_one_second_buckets() -> None:
    """A run of two minutes is drawn a second a point."""
    assert choose_axis(1000.4, 1120.9) == TimeAxis(1000.0, 1, 121)


def test_a_long_run_gets_the_narrowest_width_under_the_point_limit() -> None:
    """A day of sending is drawn in five-minute buckets, at most MAX_POINTS of them."""
    axis = choose_axis(0.0, 86399.0)
    assert axis.bucket_s == 300
    assert axis.buckets <= MAX_POINTS
    assert axis.end_s > 86399.0


def test_buckets_start_at_a_multiple_of_their_width() -> None:
    """A bucket's start is a round time, whatever the first event's."""
    axis = choose_axis(1037.0, 2500.0)
    assert axis.start_s % axis.bucket_s == 0
    assert axis.start_s <= 1037.0


def test_months_of_sending_stay_under_the_point_limit() -> None:
    """A span longer than the nicest width allows is drawn in whole days."""
    axis = choose_axis(0.0, 400 * 86400.0)
    assert axis.bucket_s % 86400 == 0
    assert axis.buckets <= MAX_POINTS


def test_a_histogram_draws_its_empty_bins_between_filled_ones() -> None:
    """Bins 2 and 5 hold samples: bins 3 and 4 are drawn too, at zero, keeping the bars apart."""
    bars = histogram([(2, 7), (5, 1)], BIN_BASE_MS)
    assert [bar.count for bar in bars] == [7, 0, 0, 1]
    assert bars[0].low == bin_bounds(2, BIN_BASE_MS)[0]
    assert bars[-1].high == bin_bounds(5, BIN_BASE_MS)[1]
