"""`report JOURNAL`: a campaign's outcomes, cost, throughput and latency, for people or machines.

The journal's queries return plain values; everything here only formats them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, TextIO

from sms_blaster.errors import OutputError
from sms_blaster.journal.queries import (
    CampaignSummary,
    DeliveryFunnel,
    MinuteCount,
    ReceiptCounts,
    load_receipt_counts,
    load_summaries,
)

WIDTH = 100  # the text report fits a terminal this wide
CHART_MINUTES = 15
_BAR_WIDTH = 50
_LABEL_WIDTH = 16


def run_report(
    path: str,
    campaign: str | None,
    as_json: bool,
    out: TextIO,
    summaries: list[CampaignSummary] | None = None,
) -> None:
    """Write the report on the journal at `path` (or on `summaries` read elsewhere, e.g. from
    Redis): one JSON document, or a table for a terminal."""
    receipts = None
    if summaries is None:
        summaries = load_summaries(path, campaign)
        # No campaign: a receiver's store, perhaps. Say what it holds rather than "nothing".
        receipts = None if summaries else load_receipt_counts(path)
    try:
        if as_json:
            json.dump(report_to_json(path, summaries, receipts), out, ensure_ascii=False, indent=2)
            out.write("\n")
        else:
            out.writelines(line + "\n" for line in report_lines(path, summaries, receipts))
        out.flush()  # a reader gone (`| head -1`) is found here, not by the interpreter's exit
    except OSError as exc:
        raise OutputError(f"cannot write the report ({exc.strerror or exc})") from exc


# --- JSON ---------------------------------------------------------------------------------------


def report_to_json(
    path: str, summaries: list[CampaignSummary], receipts: ReceiptCounts | None = None
) -> dict[str, Any]:
    """The whole report: the journal's path and one object per campaign; for a file with no
    campaign, the receipts it holds."""
    document: dict[str, Any] = {
        "journal": path,
        "campaigns": [campaign_to_json(summary) for summary in summaries],
    }
    if receipts is not None:
        document["receipts"] = _receipts_to_json(receipts)
    return document


def _receipts_to_json(receipts: ReceiptCounts) -> dict[str, Any]:
    return {
        "total": receipts.total,
        "by_delivery": dict(receipts.by_delivery),
        "first_received_at": _iso_or_none(receipts.first_received_at_s),
        "last_received_at": _iso_or_none(receipts.last_received_at_s),
    }


def campaign_to_json(summary: CampaignSummary) -> dict[str, Any]:
    """One campaign with every key always present, null where it does not apply yet."""
    rows = summary.rows
    latency = summary.latency
    busiest = busiest_minute(summary.sent_per_minute)
    return {
        "name": summary.name,
        "campaign_id": summary.campaign_id,
        "input": summary.input,
        "sender": summary.sender,
        "provider": summary.provider,
        "created_at": iso_time(summary.created_at_s),
        "created_at_s": summary.created_at_s,
        "rows": {
            "total": rows.total,
            "sent": rows.sent,
            "failed": rows.failed,
            "unknown": rows.unknown,
            "skipped": rows.skipped,
            "inflight": rows.inflight,
            "pending": rows.pending,
            "stopped": rows.stopped,
        },
        "last_line": summary.last_line,
        "errors": [
            {"kind": error.kind, "code": error.code, "count": error.count}
            for error in summary.errors
        ],
        "segments_sent": summary.segments_sent,
        "cost": str(summary.cost),
        "smart_encoding": {
            "texts_changed": summary.texts_changed,
            "segments_saved": summary.segments_saved,
            "cost_saved": str(summary.cost_saved),
            "segments_added": summary.segments_added,
            "cost_added": str(summary.cost_added),
        },
        "first_sent_at": _iso_or_none(summary.first_sent_at_s),
        "first_sent_at_s": summary.first_sent_at_s,
        "last_sent_at": _iso_or_none(summary.last_sent_at_s),
        "last_sent_at_s": summary.last_sent_at_s,
        "duration_s": summary.duration_s,
        "sent_rate_per_s": summary.sent_rate_per_s,
        "busiest_minute": None if busiest is None else _minute_to_json(busiest),
        "sent_per_minute": [_minute_to_json(minute) for minute in summary.sent_per_minute],
        "latency_ms": None
        if latency is None
        else {
            "p50": latency.p50_ms,
            "p90": latency.p90_ms,
            "p99": latency.p99_ms,
            "max": latency.max_ms,
        },
        "delivery": _delivery_to_json(summary.delivery),
    } | _senders_to_json(summary)


def _senders_to_json(summary: CampaignSummary) -> dict[str, Any]:
    """`senders`, a pool's sends per sender; absent for a campaign sent with --from."""
    if not summary.sent_by_sender:
        return {}
    return {
        "senders": [
            {"sender": count.sender, "sent": count.sent, "segments": count.segments}
            for count in summary.sent_by_sender
        ]
    }


