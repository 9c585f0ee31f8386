"""Campaign rows from CSV or JSONL, a file or stdin, streamed in constant memory.

`open_input` checks what can be checked up front (the file, the format, the CSV header) and
raises `UsageError` for it; after that, a row that cannot be read is an `InputRow` with a `problem`,
and the run goes on. `line` counts data rows from 1: a CSV header, blank lines and whitespace-only
JSONL lines are not rows; a quoted CSV field spanning lines is still one row.

Reading is blocking, so `stream_rows` reads in a thread and hands the event loop batches of rows,
through a bounded queue (backpressure: memory stays flat however large the input is).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import csv
import io
import itertools
import json
import os
import select
import stat
import sys
import threading
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator
from enum import StrEnum
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO

from sms_blaster.errors import UsageError
from sms_blaster.models import InputRow

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["InputFormat", "RowSource", "open_input", "stream_rows"]

STDIN_NAME = "<stdin>"

_CSV_EXTENSIONS = frozenset({".csv", ".tsv", ".txt"})
_JSONL_EXTENSIONS = frozenset({".jsonl", ".ndjson", ".json"})
_DELIMITERS = ",;\t|"  # in order of preference when counts tie
_BOM = codecs.BOM_UTF8
_CHUNK_BYTES = 64 * 1024
_SNIFF_LIMIT_BYTES = 64 * 1024  # this much leading whitespace and nothing else: call it CSV
# JSONL columns come from the first valid object; the invalid lines before it are held in memory,
# so the look-ahead stops here and the columns stay empty.
_LOOKAHEAD_ROWS = 1000


class InputFormat(StrEnum):
    """The input's format; AUTO goes by the file extension, then by the first byte."""

    AUTO = "auto"
    CSV = "csv"
    JSONL = "jsonl"


class RowSource:
    """The rows of one input, read lazily; iterating it is blocking and yields each row once."""

    __slots__ = ("_bytes", "_rows", "columns", "format", "name")

    def __init__(
        self,
        name: str,
        format: InputFormat,
        columns: tuple[str, ...],
        rows: Iterator[InputRow],
        byte_source: _ByteSource,
    ) -> None:
        self.name = name  # the path as given, or "<stdin>"
        self.format = format  # CSV or JSONL, never AUTO
        self.columns = columns
        self._rows = rows
        self._bytes = byte_source

    def __iter__(self) -> Iterator[InputRow]:
        return self._rows

    def close(self) -> None:
        """Close the file (stdin is left open for its owner); safe while a reader thread waits."""
        # Only the byte source is closed: the BufferedReader above it holds no OS resource, and
        # closing it would wait on its lock while `stream_rows`'s thread is blocked in a read.
        self._bytes.close()

    def __enter__(self) -> RowSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def open_input(
    path: str,
    fmt: InputFormat = InputFormat.AUTO,
    encoding: str = "utf-8",
    stdin: BinaryIO | None = None,
) -> RowSource:
    """Open `path` ("-" for stdin) and read up to its columns; raises UsageError for a bad input.

    This blocks until the CSV header (or, for JSONL, the first valid object) has arrived. Close
    the source when done (it is a context manager).
    """
    if path == "-":
        name = STDIN_NAME
        stream: BinaryIO = stdin if stdin is not None else sys.stdin.buffer
        owned = False
    else:
        name = path
        stream = _open_file(path)
        owned = True
    byte_source = _ByteSource(stream, owned=owned)
    try:
        return _read_columns(name, fmt, encoding, byte_source)
    except BaseException:
        byte_source.close()
        raise


async def stream_rows(
    source: RowSource, batch_size: int = 256, max_batches: int = 8
) -> AsyncGenerator[list[InputRow], None]:
    """Yield the rows of `source` in order, in batches of up to `batch_size`, off the event loop.

    A reader thread fills a queue and waits while `max_batches` batches are queued or unfinished.
    From a pipe, a terminal or a socket, a partial batch is handed over as soon as no more input
    is ready. An exception in the reader is raised here. Close the iterator early with
    `contextlib.aclosing` (or by cancelling): the reader thread then ends.
    """
    if batch_size < 1 or max_batches < 1:
        raise ValueError("batch_size and max_batches must be at least 1")
    queue: asyncio.Queue[list[InputRow] | BaseException | None] = asyncio.Queue(max_batches)
    handoff = _Handoff(asyncio.get_running_loop(), queue, max_batches)
    reader = threading.Thread(
        target=_read_batches,
        args=(source, batch_size, handoff),
        name=f"sms-blaster-input {source.name}",
        daemon=True,  # a read of stdin can block forever: it must not keep the process alive
    )
    reader.start()
    try:
        while True:
            item = await queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
            handoff.slots.release()  # the consumer is done with that batch: one more may come
    finally:
        handoff.stop()


