"""Every line sms-blaster writes on stderr, in one of two formats chosen once at start.

`text` (the default) writes the human line as it is. `json` writes each line as one JSON object,
for journald, Loki or ELK: `ts` (RFC 3339, UTC, milliseconds), `level` (info, warning or error),
`msg` (the very text the `text` format writes) and the line's figures as further keys. A
multi-line message (the summary, the help) is one object whose `msg` keeps its newlines.

The CLI's own lines go through `say`; modules that log through the standard `logging` (the
receiver, the distributed mode, aiohttp's errors) get `JsonFormatter` on the root logger, so
both kinds render through `json_line`. The CLI's lines use this writer rather than `logging`:
each goes to the stream its run was given (a test gives its own), the text format stays byte for
byte what it was, and an error line needs no logging set up. Speed decides nothing: a line costs
about as much either way, and progress writes one every 10 s (benchmarks/notes.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
import types
from collections.abc import Iterator, Mapping, Sequence
from enum import StrEnum
from typing import Any, Protocol

ENVIRONMENT_VARIABLE = "SMS_BLASTER_LOG_FORMAT"
OPTION = "--log-format"


class Stream(Protocol):
    """Where lines go: stderr, or a test's buffer."""

    def write(self, text: str, /) -> int: ...
    def flush(self) -> None: ...


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


class Level(StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


_format = LogFormat.TEXT  # set once, by the command line, before anything is written
_json_handler: logging.Handler | None = None


def use(log_format: LogFormat, stream: Stream) -> None:
    """Write every later line in `log_format`. With json, records of the standard `logging`
    that reach the root logger (aiohttp's, asyncio's) are JSON too, warnings and up."""
    global _format, _json_handler
    _format = log_format
    root = logging.getLogger()
    if _json_handler is not None:  # an earlier command of the same process (tests)
        root.removeHandler(_json_handler)
        _json_handler = None
    # Python's warnings, and a bug's traceback, are lines on stderr too.
    logging.captureWarnings(log_format is LogFormat.JSON)
    if log_format is LogFormat.JSON:
        sys.excepthook = _log_crash
        _json_handler = logging.StreamHandler(stream)
        _json_handler.setFormatter(JsonFormatter())
        root.addHandler(_json_handler)
        root.setLevel(logging.WARNING)
    elif sys.excepthook is _log_crash:
        sys.excepthook = sys.__excepthook__


def _log_crash(
    kind: type[BaseException], exc: BaseException, traceback: types.TracebackType | None
) -> None:
    logging.getLogger("sms_blaster").critical("crashed: %r", exc, exc_info=(kind, exc, traceback))


@contextlib.contextmanager
def using(log_format: LogFormat) -> Iterator[None]:
    """The lines written in the block in `log_format`, for a test of a line's shape."""
    global _format
    before, _format = _format, log_format
    try:
        yield
    finally:
        _format = before


def is_json() -> bool:
    """True when lines are JSON objects: a terminal's redrawn progress bar then makes no sense."""
    return _format is LogFormat.JSON


def log_to(stream: Stream, label: str) -> None:
    """Show the standard `logging`'s records from INFO up on `stream`, as the long-running
    commands do (`label`: `worker`, `receive`)."""
    if _format is LogFormat.JSON:
        logging.getLogger().setLevel(logging.INFO)  # the JSON handler is on already (`use`)
        return
    logging.basicConfig(
        stream=stream,
        level=logging.INFO,
        format=f"%(asctime)s sms-blaster {label}: %(levelname)s %(message)s",
    )


def format_from(argv: Sequence[str], environ: Mapping[str, str]) -> LogFormat:
    """The format a command line asks for, read before click parses it, so that even click's
    own usage errors come out in it: the last `--log-format`, else the environment's, else
    text. A value that is no format gives text here (click then refuses it)."""
    value = environ.get(ENVIRONMENT_VARIABLE)
    given = iter(argv)
    for arg in given:
        if arg == "--":
            break
        if arg == OPTION:
            value = next(given, None)
        elif arg.startswith(OPTION + "="):
            value = arg.partition("=")[2]
    try:
        return LogFormat(value or LogFormat.TEXT)
    except ValueError:
        return LogFormat.TEXT


def say(
    stream: Stream,
    msg: str,
    level: Level = Level.INFO,
    /,
    *,
    flush: bool = False,
    **fields: Any,
) -> None:
    """Write one line: `msg` as it is, or (json) one object of `msg` and `fields`."""
    if _format is LogFormat.JSON:
        stream.write(json_line(time.time(), level, msg, fields))
    else:
        stream.write(msg + "\n")
    if flush:
        stream.flush()


def json_line(at_s: float, level: Level, msg: str, fields: Mapping[str, Any]) -> str:
    """The JSON object of one line, and a newline. ASCII only: a number or a name given in the
    input cannot put a control or reordering character on a terminal that tails the log."""
    document = {"ts": timestamp(at_s), "level": level.value, "msg": msg}
    document.update((key, value) for key, value in fields.items() if key not in document)
    return json.dumps(document, default=str) + "\n"


def timestamp(at_s: float) -> str:
    """`2026-12-07T10:57:31.123Z`: RFC 3339, UTC, milliseconds."""
    whole_s = int(at_s)
    ms = int((at_s - whole_s) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole_s)) + f".{ms:03d}Z"


class JsonFormatter(logging.Formatter):
    """A `logging` record as `json_line` writes it; a traceback goes in `exception`."""

    def format(self, record: logging.LogRecord) -> str:
        levelno = record.levelno
        level = (
            Level.ERROR
            if levelno >= logging.ERROR
            else Level.WARNING
            if levelno >= logging.WARNING
            else Level.INFO  # DEBUG too: only three levels are told apart
        )
        fields: dict[str, Any] = {"logger": record.name}
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:  # a traceback given as text (masked: receiver/hook_failures.py)
            fields["exception"] = record.exc_text
        return json_line(record.created, level, record.getMessage(), fields).rstrip("\n")
