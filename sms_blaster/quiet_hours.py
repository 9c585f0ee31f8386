"""Quiet hours in each recipient's own time zone (`--quiet-hours 21:00-08:00`).

A row is judged just before its first request leaves, not when it is read or taken: a campaign of
hours crosses 21:00 in some zones while it runs, and a row taken for sending may wait for a rate
slot and a window place a while. (It is judged as it is taken too: a row inside quiet hours
already costs no rate slot.) A number whose country spans zones is judged in every one of
them and held while any of them is inside quiet hours (the strictest reading), until the first
instant none is. The window is judged by the local clock at each instant, so on the days the
clocks change a local time that happens twice is inside it both times, and one that is skipped
never is.

Judging costs a dictionary lookup a row: for each set of zones the answer is kept until the next
instant it can change (a window opening or closing in one of them, found in UTC, the clocks'
changes included), and computed again then.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import re
import time
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sms_blaster.errors import OptionValueError, UsageError
from sms_blaster.inputs import RowSource
from sms_blaster.models import ErrorKind, Message, Record, RowError, Status, column_key
from sms_blaster.settings import RunSettings

# ASCII digits only: `\d` would take Arabic-Indic or full-width digits as a time.
_WINDOW = re.compile(r"\s*([0-9]{1,2}):([0-9]{2})\s*-\s*([0-9]{1,2}):([0-9]{2})\s*")
_DAY_S = 86_400.0
# How far ahead to look for an hour outside quiet hours in every zone of a number (past it, the
# row is held and judged again an hour later).
_LOOK_AHEAD_S = 2 * _DAY_S
_NEVER_FREE_RETRY_S = 3600.0
# How far ahead to look for the next change of the answer in a zone: a window skipped on the day
# the clocks go forward is back the next day.
_CHANGE_SCAN_S = 4 * _DAY_S


@dataclass(frozen=True, slots=True)
class QuietWindow:
    """The local hours in which nothing is sent: from `start_min` (minutes after midnight) up to
    `end_min`; a window whose end comes before its start wraps midnight."""

    start_min: int
    end_min: int

    def is_quiet(self, minute_of_day: float) -> bool:
        if self.start_min < self.end_min:
            return self.start_min <= minute_of_day < self.end_min
        return minute_of_day >= self.start_min or minute_of_day < self.end_min

    def __str__(self) -> str:
        return f"{_clock(self.start_min)}-{_clock(self.end_min)}"


def parse_window(text: str) -> QuietWindow:
    """`--quiet-hours HH:MM-HH:MM`; raises UsageError for anything else."""
    window = _window(text)
    if isinstance(window, str):
        raise UsageError(f"--quiet-hours {text}: {window}")
    return window


def window_problem(text: str) -> str | None:
    """What is wrong with `text` as a window, with the fix; None for a good one."""
    window = _window(text)
    return window if isinstance(window, str) else None


def _window(text: str) -> QuietWindow | str:
    """The window `text` gives, or what is wrong with it (with the fix)."""
    match = _WINDOW.fullmatch(text)
    fix = "give HH:MM-HH:MM in the recipient's local time, e.g. 21:00-08:00"
    if match is None:
        return f"not a window; {fix}"
    start_h, start_m, end_h, end_m = map(int, match.groups())
    if start_h > 23 or end_h > 23 or start_m > 59 or end_m > 59:
        return f"not a time of day; {fix}"
    window = QuietWindow(start_h * 60 + start_m, end_h * 60 + end_m)
    if window.start_min == window.end_min:
        return f"the window is empty; {fix}"
    return window


@functools.cache
def iana_zones() -> frozenset[str]:
    """The IANA zone names of this machine's time zone data, read once (about 10 ms). Not every
    file zoneinfo opens is one: `localtime` is the machine's own zone, `Factory` no place, and
    `posixrules`, `right/...` and `posix/...` are aliases or leap-second variants."""
    return frozenset(zoneinfo.available_timezones() - _NOT_PLACES)


_NOT_PLACES = frozenset({"localtime", "Factory", "posixrules"})


def zone_change(window: QuietWindow, tz: dt.tzinfo, now_s: float) -> tuple[bool, float]:
    """(whether `now_s` is inside quiet hours in `tz`, the next instant that changes).

    Judged by the local clock, instant by instant: on the day the clocks go back, a local time
    of the hour that happens twice is inside the window both times; on the day they go forward,
    the local times skipped never happen, and the clock's jump opens or closes the window when
    it lands on the other side of an edge. So the answer can change only where the local clock
    reaches an edge of the window (once, or twice in a repeated hour) or where the zone's offset
    changes: every such instant, in UTC, is a candidate, and the first whose answer differs is
    the change. (Computing the edge as a local time on a date and converting it takes the first
    of two instants, and an instant that never was for a skipped one.)"""
    quiet = _is_quiet_at(window, tz, now_s)
    from_s = now_s
    while from_s - now_s < _CHANGE_SCAN_S:
        to_s = from_s + _DAY_S
        for change_s in _candidates(window, tz, from_s, to_s):
            if _is_quiet_at(window, tz, change_s) != quiet:
                return quiet, change_s
        from_s = to_s
    return quiet, from_s  # no change found: the answer holds at least until then


def _is_quiet_at(window: QuietWindow, tz: dt.tzinfo, at_s: float) -> bool:
    local = dt.datetime.fromtimestamp(at_s, tz)
    return window.is_quiet(
        local.hour * 60 + local.minute + (local.second + local.microsecond / 1e6) / 60
    )


def _candidates(window: QuietWindow, tz: dt.tzinfo, from_s: float, to_s: float) -> list[float]:
    """The instants in (`from_s`, `to_s`] at which the answer in `tz` may change, in order: the
    local clock at an edge of the window, and the zone's offset changing."""
    found = _offset_changes(tz, from_s, to_s)
    day = dt.datetime.fromtimestamp(from_s, tz).date()
    last = dt.datetime.fromtimestamp(to_s, tz).date()
    edges = [dt.time(minute // 60, minute % 60) for minute in (window.start_min, window.end_min)]
    while day <= last:
        for edge in edges:
            wall = dt.datetime.combine(day, edge)
            for fold in (0, 1):  # a time the clocks go back over happens twice
                at_s = wall.replace(tzinfo=tz, fold=fold).timestamp()
                # A skipped local time converts to an instant whose local time is another.
                happens = dt.datetime.fromtimestamp(at_s, tz).replace(tzinfo=None) == wall
                if happens and from_s < at_s <= to_s:
                    found.append(at_s)
        day += dt.timedelta(days=1)
    return sorted(set(found))


def _offset_changes(tz: dt.tzinfo, from_s: float, to_s: float) -> list[float]:
    """The instants in (`from_s`, `to_s`] (a day at most) at which `tz`'s UTC offset changes,
    each found to the second (zones change on whole seconds). A zone keeps an offset for weeks
    at least, so one the same at both ends did not change in between."""
    found: list[float] = []
    low_s, high_s = math.floor(from_s), math.ceil(to_s)
    low, high = _offset(tz, low_s), _offset(tz, high_s)
    while low != high:
        # The offset of `low_s` holds up to some second in (low_s, high_s]: find it.
        before_s, after_s = low_s, high_s
        while after_s - before_s > 1:
            middle_s = (before_s + after_s) // 2
            if _offset(tz, middle_s) == low:
                before_s = middle_s
            else:
                after_s = middle_s
        if from_s < after_s <= to_s:
            found.append(float(after_s))
        low_s, low = after_s, _offset(tz, after_s)  # then any other change after it
    return found


def _offset(tz: dt.tzinfo, at_s: int) -> dt.timedelta | None:
    return dt.datetime.fromtimestamp(at_s, tz).utcoffset()


@dataclass(frozen=True, slots=True)
class Hold:
    """Why a row waits: inside quiet hours in `zone` (of its zones quiet now, the one whose quiet
    hours end last), until `until_s` (None: no hour within two days is outside quiet hours in
    all its zones)."""

    zone: str
    until_s: float | None
    zones: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Verdict:
    hold: Hold | None
    valid_until_s: float


def judge(window: QuietWindow, zones: tuple[str, ...], now_s: float) -> _Verdict:
    """Whether a row for `zones` waits at `now_s`, and until when that answer holds."""
    tzs = [(name, zoneinfo.ZoneInfo(name)) for name in zones]
    changes = [(name, *zone_change(window, tz, now_s)) for name, tz in tzs]
    quiet = [(change_s, name) for name, is_quiet, change_s in changes if is_quiet]
    if not quiet:
        return _Verdict(None, min(change_s for _, _, change_s in changes))
    # Held until the first instant no zone is quiet: step to the latest end of the zones quiet
    # then, until none is (each step's interval is covered by a quiet zone). The record names
    # the zone quiet now whose quiet hours end last, not one whose window opens later.
    free_s, holder = max(quiet)
    while free_s - now_s < _LOOK_AHEAD_S:
        still = [
            (change_s, name)
            for name, tz in tzs
            for is_quiet, change_s in [zone_change(window, tz, free_s)]
            if is_quiet
        ]
        if not still:
            return _Verdict(Hold(holder, free_s, zones), free_s)
        free_s, _ = max(still)
    return _Verdict(Hold(holder, None, zones), now_s + _NEVER_FREE_RETRY_S)


class QuietHours:
    """The quiet-hours check of a run: `hold` judges a message now (cached per set of zones),
    and counts the rows held for the summary."""

    __slots__ = ("_clock", "_ends_s", "_verdicts", "held", "window")

    def __init__(self, window: QuietWindow, clock: Callable[[], float] = time.time) -> None:
        self.window = window
        self._clock = clock
        self._verdicts: dict[tuple[str, ...], _Verdict] = {}
        self.held = 0
        self._ends_s: set[float] = set()  # when the holds counted end (a few: one a zone set)

    def hold(self, message: Message) -> Hold | None:
        """Why `message` must wait now, or None to send it."""
        zones = message.time_zones
        if not zones:
            return None  # judged at preparation: a row with no zone never gets here
        now_s = self._clock()
        verdict = self._verdicts.get(zones)
        if verdict is None or now_s >= verdict.valid_until_s:
            verdict = self._verdicts[zones] = judge(self.window, zones, now_s)
        hold = verdict.hold
        if hold is not None:
            self.held += 1
            self._ends_s.add(hold.until_s if hold.until_s is not None else verdict.valid_until_s)
        return hold

    def held_record(self, message: Message) -> Record | None:
        """The record of `message` when it must wait now (skipped, `quiet_hours`), or None."""
        hold = self.hold(message)
        return None if hold is None else self.record(message, hold)

    def record(self, message: Message, hold: Hold) -> Record:
        """The record of `message` held by `hold`."""
        error = RowError(ErrorKind.QUIET_HOURS, hold.zone, self.describe(hold))
        return Record(
            message.line, message.to, Status.SKIPPED, message.client_ref, 0, (),
            message.segments, message.encoding, error=error, fingerprint=message.fingerprint,
        )  # fmt: skip

    def describe(self, hold: Hold) -> str:
        """The message of a held row's record: the window, the zone, until when."""
        text = f"inside quiet hours {self.window} in {hold.zone}: "
        if hold.until_s is None:
            text += "no hour within two days is outside them in every zone of the number"
        else:
            local = dt.datetime.fromtimestamp(hold.until_s, zoneinfo.ZoneInfo(hold.zone))
            text += f"waits until {local:%Y-%m-%d %H:%M} local, {utc_text(hold.until_s)}"
        if len(hold.zones) > 1:
            text += (
                f"; the number's zones are {', '.join(hold.zones)}: held while any of them "
                "is inside quiet hours"
            )
        return text + "; the next run sends it"

    @property
    def first_until_s(self) -> float | None:
        """The earliest end of the holds counted that is still ahead, or None."""
        now_s = self._clock()
        return min((end_s for end_s in self._ends_s if end_s > now_s), default=None)

    def summary_line(
        self, *, dry_run: bool = False, waiting: tuple[int, list[float]] | None = None
    ) -> str | None:
        """The summary's line on held rows, or None when none was held. A worker gives what
        `waiting` in Redis: how many, and the ends of the earliest (one past, one ahead)."""
        count, ends_s = (self.held, list(self._ends_s)) if waiting is None else waiting
        if not count:
            return None
        one = count == 1
        rows = "row" if one else "rows"
        verb = "would wait" if dry_run else "waits" if one else "wait"
        return (
            f"  quiet hours {self.window}: {count:,} {rows} {verb} for them to end, "
            f"{_ends_text(ends_s, self._clock())}; "
            + (
                "they wait in Redis for a worker then (a --follow worker, or the next run)"
                if waiting is not None
                else "they stay pending for the next run"
            )
        )


def _ends_text(ends_s: list[float], now_s: float) -> str:
    """When the waits end, as true at the end of a run: the earliest end still ahead, and
    whether some ended while it ran."""
    ahead_s = min((end_s for end_s in ends_s if end_s > now_s), default=None)
    if ahead_s is None:
        return "all of them ended already"
    if any(end_s <= now_s for end_s in ends_s):
        return f"some ended already, the next at {utc_text(ahead_s)}"
    return f"the first at {utc_text(ahead_s)}"


def utc_text(when_s: float) -> str:
    return f"{dt.datetime.fromtimestamp(when_s, dt.UTC):%Y-%m-%d %H:%M} UTC"


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


UNKNOWN_ZONE = "Etc/Unknown"  # phonenumbers' answer for a number it knows no zone of


class RowZones:
    """Each row's time zones: its --tz-column value when it has one, else its number's (by
    phonenumbers' time zone data: a zone, or the zones of its country when the number's own
    are not known)."""

    __slots__ = ("_column", "_known", "_parse", "_zones_for_country", "_zones_for_number")

    def __init__(self, column: str | None) -> None:
        # About 20 ms of import and its data: paid only by runs with --quiet-hours.
        import phonenumbers
        from phonenumbers import timezone

        self._column = None if column is None else column_key(column)
        self._parse = phonenumbers.parse
        self._zones_for_number = timezone.time_zones_for_number
        self._zones_for_country = timezone.time_zones_for_geographical_number
        self._known: dict[str, bool] = {}

    def zones(self, to: str, fields: Mapping[str, str]) -> tuple[str, ...] | RowError:
        """The zones of the row for number `to` (E.164 digits), or why there are none."""
        if self._column is not None:
            given = (fields.get(self._column) or "").strip()
            if given:
                if not self._is_zone(given):
                    return RowError(
                        ErrorKind.INVALID_INPUT,
                        "unknown_time_zone",
                        f"'{given}' is not an IANA time zone (e.g. America/New_York); fix the "
                        "row's time zone column or leave it empty to use the number's",
                    )
                return (given,)
        number = self._parse("+" + to)
        found = self._zones_for_number(number)
        if found == (UNKNOWN_ZONE,):
            found = self._zones_for_country(number)
        zones = tuple(name for name in found if self._is_zone(name))
        if not zones:
            return RowError(
                ErrorKind.INVALID_INPUT,
                "unknown_time_zone",
                "no time zone is known for this number, so quiet hours cannot be judged; "
                "give its zone in a column named by --tz-column",
            )
        return zones

    def _is_zone(self, name: str) -> bool:
        known = self._known.get(name)
        if known is None:
            known = self._known[name] = name != UNKNOWN_ZONE and name in iana_zones()
        return known


def quiet_window(settings: RunSettings, source: RowSource) -> QuietWindow | None:
    """--quiet-hours read, and --tz-column checked against the input's columns (a UsageError
    before anything is sent); None without --quiet-hours."""
    if settings.quiet_hours is None:
        if settings.tz_column is not None:
            raise UsageError("--tz-column needs --quiet-hours; give both, or neither")
        return None
    window = parse_window(settings.quiet_hours)
    column = settings.tz_column
    if column is not None and source.columns and column_key(column) not in source.columns:
        raise OptionValueError(
            "--tz-column",
            column,
            f"{source.name} has no such column (columns: {', '.join(source.names)}); "
            "name the time zone column",
        )
    return window
