"""Numbers, templates, duplicates and client refs: from row to message or record."""

from __future__ import annotations

import pytest

from sms_blaster.models import Encoding, ErrorKind, InputRow, Message, Record, Status
from sms_blaster.prepare import (
    Preparer,
    TemplateError,
    campaign_id,
    compile_template,
    normalise_number,
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
        (row(1, phone="+447911123456", name=" "), "empty_text"),
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
