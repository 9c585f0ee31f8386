"""The files a command must never write over: what a run reads (its input, its lists, its key)
and its journal with what SQLite and the run lock keep beside it, compared as files (a symlink,
a relative path or a hard link to one is the same). `--output`, `--metrics-file` and
`report --html` all keep to it: a metrics file renamed over the journal's lock let a second run
in beside the first, and one renamed over its write-ahead log would lose its commits."""

from __future__ import annotations

import contextlib
import os

from sms_blaster.journal import files, unsettled
from sms_blaster.settings import RunSettings

# What the run lock and SQLite keep next to the file a journal's path leads to (through symlinks).
BESIDE_JOURNAL = (
    (".lock", "the journal's lock"),
    ("-wal", "the journal's write-ahead log"),
    ("-shm", "the journal's shared-memory index"),
)
# ...and what is named by the journal file's identity in its folder, once it exists.
BY_IDENTITY = (
    (".lock", "the journal's lock by its identity"),
    (unsettled.SUFFIX, "the records the journal's failed commit kept for the resume"),
)


def journal_files(journal: str) -> list[tuple[str, str]]:
    """(what it is, path) of the journal and each file kept beside it, whether they exist yet
    or not (those named by its identity only once the journal exists)."""
    real = os.path.realpath(journal)
    found: list[tuple[str, str]] = [("the journal", journal)]
    found += [(what, real + suffix) for suffix, what in BESIDE_JOURNAL]
    with contextlib.suppress(OSError):
        found += [(what, files.by_identity(journal, suffix)) for suffix, what in BY_IDENTITY]
    return found


def run_files(
    settings: RunSettings, input_path: str | None, journal: str | None
) -> list[tuple[str, str]]:
    """(what it is, path) of every file a run reads or keeps: `input_path` (None: stdin), the
    lists and the key it was given, and `journal` (None: none) with the files beside it."""
    given = (
        ("the input", input_path),
        ("the --suppress list", settings.suppress_path),
        ("the --optouts list", settings.optouts_path),
        ("the --from-pool file", settings.from_pool),
        ("the --private-key file", settings.private_key_path),
    )
    kept = [(what, path) for what, path in given if path]
    return kept + (journal_files(journal) if journal else [])


def kept_as(path: str, kept: list[tuple[str, str]]) -> tuple[str, str] | None:
    """(what it is, its path as given) of the first of `kept` that `path` is; None: none."""
    return next(((what, own) for what, own in kept if same_file(path, own)), None)


def same_file(first: str, second: str) -> bool:
    """The same file, by real path (symlinks, '.', relative or absolute) or, when both exist, by
    device and inode (a hard link)."""
    if os.path.realpath(first) == os.path.realpath(second):
        return True
    try:
        return os.path.samefile(first, second)
    except OSError:
        return False
