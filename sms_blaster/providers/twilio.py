"""Twilio Programmable Messaging: `POST {base}/2010-04-01/Accounts/{sid}/Messages.json`.

A form body, Basic auth with the account SID and auth token, HTTP 201 with the message's `sid`.
Errors are JSON `{"code", "message", "more_info", "status"}` carrying Twilio's error code. Twilio
echoes no reference of ours in its status callbacks, so the client ref rides in the StatusCallback
URL's query (`client_ref=<ref>`), where the receiver reads it. Twilio counts segments against its
limits, so one send costs its segments.

Answers are classified in this order, first match wins (the HTTP rows are the ladder every provider
shares, in `sms_blaster.providers.rules`; Twilio's codes come first where they say more):

| answer                                                    | outcome                     |
|-----------------------------------------------------------|-----------------------------|
| 2xx with a `sid`, and no `to` but the request's           | sent                        |
| any other 2xx (unreadable, no `sid`, another `to`)        | ambiguous                   |
| 3xx                                                       | fatal: check --base-url     |
| HTTP 429; codes 20429 (too many requests), 21611 (queue)  | throttled, with Retry-After |
| a code in `FATAL`; HTTP 401, 402, 403                     | fatal                       |
| HTTP 404, 405                                             | fatal: check --base-url     |
| HTTP 503 with Retry-After                                 | transient                   |
| any other 5xx                                             | ambiguous                   |
| any other 4xx (21211, 21408, 21606, 21610, 21612, 21614…) | permanent                   |

Fatal codes are the ones where every later message would fail the same way: the credentials, the
account, the sender or the Messaging Service. Codes that depend on the recipient stay permanent,
even those naming the sender: 21606 ("not a valid message-capable Twilio phone number *for this
destination*") and 21612 (no route from this sender to this recipient) can fail for one country and
work for the next; a campaign where they hit every row is what --max-error-rate stops.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from urllib.parse import quote, quote_plus

from sms_blaster.models import Message, Outcome, SendResult
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

DEFAULT_BASE_URL = "https://api.twilio.com"

_CHECK_CREDENTIALS = "check TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN"

THROTTLED = frozenset({"20429", "21611"})  # too many requests; the sender's queue is full
FATAL = {  # code -> how to fix it
    "20003": _CHECK_CREDENTIALS,  # authentication failed
    "20005": "the Twilio account is not active",
    "21212": "check --from: not a valid phone number, short code or alphanumeric sender",
    "21603": "give --from or --messaging-service-sid",  # From or MessagingServiceSid missing
    "21660": "check --from: the number does not belong to this account",
    "21705": "check --messaging-service-sid",  # invalid Messaging Service
}
# Every other 4xx code is permanent for that message: 21211 invalid To, 21408 region not enabled,
# 21606 sender cannot reach this destination, 21610 recipient unsubscribed (STOP), 21612 no route
# to the recipient, 21614 not a mobile number, 21617 body too long, …


class Twilio:
    """The Twilio Messages adapter (pure: no I/O)."""

    name = ProviderName.TWILIO
    receipt_route = "/webhooks/twilio/status"

    __slots__ = ("_callback_head", "_callback_tail", "_headers", "_middle", "_url", "redactor")

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        sender: str | None,
        base_url: str = DEFAULT_BASE_URL,
        *,
        messaging_service_sid: str | None = None,
        status_callback: str | None = None,
        ttl_s: int | None = None,
    ) -> None:
        if not sender and not messaging_service_sid:
            raise ValueError("Twilio needs a sender: give --from or --messaging-service-sid")
        account = quote(account_sid, safe="")
        self._url = f"{base_url.rstrip('/')}/2010-04-01/Accounts/{account}/Messages.json"
        auth = BasicAuth.of(account_sid, auth_token)
        self._headers = {
            "Authorization": auth.header,
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
        }
        self.redactor = Redactor.of((auth_token, auth.token, url_password(status_callback)))
        # Everything but the recipient, the text and the client ref is encoded once, here.
        fields = []
        if sender:
            fields.append(f"&From={quote_plus(_sender(sender))}")
        if messaging_service_sid:
            fields.append(f"&MessagingServiceSid={quote_plus(messaging_service_sid)}")
        if ttl_s is not None:
            fields.append(f"&{BOUNDS[self.name].as_sent(ttl_s)}")
        fields.append("&Body=")
        self._middle = "".join(fields).encode()
        self._callback_head = b""
        self._callback_tail = b""
        if status_callback:
            head, tail = _callback_parts(status_callback)
            self._callback_head = f"&StatusCallback={quote_plus(head)}".encode()
            self._callback_tail = quote_plus(tail).encode()

    def build_request(self, message: Message) -> HttpRequest:
        # `to` is digits and `client_ref` hex, digits and '-': neither needs quoting, in the form
        # or in the callback URL inside it.
        parts = [b"To=%2B", message.to.encode(), self._middle, quote_plus(message.text).encode()]
        if self._callback_head:
            parts += (self._callback_head, message.client_ref.encode(), self._callback_tail)
        return HttpRequest(self._url, b"".join(parts), self._headers)

    def parse_response(
        self, status: int, headers: Mapping[str, str], body: bytes, to: str = ""
    ) -> SendResult:
        if 200 <= status < 300:
            return parse_created(body, to)
        return classify_error(status, headers, body)

    def cost(self, message: Message) -> float:
        return float(message.segments)  # Twilio's limits count segments


def _sender(sender: str) -> str:
    """A phone number given as digits gets its '+'; anything else (alphanumeric) goes as given."""
    return f"+{sender}" if sender.isascii() and sender.isdigit() else sender


def _callback_parts(url: str) -> tuple[str, str]:
    """The callback URL split around where a message's client ref goes: `client_ref=<here>`."""
    base, hash_mark, fragment = url.partition("#")
    if "?" not in base:
        separator = "?"
    elif base.endswith(("?", "&")):
        separator = ""
    else:
        separator = "&"
    return f"{base}{separator}client_ref=", hash_mark + fragment


