"""GSM-7 or UCS-2: which encoding a text needs, and how many SMS parts it takes.

GSM 03.38 basic characters cost one septet, extension characters (ESC + code) two. A text
with any other character goes as UCS-2, counted in UTF-16 code units (an emoji is two). A text
longer than one SMS is split into parts of 153 septets or 67 code units; a split never cuts an
escape pair or a surrogate pair: both are one Python character, and parts end between characters.
"""

from __future__ import annotations

from dataclasses import dataclass

from sms_blaster.models import Encoding

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")
GSM7_ALL = GSM7_BASIC | GSM7_EXTENSION

SINGLE_LIMIT = {Encoding.GSM7: 160, Encoding.UCS2: 70}
PART_LIMIT = {Encoding.GSM7: 153, Encoding.UCS2: 67}


@dataclass(frozen=True, slots=True)
class TextInfo:
    encoding: Encoding
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2)
    segments: int


def choose_encoding(text: str) -> Encoding:
    """GSM-7 when every character is in the GSM 03.38 tables, else UCS-2."""
    return Encoding.GSM7 if GSM7_ALL.issuperset(text) else Encoding.UCS2


def char_units(char: str, encoding: Encoding) -> int:
    """What one character costs: 1 or 2 septets, or 1 or 2 UTF-16 code units."""
    if encoding is Encoding.GSM7:
        return 2 if char in GSM7_EXTENSION else 1
    return 2 if ord(char) > 0xFFFF else 1


def count_units(text: str, encoding: Encoding) -> int:
    """The length of `text` in septets or UTF-16 code units."""
    if encoding is Encoding.GSM7:
        return len(text) + sum(text.count(c) for c in GSM7_EXTENSION if c in text)
    if text.isascii():
        return len(text)
    return len(text.encode("utf-16-le")) // 2


def split_parts(text: str, encoding: Encoding) -> list[str]:
    """The parts of `text`: one if it fits a single SMS, else greedy parts of 153/67 units."""
    if count_units(text, encoding) <= SINGLE_LIMIT[encoding]:
        return [text]
    limit = PART_LIMIT[encoding]
    parts: list[str] = []
    start = used = 0
    for index, char in enumerate(text):
        cost = char_units(char, encoding)
        if used + cost > limit:
            parts.append(text[start:index])
            start, used = index, 0
        used += cost
    parts.append(text[start:])
    return parts


def count_segments(text: str, encoding: Encoding, units: int | None = None) -> int:
    """How many SMS parts `text` takes in `encoding` (`units`: its length, when known)."""
    if units is None:
        units = count_units(text, encoding)
    if units <= SINGLE_LIMIT[encoding]:
        return 1
    if units == len(text):
        # No character costs two units, so none can straddle a boundary: plain division.
        return -(-units // PART_LIMIT[encoding])
    return len(split_parts(text, encoding))


def analyse(text: str) -> TextInfo:
    """Encoding, length in units and number of parts of a message text."""
    encoding = choose_encoding(text)
    units = count_units(text, encoding)
    return TextInfo(encoding, units, count_segments(text, encoding, units))