def _delivery_to_json(funnel: DeliveryFunnel | None) -> dict[str, Any] | None:
    if funnel is None:
        return None
    return {
        "sent": funnel.sent,
        "delivered": funnel.delivered,
        "failed": funnel.failed,
        "expired": funnel.expired,
        "pending": funnel.pending,
        "with_receipts": funnel.with_receipts,
        "errors": [
            {"status": error.kind, "code": error.code, "count": error.count}
            for error in funnel.errors
        ],
    }


def _minute_to_json(minute: MinuteCount) -> dict[str, Any]:
    return {"minute": iso_time(minute.minute_s), "sent": minute.sent}


def iso_time(unix_s: float) -> str:
    """`2024-05-01T10:00:05Z`: ISO-8601 in UTC, to the second."""
    return _utc(unix_s, "%Y-%m-%dT%H:%M:%SZ")


def _iso_or_none(unix_s: float | None) -> str | None:
    return None if unix_s is None else iso_time(unix_s)


# --- text ---------------------------------------------------------------------------------------


def report_lines(
    path: str, summaries: list[CampaignSummary], receipts: ReceiptCounts | None = None
) -> list[str]:
    """The report for a terminal: every campaign, one after the other."""
    lines = [fit(f"journal {path}", keep_end=True)]
    if not summaries and receipts is not None and receipts.total:
        return [*lines, *_receipts_lines(receipts)]
    if not summaries:
        return [*lines, "no campaigns yet (no run has written to it)"]
    lines.append(fit("campaigns: " + ", ".join(summary.name for summary in summaries)))
    for summary in summaries:
        lines += ["", *campaign_lines(summary)]
    return lines


def _receipts_lines(receipts: ReceiptCounts) -> list[str]:
    """A receiver's store with no campaign: what it holds, and where the report is."""
    states = ", ".join(f"{count:,} {state}" for state, count in receipts.by_delivery)
    noun = "receipt" if receipts.total == 1 else "receipts"
    lines = [
        fit(f"receipts only: {receipts.total:,} {noun} ({states}), not yet tied to a campaign")
    ]
    if receipts.first_received_at_s is not None and receipts.last_received_at_s is not None:
        first = text_time(receipts.first_received_at_s)
        last = text_time(receipts.last_received_at_s)
        lines.append(f"received {first} to {last}")
    return [
        *lines,
        "report the campaign's journal: receipts join its rows when `receive --store` writes to it",
    ]


def campaign_lines(summary: CampaignSummary) -> list[str]:
    """One campaign: header, outcomes, errors, cost, timing, latency, sends per minute."""
    return [
        *_header_lines(summary),
        "",
        *_state_lines(summary),
        *_error_lines(summary),
        *_sender_lines(summary),
        "",
        _field("segments sent", f"{summary.segments_sent:,}"),
        _field("cost", f"{summary.cost:,}"),
        *_saved_lines(summary),
        "",
        *_timing_lines(summary),
        _field("latency", _latency_text(summary)),
        "",
        *minute_chart_lines(summary.sent_per_minute),
        "",
        *_delivery_lines(summary.delivery),
    ]


