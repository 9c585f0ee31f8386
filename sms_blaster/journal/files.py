"""Where a journal's side files are, and the filesystem steps taken on them.

SQLite keeps the write-ahead log beside the file a journal's path leads to (through symlinks),
so every side file is named from that real path. Files that must follow the journal when it is
renamed (the lock taken by its identity, the records a failed commit kept) are named by the
journal file's identity, its device and inode, in its folder: a rename keeps both.
"""

from __future__ import annotations

import os


def wal_path(journal_path: str) -> str:
    """The write-ahead log SQLite keeps for the journal."""
    return os.path.realpath(journal_path) + "-wal"


def by_identity(journal_path: str, suffix: str) -> str:
    """A side file named by the journal file's identity, in its folder (the file must exist)."""
    found = os.stat(journal_path)
    folder = os.path.dirname(os.path.realpath(journal_path))
    return named_by_identity(folder, found.st_dev, found.st_ino, suffix)


def named_by_identity(folder: str, device: int, inode: int, suffix: str) -> str:
    """The side file of the journal file with this identity, in `folder`."""
    return os.path.join(folder, f".sms-blaster-{device}-{inode}{suffix}")


def sync_directory(path: str) -> None:
    """Blocking: `path`'s entries (a file created in it) on disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
