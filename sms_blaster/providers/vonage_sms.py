"""Vonage SMS API: `POST {base}/sms/json`, a form body, Basic auth, per-part answers.

Most outcomes come back as HTTP 200 with one `messages[]` element per part and a string `status`
("0" accepted). The request body is built once per message from pre-encoded pieces: this is the
costly part of a send, not parsing the answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from urllib.parse import quote_plus

from sms_blaster.models import Encoding, Message, Outcome, SendResult
from sms_blaster.providers.base import HttpRequest, parse_retry_after
from sms_blaster.providers.names import ProviderName
from sms_blaster.providers.redact import Redactor, url_password
from sms_blaster.providers.rules import (
    ANOTHER_NUMBERS_ANSWER,
    BasicAuth,
    Rung,
    for_another_number,
    no_message_id,
    on_rung,
    rung_of,
)
from sms_blaster.validity import BOUNDS

DEFAULT_BASE_URL = "https://rest.nexmo.com"

THROTTLED = frozenset({"1", "10"})  # throughput exceeded; too many binds ("back off and retry")
TRANSIENT = frozenset({"5", "13"})  # internal error; communication failure (deprecated)
FATAL = frozenset({"4", "8", "9", "14", "32"})  # credentials, barred account, no credit, signature
# Every other non-zero status is permanent for that message (2, 3, 6, 7, 11, 12, 15, 22, 29, 33, …).

_WAIT_MS = re.compile(r"wait\s*\[\s*(\d+)\s*\]")


class VonageSms:
    """The Vonage SMS API adapter (pure: no I/O)."""

    name = ProviderName.VONAGE_SMS
    receipt_route = "/webhooks/dlr"

    __slots__ = ("_headers", "_prefix", "_url", "redactor")

    def __init__(
        self,
        api_key: str,
        api_secret: str,
        sender: str,
        base_url: str = DEFAULT_BASE_URL,
        *,
        callback_url: str | None = None,
        ttl_s: int | None = None,
    ) -> None:
        self._url = base_url.rstrip("/") + "/sms/json"
        auth = BasicAuth.of(api_key, api_secret)
        self._headers = {
            "Authorization": auth.header,
            "Content-Type": "application/x-www-form-urlencoded",
        }
        self.redactor = Redactor.of((api_secret, auth.token, url_password(callback_url)))
        callback = f"callback={quote_plus(callback_url)}&" if callback_url else ""
        ttl = f"{BOUNDS[self.name].as_sent(ttl_s)}&" if ttl_s is not None else ""
        self._prefix = f"{callback}{ttl}from={quote_plus(sender)}&to=".encode()

    def build_request(self, message: Message) -> HttpRequest:
        # `to` is digits and `client_ref` hex and digits: neither needs quoting.
        body = b"".join(
            (
                self._prefix,
                message.to.encode(),
                b"&client-ref=",
                message.client_ref.encode(),
                b"&type=unicode&text=" if message.encoding is Encoding.UCS2 else b"&text=",
                form_quoted(message.text),
            )
        )
        return HttpRequest(self._url, body, self._headers)

    def parse_response(
        self, status: int, headers: Mapping[str, str], body: bytes, to: str = ""
    ) -> SendResult:
        if 200 <= status < 300:
            return parse_body(body, to)
        return classify_http_status(status, headers)

    def cost(self, message: Message) -> float:
        return 1.0  # Vonage counts requests, not parts


# quote_plus for ASCII text as one table lookup a character: letters, digits and "_.-~" stay,
# a space is "+", every other character "%XX".
_ASCII_QUOTED = {
    code: "+" if char == " " else char if char.isalnum() or char in "_.-~" else f"%{code:02X}"
    for code, char in ((code, chr(code)) for code in range(128))
}


def form_quoted(text: str) -> bytes:
    """`text` as a form value (what `quote_plus` makes of it), UTF-8 bytes."""
    if text.isascii():
        return text.translate(_ASCII_QUOTED).encode()
    return quote_plus(text).encode()


def classify_http_status(status: int, headers: Mapping[str, str]) -> SendResult:
    """An answer other than 2xx, by the ladder."""
    wait_s = parse_retry_after(headers.get("Retry-After"))
    step = rung_of(status, wait_s)
    return on_rung(step, f"http_{status}", _WORDS.get(step, step.words), wait_s)


# The SMS API's words where they differ from the ladder's: a 402 is about the account too.
_WORDS = {
    Rung.PAYMENT: Rung.CREDENTIALS.words,
    Rung.NOT_FOUND: "no SMS API at this address; check --base-url",
}


# The common answer, one part accepted, as the API writes it (keys in its order, no spaces),
# read by one match: its id and price are plain ASCII strings without escapes. Anything else,
# however slightly different, goes to the full parser, which reads this one alike. Its `to` may
# be missing: the full parser checks no number then, and neither does the match (group 1 None).
_CHARS = rb"[\x20\x21\x23-\x5b\x5d-\x7e]*"  # inside a JSON string: printable ASCII, no escapes
_PLAIN, _KEPT = b'"' + _CHARS + b'"', b'"(' + _CHARS + b')"'
_ACCEPTED = re.compile(
    b"".join((
        rb'\{"message-count":"1","messages":\[\{(?:"to":', _KEPT, b",)?", b'"message-id":', _KEPT,
        b',"status":"0","remaining-balance":', _PLAIN, b',"message-price":', _KEPT,
        b',"network":', _PLAIN, b'(?:,"client-ref":', _PLAIN, rb")?\}\]\}",
    ))
)  # fmt: skip
_NO_PRICE = Decimal(0)  # what the full parser's sum starts from
_NO_ID = no_message_id("answer names no message id")


def parse_body(body: bytes, to: str = "") -> SendResult:
    """A 2xx answer (the API's is 200) to a request sent to `to`: every part accepted, or the
    status of the first part that was not."""
    accepted = _ACCEPTED.fullmatch(body)
    if accepted is None:
        return parse_any_body(body, to)
    answer_to, message_id, price = accepted.group(1, 2, 3)
    if (
        answer_to is not None
        and answer_to != to.encode()
        and for_another_number(answer_to.decode(), to)
    ):
        return ANOTHER_NUMBERS_ANSWER
    if not message_id:
        return _NO_ID
    part_price = _price(price.decode())
    ids = (message_id.decode(),)
    if part_price is None:
        return SendResult(Outcome.SENT, "0", "", ids, None)
    return SendResult(Outcome.SENT, "0", "", ids, _NO_PRICE + part_price)


def parse_any_body(body: bytes, to: str = "") -> SendResult:
    """`parse_body` for every answer: the JSON decoded, each part read."""
    try:
        parts = json.loads(body)["messages"]
        statuses = [str(part["status"]) for part in parts]
    except (ValueError, KeyError, TypeError, RecursionError):
        return no_message_id()
    if not statuses:
        return no_message_id("answer lists no parts")
    if any(for_another_number(part.get("to"), to) for part in parts):
        return ANOTHER_NUMBERS_ANSWER
    accepted = [part for part, status in zip(parts, statuses, strict=True) if status == "0"]
    ids = tuple(filter(None, map(_message_id, accepted)))
    price = _total_price(accepted)
    if len(accepted) == len(parts):
        return SendResult(Outcome.SENT, "0", "", ids, price) if ids else _NO_ID
    failed = next(part for part, status in zip(parts, statuses, strict=True) if status != "0")
    code = str(failed["status"])
    text = str(failed.get("error-text", ""))
    if accepted:
        # Some parts went out: sending again would repeat them, so this message is over.
        detail = f"{len(accepted)} of {len(parts)} parts accepted; part refused with {code}: {text}"
        return SendResult(Outcome.PERMANENT, "partial", detail, ids, price)
    if code in THROTTLED:
        match = _WAIT_MS.search(text)
        wait_s = int(match.group(1)) / 1000 if match else None
        return SendResult(Outcome.THROTTLED, code, text, wait_s=wait_s)
    if code in TRANSIENT:
        return SendResult(Outcome.TRANSIENT, code, text)
    if code in FATAL:
        return SendResult(Outcome.FATAL, code, text)
    return SendResult(Outcome.PERMANENT, code, text)


def _message_id(part: dict[str, object]) -> str:
    """A part's id as the API writes it (a string); "" when it names none (absent, null, a number
    or a list are not an id to correlate a receipt with)."""
    value = part.get("message-id")
    return value if isinstance(value, str) else ""


def _price(text: str) -> Decimal | None:
    """A part's price; None when it is no price (unreadable, NaN, infinite or negative): the
    record and the summary's cost must stay numbers."""
    try:
        price = Decimal(text)
    except InvalidOperation:
        return None
    return price if price.is_finite() and price >= 0 else None


def _total_price(parts: list[dict[str, object]]) -> Decimal | None:
    prices = [_price(str(part["message-price"])) for part in parts if "message-price" in part]
    if not prices or None in prices:
        return None
    return sum((p for p in prices if p is not None), Decimal(0))
