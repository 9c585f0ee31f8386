"""What one stderr line costs: our writer (`logs.say`) against the standard `logging` with the
same JSON formatter, in text and in JSON, for a progress line with its figures.

    python -m benchmarks.log_lines [--lines 20000] [--rounds 7]

The four ways are interleaved round by round, and each figure is the median of the rounds (with
the range), in µs a line.
"""

from __future__ import annotations

import argparse
import io
import logging
import statistics
import time
from collections.abc import Callable

from sms_blaster import logs
from sms_blaster.output import FlowFigures, RecordTotals, status_fields, status_text

_TALLY = RecordTotals()
_FIGURES = FlowFigures(in_flight=48, window=64, pace_per_s=1234.5, throttled=3)


def _line() -> tuple[str, dict[str, object]]:
    """The progress line's text and figures, built as `Progress.show` builds them."""
    text = "sms-blaster: " + status_text(_TALLY, 12.5, _FIGURES.text())
    return text, status_fields(_TALLY, 12.5) | _FIGURES.fields()


Writer = Callable[[], None]


def _ours(log_format: logs.LogFormat) -> Callable[[io.StringIO], Writer]:
    def make(stream: io.StringIO) -> Writer:
        def write() -> None:
            text, fields = _line()
            logs.say(stream, text, **fields)

        def in_format() -> None:
            with logs.using(log_format):
                write()

        return in_format

    return make


def _logging(formatter: logging.Formatter) -> Callable[[io.StringIO], Writer]:
    def make(stream: io.StringIO) -> Writer:
        logger = logging.getLogger("bench")
        logger.propagate = False
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.INFO)

        def write() -> None:
            text, fields = _line()
            logger.info(text, extra={"fields": fields})

        return write

    return make


def _line_only(stream: io.StringIO) -> Writer:
    def build() -> None:
        _line()

    return build


WAYS = {
    "building the line only": _line_only,
    "logs.say, text": _ours(logs.LogFormat.TEXT),
    "logs.say, json": _ours(logs.LogFormat.JSON),
    "logging, text (%(message)s)": _logging(logging.Formatter("%(message)s")),
    "logging, json (JsonFormatter)": _logging(logs.JsonFormatter()),
}


def _time_us(make: Callable[[io.StringIO], Writer], lines: int) -> float:
    write = make(io.StringIO())
    started = time.perf_counter()
    for _ in range(lines):
        write()
    return (time.perf_counter() - started) / lines * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    results: dict[str, list[float]] = {name: [] for name in WAYS}
    for _ in range(args.rounds):
        for name, write in WAYS.items():
            results[name].append(_time_us(write, args.lines))
    for name, figures in results.items():
        print(
            f"{name:32} {statistics.median(figures):6.1f} µs a line "
            f"({min(figures):.1f}-{max(figures):.1f})"
        )


if __name__ == "__main__":
    main()
