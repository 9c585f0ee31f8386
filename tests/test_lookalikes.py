"""Smart encoding: the look-alike table, the replacement, and when each mode takes it."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from sms_blaster.encoding import GSM7_ALL, analyse
from sms_blaster.lookalikes import (
    JOINERS,
    LOOKALIKES,
    SmartEncoding,
    cost_saved,
    leaves_blank,
    replace_lookalikes,
    saved_and_added,
    smarten,
)

# Spelled as escapes: the characters look like the plain ones they become.
LSQUO, RSQUO, LDQUO, RDQUO = "\u2018", "\u2019", "\u201c", "\u201d"
NDASH, MDASH, ELLIPSIS = "\u2013", "\u2014", "\u2026"

# 106 characters: two parts as UCS-2 (for the apostrophe, the dash, the ellipsis and the quotes),
# one as GSM-7.
CURLY = (
    f"Hi Ana, it{RSQUO}s your table for 2 {NDASH} booked for Friday{ELLIPSIS} Reply STOP to opt "
    f"out. See you at the {LDQUO}Blue Door{RDQUO}!"
)


def smart(text: str, mode: SmartEncoding) -> tuple[str, int] | None:
    """The text `mode` sends instead of `text`, and its parts; None to send it as given."""
    result = smarten(text, analyse(text), mode)
    return None if result is None else (result[0], result[1].segments)


def test_every_lookalike_is_outside_gsm7_and_becomes_gsm7_text() -> None:
    """The table replaces only what GSM-7 lacks, and only with what GSM-7 has (or nothing)."""
    for char, replacement in LOOKALIKES.items():
        assert char not in GSM7_ALL, f"U+{ord(char):04X} is GSM-7 already"
        assert GSM7_ALL.issuperset(replacement), f"U+{ord(char):04X} -> {replacement!r}"


def test_typographic_quotes_dashes_and_the_ellipsis_become_their_plain_forms() -> None:
    """Curly quotes and apostrophes, en and em dashes, the ellipsis: the keyboard's forms."""
    assert (
        replace_lookalikes(f"{LSQUO}a{RSQUO} {LDQUO}b{RDQUO} c{NDASH}d e{MDASH}f g{ELLIPSIS}")
        == "'a' \"b\" c-d e-f g..."
    )


def test_odd_spaces_become_a_space_and_invisible_characters_go() -> None:
    """No-break, thin and ideographic spaces are spaces; a zero-width space, BOM or soft hyphen
    is removed."""
    assert replace_lookalikes("a\u00a0b\u2009c\u3000d\u200be\ufefff\u00adg") == "a b c defg"


def test_full_width_ascii_becomes_ascii() -> None:
    """Full-width Hello! is Hello!"""
    assert replace_lookalikes("\uff28\uff45\uff4c\uff4c\uff4f\uff01") == "Hello!"


def test_greek_capitals_that_look_latin_are_written_as_gsm7_writes_them() -> None:
    """GSM 03.38 has no Greek A or K: the Latin letters stand for them; Λ is its own."""
    assert replace_lookalikes("\u039a\u0391\u039b\u0397") == "KAΛH"


def test_characters_without_a_gsm7_form_are_kept() -> None:
    """An emoji, ŵ, ł and CJK stay as they are; only the apostrophe beside them changes."""
    assert replace_lookalikes(f"ŵ ł 😀 予約 it{RSQUO}s") == "ŵ ł 😀 予約 it's"


def test_a_decomposed_accent_is_composed_when_the_text_then_fits_gsm7() -> None:
    """`e` and a combining acute accent are the GSM-7 é."""
    assert replace_lookalikes("Cafe\u0301") == "Café"


def test_joiners_stay_in_a_text_that_keeps_an_emoji() -> None:
    """A zero-width joiner holds an emoji sequence together: removed only from GSM-7 text."""
    family = "\U0001f468\u200d\U0001f469"
    assert replace_lookalikes(f"{family} it{RSQUO}s") == f"{family} it's"
    assert replace_lookalikes(f"it\u200d{RSQUO}s") == "it's"
    assert set(JOINERS) <= {"\u200c", "\u200d", "\u200e", "\u200f"}


def test_auto_replaces_when_the_text_then_takes_fewer_parts() -> None:
    """Two UCS-2 parts become one GSM-7 part."""
    assert analyse(CURLY).segments == 2
    assert smart(CURLY, SmartEncoding.AUTO) == (
        "Hi Ana, it's your table for 2 - booked for Friday... Reply STOP to opt out. "
        'See you at the "Blue Door"!',
        1,
    )


def test_auto_keeps_a_text_whose_parts_would_not_change() -> None:
    """A short text with a curly apostrophe is one part either way: sent as written."""
    assert smart(f"It{RSQUO}s ready.", SmartEncoding.AUTO) is None


def test_auto_keeps_a_text_with_an_emoji_whole() -> None:
    """The emoji keeps it UCS-2, so replacing the quotes saves nothing."""
    assert smart(CURLY + " 😀", SmartEncoding.AUTO) is None


