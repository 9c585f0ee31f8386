"""Records as JSON lines, the running tally and the summary."""

from __future__ import annotations

import asyncio
import io
import json
import random
from decimal import Decimal

import pytest

from sms_blaster.models import Encoding, ErrorKind, Record, RowError, Status
from sms_blaster.output import (
    LatencyHistogram,
    RecordTotals,
    RecordWriter,
    bar_text,
    json_line,
    record_to_json,
    summary_lines,
)
from sms_blaster.records_output import GroupFlush

SENT = Record(
    12, "447911123456", Status.SENT, "c7f3-12", 1, ("0A00000012",), 1, Encoding.GSM7,
    Decimal("0.03330000"), 53.1,
)  # fmt: skip
INVALID = Record(
    13, "+44 12", Status.FAILED, "c7f3-13",
    error=RowError(ErrorKind.INVALID_INPUT, "invalid_number", "not a valid phone number"),
)  # fmt: skip


def test_a_sent_record_has_the_documented_shape() -> None:
    """Every key of the record in docs/architecture.md, with the price as a string."""
    out = io.BytesIO()
    RecordWriter(out, RecordTotals()).emit(SENT)
    assert json.loads(out.getvalue()) == {
        "line": 12,
        "to": "447911123456",
        "status": "sent",
        "client_ref": "c7f3-12",
        "message_ids": ["0A00000012"],
        "segments": 1,
        "encoding": "gsm7",
        "price": "0.03330000",
        "attempts": 1,
        "latency_ms": 53.1,
        "error": None,
    }


def test_a_failed_record_carries_kind_code_and_message() -> None:
    """The error object says why; keys that do not apply are null, never missing."""
    out = io.BytesIO()
    RecordWriter(out, RecordTotals()).emit(INVALID)
    record = json.loads(out.getvalue())
    assert record["error"] == {
        "kind": "invalid_input",
        "code": "invalid_number",
        "message": "not a valid phone number",
    }
    assert record["price"] is None
    assert record["message_ids"] == []


def test_records_are_one_line_each() -> None:
    """Non-ASCII text stays readable and every record ends with one newline."""
    out = io.BytesIO()
    writer = RecordWriter(out, RecordTotals())
    writer.emit(SENT)
    writer.emit(INVALID)
    assert out.getvalue().count(b"\n") == 2


def test_tally_counts_statuses_reasons_segments_and_cost() -> None:
    """The summary's figures come from the records."""
    tally = RecordTotals()
    for record in (SENT, SENT, INVALID):
        tally.add(record)
    assert tally.by_status[Status.SENT] == 2
    assert tally.by_error[("invalid_input", "invalid_number")] == 1
    assert (tally.segments, tally.cost) == (2, Decimal("0.06660000"))
    assert not tally.all_good
    assert "2 sent, 1 failed" in summary_lines(tally, 1.0, 2.0)[0]


def test_latency_percentiles_are_within_one_percent() -> None:
    """p50 and p99 of 1..1000 ms from the constant-memory histogram."""
    histogram = LatencyHistogram()
    for ms in range(1, 1001):
        histogram.add(float(ms))
    assert histogram.percentile(0.5) == pytest.approx(500, rel=0.01)
    assert histogram.percentile(0.99) == pytest.approx(990, rel=0.01)
    assert LatencyHistogram().percentile(0.5) is None


def test_the_bar_shows_share_done_and_time_left() -> None:
    """Half of 100 rows in 10 s: half full, 10 s to go; no bar without an estimate."""
    assert bar_text(50, 100, 10.0, width=10) == "[#####-----]  50% ETA 0m10s "
    assert bar_text(120, 100, 10.0, width=4) == "[####] 100% "
    assert bar_text(5, None, 1.0) == ""


class CountedFlushes:
    """A flush that works, and counts how often it was called."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> bool:
        self.count += 1
        return True


async def test_rows_waiting_for_a_flush_in_the_same_turn_share_one() -> None:
    """Three rows ending together cost one flush, and each hears that it worked."""
    flush = CountedFlushes()
    group = GroupFlush(flush)
    assert list(await asyncio.gather(group.wait(), group.wait(), group.wait())) == [True] * 3
    assert flush.count == 1


async def test_a_row_waiting_after_a_flush_gets_a_flush_of_its_own() -> None:
    """A record emitted after a flush is not taken for flushed by it."""
    flush = CountedFlushes()
    group = GroupFlush(flush)
    await group.wait()
    await group.wait()
    assert flush.count == 2


async def test_a_flush_that_fails_is_told_to_every_row_waiting() -> None:
    """The records could not be written: every waiter gets False, so none writes its row's end."""
    group = GroupFlush(lambda: False)
    assert list(await asyncio.gather(group.wait(), group.wait())) == [False, False]


def generic_line(record: Record) -> bytes:
    """A record's line as the JSON encoder writes it."""
    fields = record_to_json(record)
    try:
        return (json.dumps(fields, ensure_ascii=False) + "\n").encode()
    except UnicodeEncodeError:
        return (json.dumps(fields) + "\n").encode()


def test_record_lines_are_the_json_encoders_bytes() -> None:
    """Every shape of record, odd text and numbers included, written as json.dumps writes it."""
    draw = random.Random(5)
    texts = ["", "a", 'q"uote\\', "\n\t\x00\x1f", "é 😀", "\u2028", "\udc80", "x" * 40]
    latencies = [None, 0.0, 1.5, 12345.6, 1e-7, 1e22, -0.0, float("inf"), float("nan"), 3]
    records = [
        Record(
            line=draw.randrange(10**9),
            to=draw.choice(texts),
            status=draw.choice(list(Status)),
            client_ref=draw.choice(texts),
            attempts=draw.randrange(5),
            message_ids=tuple(draw.sample(texts, draw.randrange(3))),
            segments=draw.choice([None, 1, 7]),
            encoding=draw.choice([None, *Encoding]),
            price=draw.choice([None, Decimal("0.0333"), Decimal("1E+2"), Decimal("-0")]),
            latency_ms=draw.choice(latencies),
            error=draw.choice(
                [
                    None,
                    RowError(draw.choice(list(ErrorKind)), draw.choice(texts), draw.choice(texts)),
                ]
            ),
            plain_segments=draw.choice([None, None, 3]),
            sender=draw.choice([None, None, *texts]),
        )
        for _ in range(3000)
    ]
    assert [json_line(record) for record in records] == [generic_line(r) for r in records]


def test_a_record_whose_text_smart_encoding_changed_says_so_with_its_plain_parts() -> None:
    """`text_changed` and `plain_segments` follow the other keys; a record of a text sent as
    given has neither."""
    changed = Record(1, "447911123456", Status.SENT, "c-1", 1, ("id",), 1, Encoding.GSM7,
                     plain_segments=2)  # fmt: skip
    as_given = Record(2, "447911123457", Status.SENT, "c-2", 1, ("id",), 1, Encoding.GSM7)

    line = json.loads(json_line(changed))
    assert list(line)[-3:] == ["error", "text_changed", "plain_segments"]
    assert (line["text_changed"], line["plain_segments"], line["segments"]) == (True, 2, 1)
    assert "text_changed" not in json.loads(json_line(as_given))
    assert "plain_segments" not in record_to_json(as_given, dry_run=True)
