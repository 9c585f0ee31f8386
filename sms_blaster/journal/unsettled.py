"""Records out whose settle the journal could not commit, kept for the resume in space reserved
before the disk filled.

A row's final record is written to the records output just before the journal's commit that
settles it (`Journal.write_records_first`). When that commit fails (a full disk, a file-size
limit, an I/O error), the records are out and the rows stay in flight in the journal, so a
resume would record each of them `unknown` beside the record it already has (and with
--retry-unknown send it again). On a piped stdout the resume cannot read them back, so the run
keeps them here: in a file beside the journal whose blocks were allocated at start, so writing
into it needs no new space. The resume takes each kept record as its row's outcome, as it does
with records a killed run left in --output FILE.

The file is named by the journal file's identity (`files.by_identity`, SUFFIX), so a journal
renamed after the failed run still finds it. It holds the campaign's name on its first line,
then JSON record lines, then zeros to the end of the reservation. A clean end removes it; one
that holds records stays for the resume, which removes it once their rows are settled.

A record the output failed to take as well (its flush failed before the commit did) is kept
after `OWED`: the resume takes it as its row's outcome, keeps the row owed, and writes the
record (`Journal._adopt_unsettled`). An older sms-blaster reads no record in such a line, and
records the row `unknown` as it would any row left in flight.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat

from sms_blaster.journal import files

SUFFIX = ".unsettled"
OWED = b"owed "  # before a kept record the output did not take either
_RESERVE_BYTES = 1 << 20  # about 3,000 records: more than a commit settles at full speed
_SMALLEST_BYTES = 1 << 14  # ...halved down to this when the file-size limit refuses more
_SHARE_OF_FREE = 8  # ...and never more than this fraction of the free space


def path_of(journal_path: str) -> str | None:
    """The file of the journal the path leads to; None while the journal does not exist."""
    try:
        return files.by_identity(journal_path, SUFFIX)
    except FileNotFoundError:
        return None


def read(journal_path: str, campaign: str) -> bytes:
    """The record lines kept for `campaign`, b"" when none (no file, or another campaign's).
    Raises OSError when the file is there and cannot be read: a resume that went on without
    it could send its rows again."""
    path = path_of(journal_path)
    return b"" if path is None else read_at(path, campaign)


def read_at(path: str, campaign: str) -> bytes:
    """`read`, of the file at `path`: one a run kept for the journal file it opened, which
    another file may be now (`store._check_opened_as`)."""
    kept = _contents(path)
    if kept is None or kept[0] != campaign:
        return b""
    return kept[1]


def holds_other(journal_path: str, campaign: str) -> bool:
    """True when the file keeps records of another campaign of the journal: left alone."""
    with contextlib.suppress(OSError):
        path = path_of(journal_path)
        kept = None if path is None else _contents(path)
        return kept is not None and bool(kept[1]) and kept[0] != campaign
    return True  # unreadable: not this run's to overwrite


def remove(journal_path: str) -> None:
    """Remove the file, once what it kept is settled in the journal."""
    path = path_of(journal_path)
    if path is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _contents(path: str) -> tuple[str, bytes] | None:
    """(the campaign, its record lines) of the file at `path`; None when there is none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(_RESERVE_BYTES).split(b"\0", 1)[0]
    header, newline, lines = data.partition(b"\n")
    if not newline:
        return None  # a reservation cut short before its header: nothing kept
    try:
        campaign = json.loads(header)["campaign"]
    except (ValueError, KeyError, TypeError):
        return None
    return (campaign, lines) if isinstance(campaign, str) else None


def _header(campaign: str) -> bytes:
    return json.dumps({"campaign": campaign}).encode() + b"\n"


class Reserved:
    """The reserved file of one run: `keep` writes into it without growing it."""

    __slots__ = ("_fd", "_fsync", "_header", "_kept", "_path", "_size")

    def __init__(self, fd: int, size: int, path: str, campaign: str, fsync: bool) -> None:
        self._fd = fd
        self._size = size
        self._path = path
        self._header = _header(campaign)
        self._fsync = fsync
        self._kept = False  # records written: the file stays for the resume

    @classmethod
    def make(cls, journal_path: str, campaign: str, fsync: bool) -> Reserved | None:
        """Allocate the file, readable by whoever may read the journal; None when the disk
        or the file-size limit leaves no room for it. Blocking, at start."""
        path = path_of(journal_path)
        if path is None:
            return None
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError:
            return None
        try:
            _as_journal(fd, journal_path)
            size = _allocate(fd, os.path.dirname(path))
            if size is None:
                raise OSError(errno.ENOSPC, "no room")
            reserved = cls(fd, size, path, campaign, fsync)
            reserved._write(b"")
            if fsync:  # its name too: a power cut must not take the file with what it keeps
                files.sync_directory(os.path.dirname(path))
        except OSError:
            with contextlib.suppress(OSError):
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            return None
        return reserved

    @property
    def kept(self) -> bool:
        """Whether records were written: the file stays for the resume."""
        return self._kept

    def keep(self, lines: list[bytes]) -> int:
        """Write the record lines that fit, whole, and make them durable; how many are kept."""
        room = self._size - len(self._header)
        fitting: list[bytes] = []
        for line in lines:
            room -= len(line)
            if room < 0:
                break
            fitting.append(line)
        try:
            written = self._write(b"".join(fitting))
        except OSError:
            return 0
        # A short write (a file-size limit lowered since the reservation) keeps whole lines only.
        kept, end = 0, len(self._header)
        for line in fitting:
            end += len(line)
            if end > written:
                break
            kept += 1
        self._kept = self._kept or kept > 0
        return kept

    def _write(self, lines: bytes) -> int:
        """The header and `lines` from the start of the file; the bytes written."""
        data = self._header + lines
        written = 0
        while written < len(data):
            step = os.pwrite(self._fd, data[written:], written)
            if step == 0:
                break
            written += step
        if self._fsync:
            os.fdatasync(self._fd)
        return written

    def close(self) -> None:
        """Close; remove the file unless it keeps records for the resume."""
        with contextlib.suppress(OSError):
            os.close(self._fd)
        if not self._kept:
            with contextlib.suppress(OSError):
                os.unlink(self._path)


def _as_journal(fd: int, journal_path: str) -> None:
    """Give the file the journal's owner and permissions: whoever may resume the journal must
    be able to read what it kept (SQLite does the same for the WAL)."""
    found = os.stat(journal_path)
    if os.geteuid() == 0:
        os.fchown(fd, found.st_uid, found.st_gid)
    os.fchmod(fd, stat.S_IMODE(found.st_mode) & 0o666)


def _allocate(fd: int, folder: str) -> int | None:
    """Allocate the largest reservation the disk, its free space and the file-size limit allow,
    zeroed (a disk nearly full keeps most of its room for the journal itself)."""
    os.ftruncate(fd, 0)
    free = os.statvfs(folder)
    size = min(_RESERVE_BYTES, free.f_bavail * free.f_frsize // _SHARE_OF_FREE)
    while size >= _SMALLEST_BYTES:
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError:
            size //= 2
            continue
        return size
    return None
