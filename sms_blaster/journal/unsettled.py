"""Records out whose settle the journal could not commit, kept for the resume in space reserved
before the disk filled.

A row's final record is written to the records output just before the journal's commit that
settles it (`Journal.write_records_first`). When that commit fails (a full disk, a file-size
limit, an I/O error), the records are out and the rows stay in flight in the journal, so a
resume would record each of them `unknown` beside the record it already has. On stdout the resume
cannot read them back, so the run keeps them here: in a file beside the journal (`PATH-unsettled`)
whose blocks were allocated at start, so writing into it needs no new space. The resume takes each
kept record as its row's outcome, as it does with records a killed run left in --output FILE.

The file holds the campaign's name on its first line, then JSON record lines, then zeros to the
end of the reservation. A clean end removes it; one that holds records stays for the resume.
"""

from __future__ import annotations

import contextlib
import json
import os

SUFFIX = "-unsettled"
_RESERVE_BYTES = 1 << 20  # about 3,000 records: more than a commit settles at full speed
_SMALLEST_BYTES = 1 << 14  # halved down to this when the file-size limit refuses more


def path_of(journal_path: str) -> str:
    """The file beside the journal the path leads to (as its lock, through symlinks)."""
    return os.path.realpath(journal_path) + SUFFIX


def read(journal_path: str, campaign: str) -> bytes:
    """The record lines kept for `campaign`, b"" when none (no file, another campaign's, or
    unreadable)."""
    try:
        with open(path_of(journal_path), "rb") as handle:
            data = handle.read(_RESERVE_BYTES)
    except OSError:
        return b""
    data = data.split(b"\0", 1)[0]
    header, _, lines = data.partition(b"\n")
    return lines if header == _header(campaign) else b""


def remove(journal_path: str) -> None:
    """Remove the file, once what it kept is settled in the journal."""
    with contextlib.suppress(OSError):
        os.unlink(path_of(journal_path))


def holds_other(journal_path: str, campaign: str) -> bool:
    """True when the file keeps records of another campaign of the journal: left alone."""
    try:
        with open(path_of(journal_path), "rb") as handle:
            first = handle.read(4096).split(b"\0", 1)[0]
    except OSError:
        return False
    header, newline, lines = first.partition(b"\n")
    return bool(newline and lines) and header != _header(campaign)


def _header(campaign: str) -> bytes:
    return json.dumps({"campaign": campaign}).encode()


class Reserved:
    """The reserved file of one run: `keep` writes into it without growing it."""

    def __init__(self, fd: int, size: int, path: str, campaign: str, fsync: bool) -> None:
        self._fd = fd
        self._size = size
        self._path = path
        self._header = _header(campaign) + b"\n"
        self._fsync = fsync
        self.kept = False

    @classmethod
    def make(cls, journal_path: str, campaign: str, fsync: bool) -> Reserved | None:
        """Allocate the file; None when the disk or the file-size limit leaves no room for it.
        Blocking, at start."""
        path = path_of(journal_path)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            return None
        try:
            size = _allocate(fd)
            if size is None:
                raise OSError("no room")
            reserved = cls(fd, size, path, campaign, fsync)
            reserved._write(b"")
            if fsync:  # its name too: a power cut must not take the file with what it keeps
                sync_directory(os.path.dirname(path))
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            return None
        return reserved

    def keep(self, lines: list[bytes]) -> int:
        """Write the record lines that fit, whole, and make them durable; how many fit."""
        room = self._size - len(self._header)
        fitting: list[bytes] = []
        for line in lines:
            room -= len(line)
            if room < 0:
                break
            fitting.append(line)
        try:
            self._write(b"".join(fitting))
        except OSError:
            return 0
        self.kept = self.kept or bool(fitting)
        return len(fitting)

    def _write(self, lines: bytes) -> None:
        """The header and `lines`, zeros after them up to the old end (a file of whole lines)."""
        data = self._header + lines
        os.pwrite(self._fd, data, 0)
        if self._fsync:
            os.fdatasync(self._fd)

    def close(self) -> None:
        """Close; remove the file unless it keeps records for the resume."""
        os.close(self._fd)
        if not self.kept:
            with contextlib.suppress(OSError):
                os.unlink(self._path)


def _allocate(fd: int) -> int | None:
    """Allocate the largest reservation the disk and the file-size limit allow, zeroed."""
    os.ftruncate(fd, 0)
    size = _RESERVE_BYTES
    while size >= _SMALLEST_BYTES:
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError:
            size //= 2
            continue
        return size
    return None


def sync_directory(path: str) -> None:
    """Blocking: `path`'s entries (a file created in it) on disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
