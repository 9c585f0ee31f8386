"""Numbers, templates, duplicates and client refs: from row to message or record."""

from __future__ import annotations

import re

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sms_blaster.lookalikes import SmartEncoding
from sms_blaster.models import Encoding, ErrorKind, InputRow, Message, Record, Status
from sms_blaster.prepare import (
    Preparer,
    TemplateError,
    campaign_id,
    compile_template,
    normalise_number,
    number_problem,
    parse_client_ref,
    pick_number_column,
)


def make_preparer(template: str | None = "Hi {name}", **options: object) -> Preparer:
    return Preparer(
        to_column="phone",
        template=None if template is None else compile_template(template),
        campaign="c0ffee000000",
        **options,  # type: ignore[arg-type]
    )


def row(line: int, **fields: str) -> InputRow:
    return InputRow(line, fields)


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("+44 7911 123456", None, "447911123456"),
        ("07911 123456", "GB", "447911123456"),
        ("447911123456", None, "447911123456"),
        ("447911123456", "US", "447911123456"),
        ("0044 7911-123456", None, "447911123456"),
        ("(415) 555-2671", "US", "14155552671"),
        ("+39 06 6982 0000", None, "390669820000"),
        ("07911\u2013123456", "GB", "447911123456"),  # an en dash, as a word processor writes
        ("\uff0b44 7911 123456", None, "447911123456"),  # a full-width plus
    ],
)
def test_numbers_are_normalised_to_e164_digits(raw: str, region: str | None, expected: str) -> None:
    """National, international, 00-prefixed and bare-digit forms all give E.164 digits."""
    assert normalise_number(raw, region) == expected


@pytest.mark.parametrize("raw", ["12345", "not a number", "07911 123456", "+44 7700 900123", ""])
def test_invalid_numbers_are_refused(raw: str) -> None:
    """Too short, text, national without a region, or a fictional range: not a number to send to."""
    assert normalise_number(raw, None) is None


def test_template_renders_placeholders_and_literal_braces() -> None:
    """{column} takes the row's value; {{ and }} are literal braces."""
    template = compile_template("Hi {name}, {{code}} is {code}")
    assert template.fields == ("name", "code")
    assert template.render({"name": "Ana", "code": "42"}) == "Hi Ana, {code} is 42"


@pytest.mark.parametrize("text", ["Hi {name", "a } b", "empty {}"])
def test_template_errors_are_caught_before_sending(text: str) -> None:
    """A lone brace or an empty placeholder is a usage error, not a send of a broken text."""
    with pytest.raises(TemplateError):
        compile_template(text)


def test_number_column_defaults_to_the_first_usual_name() -> None:
    """Without --to-column the first of to, phone, msisdn, number, mobile present is taken."""
    assert pick_number_column(["name", "mobile", "phone"], None) == "phone"
    assert pick_number_column(["name"], None) is None
    assert pick_number_column(["name", "cell"], "cell") == "cell"
    assert pick_number_column(["name"], "cell") is None


def test_a_valid_row_becomes_a_message_with_a_stable_client_ref() -> None:
    """The message carries the E.164 number, rendered text, encoding, parts and ref."""
    message = make_preparer(default_region="GB").prepare(row(7, phone="07911 123456", name="Ana"))
    assert message == Message(7, "447911123456", "Hi Ana", Encoding.GSM7, 1, "c0ffee000000-7")


def test_client_refs_are_short_and_derived_from_campaign_and_row() -> None:
    """The same campaign key gives the same ref; refs stay within 40 characters."""
    assert campaign_id("a.csv|Hi|Shop") == campaign_id("a.csv|Hi|Shop")
    assert campaign_id("a.csv|Hi|Shop") != campaign_id("b.csv|Hi|Shop")
    assert (
        len(Preparer(to_column="to", template=None, campaign=campaign_id("x")).client_ref(10**9))
        <= 40
    )


def test_a_text_needing_ucs2_is_marked_so() -> None:
    """A name outside GSM-7 makes that row's message UCS-2."""
    message = make_preparer().prepare(row(1, phone="+447911123456", name="Łukasz"))
    assert isinstance(message, Message)
    assert message.encoding is Encoding.UCS2


