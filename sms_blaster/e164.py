"""A fast, exact check of numbers already written in E.164 form ("+447911123456").

phonenumbers takes about 30 µs to parse and validate a number, most of it trying each number
type's pattern in turn, and a campaign list is almost always in this form. Here the same metadata
decides, with each region's patterns compiled once into two: the general pattern, and every type
that makes a number valid, by length. Only a "valid" answer is given, and only where phonenumbers
would give the same number: anything else (a national prefix its parser might strip, a leading
zero, a country code that is not one) answers None, and the caller asks phonenumbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from phonenumbers import (
    COUNTRY_CODE_TO_REGION_CODE,
    REGION_CODE_FOR_NON_GEO_ENTITY,
    PhoneMetadata,
    region_code_for_country_code,
)

_MAX_COUNTRY_CODE_DIGITS = 3
_MIN_NATIONAL_DIGITS = 2
_MAX_NATIONAL_DIGITS = 17
_TYPES = (
    "premium_rate",
    "toll_free",
    "shared_cost",
    "voip",
    "personal_number",
    "pager",
    "uan",
    "voicemail",
    "fixed_line",
)


@dataclass(frozen=True, slots=True)
class _Region:
    """What makes a national number valid in one region: it fits the general description and
    one type's, each a length and a pattern (phonenumbers' `_number_type_helper`)."""

    leading_digits: re.Pattern[str] | None  # picks this region among those sharing a code
    general_lengths: frozenset[int]
    general: re.Pattern[str] | None
    typed: dict[int, re.Pattern[str]]  # by length: any valid type's pattern
    typed_any_length: re.Pattern[str] | None  # types that name no lengths

    def valid(self, national: str) -> bool:
        length = len(national)
        if self.general is None:
            return False
        if self.general_lengths and length not in self.general_lengths:
            return False
        if not self.general.fullmatch(national):
            return False
        by_length = self.typed.get(length)
        if by_length is not None and by_length.fullmatch(national):
            return True
        return bool(self.typed_any_length and self.typed_any_length.fullmatch(national))


@dataclass(frozen=True, slots=True)
class _Code:
    """One country calling code: its regions in phonenumbers' order, and the national prefix its
    parser would try to strip."""

    regions: tuple[_Region, ...]
    national_prefix: re.Pattern[str] | None


_CODES: dict[int, _Code | None] = {}


def fast_e164(candidate: str) -> str | None:
    """The number as E.164 digits without '+' when `candidate` is "+digits" and phonenumbers
    would find it valid; None when it would not, or when this cannot tell."""
    if candidate[:1] != "+" or not candidate[1:].isdecimal() or not candidate[1:].isascii():
        return None
    digits = candidate[1:]
    if not digits or digits[0] == "0":
        return None  # no country code starts with 0
    for size in range(1, _MAX_COUNTRY_CODE_DIGITS + 1):
        code_number = int(digits[:size])
        if code_number in COUNTRY_CODE_TO_REGION_CODE:
            break
    else:
        return None
    national = digits[size:]
    if not _MIN_NATIONAL_DIGITS <= len(national) <= _MAX_NATIONAL_DIGITS or national[0] == "0":
        return None
    try:
        code = _CODES[code_number]
    except KeyError:
        code = _CODES[code_number] = _compile(code_number)
    if code is None:
        return None
    if code.national_prefix is not None and code.national_prefix.match(national):
        return None  # phonenumbers might strip it: let it decide
    region = _region_for(code.regions, national)
    if region is None or not region.valid(national):
        return None
    return digits


def _region_for(regions: tuple[_Region, ...], national: str) -> _Region | None:
    """The region phonenumbers' `region_code_for_number` picks."""
    if len(regions) == 1:
        return regions[0]
    for region in regions:
        if region.leading_digits is not None:
            if region.leading_digits.match(national):
                return region
        elif region.valid(national):
            return region
    return None


def _compile(code_number: int) -> _Code | None:
    names = COUNTRY_CODE_TO_REGION_CODE[code_number]
    regions = []
    for name in names:
        if name == REGION_CODE_FOR_NON_GEO_ENTITY:
            metadata = PhoneMetadata.metadata_for_nongeo_region(code_number, None)
        else:
            metadata = PhoneMetadata.metadata_for_region(name, None)
        if metadata is None:
            return None
        regions.append(_region(metadata))
    main = PhoneMetadata.metadata_for_region_or_calling_code(
        code_number, region_code_for_country_code(code_number)
    )
    if main is None:
        return None
    prefix = main.national_prefix_for_parsing
    return _Code(tuple(regions), re.compile(prefix) if prefix else None)


def _region(metadata: PhoneMetadata) -> _Region:
    descs = [getattr(metadata, name) for name in _TYPES]
    if not metadata.same_mobile_and_fixed_line_pattern:
        descs.append(metadata.mobile)
    by_length: dict[int, list[str]] = {}
    any_length: list[str] = []
    for desc in descs:
        if desc is None or not desc.national_number_pattern:
            continue
        if desc.possible_length:
            for length in desc.possible_length:
                by_length.setdefault(length, []).append(desc.national_number_pattern)
        else:
            any_length.append(desc.national_number_pattern)
    general = metadata.general_desc
    return _Region(
        leading_digits=re.compile(metadata.leading_digits) if metadata.leading_digits else None,
        general_lengths=frozenset(general.possible_length or ()) if general else frozenset(),
        general=(
            re.compile(general.national_number_pattern)
            if general is not None and general.national_number_pattern
            else None
        ),
        typed={length: _any_of(patterns) for length, patterns in by_length.items()},
        typed_any_length=_any_of(any_length) if any_length else None,
    )


def _any_of(patterns: list[str]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{pattern})" for pattern in patterns))
