"""Reading campaign rows: CSV and JSONL, files and stdin, and streaming them to the event loop."""

from __future__ import annotations

import asyncio
import csv
import errno
import io
import itertools
import json
import os
import threading
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing, contextmanager
from pathlib import Path
from typing import Any, BinaryIO, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sms_blaster.errors import UsageError
from sms_blaster.inputs import MAX_ROW_CHARS, InputFormat, RowSource, open_input, stream_rows
from sms_blaster.models import InputRow

WAIT_S = 5.0  # the bound on every wait: a hang fails the test instead of stalling the run


def write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def read_file(tmp_path: Path, name: str, data: bytes, encoding: str = "utf-8") -> list[InputRow]:
    with open_input(write(tmp_path, name, data), encoding=encoding) as source:
        return list(source)


def read_stdin(
    data: bytes, fmt: InputFormat = InputFormat.AUTO
) -> tuple[RowSource, list[InputRow]]:
    with open_input("-", fmt, stdin=io.BytesIO(data)) as source:
        return source, list(source)


async def collect(batches: AsyncIterator[list[InputRow]]) -> list[list[InputRow]]:
    async with asyncio.timeout(WAIT_S):
        return [batch async for batch in batches]


def reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("sms-blaster-input")]


# --- CSV -------------------------------------------------------------------------------------


def test_csv_with_a_bom_and_crlf_reads_clean_names_and_values(tmp_path: Path) -> None:
    """A UTF-8 BOM and CRLF line ends (as Excel writes) leave no trace in names or values."""
    path = write(tmp_path, "r.csv", b"\xef\xbb\xbfto,name\r\n447700900001,Ann\r\n")
    with open_input(path) as source:
        assert source.columns == ("to", "name")
        assert list(source) == [InputRow(1, {"to": "447700900001", "name": "Ann"})]


def test_a_quoted_comma_and_newline_stay_in_one_field_and_one_line_number(tmp_path: Path) -> None:
    """A quoted field spanning lines is one row, so the next row's line is 2."""
    data = b'to,text\n1,"Hi, Ann\nsee you"\n2,bye\n'
    assert read_file(tmp_path, "r.csv", data) == [
        InputRow(1, {"to": "1", "text": "Hi, Ann\nsee you"}),
        InputRow(2, {"to": "2", "text": "bye"}),
    ]


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_the_delimiter_is_detected_from_the_header(tmp_path: Path, delimiter: str) -> None:
    """`;`, tab and `|` are recognised by their count in the header line, commas in values kept."""
    data = f"to{delimiter}text\n1{delimiter}a,b\n".encode()
    assert read_file(tmp_path, "r.csv", data) == [InputRow(1, {"to": "1", "text": "a,b"})]


def test_a_delimiter_inside_quotes_in_the_header_is_not_counted(tmp_path: Path) -> None:
    """A quoted header name holding semicolons does not make `;` the delimiter."""
    data = b'"a;b;c",to\nx,1\n'
    assert read_file(tmp_path, "r.csv", data) == [InputRow(1, {"a;b;c": "x", "to": "1"})]


def test_header_names_are_stripped_of_surrounding_spaces(tmp_path: Path) -> None:
    """`to , name` gives the columns `to` and `name`."""
    with open_input(write(tmp_path, "r.csv", b" to , name \n1,Ann\n")) as source:
        assert source.columns == ("to", "name")


def test_columns_are_keyed_ignoring_case_and_keep_their_names(tmp_path: Path) -> None:
    """`Phone,Name` rows are keyed `phone`, `name`; the names as written stay for messages."""
    with open_input(write(tmp_path, "r.csv", b"Phone,NAME\n1,Ann\n")) as source:
        assert (source.columns, source.names) == (("phone", "name"), ("Phone", "NAME"))
        assert list(source) == [InputRow(1, {"phone": "1", "name": "Ann"})]


def test_columns_differing_only_in_case_are_a_usage_error_naming_both(tmp_path: Path) -> None:
    """`phone` and `Phone` would be one column: refused, naming both."""
    with pytest.raises(
        UsageError, match=r"r\.csv: columns 'phone' and 'Phone' differ only in case"
    ):
        read_file(tmp_path, "r.csv", b"phone,name,Phone\n1,a,2\n")


