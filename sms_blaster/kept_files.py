"""The files a command must never write over: a journal and what SQLite and the run lock keep
beside it, compared as files (a symlink, a relative path or a hard link to one is the same)."""

from __future__ import annotations

import os

# What the run lock and SQLite keep next to a journal.
BESIDE_JOURNAL = (
    (".lock", "the journal's lock"),
    ("-wal", "the journal's write-ahead log"),
    ("-shm", "the journal's shared-memory index"),
)


def journal_files(journal: str) -> list[tuple[str, str]]:
    """(what it is, path) of the journal and each file kept beside it, whether they exist yet
    or not."""
    return [
        ("the journal", journal),
        *((what, journal + suffix) for suffix, what in BESIDE_JOURNAL),
    ]


def same_file(first: str, second: str) -> bool:
    """The same file, by real path (symlinks, '.', relative or absolute) or, when both exist, by
    device and inode (a hard link)."""
    if os.path.realpath(first) == os.path.realpath(second):
        return True
    try:
        return os.path.samefile(first, second)
    except OSError:
        return False
