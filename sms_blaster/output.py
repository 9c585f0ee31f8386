"""What a run shows: JSONL records on stdout, progress and the summary on stderr."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from json.encoder import encode_basestring
from typing import Any, BinaryIO, TextIO

from sms_blaster import logs
from sms_blaster.lookalikes import saved_and_added
from sms_blaster.models import Encoding, ErrorKind, Record, Status


def record_to_json(record: Record, *, dry_run: bool = False) -> dict[str, Any]:
    """The record as docs/architecture.md ("Records") fixes it: every key always present, null
    where it does not apply.

    A dry run's records also say so, and carry the text the real run would send (null for a row
    it would not send). A row whose text smart encoding changed says so, with the parts the text
    as given would have taken."""
    error = record.error
    fields = {
        "line": record.line,
        "to": record.to,
        "status": record.status.value,
        "client_ref": record.client_ref,
        "message_ids": list(record.message_ids),
        "segments": record.segments,
        "encoding": record.encoding.value if record.encoding else None,
        "price": None if record.price is None else str(record.price),
        "attempts": record.attempts,
        "latency_ms": record.latency_ms,
        "error": None
        if error is None
        else {"kind": error.kind.value, "code": error.code, "message": error.message},
    }
    if record.plain_segments is not None:
        fields |= {"text_changed": True, "plain_segments": record.plain_segments}
    if dry_run:
        fields |= {"dry_run": True, "text": record.text}
    if record.sender is not None:
        fields["from"] = record.sender  # only a pool's records name their sender
    return fields


class LatencyHistogram:
    """Percentiles in constant memory: log-spaced buckets, each 1 % wide."""

    __slots__ = ("_counts", "count")

    _BASE_MS = 0.01
    _LOG_STEP = math.log(1.01)

    def __init__(self) -> None:
        self._counts: Counter[int] = Counter()
        self.count = 0

    def add(self, latency_ms: float) -> None:
        bucket = int(math.log(max(latency_ms, self._BASE_MS) / self._BASE_MS) / self._LOG_STEP)
        self._counts[bucket] += 1
        self.count += 1

    def percentile(self, fraction: float) -> float | None:
        """The latency below which `fraction` of the samples fall (within 1 %)."""
        if not self.count:
            return None
        rank = max(1, math.ceil(fraction * self.count))
        seen = 0
        for bucket in sorted(self._counts):
            seen += self._counts[bucket]
            if seen >= rank:
                return self._middle_ms(bucket)
        raise AssertionError("unreachable: rank is at most count")

    def middles_ms(self) -> list[tuple[float, int]]:
        """Each bucket's middle latency and its samples, lowest first: the shape, for exporting."""
        return [(self._middle_ms(bucket), count) for bucket, count in sorted(self._counts.items())]

    def counts_by(self, bin_of: Callable[[float], int]) -> Counter[int]:
        """The samples by the bin `bin_of` puts each in, each counted at its bucket's middle."""
        counts: Counter[int] = Counter()
        for bucket, count in self._counts.items():
            counts[bin_of(self._middle_ms(bucket))] += count
        return counts

    def _middle_ms(self, bucket: int) -> float:
        return self._BASE_MS * math.exp((bucket + 0.5) * self._LOG_STEP)


class RecordTotals:
    """Running totals over the records of a run: by status and error, segments, cost, latency."""

    __slots__ = (
        "by_error", "by_status", "cost", "latency", "rows", "segments", "segments_added",
        "segments_saved", "sent_by_sender", "unknown_earlier",
    )  # fmt: skip

    def __init__(self) -> None:
        self.rows = 0
        self.by_status: Counter[Status] = Counter()
        self.by_error: Counter[tuple[str, str]] = Counter()
        self.segments = 0
        self.cost = Decimal(0)
        self.latency = LatencyHistogram()
        self.unknown_earlier = 0  # rows an earlier run left unknown (or in flight), not resent
        self.segments_saved = 0  # by smart encoding, of the rows sent
        self.sent_by_sender: Counter[str] = Counter()  # a pool's senders (--from-pool)
        self.segments_added = 0  # by smart encoding `always`, of the rows sent

    def add(self, record: Record) -> None:
        self.rows += 1
        self.by_status[record.status] += 1
        error = record.error
        if error is not None:
            self.by_error[(error.kind.value, error.code)] += 1
            if _unknown_earlier(record.status, error.kind, error.code, record.attempts):
                self.unknown_earlier += 1
        if record.status is Status.SENT:
            self.segments += record.segments or 0
            if record.plain_segments is not None:
                saved, added = saved_and_added(record.plain_segments - (record.segments or 0))
                self.segments_saved += saved
                self.segments_added += added
            if record.sender is not None:
                self.sent_by_sender[record.sender] += 1
            if record.latency_ms is not None:
                self.latency.add(record.latency_ms)
        if record.price is not None and not (error and error.kind is ErrorKind.ALREADY_SETTLED):
            self.cost += record.price  # this run's: a row settled earlier carries its own price

    @property
    def all_good(self) -> bool:
        """True when every row was sent or skipped as intended: a row an earlier run left
        unknown was not, though this run skips it."""
        counts = self.by_status
        return not (counts[Status.FAILED] or counts[Status.UNKNOWN] or self.unknown_earlier)