def test_rows_with_too_few_or_too_many_fields_are_problems(tmp_path: Path) -> None:
    """A row whose field count differs from the header's is a problem row; the others go on."""
    data = b"to,name,text\n1,Ann\n2,Bob,hi,extra\n3,Cy,hi\n"
    assert read_file(tmp_path, "r.csv", data) == [
        InputRow(1, None, "row has 2 fields, the header has 3"),
        InputRow(2, None, "row has 4 fields, the header has 3"),
        InputRow(3, {"to": "3", "name": "Cy", "text": "hi"}),
    ]


def test_blank_csv_lines_are_skipped_and_not_counted(tmp_path: Path) -> None:
    """Empty and whitespace-only lines, before the header or between rows, are not rows."""
    data = b"\n\nto,name\n1,Ann\n\n  \r\n2,Bob\n\n"
    assert read_file(tmp_path, "r.csv", data) == [
        InputRow(1, {"to": "1", "name": "Ann"}),
        InputRow(2, {"to": "2", "name": "Bob"}),
    ]


def test_a_single_column_csv_skips_whitespace_only_lines(tmp_path: Path) -> None:
    """With one column too, a line of spaces is a blank line, not a row with a blank value."""
    assert read_file(tmp_path, "r.csv", b"to\n1\n   \n2\n") == [
        InputRow(1, {"to": "1"}),
        InputRow(2, {"to": "2"}),
    ]


@settings(max_examples=60)
@given(st.data())
def test_any_csv_a_writer_makes_reads_back_keyed_by_column_key(data: st.DataObject) -> None:
    """Quotes, delimiters, newlines and any text in fields read back as written, row by row."""
    header = data.draw(
        st.lists(
            st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,10}", fullmatch=True),
            min_size=2,
            max_size=5,
            unique_by=str.casefold,
        )
    )
    rows = data.draw(
        st.lists(st.lists(st.text(max_size=30), min_size=len(header), max_size=len(header)))
    )
    delimiter = data.draw(st.sampled_from(",;\t|"))
    out = io.StringIO()
    # CRLF: with it the writer quotes a field holding \r or \n (with \n alone, a bare \r not).
    csv.writer(out, delimiter=delimiter, lineterminator="\r\n").writerows([header, *rows])
    source, read = read_stdin(out.getvalue().encode(), InputFormat.CSV)
    assert source.columns == tuple(name.casefold() for name in header)
    expected = [dict(zip(source.columns, row, strict=True)) for row in rows]
    assert [row.fields for row in read] == expected
    assert [row.line for row in read] == list(range(1, len(rows) + 1))


@pytest.mark.parametrize("end", [b"\n", b"\r\n"])
def test_a_cr_alone_in_an_lf_file_is_inside_its_field_and_its_row(
    tmp_path: Path, end: bytes
) -> None:
    """In a file of LF (or CRLF) lines, a CR alone in a field, quoted or not, stays in the field:
    the row is read whole and the rows after it keep their line numbers. (A csv writer with LF
    line ends leaves such a field unquoted.)"""
    lines = [b"to,text", b"1,a\rb", b'2,"x\ry"', b"3,a\r\rb\r,", b"4,ok"]
    rows = read_file(tmp_path, "r.csv", end.join(lines) + end)
    assert rows == [
        InputRow(1, {"to": "1", "text": "a\rb"}),
        InputRow(2, {"to": "2", "text": "x\ry"}),
        InputRow(3, None, "row has 3 fields, the header has 2"),
        InputRow(4, {"to": "4", "text": "ok"}),
    ]


@pytest.mark.parametrize("name", ["r.csv", "r.jsonl"])
def test_a_file_of_cr_lines_reads_one_row_a_line(tmp_path: Path, name: str) -> None:
    """A file saved on an old Mac ends its lines in a CR alone: each is a line, the last too."""
    data = b"to,text\r1,a\r\r2,b\r" if name == "r.csv" else b'{"to":"1"}\r\r{"to":"2"}\r'
    rows = read_file(tmp_path, name, data)
    assert [row.fields and row.fields["to"] for row in rows] == ["1", "2"]
    assert [row.line for row in rows] == [1, 2]


def test_a_jsonl_line_with_a_cr_alone_inside_is_one_line(tmp_path: Path) -> None:
    """A CR between a JSON object's tokens is white space, not the end of its line."""
    rows = read_file(tmp_path, "r.jsonl", b'{"to":"1"}\n{"to":"2",\r"text":"x"}\n{"to":"3"}\n')
    assert rows == [
        InputRow(1, {"to": "1"}),
        InputRow(2, {"to": "2", "text": "x"}),
        InputRow(3, {"to": "3"}),
    ]


