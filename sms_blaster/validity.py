"""The validity period (`--ttl`): how long a provider keeps trying to deliver a message.

A one-time code that arrives after a day is worse than none: with a validity period the provider
gives up on a message it could not deliver in time, and its receipt says `expired`. Each provider
takes it in its own field and unit, within its own bounds:

    | provider              | field            | unit | bounds              | without it |
    |-----------------------|------------------|------|---------------------|------------|
    | Vonage SMS API        | `ttl`            | ms   | 20 s to 7 days      | 72 h       |
    | Vonage Messages API   | `ttl`            | s    | 20 s to 7 days      | 72 h       |
    | Twilio                | `ValidityPeriod` | s    | 1 s to 10 h         | 10 h       |

A value outside the chosen provider's bounds is refused before anything is sent, naming the bounds.
Pure: the duration parser, the table and the check.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from sms_blaster.providers.names import ProviderName

_UNITS_S: Final = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
# Units largest first, each at most once: 1d12h, 1h30m, 90s, 45m30s; or a bare number of seconds.
# ASCII digits only: `\d` would read Arabic-Indic or full-width digits as these.
_DURATION = re.compile(r"(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?|([0-9]+)")
_GROUP_UNITS_S: Final = (*_UNITS_S.values(), 1)
# A billion seconds is 31 years: a longer number is a typo, and one of thousands of digits would
# meet Python's limit on reading long numbers.
_MOST_DIGITS: Final = 9


def parse_duration_s(text: str) -> int:
    """`90s`, `30m`, `4h`, `1d`, combinations largest unit first (`1h30m`), or a bare number of
    seconds; whole seconds above zero. Raises ValueError saying what to give instead."""
    value = text.strip().lower()
    shown = repr(text) if len(text) <= 20 else repr(text[:20]) + "…"
    match = _DURATION.fullmatch(value)
    if not value or match is None:
        raise ValueError(
            f"{shown} is not a duration; give whole units largest first, e.g. 90s, 30m, "
            "4h, 1d or 1h30m (a bare number is seconds)"
        )
    if any(len(amount) > _MOST_DIGITS for amount in match.groups() if amount):
        raise ValueError(
            f"{shown} has too many digits for a duration; give one of at most "
            f"{duration_text(LONGEST_S)}, e.g. 4h"
        )
    seconds = sum(
        int(amount) * unit_s
        for amount, unit_s in zip(match.groups(), _GROUP_UNITS_S, strict=True)
        if amount
    )
    if seconds <= 0:
        raise ValueError(f"{text!r} is no time at all; give a duration above zero, e.g. 4h")
    return seconds


def duration_text(seconds: int) -> str:
    """A whole number of seconds as `parse_duration_s` reads it, in the fewest units: `10h`,
    `7d`, `1h30m`, `20s`."""
    parts = []
    rest = seconds
    for unit, unit_s in _UNITS_S.items():
        amount, rest = divmod(rest, unit_s)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts) or "0s"


@dataclass(frozen=True, slots=True)
class TtlBounds:
    """What one provider takes as a validity period, and how it names it."""

    provider: str  # as an error names it: "Twilio"
    field: str  # the request's field
    min_s: int
    max_s: int
    default_s: int  # what the provider keeps a message without the field
    in_ms: bool = False  # the field counts milliseconds

    def value(self, ttl_s: int) -> int:
        """`ttl_s` in the field's unit."""
        return ttl_s * 1000 if self.in_ms else ttl_s

    def as_sent(self, ttl_s: int) -> str:
        """The field as a request carries it: `ttl=14400000`, `ValidityPeriod=14400`."""
        return f"{self.field}={self.value(ttl_s)}"

    def problem(self, ttl_s: int) -> str | None:
        """Why the provider cannot take `ttl_s`, and what to give; None when it can."""
        if ttl_s > self.max_s:
            most = duration_text(self.max_s)
            return (
                f"{self.provider} keeps a message at most {_shown(self.max_s)}; give {most} or less"
            )
        if ttl_s < self.min_s:
            least = duration_text(self.min_s)
            return (
                f"{self.provider} keeps a message at least {_shown(self.min_s)}; "
                f"give {least} or more"
            )
        return None


def _shown(seconds: int) -> str:
    """`10h (36000 s)`; `20s`."""
    text = duration_text(seconds)
    return text if seconds < 60 else f"{text} ({seconds} s)"


BOUNDS: Final = {
    ProviderName.VONAGE_SMS: TtlBounds(
        "the Vonage SMS API", "ttl", 20, 604_800, 259_200, in_ms=True
    ),
    ProviderName.VONAGE_MESSAGES: TtlBounds("the Vonage Messages API", "ttl", 20, 604_800, 259_200),
    ProviderName.TWILIO: TtlBounds("Twilio", "ValidityPeriod", 1, 36_000, 36_000),
}
# The longest any provider keeps a message.
LONGEST_S: Final = max(bounds.max_s for bounds in BOUNDS.values())


def any_provider_problem(ttl_s: int) -> str | None:
    """Why no provider can take `ttl_s`, for a campaign whose provider is not chosen yet
    (`enqueue`: its workers choose); None when some provider can."""
    if ttl_s <= LONGEST_S:
        return None
    longest = duration_text(LONGEST_S)
    return f"no provider keeps a message longer than {_shown(LONGEST_S)}; give {longest} or less"


def as_sent(provider: ProviderName, ttl_s: int) -> str:
    """`4h (Twilio ValidityPeriod=14400)`: the validity period, and how the request carries it."""
    bounds = BOUNDS[provider]
    return f"{duration_text(ttl_s)} ({bounds.provider} {bounds.as_sent(ttl_s)})"


def default_text(provider: ProviderName) -> str:
    """`72 h`: how long `provider` keeps a message without a validity period."""
    return f"{BOUNDS[provider].default_s // 3600} h"
