"""GSM-7 / UCS-2 choice and segment counting."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sms_blaster.encoding import (
    GSM7_BASIC,
    GSM7_EXTENSION,
    PART_LIMIT,
    SINGLE_LIMIT,
    analyse,
    char_units,
    choose_encoding,
    count_segments,
    count_units,
    split_parts,
)
from sms_blaster.models import Encoding

gsm_basic_text = st.text(alphabet=sorted(GSM7_BASIC), max_size=700)
gsm_text = st.text(alphabet=sorted(GSM7_BASIC | GSM7_EXTENSION), max_size=700)
any_text = st.text(min_size=1, max_size=400)


def test_plain_ascii_is_gsm7() -> None:
    """Letters, digits and common punctuation go as GSM-7."""
    assert analyse("Hello Ana, your code is 1234.").encoding is Encoding.GSM7


def test_extension_characters_cost_two_septets() -> None:
    """Each of | ^ € { } [ ] ~ \\ counts as two septets."""
    assert count_units("{€}", Encoding.GSM7) == 6


def test_a_character_outside_gsm_makes_the_text_ucs2() -> None:
    """One character outside the GSM tables (ł, a backtick, an emoji) switches to UCS-2."""
    for text in ("Łukasz", "back`tick", "ok 😀"):
        assert choose_encoding(text) is Encoding.UCS2


def test_an_emoji_is_two_utf16_code_units() -> None:
    """UCS-2 length is counted in UTF-16 code units, not Python characters."""
    assert count_units("😀a", Encoding.UCS2) == 3


def test_single_message_limits() -> None:
    """160 septets or 70 code units fit one SMS; one more makes two parts."""
    assert analyse("a" * 160).segments == 1
    assert analyse("a" * 161).segments == 2
    assert analyse("ł" * 70).segments == 1
    assert analyse("ł" * 71).segments == 2


def test_an_escape_pair_is_not_split_across_parts() -> None:
    """152 letters, an extension char and 152 letters is 306 septets but three parts."""
    text = "a" * 152 + "{" + "a" * 152
    assert count_units(text, Encoding.GSM7) == 306
    assert [len(part) for part in split_parts(text, Encoding.GSM7)] == [152, 152, 1]
    assert count_segments(text, Encoding.GSM7) == 3


@given(gsm_basic_text)
def test_basic_gsm_segments_follow_the_formula(text: str) -> None:
    """Without extension characters, parts are ceil(length / 153) above 160."""
    expected = 1 if len(text) <= 160 else math.ceil(len(text) / 153)
    assert count_segments(text, Encoding.GSM7) == expected


@pytest.mark.slow
@given(any_text)
def test_parts_rebuild_the_text_and_fit_their_limit(text: str) -> None:
    """Parts join back to the text, each within the part limit, greedily filled."""
    encoding = choose_encoding(text)
    parts = split_parts(text, encoding)
    assert "".join(parts) == text
    assert len(parts) == count_segments(text, encoding)
    if len(parts) > 1:
        limit = PART_LIMIT[encoding]
        for part, following in itertools.pairwise(parts):
            assert count_units(part, encoding) <= limit
            assert count_units(part, encoding) + char_units(following[0], encoding) > limit
    else:
        assert count_units(text, encoding) <= SINGLE_LIMIT[encoding]


@given(gsm_text)
def test_gsm_segment_count_is_bounded_by_units(text: str) -> None:
    """Escape pairs can cost at most one septet of waste per part."""
    units = count_units(text, Encoding.GSM7)
    segments = count_segments(text, Encoding.GSM7)
    if units > 160:
        assert math.ceil(units / 153) <= segments <= math.ceil(units / 152)


@given(st.text(max_size=300))
def test_analyse_agrees_with_its_parts(text: str) -> None:
    """analyse() reports the encoding, length and part count the split functions give."""
    info = analyse(text)
    assert info.units == count_units(text, info.encoding)
    assert info.segments == len(split_parts(text, info.encoding))
