"""Campaign rows from CSV or JSONL, a file or stdin, streamed in constant memory.

`open_input` checks what can be checked up front (the file, the format, the CSV header) and
raises `UsageError` for it; after that, a row that cannot be read is an `InputRow` with a `problem`,
and the run goes on. `line` counts data rows from 1: a CSV header, blank lines and whitespace-only
JSONL lines are not rows; a quoted CSV field spanning lines is still one row. Lines end as the
first line does: in a file of LF or CRLF lines, a CR alone is inside its line (see `_Lines`).

A header or row is at most `MAX_ROW_CHARS` characters (all its lines together), so an input without
line ends (`/dev/zero`) cannot fill the memory: a longer header is a UsageError, a longer row a
problem row, and reading goes on at the next line end. Fields are keyed by `column_key`.

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

from sms_blaster.errors import OptionValueError, UsageError
from sms_blaster.models import InputRow, column_key

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = [
    "MAX_ROW_CHARS",
    "InputFormat",
    "RowSource",
    "open_input",
    "open_input_off_loop",
    "read_batches",
    "stream_rows",
]

STDIN_NAME = "<stdin>"

_CSV_EXTENSIONS = frozenset({".csv", ".tsv", ".txt"})
_JSONL_EXTENSIONS = frozenset({".jsonl", ".ndjson", ".json"})
_DELIMITERS = ",;\t|"  # in order of preference when counts tie
# A byte order mark says the encoding for sure, whatever --encoding says. UTF-32 LE's mark starts
# with UTF-16 LE's, so the longer marks are tried first.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_CHUNK_BYTES = 64 * 1024
# A header or a row (all its lines) is at most this many characters; no campaign row comes near
# it (an SMS of 10 parts is 1,530), and it bounds what one row can hold in memory.
MAX_ROW_CHARS = 64 * 1024
_READ_CHARS = MAX_ROW_CHARS + 2  # a line of the bound and its CRLF in one read
_TOO_LONG = f"row longer than {MAX_ROW_CHARS:,} characters"
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

    __slots__ = ("_bytes", "_rows", "columns", "format", "has_rows", "name", "names")

    def __init__(
        self,
        name: str,
        format: InputFormat,
        columns: tuple[str, ...],
        rows: Iterator[InputRow],
        byte_source: _ByteSource,
        *,
        names: tuple[str, ...] | None = None,
        has_rows: bool = True,
    ) -> None:
        self.name = name  # the path as given, or "<stdin>"
        self.format = format  # CSV or JSONL, never AUTO
        self.columns = columns  # as the rows' fields are keyed: by column_key
        self.names = columns if names is None else names  # as the input writes them, for messages
        self.has_rows = has_rows  # whether there is at least one data row (read ahead)
        self._rows = rows
        self._bytes = byte_source

    def __iter__(self) -> Iterator[InputRow]:
        return self._rows

    def fileno(self) -> int:
        """The descriptor the rows are read from; -1 for a stream without one."""
        return self._bytes._fd

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

    This blocks until the CSV header and the first row (for JSONL, the first valid object) have
    arrived, or the input has ended (`has_rows` then says whether it had any row); from the event
    loop, use `open_input_off_loop`. Close the source when done (it is a context manager).
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


async def open_input_off_loop(
    path: str,
    fmt: InputFormat = InputFormat.AUTO,
    encoding: str = "utf-8",
    stdin: BinaryIO | None = None,
) -> RowSource:
    """`open_input` in a thread of its own, for the event loop.

    Waiting on a slow pipe for the header and the first row then holds up neither the loop nor
    the handling of a signal: a Ctrl-C cancels the wait. The thread is a daemon, since its read
    may never return; a source it opens after the wait was cancelled is closed.
    """
    loop = asyncio.get_running_loop()
    opened: asyncio.Future[RowSource] = loop.create_future()

    def deliver(source: RowSource | None, error: BaseException | None) -> None:
        if opened.cancelled():
            if source is not None:
                source.close()
        elif error is not None:
            opened.set_exception(error)
        elif source is not None:
            opened.set_result(source)

    def open_in_thread() -> None:
        source: RowSource | None = None
        error: BaseException | None = None
        try:
            source = open_input(path, fmt, encoding, stdin)
        except BaseException as exc:  # the caller must hear of it, whatever it is
            error = exc
        try:
            loop.call_soon_threadsafe(deliver, source, error)
        except RuntimeError:  # the loop is closed: no one is waiting
            if source is not None:
                source.close()

    threading.Thread(target=open_in_thread, name="sms-blaster-open", daemon=True).start()
    return await opened


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
        target=read_batches,
        args=(source, batch_size, handoff.put),
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
        codecs.lookup(encoding)
    except LookupError:
        raise OptionValueError(
            "--encoding", encoding, "unknown encoding; use e.g. utf-8 or latin-1"
        ) from None
    try:
        bom = byte_source.bom_encoding()
        shown = encoding if bom is None else bom.removesuffix("-sig")
        # surrogateescape: undecodable bytes become lone surrogates, so one bad row is a problem
        # on that row, not an exception that ends the run.
        text = io.TextIOWrapper(
            io.BufferedReader(byte_source, _CHUNK_BYTES),
            encoding=bom or encoding,
            errors="surrogateescape",
            newline="",  # the csv module handles CRLF and newlines inside quoted fields itself
        )
    except LookupError:  # a codec that is not text to text, such as "base64"
        raise OptionValueError(
            "--encoding", encoding, "not a text encoding; use e.g. utf-8 or latin-1"
        ) from None
    except OSError as exc:
        raise UsageError(f"{name}: cannot read ({exc.strerror or exc})") from exc
    bad_text = f"not valid {shown} text; use --encoding (e.g. --encoding latin-1)"
    lines = _Lines(text)
    try:
        first = _first_line(name, lines)
        lines.cr_ends_lines = first.endswith("\r")  # a CR alone, since CRLF ends in LF
        if fmt is InputFormat.AUTO:
            fmt = _format_by_extension(name) or _format_by_first_line(first)
        if fmt is InputFormat.CSV:
            names, rows = _open_csv(name, shown, first, lines, bad_text)
        else:
            names, rows = _open_jsonl(name, first, lines, bad_text)
        # One row is read ahead, so an input without any row is known before anything is sent.
        ahead = next(rows, None)
    except OSError as exc:
        raise UsageError(f"{name}: cannot read ({exc.strerror or exc})") from exc
    if ahead is not None:
        rows = itertools.chain((ahead,), rows)
    columns = tuple(map(column_key, names))
    return RowSource(name, fmt, columns, rows, byte_source, names=names, has_rows=ahead is not None)


def _first_line(name: str, lines: _Lines) -> str:
    """The first line that is not blank ("" for none); a UsageError when it is too long or when
    the input looks like UTF-16 read as something else."""
    for line in _whole_lines(name, lines):
        if line.isspace():
            continue
        if "\x00" in line and _looks_like_utf16(line.rstrip("\r\n")):
            raise UsageError(
                f"{name}: looks like UTF-16 without a byte order mark (every other byte is NUL); "
                "use --encoding utf-16-le (or utf-16-be)"
            )
        return line
    return ""


def _whole_lines(name: str, lines: _Lines) -> Iterator[str]:
    """The lines before the columns are known: one past the bound is a UsageError."""
    while True:
        lines.used = 0
        try:
            yield next(lines)
        except StopIteration:
            return
        except _TooLong:
            raise UsageError(_too_long_header(name, "the first line")) from None


def _too_long_header(name: str, what: str = "the header") -> str:
    return (
        f"{name}: {what} is longer than {MAX_ROW_CHARS:,} characters (is there no line end?); "
        "give a CSV file (a header line, then one row a line) or a JSONL file (one object a line)"
    )


def _looks_like_utf16(text: str) -> bool:
    """Every other character NUL and the others not: ASCII text written as UTF-16."""
    if len(text) < 2:
        return False
    for nuls, others in ((text[1::2], text[0::2]), (text[0::2], text[1::2])):
        if not nuls.strip("\x00") and "\x00" not in others:
            return True
    return False


def _format_by_extension(name: str) -> InputFormat | None:
    extension = os.path.splitext(name)[1].lower()
    if extension in _CSV_EXTENSIONS:
        return InputFormat.CSV
    if extension in _JSONL_EXTENSIONS:
        return InputFormat.JSONL
    return None


def _format_by_first_line(first: str) -> InputFormat:
    return InputFormat.JSONL if first.lstrip().startswith("{") else InputFormat.CSV


# --- CSV -------------------------------------------------------------------------------------


def _open_csv(
    name: str, encoding: str, first: str, lines: _Lines, bad_text: str
) -> tuple[tuple[str, ...], Iterator[InputRow]]:
    if not first:
        return (), iter(())
    # The header line is put back in front of the rest, so a header with a quoted newline parses.
    # strict: a quote left open at the end, or text after a closing quote, is a problem row,
    # not a field that swallows the rows after it into one message.
    delimiter = _detect_delimiter(first)
    lines.stand_in_cr = True
    reader = csv.reader(itertools.chain((first,), lines), delimiter=delimiter, strict=True)
    try:
        names = next(reader)
    except csv.Error as exc:
        raise UsageError(f"{name}: cannot read the CSV header ({exc}); check the quotes") from None
    except _TooLong:
        raise UsageError(_too_long_header(name)) from None
    if _undecodable(names):
        raise UsageError(
            f"{name}: the header is not valid {encoding}; use --encoding latin-1"
            " (or the encoding the file was saved in)"
        )
    if any("\x00" in column for column in names):
        raise UsageError(f"{name}: the header holds NUL bytes; give a CSV or JSONL text file")
    header = tuple(column.strip() for column in names)
    _check_unique(name, header)
    return header, _csv_rows(reader, lines, tuple(map(column_key, header)), bad_text)


def _check_unique(name: str, header: tuple[str, ...]) -> None:
    seen: dict[str, str] = {}
    for column in header:
        other = seen.setdefault(column_key(column), column)
        if other is column:
            continue
        if other == column:
            raise UsageError(
                f"{name}: duplicate column {column!r} in the header; rename or remove one"
            )
        raise UsageError(
            f"{name}: columns {other!r} and {column!r} differ only in case or surrounding "
            "spaces (columns are matched ignoring both); rename or remove one"
        )


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
    reader: Iterator[list[str]], lines: _Lines, keys: tuple[str, ...], bad_text: str
) -> Iterator[InputRow]:
    width = len(keys)
    line = 0
    while True:
        lines.used = 0
        try:
            for values in reader:
                lines.used = 0  # the next line read starts a new row
                if not values or (len(values) == 1 and values[0].isspace()):
                    continue  # a blank or whitespace-only line is not a row
                line += 1
                if lines.cr_stood_in:
                    values = [value.replace(_CR_STAND_IN, "\r") for value in values]
                if len(values) != width:
                    yield InputRow(line, None, _count_problem(len(values), width))
                elif all(map(str.isascii, values)) or not _undecodable(values):
                    yield InputRow(line, dict(zip(keys, values, strict=True)))
                else:
                    yield InputRow(line, None, bad_text)
            return
        except csv.Error as exc:
            # The reader starts afresh on the next line, so the rows after this one still come.
            line += 1
            reason = str(exc)
            if reason == "unexpected end of data":
                reason = "a quoted field is never closed (a stray '\"'?)"
            yield InputRow(line, None, f"unreadable CSV row: {reason}")
        except _TooLong:
            # So does it after a row too long: the rest of that line is skipped, and the next
            # line is a new row, even when the long row had opened a quoted field.
            line += 1
            yield InputRow(line, None, _TOO_LONG)


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
    name: str, first: str, lines: _Lines, bad_text: str
) -> tuple[tuple[str, ...], Iterator[InputRow]]:
    if not first:
        return (), iter(())
    names: list[str] = []
    rows = _jsonl_rows(_jsonl_lines(first, lines), bad_text, names)
    ahead: list[InputRow] = []
    for row in rows:
        if row.problem is _TOO_LONG:
            # Before the columns are known, a line without an end is refused like a CSV header:
            # an input such as /dev/zero must end, not be skipped through forever.
            raise UsageError(_too_long_header(name, f"row {row.line}"))
        ahead.append(row)
        if row.fields is not None or len(ahead) >= _LOOKAHEAD_ROWS:
            break
    return tuple(names), itertools.chain(ahead, rows)


def _jsonl_lines(first: str, lines: _Lines) -> Iterator[str | None]:
    """`first`, then every line after it; None for a line past the bound."""
    yield first
    while True:
        lines.used = 0
        try:
            for text in lines:
                yield text
                lines.used = 0
            return
        except _TooLong:
            yield None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


# Numbers keep their source text: 447911123456 stays those digits and 4.4791e11 stays as written
# (as a float it could lose digits of a phone number, or print as 4.4791e+11 in a text).
class _Number(str):
    """A JSON number's source text, told apart from a string while a value is written back."""

    __slots__ = ()


