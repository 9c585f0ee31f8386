"""The transport seam: what the engine calls to send one message, whichever client does the I/O.

A transport builds the provider's request, sends it, hands the answer to the provider's pure
`parse_response`, and turns its own failures into outcomes through `failures.failure_result`.
Every result leaves a transport through the provider's `Redactor`: a text from outside may echo
the credentials, and nothing stores or shows a result before this point.
"""

from __future__ import annotations

from contextvars import ContextVar
from enum import StrEnum
from typing import Protocol

from sms_blaster.models import Message, Outcome, SendResult
from sms_blaster.providers.base import Exchange, Provider

USER_AGENT = "sms-blaster"  # what every request says it comes from

# Whether the attempt the current task is making was cancelled before any byte of its request
# could be written (waiting for a connection, a tunnel, or its turn): said by what the
# cancellation passed through, read by the engine, which records such a row stopped (the resume
# sends it) rather than unknown. A context variable: the engine's task is the one a send runs
# in, through whatever wraps it (a pool's pacing), and a send cannot return once cancelled.
_CANCELLED_UNWRITTEN: ContextVar[bool] = ContextVar("cancelled_unwritten", default=False)


class TransportName(StrEnum):
    """A transport, as `--transport` spells it."""

    LEAN = "lean"
    AIOHTTP = "aiohttp"


class Transport(Protocol):
    """Sends one message at a time for as many callers as the window lets in."""

    async def send(self, provider: Provider, message: Message) -> Exchange:
        """Send `message` and classify what came back; never raises for a failed request."""

    async def close(self) -> None:
        """Close every connection; no send is running by then."""


def unbuildable(provider: Provider, exc: Exception) -> Exchange:
    """The request for a message could not be built: nothing was sent, and it never can be."""
    failure = SendResult(Outcome.PERMANENT, "bad_request", repr(exc))
    return Exchange(provider.redactor.result(failure), 0.0)


def attempt_begins() -> None:
    """Called by the engine before each attempt: nothing is known of it yet."""
    _CANCELLED_UNWRITTEN.set(False)


def cancelled_unwritten() -> None:
    """Called as a cancellation passes through a send that has written nothing of its request
    (and will not: the cancellation ends it)."""
    _CANCELLED_UNWRITTEN.set(True)


def was_cancelled_unwritten() -> bool:
    """Whether the current attempt's cancellation came before any byte of its request left; False
    when nothing said so (the request may have been written)."""
    return _CANCELLED_UNWRITTEN.get()