# --- opening ---------------------------------------------------------------------------------


def _open_file(path: str) -> BinaryIO:
    try:
        return open(path, "rb", buffering=0)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file; check the path (use - for stdin)") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory; give a CSV or JSONL file") from None
    except PermissionError:
        raise UsageError(f"{path}: permission denied; check the file's permissions") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot open ({exc.strerror or exc})") from exc


def _read_columns(
    name: str, fmt: InputFormat, encoding: str, byte_source: _ByteSource
) -> RowSource:
    try:
        codec = codecs.lookup(encoding)
    except LookupError:
        raise UsageError(
            f"unknown encoding {encoding!r}; use e.g. --encoding utf-8 or --encoding latin-1"
        ) from None
    # utf-8-sig drops a byte order mark (as Excel writes) and reads plain UTF-8 unchanged.
    decode_as = "utf-8-sig" if codec.name == "utf-8" else encoding
    try:
        # surrogateescape: undecodable bytes become lone surrogates, so one bad row is a problem
        # on that row, not an exception that ends the run.
        text = io.TextIOWrapper(
            io.BufferedReader(byte_source, _CHUNK_BYTES),
            encoding=decode_as,
            errors="surrogateescape",
            newline="",  # the csv module handles CRLF and newlines inside quoted fields itself
        )
    except LookupError:  # a codec that is not text to text, such as "base64"
        raise UsageError(
            f"{encoding!r} is not a text encoding; use e.g. --encoding utf-8 or --encoding latin-1"
        ) from None
    bad_text = f"not valid {encoding} text; use --encoding (e.g. --encoding latin-1)"
    try:
        if fmt is InputFormat.AUTO:
            fmt = _format_by_extension(name) or _format_by_first_byte(byte_source.sniff())
        if fmt is InputFormat.CSV:
            columns, rows = _open_csv(name, encoding, text, bad_text)
        else:
            columns, rows = _open_jsonl(text, bad_text)
    except OSError as exc:
        raise UsageError(f"{name}: cannot read ({exc.strerror or exc})") from exc
    return RowSource(name, fmt, columns, rows, byte_source)


def _format_by_extension(name: str) -> InputFormat | None:
    extension = os.path.splitext(name)[1].lower()
    if extension in _CSV_EXTENSIONS:
        return InputFormat.CSV
    if extension in _JSONL_EXTENSIONS:
        return InputFormat.JSONL
    return None


def _format_by_first_byte(first: bytes) -> InputFormat:
    return InputFormat.JSONL if first == b"{" else InputFormat.CSV


# --- CSV -------------------------------------------------------------------------------------


def _open_csv(
    name: str, encoding: str, text: io.TextIOWrapper, bad_text: str
) -> tuple[tuple[str, ...], Iterator[InputRow]]:
    first = text.readline()
    while first and first.isspace():
        first = text.readline()
    if not first:
        return (), iter(())
    # The header line is put back in front of the rest, so a header with a quoted newline parses.
    reader = csv.reader(itertools.chain((first,), text), delimiter=_detect_delimiter(first))
    try:
        names = next(reader)
    except csv.Error as exc:
        raise UsageError(f"{name}: cannot read the CSV header ({exc}); check the quotes") from None
    if _undecodable(names):
        raise UsageError(
            f"{name}: the header is not valid {encoding}; use --encoding latin-1"
            " (or the encoding the file was saved in)"
        )
    header = tuple(column.strip() for column in names)
    seen: set[str] = set()
    for column in header:
        if column in seen:
            raise UsageError(
                f"{name}: duplicate column {column!r} in the header; rename or remove one"
            )
        seen.add(column)
    return header, _csv_rows(reader, header, bad_text)


def _detect_delimiter(header_line: str) -> str:
    """The most frequent of `, ; TAB |` outside quotes in the header line, else `,`."""
    counts = dict.fromkeys(_DELIMITERS, 0)
    quoted = False
    for char in header_line:
        if char == '"':
            quoted = not quoted
        elif not quoted and char in counts:
            counts[char] += 1
    best = max(counts, key=counts.__getitem__)  # the first of equals: `,` wins a tie
    return best if counts[best] else ","