def _saved_lines(summary: CampaignSummary) -> list[str]:
    if not summary.texts_changed:
        return []
    saved = [
        _field(
            "smart encoding",
            f"{summary.texts_changed:,} texts changed; saved {summary.segments_saved:,} segments, "
            f"cost {summary.cost_saved:,}",
        )
    ]
    if not summary.segments_added:
        return saved
    added = f"added {summary.segments_added:,} segments, cost {summary.cost_added:,} (always)"
    return [*saved, _field("", added)]


def _delivery_lines(funnel: DeliveryFunnel | None) -> list[str]:
    if funnel is None:
        return ["delivery: no receipts yet"]

    def share(count: int) -> str:
        percent = f" ({count / funnel.sent:.1%})" if funnel.sent else ""
        return f"{count:>9,}{percent}"

    lines = [
        "delivery (receipts)",
        _field("  sent", f"{funnel.sent:>9,}  ({funnel.with_receipts:,} with a receipt)"),
        _field("  delivered", share(funnel.delivered)),
        _field("  failed", share(funnel.failed)),
        _field("  expired", share(funnel.expired)),
        _field("  pending", share(funnel.pending)),
    ]
    if funnel.errors:
        labels = [fit(f"  {error.kind}/{error.code or '-'}", WIDTH - 12) for error in funnel.errors]
        width = max(_LABEL_WIDTH, *(len(label) + 1 for label in labels))
        lines += ["delivery errors (status/code)"] + [
            f"{label:<{width}}{error.count:>9,}"
            for label, error in zip(labels, funnel.errors, strict=True)
        ]
    return lines


def _header_lines(summary: CampaignSummary) -> list[str]:
    return [
        fit(
            f"campaign {summary.name} (id {summary.campaign_id}), from {summary.sender} "
            f"via {summary.provider}, created {text_time(summary.created_at_s)}"
        ),
        fit(f"input {summary.input}", keep_end=True),
    ]


def _state_lines(summary: CampaignSummary) -> list[str]:
    rows = summary.rows
    total = rows.total
    lines = [_field("rows", f"{total:>9,}")]
    for label, count in (
        ("sent", rows.sent),
        ("failed", rows.failed),
        ("unknown", rows.unknown),
        ("skipped", rows.skipped),
        ("inflight", rows.inflight),
        ("pending", rows.pending),
    ):
        share = f"  {count / total:6.1%}" if total else ""
        lines.append(_field(f"  {label}", f"{count:>9,}{share}"))
    if rows.stopped:
        lines.append(_field("    stopped", f"{rows.stopped:>9,}  (a run stopped before sending)"))
        # A stopped run reads no further, so the journal knows nothing of the rows after.
        lines.append(
            fit(
                f"rows after line {summary.last_line or 0:,}, if any, were not read yet "
                "(a stopped run reads no further); re-run to send"
            )
        )
    return lines


def _error_lines(summary: CampaignSummary) -> list[str]:
    if not summary.errors:
        return []
    labels = [fit(f"  {error.kind}/{error.code}", WIDTH - 12) for error in summary.errors]
    # Counts line up with the state counts above unless a label is longer than theirs.
    width = max(_LABEL_WIDTH, *(len(label) + 1 for label in labels))
    return ["", "errors (kind/code)"] + [
        f"{label:<{width}}{error.count:>9,}"
        for label, error in zip(labels, summary.errors, strict=True)
    ]


def _sender_lines(summary: CampaignSummary) -> list[str]:
    if not summary.sent_by_sender:
        return []
    return ["", "sent per sender (--from-pool)"] + [
        f"{fit('  ' + count.sender, _LABEL_WIDTH - 1):<{_LABEL_WIDTH}}{count.sent:>9,}"
        for count in summary.sent_by_sender
    ]