def test_a_row_of_crs_past_the_bound_is_one_problem_and_the_next_line_a_row(
    tmp_path: Path,
) -> None:
    """CRs alone in an LF file do not cut a row past the bound into rows: it is one problem row,
    and reading goes on after its LF."""
    data = b"to,text\n1," + b"x\r" * 100_000 + b"\n2,ok\n"
    rows = read_file(tmp_path, "r.csv", data)
    assert rows == [
        InputRow(1, None, "row longer than 65,536 characters"),
        InputRow(2, {"to": "2", "text": "ok"}),
    ]


def test_a_row_past_the_bound_is_a_problem_and_the_next_line_is_a_row(tmp_path: Path) -> None:
    """A row longer than MAX_ROW_CHARS is one problem row; reading goes on at its line end."""
    data = b"to,text\n1," + b"x" * 200_000 + b"\n2,ok\n"
    rows = read_file(tmp_path, "r.csv", data)
    assert rows == [
        InputRow(1, None, "row longer than 65,536 characters"),
        InputRow(2, {"to": "2", "text": "ok"}),
    ]


@pytest.mark.parametrize("end", [b"\n", b"\r\n", b""])
def test_a_row_of_exactly_the_bound_is_read(tmp_path: Path, end: bytes) -> None:
    """The bound counts the row's characters, not its line end."""
    value = "x" * (MAX_ROW_CHARS - len("1,"))
    rows = read_file(tmp_path, "r.csv", b"to,text\n1," + value.encode() + end)
    assert rows == [InputRow(1, {"to": "1", "text": value})]


def test_a_stray_quote_costs_one_problem_row_of_at_most_the_bound(tmp_path: Path) -> None:
    """An unclosed quote takes the lines after it into its row only up to the bound; the rows
    after that line are read as rows again."""
    rows_after = b"".join(b"%d,ok\n" % n for n in range(2, 20_000))
    rows = read_file(tmp_path, "r.csv", b'to,text\n1,"oops\n' + rows_after)
    assert rows[0] == InputRow(1, None, "row longer than 65,536 characters")
    assert all(row.fields is not None for row in rows[1:])
    assert rows[-1] == InputRow(len(rows), {"to": "19999", "text": "ok"})
    assert len(rows) > 10_000


@pytest.mark.parametrize("name", ["r.csv", "r.jsonl", "r"])
def test_a_first_line_past_the_bound_is_a_usage_error(tmp_path: Path, name: str) -> None:
    """A header (or a JSONL line before any object) without a line end is refused up front."""
    with pytest.raises(UsageError, match=r"the first line is longer than 65,536 characters"):
        read_file(tmp_path, name, b"{" + b"\0" * 100_000)


def test_a_header_over_lines_past_the_bound_is_a_usage_error(tmp_path: Path) -> None:
    """A header's quoted newlines do not reset the bound."""
    data = b'to,"' + b"z\n" * 40_000 + b'"\n1,2\n'
    with pytest.raises(UsageError, match=r"the header is longer than 65,536 characters"):
        read_file(tmp_path, "r.csv", data)


def test_jsonl_lines_past_the_bound_before_any_object_are_a_usage_error(tmp_path: Path) -> None:
    """Until the first valid object names the columns, a line without an end is refused."""
    data = b"not json\n" + b"x" * 100_000 + b"\n"
    with pytest.raises(UsageError, match=r"row 2 is longer than 65,536 characters"):
        read_file(tmp_path, "r.jsonl", data)


def test_a_jsonl_line_past_the_bound_after_an_object_is_a_problem(tmp_path: Path) -> None:
    """After the first object, a long line is a problem row and the next line is read."""
    data = b'{"to": "1"}\n{"to": "' + b"9" * 100_000 + b'"}\n{"to": "3"}\n'
    assert read_file(tmp_path, "r.jsonl", data) == [
        InputRow(1, {"to": "1"}),
        InputRow(2, None, "row longer than 65,536 characters"),
        InputRow(3, {"to": "3"}),
    ]