def _unknown_earlier(status: Status, kind: ErrorKind, code: str, attempts: int) -> bool:
    if status is Status.SKIPPED:
        return kind is ErrorKind.ALREADY_SETTLED and code == Status.UNKNOWN
    # Found in flight: an earlier run's request, not one of this run (attempts 0).
    return status is Status.UNKNOWN and kind is ErrorKind.AMBIGUOUS and not attempts


class RecordWriter:
    """The run's sink: one JSON line per record, counted as it goes.

    When the records cannot be written (a closed pipe, a full disk) `on_error` is called once and
    later records are only counted: the run must stop rather than send what it cannot record.
    """

    __slots__ = ("_dry_run", "_hide_settled", "_on_error", "_stream", "_write", "error", "tally")

    def __init__(
        self,
        stream: BinaryIO,
        tally: RecordTotals,
        on_error: Callable[[OSError], None] = lambda e: None,
        *,
        hide_settled: bool = False,
        dry_run: bool = False,
    ) -> None:
        self._stream = stream
        # A buffered stream takes all of a write or raises; a raw one (stdout under
        # PYTHONUNBUFFERED) may take part of it (`_write_all`).
        buffered = isinstance(stream, io.BufferedIOBase)
        self._write: Callable[[bytes], object] = stream.write if buffered else self._write_all
        self._dry_run = dry_run
        self.tally = tally
        self._on_error = on_error
        self._hide_settled = hide_settled  # --only-new: no records for rows settled earlier
        self.error: OSError | None = None

    def emit(self, record: Record) -> None:
        self.tally.add(record)
        if self._hide_settled and record.error and record.error.kind is ErrorKind.ALREADY_SETTLED:
            return
        if self.error is None:
            self._guard(self._write, json_line(record, self._dry_run))

    def flush(self) -> bool:
        """Hand the records emitted so far to the kernel; False when they could not be (now or
        earlier): the journal then keeps their rows owed, for the resume to write."""
        if self.error is None:
            self._guard(self._stream.flush)
        return self.error is None

    def close(self) -> None:
        """Flush and close a file of records: a full disk may show only here."""
        if self.error is None:
            self._guard(self._stream.close)
        else:  # reported already; what is still buffered cannot be written either
            with contextlib.suppress(OSError):
                self._stream.close()

    def _write_all(self, data: bytes) -> None:
        """Write all of `data`. A raw stream (stdout under PYTHONUNBUFFERED or `python -u`)
        may take only part of it, and says so only by the count it returns: the rest is
        written again, which raises when the disk is full or the file-size limit is met,
        rather than a record cut short passing for written."""
        written = self._stream.write(data)
        while written is not None and written < len(data):
            data = data[written:]
            written = self._stream.write(data)

    def _guard(self, write: Callable[..., object], *args: bytes) -> None:
        try:
            write(*args)
        except OSError as exc:
            self.error = exc
            self._on_error(exc)


def json_line(record: Record, dry_run: bool = False) -> bytes:
    """The record's line in the records file: `record_to_json` as JSON, and a newline."""
    if not dry_run:
        line = _direct_line(record)
        if line is not None:
            return line
    fields = record_to_json(record, dry_run=dry_run)
    try:
        return (json.dumps(fields, ensure_ascii=False) + "\n").encode()
    except UnicodeEncodeError:  # a value as given held undecodable bytes: escape them
        return (json.dumps(fields) + "\n").encode()


_text = encode_basestring  # a str as JSON, as json.dumps(ensure_ascii=False) writes it
_NAMES = {value: _text(value) for value in (*Status, *Encoding, *ErrorKind)}