# 106 characters with a curly apostrophe, an en dash, an ellipsis and curly quotes: two UCS-2
# parts as written, one GSM-7 part with their plain forms.
CURLY = (
    "Hi {name}, it\u2019s your table for 2 \u2013 booked for Friday\u2026 Reply STOP to opt "
    "out. See you at the \u201cBlue Door\u201d!"
)


def test_smart_encoding_sends_the_plain_text_and_keeps_the_parts_it_would_have_taken() -> None:
    """Under auto the message goes as GSM-7 in one part, and says it needed two as written."""
    message = make_preparer(CURLY).prepare(row(1, phone="+447911123456", name="Ana"))
    assert isinstance(message, Message)
    assert (message.encoding, message.segments, message.plain_segments) == (Encoding.GSM7, 1, 2)
    assert message.text.startswith("Hi Ana, it's your table for 2 - booked for Friday...")


def test_smart_encoding_never_sends_the_text_as_written() -> None:
    """--smart-encoding never: two UCS-2 parts, nothing changed."""
    preparer = make_preparer(CURLY, smart_encoding=SmartEncoding.NEVER)
    message = preparer.prepare(row(1, phone="+447911123456", name="Ana"))
    assert isinstance(message, Message)
    assert (message.encoding, message.segments, message.plain_segments) == (Encoding.UCS2, 2, None)


def test_max_segments_counts_the_parts_of_the_text_sent() -> None:
    """A text that fits --max-segments once smart encoding changed it is sent."""
    preparer = make_preparer(CURLY, max_segments=1)
    assert isinstance(preparer.prepare(row(1, phone="+447911123456", name="Ana")), Message)


def test_a_skipped_row_whose_text_smart_encoding_changed_carries_its_plain_parts() -> None:
    """A duplicate's record shows the parts of the text that would have been sent, and before."""
    preparer = make_preparer(CURLY)
    preparer.prepare(row(1, phone="+447911123456", name="Ana"))
    duplicate = preparer.prepare(row(2, phone="+447911123456", name="Ana"))
    assert isinstance(duplicate, Record)
    assert (duplicate.segments, duplicate.plain_segments) == (1, 2)


def test_a_second_row_for_the_same_number_is_skipped_as_duplicate() -> None:
    """Duplicates are found after normalisation, whatever the format."""
    preparer = make_preparer(default_region="GB")
    first = preparer.prepare(row(1, phone="07911 123456", name="A"))
    second = preparer.prepare(row(2, phone="+44 7911 123456", name="B"))
    assert isinstance(first, Message)
    assert isinstance(second, Record)
    assert second.status is Status.SKIPPED
    assert second.error is not None
    assert second.error.kind is ErrorKind.DUPLICATE


@pytest.mark.parametrize(
    ("input_row", "code"),
    [
        (InputRow(1, None, "invalid JSON"), "malformed_row"),
        (row(1, name="Ana"), "missing_value"),
        (row(1, phone="  ", name="Ana"), "missing_value"),
        (row(1, phone="12", name="Ana"), "invalid_number"),
        (row(1, phone="+447911123456"), "missing_value"),
        (row(1, phone="+447911123456", name=" "), "missing_value"),
        (row(1, phone="+447911123456", name=""), "missing_value"),
        (
            InputRow(1, {"phone": "[1]", "name": "A"}, invalid={"phone": "a JSON list"}),
            "invalid_value",
        ),
        (
            InputRow(
                1, {"phone": "+447911123456", "name": "true"}, invalid={"name": "a JSON boolean"}
            ),
            "invalid_value",
        ),
    ],
)
def test_bad_rows_become_invalid_input_records(input_row: InputRow, code: str) -> None:
    """A row that cannot be sent is a failed record with the reason, never an exception."""
    result = make_preparer("{name}").prepare(input_row)
    assert isinstance(result, Record)
    assert result.status is Status.FAILED
    assert result.error is not None
    assert (result.error.kind, result.error.code) == (ErrorKind.INVALID_INPUT, code)


def test_an_invalid_number_keeps_the_value_as_given() -> None:
    """`to` is the value as given when it could not be normalised."""
    result = make_preparer().prepare(row(3, phone="+44 12", name="A"))
    assert isinstance(result, Record)
    assert result.to == "+44 12"


def test_max_segments_refuses_longer_texts() -> None:
    """A text needing more parts than --max-segments is invalid input, with its part count."""
    result = make_preparer(max_segments=1).prepare(row(1, phone="+447911123456", name="x" * 200))
    assert isinstance(result, Record)
    assert result.segments == 2
    assert result.error is not None
    assert result.error.code == "too_long"