def test_fifty_megabytes_without_a_line_end_keep_memory_flat() -> None:
    """A 50 MB row is skipped in chunks: traced allocations stay far below its size."""
    chunks = itertools.chain([b"to,text\n1,"], itertools.repeat(b"x" * 65_536, 800), [b"\n2,ok\n"])
    tracemalloc.start()
    try:
        with open_input("-", stdin=generated(chunks)) as source:
            rows = list(source)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [row.line for row in rows] == [1, 2]
    assert rows[0].problem == "row longer than 65,536 characters"
    assert peak_bytes < 5_000_000


def generated(chunks: Iterator[bytes]) -> BinaryIO:
    return cast(BinaryIO, GeneratedStream(chunks))


class GeneratedStream(io.RawIOBase):
    """A stdin whose bytes come from an iterator of chunks, never all in memory."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        super().__init__()
        self._chunks = chunks
        self._left = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._left or next(self._chunks, b"")
        size = min(len(view), len(data))
        view[:size], self._left = data[:size], data[size:]
        return size


# --- JSONL -----------------------------------------------------------------------------------


def test_jsonl_numbers_keep_their_source_text_and_other_values_are_marked(tmp_path: Path) -> None:
    """Numbers read as written; a boolean, list or object is JSON text named in `invalid`."""
    data = b'{"to": 447700900001, "n": 4.477009e11, "r": 0.50, "ok": true, "o": {"a": [1, 2.0]}}\n'
    assert read_file(tmp_path, "r.jsonl", data) == [
        InputRow(
            1,
            {
                "to": "447700900001",
                "n": "4.477009e11",
                "r": "0.50",
                "ok": "true",
                "o": '{"a":[1,2.0]}',
            },
            invalid={"ok": "a JSON boolean", "o": "a JSON object"},
        )
    ]


@given(st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False)))
def test_a_jsonl_number_reads_as_its_source_text(value: float) -> None:
    """An integer stays its digits (never 4.4791e+11); any number stays as it was written."""
    written = json.dumps(value)
    _, rows = read_stdin(b'{"n": ' + written.encode() + b"}\n")
    assert rows == [InputRow(1, {"n": written})]


def test_jsonl_nesting_too_deep_to_write_back_is_a_problem(tmp_path: Path) -> None:
    """A list nested deeper than can be written back is a problem row, not a crashed reader."""
    data = b'{"to": "1"}\n{"to": ' + b"[" * 900 + b"]" * 900 + b'}\n{"to": "3"}\n'
    rows = read_file(tmp_path, "r.jsonl", data)
    assert rows[1].fields is None
    assert rows[2] == InputRow(3, {"to": "3"})


def test_jsonl_nan_is_not_json(tmp_path: Path) -> None:
    """NaN and Infinity, which Python's json accepts, make the row a problem."""
    assert read_file(tmp_path, "r.jsonl", b'{"to": "1"}\n{"to": NaN}\n')[1] == InputRow(
        2, None, "invalid JSON: NaN is not a JSON number"
    )


def test_jsonl_keys_are_matched_trimmed_and_ignoring_case(tmp_path: Path) -> None:
    """Fields are keyed by column_key; the columns keep the names as written for messages."""
    with open_input(write(tmp_path, "r.jsonl", b'{" To ": "1", "Name": "A"}\n')) as source:
        assert (source.columns, source.names) == (("to", "name"), ("To", "Name"))
        assert list(source) == [InputRow(1, {"to": "1", "name": "A"})]


def test_jsonl_keys_differing_only_in_case_make_the_row_a_problem(tmp_path: Path) -> None:
    """Two keys that would be one column: the row names both and is not sent."""
    rows = read_file(tmp_path, "r.jsonl", b'{"to": "1"}\n{"to": null, "TO": "2"}\n')
    assert rows[1] == InputRow(
        2, None, "keys 'to' and 'TO' differ only in case or surrounding spaces; keep one"
    )


def test_a_jsonl_key_given_twice_makes_the_row_a_problem(tmp_path: Path) -> None:
    """json keeps the last of a key given twice, so the row would go to a number chosen by a
    guess: it is refused, naming the key, whether the key is written the same way or
    escaped; a key given twice in a nested object, colons in values, and a row a colon short
    of a check are read as before."""
    rows = read_file(
        tmp_path,
        "r.jsonl",
        b'{"to":"+447911100001","to":"+447911100002"}\n'
        b'{"to": "1", "name": "A", "n\\u0061me": "B"}\n'
        b'{"to": "3", "name": "at 10:30, https://x.test"}\n'
        b'{"to": "4", "x": {"a": 1, "a": 2}}\n'
        b'{"to": "5"}\n',
    )
    assert rows[0] == InputRow(1, None, "key 'to' appears twice; keep one")
    assert rows[1] == InputRow(2, None, "key 'name' appears twice; keep one")
    assert rows[2] == InputRow(3, {"to": "3", "name": "at 10:30, https://x.test"})
    assert rows[3].fields == {"to": "4", "x": '{"a":2}'}
    assert rows[4] == InputRow(5, {"to": "5"})


