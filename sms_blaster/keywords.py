"""What an inbound message asks for: out (STOP), back in (START) or help (HELP), by its keyword.

Pure: the text of a message and the lists in, an `Intent` or None out. The keyword is the whole
message or its first word, any case, trimmed, with punctuation after it tolerated ("Stop.",
"STOP please", " stop!"); a keyword further on ("please stop") is not one, as carriers and
providers read it (Twilio's defaults are the defaults here).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from enum import StrEnum

OPT_OUT_DEFAULTS = ("STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT")
OPT_IN_DEFAULTS = ("START", "YES", "UNSTOP")
HELP_DEFAULTS = ("HELP", "INFO")

# The first word: letters and digits (a keyword holds no space); what follows it must not be one.
_FIRST_WORD = re.compile(r"\s*(\w+)", re.UNICODE)
_KEYWORD = re.compile(r"\w+", re.UNICODE)
# Characters a handset may add that show nothing: zero-width (space, joiners, word joiner), the
# byte order mark, the soft hyphen, bidirectional marks and isolates. Dropped before matching.
_INVISIBLE = re.compile("[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")


class Intent(StrEnum):
    """What a keyword asks for."""

    OPT_OUT = "opt_out"
    OPT_IN = "opt_in"
    HELP = "help"


@dataclass(frozen=True, slots=True)
class KeywordLists:
    """The keywords of each intent, upper case; a word in two lists counts for the first of
    out, in, help (an opt-out is never lost to a misconfigured list)."""

    opt_out: tuple[str, ...] = OPT_OUT_DEFAULTS
    opt_in: tuple[str, ...] = OPT_IN_DEFAULTS
    help: tuple[str, ...] = HELP_DEFAULTS

    def intent(self, word: str) -> Intent | None:
        """The intent of one keyword (any case), or None."""
        upper = word.upper()
        if upper in self.opt_out:
            return Intent.OPT_OUT
        if upper in self.opt_in:
            return Intent.OPT_IN
        if upper in self.help:
            return Intent.HELP
        return None


DEFAULT_KEYWORDS = KeywordLists()


@dataclass(frozen=True, slots=True)
class Match:
    """A recognised keyword: what it asks for, and the keyword as configured (upper case)."""

    intent: Intent
    keyword: str


def recognise(text: str | None, lists: KeywordLists = DEFAULT_KEYWORDS) -> Match | None:
    """The keyword the message starts with (alone, or as its first word), or None."""
    if not text:
        return None
    # NFKC: full-width letters (U+FF33...) are the letters they show; an accent, composed or not,
    # stays a letter of its own (stoṕ is another word).
    found = _FIRST_WORD.match(unicodedata.normalize("NFKC", _INVISIBLE.sub("", text)))
    if found is None:
        return None
    word = found[1]
    intent = lists.intent(word)
    return None if intent is None else Match(intent, word.upper())


def parse_list(value: str, option: str) -> tuple[str, ...]:
    """Comma-separated keywords, upper case; ValueError naming `option` for a bad one."""
    words = [word.strip() for word in value.split(",")]
    words = [word for word in words if word]
    if not words:
        raise ValueError(f"{option}: give at least one keyword, e.g. {option} STOP,QUIT")
    for word in words:
        if not _KEYWORD.fullmatch(word):
            raise ValueError(
                f"{option}: {word!r} is not one word (letters and digits only); "
                "separate keywords with commas"
            )
    return tuple(dict.fromkeys(word.upper() for word in words))
