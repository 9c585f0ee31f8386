"""The transport seam: what the engine calls to send one message, whichever client does the I/O.

A transport builds the provider's request, sends it, hands the answer to the provider's pure
`parse_response`, and turns its own failures into outcomes through `failures.failure_result`.
Every result leaves a transport through the provider's `Redactor`: a text from outside may echo
the credentials, and nothing stores or shows a result before this point.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

from sms_blaster.models import Message, Outcome, SendResult
from sms_blaster.providers.base import Exchange, Provider

USER_AGENT = "sms-blaster"  # what every request says it comes from


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
