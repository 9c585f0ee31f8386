"""The one interface every simulated API implements, and what passes through it.

The server (`sms_blaster.simulator.provider`) runs the same checks, in the same order, for every
API; a `Dialect` is all it knows of one: where its sends arrive, how it reads one (`read`), how it
books and answers an accepted one (`accept`), what every answer of it carries (`answer`), and how
it spells the refusals of the shared checks. Each API module (`sms_api`, `messages_api`,
`twilio_api`) builds one `DIALECT`; adding an API is one more such module, registered by its line
in `provider.DIALECTS` (and its name in `answers.Api`, which the stats and receipts are keyed by).
Everything here is pure: no aiohttp, no clock.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from sms_blaster.simulator.answers import Api, Refusal, SendRequest
from sms_blaster.simulator.callbacks import AcceptedMessage
from sms_blaster.simulator.config import SimulatorConfig

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Incoming:
    """A send request as it came, for an API's `read`."""

    body: bytes
    authorization: str  # '' when there is no Authorization header
    content_type: str
    query: Mapping[str, str]  # the query string's parameters, the first of each name
    path: Mapping[str, str]  # the route's parameters, e.g. Twilio's `account_sid`


@dataclass(frozen=True, slots=True)
class Accepted:
    """An accepted send, as its API books and answers it."""

    http_status: int
    body: bytes
    message: AcceptedMessage | None  # what its receipts describe; None: it has none
    kept: Mapping[str, Any]  # the stats' record of it: id, from, text, type, client_ref


class Till(Protocol):
    """What an API's `accept` charges a message to: the simulator's one balance and price."""

    @property
    def price(self) -> str:
        """The price of one part, as the APIs print it (8 decimals)."""
        ...

    def charge(self, parts: int) -> list[str]:
        """Take `parts` parts' price off the balance: the balance left after each part."""
        ...

    def serials(self, count: int) -> range:
        """`count` fresh message numbers, in order (unique while the simulator runs)."""
        ...


def plain_answer(body: bytes, content_type: str) -> tuple[bytes, Headers]:
    """An answer as it stands, with no headers of its own: most APIs' `answer`."""
    return body, ()


@dataclass(frozen=True, slots=True)
class Dialect:
    """One simulated API: its route, its read, accept and answer steps, and its refusals."""

    api: Api
    path: str  # the route its sends are POSTed to
    read: Callable[[Incoming, SimulatorConfig], SendRequest]
    accept: Callable[[SendRequest, Till, SimulatorConfig], Accepted]
    # Every answer, accepted or refused, goes out through this: the body, and headers to add.
    answer: Callable[[bytes, str], tuple[bytes, Headers]]
    # The throttle takes one token per SMS segment of a send, not one per request.
    counts_segments: bool
    # How it spells the shared checks' refusals, in the order the server runs them:
    too_many: Refusal  # the concurrency cap, at the door
    echo: Callable[[str], Refusal]  # bad credentials, quoting the request's (echo_credentials)
    throttled: Callable[[float | None], Refusal]  # given the true wait in seconds, or no hint
    rate_limited: Callable[[int], Refusal]  # HTTP 429 with Retry-After: this many seconds
    magic_always: Mapping[str, Refusal]  # by the recipient's last four digits
    magic_first: Mapping[str, Refusal]  # the same, for its first request only
    unavailable: Refusal  # the random HTTP 503
