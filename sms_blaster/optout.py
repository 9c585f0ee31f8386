"""The opt-out list (--suppress): numbers a campaign must never send to."""

from __future__ import annotations

from sms_blaster.errors import UsageError
from sms_blaster.inputs import InputFormat, open_input
from sms_blaster.prepare import normalise_number, pick_number_column


def load_suppressed(path: str | None, region: str | None) -> set[int]:
    """The numbers of an opt-out file (none without one), normalised as the campaign's are.

    The file is a plain list (one number a line; blank lines and `#` comments skipped) or a
    CSV/JSONL file with a number column. An entry that is not a valid number is an error: an
    opt-out that cannot be honoured must not pass unnoticed.
    """
    numbers: set[int] = set()
    if path is None:
        return numbers
    with open_input(path, InputFormat.AUTO) as source:
        columns = source.columns
        column = pick_number_column(columns, None)
        if column is None and len(columns) > 1:
            raise UsageError(
                f"{path}: no number column in the opt-out file (columns: "
                f"{', '.join(columns)}); use a plain list, one number a line"
            )
        if column is not None:
            for row in source:
                where = f"row {row.line}"
                if row.fields is None:
                    raise UsageError(f"{path}: {where}: {row.problem}")
                _add(numbers, row.fields.get(column, ""), region, path, where)
            return numbers
    # No number column: a plain list, read line by line so errors name the line in the file.
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as lines:
            for number, text in enumerate(lines, start=1):
                if not text.lstrip().startswith("#"):
                    _add(numbers, text, region, path, f"line {number}")
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the opt-out list ({exc.strerror})") from exc
    return numbers


def _add(numbers: set[int], value: str, region: str | None, path: str, where: str) -> None:
    if not value.strip():
        return
    number = normalise_number(value, region)
    if number is None:
        hint = "" if region else " (a national number needs --default-region)"
        raise UsageError(
            f"{path}: {where}: {value.strip()!r} is not a valid number{hint}; fix or remove it"
        )
    numbers.add(int(number))
