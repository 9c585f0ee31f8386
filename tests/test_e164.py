"""The E.164 fast path answers as phonenumbers does, wherever it answers."""

from __future__ import annotations

import random

import phonenumbers
import pytest

from sms_blaster.e164 import fast_e164

TYPES = (
    phonenumbers.PhoneNumberType.FIXED_LINE,
    phonenumbers.PhoneNumberType.MOBILE,
    phonenumbers.PhoneNumberType.TOLL_FREE,
    phonenumbers.PhoneNumberType.PREMIUM_RATE,
    phonenumbers.PhoneNumberType.VOIP,
    phonenumbers.PhoneNumberType.UAN,
)


def by_phonenumbers(text: str) -> str | None:
    try:
        number = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return f"{number.country_code}{phonenumbers.national_significant_number(number)}"


def candidates() -> list[str]:
    """Every region's example numbers, each changed a little, and random digits after each
    country code and after none."""
    draw = random.Random(7)

    def digits(count: int) -> str:
        return "".join(str(draw.randrange(10)) for _ in range(count))

    found = []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in TYPES:
            example = phonenumbers.example_number_for_type(region, kind)
            if example is None:
                continue
            e164 = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)
            found.append(e164)
            for _ in range(3):
                place = draw.randrange(1, len(e164))
                found.append(e164[:place] + digits(1) + e164[place + 1 :])
                found.append(e164 + digits(1))
                found.append(e164[:-1])
    for code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
        found.extend(f"+{code}{digits(draw.randrange(2, 14))}" for _ in range(10))
    found.extend(f"+{digits(draw.randrange(3, 19))}" for _ in range(2000))
    return found


def test_every_number_the_fast_path_accepts_is_the_one_phonenumbers_finds_valid() -> None:
    """About 25,000 numbers near the valid ones: never a disagreement; most valid ones decided."""
    decided = valid = 0
    for text in candidates():
        fast = fast_e164(text)
        slow = by_phonenumbers(text)
        valid += slow is not None
        if fast is not None:
            decided += 1
            assert fast == slow, text
    assert decided > 0.9 * valid


@pytest.mark.parametrize(
    "text",
    [
        "+44 7911 123456",  # spaces: the slow path's
        "+\uff14\uff147911123456",  # full-width digits
        "+0447911123456",  # no country code starts with 0
        "+4407911123456",  # a national prefix the parser may strip
        "+",
        "+999123456",  # not a country code
    ],
)
def test_what_the_fast_path_cannot_tell_is_left_to_phonenumbers(text: str) -> None:
    """Anything but plain ASCII digits after a known code, with no prefix to strip: None."""
    assert fast_e164(text) is None
