"""What identifies a campaign, and the one rule for "is this later run the same campaign".

A campaign is kept by name: in a journal (`send`) or in Redis (`enqueue`, `worker`). A later run
under that name must agree with what the campaign recorded, or its rows would be other rows
under the same line numbers (another input, another template) or its answers another API's
(another provider). The backends word the refusal each their own way; the rule is this one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from sms_blaster.models import column_key
from sms_blaster.providers.names import canonical, read_name

# The advice of every refusal that names a new campaign: a new campaign sends every row of its
# input, so those an earlier run sent would go twice.
NEW_CAMPAIGN_ADVICE = (
    "A new --campaign NAME would send every row of its input again: give it only the rows not "
    "sent yet (the earlier runs' records say which)"
)


@dataclass(frozen=True, slots=True)
class CampaignParams:
    """What identifies a campaign; its id prefixes every client ref."""

    name: str
    campaign_id: str
    input: str
    text: str
    sender: str
    provider: str
    to_column: str
    default_region: str

    def __post_init__(self) -> None:
        # Kept as the provider's name is written now, whichever spelling named it.
        object.__setattr__(self, "provider", canonical(self.provider))

    def fields(self) -> dict[str, str]:
        """The values a later run must agree on, by field name."""
        return {name: getattr(self, name) for name in MUST_MATCH}

    def with_id(self, campaign_id: str) -> CampaignParams:
        return dataclasses.replace(self, campaign_id=campaign_id)


# The fields a later run must agree on, and the option (or argument) that sets each. How a run
# sends (--rate, --ttl, ...) is not among them: a resume may change it.
MUST_MATCH = {
    "input": "input",
    "text": "--text",
    "sender": "--from",
    "provider": "--provider",
    "to_column": "--to-column",
    "default_region": "--default-region",
}


@dataclass(frozen=True, slots=True)
class Mismatch:
    """The first field on which a later run differs from its campaign."""

    option: str  # as the user sets it: "--text", "input"
    recorded: str
    now: str


def mismatch(recorded: Mapping[str, object], now: Mapping[str, str]) -> Mismatch | None:
    """Where the run (`now`, the fields it knows) differs from what its campaign `recorded`; a
    field the campaign did not record counts as empty. None when they agree.

    Columns compare by key: a campaign that recorded `Phone` names the same column as `phone`;
    providers by name: one that recorded the older "vonage" names the SMS API as "vonage-sms"."""
    for field, option in MUST_MATCH.items():
        if field not in now:
            continue
        before = str(recorded.get(field) or "")
        if field == "to_column":
            same = column_key(before) == column_key(now[field])
        elif field == "provider":
            same = canonical(before) == canonical(now[field])
            if not same:  # as --provider spells them
                return Mismatch(option, _as_option(before), _as_option(now[field]))
        else:
            same = before == now[field]
        if not same:
            return Mismatch(option, before, str(now[field]))
    return None


def _as_option(provider: str) -> str:
    name = read_name(provider)
    return provider if name is None else name.option
