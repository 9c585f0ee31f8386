"""The transport seam: what the engine calls to send one message, whichever client does the I/O.

A transport builds the provider's request, sends it, hands the answer to the provider's pure
`parse_response`, and turns its own failures into outcomes through `failures.failure_result`.
Every result leaves a transport through the provider's `Redactor`: a text from outside may echo
the credentials, and nothing stores or shows a result before this point.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
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

# A request takes its rate slot before it is handed to the transport; one that then waits for a
# connection (a proxy slow to open tunnels, a provider slow to accept or to finish TLS) would
# leave whenever the connection came, with all those that waited alike: a burst at the provider
# however evenly the slots were spaced. So a request that can be written later than this after
# it was handed over asks the engine first (`pace_again`): passed by other requests written
# meanwhile, it takes a new slot; else it leaves at once, and the slots after it are spaced from
# it (a lateness alike for every request shifts the pace without crowding it, and costs no
# slot). The same share of a second the limiter lets a late slot catch up by.
LATE_S = 0.01
# How the current task's late request is paced (`pace_again`): set once by each of the engine's
# sending tasks (`pace_again_with`); True when it may leave, False when the run stopped.
PaceAgain = Callable[[Message, bool], Awaitable[bool]]
_PACE_AGAIN: ContextVar[PaceAgain | None] = ContextVar("pace_again", default=None)


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


def pace_again_with(pace: PaceAgain) -> None:
    """Called by each of the engine's sending tasks: how its late requests are paced."""
    _PACE_AGAIN.set(pace)


def late(handed_s: float, now_s: float) -> bool:
    """Whether a request handed over at `handed_s` and able to be written at `now_s` (the
    loop's clock) is paced again before it is (see LATE_S)."""
    return now_s - handed_s > LATE_S


async def pace_again(message: Message, passed: bool) -> bool:
    """Pace a late request for `message` (see LATE_S); `passed`: other requests were written
    since it was handed over. True when it may be written now, False when the run stopped
    meanwhile (it must not be)."""
    pace = _PACE_AGAIN.get()
    return True if pace is None else await pace(message, passed)


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
