"""Quiet hours on the days the clocks change, judged on a fixed clock: a local time that happens
twice is inside the window both times, one that is skipped never is, the end of a wait is the
true next end of the window, and an answer is kept only until the instant it changes."""

from __future__ import annotations

import json

import pytest
import redis.asyncio as aioredis

from sms_blaster.distributed.queue import CampaignQueue
from sms_blaster.models import Message, Record
from sms_blaster.quiet_hours import QuietHours, judge, parse_window
from tests.test_quiet_hours import Clock, at, message

NEW_YORK = "America/New_York"
LONDON = "Europe/London"
LORD_HOWE = "Australia/Lord_Howe"  # +10:30, and +11:00 in summer: its clocks move 30 minutes


def held_until(window: str, zone: str, now_utc: str) -> float | None:
    """The end of the wait of a row of `zone` at `now_utc` (ISO, UTC), or None when it is sent."""
    verdict = judge(parse_window(window), (zone,), at(now_utc))
    return None if verdict.hold is None else verdict.hold.until_s


def free_until(window: str, zone: str, now_utc: str) -> float:
    """Until when a row of `zone` sent at `now_utc` would be sent: its answer's end."""
    verdict = judge(parse_window(window), (zone,), at(now_utc))
    assert verdict.hold is None
    return verdict.valid_until_s


# New York, 2027-11-07: at 06:00 UTC, 02:00 EDT becomes 01:00 EST; 01:00-01:59 happens twice.


@pytest.mark.parametrize(
    ("now_utc", "until_utc"),
    [
        ("2027-11-07T05:10", "2027-11-07T05:30"),  # 01:10 EDT, the first time
        ("2027-11-07T06:10", "2027-11-07T06:30"),  # 01:10 EST, the second time
        ("2027-11-07T06:29:55", "2027-11-07T06:30"),
    ],
)
def test_a_local_time_that_happens_twice_is_inside_the_window_both_times(
    now_utc: str, until_utc: str
) -> None:
    """01:00-01:30 in New York on the fall-back day: held in both, each until its own 01:30."""
    assert held_until("01:00-01:30", NEW_YORK, now_utc) == at(until_utc)


def test_the_answer_outside_the_window_between_its_two_times_ends_when_the_clock_goes_back() -> (
    None
):
    """01:59:52 EDT: sent, but only until 06:00 UTC, when 01:00 EST opens the window again."""
    assert free_until("01:00-01:30", NEW_YORK, "2027-11-07T05:59:52") == at("2027-11-07T06:00")


def test_a_row_judged_again_after_the_clock_went_back_is_held() -> None:
    """Judged at 05:59:52 UTC (sent), then at 06:00:05 UTC for the same zone: held until 06:30."""
    clock = Clock(at("2027-11-07T05:59:52"))
    quiet = QuietHours(parse_window("01:00-01:30"), clock)
    assert quiet.hold(message(NEW_YORK, line=1)) is None
    clock.now_s = at("2027-11-07T06:00:05")

    hold = quiet.hold(message(NEW_YORK, line=2))

    assert hold is not None
    assert hold.until_s == at("2027-11-07T06:30")
    assert quiet.first_until_s == at("2027-11-07T06:30")


def test_the_message_of_a_row_held_in_the_repeated_hour_names_the_same_day() -> None:
    """01:29:55 EST: waits until 01:30 local that day, 06:30 UTC, not a day later."""
    quiet = QuietHours(parse_window("01:00-01:30"), Clock(at("2027-11-07T06:29:55")))
    record = quiet.held_record(message(NEW_YORK))
    assert record is not None
    assert record.error is not None
    assert "waits until 2027-11-07 01:30 local, 2027-11-07 06:30 UTC" in record.error.message
    summary = quiet.summary_line()
    assert summary is not None
    assert "the first at 2027-11-07 06:30 UTC" in summary


def test_a_window_inside_the_repeated_hour_not_on_its_edges_opens_twice() -> None:
    """01:15-01:45: quiet 05:15-05:45 UTC (EDT) and 06:15-06:45 UTC (EST), not between."""
    window = "01:15-01:45"
    assert free_until(window, NEW_YORK, "2027-11-07T05:45") == at("2027-11-07T06:15")
    assert held_until(window, NEW_YORK, "2027-11-07T06:15") == at("2027-11-07T06:45")


def test_a_window_across_midnight_that_the_clock_goes_back_into_is_quiet_again() -> None:
    """22:00-01:15: over at 01:15 EDT (05:15 UTC); at 06:00 UTC the clock reads 01:00 EST,
    inside it again, until 01:15 EST (06:15 UTC)."""
    window = "22:00-01:15"
    assert held_until(window, NEW_YORK, "2027-11-07T05:00") == at("2027-11-07T05:15")
    assert free_until(window, NEW_YORK, "2027-11-07T05:15") == at("2027-11-07T06:00")
    assert held_until(window, NEW_YORK, "2027-11-07T06:00") == at("2027-11-07T06:15")


# New York, 2027-03-14: at 07:00 UTC, 02:00 EST becomes 03:00 EDT; 02:00-02:59 never happens.


def test_a_window_across_midnight_whose_end_is_skipped_ends_when_the_clock_jumps() -> None:
    """23:00-02:30: at 07:00 UTC the clock jumps from 01:59:59 to 03:00, past the end."""
    assert held_until("23:00-02:30", NEW_YORK, "2027-03-14T06:00") == at("2027-03-14T07:00")


