"""Opt-out lists as files: read (`--optouts FILE`, `--suppress`, `optouts import`) and written
(`optouts export`, `optouts list`).

A list is a CSV or JSONL file with a number column (`number`, `to`, `phone`, ... as a campaign's)
and, as `optouts export` writes them, `opted_out` (1/0; absent: 1), `at` (unix seconds), `source`
and `reason`; or a plain list, one number a line (blank lines and `#` comments skipped). Numbers
are normalised as a campaign's are (`--default-region` for national ones). An entry that cannot
be read is an error naming its line: an opt-out that cannot be honoured must not pass unnoticed.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import BinaryIO, TextIO

from sms_blaster.errors import OptionValueError, UsageError
from sms_blaster.inputs import InputFormat, RowSource, open_input
from sms_blaster.optouts.model import OptOut, phone_number
from sms_blaster.prepare import pick_number_column

COLUMNS = ("number", "opted_out", "at", "source", "reason")
_TRUE = frozenset({"1", "true", "yes", "y", "out"})
_FALSE = frozenset({"0", "false", "no", "n", "in"})


def read_entries(
    path: str,
    region: str | None,
    *,
    source: str,
    now_s: float,
    stdin: BinaryIO | None = None,
    with_fields: bool = True,
) -> list[OptOut]:
    """The entries of a list at `path` ("-": stdin). An entry without `at` gets `now_s`, one
    without `source` gets `source`; `with_fields=False` reads the numbers only (all opted out)."""
    try:
        return _read_entries(path, region, source, now_s, stdin, with_fields)
    except UsageError as exc:
        raise UsageError(_for_a_list(str(exc))) from exc


# The input reader's advice for text that is not in the encoding given: a list has no --encoding.
_ENCODING_ADVICE = re.compile(r"; use --encoding\b.*$")


def option_error(option: str, path: str, exc: UsageError) -> OptionValueError:
    """A problem with the list at `path` as the option that named it says it (`--suppress PATH:
    line 2: ...`), so that a path from the environment names its variable."""
    return OptionValueError(option, path, str(exc).removeprefix(f"{path}: "))


def _for_a_list(problem: str) -> str:
    return _ENCODING_ADVICE.sub("; save the opt-out list as UTF-8", problem)


def _read_entries(
    path: str,
    region: str | None,
    source: str,
    now_s: float,
    stdin: BinaryIO | None,
    with_fields: bool,
) -> list[OptOut]:
    data = None
    if path == "-":
        data = (stdin if stdin is not None else sys.stdin.buffer).read()
        opened = open_input(path, InputFormat.AUTO, stdin=io.BytesIO(data))
    else:
        opened = open_input(path, InputFormat.AUTO)
    reader = _Reader(path, region, source, now_s, with_fields)
    with opened as rows:
        column = pick_number_column(rows.columns, None)
        if column is None and len(rows.columns) > 1:
            raise UsageError(
                f"{path}: no number column in the opt-out file (columns: "
                f"{', '.join(rows.columns)}); use a plain list, one number a line"
            )
        if column is not None:
            return list(reader.from_rows(rows, column))
    # No number column: a plain list, read line by line so errors name the line in the file.
    if data is not None:
        return list(reader.from_lines(data.decode("utf-8-sig", errors="replace").splitlines()))
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as lines:
            return list(reader.from_lines(lines))
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the opt-out list ({exc.strerror})") from exc


class _Reader:
    __slots__ = ("_now_s", "_path", "_region", "_source", "_with_fields")

    def __init__(
        self, path: str, region: str | None, source: str, now_s: float, with_fields: bool
    ) -> None:
        self._path = path
        self._region = region
        self._source = source
        self._now_s = now_s
        self._with_fields = with_fields

    def from_rows(self, rows: RowSource, column: str) -> Iterator[OptOut]:
        for row in rows:
            where = f"row {row.line}"
            if row.fields is None:
                raise UsageError(f"{self._path}: {where}: {row.problem}")
            fields: Mapping[str, str] = row.fields if self._with_fields else {}
            entry = self._entry(row.fields.get(column, ""), fields, where)
            if entry is not None:
                yield entry

    def from_lines(self, lines: Iterable[str]) -> Iterator[OptOut]:
        for number, text in enumerate(lines, start=1):
            if not text.lstrip().startswith("#"):
                entry = self._entry(text, {}, f"line {number}")
                if entry is not None:
                    yield entry

    def _entry(self, value: str, fields: Mapping[str, str], where: str) -> OptOut | None:
        if not value.strip():
            return None
        number = phone_number(value, self._region)
        if number is None:
            hint = "" if self._region else " (a national number needs --default-region)"
            raise UsageError(
                f"{self._path}: {where}: {value.strip()!r} is not a valid number{hint}; "
                "fix or remove it"
            )
        return OptOut(
            number=number,
            opted_out=self._flag(fields.get("opted_out") or "1", where),
            at_s=self._time(fields.get("at") or "", where),
            source=(fields.get("source") or "").strip() or self._source,
            reason=(fields.get("reason") or "").strip(),
        )

    def _flag(self, value: str, where: str) -> bool:
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise UsageError(
            f"{self._path}: {where}: opted_out {value.strip()!r} is neither 1 nor 0; fix it"
        )

    def _time(self, value: str, where: str) -> float:
        if not value.strip():
            return self._now_s
        try:
            at_s = float(value)
        except ValueError:
            at_s = -1.0
        if not 0 <= at_s < math.inf:
            raise UsageError(
                f"{self._path}: {where}: at {value.strip()!r} is not a time in unix seconds; "
                "fix it or leave it empty (now)"
            )
        # A time after now counts as now, as an inbound message's does: an entry stamped in the
        # future (or in milliseconds by mistake) would otherwise win over every later change.
        return min(at_s, self._now_s)


def write_entries(entries: Iterable[OptOut], out: TextIO, fmt: InputFormat) -> int:
    """Write entries as CSV (with a header) or JSONL; how many."""
    count = 0
    if fmt is InputFormat.JSONL:
        for entry in entries:
            out.write(json.dumps(_row(entry), separators=(",", ":"), ensure_ascii=False) + "\n")
            count += 1
        return count
    writer = csv.writer(out, lineterminator="\n")
    # QUOTE_MINIMAL quotes a field holding the line terminator ("\n") but not a lone "\r",
    # which a reader takes as a line end: a row holding one has every field quoted.
    quoting = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)
    writer.writerow(COLUMNS)
    for entry in entries:
        values = _row(entry).values()
        (quoting if any("\r" in str(value) for value in values) else writer).writerow(values)
        count += 1
    return count


def _row(entry: OptOut) -> dict[str, object]:
    return {
        "number": entry.number,
        "opted_out": int(entry.opted_out),
        "at": round(entry.at_s, 3),
        "source": entry.source,
        "reason": entry.reason,
    }