def test_a_jsonl_null_leaves_the_key_absent_but_a_column(tmp_path: Path) -> None:
    """A null value is absent from the row's fields, yet its key is still one of the columns."""
    with open_input(write(tmp_path, "r.jsonl", b'{"to": "1", "name": null}\n')) as source:
        assert source.columns == ("to", "name")
        assert list(source) == [InputRow(1, {"to": "1"})]


def test_a_bad_jsonl_line_is_a_problem_and_the_run_goes_on(tmp_path: Path) -> None:
    """Invalid JSON and a non-object are problem rows with their line; later rows still come."""
    data = b'{"to": "1"}\n{"to": \n[1, 2]\n{"to": "4"}\n'
    assert read_file(tmp_path, "r.jsonl", data) == [
        InputRow(1, {"to": "1"}),
        InputRow(2, None, "invalid JSON: Expecting value (column 8)"),
        InputRow(3, None, "not a JSON object"),
        InputRow(4, {"to": "4"}),
    ]


def test_jsonl_columns_come_from_the_first_valid_object_after_bad_lines(tmp_path: Path) -> None:
    """When the first lines are bad, the columns still come from the first valid object."""
    data = b'oops\n"text"\n{"to": "3", "name": "Cy"}\n'
    with open_input(write(tmp_path, "r.jsonl", data)) as source:
        assert source.columns == ("to", "name")
        assert [row.line for row in source] == [1, 2, 3]


def test_whitespace_only_jsonl_lines_are_skipped_and_not_counted(tmp_path: Path) -> None:
    """Blank and whitespace-only lines are not rows, so line numbers skip them."""
    data = b'\n{"to": "1"}\n   \r\n\t\n{"to": "2"}\n'
    assert [row.line for row in read_file(tmp_path, "r.jsonl", data)] == [1, 2]


# --- encodings -------------------------------------------------------------------------------


def test_undecodable_bytes_make_only_their_row_a_problem(tmp_path: Path) -> None:
    """A Latin-1 byte read as UTF-8 is a problem on its row, naming the encoding and the fix."""
    data = b"to,name\n1,Jos\xe9\n2,Ann\n"
    assert read_file(tmp_path, "r.csv", data) == [
        InputRow(1, None, "not valid utf-8 text; use --encoding (e.g. --encoding latin-1)"),
        InputRow(2, {"to": "2", "name": "Ann"}),
    ]


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be", "utf-32-le", "utf-8"])
@pytest.mark.parametrize("encoding", ["utf-8", "latin-1"])
def test_a_byte_order_mark_decides_the_encoding(tmp_path: Path, codec: str, encoding: str) -> None:
    """UTF-16, UTF-32 or UTF-8 with a BOM reads as such, whatever --encoding says."""
    data = "\ufeffto,name\r\n1,Zoë 😀\r\n".encode(codec)
    rows = read_file(tmp_path, "r.csv", data, encoding=encoding)
    assert rows == [InputRow(1, {"to": "1", "name": "Zoë 😀"})]


def test_a_byte_order_mark_arriving_a_byte_at_a_time_is_seen() -> None:
    """From a pipe, the two bytes of a UTF-16 BOM may come in separate reads."""
    data = '\ufeff{"to": "1"}\n'.encode("utf-16-le")
    with open_input("-", stdin=generated(iter([data[:1], data[1:3], data[3:]]))) as source:
        assert list(source) == [InputRow(1, {"to": "1"})]


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
def test_utf16_without_a_bom_is_a_usage_error_with_a_hint(tmp_path: Path, codec: str) -> None:
    """Every other byte NUL: the error says to give --encoding utf-16."""
    with pytest.raises(UsageError, match=r"r\.csv: looks like UTF-16 .*--encoding utf-16"):
        read_file(tmp_path, "r.csv", "to,name\r\n1,A\r\n".encode(codec))


