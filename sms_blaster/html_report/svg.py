"""Charts as inline SVG text: a time chart of lines, and a bar chart. Pure functions.

Each chart has a fixed coordinate system (`viewBox`) and no size of its own: the page's CSS
makes it as wide as its column, so it reflows from a laptop to a phone. A point's value shows on
hover through its `<title>` (no script needed). Every text that reaches the SVG is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape

WIDTH = 800  # viewBox units
HEIGHT = 260
# Room for the axes' labels, at the larger font a narrow screen is given (the page's CSS).
_LEFT, _RIGHT, _TOP, _BOTTOM = 76, 12, 30, 34
_TICKS = 5
# Time ticks a reader counts in, in seconds.
_TIME_STEPS_S = (
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Line:
    """One series of a time chart: y per x (None: no value there, the line breaks)."""

    label: str
    css_class: str  # its colour and dash, from the page's style sheet
    points: Sequence[tuple[float, float | None]]  # (unix seconds, value)
    unit: str = ""


@dataclass(frozen=True, slots=True)
class TimeChart:
    """Lines over time, with shaded spans (the runs) and marks (throttles) on the time axis."""

    chart_id: str
    title: str
    start_s: float
    end_s: float
    lines: Sequence[Line]
    spans: Sequence[tuple[float, float]] = ()  # (from, to) unix seconds: shaded
    marks: Sequence[tuple[float, str]] = ()  # (unix seconds, what happened): ticks at the bottom
    y_label: str = ""
    counts: bool = False  # the values are counts: ticks at whole numbers only


@dataclass(frozen=True, slots=True)
class Bar:
    label: str
    value: float
    hover: str  # the exact figure, shown on hover


def nice_step(span: float, ticks: int = _TICKS) -> float:
    """A round step (1, 2 or 5 times a power of ten) that cuts `span` into about `ticks`."""
    if span <= 0:
        return 1.0
    raw = span / ticks
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * power:
            return float(factor * power)
    raise AssertionError("unreachable: raw is at most 10 times its power of ten")


def _y_step(top: float, counts: bool) -> float:
    """The y axis' step: a round one, a whole number for counts."""
    step = nice_step(top or 1.0)
    return max(step, 1.0) if counts else step


def _number(value: float) -> str:
    """A tick label: `1,200`, `2.5`, `0.05`."""
    if value == int(value):
        return f"{int(value):,}"
    return f"{value:,.3g}" if abs(value) < 1 else f"{value:,.1f}"


