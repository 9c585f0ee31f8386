"""An opt-out as a value, the rule that orders two of them, and the change an inbound message makes.

Pure: no store, no clock. The list keeps one entry per number, the latest by the time of what
caused it (the message's own time when the provider gives one): a STOP retried by the provider, or
processed twice, changes nothing; a START sent after a STOP opts the number back in, whatever
order the two callbacks arrive in. At the same second an opt-out wins over an opt-in: when two
messages cannot be ordered, the number is not messaged.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass, field

from sms_blaster.keywords import DEFAULT_KEYWORDS, Intent, KeywordLists, Match, recognise
from sms_blaster.models import Receipt, ReceiptKind
from sms_blaster.prepare import normalise_number
from sms_blaster.providers.names import ProviderName, read_name

MANUAL = "manual"  # `optouts add` / `optouts remove`
IMPORT = "import"  # `optouts import`
TWILIO_UNSUBSCRIBED = "twilio-21610"  # a send answered 21610: the recipient had sent STOP
TWILIO_UNSUBSCRIBED_CODE = "21610"


def inbound_source(provider: str) -> str:
    """The source of a change an inbound message made, e.g. `inbound:twilio`."""
    return f"inbound:{provider}"


@dataclass(frozen=True, slots=True)
class OptOut:
    """One number's entry: out (True) or back in (False), since `at_s` (unix seconds), because of
    `source` (inbound:<provider>, twilio-21610, manual, import) and `reason` (the keyword, or a
    note)."""

    number: str  # E.164 digits, no '+'
    opted_out: bool
    at_s: float
    source: str
    reason: str = ""
    # The inbound message that caused it ("<provider>:<message id>"; "" for any other cause): a
    # message is applied once, so a retry or a replay of an old START cannot undo a later STOP.
    message: str = field(default="", compare=False)

    def supersedes(self, other: OptOut) -> bool:
        """Whether this entry replaces `other` (of the same number) in the list."""
        if self.at_s != other.at_s:
            return self.at_s > other.at_s
        return self.opted_out >= other.opted_out


@dataclass(frozen=True, slots=True)
class Changes:
    """Numbers whose entry changed after a `seq`: those out now, those back in, the last seq."""

    out: frozenset[int]
    back_in: frozenset[int]
    last_seq: int


# Where each provider's inbound message keeps its text, by the field names of its payload.
_TEXT_FIELD = {
    ProviderName.VONAGE_SMS: "text",
    ProviderName.VONAGE_MESSAGES: "text",
    ProviderName.TWILIO: "Body",
}


def inbound_text(receipt: Receipt) -> str | None:
    """The text of an inbound message, or None (not an inbound message, a binary one, or a later
    part of a concatenated one: only the first part can start with a keyword)."""
    if receipt.kind is not ReceiptKind.INBOUND:
        return None
    name = read_name(receipt.provider)
    field = None if name is None else _TEXT_FIELD.get(name)
    if field is None:
        return None
    try:
        fields = json.loads(receipt.payload)
    except ValueError:
        return None
    if not isinstance(fields, dict):
        return None
    if str(fields.get("concat", "")).lower() == "true" and str(fields.get("concat-part")) != "1":
        return None
    text = fields.get(field)
    if text is None and name is ProviderName.VONAGE_MESSAGES:
        text = _nested(fields, "message", "content", "text")  # v0.1
    return text if isinstance(text, str) else None


def _nested(fields: dict[str, object], *path: str) -> object:
    value: object = fields
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def keyword_of(receipt: Receipt, lists: KeywordLists = DEFAULT_KEYWORDS) -> Match | None:
    """The keyword an inbound message starts with, or None."""
    return recognise(inbound_text(receipt), lists)


def change_of(
    receipt: Receipt, received_at_s: float, lists: KeywordLists = DEFAULT_KEYWORDS
) -> OptOut | None:
    """The change an inbound message makes to the list: out for an opt-out keyword, back in for an
    opt-in one; None for any other message, and for a sender that is no phone number (a short
    code, a name), which no campaign can message."""
    match = keyword_of(receipt, lists)
    if match is None or match.intent is Intent.HELP:
        return None
    number = phone_number(receipt.sender or "")
    if number is None:
        return None
    return OptOut(
        number=number,
        opted_out=match.intent is Intent.OPT_OUT,
        at_s=_message_time_s(receipt.event_at, received_at_s),
        source=inbound_source(receipt.provider),
        reason=match.keyword,
        message=f"{receipt.provider}:{receipt.message_id}" if receipt.message_id else "",
    )


def phone_number(value: str, region: str | None = None) -> str | None:
    """E.164 digits of a number as a provider or a list gives it ("+4479…", "4479…", with
    `region` a national one), or None."""
    return normalise_number(value, region) if value.strip() else None


def _message_time_s(event_at: str | None, received_at_s: float) -> float:
    """The time an inbound keyword counts at: the provider's stamp, or the time received when
    there is none (Twilio) or it is later than that (a stamp in the future would win over every
    later STOP), in whole seconds: the stamps are, so a STOP and a START of one second tie
    whichever provider sent them, and at a tie the STOP wins."""
    event_s = _event_time_s(event_at) or received_at_s  # 0: the epoch, a placeholder
    return float(math.floor(min(event_s, received_at_s)))


def _event_time_s(event_at: str | None) -> float | None:
    """Unix seconds of a provider's timestamp: the SMS API's "2026-12-07 10:00:00" (UTC), the
    Messages API's ISO 8601; None when absent or unreadable (the time received is used)."""
    if not event_at:
        return None
    try:
        when = dt.datetime.fromisoformat(event_at.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()
