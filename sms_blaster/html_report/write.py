"""`report --html FILE`: the page of a journal's campaigns, written to FILE or stdout.

A file is written whole or not at all (a temporary file beside it, then renamed over it), so a
page being looked at is never half a page. A FIFO or a character device (`/dev/stdout`, a
terminal) is written in place: renaming over it would replace it with a regular file. A path
that cannot be written, is the journal being read or a file kept beside it, or is another kind
of file (a block device, a socket) is a UsageError (exit 2), found before the journal is read.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import time
from collections.abc import Sequence
from typing import TextIO

from sms_blaster.errors import OutputError, UsageError
from sms_blaster.html_report.model import CampaignView, Count, ReceiptsOnly
from sms_blaster.html_report.page import render_page
from sms_blaster.kept_files import journal_files, same_file

STDOUT = "-"


def check_target(html_path: str, journal: str | None = None) -> None:
    """Raise UsageError when `html_path` cannot be written (stdout always can), or is `journal`,
    a file kept beside it, or the input it was named after."""
    if html_path == STDOUT:
        return
    if journal is not None:
        for what, path in _read_files(journal):
            if same_file(html_path, path):
                raise UsageError(
                    f"--html {html_path}: that is {what} ({path}); write the page elsewhere"
                )
    if _in_place(html_path):
        return
    directory = os.path.dirname(os.path.realpath(html_path))
    if os.path.isdir(html_path):
        raise _unwritable(html_path, "it is a directory")
    if os.path.exists(html_path) and not os.path.isfile(html_path):
        raise _unwritable(html_path, "it is neither a regular file, a FIFO nor a terminal")
    if not os.path.isdir(directory):
        raise _unwritable(html_path, f"no such directory {directory}")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise _unwritable(html_path, f"cannot write in {directory}")


def write_page(
    views: Sequence[CampaignView],
    title: str,
    html_path: str,
    stdout: TextIO,
    receipts: ReceiptsOnly | None = None,
) -> None:
    """Render the page of `views` (or `receipts`) and write it to `html_path` (`-`: `stdout`)."""
    page = render_page(views, title, time.time(), receipts)
    if html_path == STDOUT:
        try:
            stdout.write(page)
            stdout.flush()  # a reader gone (`| head`) is found here, not by the interpreter's exit
        except OSError as exc:
            raise OutputError(f"cannot write the report ({exc.strerror or exc})") from exc
        return
    try:
        if _in_place(html_path):
            with open(html_path, "w", encoding="utf-8") as stream:
                stream.write(page)
            return
        _replace(html_path, page)
    except OSError as exc:
        raise _unwritable(html_path, exc.strerror or str(exc)) from exc


def _replace(html_path: str, page: str) -> None:
    """Write `page` beside the file `html_path` leads to, then rename it over that file (a
    symlink stays a symlink)."""
    real_path = os.path.realpath(html_path)
    directory = os.path.dirname(real_path)
    handle, temporary = tempfile.mkstemp(prefix=".report-", suffix=".html", dir=directory)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(page)
        os.chmod(temporary, 0o644)  # a page to share, not a secret (mkstemp makes it 0600)
        os.replace(temporary, real_path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _in_place(html_path: str) -> bool:
    """A FIFO or a character device (a terminal, /dev/null), or anything under /dev or /proc
    (/dev/stdout leads to whatever stdout is): written as it is."""
    if html_path.startswith(("/dev/", "/proc/")):
        return True
    try:
        mode = os.stat(html_path).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)


def _read_files(journal: str) -> list[tuple[str, str]]:
    """The journal, the files kept beside it, and the input a `<input>.journal` is named after."""
    files = journal_files(journal)
    if journal.endswith(".journal"):
        files.append(("the campaign's input", journal.removesuffix(".journal")))
    return files


def write_journal_page(path: str, campaign: str | None, html_path: str, stdout: TextIO) -> None:
    """`report JOURNAL --html FILE`: every campaign of the journal (or `campaign`) on one page."""
    from sms_blaster.journal.report_data import load_views

    check_target(html_path, path)
    views = load_views(path, campaign)
    # No campaign: a receiver's store, perhaps. Say what it holds, as the text report does.
    receipts = None if views else _receipts_only(path)
    write_page(views, path, html_path, stdout, receipts)


def _receipts_only(path: str) -> ReceiptsOnly:
    from sms_blaster.journal.queries import load_receipt_counts

    counts = load_receipt_counts(path)
    return ReceiptsOnly(
        tuple(Count(state, count) for state, count in counts.by_delivery),
        counts.first_received_at_s,
        counts.last_received_at_s,
    )


def _unwritable(html_path: str, why: str) -> UsageError:
    return UsageError(
        f"--html {html_path}: cannot write the page there ({why}); give a writable file path, "
        "or '-' for stdout"
    )