def _fmt(value: float) -> str:
    """A coordinate: two decimals are finer than a screen's pixel."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def time_chart(chart: TimeChart) -> str:
    """The chart as an `<svg>` element."""
    span_s = max(chart.end_s - chart.start_s, 1.0)
    values = [y for line in chart.lines for _, y in line.points if y is not None]
    top = max(values, default=0.0)
    step = _y_step(top, chart.counts)
    y_max = step * math.ceil((top or 1.0) / step)
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM

    def x_of(at_s: float) -> float:
        return _LEFT + plot_w * (at_s - chart.start_s) / span_s

    def y_of(value: float) -> float:
        return _TOP + plot_h * (1 - value / y_max)

    parts = [_open(chart.chart_id, chart.title)]
    for start_s, end_s in chart.spans:
        x0, x1 = x_of(max(start_s, chart.start_s)), x_of(min(end_s, chart.end_s))
        parts.append(
            f'<rect class="span" x="{_fmt(x0)}" y="{_TOP}" width="{_fmt(max(x1 - x0, 3))}" '
            f'height="{plot_h}"/>'
        )
    parts += _y_axis(y_max, step, y_of, chart.y_label)
    parts += _time_axis(chart.start_s, chart.end_s, x_of)
    for line in chart.lines:
        parts.append(_polyline(line, x_of, y_of))
    for at_s, what in chart.marks:
        x = _fmt(x_of(at_s))
        parts.append(
            f'<line class="mark" x1="{x}" y1="{HEIGHT - _BOTTOM}" x2="{x}" '
            f'y2="{HEIGHT - _BOTTOM - 10}"><title>{escape(what)}</title></line>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _open(chart_id: str, title: str) -> str:
    return (
        f'<svg id="{escape(chart_id)}" class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'role="img" aria-label="{escape(title)}" preserveAspectRatio="xMidYMid meet">'
        f"<title>{escape(title)}</title>"
    )


def _y_axis(y_max: float, step: float, y_of: Callable[[float], float], label: str) -> list[str]:
    parts = []
    value = 0.0
    while value <= y_max + step / 2:
        y = _fmt(y_of(value))
        parts.append(
            f'<line class="grid" x1="{_LEFT}" y1="{y}" x2="{WIDTH - _RIGHT}" y2="{y}"/>'
            f'<text class="tick" x="{_LEFT - 6}" y="{y}" text-anchor="end" '
            f'dominant-baseline="middle">{_number(value)}</text>'
        )
        value += step
    if label:
        parts.append(
            # Right of the tick labels, above the plot: clear of both at any font size.
            f'<text class="axis-label" x="{_LEFT}" y="2" dominant-baseline="hanging">'
            f"{escape(label)}</text>"
        )
    return parts


def time_step_s(span_s: float, ticks: int = _TICKS) -> int:
    """A round time step that cuts `span_s` into at most about `ticks` (whole days beyond)."""
    for step_s in _TIME_STEPS_S:
        if span_s / step_s <= ticks + 1:
            return step_s
    return 86400 * math.ceil(span_s / 86400 / ticks)


def _time_axis(start_s: float, end_s: float, x_of: Callable[[float], float]) -> list[str]:
    step_s = time_step_s(end_s - start_s)
    pattern = "%H:%M:%S" if step_s < 60 else "%m-%d %H:%M" if step_s >= 3600 else "%H:%M"
    parts = []
    at_s = math.ceil(start_s / step_s) * step_s
    index = 0
    while at_s <= end_s:
        x = x_of(at_s)
        text = datetime.fromtimestamp(at_s, UTC).strftime(pattern)
        # A label at the right edge ends there rather than being cut off by it.
        anchor = "end" if x > WIDTH - _RIGHT - 60 else "middle"
        parts.append(
            f'<text class="{_tick_class(index)}" x="{_fmt(x)}" y="{HEIGHT - 8}" '
            f'text-anchor="{anchor}">{text}</text>'
        )
        at_s += step_s
        index += 1
    return parts


def _tick_class(index: int) -> str:
    """Every other label along x is `alt`: a narrow screen, its labels larger, hides those."""
    return "tick alt" if index % 2 else "tick"


def _polyline(line: Line, x_of: Callable[[float], float], y_of: Callable[[float], float]) -> str:
    """The line as paths broken where it has no value, each point a hover target."""
    runs: list[list[tuple[str, str, str]]] = [[]]  # (x, y, hover text) of each point
    for at_s, value in line.points:
        if value is None:
            if runs[-1]:
                runs.append([])
            continue
        when = datetime.fromtimestamp(at_s, UTC).strftime("%Y-%m-%d %H:%M:%S")
        hover = f"{line.label} {when} UTC: {_number(round(value, 2))}{line.unit}"
        runs[-1].append((_fmt(x_of(at_s)), _fmt(y_of(value)), hover))
    paths = []
    for points in runs:
        if len(points) > 1:
            paths.append(f'<polyline points="{" ".join(f"{x},{y}" for x, y, _ in points)}"/>')
        # A point with no neighbour has no line to show it: its dot is drawn ("alone").
        alone = ' class="alone"' if len(points) == 1 else ""
        paths += [
            f'<circle{alone} cx="{x}" cy="{y}" r="4"><title>{escape(hover)}</title></circle>'
            for x, y, hover in points
        ]
    return (
        f'<g class="line {escape(line.css_class)}" data-label="{escape(line.label)}">'
        f"{''.join(paths)}</g>"
    )


def bar_chart(chart_id: str, title: str, bars: Sequence[Bar], x_label: str = "") -> str:
    """Vertical bars of counts, one per label, as an `<svg>` element (labels under every few
    bars)."""
    top = max((bar.value for bar in bars), default=0.0)
    step = _y_step(top, counts=True)
    y_max = step * math.ceil((top or 1.0) / step)
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM

    def y_of(value: float) -> float:
        return _TOP + plot_h * (1 - value / y_max)

    parts = [_open(chart_id, title), *_y_axis(y_max, step, y_of, "")]
    slot = plot_w / max(len(bars), 1)
    label_every = max(1, math.ceil(len(bars) / 8))
    for index, bar in enumerate(bars):
        x, y = _LEFT + slot * index, y_of(bar.value)
        parts.append(
            f'<rect class="bar" x="{_fmt(x + slot * 0.1)}" y="{_fmt(y)}" '
            f'width="{_fmt(max(slot * 0.8, 0.5))}" height="{_fmt(HEIGHT - _BOTTOM - y)}">'
            f"<title>{escape(bar.label)}: {escape(bar.hover)}</title></rect>"
        )
        if index % label_every == 0:
            parts.append(
                f'<text class="{_tick_class(index // label_every)}" x="{_fmt(x + slot / 2)}" '
                f'y="{HEIGHT - 8}" text-anchor="middle">{escape(bar.label)}</text>'
            )
    if x_label:
        parts.append(
            f'<text class="axis-label" x="{WIDTH - _RIGHT}" y="2" text-anchor="end" '
            f'dominant-baseline="hanging">{escape(x_label)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