def parse_created(body: bytes, to: str = "") -> SendResult:
    """A 2xx answer to a request sent to `to`: created when it names the message's `sid` (and
    no other number)."""
    try:
        answer = json.loads(body)
        sid = answer["sid"]
    except (ValueError, KeyError, TypeError, RecursionError):
        return no_message_id()
    if for_another_number(answer.get("to"), to):
        return ANOTHER_NUMBERS_ANSWER
    if not isinstance(sid, str) or not sid:
        return no_message_id("answer names no message sid")
    return SendResult(Outcome.SENT, "", "", (sid,), _price(answer.get("price")))


def _price(value: object) -> Decimal | None:
    # Twilio gives the price as a negative string ("-0.00750"), and usually null at creation.
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    try:
        price = Decimal(str(value))
    except InvalidOperation:
        return None
    return abs(price) if price.is_finite() else None


def classify_error(status: int, headers: Mapping[str, str], body: bytes) -> SendResult:
    """An answer other than 2xx, by the ladder and Twilio's code (see the module docstring)."""
    twilio_code, text = _error(body)
    code = twilio_code or f"http_{status}"
    wait_s = parse_retry_after(headers.get("Retry-After"))
    step = rung_of(status, wait_s)
    if step is Rung.REDIRECTED:  # whatever the body says, the address is wrong
        return on_rung(step, code, step.words, wait_s)
    if twilio_code in THROTTLED:
        step = Rung.THROTTLED
    elif step is not Rung.THROTTLED and twilio_code in FATAL:
        return SendResult(Outcome.FATAL, code, _join(text, FATAL[twilio_code]))
    hint = _HINTS.get(step)
    return on_rung(step, code, _join(text, hint) if hint else text or step.words, wait_s)


# What to do about an answer on these rungs, after Twilio's own words; on the others Twilio's
# words replace the ladder's.
_HINTS = {
    Rung.CREDENTIALS: _CHECK_CREDENTIALS,
    Rung.PAYMENT: "check the Twilio account's balance",
    Rung.NOT_FOUND: "no Twilio Messages API at this address; check --base-url and the account SID",
    Rung.SERVER_ERROR: "it may have been sent",
}


def _error(body: bytes) -> tuple[str | None, str]:
    """Twilio's error code and message, when the body is Twilio's error JSON."""
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):
        return None, ""
    if not isinstance(answer, dict):
        return None, ""
    code, message = answer.get("code"), answer.get("message")
    if isinstance(code, bool) or not isinstance(code, int | str) or code == "":
        code = None
    return (None if code is None else str(code)), (message if isinstance(message, str) else "")


def _join(text: str, hint: str) -> str:
    return f"{text}; {hint}" if text else hint
