"""The providers' names: the one list, as journals, Redis campaigns, receipts and the simulator
write them, and as `--provider` spells them.

The Vonage SMS API had two names: "vonage" when sending (the `--provider` value, which journals
and Redis campaigns stored) and "vonage-sms" when receiving. It is written "vonage-sms" now;
"vonage" is still what `--provider` takes, and is still read wherever a name was stored, so a
campaign started before resumes and reports as it did.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

_VONAGE_OPTION: Final = "vonage"


class ProviderName(StrEnum):
    """A provider; `ProviderName("vonage")` is the SMS API too (the older spelling, read only)."""

    VONAGE_SMS = "vonage-sms"
    VONAGE_MESSAGES = "vonage-messages"
    TWILIO = "twilio"

    @classmethod
    def _missing_(cls, value: object) -> ProviderName | None:
        return cls.VONAGE_SMS if value == _VONAGE_OPTION else None

    @property
    def option(self) -> str:
        """How `--provider` spells it."""
        return _VONAGE_OPTION if self is ProviderName.VONAGE_SMS else self.value


# What `--provider` takes, in the order its help lists them.
OPTION_NAMES: Final = tuple(name.option for name in ProviderName)


def read_name(stored: str) -> ProviderName | None:
    """The provider a stored name (either spelling) means; None for a name that is none."""
    try:
        return ProviderName(stored)
    except ValueError:
        return None


def canonical(stored: str) -> str:
    """A stored name as it is written now; anything else as it is."""
    name = read_name(stored)
    return stored if name is None else name.value


def receipts_per_part(stored: str) -> bool:
    """Whether the provider sends a receipt per message part (the Vonage SMS API does)."""
    return read_name(stored) is ProviderName.VONAGE_SMS
