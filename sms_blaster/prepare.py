"""From an input row to a message ready to send, or to the record that says why it is not sent.

Everything here is pure and runs once per row, before the queue: number normalisation (about 2 µs
a row in E.164 form, `e164`; phonenumbers' 30 µs otherwise) stays off the send loop's critical
path.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Protocol

import phonenumbers

from sms_blaster.e164 import fast_e164
from sms_blaster.encoding import analyse
from sms_blaster.lookalikes import SmartEncoding, leaves_blank, smarten
from sms_blaster.models import ErrorKind, InputRow, Message, Record, RowError, Status, column_key
from sms_blaster.numberset import NumberSet
from sms_blaster.pool import SenderPool

NUMBER_COLUMNS = ("to", "phone", "msisdn", "number", "mobile")
TEXT_COLUMN = "text"
# A concatenated SMS numbers its parts in one byte of its header: 255 at the most, whatever the
# provider (whose own limit is often far lower, and refuses what is longer).
MOST_PARTS = 255

_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_NUMBER_PUNCTUATION = re.compile(r"[\s().\-/]")
# All a phone number may hold: phonenumbers itself would drop an extension ("ext 5", "x5", "#5")
# or trailing words, or read letters as keypad digits, and the SMS would go to a number not given.
# The separators are phonenumbers' own punctuation (Unicode dashes and spaces, full-width
# brackets), less its "x" and "~", which it also reads as the start of an extension.
_SEPARATORS = (
    r"\s().\-/\[\]"
    "\u00ad\u200b\u2060\u2010-\u2015\u2212\u30fc\uff08\uff09\uff0d-\uff0f\uff3b\uff3d"
)
_NUMBER_TEXT = re.compile(f"[+\uff0b]?[\\d{_SEPARATORS}]*")
_NOT_NUMBER_TEXT = re.compile(f"[^\\d{_SEPARATORS}]+.*", re.DOTALL)
# A number column that went through a spreadsheet as a number: 447911123456.0 or 4.47911E+11.
_DECIMAL = re.compile(r"\+?\d+\.0+")
_EXPONENT = re.compile(r"\+?\d+(\.\d+)?[eE]\+?\d+")


_INVISIBLE_ONLY = (
    "the message text holds only invisible characters (zero-width spaces, soft hyphens) and "
    "spaces, which smart encoding removes; give a text to send"
)

_CONTROLS_ONLY = (
    "the message text holds only control characters (such as NUL) and spaces, which no handset "
    "shows; give a text to send"
)
# C0 and C1 control characters other than the white space ones (tab, line ends).
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _nothing_shows(text: str, mode: SmartEncoding) -> bool:
    """Whether `text` without its control characters is blank, or would leave blank (invisible
    characters only) under `mode`: a NUL alone would go as a one-part UCS-2 SMS of nothing."""
    shown = _CONTROL.sub("", text)
    return not shown.strip() or leaves_blank(shown, analyse(shown), mode)


class TemplateError(ValueError):
    """A `--text` template that cannot be parsed."""


@dataclass(frozen=True, slots=True)
class Template:
    """A message text with `{column}` placeholders; `{{` and `}}` stand for literal braces."""

    literals: tuple[str, ...]  # one more than fields: literal, field, literal, field, …, literal
    fields: tuple[str, ...]  # the placeholders as written
    keys: tuple[str, ...]  # the same, as columns are looked up (`column_key`)

    def render(self, values: Mapping[str, str]) -> str:
        """The text for one row, `values` keyed by `column_key`; raises KeyError for a
        placeholder the row has no value for."""
        if not self.keys:
            return self.literals[0]
        pieces = [self.literals[0]]
        for key, literal in zip(self.keys, self.literals[1:], strict=True):
            pieces.append(values[key])
            pieces.append(literal)
        return "".join(pieces)


def compile_template(text: str) -> Template:
    """Parse `text` once; raises TemplateError for a lone brace or an empty placeholder."""
    literals: list[str] = []
    fields: list[str] = []
    literal: list[str] = []
    position = 0
    for match in _TOKEN.finditer(text):
        literal.append(text[position : match.start()])
        position = match.end()
        token = match.group(0)
        if token in ("{{", "}}"):
            literal.append(token[0])
        elif match.group(1) is not None and match.group(1).strip():
            literals.append("".join(literal))
            literal = []
            fields.append(match.group(1).strip())
        elif match.group(1) is not None:
            raise TemplateError(f"empty placeholder '{{}}' at character {match.start() + 1}")
        else:
            raise TemplateError(
                f"lone '{token}' at character {match.start() + 1}; write '{token * 2}' for a brace"
            )
    literal.append(text[position:])
    literals.append("".join(literal))
    return Template(tuple(literals), tuple(fields), tuple(map(column_key, fields)))


def pick_number_column(columns: Iterable[str], requested: str | None) -> str | None:
    """The key (`column_key`) of the column holding the number among `columns` (keys): the
    requested one, else the first usual name present."""
    present = set(columns)
    if requested is not None:
        key = column_key(requested)
        return key if key in present else None
    return next((name for name in NUMBER_COLUMNS if name in present), None)


def normalise_number(raw: str, region: str | None) -> str | None:
    """E.164 digits without '+' for a valid number, else None.

    Digits without a '+' are also tried as an international number ("447911123456"), and a leading
    "00" as the international prefix, since lists exported from other tools are often written so.
    """
    candidate = raw.strip()
    if candidate[1:].isdecimal() and candidate[0] == "+":
        digits = fast_e164(candidate)  # the usual E.164 form: nothing to look for
        if digits is not None:
            return digits
        number = _parse_valid(candidate, None)
    elif _NUMBER_TEXT.fullmatch(candidate) and not _DECIMAL.fullmatch(candidate):
        number = _parse_valid(candidate, region)
    else:
        return None
    if number is None:
        digits = _NUMBER_PUNCTUATION.sub("", candidate)
        if digits.isdigit():
            if digits.startswith("00"):
                number = _parse_valid("+" + digits[2:], None)
            elif not digits.startswith("0"):
                number = _parse_valid("+" + digits, None)
    if number is None:
        return None
    return f"{number.country_code}{phonenumbers.national_significant_number(number)}"


def number_problem(raw: str, region: str | None) -> str:
    """Why `normalise_number` refused `raw`: the message of its record."""
    candidate = raw.strip()
    if _DECIMAL.fullmatch(candidate) or _EXPONENT.fullmatch(candidate):
        return (
            "not a valid phone number: written as a decimal number (as a spreadsheet writes a "
            "number column); write the number as text"
        )
    if not _NUMBER_TEXT.fullmatch(candidate):
        extra = _NOT_NUMBER_TEXT.search(candidate[1:] if candidate[:1] in "+\uff0b" else candidate)
        shown = extra.group(0) if extra else candidate
        if _has_extension(candidate, region):
            return (
                f"not a valid phone number: it has an extension ({shown!r}), which an SMS "
                "cannot reach; remove it"
            )
        return f"not a valid phone number: {shown!r} is not part of one; give only the number"
    country_code = _written_country_code(candidate)
    if country_code is not None:
        # It has a country code: asking for one would send the user looking in the wrong place.
        country = phonenumbers.region_code_for_country_code(country_code)
        if country == phonenumbers.UNKNOWN_REGION:
            return (
                "not a valid phone number: no country has the code it starts with; check its digits"
            )
        return f"not a valid phone number for {country} (+{country_code}); check its digits"
    if region:
        return "not a valid phone number"
    return "not a valid phone number; give it a country code or set --default-region"


def _written_country_code(text: str) -> int | None:
    """The country code `text` writes after a '+' or an international "00" (0: one no country
    has), or None when it writes none."""
    digits = _NUMBER_PUNCTUATION.sub("", text)
    if digits[:2] == "00" and digits[2:].isdigit():
        text = "+" + digits[2:]
    elif not text.startswith(("+", "\uff0b")):
        return None
    try:
        return phonenumbers.parse(text, None).country_code
    except phonenumbers.NumberParseException:
        return 0


def _has_extension(text: str, region: str | None) -> bool:
    try:
        return bool(phonenumbers.parse(text, region).extension)
    except phonenumbers.NumberParseException:
        return False


def _parse_valid(text: str, region: str | None) -> phonenumbers.PhoneNumber | None:
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    return number if phonenumbers.is_valid_number(number) else None


# At most 18 digits: a line SQLite can hold. A callback can carry any client ref, and a line out of
# range would fail the whole batch it is applied with.
_CLIENT_REF = re.compile(r"([0-9a-f]{12})-([1-9][0-9]{0,17})")


def parse_client_ref(ref: str | None) -> tuple[str, int] | None:
    """(campaign id, line) of a client ref sms-blaster made (`<campaign id>-<line>`), or None."""
    match = _CLIENT_REF.fullmatch(ref or "")
    return (match[1], int(match[2])) if match else None


def campaign_id(key: str) -> str:
    """A short, stable id for a campaign; client refs are `<campaign id>-<line>`."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