def test_utf16_without_a_bom_reads_with_its_encoding(tmp_path: Path) -> None:
    """With the --encoding the hint gives, the same file reads."""
    data = "to,name\n1,A\n".encode("utf-16-le")
    assert read_file(tmp_path, "r.csv", data, encoding="utf-16-le") == [
        InputRow(1, {"to": "1", "name": "A"})
    ]


def test_latin1_reads_the_bytes_that_utf8_cannot(tmp_path: Path) -> None:
    """With --encoding latin-1 the same row reads as text."""
    rows = read_file(tmp_path, "r.csv", b"to,name\n1,Jos\xe9\n", encoding="latin-1")
    assert rows == [InputRow(1, {"to": "1", "name": "José"})]


def test_an_undecodable_jsonl_line_is_a_problem(tmp_path: Path) -> None:
    """Undecodable bytes in a JSONL line make that line a problem, not a JSON error."""
    data = b'{"to": "1", "name": "Jos\xe9"}\n{"to": "2"}\n'
    assert read_file(tmp_path, "r.jsonl", data) == [
        InputRow(1, None, "not valid utf-8 text; use --encoding (e.g. --encoding latin-1)"),
        InputRow(2, {"to": "2"}),
    ]


def test_an_undecodable_header_is_a_usage_error(tmp_path: Path) -> None:
    """A header that is not valid in the encoding stops before sending, suggesting --encoding."""
    with pytest.raises(UsageError, match=r"r\.csv: the header is not valid utf-8; use --encoding"):
        read_file(tmp_path, "r.csv", b"to,n\xe9m\n1,a\n")


def test_an_unknown_encoding_is_a_usage_error(tmp_path: Path) -> None:
    """A misspelt --encoding is reported as such."""
    with pytest.raises(UsageError, match="--encoding utf-9: unknown encoding"):
        read_file(tmp_path, "r.csv", b"to\n1\n", encoding="utf-9")


# --- format detection ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("r.csv", InputFormat.CSV),
        ("r.TSV", InputFormat.CSV),
        ("r.txt", InputFormat.CSV),
        ("r.jsonl", InputFormat.JSONL),
        ("r.ndjson", InputFormat.JSONL),
        ("r.json", InputFormat.JSONL),
    ],
)
def test_the_format_follows_the_file_extension(
    tmp_path: Path, name: str, expected: InputFormat
) -> None:
    """A known extension decides the format, whatever the content looks like."""
    with open_input(write(tmp_path, name, b'{"to": "1"}\n')) as source:
        assert source.format is expected


def test_a_file_without_a_known_extension_is_sniffed(tmp_path: Path) -> None:
    """An unknown extension falls back to the first non-whitespace byte."""
    with open_input(write(tmp_path, "recipients", b'\n  {"to": "1"}\n')) as source:
        assert source.format is InputFormat.JSONL
        assert list(source) == [InputRow(1, {"to": "1"})]


def test_stdin_starting_with_a_brace_is_read_as_jsonl() -> None:
    """Piped input whose first non-whitespace byte is `{` is JSONL, and no byte is lost."""
    source, rows = read_stdin(b' \n{"to": "1"}\n{"to": "2"}\n')
    assert source.name == "<stdin>"
    assert source.format is InputFormat.JSONL
    assert rows == [InputRow(1, {"to": "1"}), InputRow(2, {"to": "2"})]


def test_stdin_starting_with_anything_else_is_read_as_csv() -> None:
    """Piped input that does not start with `{` (here after a BOM) is CSV."""
    source, rows = read_stdin(b"\xef\xbb\xbfto\n1\n")
    assert source.format is InputFormat.CSV
    assert rows == [InputRow(1, {"to": "1"})]


def test_an_explicit_format_overrides_the_extension(tmp_path: Path) -> None:
    """`--format csv` reads a .json file as CSV."""
    with open_input(write(tmp_path, "r.json", b"to\n1\n"), InputFormat.CSV) as source:
        assert source.format is InputFormat.CSV
        assert list(source) == [InputRow(1, {"to": "1"})]


# --- bad files and empty input ---------------------------------------------------------------


def test_a_missing_file_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    """A path that does not exist is reported with its name."""
    with pytest.raises(UsageError, match=r"recipients\.csv: no such file"):
        open_input(str(tmp_path / "recipients.csv"))


