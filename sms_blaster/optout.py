"""The opt-out list (--suppress): numbers a campaign must never send to."""

from __future__ import annotations

from sms_blaster.errors import OptionValueError, UsageError
from sms_blaster.optouts.files import option_error, read_entries


def load_suppressed(path: str | None, region: str | None) -> set[int]:
    """The numbers of an opt-out file (none without one), normalised as the campaign's are.

    The file is a plain list (one number a line; blank lines and `#` comments skipped) or a
    CSV/JSONL file with a number column. An entry that is not a valid number is an error: an
    opt-out that cannot be honoured must not pass unnoticed.
    """
    if path is None:
        return set()
    try:
        entries = read_entries(path, region, source="suppress", now_s=0.0, with_fields=False)
        return {int(entry.number) for entry in entries}
    except OptionValueError:
        raise
    except UsageError as exc:
        raise option_error("--suppress", path, exc) from exc
