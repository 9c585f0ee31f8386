"""A set of phone numbers in about 9 bytes each, for finding duplicates in constant-ish memory.

A Python `set` of ints costs about 70 bytes a number: 70 MB for a million-row campaign. Here
numbers (E.164 digits as ints, below 2**64) go into one of 32,768 small unsigned 64-bit arrays,
chosen by a multiplicative hash; a lookup scans one short array in C.
"""

from __future__ import annotations

import sys
from array import array

_BUCKET_BITS = 15
_GOLDEN = 0x9E3779B97F4A7C15  # Fibonacci hashing: spreads numbers that differ in any digit


class NumberSet:
    __slots__ = ("_buckets", "count")

    def __init__(self) -> None:
        self._buckets: list[array[int] | None] = [None] * (1 << _BUCKET_BITS)
        self.count = 0

    def add(self, number: int) -> bool:
        """Add `number`; False when it was already there."""
        index = ((number * _GOLDEN) & 0xFFFF_FFFF_FFFF_FFFF) >> (64 - _BUCKET_BITS)
        bucket = self._buckets[index]
        if bucket is None:
            self._buckets[index] = array("Q", (number,))
        elif number in bucket:
            return False
        else:
            bucket.append(number)
        self.count += 1
        return True

    def __contains__(self, number: object) -> bool:
        if not isinstance(number, int):
            return False
        index = ((number * _GOLDEN) & 0xFFFF_FFFF_FFFF_FFFF) >> (64 - _BUCKET_BITS)
        bucket = self._buckets[index]
        return bucket is not None and number in bucket

    def __len__(self) -> int:
        return self.count

    def footprint_bytes(self) -> int:
        """The memory the buckets take, in bytes."""
        return sys.getsizeof(self._buckets) + sum(
            sys.getsizeof(bucket) for bucket in self._buckets if bucket is not None
        )