def test_a_directory_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    """A directory given as the input is reported as one."""
    with pytest.raises(UsageError, match=f"{tmp_path}: is a directory"):
        open_input(str(tmp_path))


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read a file without read permission")
def test_an_unreadable_file_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    """A file without read permission is reported with its name."""
    path = write(tmp_path, "r.csv", b"to\n1\n")
    os.chmod(path, 0)
    with pytest.raises(UsageError, match=r"r\.csv: permission denied"):
        open_input(path)


def test_a_duplicate_column_is_a_usage_error_naming_the_file(tmp_path: Path) -> None:
    """Two columns with one name (after stripping spaces) cannot both be kept."""
    with pytest.raises(
        UsageError, match=r"recipients\.csv: duplicate column 'phone' in the header"
    ):
        read_file(tmp_path, "recipients.csv", b"phone,name, phone\n1,a,2\n")


@pytest.mark.parametrize("data", [b"", b"\n\r\n  \n"])
@pytest.mark.parametrize("fmt", [InputFormat.AUTO, InputFormat.CSV, InputFormat.JSONL])
def test_empty_input_has_no_columns_and_no_rows(data: bytes, fmt: InputFormat) -> None:
    """Zero bytes or only blank lines: no columns, no rows, and `has_rows` says so up front."""
    source, rows = read_stdin(data, fmt)
    assert (source.columns, source.has_rows) == ((), False)
    assert rows == []


def test_a_csv_with_only_a_header_has_its_columns_and_no_rows() -> None:
    """A header and blank lines give the columns and no rows."""
    source, rows = read_stdin(b"to,name\r\n\n \n")
    assert (source.columns, source.has_rows) == (("to", "name"), False)
    assert rows == []


def test_has_rows_reads_one_row_ahead_and_keeps_it() -> None:
    """The row read to know there is one is still the first row yielded."""
    source, rows = read_stdin(b"to\n1\n2\n")
    assert source.has_rows
    assert [row.line for row in rows] == [1, 2]


def test_rows_are_yielded_once(tmp_path: Path) -> None:
    """A second iteration goes on where the first stopped rather than starting over."""
    with open_input(write(tmp_path, "r.csv", b"to\n1\n2\n")) as source:
        assert next(iter(source)) == InputRow(1, {"to": "1"})
        assert list(source) == [InputRow(2, {"to": "2"})]


def test_closing_a_stdin_source_leaves_stdin_open() -> None:
    """The caller owns stdin: closing the source does not close it."""
    stdin = io.BytesIO(b"to\n1\n")
    open_input("-", stdin=stdin).close()
    assert not stdin.closed


# --- stream_rows -----------------------------------------------------------------------------


async def test_stream_rows_yields_every_row_in_order_in_batches(tmp_path: Path) -> None:
    """Ten rows in batches of four arrive as 4, 4 and 2, in input order."""
    data = b"to\n" + b"".join(b"%d\n" % n for n in range(10))
    with open_input(write(tmp_path, "r.csv", data)) as source:
        batches = await collect(stream_rows(source, batch_size=4))
    assert [len(batch) for batch in batches] == [4, 4, 2]
    assert [row.line for batch in batches for row in batch] == list(range(1, 11))


class BrokenAfterFirstRead(io.BytesIO):
    """A stdin whose second read fails, like a device that goes away."""

    def read1(self, size: int | None = -1, /) -> bytes:
        if self.tell():
            raise OSError(errno.EIO, "Input/output error")
        return super().read1(size)


async def test_stream_rows_raises_the_readers_exception_after_the_rows_before_it() -> None:
    """An OSError in the reader thread reaches the consumer, after the rows read before it."""
    received: list[InputRow] = []

    async def consume(source: RowSource) -> None:
        async for batch in stream_rows(source):
            received.extend(batch)

    with open_input("-", stdin=BrokenAfterFirstRead(b"to\n1\n2\n")) as source:
        async with asyncio.timeout(WAIT_S):
            with pytest.raises(OSError, match="Input/output error"):
                await consume(source)
    assert [row.line for row in received] == [1, 2]


async def test_stream_rows_ends_its_reader_when_the_consumer_breaks_early(tmp_path: Path) -> None:
    """Breaking out while the reader waits on a full queue lets the reader thread end."""
    data = b"to\n" + b"1\n" * 10_000
    with open_input(write(tmp_path, "early.csv", data)) as source:
        async with asyncio.timeout(WAIT_S):
            async with aclosing(stream_rows(source, batch_size=10, max_batches=1)) as batches:
                async for _batch in batches:
                    break
            (reader,) = [t for t in reader_threads() if "early.csv" in t.name]
            await asyncio.to_thread(reader.join, WAIT_S)
    assert not reader.is_alive()