def test_a_text_longer_than_any_sms_can_be_is_refused_without_max_segments() -> None:
    """A concatenated SMS has 255 parts at the most (one byte numbers them): a longer text is
    invalid input even without --max-segments, not a request of hundreds of parts."""
    result = make_preparer().prepare(row(1, phone="+447911123456", name="x" * 40_000))
    assert isinstance(result, Record)
    assert result.error is not None
    assert result.error.code == "too_long"
    assert "at most 255" in result.error.message
    longest = make_preparer().prepare(row(1, phone="+447911123456", name="x" * (153 * 250)))
    assert isinstance(longest, Message)


def test_without_a_template_the_text_column_is_sent_as_is() -> None:
    """With no --text, the row's text column is the message, braces and all."""
    message = make_preparer(None).prepare(row(1, phone="+447911123456", text="{not a field}"))
    assert isinstance(message, Message)
    assert message.text == "{not a field}"


def test_template_error_type_is_a_value_error() -> None:
    """TemplateError can be caught as ValueError by callers that do not know it."""
    with pytest.raises(ValueError, match="lone"):
        compile_template("{")


def test_a_client_ref_reads_back_as_its_campaign_id_and_line() -> None:
    """Receipts find their row by the ref sms-blaster sent; other senders' refs are not ours."""
    preparer = Preparer(to_column="to", template=compile_template("x"), campaign="c0ffee123456")
    assert parse_client_ref(preparer.client_ref(17)) == ("c0ffee123456", 17)
    for other in (None, "", "my-ref", "c0ffee123456-0", "C0FFEE123456-1", "c0ffee123456-1x"):
        assert parse_client_ref(other) is None


def test_a_blank_template_is_empty_text() -> None:
    """A template of only spaces renders to nothing worth sending."""
    result = make_preparer("  ").prepare(row(1, phone="+447911123456"))
    assert isinstance(result, Record)
    assert result.error is not None
    assert result.error.code == "empty_text"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"phone": "+447911123456"}, "no value for 'Name'"),
        ({"phone": "+447911123456", "name": " \t"}, "no value for 'Name'"),
        ({"name": "A"}, "no value for 'phone'"),
    ],
)
def test_a_missing_or_blank_value_is_missing_value_naming_the_column(
    fields: dict[str, str], message: str
) -> None:
    """Absent, empty or blank: one rule, and the message names the placeholder as written."""
    result = make_preparer("Hi {Name}").prepare(InputRow(1, fields))
    assert isinstance(result, Record)
    assert result.error is not None
    assert (result.error.code, result.error.message) == ("missing_value", message)


def test_an_invalid_value_names_the_column_and_what_it_is() -> None:
    """A JSON object in a placeholder is refused, not inserted into the text as JSON."""
    fields = {"phone": "+447911123456", "name": '{"a":1}'}
    result = make_preparer("Hi {name}").prepare(
        InputRow(1, fields, invalid={"name": "a JSON object"})
    )
    assert isinstance(result, Record)
    assert result.error is not None
    assert result.error.message == "'name' is a JSON object; give a string or a number"


def test_placeholders_and_the_number_column_match_ignoring_case() -> None:
    """`{NAME}` and --to-column Phone find the row's `name` and `phone` fields."""
    preparer = Preparer(
        to_column="Phone", template=compile_template("Hi { NAME }"), campaign="c0ffee000000"
    )
    message = preparer.prepare(row(1, phone="+447911123456", name="Ana"))
    assert isinstance(message, Message)
    assert message.text == "Hi Ana"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("+44 7911 123404 ext 5", "it has an extension ('ext 5')"),
        ("+44 7911 123404 x5", "it has an extension ('x5')"),
        ("+44 7911 123404#5", "it has an extension ('#5')"),
        ("+44 7911 123404;ext=5", "it has an extension (';ext=5')"),
        ("+44 7911 123404 abc", "'abc' is not part of one"),
        ("tel:+447911123404", "'tel:+447911123404' is not part of one"),
        ("447911123404.0", "written as a decimal number"),
        ("4.47911123404E+11", "written as a decimal number"),
    ],
)
def test_a_number_with_more_than_a_number_is_refused_saying_why(raw: str, reason: str) -> None:
    """Anything phonenumbers would drop or reinterpret makes the number invalid, with why."""
    assert normalise_number(raw, "GB") is None
    assert reason in number_problem(raw, "GB")