def test_always_replaces_whenever_the_text_changes() -> None:
    """The same short text goes with a straight apostrophe, and an emoji text loses its quotes."""
    assert smart(f"It{RSQUO}s ready.", SmartEncoding.ALWAYS) == ("It's ready.", 1)
    assert smart(f"It{RSQUO}s 😀", SmartEncoding.ALWAYS) == ("It's 😀", 1)


def test_never_sends_the_text_as_given() -> None:
    """No replacement, however many parts it would save."""
    assert smart(CURLY, SmartEncoding.NEVER) is None


def test_a_gsm7_text_is_left_alone_in_every_mode() -> None:
    """Nothing to replace: GSM-7 text skips the replacement."""
    for mode in SmartEncoding:
        assert smart("Hi Ana, your code is 1234.", mode) is None


@given(st.text(max_size=300))
def test_the_replaced_text_never_takes_more_parts_under_auto(text: str) -> None:
    """Whatever the text, auto sends it in at most as many parts as it had."""
    result = smarten(text, analyse(text), SmartEncoding.AUTO)
    if result is not None:
        assert result[1].segments < analyse(text).segments


@given(st.text(alphabet=st.characters(blacklist_characters=list(LOOKALIKES)), max_size=100))
def test_text_without_lookalikes_or_marks_keeps_every_character(text: str) -> None:
    """Characters with no look-alike pass through (a text changed only by composing an accent or
    dropping a joiner fits GSM-7)."""
    replaced = replace_lookalikes(text)
    assert replaced == text or GSM7_ALL.issuperset(replaced)


def test_the_cost_saved_is_the_parts_saved_at_the_rows_price_a_part() -> None:
    """Sent in one part for 0.0333 instead of three: 0.0666 saved."""
    assert cost_saved(Decimal("0.03330000"), 1, 3) == Decimal("0.0666")
    assert cost_saved(Decimal("0.10"), 2, 3) == Decimal("0.05")


def test_a_text_of_only_invisible_characters_and_spaces_leaves_blank() -> None:
    """Zero-width spaces, soft hyphens and odd spaces vanish or turn to spaces: auto and always."""
    for text in ("\u200b" * 100, "\u00ad" * 80, "\u200b" * 71 + " ", "\u2060\ufeff\u00a0\u200d"):
        for mode in (SmartEncoding.AUTO, SmartEncoding.ALWAYS):
            assert leaves_blank(text, analyse(text), mode)


def test_never_and_a_text_with_something_visible_do_not_leave_blank() -> None:
    """`never` changes nothing; one visible character, or an emoji with its joiner, stays."""
    assert not leaves_blank("\u200b" * 100, analyse("\u200b" * 100), SmartEncoding.NEVER)
    for text in ("\u200b" * 100 + "a", "\u200d\U0001f600", " \u0301"):
        assert not leaves_blank(text, analyse(text), SmartEncoding.AUTO)


BLANKISH = [*JOINERS, "\u200b", "\u00ad", " ", "\t", "\u3000", "\u0301", "\x1c", "a", "\u2019"]


@given(st.text(alphabet=st.sampled_from(BLANKISH), max_size=20))
def test_leaves_blank_is_what_the_replacement_leaves(text: str) -> None:
    """The quick scan agrees with replacing the look-alikes and looking at what is left."""
    expected = analyse(text).encoding.value == "ucs2" and not replace_lookalikes(text).strip()
    assert leaves_blank(text, analyse(text), SmartEncoding.ALWAYS) == expected


def test_always_may_add_parts_but_not_past_max_segments_when_the_text_fits() -> None:
    """60 ellipses: one UCS-2 part, 180 dots in two GSM-7 parts; with a limit of 1, as written."""
    text = ELLIPSIS * 60
    replaced = smarten(text, analyse(text), SmartEncoding.ALWAYS)
    assert replaced is not None
    assert (replaced[0], replaced[1].segments) == ("." * 180, 2)
    assert smarten(text, analyse(text), SmartEncoding.ALWAYS, max_segments=1) is None
    assert smarten(text, analyse(text), SmartEncoding.ALWAYS, max_segments=2) == replaced


def test_always_replaces_a_text_that_passes_max_segments_either_way() -> None:
    """Too long as written too: the row fails too_long whichever text it counts, so it is the
    replaced one, as always asks."""
    text = ELLIPSIS * 200  # three UCS-2 parts; 600 dots in four GSM-7 parts
    replaced = smarten(text, analyse(text), SmartEncoding.ALWAYS, max_segments=1)
    assert replaced is not None
    assert replaced[1].segments == 4


def test_a_saving_splits_into_what_was_saved_and_what_was_added() -> None:
    """Parts or cost: a positive saving is saved, a negative one (always) added; never netted."""
    assert saved_and_added(2) == (2, 0)
    assert saved_and_added(-1) == (0, 1)
    assert saved_and_added(Decimal("-0.0333")) == (Decimal("0.0000"), Decimal("0.0333"))