_DECODER = json.JSONDecoder(parse_int=_Number, parse_float=_Number, parse_constant=_no_constant)


def _key_twice(text: str) -> str | None:
    """The first key the line's object (not one nested in it) gives twice; None when none."""
    twice: dict[int, str] = {}  # id of an object built -> its key given twice

    def build(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        built = dict(pairs)
        if len(built) < len(pairs):
            seen: set[str] = set()
            for key, _ in pairs:
                if key in seen:
                    twice[id(built)] = key
                    break
                seen.add(key)
        return built

    decoder = json.JSONDecoder(
        object_pairs_hook=build,
        parse_int=_Number,
        parse_float=_Number,
        parse_constant=_no_constant,
    )
    line = decoder.decode(text)  # nested objects stay alive in it: their ids are not reused
    return twice.get(id(line))


def _jsonl_rows(lines: Iterable[str | None], bad_text: str, names: list[str]) -> Iterator[InputRow]:
    """Parse each non-blank line; `names` receives the keys of the first valid object."""
    want_names = True
    line = 0
    for text in lines:
        if text is None:
            line += 1
            yield InputRow(line, None, _TOO_LONG)
            continue
        if text.isspace():
            continue
        line += 1
        if not text.isascii() and _undecodable((text,)):
            yield InputRow(line, None, bad_text)
            continue
        try:
            obj = _DECODER.decode(text)
        except json.JSONDecodeError as exc:
            # Not exc.colno: json counts this line's own newline as the start of a second line.
            column = min(exc.pos, len(text.rstrip("\r\n"))) + 1
            yield InputRow(line, None, f"invalid JSON: {exc.msg} (column {column})")
            continue
        except (ValueError, RecursionError) as exc:  # NaN, deep nesting
            yield InputRow(line, None, f"invalid JSON: {exc}")
            continue
        if obj.__class__ is not dict:
            yield InputRow(line, None, "not a JSON object")
            continue
        # json keeps the last of a key given twice: the row would go to a number chosen by a
        # guess. Each key takes a colon, so only a line with more colons than keys can hold
        # one (a time or a URL in a value, a nested object, or a key twice): read it again.
        if text.count(":") > len(obj) and (twice := _key_twice(text)) is not None:
            yield InputRow(line, None, f"key {twice!r} appears twice; keep one")
            continue
        try:
            row = _json_row(line, obj)
        except RecursionError:  # nesting the decoder took but writing it back cannot
            yield InputRow(line, None, "invalid JSON: nested too deeply")
            continue
        if row.fields is not None and "\\u" in text and _undecodable(row.fields.values()):
            # A "\ud800" escape decodes to a lone surrogate, which no SMS can carry.
            yield InputRow(line, None, "invalid JSON: a \\u escape that is not a character")
            continue
        if want_names and row.fields is not None:
            names.extend(key.strip() for key in obj)
            want_names = False
        yield row


def _json_row(line: int, obj: dict[str, Any]) -> InputRow:
    """One object as a row: strings and numbers are its text; null is absent; a boolean, list or
    object is kept as JSON text and named in `invalid`, so a row that uses it is refused."""
    fields: dict[str, str] = {}
    invalid: dict[str, str] | None = None
    for key, value in obj.items():
        column = column_key(key)
        kind = value.__class__
        if kind is str:
            fields[column] = value
            continue
        if kind is _Number:
            fields[column] = str(value)  # a plain str: nothing downstream need know
            continue
        if value is None:
            continue
        if kind is bool:
            fields[column] = "true" if value else "false"
            what = "a JSON boolean"
        else:
            fields[column] = _json_text(value)
            what = "a JSON list" if kind is list else "a JSON object"
        if invalid is None:
            invalid = {}
        invalid[column] = what
    if len(obj) > 1 and len(fields) < len(obj):
        columns: dict[str, str] = {}
        for key in obj:
            other = columns.setdefault(column_key(key), key)
            if other is not key:
                problem = (
                    f"keys {other!r} and {key!r} differ only in case or surrounding spaces; "
                    "keep one"
                )
                return InputRow(line, None, problem)
    return InputRow(line, fields, invalid=invalid)


def _json_text(value: Any) -> str:
    """Compact JSON of a decoded value, its numbers as they were written."""
    if value.__class__ is _Number:
        return str(value)
    if isinstance(value, list):
        return "[" + ",".join(map(_json_text, value)) + "]"
    if isinstance(value, dict):
        items = (f"{_json_text(key)}:{_json_text(item)}" for key, item in value.items())
        return "{" + ",".join(items) + "}"
    return json.dumps(value, ensure_ascii=False)


# --- lines -----------------------------------------------------------------------------------


class _TooLong(Exception):
    """A header or row went past MAX_ROW_CHARS."""


class _Lines:
    """The lines of the text for the parsers, each record at most MAX_ROW_CHARS characters.

    `used` counts the characters of the current record (a CSV record may span lines) and the
    parser sets it to 0 at each record. A line that takes its record past the bound raises
    _TooLong; the next read first skips the rest of that line in chunks, so memory stays flat
    however long it is. The record's own final line end is not counted.

    What ends a line is the first line's end: a CR alone only when the first line ends in one (a
    file saved on an old Mac). In a file of LF or CRLF lines a CR alone is inside its line: cut
    there, the row's text would be sent truncated and its rest be read as another row. For CSV
    (`stand_in_cr`) such a CR reaches the csv module as `_CR_STAND_IN`, since the module refuses a
    CR in an unquoted field; `_csv_rows` puts the CRs back.
    """

    __slots__ = ("_readline", "_skipping", "cr_ends_lines", "cr_stood_in", "stand_in_cr", "used")

    def __init__(self, text: io.TextIOWrapper) -> None:
        self._readline = text.readline
        self._skipping = False
        self.used = 0
        self.cr_ends_lines = True  # until the first line says otherwise
        self.stand_in_cr = False
        self.cr_stood_in = False  # whether a line so far had a CR replaced by the stand-in

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        if self._skipping:
            self._skip_line()
        line = self._piece()
        if not line:
            raise StopIteration
        if self.cr_ends_lines or not line.endswith("\r"):
            return line
        # The text's reader cut the line at a CR alone: the line goes on to its LF.
        pieces = [line]
        while (piece := self._piece()).endswith("\r"):
            pieces.append(piece)
        pieces.append(piece)
        line = "".join(pieces)
        if not self.stand_in_cr:
            return line
        self.cr_stood_in = True
        end = _line_end(line, cr_ends_lines=not piece)  # a CR last in the input ends its line
        return line[: len(line) - end].replace("\r", _CR_STAND_IN) + line[len(line) - end :]

    def _piece(self) -> str:
        """The text up to the next LF or CR (or the end), counted towards the bound."""
        piece = self._readline(_READ_CHARS)
        self.used += len(piece)
        if self.used > MAX_ROW_CHARS:
            end = _line_end(piece, cr_ends_lines=self.cr_ends_lines)
            if self.used - end > MAX_ROW_CHARS:
                self._skipping = not end
                raise _TooLong
        return piece

    def _skip_line(self) -> None:
        self._skipping = False
        while (chunk := self._readline(_CHUNK_BYTES)) and not _line_end(
            chunk, cr_ends_lines=self.cr_ends_lines
        ):
            pass


# A character no decoded text holds (undecodable bytes become U+DC80-U+DCFF, never a high
# surrogate), standing in for a CR inside a CSV line while the csv module reads it.
_CR_STAND_IN = "\ud800"


def _line_end(line: str, *, cr_ends_lines: bool) -> int:
    """The length of the line end `line` ends with: 0 when it ends without one."""
    if line.endswith("\r\n"):
        return 2
    if line.endswith("\n") or (cr_ends_lines and line.endswith("\r")):
        return 1
    return 0


# --- bytes -----------------------------------------------------------------------------------


class _ByteSource(io.RawIOBase):
    """The input's bytes: what looking for a byte order mark read first, then the stream.

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

    def bom_encoding(self) -> str | None:
        """The encoding a byte order mark at the start says, if any; keeps the bytes read.

        Reads only while what came could still be a mark: a pipe may deliver it a byte at a time.
        """
        head = b""
        while len(head) < 4 and any(bom.startswith(head) for bom, _ in _BOMS):
            chunk = self._read(_CHUNK_BYTES)
            if not chunk:
                break
            head += chunk
        self._prefix = head
        return next((encoding for bom, encoding in _BOMS if head.startswith(bom)), None)

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


def read_batches(
    source: RowSource,
    batch_size: int,
    put: Callable[[list[InputRow] | BaseException | None], None],
) -> None:
    """Read `source` to its end, blocking, handing `put` batches of up to `batch_size` rows, then
    None; or the exception reading raised. From a pipe, a terminal or a socket, a partial batch
    goes out as soon as no more input is ready. `put` may raise `_Stopped` to end the reading."""
    batch: list[InputRow] = []

    def flush() -> None:
        if batch:
            put(batch.copy())  # a copy: this thread goes on filling `batch`
            batch.clear()

    source._bytes.before_wait = flush
    source._bytes.reader_started()
    try:
        for row in source:
            batch.append(row)
            if len(batch) >= batch_size:
                flush()
        flush()
        put(None)
    except _Stopped:
        pass
    except BaseException as exc:  # whatever it is, the consumer must hear of it, not hang
        with contextlib.suppress(_Stopped):
            flush()
            put(exc)
    finally:
        source._bytes.before_wait = None
        source._bytes.reader_done()