def test_a_window_whose_start_is_skipped_opens_when_the_clock_jumps_into_it() -> None:
    """02:30-04:00: at 07:00 UTC the clock jumps to 03:00, inside it, until 04:00 EDT."""
    window = "02:30-04:00"
    assert free_until(window, NEW_YORK, "2027-03-14T06:30") == at("2027-03-14T07:00")
    assert held_until(window, NEW_YORK, "2027-03-14T07:00") == at("2027-03-14T08:00")


def test_a_window_wholly_skipped_holds_nothing_that_day() -> None:
    """02:10-02:40 never happens on 2027-03-14: sent, until 02:10 EDT the next day."""
    assert free_until("02:10-02:40", NEW_YORK, "2027-03-14T06:30") == at("2027-03-15T06:10")


# London: 2027-03-28 01:00 GMT becomes 02:00 BST; 2027-10-31 02:00 BST becomes 01:00 GMT.


def test_london_spring_forward_a_wait_ends_when_the_clock_jumps_past_the_window() -> None:
    """00:30-01:30 on 2027-03-28: held at 00:45 UTC until 01:00 UTC (02:00 BST), not 01:30."""
    quiet = QuietHours(parse_window("00:30-01:30"), Clock(at("2027-03-28T00:45")))
    record = quiet.held_record(message(LONDON))
    assert record is not None
    assert record.error is not None
    assert "waits until 2027-03-28 02:00 local, 2027-03-28 01:00 UTC" in record.error.message


def test_london_fall_back_the_window_opens_again_in_the_repeated_hour() -> None:
    """01:00-01:30 on 2027-10-31: quiet 00:00-00:30 UTC (BST) and 01:00-01:30 UTC (GMT)."""
    window = "01:00-01:30"
    assert held_until(window, LONDON, "2027-10-31T00:10") == at("2027-10-31T00:30")
    assert free_until(window, LONDON, "2027-10-31T00:45") == at("2027-10-31T01:00")
    assert held_until(window, LONDON, "2027-10-31T01:10") == at("2027-10-31T01:30")


# Lord Howe: 2027-04-04 02:00 (+11) becomes 01:30 (+10:30), at 15:00 UTC the day before;
# 2027-10-03 02:00 (+10:30) becomes 02:30 (+11), at 15:30 UTC the day before.


def test_lord_howe_half_hour_fall_back_repeats_the_window() -> None:
    """01:30-01:45: quiet 14:30-14:45 UTC (+11) and 15:00-15:15 UTC (+10:30)."""
    window = "01:30-01:45"
    assert held_until(window, LORD_HOWE, "2027-04-03T14:35") == at("2027-04-03T14:45")
    assert free_until(window, LORD_HOWE, "2027-04-03T14:50") == at("2027-04-03T15:00")
    assert held_until(window, LORD_HOWE, "2027-04-03T15:05") == at("2027-04-03T15:15")


def test_lord_howe_half_hour_spring_forward_jumps_into_the_window() -> None:
    """02:15-03:00: at 15:30 UTC the clock jumps from 01:59:59 to 02:30, inside it, until 03:00
    (+11), 16:00 UTC."""
    window = "02:15-03:00"
    assert free_until(window, LORD_HOWE, "2027-10-02T15:20") == at("2027-10-02T15:30")
    assert held_until(window, LORD_HOWE, "2027-10-02T15:30") == at("2027-10-02T16:00")


def test_a_number_with_many_zones_waits_until_none_is_quiet_across_a_change() -> None:
    """01:00-01:30 for New York and Chicago on 2027-11-07, at 06:10 UTC (01:10 EST, the second
    time, and 01:10 CDT, the first): held until 06:30 UTC, when both end, not a day later."""
    zones = (NEW_YORK, "America/Chicago")
    verdict = judge(parse_window("01:00-01:30"), zones, at("2027-11-07T06:10"))
    assert verdict.hold is not None
    assert verdict.hold.until_s == at("2027-11-07T06:30")


async def test_a_worker_puts_a_row_off_until_the_true_end_of_the_repeated_window(
    redis_url: str,
) -> None:
    """A worker at 06:29:55 UTC on 2027-11-07: the row's ready time in the delayed set is 06:30
    UTC, when 01:00-01:30 EST ends, not a day later."""
    client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        queue = CampaignQueue(client, "dst", worker="w1")
        await queue.ensure_group()
        await client.hset(queue.keys.meta, mapping={"campaign_id": "dst", "done": "1"})
        await queue.add([message(NEW_YORK)])
        claimed = await queue.claim()
        assert isinstance(claimed, Message)
        queue.quiet = QuietHours(parse_window("01:00-01:30"), Clock(at("2027-11-07T06:29:55")))
        held = queue.held_record(claimed)
        assert held is not None
        published: list[Record] = []

        queue.settle(held, published.append)
        await queue.writes_done()

        assert published == []
        [member] = [str(member) for member in await client.zrange(queue.keys.delayed, 0, -1)]
        assert json.loads(member)[0] == "1"
        assert await client.zscore(queue.keys.delayed, member) == at("2027-11-07T06:30") * 1000
    finally:
        await client.aclose()
