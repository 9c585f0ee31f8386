"""From an input row to a message ready to send, or to the record that says why it is not sent.

Everything here is pure and runs once per row, before the queue: number normalisation (phonenumbers,
about 25 µs a row) stays off the send loop's critical path.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

import phonenumbers

from sms_blaster.encoding import analyse
from sms_blaster.models import ErrorKind, InputRow, Message, Record, RowError, Status
from sms_blaster.numberset import NumberSet

NUMBER_COLUMNS = ("to", "phone", "msisdn", "number", "mobile")
TEXT_COLUMN = "text"

_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_NUMBER_PUNCTUATION = re.compile(r"[\s().\-/]")


class TemplateError(ValueError):
    """A `--text` template that cannot be parsed."""


@dataclass(frozen=True, slots=True)
class Template:
    """A message text with `{column}` placeholders; `{{` and `}}` stand for literal braces."""

    literals: tuple[str, ...]  # one more than fields: literal, field, literal, field, …, literal
    fields: tuple[str, ...]

    def render(self, values: Mapping[str, str]) -> str:
        """The text for one row; raises KeyError naming a placeholder the row has no value for."""
        if not self.fields:
            return self.literals[0]
        pieces = [self.literals[0]]
        for field, literal in zip(self.fields, self.literals[1:], strict=True):
            pieces.append(values[field])
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
    return Template(tuple(literals), tuple(fields))


def pick_number_column(columns: Iterable[str], requested: str | None) -> str | None:
    """The column holding the number: the requested one, else the first usual name present."""
    present = set(columns)
    if requested is not None:
        return requested if requested in present else None
    return next((name for name in NUMBER_COLUMNS if name in present), None)


def normalise_number(raw: str, region: str | None) -> str | None:
    """E.164 digits without '+' for a valid number, else None.

    Digits without a '+' are also tried as an international number ("447911123456"), and a leading
    "00" as the international prefix, since lists exported from other tools are often written so.
    """
    candidate = raw.strip()
    number = _parse_valid(candidate, region)
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


class Preparer:
    """Turns rows into messages, or into final records for rows that must not be sent."""

    __slots__ = (
        "_campaign",
        "_max_segments",
        "_region",
        "_seen",
        "_suppressed",
        "_template",
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
    ) -> None:
        self._to_column = to_column
        self._template = template
        self._campaign = campaign
        self._region = default_region
        self._max_segments = max_segments
        self._suppressed = suppressed
        self._seen = NumberSet()

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
        raw_to = fields.get(self._to_column)
        if raw_to is None or not raw_to.strip():
            return self._invalid(
                line, raw_to or "", "missing_value", f"no value for '{self._to_column}'"
            )
        to = normalise_number(raw_to, self._region)
        if to is None:
            hint = "" if self._region else "; give it a country code or set --default-region"
            return self._invalid(line, raw_to, "invalid_number", f"not a valid phone number{hint}")
        text = self._text(fields)
        if text is None:
            missing = self._missing_field(fields)
            return self._invalid(line, to, "missing_value", f"no value for '{missing}'")
        if not text.strip():
            return self._invalid(line, to, "empty_text", "the message text is empty")
        info = analyse(text)
        segments, encoding = info.segments, info.encoding
        ref = self.client_ref(line)
        if self._max_segments is not None and segments > self._max_segments:
            error = RowError(
                ErrorKind.INVALID_INPUT,
                "too_long",
                f"the text needs {segments} parts, more than --max-segments {self._max_segments}",
            )
            return Record(line, to, Status.FAILED, ref, 0, (), segments, encoding, error=error)
        key = int(to)
        if key in self._suppressed:
            error = RowError(ErrorKind.SUPPRESSED, "suppressed", "number is on the opt-out list")
            return Record(line, to, Status.SKIPPED, ref, 0, (), segments, encoding, error=error)
        if not self._seen.add(key):
            error = RowError(ErrorKind.DUPLICATE, "duplicate", "number already in this campaign")
            return Record(line, to, Status.SKIPPED, ref, 0, (), segments, encoding, error=error)
        return Message(line, to, text, encoding, segments, ref)

    def _text(self, fields: Mapping[str, str]) -> str | None:
        if self._template is None:
            return fields.get(TEXT_COLUMN)
        try:
            return self._template.render(fields)
        except KeyError:
            return None

    def _missing_field(self, fields: Mapping[str, str]) -> str:
        if self._template is None:
            return TEXT_COLUMN
        return next(name for name in self._template.fields if name not in fields)

    def _invalid(self, line: int, to: str, code: str, message: str) -> Record:
        error = RowError(ErrorKind.INVALID_INPUT, code, message)
        return Record(line, to, Status.FAILED, self.client_ref(line), error=error)