def _timing_lines(summary: CampaignSummary) -> list[str]:
    first_s, last_s, duration_s = (
        summary.first_sent_at_s,
        summary.last_sent_at_s,
        summary.duration_s,
    )
    if first_s is None or last_s is None or duration_s is None:
        return [_field("first send", "- (nothing sent)")]
    rate = summary.sent_rate_per_s
    rate_text = (
        "n/a (sent in one instant)"
        if rate is None
        else f"{rate:,.2f} sent/s ({rate * 60:,.1f}/min)"
    )
    lines = [
        _field("first send", text_time(first_s)),
        _field("last send", text_time(last_s)),
        _field("duration", duration_text(duration_s)),
        _field("average rate", rate_text),
    ]
    busiest = busiest_minute(summary.sent_per_minute)
    if busiest is not None:
        when = _utc(busiest.minute_s, "%Y-%m-%d %H:%M UTC")
        lines.append(_field("busiest minute", f"{when}, {busiest.sent:,} sent"))
    return lines


def _latency_text(summary: CampaignSummary) -> str:
    latency = summary.latency
    if latency is None:
        return "n/a (no latencies recorded)" if summary.rows.sent else "n/a (nothing sent)"
    return (
        f"p50 {latency.p50_ms:,.1f} ms   p90 {latency.p90_ms:,.1f} ms   "
        f"p99 {latency.p99_ms:,.1f} ms   max {latency.max_ms:,.1f} ms"
    )


def minute_chart_lines(
    sent_per_minute: tuple[MinuteCount, ...], minutes: int = CHART_MINUTES
) -> list[str]:
    """A bar per minute for the last `minutes` minutes up to the last send, quiet minutes too."""
    window = last_minutes(sent_per_minute, minutes)
    if not window:
        return ["sent per minute: nothing sent"]
    peak = max(minute.sent for minute in window)
    start = _utc(window[0].minute_s, "%Y-%m-%d %H:%M")
    count = len(window)
    lines = [f"sent per minute, UTC (last {count} minute{'s' if count != 1 else ''}, from {start})"]
    for minute in window:
        bar = "#" * round(_BAR_WIDTH * minute.sent / peak) if peak else ""
        clock = _utc(minute.minute_s, "%H:%M")
        lines.append(f"  {clock} |{bar:<{_BAR_WIDTH}} {minute.sent:>9,}")
    return lines


def last_minutes(sent_per_minute: tuple[MinuteCount, ...], minutes: int) -> list[MinuteCount]:
    """The last `minutes` minutes up to the last send (not before the first), gaps as zeros."""
    if not sent_per_minute:
        return []
    end_s = sent_per_minute[-1].minute_s
    start_s = max(sent_per_minute[0].minute_s, end_s - 60 * (minutes - 1))
    sent = {
        minute.minute_s: minute.sent for minute in sent_per_minute if minute.minute_s >= start_s
    }
    return [MinuteCount(s, sent.get(s, 0)) for s in range(start_s, end_s + 60, 60)]


def busiest_minute(sent_per_minute: tuple[MinuteCount, ...]) -> MinuteCount | None:
    """The minute with the most sends (the earliest of a tie)."""
    if not sent_per_minute:
        return None
    return max(sent_per_minute, key=lambda minute: (minute.sent, -minute.minute_s))


def duration_text(duration_s: float) -> str:
    """`45.2s`, `2m05s`, `1h02m03s`."""
    if duration_s < 60:
        return f"{duration_s:.1f}s"
    whole_s = round(duration_s)
    hours, rest_s = divmod(whole_s, 3600)
    minutes, seconds = divmod(rest_s, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{seconds:02d}s"
    return f"{minutes}m{seconds:02d}s"


def text_time(unix_s: float) -> str:
    """`2024-05-01 10:00:05 UTC`."""
    return _utc(unix_s, "%Y-%m-%d %H:%M:%S UTC")


def _utc(unix_s: float, pattern: str) -> str:
    return datetime.fromtimestamp(unix_s, UTC).strftime(pattern)


def fit(text: str, width: int = WIDTH, *, keep_end: bool = False) -> str:
    """`text` cut to `width` characters, marking the cut with '...'."""
    if len(text) <= width:
        return text
    if keep_end:
        # For a path the end (the file name) says the most; keep the label before it.
        label, _, value = text.partition(" ")
        return f"{label} ...{value[-(width - len(label) - 4) :]}"
    return text[: width - 3] + "..."


def _field(label: str, value: str) -> str:
    return fit(f"{label:<{_LABEL_WIDTH}}{value}")
