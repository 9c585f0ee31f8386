"""A set of phone numbers in about 6 bytes each, for finding duplicates in constant-ish memory.

A Python `set` of ints costs about 70 bytes a number: 70 MB for a million-row campaign. E.164
numbers have at most 15 digits, so they are below 2**50. A multiplication by an odd constant
modulo 2**50 maps them one to one onto 50-bit keys whose top 12 bits choose one of 4,096 buckets;
the other 38 bits are kept in that bucket, 5 bytes each, in one `bytearray`. The bucket and those
38 bits give back the number, so the set is exact. A lookup is a `find` in one bucket, done in C
(about 1.2 kB at a million numbers, under a microsecond). Numbers outside that range (none that
prepare makes) go to an ordinary set.

Few, large buckets on purpose: the resident memory is what counts, not the bytes in use. 32,768
small buckets, each moved to a larger block every few additions among the run's short-lived
objects, left the allocator's pools fragmented: 29 MB resident for 7.7 MB of buckets after a
million numbers, against 9 MB for 5.7 MB with 4,096 buckets (benchmarks/notes.md).
"""

from __future__ import annotations

import sys

_KEY_BITS = 50  # 10**15 < 2**50: every E.164 number
_BUCKET_BITS = 12
_ENTRY_BITS = _KEY_BITS - _BUCKET_BITS  # 38 bits, kept in 5 bytes
_ENTRY_BYTES = 5
_KEY_MASK = (1 << _KEY_BITS) - 1
_ENTRY_MASK = (1 << _ENTRY_BITS) - 1
# Odd, so multiplying by it modulo 2**50 is one to one; Fibonacci hashing's constant, so numbers
# that differ in any digit spread over the buckets (which the top bits choose).
_MULTIPLIER = 0x9E3779B97F4A7C15 & _KEY_MASK | 1


class NumberSet:
    __slots__ = ("_buckets", "_others", "count")

    def __init__(self) -> None:
        self._buckets: list[bytearray | None] = [None] * (1 << _BUCKET_BITS)
        self._others: set[int] = set()  # numbers of more than 50 bits, or negative
        self.count = 0

    def add(self, number: int) -> bool:
        """Add `number`; False when it was already there."""
        if not 0 <= number <= _KEY_MASK:
            if number in self._others:
                return False
            self._others.add(number)
            self.count += 1
            return True
        key = (number * _MULTIPLIER) & _KEY_MASK
        entry = (key & _ENTRY_MASK).to_bytes(_ENTRY_BYTES, "little")
        index = key >> _ENTRY_BITS
        bucket = self._buckets[index]
        if bucket is None:
            self._buckets[index] = bytearray(entry)
        elif _find(bucket, entry) >= 0:
            return False
        else:
            bucket += entry
        self.count += 1
        return True

    def __contains__(self, number: object) -> bool:
        if not isinstance(number, int):
            return False
        if not 0 <= number <= _KEY_MASK:
            return number in self._others
        key = (number * _MULTIPLIER) & _KEY_MASK
        bucket = self._buckets[key >> _ENTRY_BITS]
        entry = (key & _ENTRY_MASK).to_bytes(_ENTRY_BYTES, "little")
        return bucket is not None and _find(bucket, entry) >= 0

    def __len__(self) -> int:
        return self.count

    def footprint_bytes(self) -> int:
        """The memory the buckets take, in bytes."""
        return (
            sys.getsizeof(self._buckets)
            + sys.getsizeof(self._others)
            + sum(sys.getsizeof(bucket) for bucket in self._buckets if bucket is not None)
        )


def _find(bucket: bytearray, entry: bytes) -> int:
    """The offset of `entry` in `bucket` at an entry boundary, or -1."""
    at = bucket.find(entry)
    # A match may straddle two entries; it is rare, and then the search goes on.
    while at > 0 and at % _ENTRY_BYTES:
        at = bucket.find(entry, at + 1)
    return at
