"""One self-contained HTML page of one or more campaigns, from `model` values. Pure.

No script, font or style sheet is loaded from anywhere: the charts are inline SVG (`svg`), the
style is inline CSS, and a value shows on hover through SVG `<title>`s. Every text that came
from the input or the journal (a campaign's name, a sender id, a setting) is escaped. The figures
that `report --json` also gives carry a `data-key` (its path there) and a `data-value`.
"""

from __future__ import annotations

import math
import shlex
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from html import escape

from sms_blaster.html_report.model import (
    TOTAL,
    Bucket,
    CampaignView,
    HistogramBin,
    ReceiptsOnly,
    RunSpan,
    SmartEncoding,
    TimeAxis,
    WorkerSeries,
)
from sms_blaster.html_report.settings_shown import shown_settings
from sms_blaster.html_report.svg import Bar, Line, TimeChart, bar_chart, time_chart
from sms_blaster.url_text import mask_url_password

MAX_BARS = 40  # a histogram's bins are merged down to this many bars
NONE = "\N{EN DASH}"  # shown where there is no figure

_STYLE = """
:root { color-scheme: light; --ink: #1d2430; --muted: #5b6575; --line: #d8dde6; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: var(--ink); background: #f6f7f9; }
main { max-width: 1200px; margin: 0 auto; padding: 1rem; }
h1 { font-size: 1.4rem; margin: .2rem 0 .6rem; overflow-wrap: anywhere; }
h2 { font-size: 1.1rem; margin: 0 0 .4rem; }
section.campaign { margin-bottom: 2rem; }
.meta { color: var(--muted); overflow-wrap: anywhere; }
.cards { display: grid; gap: 1rem;
  grid-template-columns: repeat(auto-fit, minmax(min(100%, 480px), 1fr)); }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: .8rem;
  min-width: 0; }
.card p { margin: .3rem 0; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; }
/* Labels wrap (between words, within one only when it is longer than the column); numbers and
   a date or a time never do. */
th, td { text-align: left; padding: .2rem .4rem; border-bottom: 1px solid var(--line);
  overflow-wrap: anywhere; }
th { overflow-wrap: normal; }
td.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.nowrap { white-space: nowrap; }
code { background: #eef1f5; padding: .1rem .3rem; border-radius: 4px; overflow-wrap: anywhere; }
.note { color: #8a5a00; }
svg.chart { display: block; width: 100%; height: auto; font-size: 15px; }
svg.chart .grid { stroke: #e8ebf0; }
svg.chart .tick, svg.chart .axis-label { fill: var(--muted); }
svg.chart .span { fill: #eef3fb; }
svg.chart .mark { stroke: #222; stroke-width: 3; }
svg.chart .bar { fill: #4c78a8; }
svg.chart .line polyline { fill: none; stroke-width: 2; stroke: currentColor; }
svg.chart .line circle { fill: currentColor; fill-opacity: 0; }
svg.chart .line circle.alone, svg.chart .line circle:hover { fill-opacity: 1; }
svg.chart .line circle.alone { r: 6px; }
.total { color: #4c78a8; } .ceiling { color: #7f7f7f; } .limit { color: #e45756; }
.pace { color: #f58518; } .p50 { color: #4c78a8; } .p99 { color: #b279a2; }
.delivered { color: #54a24b; } .failed { color: #e45756; } .expired { color: #9d755d; }
.sent { color: #4c78a8; }
.w0 { color: #72b7b2; } .w1 { color: #eeca3b; } .w2 { color: #ff9da6; } .w3 { color: #bab0ac; }
svg.chart .ceiling polyline { stroke-dasharray: 6 4; }
svg.chart .limit polyline { stroke-dasharray: 2 3; stroke-width: 3; }
.throttle { color: #222; }
.legend span { margin-right: .8rem; white-space: nowrap; }
.legend span::before { content: ""; display: inline-block; width: .8rem; height: .25rem;
  margin-right: .3rem; vertical-align: middle; background: currentColor; }
.legend span.limit::before { height: 0; border-top: .2rem dotted currentColor;
  background: none; }
.legend span.throttle::before { width: .2rem; height: .7rem; }
/* A chart is drawn in its own units (800 wide): on a phone, larger text in them stays readable,
   and every other label along the x axis makes room for it. */
@media (max-width: 600px) {
  main { padding: .5rem; }
  .card { padding: .5rem; }
  table { font-size: 14px; }
  th, td { padding: .2rem .25rem; }
  svg.chart { font-size: 26px; }
  svg.chart .tick.alt { display: none; }
  svg.chart .line circle.alone { r: 12px; }
}
"""


