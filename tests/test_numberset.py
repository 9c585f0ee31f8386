"""The compact set of numbers behind duplicate detection."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sms_blaster import numberset
from sms_blaster.numberset import NumberSet

numbers = st.integers(min_value=1_000_000, max_value=999_999_999_999_999)
any_ints = st.integers(min_value=-(2**70), max_value=2**70)


@given(st.lists(numbers | any_ints, max_size=300))
def test_it_behaves_like_a_set(values: list[int]) -> None:
    """add() is True exactly for a first occurrence; membership and size match a set."""
    compact, reference = NumberSet(), set[int]()
    for value in values:
        assert compact.add(value) is (value not in reference)
        reference.add(value)
    assert len(compact) == len(reference)
    assert all(value in compact for value in reference)


def _number_for(bucket: int, entry: int) -> int:
    """The number that lands in `bucket` and is kept there as `entry`."""
    key = bucket << numberset._ENTRY_BITS | entry
    return (
        key * pow(numberset._MULTIPLIER, -1, 1 << numberset._KEY_BITS) % (1 << numberset._KEY_BITS)
    )


def test_bytes_across_two_entries_are_not_a_member() -> None:
    """A number whose 5 bytes appear straddling two kept entries is not taken for a duplicate."""
    first = bytes([0x11, 0x22, 0x33, 0x44, 0x05])
    second = bytes([0x06, 0x77, 0x00, 0x00, 0x00])
    straddling = (first + second)[1:6]  # 22 33 44 05 06: its top byte fits in 35 bits
    compact = NumberSet()
    for entry in (first, second):
        assert compact.add(_number_for(7, int.from_bytes(entry, "little")))
    ghost = _number_for(7, int.from_bytes(straddling, "little"))
    assert ghost not in compact
    assert compact.add(ghost)
    assert not compact.add(ghost)


def test_numbers_take_about_six_bytes_each() -> None:
    """Far below a set's ~70 bytes a number: 400,000 more numbers grow it by under 2.5 MB."""
    compact = NumberSet()
    for n in range(200_000):
        compact.add(447400000000 + n * 7)
    before = compact.footprint_bytes()
    for n in range(200_000, 600_000):
        compact.add(447400000000 + n * 7)
    assert len(compact) == 600_000
    assert compact.footprint_bytes() - before < 2.5 * 1024 * 1024
