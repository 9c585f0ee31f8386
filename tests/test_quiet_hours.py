"""Quiet hours: the window, its judgement per zone on a fake clock, and each row's zones."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest

from sms_blaster.distributed.queue import ENTRY_FIELDS, message_fields, message_from
from sms_blaster.errors import UsageError
from sms_blaster.models import Encoding, ErrorKind, Message, RowError, Status
from sms_blaster.quiet_hours import QuietHours, QuietWindow, RowZones, judge, parse_window

NEW_YORK = zoneinfo.ZoneInfo("America/New_York")
EVENING = parse_window("21:00-08:00")


def at(text: str, tz: dt.tzinfo = dt.UTC) -> float:
    """An instant, from an ISO local time in `tz`."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=tz).timestamp()


def message(*zones: str, line: int = 1) -> Message:
    return Message(line, "12125551234", "hi", Encoding.GSM7, 1, f"c-{line}", time_zones=zones)


class Clock:
    def __init__(self, now_s: float) -> None:
        self.now_s = now_s
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return self.now_s


def test_a_window_may_wrap_midnight() -> None:
    """21:00-08:00 is quiet at 23:00 and 07:59, not at 08:00 or 20:59."""
    assert EVENING.is_quiet(23 * 60)
    assert EVENING.is_quiet(7 * 60 + 59)
    assert not EVENING.is_quiet(8 * 60)
    assert not EVENING.is_quiet(20 * 60 + 59)


def test_a_window_within_a_day_is_quiet_only_inside_it() -> None:
    """12:00-13:30 is quiet at 12:00 and 13:29, not at 13:30 or 11:59."""
    window = parse_window("12:00-13:30")
    assert window == QuietWindow(720, 810)
    assert window.is_quiet(720)
    assert window.is_quiet(809)
    assert not window.is_quiet(810)
    assert not window.is_quiet(719)


@pytest.mark.parametrize(
    "text",
    [
        "21:00",
        "21-08",
        "25:00-08:00",
        "21:60-08:00",
        "08:00-08:00",
        "\u0662\u0661:\u0660\u0660-\u0660\u0668:\u0660\u0660",  # Arabic-Indic digits
        "\uff12\uff11:\uff10\uff10-\uff10\uff18:\uff10\uff10",  # full-width digits
    ],
)
def test_a_malformed_window_is_a_usage_error_that_says_the_form(text: str) -> None:
    """Not HH:MM-HH:MM, no time of day, or empty: a UsageError naming the form."""
    with pytest.raises(UsageError, match="give HH:MM-HH:MM"):
        parse_window(text)


def test_a_row_inside_quiet_hours_waits_until_they_end_locally() -> None:
    """22:30 in New York: held by America/New_York until 08:00 there."""
    verdict = judge(EVENING, ("America/New_York",), at("2026-12-07T22:30", NEW_YORK))
    assert verdict.hold is not None
    assert verdict.hold.zone == "America/New_York"
    assert verdict.hold.until_s == at("2026-12-08T08:00", NEW_YORK)


def test_a_row_outside_quiet_hours_is_sent_and_the_answer_lasts_until_they_start() -> None:
    """12:00 in New York: not held, and that holds until 21:00 there."""
    verdict = judge(EVENING, ("America/New_York",), at("2026-12-07T12:00", NEW_YORK))
    assert verdict.hold is None
    assert verdict.valid_until_s == at("2026-12-07T21:00", NEW_YORK)


def test_a_number_with_many_zones_waits_until_none_is_quiet() -> None:
    """7:30 in New York is 4:30 in Los Angeles: held until 08:00 in Los Angeles."""
    now_s = at("2026-12-07T07:30", NEW_YORK)
    verdict = judge(EVENING, ("America/New_York", "America/Los_Angeles"), now_s)
    assert verdict.hold is not None
    assert verdict.hold.zone == "America/Los_Angeles"
    assert verdict.hold.until_s == at("2026-12-07T08:00", zoneinfo.ZoneInfo("America/Los_Angeles"))


def test_a_number_whose_zones_never_share_an_hour_outside_quiet_hours_waits_without_end() -> None:
    """Zones 12 hours apart, quiet 20:00-09:00: no instant is outside it in both."""
    now_s = at("2026-12-07T12:00")
    verdict = judge(parse_window("20:00-09:00"), ("Etc/GMT+6", "Etc/GMT-6"), now_s)
    assert verdict.hold is not None
    assert verdict.hold.until_s is None
    assert verdict.valid_until_s == now_s + 3600


def test_the_zone_named_is_one_inside_quiet_hours_now() -> None:
    """A +1 800 number's zones at 09:00 UTC: held until 22:00 UTC, and the zone named is Pago Pago
    (22:00 there), not Saipan (19:00 now), whose window opens while the row waits."""
    zones = ("America/New_York", "Pacific/Pago_Pago", "Pacific/Saipan", "Pacific/Guam")
    now_s = at("2026-12-07T09:00")
    verdict = judge(EVENING, zones, now_s)
    assert verdict.hold is not None
    assert verdict.hold.until_s == at("2026-12-07T22:00")
    assert verdict.hold.zone == "Pacific/Pago_Pago"


def test_the_quiet_hours_boundary_follows_daylight_saving_time() -> None:
    """The night of 2027-03-14 (US clocks go forward): quiet ends at 08:00 EDT, 12:00 UTC."""
    verdict = judge(EVENING, ("America/New_York",), at("2027-03-14T05:00"))
    assert verdict.hold is not None
    assert verdict.hold.until_s == at("2027-03-14T12:00")