class TimeZones(Protocol):
    """Each row's time zones, for quiet hours (`quiet_hours.RowZones`)."""

    def zones(self, to: str, fields: Mapping[str, str]) -> tuple[str, ...] | RowError: ...


class Preparer:
    """Turns rows into messages, or into final records for rows that must not be sent."""

    __slots__ = (
        "_campaign",
        "_max_segments",
        "_pool",
        "_region",
        "_seen",
        "_smart_encoding",
        "_suppressed",
        "_template",
        "_time_zones",
        "_to_column",
    )

    def __init__(
        self,
        *,
        to_column: str,
        template: Template | None,
        campaign: str,
        default_region: str | None = None,
        max_segments: int | None = None,
        suppressed: AbstractSet[int] = frozenset(),
        smart_encoding: SmartEncoding = SmartEncoding.AUTO,
        time_zones: TimeZones | None = None,
        pool: SenderPool | None = None,
    ) -> None:
        self._time_zones = time_zones  # None: no quiet hours, no zones
        self._pool = pool  # each message's sender, chosen from a pool (--from-pool)
        self._to_column = column_key(to_column)
        self._template = template
        self._campaign = campaign
        self._region = default_region
        self._max_segments = max_segments
        self._suppressed = suppressed
        self._seen = NumberSet()
        self._smart_encoding = smart_encoding

    def client_ref(self, line: int) -> str:
        return f"{self._campaign}-{line}"

    def raw_to(self, row: InputRow) -> str:
        """The number as given, for the record of a row that was not prepared."""
        return (row.fields or {}).get(self._to_column, "")

    def prepare(self, row: InputRow) -> Message | Record:
        """A message ready to send, or the record for a row that is invalid or a duplicate."""
        line = row.line
        fields = row.fields
        if fields is None:
            return self._invalid(line, "", "malformed_row", row.problem or "row could not be read")
        raw_to = fields.get(self._to_column, "")
        problem = _value_problem(row, fields, self._to_column, self._to_column)
        if problem is not None:
            return self._invalid(line, raw_to, *problem)
        to = normalise_number(raw_to, self._region)
        if to is None:
            message = number_problem(raw_to, self._region)
            return self._invalid(line, raw_to, "invalid_number", message)
        text = self._text(row, fields)
        if isinstance(text, tuple):
            return self._invalid(line, to, *text)
        if not text.strip():
            return self._invalid(line, to, "empty_text", "the message text is empty")
        if _CONTROL.search(text) and _nothing_shows(text, self._smart_encoding):
            return self._invalid(line, to, "empty_text", _CONTROLS_ONLY)
        info = analyse(text)
        if leaves_blank(text, info, self._smart_encoding):
            return self._invalid(line, to, "empty_text", _INVISIBLE_ONLY)
        plain_segments = None
        smarter = smarten(text, info, self._smart_encoding, self._max_segments)
        if smarter is not None:
            plain_segments = info.segments
            text, info = smarter
        segments, encoding = info.segments, info.encoding
        ref = self.client_ref(line)
        if segments > (most := self._max_segments or MOST_PARTS):
            limit = "--max-segments" if self._max_segments else "a concatenated SMS has at most"
            error = RowError(
                ErrorKind.INVALID_INPUT,
                "too_long",
                f"the text needs {segments} parts, more than {limit} {most}",
            )
            return Record(line, to, Status.FAILED, ref, 0, (), segments, encoding, error=error,
                          plain_segments=plain_segments)  # fmt: skip
        key = int(to)
        if key in self._suppressed:
            error = RowError(ErrorKind.SUPPRESSED, "suppressed", "number is on the opt-out list")
            return Record(line, to, Status.SKIPPED, ref, 0, (), segments, encoding, error=error,
                          plain_segments=plain_segments)  # fmt: skip
        # Looked up (about 30 µs) only for a row not suppressed; before the duplicate check, so
        # that a row whose zone fails does not make a later row of its number a duplicate.
        zones: tuple[str, ...] = ()
        if self._time_zones is not None:
            found = self._time_zones.zones(to, fields)
            if isinstance(found, RowError):
                return Record(line, to, Status.FAILED, ref, 0, (), segments, encoding,
                              error=found, plain_segments=plain_segments)  # fmt: skip
            zones = found
        if not self._seen.add(key):
            error = RowError(ErrorKind.DUPLICATE, "duplicate", "number already in this campaign")
            return Record(line, to, Status.SKIPPED, ref, 0, (), segments, encoding, error=error,
                          plain_segments=plain_segments)  # fmt: skip
        sender = None
        if self._pool is not None:
            sender = self._pool.choose(to)
            if sender is None:
                message = "no sender of the pool serves this number's country (--from-pool)"
                return self._invalid(line, to, "no_sender", message)
        return Message(line, to, text, encoding, segments, ref, plain_segments=plain_segments,
                       time_zones=zones, sender=sender)  # fmt: skip

    def _text(self, row: InputRow, fields: Mapping[str, str]) -> str | tuple[str, str]:
        """The message text, or (code, message) for a value it needs that is missing or no text."""
        template = self._template
        if template is None:
            problem = _value_problem(row, fields, TEXT_COLUMN, TEXT_COLUMN)
            return fields[TEXT_COLUMN] if problem is None else problem
        for key, name in zip(template.keys, template.fields, strict=True):
            problem = _value_problem(row, fields, key, name)
            if problem is not None:
                return problem
        return template.render(fields)

    def _invalid(self, line: int, to: str, code: str, message: str) -> Record:
        error = RowError(ErrorKind.INVALID_INPUT, code, message)
        return Record(line, to, Status.FAILED, self.client_ref(line), error=error)


def _value_problem(
    row: InputRow, fields: Mapping[str, str], key: str, name: str
) -> tuple[str, str] | None:
    """(code, message) when the value a row needs is missing, blank, or no text; else None.

    One rule for every value and every format: a CSV cell that is empty, a JSONL key that is
    absent or null, and a value of only spaces are all missing.
    """
    value = fields.get(key)
    if not value or value.isspace():  # None too
        return "missing_value", f"no value for '{name}'"
    if row.invalid is not None and key in row.invalid:
        return "invalid_value", f"'{name}' is {row.invalid[key]}; give a string or a number"
    return None
