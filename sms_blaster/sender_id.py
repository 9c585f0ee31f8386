"""What a sender id is: a number of up to 15 digits or a name of up to 11 ASCII letters and
digits. One rule for `--from` and for every sender of a `--from-pool` file."""

from __future__ import annotations

import re

# What every network shows as a name: letters and digits; a space only between words, as
# carriers trim or refuse one at either end. Punctuation ('&', '=') breaks some networks.
_NAME_SENDER = re.compile(r"[A-Za-z0-9]+(?: [A-Za-z0-9]+)*")


def as_sent(sender: str) -> str:
    """A sender as the provider gets it: a number's digits (no '+', no spaces), or the name."""
    digits = sender.removeprefix("+").replace(" ", "")
    return digits if digits.isascii() and digits.isdigit() else sender


def problem(sender: str) -> str | None:
    """Why `sender` (as sent) is no sender id, or None when it is one."""
    if sender.isascii() and sender.isdigit():
        return None if len(sender) <= 15 else "a number sender has at most 15 digits"
    if len(sender) > 11 or not _NAME_SENDER.fullmatch(sender):
        return (
            "a name sender is at most 11 ASCII letters and digits, "
            "single spaces between words allowed; use such a name or a number"
        )
    return None