def test_the_verdict_for_a_set_of_zones_is_kept_until_it_can_change() -> None:
    """Rows of one zone are judged once until 21:00, then again: held from then on."""
    clock = Clock(at("2026-12-07T20:59", NEW_YORK))
    quiet = QuietHours(EVENING, clock)
    assert quiet.hold(message("America/New_York", line=1)) is None
    assert quiet.hold(message("America/New_York", line=2)) is None
    clock.now_s = at("2026-12-07T21:00", NEW_YORK)
    held = quiet.hold(message("America/New_York", line=3))
    assert held is not None
    assert held.until_s == at("2026-12-08T08:00", NEW_YORK)
    assert quiet.held == 1
    assert quiet.first_until_s == held.until_s


def test_a_held_record_is_skipped_quiet_hours_with_the_zone_and_the_time_it_ends() -> None:
    """The record: skipped, quiet_hours, the zone as code, the end in local time and UTC."""
    quiet = QuietHours(EVENING, Clock(at("2026-12-07T23:00", NEW_YORK)))
    record = quiet.held_record(message("America/New_York"))
    assert record is not None
    assert record.status is Status.SKIPPED
    assert record.error is not None
    assert (record.error.kind, record.error.code) == (ErrorKind.QUIET_HOURS, "America/New_York")
    assert "until 2026-12-08 08:00 local, 2026-12-08 13:00 UTC" in record.error.message


def test_a_held_record_of_a_number_with_many_zones_names_them() -> None:
    """The record of a many-zone number says it was judged in each of them."""
    quiet = QuietHours(EVENING, Clock(at("2026-12-07T23:00", NEW_YORK)))
    record = quiet.held_record(message("America/New_York", "America/Chicago"))
    assert record is not None
    assert record.error is not None
    assert "zones are America/New_York, America/Chicago" in record.error.message


def test_the_summary_line_gives_the_held_rows_and_the_first_end() -> None:
    """Two rows held: the line counts them and gives the earlier end in UTC."""
    clock = Clock(at("2026-12-08T02:00", NEW_YORK))
    quiet = QuietHours(EVENING, clock)
    quiet.hold(message("America/New_York", line=1))
    quiet.hold(message("America/Los_Angeles", line=2))
    line = quiet.summary_line()
    assert line is not None
    assert "2 rows wait for them to end, the first at 2026-12-08 13:00 UTC" in line


def test_the_summary_line_gives_no_end_already_past() -> None:
    """A window ended while the run went on: the line says so and gives the next end ahead."""
    clock = Clock(at("2026-12-08T07:59", NEW_YORK))
    quiet = QuietHours(EVENING, clock)
    quiet.hold(message("America/New_York", line=1))
    quiet.hold(message("America/Los_Angeles", line=2))
    clock.now_s = at("2026-12-08T08:30", NEW_YORK)
    line = quiet.summary_line()
    assert line is not None
    assert "2 rows wait for them to end, some ended already, the next at 2026-12-08 16:00" in line
    clock.now_s = at("2026-12-08T12:00", NEW_YORK)
    assert "all of them ended already" in (quiet.summary_line() or "")


def test_no_summary_line_when_no_row_was_held() -> None:
    """Nothing held: no line."""
    quiet = QuietHours(EVENING, Clock(at("2026-12-07T12:00", NEW_YORK)))
    assert quiet.hold(message("America/New_York")) is None
    assert quiet.summary_line() is None


def test_a_number_gets_its_own_zone() -> None:
    """A New York number: America/New_York."""
    assert RowZones(None).zones("12125551234", {}) == ("America/New_York",)


def test_a_number_of_a_country_with_many_zones_gets_them_all() -> None:
    """An Australian mobile: every zone of Australia."""
    zones = RowZones(None).zones("61412345678", {})
    assert isinstance(zones, tuple)
    assert {"Australia/Perth", "Australia/Sydney"} <= set(zones)


def test_a_zone_column_overrides_the_number() -> None:
    """--tz-column's value wins over the number's zone; an empty one leaves the number's."""
    zones = RowZones("TZ")
    assert zones.zones("12125551234", {"tz": "Europe/Paris"}) == ("Europe/Paris",)
    assert zones.zones("12125551234", {"tz": " "}) == ("America/New_York",)


def test_a_zone_column_value_that_is_no_zone_is_a_row_error() -> None:
    """Mars/Olympus: invalid_input, unknown_time_zone, naming the value."""
    problem = RowZones("tz").zones("12125551234", {"tz": "Mars/Olympus"})
    assert isinstance(problem, RowError)
    assert (problem.kind, problem.code) == (ErrorKind.INVALID_INPUT, "unknown_time_zone")
    assert "'Mars/Olympus'" in problem.message


def test_a_number_with_no_known_zone_is_a_row_error_that_names_the_fix() -> None:
    """A +800 freephone number has no zone: the record points to --tz-column."""
    problem = RowZones(None).zones("80012345678", {})
    assert isinstance(problem, RowError)
    assert problem.code == "unknown_time_zone"
    assert "--tz-column" in problem.message


def test_a_queue_entry_carries_the_zones_and_an_older_entry_has_none() -> None:
    """A message's stream fields keep its zones; an entry written without them reads as ()."""
    sent = message("Australia/Perth", "Australia/Sydney")
    fields = dict(zip(ENTRY_FIELDS, message_fields(sent), strict=True))
    assert message_from(fields) == sent
    del fields["tz"]
    assert message_from(fields).time_zones == ()