def render_page(
    views: Sequence[CampaignView],
    title: str,
    generated_at_s: float,
    receipts: ReceiptsOnly | None = None,
) -> str:
    """The whole HTML document: the campaigns of `views`; with none, the `receipts` the file
    holds (a receiver's store), as the text report says them."""
    body = "".join(_campaign(view, index) for index, view in enumerate(views))
    if not views:
        body = (
            _receipts_only(receipts)
            if receipts is not None and receipts.total
            else "<p>No campaign in this journal yet (no run has written to it).</p>"
        )
    generated = _when(generated_at_s)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>sms-blaster report: {escape(title)}</title><style>{_STYLE}</style></head>"
        f'<body><main><p class="meta">sms-blaster report of {escape(title)}, made {generated}'
        f"</p>{body}</main></body></html>\n"
    )


def _receipts_only(receipts: ReceiptsOnly) -> str:
    noun = "receipt" if receipts.total == 1 else "receipts"
    rows = [
        f"<tr><th>all</th>{_figure('receipts.total', receipts.total)}</tr>",
        *(
            f"<tr><td>· {escape(count.label)}</td>"
            f"{_figure(f'receipts.by_delivery.{count.label}', count.count)}</tr>"
            for count in receipts.by_delivery
        ),
    ]
    first, last = receipts.first_received_at_s, receipts.last_received_at_s
    received = (
        f"<p>Received {_when(first)} to {_when(last)}.</p>"
        if first is not None and last is not None
        else ""
    )
    return (
        "<h1>Receipts only, not yet tied to a campaign</h1>"
        f'<div class="cards"><div class="card"><h2>Receipts by delivery state</h2>'
        f"{_table(('state', noun), rows)}{received}"
        "<p>Report the campaign's journal: receipts join its rows when "
        "<code>receive --store</code> writes to it.</p></div></div>"
    )


def _campaign(view: CampaignView, index: int) -> str:
    prefix = f"c{index}"
    cards = [
        _outcomes_card(view),
        *_charts(view, prefix),
        _cost_card(view),
        _senders_card(view),
        _delivery_card(view, prefix),
        _runs_card(view),
    ]
    notes = "".join(
        f'<p class="note">Not recorded: {escape(note)}</p>' for note in view.not_recorded
    )
    return (
        f'<section class="campaign" data-campaign="{escape(view.name)}">'
        f"<h1>Campaign {_isolated(view.name)}</h1>"
        f'<p class="meta">id {_isolated(view.campaign_id)} · from {_isolated(view.sender)} via '
        f"{escape(view.provider)} · {_isolated(view.source)}</p>"
        f"{_text_report(view.text_report_command)}{notes}"
        f'<div class="cards">{"".join(cards)}</div></section>'
    )


_REDIS_FROM_ENV = '"$SMS_BLASTER_REDIS"'  # a masked --redis URL, as a pasted command gives it
_SHELL_ESCAPES = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _isolated(text: str) -> str:
    """`text` escaped and isolated: a right-to-left override in a name cannot reverse the words
    around it."""
    return f"<bdi>{escape(text)}</bdi>"


def _text_report(command: str) -> str:
    """The command that prints the text report, as it works when pasted into a shell: a masked
    Redis URL given as $SMS_BLASTER_REDIS, a newline or other control character as $'\\n'."""
    argv = shlex.split(command)
    words = [
        _REDIS_FROM_ENV if before == "--redis" and "***" in argument else _shell_word(argument)
        for before, argument in zip(["", *argv], argv, strict=False)
    ]
    masked = _REDIS_FROM_ENV in words
    shown = " ".join(words)
    note = (
        " (set SMS_BLASTER_REDIS to the Redis URL with its password first: the page does not "
        "keep it)"
        if masked
        else ""
    )
    return f"<p>The text report: <code>{escape(shown)}</code>{note}</p>"


def _shell_word(text: str) -> str:
    """`text` quoted for a POSIX shell on one line: $'…' with escapes when it holds a control
    character (a newline would end the command) or an invisible or bidi one (the page would show
    other text than a copy gives), else as shlex quotes it."""
    if not any(_is_control(char) for char in text):
        return shlex.quote(text)
    escaped = "".join(
        _SHELL_ESCAPES.get(char) or (_escaped_char(char) if _is_control(char) else char)
        for char in text
    )
    return f"$'{escaped}'"