def _direct_line(record: Record) -> bytes | None:
    """`record_to_json`'s JSON line, written directly: the same bytes, at a third of the cost.
    None for what only the JSON encoder writes right (a latency that is no finite float, text
    that is not UTF-8)."""
    latency, segments, price, error = (
        record.latency_ms, record.segments, record.price, record.error
    )  # fmt: skip
    if latency is None:
        latency_text = "null"
    elif type(latency) is float and math.isfinite(latency):
        latency_text = float.__repr__(latency)
    else:
        return None
    ids = ", ".join(map(_text, record.message_ids))
    error_text = (
        "null"
        if error is None
        else f'{{"kind": {_NAMES[error.kind]}, '
        f'"code": {_text(error.code)}, "message": {_text(error.message)}}}'
    )
    encoding = record.encoding
    plain = record.plain_segments
    changed = "" if plain is None else f', "text_changed": true, "plain_segments": {plain}'
    sender = record.sender
    sent_from = "" if sender is None else f', "from": {_text(sender)}'
    text = (
        f'{{"line": {record.line}, "to": {_text(record.to)}, "status": {_NAMES[record.status]}, '
        f'"client_ref": {_text(record.client_ref)}, "message_ids": [{ids}], '
        f'"segments": {"null" if segments is None else segments}, '
        f'"encoding": {"null" if encoding is None else _NAMES[encoding]}, '
        f'"price": {"null" if price is None else _text(str(price))}, '
        f'"attempts": {record.attempts}, "latency_ms": {latency_text}, "error": {error_text}'
        f"{changed}{sent_from}}}\n"
    )
    try:
        return text.encode()
    except UnicodeEncodeError:
        return None


class ProgressMode(StrEnum):
    BAR = "bar"  # one line redrawn in place, for a terminal
    LINES = "lines"  # a plain status line now and then, for logs and cron
    OFF = "off"


@dataclass(frozen=True, slots=True)
class FlowFigures:
    """The flow control's figures of the progress line."""

    in_flight: int
    window: int
    pace_per_s: float | None  # None without adaptive flow control
    throttled: int

    def text(self) -> str:
        text = f"in flight {self.in_flight}/{self.window}"
        if self.pace_per_s is not None:
            text += f" | pace {self.pace_per_s:,.1f}/s"
        return text + f" | throttled {self.throttled:,}"

    def fields(self) -> dict[str, Any]:
        pace = self.pace_per_s
        return {
            "in_flight": self.in_flight,
            "window": self.window,
            "pace_per_s": None if pace is None else round(pace, 1),
            "throttled": self.throttled,
        }


_SHOWN = (Status.SENT, Status.FAILED, Status.UNKNOWN, Status.SKIPPED)  # in status lines' order


def _sent_rate_per_s(tally: RecordTotals, elapsed_s: float) -> float:
    return tally.by_status[Status.SENT] / elapsed_s if elapsed_s > 0 else 0.0


def status_fields(tally: RecordTotals, elapsed_s: float) -> dict[str, Any]:
    """The figures of `status_text`, for a JSON log line."""
    counts = tally.by_status
    return {
        "rows": tally.rows,
        **{status.value: counts[status] for status in _SHOWN},
        "rate_per_s": round(_sent_rate_per_s(tally, elapsed_s), 1),
        "elapsed_s": round(elapsed_s, 3),
    }


def status_text(tally: RecordTotals, elapsed_s: float, extra: str = "") -> str:
    """The one-line state of a run."""
    counts = tally.by_status
    rate = _sent_rate_per_s(tally, elapsed_s)
    text = (
        f"{tally.rows:,} rows: {counts[Status.SENT]:,} sent, {counts[Status.FAILED]:,} failed, "
        f"{counts[Status.UNKNOWN]:,} unknown, {counts[Status.SKIPPED]:,} skipped | {rate:,.1f}/s"
    )
    return f"{text} | {extra}" if extra else text


def bar_text(done: int, total: int | None, elapsed_s: float, width: int = 24) -> str:
    """`[#####-----]  42% ETA 1m05s` from rows done of an estimated total ('' when unknown)."""
    if not total:
        return ""
    fraction = min(done / total, 0.99 if done < total else 1.0)
    filled = int(fraction * width)
    eta = ""
    if 0 < done < total and elapsed_s > 0:
        remaining_s = int((total - done) * elapsed_s / done)
        eta = f" ETA {remaining_s // 60}m{remaining_s % 60:02d}s"
    return f"[{'#' * filled}{'-' * (width - filled)}] {fraction:4.0%}{eta} "


