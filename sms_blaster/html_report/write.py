"""`report --html FILE`: the page of a journal's campaigns, written to FILE or stdout.

The file is written whole or not at all (a temporary file beside it, then renamed), so a page
being looked at is never half a page. A path that cannot be written is a UsageError (exit 2),
found before the journal is read.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Sequence
from typing import TextIO

from sms_blaster.errors import UsageError
from sms_blaster.html_report.model import CampaignView
from sms_blaster.html_report.page import render_page

STDOUT = "-"


def check_target(html_path: str) -> None:
    """Raise UsageError when `html_path` cannot be written (stdout always can)."""
    if html_path == STDOUT:
        return
    directory = os.path.dirname(os.path.abspath(html_path))
    if os.path.isdir(html_path):
        raise _unwritable(html_path, "it is a directory")
    if not os.path.isdir(directory):
        raise _unwritable(html_path, f"no such directory {directory}")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise _unwritable(html_path, f"cannot write in {directory}")


def write_page(views: Sequence[CampaignView], title: str, html_path: str, stdout: TextIO) -> None:
    """Render the page of `views` and write it to `html_path` (`-`: `stdout`)."""
    page = render_page(views, title, time.time())
    if html_path == STDOUT:
        stdout.write(page)
        return
    directory = os.path.dirname(os.path.abspath(html_path))
    try:
        handle, temporary = tempfile.mkstemp(prefix=".report-", suffix=".html", dir=directory)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                file.write(page)
            os.chmod(temporary, 0o644)  # a page to share, not a secret (mkstemp makes it 0600)
            os.replace(temporary, html_path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
    except OSError as exc:
        raise _unwritable(html_path, exc.strerror or str(exc)) from exc


def write_journal_page(path: str, campaign: str | None, html_path: str, stdout: TextIO) -> None:
    """`report JOURNAL --html FILE`: every campaign of the journal (or `campaign`) on one page."""
    from sms_blaster.journal.report_data import load_views

    check_target(html_path)
    write_page(load_views(path, campaign), path, html_path, stdout)


def _unwritable(html_path: str, why: str) -> UsageError:
    return UsageError(
        f"--html {html_path}: cannot write the page there ({why}); give a writable file path, "
        "or '-' for stdout"
    )