def _is_control(char: str) -> bool:
    """A character that shows as something else or nothing: C0/C1 controls, format characters
    (bidi overrides and isolates, zero-width ones), line and paragraph separators."""
    return unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp")


def _escaped_char(char: str) -> str:
    code = ord(char)
    if code < 0x80:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _card(title: str, content: str) -> str:
    return f'<div class="card"><h2>{escape(title)}</h2>{content}</div>'


def _figure(key: str, value: int | float | Decimal | None, text: str | None = None) -> str:
    """A table cell holding a figure `report --json` gives at `key`."""
    return _cell(f' data-key="{escape(key)}"', value, text)


def _part(whole_key: str, value: int) -> str:
    """A table cell holding a part of the figure `report --json` gives at `whole_key` (the
    parts of a figure add up to it; `report --json` has no key of a part's own)."""
    return _cell(f' data-part-of="{escape(whole_key)}"', value)


def _cell(attributes: str, value: int | float | Decimal | None, text: str | None = None) -> str:
    shown = text if text is not None else NONE if value is None else f"{value:,}"
    data = "" if value is None else f' data-value="{escape(str(value))}"'
    return f'<td class="n"{attributes}{data}>{escape(shown)}</td>'


def _table(head: Iterable[str], rows: Iterable[str]) -> str:
    header = "".join(f"<th>{escape(cell)}</th>" for cell in head)
    return (
        f'<div class="scroll"><table><thead><tr>{header}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _outcomes_card(view: CampaignView) -> str:
    outcomes = view.outcomes
    rows = [
        f"<tr><th>rows</th>{_figure('rows.total', outcomes.total)}</tr>",
        f"<tr><th>sent</th>{_figure('rows.sent', outcomes.sent)}</tr>",
        f"<tr><th>failed</th>{_figure('rows.failed', outcomes.failed)}</tr>",
        *(
            f"<tr><td>· {escape(count.label)}</td>{_part('rows.failed', count.count)}</tr>"
            for count in outcomes.failed_by_kind
        ),
        f"<tr><th>unknown</th>{_figure('rows.unknown', outcomes.unknown)}</tr>",
        f"<tr><th>skipped</th>{_figure('rows.skipped', outcomes.skipped)}</tr>",
        *(
            f"<tr><td>· {escape(count.label)}</td>{_part('rows.skipped', count.count)}</tr>"
            for count in outcomes.skipped_by_reason
        ),
        f"<tr><th>not final yet (pending, in flight)</th>{_cell('', outcomes.not_final)}</tr>",
        *(
            f"<tr><td>· {escape(count.label)}</td>{_cell('', count.count)}</tr>"
            for count in outcomes.not_final_by_reason
        ),
    ]
    latency = view.latency
    if latency is not None:
        rows += [
            f"<tr><th>latency p50 (ms)</th>"
            f"{_figure('latency_ms.p50', latency.p50_ms, f'{latency.p50_ms:,.1f}')}</tr>",
            f"<tr><th>latency p99 (ms)</th>"
            f"{_figure('latency_ms.p99', latency.p99_ms, f'{latency.p99_ms:,.1f}')}</tr>",
        ]
    return _card("Outcomes", _table(("", "rows"), rows))


def _middles(axis: TimeAxis) -> list[float]:
    return [axis.start_of(index) + axis.bucket_s / 2 for index in range(axis.buckets)]


def _in_runs(view: CampaignView, axis: TimeAxis) -> list[tuple[float, bool]]:
    """Where each bucket's point of a run's figures is drawn, and whether a run's band covers
    any of the bucket. The point is the bucket's middle, unless that lies outside every band
    the bucket holds (a run shorter than a bucket): then the nearest time in those bands, so
    a run's dots sit in its shading."""
    spans = _spans(view, axis)
    places = []
    for index, middle in enumerate(_middles(axis)):
        low, high = axis.start_of(index), axis.start_of(index + 1)
        parts = [
            (max(start, low), min(end, high)) for start, end in spans if start < high and end >= low
        ]
        if not parts or any(start <= middle <= end for start, end in parts):
            places.append((middle, bool(parts)))
            continue
        inside = (min(max(middle, start), end) for start, end in parts)
        nearest = min(inside, key=lambda at: abs(at - middle))
        places.append((nearest, True))
    return places


def _workers(view: CampaignView) -> list[WorkerSeries]:
    """The series drawn as lines: each worker's when there are several, then the total."""
    workers = [series for series in view.series if series.worker != TOTAL]
    total = view.total
    return (workers if len(workers) > 1 else []) + ([total] if total is not None else [])


def _class_of(series: WorkerSeries, index: int) -> str:
    return "total" if series.worker == TOTAL else f"w{index % 4}"


def _charts(view: CampaignView, prefix: str) -> list[str]:
    axis, total = view.axis, view.total
    cards = []
    if axis is not None and total is not None:
        cards += [_rate_card(view, axis, total, prefix), _latency_time_card(view, axis, prefix)]
    if view.latency is not None:
        bars = _bars(view.latency.bins_ms, "ms")
        chart = bar_chart(f"{prefix}-latency-histogram", "Request latency", bars, "ms")
        cards.append(_card("Latency histogram (sent rows)", chart))
    return cards


def _spans(view: CampaignView, axis: TimeAxis) -> list[tuple[float, float]]:
    """The runs' bands: a run still going (or killed before it recorded a second) to the end."""
    return [
        (run.started_at_s, axis.end_s if (until := run.drawn_until_s) is None else until)
        for run in view.runs
    ]


def _bucket_text(axis: TimeAxis) -> str:
    """What one point of a chart covers: `second`, `15 min`, `2 h`, `1 day`."""
    width_s = axis.bucket_s
    for unit_s, unit in ((86400, "day"), (3600, "h"), (60, "min")):
        if width_s >= unit_s and width_s % unit_s == 0:
            count = width_s // unit_s
            return f"{count} {unit}" if unit != "day" else f"{count} day" + "s" * (count > 1)
    return "second" if width_s == 1 else f"{width_s} s"


def _runs_note(view: CampaignView) -> str:
    return "; shaded: the runs" if view.runs else ""


def _rate_card(view: CampaignView, axis: TimeAxis, total: WorkerSeries, prefix: str) -> str:
    places = _in_runs(view, axis)
    middles = [at for at, _ in places]
    per_s = axis.bucket_s

    def sent_per_s(bucket: Bucket, in_run: bool) -> float | None:
        # No send and no run in the bucket: the line breaks (days apart are not joined at 0).
        idle = bool(view.runs) and not in_run and not bucket.sent
        return None if idle else bucket.sent / per_s

    lines = [
        Line(
            f"sent/s {series.worker}",
            _class_of(series, index),
            [
                (at, sent_per_s(bucket, in_run))
                for (at, in_run), bucket in zip(places, series.buckets, strict=True)
            ],
            "/s",
        )
        for index, series in enumerate(_workers(view))
    ]
    # --rate last: dashed over the pace, it stays visible where the pace runs at it.
    lines += [
        _line("limit found", "limit", middles, total, lambda bucket: bucket.limit_per_s, "/s"),
        _line("pace", "pace", middles, total, lambda bucket: bucket.pace_per_s, "/s"),
        _line("--rate", "ceiling", middles, total, lambda bucket: bucket.rate_ceiling_per_s, "/s"),
    ]
    marks = [
        (at, f"{bucket.throttled:,} throttled")
        for at, bucket in zip(middles, total.buckets, strict=True)
        if bucket.throttled
    ]
    every = _bucket_text(axis)
    y_label = "per second" if axis.bucket_s == 1 else f"per second, mean of each {every}"
    chart = time_chart(
        TimeChart(
            f"{prefix}-rate", "Sent per second", axis.start_s, axis.end_s, lines,
            _spans(view, axis), marks, y_label,
        )
    )  # fmt: skip
    legend = _legend(lines)
    if marks:
        throttles = sum(bucket.throttled or 0 for bucket in total.buckets)
        legend += f'<span class="throttle">throttled answers ({throttles:,}, ticks)</span>'
    recorded = any(bucket.throttled is not None for bucket in total.buckets)
    none = "; no throttled answer" if recorded and not marks else ""
    pool = (
        "; sent from a pool (--from-pool): where sent/s stays under --rate, the senders' own "
        "rates held it below --rate"
        if view.senders
        else ""
    )
    return _card(
        "Sent per second",
        f'<p class="legend">{legend}</p>{chart}'
        f'<p class="meta">Averaged over each {every}{_runs_note(view)}{none}{pool}.</p>',
    )


def _line(
    label: str,
    css_class: str,
    middles: Sequence[float],
    series: WorkerSeries,
    value: Callable[[Bucket], float | None],
    unit: str,
) -> Line:
    """A line of one figure of `series`' buckets, each at its bucket's middle."""
    points = [(at, value(bucket)) for at, bucket in zip(middles, series.buckets, strict=True)]
    return Line(label, css_class, points, unit)


def _legend(lines: Sequence[Line]) -> str:
    return "".join(
        f'<span class="{escape(line.css_class)}">{escape(line.label)}</span>'
        for line in lines
        if any(value is not None for _, value in line.points)
    )


def _latency_time_card(view: CampaignView, axis: TimeAxis, prefix: str) -> str:
    total = view.total
    assert total is not None
    middles = [at for at, _ in _in_runs(view, axis)]
    lines = [
        _line("p50", "p50", middles, total, lambda bucket: bucket.latency_p50_ms, " ms"),
        _line("p99", "p99", middles, total, lambda bucket: bucket.latency_p99_ms, " ms"),
    ]
    every = _bucket_text(axis)
    y_label = "ms" if axis.bucket_s == 1 else f"ms, of the rows sent in each {every}"
    chart = time_chart(
        TimeChart(
            f"{prefix}-latency", "Latency over time", axis.start_s, axis.end_s, lines,
            _spans(view, axis), (), y_label,
        )
    )  # fmt: skip
    note = '<p class="meta">Shaded: the runs.</p>' if view.runs else ""
    return _card("Latency over time", f'<p class="legend">{_legend(lines)}</p>{chart}{note}')


def _bars(bins: Sequence[HistogramBin], unit: str) -> list[Bar]:
    """The bins merged to at most MAX_BARS bars of consecutive bins."""
    if not bins:
        return []
    per_bar = math.ceil(len(bins) / MAX_BARS)
    bars = []
    for start in range(0, len(bins), per_bar):
        group = bins[start : start + per_bar]
        count = sum(item.count for item in group)
        low, high = group[0].low, group[-1].high
        bars.append(
            Bar(_short(low), count, f"{count:,} from {_short(low)} to {_short(high)} {unit}")
        )
    return bars


def _short(value: float) -> str:
    return f"{value:.3g}"


def _cost_card(view: CampaignView) -> str:
    rows = [
        f"<tr><td>{line.segments}</td><td>{escape(line.encoding or NONE)}</td>"
        f'<td class="n">{line.messages:,}</td><td class="n">{line.segments * line.messages:,}</td>'
        f'<td class="n">{_money(line.cost)}</td></tr>'
        for line in view.costs
    ]
    segments = sum(line.segments * line.messages for line in view.costs)
    rows.append(
        f"<tr><th>all</th><td></td><td></td>{_figure('segments_sent', segments)}"
        f"{_figure('cost', view.cost, _money(view.cost))}</tr>"
    )
    table = _table(("segments", "encoding", "sent", "segments sent", "cost"), rows)
    return _card("Cost by segments and encoding", table + _smart_encoding(view.smart_encoding))


def _smart_encoding(smart: SmartEncoding | None) -> str:
    """What smart encoding changed, as the text report says it: nothing when it changed no
    text."""
    if smart is None or not smart.texts_changed:
        return ""
    rows = [
        f"<tr><th>texts changed</th>{_figure(f'{_SMART}.texts_changed', smart.texts_changed)}</tr>",
        f"<tr><th>segments saved</th>{_figure(f'{_SMART}.segments_saved', smart.segments_saved)}"
        "</tr>",
        f"<tr><th>cost saved</th>"
        f"{_figure(f'{_SMART}.cost_saved', smart.cost_saved, _money(smart.cost_saved))}</tr>",
    ]
    if smart.segments_added:
        rows += [
            f"<tr><th>segments added (always)</th>"
            f"{_figure(f'{_SMART}.segments_added', smart.segments_added)}</tr>",
            f"<tr><th>cost added (always)</th>"
            f"{_figure(f'{_SMART}.cost_added', smart.cost_added, _money(smart.cost_added))}</tr>",
        ]
    return _table(("smart encoding", ""), rows)


_SMART = "smart_encoding"  # the key of smart encoding's figures in `report --json`


def _senders_card(view: CampaignView) -> str:
    """A --from-pool campaign's sends per sender; nothing for one sent with --from."""
    if not view.senders:
        return ""
    rows = [
        f"<tr><td>{escape(one.sender)}</td>{_figure(f'senders.{index}.sent', one.sent)}"
        f"{_figure(f'senders.{index}.segments', one.segments)}</tr>"
        for index, one in enumerate(view.senders)
    ]
    return _card("Sent per sender (--from-pool)", _table(("sender", "sent", "segments"), rows))


def _money(cost: Decimal) -> str:
    """A cost without the zeros that end its fraction: `97.4025`, `3`."""
    text = f"{cost:,f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _delivery_card(view: CampaignView, prefix: str) -> str:
    delivery = view.delivery
    if delivery is None:
        return _card("Delivery", "<p>No delivery receipts yet.</p>")
    rows = [
        f"<tr><th>{label}</th>{_figure(f'delivery.{key}', count)}"
        f'<td class="n">{_share(count, delivery.sent)}</td></tr>'
        for label, key, count in (
            ("sent", "sent", delivery.sent),
            ("delivered", "delivered", delivery.delivered),
            ("failed", "failed", delivery.failed),
            ("expired", "expired", delivery.expired),
            ("pending", "pending", delivery.pending),
        )
    ]
    parts = [_table(("", "rows", "share"), rows)]
    if view.axis is not None and view.total is not None:
        parts.append(_funnel_chart(view, view.axis, view.total, prefix))
    if delivery.time_to_delivery_s:
        bars = _bars(delivery.time_to_delivery_s, "s")
        parts.append("<h2>Time to delivery</h2>")
        chart = bar_chart(f"{prefix}-time-to-delivery", "Time to delivery", bars, "seconds")
        parts.append(chart)
    return _card("Delivery funnel (receipts)", "".join(parts))


def _funnel_chart(view: CampaignView, axis: TimeAxis, total: WorkerSeries, prefix: str) -> str:
    middles = _middles(axis)
    running = {"sent": 0, "delivered": 0, "failed": 0, "expired": 0}
    points: dict[str, list[tuple[float, float | None]]] = {key: [] for key in running}
    for at, bucket in zip(middles, total.buckets, strict=True):
        for key, count in (
            ("sent", bucket.sent), ("delivered", bucket.delivered),
            ("failed", bucket.delivery_failed), ("expired", bucket.expired),
        ):  # fmt: skip
            running[key] += count
            points[key].append((at, running[key]))
    lines = [Line(key, key, points[key]) for key in running]
    chart = time_chart(
        TimeChart(
            f"{prefix}-funnel", "Delivery funnel over time", axis.start_s,
            axis.end_s, lines, _spans(view, axis), (), "rows", counts=True,
        )
    )  # fmt: skip
    return f'<h2>Over time (cumulative)</h2><p class="legend">{_legend(lines)}</p>{chart}'


def _share(count: int, whole: int) -> str:
    return f"{count / whole:.1%}" if whole else NONE


def _runs_card(view: CampaignView) -> str:
    if not view.runs:
        return _card("Runs and settings", "<p>No run was recorded in this journal.</p>")
    rows = [
        f"<tr><td>{number}</td><td>{escape(run.worker)}</td><td>{_when(run.started_at_s)}</td>"
        f'<td>{_ended(run)}</td><td class="n">{_code(run)}</td></tr>'
        for number, run in enumerate(view.runs, start=1)
    ]
    table = _table(("run", "worker", "started", "ended", "exit code"), rows)
    settings = "".join(
        f"<details{' open' if number == len(view.runs) else ''}><summary>Settings of run "
        f"{number}</summary>{_settings_table(run)}</details>"
        for number, run in enumerate(view.runs, start=1)
    )
    return _card("Runs and settings", table + settings)


def _settings_table(run: RunSpan) -> str:
    rows = [
        # Masked again: a journal written before a secret's name was known to be one keeps it.
        f"<tr><td>{escape(name)}</td><td>{escape(mask_url_password(value))}</td></tr>"
        for name, value in shown_settings(run.settings)
    ]
    return _table(("setting", "value"), rows)


def _ended(run: RunSpan) -> str:
    return f"{NONE} (running, or killed)" if run.ended_at_s is None else _when(run.ended_at_s)


def _code(run: RunSpan) -> str:
    return NONE if run.exit_code is None else str(run.exit_code)


def _when(unix_s: float) -> str:
    """A date and time in UTC: it may wrap between the two, never within one."""
    return datetime.fromtimestamp(unix_s, UTC).strftime(
        '<span class="nowrap">%Y-%m-%d</span> <span class="nowrap">%H:%M:%S UTC</span>'
    )