class Progress:
    """Redraws the status on stderr while the run goes on, and flushes the records with it."""

    def __init__(
        self,
        stream: TextIO,
        mode: ProgressMode,
        tally: RecordTotals,
        flush: Callable[[], object],
        live: Callable[[], FlowFigures | None] = lambda: None,
        interval_s: float | None = None,
        total_rows: int | None = None,
    ) -> None:
        self._stream = stream
        self._mode = mode
        self._tally = tally
        self._flush = flush
        self._live = live
        self._interval_s = interval_s or (0.2 if mode is ProgressMode.BAR else 10.0)
        self.total_rows = total_rows  # an estimate, for the bar; may come later
        self._started_s = time.monotonic()

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self._started_s

    async def run(self) -> None:
        """Tick until cancelled. Records are flushed at least every half second."""
        next_status_s = self._started_s + self._interval_s
        while True:
            await asyncio.sleep(min(0.5, self._interval_s))
            self._flush()
            if self._mode is not ProgressMode.OFF and time.monotonic() >= next_status_s:
                next_status_s += self._interval_s
                self.show()

    def show(self) -> None:
        elapsed_s = self.elapsed_s
        figures = self._live()
        text = status_text(self._tally, elapsed_s, "" if figures is None else figures.text())
        if self._mode is ProgressMode.BAR:
            bar = bar_text(self._tally.rows, self.total_rows, elapsed_s)
            self._stream.write(f"\r\x1b[K{bar}{text}")
        elif self._mode is ProgressMode.LINES:
            fields = status_fields(self._tally, elapsed_s)
            if figures is not None:
                fields |= figures.fields()
            logs.say(self._stream, f"sms-blaster: {text}", **fields)
        self._stream.flush()

    def clear(self) -> None:
        if self._mode is ProgressMode.BAR:
            self._stream.write("\r\x1b[K")
            self._stream.flush()


def sender_counts(sent: Counter[str], shown: int = 8) -> str:
    """`A 12, B 10, … (50 senders)`: the busiest senders of a pool and their sends."""
    busiest = sent.most_common(shown)
    text = ", ".join(f"{sender} {count:,}" for sender, count in busiest)
    if len(sent) > shown:
        text += f", … ({len(sent):,} senders, {min(sent.values()):,} the fewest)"
    return text


def summary_fields(tally: RecordTotals, elapsed_s: float, sent_rate_per_s: float) -> dict[str, Any]:
    """The figures of `summary_lines`, for a JSON log line."""
    p50, p99 = tally.latency.percentile(0.5), tally.latency.percentile(0.99)
    return {
        **status_fields(tally, elapsed_s),
        "rate_per_s": round(sent_rate_per_s, 1),
        "reasons": {
            f"{kind}/{code}": count for (kind, code), count in sorted(tally.by_error.items())
        },
        "unknown_earlier": tally.unknown_earlier,
        "sent_per_sender": dict(tally.sent_by_sender.most_common()),
        "latency_p50_ms": None if p50 is None else round(p50, 1),
        "latency_p99_ms": None if p99 is None else round(p99, 1),
        "segments": tally.segments,
        "segments_saved": tally.segments_saved,
        "segments_added": tally.segments_added,
        "cost": str(tally.cost),
    }


def summary_lines(tally: RecordTotals, elapsed_s: float, sent_rate_per_s: float) -> list[str]:
    """The closing summary: counts by status and reason, rate, latency, segments and cost."""
    counts = tally.by_status
    lines = [
        f"sms-blaster: {tally.rows:,} rows in {elapsed_s:.2f} s: {counts[Status.SENT]:,} sent, "
        f"{counts[Status.FAILED]:,} failed, {counts[Status.UNKNOWN]:,} unknown, "
        f"{counts[Status.SKIPPED]:,} skipped"
    ]
    if tally.by_error:
        reasons = ", ".join(
            f"{kind}/{code} {count:,}" for (kind, code), count in sorted(tally.by_error.items())
        )
        lines.append(f"  reasons: {reasons}")
    if tally.unknown_earlier:
        lines.append(
            f"  {tally.unknown_earlier:,} rows are unknown from earlier runs (they may have been "
            "sent) and were not resent; --retry-unknown resends them (may send twice)"
        )
    if tally.sent_by_sender:
        lines.append(f"  sent per sender: {sender_counts(tally.sent_by_sender)}")
    p50, p99 = tally.latency.percentile(0.5), tally.latency.percentile(0.99)
    latency = "n/a" if p50 is None or p99 is None else f"p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    smart = [f"{tally.segments_saved:,} saved"] if tally.segments_saved else []
    smart += [f"{tally.segments_added:,} added"] if tally.segments_added else []
    saved = f" ({', '.join(smart)} by smart encoding)" if smart else ""
    lines.append(
        f"  rate {sent_rate_per_s:,.1f} sent/s; latency {latency}; "
        f"{tally.segments:,} segments{saved}; cost {tally.cost}"
    )
    return lines
