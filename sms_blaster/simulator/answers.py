"""What the simulated APIs share: their names, a send request as the checks see it, a refusal.

Each API module (`sms_blaster.simulator.sms_api`, `sms_blaster.simulator.messages_api`,
`sms_blaster.simulator.twilio_api`) reads its own request format into a `SendRequest` and spells
its own refusals as `Refusal`s; the server runs the same checks, in the same order, over all of
them (`sms_blaster.simulator.dialect`).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from typing import Final
from urllib.parse import urlsplit

from sms_blaster.providers.names import ProviderName

JSON: Final = "application/json"
NETWORK: Final = "23410"  # the mobile network every accepted message is said to go through


# The three APIs the simulator answers are the providers, by the names everything else uses.
Api = ProviderName


class Tally(Enum):
    """Which stats counter a refusal bumps."""

    THROTTLED = "throttled"
    REJECTED = "rejected"
    HTTP_503 = "http_503"


@dataclass(frozen=True, slots=True)
class Refusal:
    """An answer that does not accept the message; built once where it does not vary."""

    body: bytes
    tally: Tally = Tally.REJECTED
    http_status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = JSON


@dataclass(frozen=True, slots=True)
class SendRequest:
    """One send request, read: who sent it, to whom, what it costs, and what is wrong with it.

    The server checks the credentials, then the throttle, then the parameters, so the two
    problems are kept apart until then.
    """

    to: str  # the recipient's digits, no '+'; '' when missing
    key: str  # whose throttle bucket: the API key, application id or account SID
    segments: int  # SMS parts of the text (1 when there is none)
    auth_problem: Refusal | None = None
    params_problem: Refusal | None = None
    fields: Mapping[str, str] | None = None  # what the API's accept step reads; None if refused
    non_gsm_as_text: bool = False  # SMS API: type=text with characters GSM-7 lacks


def dumps(value: object) -> bytes:
    """Compact JSON bytes."""
    return json.dumps(value, separators=(",", ":")).encode()


@lru_cache(maxsize=64)
def basic_credentials(header: str) -> tuple[str, str]:
    """`(user, password)` from an `Authorization: Basic` header; empty if unreadable."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return "", ""
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return "", ""
    user, _, password = decoded.partition(":")
    return user, password


def is_http_url(url: str) -> bool:
    """True for an absolute http:// or https:// URL with a host."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)
