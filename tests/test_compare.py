"""The report of `python -m benchmarks.compare`, built from figures (no revisions are run)."""

from benchmarks.compare import NGINX_ON, Figures, table


def test_b_over_a_is_the_median_of_the_per_round_ratios_with_their_range() -> None:
    """B/A pairs each round's B with the same round's A rather than dividing the medians."""
    figures = Figures({NGINX_ON: [100.0, 200.0, 400.0]}, {NGINX_ON: [110.0, 180.0, 400.0]})
    text = table(figures, ("39eae99", "39eae99"), ("main", "094fe7a"), rounds=3)
    row = next(line for line in text.splitlines() if line.startswith(f"| {NGINX_ON.name} |"))
    assert row.endswith("| 1.000 (0.900-1.100) |")