@contextmanager
def pipe() -> Iterator[tuple[BinaryIO, BinaryIO]]:
    """A real pipe as (read end, write end); both are closed at the end if the test has not."""
    read_fd, write_fd = os.pipe()
    with open(read_fd, "rb") as read_end, open(write_fd, "wb", buffering=0) as write_end:
        yield read_end, write_end


async def test_a_partial_batch_from_a_pipe_arrives_without_waiting_for_more_input() -> None:
    """The first row is handed over while the pipe's writer waits for the test to receive it."""
    first_row_received = threading.Event()

    def produce(write_end: BinaryIO) -> None:
        with write_end:
            write_end.write(b"to,text\n1,first\n")
            first_row_received.wait(WAIT_S)
            write_end.write(b"2,second\n")

    with pipe() as (read_end, write_end):
        writer = threading.Thread(target=produce, args=(write_end,), daemon=True)
        writer.start()
        try:
            with open_input("-", stdin=read_end) as source:
                async with asyncio.timeout(WAIT_S), aclosing(stream_rows(source)) as batches:
                    first = await anext(batches)
                    first_row_received.set()
                    rest = [row async for batch in batches for row in batch]
        finally:
            first_row_received.set()
            writer.join(WAIT_S)
    assert first == [InputRow(1, {"to": "1", "text": "first"})]
    assert rest == [InputRow(2, {"to": "2", "text": "second"})]


async def test_a_cancelled_consumer_lets_a_reader_blocked_on_a_pipe_end_at_eof() -> None:
    """Cancelling the consumer while the reader waits on a quiet pipe does not strand the reader."""
    others = set(reader_threads())
    got_first = asyncio.Event()

    async def consume(source: RowSource) -> None:
        async for _batch in stream_rows(source):
            got_first.set()

    with pipe() as (read_end, write_end):
        write_end.write(b"to\n1\n")
        with open_input("-", stdin=read_end) as source:
            consumer = asyncio.create_task(consume(source))
            async with asyncio.timeout(WAIT_S):
                await got_first.wait()
                # Named now, while it surely runs: after the close below it may end at once.
                (reader,) = set(reader_threads()) - others
                consumer.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await consumer
                write_end.close()  # the blocked read returns: the reader finds the consumer gone
                await asyncio.to_thread(reader.join, WAIT_S)
    assert not reader.is_alive()


class GeneratedCsv(io.BytesIO):
    """A stdin that makes fixed-width rows as they are read: the input never exists all at once."""

    HEADER = b"to,name\n"
    ROW_BYTES = len(b"447700000000,Name 000000\n")

    def __init__(self, rows: int) -> None:
        super().__init__()
        self.bytes_read = 0  # by the reader thread, so far
        self._chunks = self._generate(rows)
        self._pending = b""

    def _generate(self, rows: int) -> Iterator[bytes]:
        yield self.HEADER
        for start in range(0, rows, 1000):
            numbers = range(start, min(start + 1000, rows))
            yield b"".join(b"447700%06d,Name %06d\n" % (n, n) for n in numbers)

    def read1(self, size: int | None = -1, /) -> bytes:
        if not self._pending:
            self._pending = next(self._chunks, b"")
        size = len(self._pending) if size is None or size < 0 else size
        data, self._pending = self._pending[:size], self._pending[size:]
        self.bytes_read += len(data)
        return data


async def test_a_large_input_streams_with_the_reader_never_far_ahead() -> None:
    """200 000 rows stream through, the reader never more than its buffers and queue ahead."""
    stdin = GeneratedCsv(200_000)
    received = 0
    most_ahead = 0
    with open_input("-", stdin=stdin) as source:
        async with asyncio.timeout(WAIT_S):
            async for batch in stream_rows(source, batch_size=256, max_batches=4):
                received += len(batch)
                ahead = stdin.bytes_read - len(stdin.HEADER) - received * stdin.ROW_BYTES
                most_ahead = max(most_ahead, ahead)
    assert received == 200_000
    # A 64 KiB read buffer, a decoded chunk and five batches of 256 rows: about 110 KiB.
    assert most_ahead < 256 * 1024  # of a 5 MB input