def _csv_rows(
    reader: Iterator[list[str]], header: tuple[str, ...], bad_text: str
) -> Iterator[InputRow]:
    width = len(header)
    line = 0
    while True:
        try:
            for values in reader:
                if not values or (len(values) == 1 and values[0].isspace()):
                    continue  # a blank or whitespace-only line is not a row
                line += 1
                if len(values) != width:
                    yield InputRow(line, None, _count_problem(len(values), width))
                elif all(map(str.isascii, values)) or not _undecodable(values):
                    yield InputRow(line, dict(zip(header, values, strict=True)))
                else:
                    yield InputRow(line, None, bad_text)
            return
        except csv.Error as exc:
            # The reader starts afresh on the next line, so the rows after this one still come.
            line += 1
            yield InputRow(line, None, f"unreadable CSV row: {exc}")


def _count_problem(fields: int, width: int) -> str:
    return f"row has {fields} field{'' if fields == 1 else 's'}, the header has {width}"


def _undecodable(values: Iterable[str]) -> bool:
    """Whether decoding left lone surrogates (undecodable bytes, by surrogateescape) in `values`."""
    try:
        "".join(values).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


# --- JSONL -----------------------------------------------------------------------------------


def _open_jsonl(
    text: io.TextIOWrapper, bad_text: str
) -> tuple[tuple[str, ...], Iterator[InputRow]]:
    keys: list[str] = []
    rows = _jsonl_rows(text, bad_text, keys)
    ahead: list[InputRow] = []
    for row in rows:
        ahead.append(row)
        if row.fields is not None or len(ahead) >= _LOOKAHEAD_ROWS:
            break
    return tuple(keys), itertools.chain(ahead, rows)


def _jsonl_rows(lines: Iterable[str], bad_text: str, keys: list[str]) -> Iterator[InputRow]:
    """Parse each non-blank line; `keys` receives the keys of the first valid object."""
    want_keys = True
    line = 0
    for text in lines:
        if text.isspace():
            continue
        line += 1
        if not text.isascii() and _undecodable((text,)):
            yield InputRow(line, None, bad_text)
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            # Not exc.colno: json counts this line's own newline as the start of a second line.
            column = min(exc.pos, len(text.rstrip("\r\n"))) + 1
            yield InputRow(line, None, f"invalid JSON: {exc.msg} (column {column})")
            continue
        except (ValueError, RecursionError) as exc:  # a 5,000-digit number, deep nesting
            yield InputRow(line, None, f"invalid JSON: {exc}")
            continue
        if obj.__class__ is not dict:
            yield InputRow(line, None, "not a JSON object")
            continue
        fields = _json_fields(obj)
        if "\\u" in text and _undecodable(fields.values()):
            # A "\ud800" escape decodes to a lone surrogate, which no SMS can carry.
            yield InputRow(line, None, "invalid JSON: a \\u escape that is not a character")
            continue
        if want_keys:
            keys.extend(obj)
            want_keys = False
        yield InputRow(line, fields)


def _json_fields(obj: dict[str, Any]) -> dict[str, str]:
    """The values of one object as text, as a CSV column would hold them; null means absent."""
    fields: dict[str, str] = {}
    for key, value in obj.items():
        kind = value.__class__
        if kind is str:
            fields[key] = value
        elif value is None:
            continue
        elif kind is bool:
            fields[key] = "true" if value else "false"
        elif kind is int:
            fields[key] = str(value)
        elif kind is float:
            # 4.479e11 is a phone number written by a tool that had it as a number: give its digits.
            fields[key] = str(int(value)) if value.is_integer() else repr(value)
        else:
            fields[key] = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return fields


# --- bytes -----------------------------------------------------------------------------------


