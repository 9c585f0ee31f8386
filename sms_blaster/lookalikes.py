"""Smart encoding: characters outside GSM-7 replaced by their GSM-7 look-alikes, when it pays.

One curly apostrophe makes a whole text UCS-2: 70 characters a part instead of 160, so a
one-part message can take three. The table below maps characters that have an obvious GSM-7 form
(typographic quotes, dashes, the ellipsis, odd spaces, full-width ASCII, Greek capitals that GSM
03.38 writes with Latin letters) to that form, and removes the invisible ones (zero-width space,
byte order mark, soft hyphen). It is our own, built from Unicode's look-alikes; the README shows
it. A character with no GSM-7 form (an emoji, ŵ, a CJK character, ł) is never touched, so a text
holding one stays UCS-2, and `auto` then leaves it whole unless the change still saves a part.

Two kinds of change happen only when the text then fits GSM-7 as a whole: removing the joiners
and direction marks (which an emoji sequence or an Arabic or Persian text needs) and composing a
decomposed accent (`e` + U+0301 into `é`, the same text): neither can matter to a text that ends
up in GSM-7, where no emoji or other script is left.

`smarten` decides per message: `auto` takes the replacement only when it lowers the number
of parts, `always` whenever the text changes (unless that would pass `--max-segments`), `never`
not at all. A text that is GSM-7 already is
the fast path: one check, nothing else. A text the replacement would leave empty or blank (only
zero-width spaces, soft hyphens and spaces) is no message: `leaves_blank` finds it, in every mode
but `never`, whether or not the replacement would save a part, and the row is not sent.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from decimal import Decimal
from enum import StrEnum
from typing import TypeVar

from sms_blaster.encoding import GSM7_ALL, TextInfo, analyse
from sms_blaster.models import Encoding

Amount = TypeVar("Amount", int, Decimal)


class SmartEncoding(StrEnum):
    """When look-alikes are replaced (`--smart-encoding`)."""

    AUTO = "auto"  # when it lowers the number of parts
    ALWAYS = "always"  # whenever the text has one
    NEVER = "never"


def _range(first: int, last: int, to: str) -> dict[str, str]:
    return {chr(code): to for code in range(first, last + 1)}


# Each group: the characters (by code point, named in the README's table) and what they become.
QUOTES: Mapping[str, str] = {
    "\u2018": "'",  # left single quotation mark
    "\u2019": "'",  # right single quotation mark (the curly apostrophe)
    "\u201a": "'",  # single low-9 quotation mark
    "\u201b": "'",  # single high-reversed-9 quotation mark
    "\u2032": "'",  # prime
    "\u2035": "'",  # reversed prime
    "\u02b9": "'",  # modifier letter prime
    "\u02bc": "'",  # modifier letter apostrophe
    "\u02c8": "'",  # modifier letter vertical line
    "\u00b4": "'",  # acute accent, typed as an apostrophe
    "\u0060": "'",  # grave accent (backtick), typed as an opening quote
    "\u2039": "'",  # single left-pointing angle quotation mark
    "\u203a": "'",  # single right-pointing angle quotation mark
    "\u201c": '"',  # left double quotation mark
    "\u201d": '"',  # right double quotation mark
    "\u201e": '"',  # double low-9 quotation mark
    "\u201f": '"',  # double high-reversed-9 quotation mark
    "\u2033": '"',  # double prime
    "\u2036": '"',  # reversed double prime
    "\u00ab": '"',  # left-pointing double angle quotation mark
    "\u00bb": '"',  # right-pointing double angle quotation mark
    "\u3003": '"',  # ditto mark
}
DASHES: Mapping[str, str] = {
    "\u2010": "-",  # hyphen
    "\u2011": "-",  # non-breaking hyphen
    "\u2012": "-",  # figure dash
    "\u2013": "-",  # en dash
    "\u2014": "-",  # em dash
    "\u2015": "-",  # horizontal bar
    "\u2212": "-",  # minus sign
    "\ufe58": "-",  # small em dash
    "\ufe63": "-",  # small hyphen-minus
}
PUNCTUATION: Mapping[str, str] = {
    "\u2026": "...",  # horizontal ellipsis
    "\u2025": "..",  # two dot leader
    "\u2024": ".",  # one dot leader
    "\u2022": "-",  # bullet
    "\u2043": "-",  # hyphen bullet
    "\u2023": ">",  # triangular bullet
    "\u2044": "/",  # fraction slash
}
SPACES: Mapping[str, str] = {
    "\t": " ",  # character tabulation
    "\u00a0": " ",  # no-break space
    "\u1680": " ",  # ogham space mark
    **_range(0x2000, 0x200A, " "),  # en quad .. hair space (en, em, thin, figure spaces)
    "\u202f": " ",  # narrow no-break space
    "\u205f": " ",  # medium mathematical space
    "\u3000": " ",  # ideographic space
    "\u0085": "\n",  # next line
    "\u2028": "\n",  # line separator
    "\u2029": "\n",  # paragraph separator
}
INVISIBLE: Mapping[str, str] = {
    "\u200b": "",  # zero width space
    "\u2060": "",  # word joiner
    "\ufeff": "",  # zero width no-break space (byte order mark)
    "\u00ad": "",  # soft hyphen
}
# Full-width forms of printable ASCII (U+FF01..U+FF5E) as ASCII; the full-width grave accent
# becomes an apostrophe, as the ASCII one does (GSM-7 has no backtick).
FULL_WIDTH: Mapping[str, str] = {
    chr(code): QUOTES.get(chr(code - 0xFEE0), chr(code - 0xFEE0)) for code in range(0xFF01, 0xFF5F)
}
# Letters and signs with an exact GSM-7 form: Greek capitals that look like Latin ones (GSM 03.38
# has only the ten that do not), and the symbols Unicode keeps apart from a GSM-7 letter.
_GREEK_AS_LATIN = (
    "\u0391\u0392\u0395\u0396\u0397\u0399\u039a"  # Alpha Beta Epsilon Zeta Eta Iota Kappa
    "\u039c\u039d\u039f\u03a1\u03a4\u03a5\u03a7"  # Mu Nu Omicron Rho Tau Upsilon Chi
)
LETTERS: Mapping[str, str] = {
    **dict(zip(_GREEK_AS_LATIN, "ABEZHIKMNOPTYX", strict=True)),
    "\u2126": "Ω",  # ohm sign
    "\u212a": "K",  # kelvin sign
    "\u212b": "Å",  # angstrom sign
    "\u2206": "Δ",  # increment
    "\u2211": "Σ",  # n-ary summation
    "\u220f": "Π",  # n-ary product
}
# Removed only when the text then fits GSM-7 (see the module's docstring).
JOINERS: Mapping[str, str] = {
    "\u200c": "",  # zero width non-joiner
    "\u200d": "",  # zero width joiner
    "\u200e": "",  # left-to-right mark
    "\u200f": "",  # right-to-left mark
}

LOOKALIKES: Mapping[str, str] = {
    **QUOTES, **DASHES, **PUNCTUATION, **SPACES, **INVISIBLE, **FULL_WIDTH, **LETTERS
}  # fmt: skip


# Anything the replacement could change: a look-alike, a joiner, or a combining accent (the GSM-7
# letters with an accent compose from U+0300..U+036F).
_CHANGEABLE = re.compile(
    "[" + "".join(map(re.escape, sorted({*LOOKALIKES, *JOINERS}))) + "\u0300-\u036f]"
)


def replace_lookalikes(text: str) -> str:
    """`text` with every look-alike in its GSM-7 form; what has none is kept as it is."""
    # Found by a scan in C, then each distinct one replaced at once: str.translate would look up
    # every character of the text in a dict (6 µs for 120 characters).
    found = set(_CHANGEABLE.findall(text))
    for char in found:
        replacement = LOOKALIKES.get(char)
        if replacement is not None:
            text = text.replace(char, replacement)
    rest = found.difference(LOOKALIKES)  # joiners and combining accents
    if rest:
        whole = unicodedata.normalize("NFC", text)
        for char in rest.intersection(JOINERS):
            whole = whole.replace(char, "")
        if GSM7_ALL.issuperset(whole):
            return whole
    return text


# What may vanish or turn into a space: a text holding any other character keeps something that
# shows, found by one scan in C (usually at its first character).
_SHOWS = re.compile(
    "[^\\s" + "".join(map(re.escape, sorted({*INVISIBLE, *JOINERS, *SPACES}))) + "]"
)


def leaves_blank(text: str, info: TextInfo, mode: SmartEncoding) -> bool:
    """Whether smart encoding under `mode` would turn `text` (whose `analyse` is `info`) into an
    empty or blank text: one of only invisible characters and spaces."""
    if info.encoding is Encoding.GSM7 or mode is SmartEncoding.NEVER or _SHOWS.search(text):
        return False
    return not replace_lookalikes(text).strip()


def smarten(
    text: str, info: TextInfo, mode: SmartEncoding, max_segments: int | None = None
) -> tuple[str, TextInfo] | None:
    """The text to send instead of `text` (whose `analyse` is `info`) under `mode`, and what it
    takes; None to send `text` as given.

    `always` may add parts (an ellipsis is one UCS-2 character and three GSM-7 ones), but never
    past `max_segments` (`--max-segments`) when the text as written fits it: that would fail a
    row that can be sent."""
    if info.encoding is Encoding.GSM7 or mode is SmartEncoding.NEVER:
        return None  # the fast path: nothing to replace, or not asked to
    replaced = replace_lookalikes(text)
    if replaced == text:
        return None
    smarter = analyse(replaced)
    if mode is SmartEncoding.AUTO and smarter.segments >= info.segments:
        return None
    if max_segments is not None and smarter.segments > max_segments >= info.segments:
        return None
    return replaced, smarter


def cost_saved(price: Decimal, segments: int, plain_segments: int) -> Decimal:
    """What smart encoding saved on a message sent in `segments` parts for `price` (all parts),
    that would have taken `plain_segments`: its price a part, times the parts saved."""
    if segments <= 0:
        return Decimal(0)
    return (price * (plain_segments - segments) / segments).quantize(price)


def saved_and_added(saving: Amount) -> tuple[Amount, Amount]:
    """A message's saving (parts or cost, `plain - sent`) as (saved, added): what smart encoding
    saved on it, or what `always` added to it. Totals keep the two apart, so that a part added on
    one message does not hide a part saved on another."""
    zero = saving * 0
    return (saving, zero) if saving >= 0 else (zero, -saving)
