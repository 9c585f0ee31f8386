"""The provider seam, and the one place where transport failures are classified.

A provider is pure: `build_request(message) -> HttpRequest` and
`parse_response(status, headers, body) -> SendResult`. `send` does the I/O over the run's one
keep-alive session and turns aiohttp's exceptions into outcomes:

- no connection could be made (refused, DNS, connect timeout): nothing was written -> TRANSIENT;
- anything after the request may have been written (reset, disconnect, read timeout, a broken
  answer): the provider may have accepted it -> AMBIGUOUS, never resent by default.

Every result leaves `send` through the provider's `Redactor`: a text from outside may echo the
credentials, and nothing stores or shows a result before this point.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from sms_blaster.models import Message, Outcome, SendResult
from sms_blaster.providers.names import ProviderName
from sms_blaster.providers.redact import Redactor
from sms_blaster.retry import CONNECT_ERROR


@dataclass(frozen=True, slots=True)
class HttpRequest:
    url: str
    body: bytes
    headers: Mapping[str, str]


class Provider(Protocol):
    """What the engine, journal, limiter and receiver know of a provider, and nothing more."""

    name: ProviderName  # kept in the journal and the Redis campaign
    receipt_route: str  # where `sms-blaster receive` takes this provider's callbacks
    redactor: Redactor  # masks the secrets this provider sends, in every text that comes back

    def build_request(self, message: Message) -> HttpRequest:
        """The HTTP request that sends `message`."""

    def parse_response(self, status: int, headers: Mapping[str, str], body: bytes) -> SendResult:
        """Classify one HTTP answer."""

    def cost(self, message: Message) -> float:
        """What one send of `message` takes from the rate limit (requests, or segments)."""


def parse_retry_after(value: str | None, now_s: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delay in seconds, or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    now = time.time() if now_s is None else now_s
    return max(0.0, when.timestamp() - now)


def classify_exception(exc: BaseException) -> SendResult:
    """Translate a transport failure into an outcome (see the module docstring)."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return SendResult(Outcome.FATAL, "tls_error", f"{_describe(exc)}; check --base-url")
    if isinstance(exc, aiohttp.InvalidURL):
        # Refused before any connection: never sent, and no request to this URL ever will be.
        return SendResult(Outcome.FATAL, "invalid_url", f"{_describe(exc)}; check --base-url")
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return SendResult(Outcome.TRANSIENT, CONNECT_ERROR, _describe(exc))
    if isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
        return SendResult(Outcome.AMBIGUOUS, "timeout", "no answer in time; it may have been sent")
    return SendResult(
        Outcome.AMBIGUOUS, "connection_lost", f"{_describe(exc)}; it may have been sent"
    )


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


@dataclass(frozen=True, slots=True)
class Exchange:
    """One attempt: its classified result and how long the request took."""

    result: SendResult
    latency_s: float


async def send(
    session: aiohttp.ClientSession,
    provider: Provider,
    message: Message,
) -> Exchange:
    """Send one request and classify what came back (timeouts are the session's)."""
    try:
        request = provider.build_request(message)
    except Exception as exc:  # nothing was sent: this message cannot be
        failure = SendResult(Outcome.PERMANENT, "bad_request", repr(exc))
        return Exchange(provider.redactor.result(failure), 0.0)
    started = time.perf_counter()
    try:
        async with session.post(
            request.url, data=request.body, headers=request.headers, allow_redirects=False
        ) as response:
            body = await response.read()
            result = provider.parse_response(response.status, response.headers, body)
    except Exception as exc:  # every failure is classified; none escapes
        result = classify_exception(exc)
    return Exchange(provider.redactor.result(result), time.perf_counter() - started)


def session_timeout(timeout_s: float) -> aiohttp.ClientTimeout:
    """A whole-request timeout, with connecting given half of it so that a connect timeout (nothing
    sent, safe to retry) is told apart from a timeout after the request left (ambiguous)."""
    return aiohttp.ClientTimeout(total=timeout_s, connect=timeout_s / 2, sock_connect=timeout_s / 2)
