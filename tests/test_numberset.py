"""The compact set of numbers behind duplicate detection."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sms_blaster.numberset import NumberSet

numbers = st.integers(min_value=1_000_000, max_value=999_999_999_999_999)


@given(st.lists(numbers, max_size=300))
def test_it_behaves_like_a_set(values: list[int]) -> None:
    """add() is True exactly for a first occurrence; membership and size match a set."""
    compact, reference = NumberSet(), set[int]()
    for value in values:
        assert compact.add(value) is (value not in reference)
        reference.add(value)
    assert len(compact) == len(reference)
    assert all(value in compact for value in reference)


def test_numbers_take_about_nine_bytes_each() -> None:
    """Far below a set's ~70 bytes a number: 400,000 more numbers grow it by under 4 MB."""
    compact = NumberSet()
    for n in range(200_000):
        compact.add(447400000000 + n * 7)
    before = compact.footprint_bytes()
    for n in range(200_000, 600_000):
        compact.add(447400000000 + n * 7)
    assert len(compact) == 600_000
    assert compact.footprint_bytes() - before < 4 * 1024 * 1024