class _ByteSource(io.RawIOBase):
    """The input's bytes: what sniffing read first, then the stream.

    From a pipe, terminal or socket, `before_wait` (when set) is called before a read that would
    block, so rows already parsed need not wait for more input.
    """

    def __init__(self, stream: BinaryIO, *, owned: bool) -> None:
        super().__init__()
        self.before_wait: Callable[[], None] | None = None
        # While a reader thread reads, close() is left to that thread: closing the descriptor
        # under a read could make it read another file that reused the number.
        self._state_lock = threading.Lock()
        self._reader_active = False
        self._reader: threading.Thread | None = None
        self._close_requested = False
        self._stream = stream
        self._owned = owned
        self._prefix = b""
        self._fd = -1  # read with os.readv when >= 0
        self._may_block = False
        try:
            fd = stream.fileno()
            mode = os.fstat(fd).st_mode
        except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is both
            return
        # The fd is read directly: sys.stdin.buffer's own lock, held by a reader thread blocked
        # in a read, would make the interpreter abort at exit.
        self._fd = fd
        self._may_block = not stat.S_ISREG(mode)  # a regular file never keeps a read waiting

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        if self.closed:
            raise ValueError("I/O operation on a closed input")
        view = memoryview(buffer).cast("B")
        if self._prefix:
            size = min(len(view), len(self._prefix))
            view[:size] = self._prefix[:size]
            self._prefix = self._prefix[size:]
            return size
        if self._fd < 0:
            data = self._read(len(view))
            view[: len(data)] = data
            return len(data)
        if self._may_block and self.before_wait is not None:
            ready, _, _ = select.select([self._fd], [], [], 0)
            if not ready:
                self.before_wait()
        return os.readv(self._fd, [view])

    def sniff(self) -> bytes:
        """The first byte that is not whitespace or a BOM (b"" if none), keeping all bytes read."""
        head = b""
        while len(head) < _SNIFF_LIMIT_BYTES:
            chunk = self._read(_CHUNK_BYTES)
            if not chunk:
                break
            head += chunk
            if len(head) < len(_BOM) and _BOM.startswith(head):
                continue  # a pipe may deliver the BOM a byte at a time
            body = (head[len(_BOM) :] if head.startswith(_BOM) else head).lstrip()
            if body:
                self._prefix = head
                return body[:1]
        self._prefix = head
        return b""

    def _read(self, size: int) -> bytes:
        if self._fd >= 0:
            return os.read(self._fd, size)
        read1 = getattr(self._stream, "read1", None)
        data = read1(size) if read1 is not None else self._stream.read(size)
        return bytes(data)

    def close(self) -> None:
        with self._state_lock:
            if self._reader_active and threading.current_thread() is not self._reader:
                self._close_requested = True
                return
        if not self.closed and self._owned:
            self._stream.close()
        super().close()

    def reader_started(self) -> None:
        with self._state_lock:
            self._reader_active = True
            self._reader = threading.current_thread()

    def reader_done(self) -> None:
        with self._state_lock:
            self._reader_active = False
            close = self._close_requested
        if close:
            self.close()


# --- the reader thread -----------------------------------------------------------------------


class _Stopped(Exception):
    """The consumer of `stream_rows` has gone: the reader thread ends."""


class _Handoff:
    """Hands items from the reader thread to the event loop, at most `max_batches` at a time.

    The thread takes a slot before each item and the consumer gives it back when it asks for the
    next, so the thread waits only while `max_batches` batches are queued or being handled, never
    for a round trip through the loop.
    """

    __slots__ = ("_loop", "_queue", "_stopped", "slots")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[list[InputRow] | BaseException | None],
        max_batches: int,
    ) -> None:
        self._loop = loop
        self._queue = queue
        self._stopped = threading.Event()
        self.slots = threading.Semaphore(max_batches)

    def put(self, item: list[InputRow] | BaseException | None) -> None:
        """Called by the reader thread; raises _Stopped once the consumer has gone."""
        self.slots.acquire()
        if self._stopped.is_set():
            raise _Stopped
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed
            raise _Stopped from None

    def stop(self) -> None:
        """Called by the consumer when it is done, early or not; wakes a waiting reader thread."""
        self._stopped.set()
        self.slots.release()


def _read_batches(source: RowSource, batch_size: int, handoff: _Handoff) -> None:
    batch: list[InputRow] = []

    def flush() -> None:
        if batch:
            handoff.put(batch.copy())  # a copy: this thread goes on filling `batch`
            batch.clear()

    source._bytes.before_wait = flush
    source._bytes.reader_started()
    try:
        for row in source:
            batch.append(row)
            if len(batch) >= batch_size:
                flush()
        flush()
        handoff.put(None)
    except _Stopped:
        pass
    except BaseException as exc:  # whatever it is, the consumer must hear of it, not hang
        with contextlib.suppress(_Stopped):
            flush()
            handoff.put(exc)
    finally:
        source._bytes.before_wait = None
        source._bytes.reader_done()