@pytest.mark.parametrize(
    ("raw", "region", "reason"),
    [
        ("+447700900001", None, "not a valid phone number for GB (+44); check its digits"),
        ("+44 7700 900001", "US", "not a valid phone number for GB (+44); check its digits"),
        ("0044 7700 900001", None, "not a valid phone number for GB (+44); check its digits"),
        ("+999123456", None, "not a valid phone number: no country has the code it starts with"),
        ("07700900001", None, "give it a country code or set --default-region"),
        ("07700900001", "GB", "not a valid phone number"),
    ],
)
def test_an_invalid_number_with_a_country_code_is_invalid_for_that_country(
    raw: str, region: str | None, reason: str
) -> None:
    """A number that writes its country code (+44 7700 900001, a drama range) is told invalid
    for that country, not to give it a country code; only one without asks for one."""
    assert normalise_number(raw, region) is None
    assert reason in number_problem(raw, region)


@settings(deadline=None)  # phonenumbers loads a region's metadata on its first number
@given(st.from_regex(r"\+[1-9][0-9]{5,14}", fullmatch=True))
def test_plain_plus_digits_normalise_exactly_as_phonenumbers_reads_them(raw: str) -> None:
    """The fast path for `+digits` gives what phonenumbers gives, valid or not."""
    try:
        number = phonenumbers.parse(raw, None)
    except phonenumbers.NumberParseException:
        expected = None
    else:
        expected = (
            f"{number.country_code}{phonenumbers.national_significant_number(number)}"
            if phonenumbers.is_valid_number(number)
            else None
        )
    assert normalise_number(raw, None) == expected


@settings(deadline=None)
@given(
    st.sampled_from([" ext 5", " x12", "#3", " extension 9", " abc", " call me", ";ext=1"]),
    st.sampled_from(["+44 7911 123404", "07911 123404", "447911123404"]),
)
def test_a_valid_number_with_trailing_text_is_never_normalised(suffix: str, raw: str) -> None:
    """Whatever trails a valid number, the row is not sent to the number before it."""
    assert normalise_number(raw, "GB") == "447911123404"
    assert normalise_number(raw + suffix, "GB") is None


_CONTROLS = re.compile("[\\x00-\\x1f\\x7f-\\x9f]")


@given(
    st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True).filter(lambda key: key != "phone"),
        # Blank: only white space and control characters (a text of nothing else is refused).
        st.text(min_size=1).filter(lambda value: bool(_CONTROLS.sub("", value).strip())),
        min_size=1,
        max_size=4,
    )
)
def test_a_template_renders_every_non_blank_value_as_given(values: dict[str, str]) -> None:
    """Any non-blank value is inserted unchanged, whatever the placeholder's case (smart
    encoding off: it would replace look-alikes that cost parts)."""
    template = compile_template(" / ".join(f"{{{name.upper()}}}" for name in values))
    preparer = Preparer(
        to_column="phone",
        template=template,
        campaign="c0ffee000000",
        smart_encoding=SmartEncoding.NEVER,
    )
    message = preparer.prepare(InputRow(1, {**values, "phone": "+447911123456"}))
    if isinstance(message, Record):  # only a text too long for --max-segments could be refused
        raise AssertionError(message)
    assert message.text == " / ".join(values.values())


@pytest.mark.parametrize("text", ["\x00", "\x00\x00 \x01", "\x7f\x1b", "\x00\u200b"])
def test_a_text_of_only_control_characters_is_empty_text(text: str) -> None:
    """NUL (or any control character) shows nothing: a text of only those, spaces and
    invisible characters fails as empty, as a zero-width-only one does; before, a NUL alone
    went as a one-part UCS-2 SMS."""
    result = make_preparer(None).prepare(row(1, phone="+447911123456", text=text))
    assert isinstance(result, Record)
    assert result.error is not None
    assert result.error.code == "empty_text"
    assert "control characters" in result.error.message


def test_a_control_character_beside_a_text_that_shows_is_sent_as_given() -> None:
    """Only a text of nothing else is refused."""
    message = make_preparer(None).prepare(row(1, phone="+447911123456", text="Hi\x00"))
    assert isinstance(message, Message)
    assert message.text == "Hi\x00"
