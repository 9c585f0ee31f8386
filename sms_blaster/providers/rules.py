"""The HTTP rules every provider follows, stated once: the status ladder, the success that names no
message, and Basic auth. Each adapter keeps only its own dialect: its success answer, its error
codes, and its words for each rung.

The ladder, for an answer that is not the provider's success:

| status                                      | rung            | outcome   |
|---------------------------------------------|-----------------|-----------|
| 1xx (an interim answer given as the last)   | NO_ANSWER       | ambiguous |
| 3xx                                         | REDIRECTED      | fatal     |
| 408                                         | NOT_READ        | transient |
| 429                                         | THROTTLED       | throttled |
| 401, 403                                    | CREDENTIALS     | fatal     |
| 402                                         | PAYMENT         | fatal     |
| 404, 405                                    | NOT_FOUND       | fatal     |
| 503 with Retry-After                        | COME_BACK_LATER | transient |
| any other 5xx (and above)                   | SERVER_ERROR    | ambiguous |
| any other 4xx                               | REFUSED         | permanent |

Every 2xx goes to the adapter's own success parser, whichever 2xx its API documents: the request
was taken, so an answer that names no message is ambiguous (`no_message_id`), never refused; so
is one that names another number than the request's (`for_another_number`).
A 408 says the server stopped waiting for a request it had not read whole (RFC 9110 15.5.9): one
sent on a kept-alive connection as the server timed it out, so safe to send again.
The 3xx and 404/405 rungs are fatal because every later request would go to the same wrong address
(the base URL). Only 503 with Retry-After is safe to resend: the provider said "come back later"
before processing; any other 5xx may come after the request reached the provider (a proxy's 502,
503 or 504), so the message may have been sent.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Final

from sms_blaster.models import Outcome, SendResult


class Rung(Enum):
    """Where an HTTP status lands on the ladder (see the module docstring)."""

    NO_ANSWER = "no_answer"
    REDIRECTED = "redirected"
    NOT_READ = "not_read"
    THROTTLED = "throttled"
    CREDENTIALS = "credentials"
    PAYMENT = "payment"
    NOT_FOUND = "not_found"
    COME_BACK_LATER = "come_back_later"
    SERVER_ERROR = "server_error"
    REFUSED = "refused"

    @property
    def outcome(self) -> Outcome:
        return _OUTCOMES[self]

    @property
    def words(self) -> str:
        """What the answer means, when the provider's own words add nothing."""
        return _WORDS[self]


_OUTCOMES: Final = {
    Rung.NO_ANSWER: Outcome.AMBIGUOUS,
    Rung.REDIRECTED: Outcome.FATAL,
    Rung.NOT_READ: Outcome.TRANSIENT,
    Rung.THROTTLED: Outcome.THROTTLED,
    Rung.CREDENTIALS: Outcome.FATAL,
    Rung.PAYMENT: Outcome.FATAL,
    Rung.NOT_FOUND: Outcome.FATAL,
    Rung.COME_BACK_LATER: Outcome.TRANSIENT,
    Rung.SERVER_ERROR: Outcome.AMBIGUOUS,
    Rung.REFUSED: Outcome.PERMANENT,
}
_WORDS: Final = {
    Rung.NO_ANSWER: "no final answer; it may have been sent",
    Rung.REDIRECTED: "redirected: check --base-url",
    Rung.NOT_READ: "the server timed out the request before reading it",
    Rung.THROTTLED: "too many requests",
    Rung.CREDENTIALS: "the provider refused the credentials or account",
    Rung.PAYMENT: "the account is out of credit",
    Rung.NOT_FOUND: "no API at this address; check --base-url",
    Rung.COME_BACK_LATER: "service unavailable",
    Rung.SERVER_ERROR: "server error; it may have been sent",
    Rung.REFUSED: "the provider refused the request",
}
# The rungs whose wait (Retry-After) a result keeps: the others are not retried after a wait.
_WAITING: Final = frozenset({Rung.THROTTLED, Rung.COME_BACK_LATER})


def rung_of(status: int, wait_s: float | None) -> Rung:
    """The rung of an HTTP status that is not a 2xx; `wait_s` from Retry-After."""
    if status < 200:
        return Rung.NO_ANSWER
    if 300 <= status < 400:
        return Rung.REDIRECTED
    if status == 408:
        return Rung.NOT_READ
    if status == 429:
        return Rung.THROTTLED
    if status in (401, 403):
        return Rung.CREDENTIALS
    if status == 402:
        return Rung.PAYMENT
    if status in (404, 405):
        return Rung.NOT_FOUND
    if status == 503 and wait_s is not None:
        return Rung.COME_BACK_LATER
    if status >= 500:
        return Rung.SERVER_ERROR
    return Rung.REFUSED


def on_rung(step: Rung, code: str, detail: str, wait_s: float | None) -> SendResult:
    """The result of an answer on `step`, with the provider's code and words."""
    return SendResult(step.outcome, code, detail, wait_s=wait_s if step in _WAITING else None)


def no_message_id(detail: str = "unreadable answer; it may have been sent") -> SendResult:
    """A success that does not name the message: it may have been sent, so it is never resent."""
    return SendResult(Outcome.AMBIGUOUS, "bad_answer", detail)


def for_another_number(answer_to: object, to: str) -> bool:
    """Whether an answer names a number other than `to`, the request's (digits compared). An
    answer naming none, or a request whose number is not given, is not checked.

    A provider that sends an answer nobody asked for (a stray on a fresh connection, a second
    one on a kept-alive connection) gets it read as the answer of the next request written
    there: the number is what tells it from the request's own answer."""
    if not to or answer_to is None or answer_to == "" or answer_to == to:
        return False
    return "".join(filter(str.isdigit, str(answer_to))) != to


# An answer for another number says nothing of this request, which may have been sent.
ANOTHER_NUMBERS_ANSWER: Final = no_message_id("the answer is for another number")
# An answer that came late, on another request's connection (or on one left idle), named this
# request's number: the request already sent for it may have been accepted.
NAMED_LATE: Final = SendResult(
    Outcome.AMBIGUOUS,
    "two_answers",
    "an answer naming this number came late, read as another request's: it may have been sent",
)
_NAMED_NUMBER = re.compile(rb'"to"\s*:\s*"([^"]{1,40})"')


def numbers_named(data: bytes) -> set[str]:
    """The numbers an answer's bytes name (`"to": "..."`, as every API's JSON says it), in
    digits: what an answer read as another request's may say was accepted."""
    return {
        digits
        for found in _NAMED_NUMBER.findall(data)
        if (digits := "".join(filter(str.isdigit, found.decode("ascii", "replace"))))
    }


# An answer that would have its request sent again, followed on its connection by one more: the
# one read may have been another request's, and this request's own may say it was accepted.
TWO_ANSWERS: Final = SendResult(
    Outcome.AMBIGUOUS,
    "two_answers",
    "one answer too many came on its connection, so the one read may be another request's; "
    "it may have been sent",
)


@dataclass(frozen=True, slots=True)
class BasicAuth:
    """HTTP Basic credentials; the token is a secret of its own for the provider's `Redactor`."""

    token: str = field(repr=False)

    @classmethod
    def of(cls, user: str, password: str) -> BasicAuth:
        return cls(base64.b64encode(f"{user}:{password}".encode()).decode())

    @property
    def header(self) -> str:
        """The `Authorization` header's value."""
        return f"Basic {self.token}"
