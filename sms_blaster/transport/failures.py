"""The one place where a transport failure becomes an outcome.

Each transport says which of these happened; only this module says what it means for the row:

- `INVALID_URL`, `TLS`: refused before any byte of a request could be written, and every request
  to this endpoint would be -> FATAL (the run stops; check --base-url);
- `PROXY`: the proxy refused the tunnel for good (407, 403, an answer that is not HTTP), before
  any byte of a request was written, and would refuse every one -> FATAL (the run stops; check
  the proxy's variables);
- `CONNECT`: no connection could be made (refused, DNS, connect timeout, no connection free in
  time), or the request was surely never written -> TRANSIENT, safe to resend;
- `TIMEOUT`, `LOST`: the request may have been written (no answer in time; a reset, close or
  broken answer after the first byte left) -> AMBIGUOUS: the provider may have accepted it, so it
  is never resent by default.
"""

from __future__ import annotations

from enum import Enum

from sms_blaster.models import Outcome, SendResult
from sms_blaster.retry import CONNECT_ERROR, CONNECTION_LOST


class Failure(Enum):
    """What went wrong in the transport; its value is the record's error code."""

    INVALID_URL = "invalid_url"
    TLS = "tls_error"
    PROXY = "proxy_refused"
    CONNECT = CONNECT_ERROR
    TIMEOUT = "timeout"
    LOST = CONNECTION_LOST


def failure_result(failure: Failure, detail: str) -> SendResult:
    """The outcome of a failed attempt (see the module docstring)."""
    if failure is Failure.TLS or failure is Failure.INVALID_URL:
        return SendResult(Outcome.FATAL, failure.value, f"{detail}; check --base-url")
    if failure is Failure.PROXY:
        return SendResult(
            Outcome.FATAL,
            failure.value,
            f"{detail}; check HTTPS_PROXY, HTTP_PROXY, ALL_PROXY and NO_PROXY",
        )
    if failure is Failure.CONNECT:
        return SendResult(Outcome.TRANSIENT, failure.value, detail)
    if failure is Failure.TIMEOUT:
        return SendResult(
            Outcome.AMBIGUOUS, failure.value, "no answer in time; it may have been sent"
        )
    return SendResult(Outcome.AMBIGUOUS, failure.value, f"{detail}; it may have been sent")


def describe(exc: BaseException) -> str:
    """An exception as a record's message shows it."""
    return str(exc) or type(exc).__name__
