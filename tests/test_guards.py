"""The campaign guards: the error-rate breaker, the --not-after deadline and the opt-out list."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from sms_blaster.breaker import ErrorRateBreaker
from sms_blaster.deadline import parse_deadline
from sms_blaster.errors import UsageError
from sms_blaster.models import ErrorKind, Record, RowError, Status
from sms_blaster.optout import load_suppressed

# --- ErrorRateBreaker ---------------------------------------------------------------------------

_ERRORS = {
    Status.SENT: None,
    Status.FAILED: RowError(ErrorKind.REJECTED, "7", "Number barred."),
    Status.UNKNOWN: RowError(ErrorKind.AMBIGUOUS, "timeout", "no answer in time"),
}


def record(status: Status, error: RowError | None = None) -> Record:
    """A record of a row that reached the provider once."""
    return Record(1, "447911123456", status, "c-1", 1, error=error or _ERRORS[status])


def stopped() -> Record:
    error = RowError(ErrorKind.STOPPED, "fatal", "not sent: the run was stopped")
    return Record(1, "447911123456", Status.FAILED, "c-1", 0, error=error)


def feed(breaker: ErrorRateBreaker, records: list[Record]) -> list[str | None]:
    return [breaker.observe(r) for r in records]


def test_the_breaker_does_not_trip_before_20_samples() -> None:
    """19 failures in a row are too few to judge; the 20th trips it."""
    breaker = ErrorRateBreaker(0.5)
    assert feed(breaker, [record(Status.FAILED)] * 19) == [None] * 19
    assert breaker.observe(record(Status.FAILED)) is not None


def test_the_breaker_trips_above_the_rate_and_its_reason_names_the_rate() -> None:
    """11 failures in 20 sends is 55 %, above 50 %: the reason gives both rates."""
    breaker = ErrorRateBreaker(0.5)
    reasons = feed(breaker, [record(Status.SENT)] * 9 + [record(Status.FAILED)] * 11)
    assert reasons[:-1] == [None] * 19
    assert reasons[-1] == "error rate 55% over the 20 sends so far is above --max-error-rate 50%"


def test_the_breaker_does_not_trip_at_exactly_the_rate() -> None:
    """10 failures in 20 sends is 50 %: not above --max-error-rate 0.5."""
    breaker = ErrorRateBreaker(0.5)
    reasons = feed(breaker, [record(Status.SENT)] * 10 + [record(Status.FAILED)] * 10)
    assert reasons == [None] * 20


def test_the_breaker_ignores_rows_stopped_before_sending() -> None:
    """Stopped rows never reached the provider: they are not samples at all."""
    breaker = ErrorRateBreaker(0.5)
    assert feed(breaker, [stopped()] * 50 + [record(Status.FAILED)] * 19) == [None] * 69


def test_the_breaker_counts_failed_and_unknown_rows_but_not_sent_ones() -> None:
    """Failed and unknown rows are errors alike; a sent row is not."""
    breaker = ErrorRateBreaker(0.5)
    feed(breaker, [record(Status.FAILED)] * 5 + [record(Status.UNKNOWN)] * 5)
    assert feed(breaker, [record(Status.SENT)] * 10) == [None] * 10
    assert breaker.observe(record(Status.UNKNOWN)) == (
        "error rate 52% over the 21 sends so far is above --max-error-rate 50%"
    )


def test_the_breaker_judges_only_the_last_100_sends() -> None:
    """100 old failures age out: 19 failures in the last 100 sends are under 30 %."""
    breaker = ErrorRateBreaker(0.3)
    feed(breaker, [record(Status.FAILED)] * 100 + [record(Status.SENT)] * 80)
    assert breaker.observe(record(Status.SENT)) is None


# --- parse_deadline -----------------------------------------------------------------------------

_PLUS_1 = dt.timezone(dt.timedelta(hours=1))
NOW = dt.datetime(2026, 3, 1, 12, 0, 30, 123, tzinfo=_PLUS_1)


def test_a_deadline_as_hh_mm_is_today_in_local_time() -> None:
    """'18:30' is 18:30:00 of the day `now` is in, in its time zone."""
    assert parse_deadline("18:30", NOW) == dt.datetime(2026, 3, 1, 18, 30, tzinfo=_PLUS_1)


def test_a_deadline_as_h_mm_is_read_as_hh_mm() -> None:
    """'9:05' needs no leading zero; padded with spaces it still parses."""
    late = NOW.replace(hour=7)
    assert parse_deadline(" 9:05 ", late) == dt.datetime(2026, 3, 1, 9, 5, tzinfo=_PLUS_1)


def test_an_iso_deadline_without_a_zone_is_in_local_time() -> None:
    """A naive ISO time takes the zone of `now`."""
    when = parse_deadline("2026-03-02T08:00", NOW)
    assert when == dt.datetime(2026, 3, 2, 8, 0, tzinfo=_PLUS_1)
    assert when.tzinfo is _PLUS_1


def test_an_iso_deadline_with_a_zone_keeps_its_zone() -> None:
    """'…T12:00Z' is 13:00 at UTC+1: later than now, so accepted as given."""
    when = parse_deadline("2026-03-01T12:00:00Z", NOW)
    assert when == dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
    assert when.utcoffset() == dt.timedelta(0)


@pytest.mark.parametrize("text", ["12:00", "2026-03-01T11:00:30+00:00", "2026-02-28T23:00"])
def test_a_deadline_that_has_passed_is_a_usage_error(text: str) -> None:
    """Earlier today, or earlier in another zone: the message says it has passed."""
    with pytest.raises(UsageError, match="that time has passed"):
        parse_deadline(text, NOW)


def test_a_deadline_can_name_seconds() -> None:
    """HH:MM:SS is today at that second."""
    assert parse_deadline("18:30:15", NOW) == NOW.replace(
        hour=18, minute=30, second=15, microsecond=0
    )


@pytest.mark.parametrize("text", ["soon", "25:00", "18:61:00", "", "2026-13-01T10:00"])
def test_a_deadline_that_is_not_a_time_is_a_usage_error_showing_the_formats(text: str) -> None:
    """Garbage gets a message naming both accepted forms."""
    with pytest.raises(UsageError, match=r"not a time; give HH:MM \(today\) or e\.g\. 2026-"):
        parse_deadline(text, NOW)


# --- load_suppressed ----------------------------------------------------------------------------


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_an_opt_out_list_of_plain_numbers_includes_its_first_line(tmp_path: Path) -> None:
    """No header: the first line is a number too; blank lines are skipped; formats mix."""
    path = write(tmp_path / "optout.txt", "07911 123456\n\n+447911123457\n447911123458\n\n")
    assert load_suppressed(path, "GB") == {447911123456, 447911123457, 447911123458}


def test_an_opt_out_csv_takes_its_phone_column(tmp_path: Path) -> None:
    """A CSV with a `phone` column: only that column is read."""
    path = write(tmp_path / "optout.csv", "name,phone\nAnn,+447911123456\n12,+447911123457\n")
    assert load_suppressed(path, None) == {447911123456, 447911123457}


def test_an_opt_out_jsonl_takes_its_to_key(tmp_path: Path) -> None:
    """JSONL objects with `to`, as a string or a JSON number."""
    path = write(tmp_path / "optout.jsonl", '{"to": "+447911123456"}\n{"to": 447911123457}\n')
    assert load_suppressed(path, None) == {447911123456, 447911123457}


def test_national_opt_out_numbers_are_read_in_the_default_region(tmp_path: Path) -> None:
    """'07911 123456' with region GB is the same number as +44 7911 123456."""
    path = write(tmp_path / "optout.txt", "07911 123456\n(07911) 123-457\n")
    assert load_suppressed(path, "GB") == {447911123456, 447911123457}


def test_an_invalid_opt_out_entry_is_a_usage_error_naming_file_and_line(tmp_path: Path) -> None:
    """An opt-out that cannot be honoured must not pass silently."""
    path = write(tmp_path / "optout.txt", "+447911123456\n+447911123457\nnot-a-number\n")
    with pytest.raises(UsageError) as raised:
        load_suppressed(path, "GB")
    assert str(raised.value) == (
        f"--suppress {path}: line 3: 'not-a-number' is not a valid number; fix or remove it"
    )


def test_an_invalid_entry_in_an_opt_out_csv_names_its_data_row(tmp_path: Path) -> None:
    """Rows are counted as records count them: the header is not a row."""
    path = write(tmp_path / "optout.csv", "phone\n+447911123456\n12345\n")
    with pytest.raises(UsageError, match=r"optout\.csv: row 2: '12345' is not a valid number"):
        load_suppressed(path, "GB")


def test_a_national_opt_out_entry_without_a_region_says_to_give_one(tmp_path: Path) -> None:
    """Without --default-region a national number cannot be read; the message says so."""
    path = write(tmp_path / "optout.txt", "07911 123456\n")
    with pytest.raises(
        UsageError, match=r"line 1: .* \(a national number needs --default-region\)"
    ):
        load_suppressed(path, None)


def test_an_invalid_opt_out_entry_after_a_blank_line_names_its_line_in_the_file(
    tmp_path: Path,
) -> None:
    """'abc' on the third line of the file is reported as line 3, blank lines included."""
    path = write(tmp_path / "optout.txt", "+447911123456\n\nabc\n")
    with pytest.raises(UsageError, match=r": line 3: 'abc'"):
        load_suppressed(path, "GB")


def test_an_opt_out_csv_without_a_number_column_is_a_usage_error(tmp_path: Path) -> None:
    """Several columns, none of them a number: the message lists the columns."""
    path = write(tmp_path / "optout.csv", "name,email\nAnn,ann@example.com\n")
    with pytest.raises(UsageError) as raised:
        load_suppressed(path, "GB")
    assert str(raised.value) == (
        f"--suppress {path}: no number column in the opt-out file (columns: name, email); "
        "use a plain list, one number a line"
    )


def test_an_opt_out_csv_with_only_a_header_suppresses_nothing(tmp_path: Path) -> None:
    """Nobody has opted out yet: an empty set, not an error."""
    path = write(tmp_path / "optout.csv", "phone\n")
    assert load_suppressed(path, "GB") == set()


def test_an_empty_opt_out_file_suppresses_nothing(tmp_path: Path) -> None:
    """Nobody has opted out yet and the list is an empty file: an empty set, not an error."""
    path = write(tmp_path / "optout.txt", "")
    assert load_suppressed(path, "GB") == set()
