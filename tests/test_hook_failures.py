"""A failing receipt hook is logged at a bounded rate: one traceback per exception type per
interval, the rest counted and told in the next line or at the stop."""

from __future__ import annotations

import logging

import pytest

from sms_blaster.logs import JsonFormatter
from sms_blaster.providers.redact import Redactor
from sms_blaster.receiver.hook_failures import HookFailureLog
from sms_blaster.receiver.log_rate import Line, LogRate


class Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def fail(failures: HookFailureLog, exc: BaseException, message_id: str = "M1") -> bool:
    try:
        raise exc
    except BaseException as caught:
        return failures.failed(message_id, caught)


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> logging.Logger:
    caplog.set_level("ERROR", logger="hooks-test")
    return logging.getLogger("hooks-test")


def test_the_first_failure_of_a_kind_is_logged_with_its_traceback(
    log: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    """The first failure names the receipt and carries the traceback."""
    failures = HookFailureLog(log, clock=Clock())
    assert fail(failures, ValueError("bad"), "M7") is True
    (record,) = caplog.records
    assert record.exc_text is not None
    assert record.exc_text.startswith("Traceback (most recent call last):")
    assert record.exc_text.endswith("ValueError: bad")
    assert "M7" in record.getMessage()


def test_failures_like_it_within_the_interval_are_counted_not_logged(
    log: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    """Within the interval the same kind is only counted; the next line after it says how many."""
    clock = Clock()
    failures = HookFailureLog(log, every_s=10.0, clock=clock)
    fail(failures, ValueError("bad"))
    assert [fail(failures, ValueError("bad")) for _ in range(5)] == [False] * 5
    clock.now_s += 10.0
    assert fail(failures, ValueError("bad")) is True
    assert len(caplog.records) == 2
    assert "5 more builtins.ValueError failures since the last line, 10 s ago" in caplog.text


def test_another_kind_of_failure_gets_its_own_traceback(
    log: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    """A second bug is not hidden behind the first one's count."""
    failures = HookFailureLog(log, clock=Clock())
    fail(failures, ValueError("bad"))
    assert fail(failures, KeyError("missing")) is True
    assert fail(failures, SystemExit(3)) is True
    assert len([record for record in caplog.records if record.exc_text]) == 3


def test_a_secret_in_the_hooks_exception_or_traceback_is_masked(
    log: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    """The text a formatter shows is the masked one; the exception itself is not on the record."""
    secret = "apisecretABCDEF"
    failures = HookFailureLog(log, clock=Clock(), redact=Redactor.of([secret]).text)

    def call_the_api(api_secret: str) -> None:
        raise RuntimeError(f"hook boom secret={api_secret}")

    try:
        call_the_api(secret)
    except RuntimeError as exc:
        failures.failed("M1", exc)
    (record,) = caplog.records
    assert record.exc_info is None
    shown = logging.Formatter().format(record) + JsonFormatter().format(record)
    assert secret not in shown
    assert "RuntimeError: hook boom secret=[redacted]" in shown
    assert '"exception": "Traceback' in shown


def test_flush_tells_the_counts_held_back_and_forgets_them(
    log: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    """At the stop no count is lost; a second flush says nothing more."""
    failures = HookFailureLog(log, clock=Clock())
    for _ in range(4):
        fail(failures, ValueError("bad"))
    failures.flush()
    failures.flush()
    assert caplog.text.count("3 more times with builtins.ValueError") == 1


def test_a_kind_is_counted_apart_from_another_and_a_flush_forgets_the_counts() -> None:
    """The rule both the refusal log and the hook log keep, told the time."""
    clock = Clock()
    rate = LogRate(every_s=10.0, clock=clock)
    assert rate.note("a") == Line(0, 0.0)
    assert rate.note("a") is None
    assert rate.note("b") == Line(0, 0.0)
    clock.now_s += 12.0
    assert rate.note("a") == Line(1, 12.0)
    assert rate.note("b") == Line(0, 12.0)
    assert rate.note("b") is None
    assert rate.flush() == [("b", 1)]
    assert rate.flush() == []
