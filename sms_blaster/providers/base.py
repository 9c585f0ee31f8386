"""The provider seam.

A provider is pure: `build_request(message) -> HttpRequest` and
`parse_response(status, headers, body, to) -> SendResult`. The I/O, and the classification of what
fails in it, is the transport's (`sms_blaster.transport`), which hands back an `Exchange`.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from sms_blaster.models import Message, SendResult
from sms_blaster.providers.names import ProviderName
from sms_blaster.providers.redact import Redactor


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

    def parse_response(
        self, status: int, headers: Mapping[str, str], body: bytes, to: str = ""
    ) -> SendResult:
        """Classify one HTTP answer to the request sent to `to` (an answer naming another number
        is not this request's; "": not checked)."""

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


@dataclass(frozen=True, slots=True)
class Exchange:
    """One attempt: its classified result and how long the request took."""

    result: SendResult
    latency_s: float
    # A pool's pacing took this throttle as its sender's own limit, not the account's: flow
    # control does not see it.
    senders_own: bool = False
    # When the request left, given by a send that waited before it (a pool's sender's turn): the
    # time the engine called it would date the attempt too early, by that wait.
    left_s: float | None = None
    # For an answer that would have the request sent again: done with False if a second answer
    # came on its connection after it (the one read may have been another request's, and this
    # request's own may say it was accepted), with True once none can (transport/lean.py).
    in_sync: asyncio.Future[bool] | None = None
    # For the same answers: whether an answer too many read since named this request's number
    # or came on a connection it was watched on (the request may have been accepted after all),
    # asked when the row would be left to the resume (a stop during its retry's wait).
    named_late: Callable[[], bool] | None = None
    # The loop time by which the request's own answer would have come (its --timeout): a row
    # this run leaves to the resume on such an answer is judged after it, when any own answer
    # that came late has been read (lean transport).
    late_by_s: float | None = None
