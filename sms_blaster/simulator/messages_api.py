"""The Vonage Messages API (v1, SMS channel) as the simulator answers it: `POST /v1/messages`.

A JSON body (`message_type` text, `channel` sms, `to`, `from`, `text`, optional `client_ref`,
`webhook_url`, `sms.encoding_type`, `ttl` in seconds) with `Authorization: Basic key:secret` or
`Bearer <JWT>`.
The simulator cannot check an RS256 signature without the application's public key, so it takes
any well-formed token whose header says RS256 and whose claims carry an `application_id` and an
`exp` still to come. Accepted: HTTP 202 `{"message_uuid": …}`. Refused: an RFC 7807 problem
document (`application/problem+json`) whose `type` ends in a fragment naming the error, with the
answer's `X-Request-Id` as its `instance`: every answer carries a fresh one. No I/O: the clock
and fresh uuids are all it takes from outside.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import random
import re
import time
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Final

from sms_blaster.encoding import analyse, count_segments
from sms_blaster.models import Encoding
from sms_blaster.providers.names import ProviderName
from sms_blaster.receiver.signatures import sign_messages_webhook
from sms_blaster.simulator.answers import (
    JSON,
    NETWORK,
    Api,
    Refusal,
    SendRequest,
    Tally,
    basic_credentials,
    dumps,
    is_http_url,
)
from sms_blaster.simulator.callbacks import (
    AcceptedMessage,
    CallbackRequest,
    CallbackSettings,
    Decision,
    PlannedReceipt,
    ReceiptStyle,
)
from sms_blaster.simulator.config import SimulatorConfig
from sms_blaster.simulator.dialect import Accepted, Dialect, Headers, Incoming, Till
from sms_blaster.validity import BOUNDS

MESSAGES_PATH: Final = "/v1/messages"
# The API reference and the SDKs say 1000, the OpenAPI spec 3200: the stricter one, so that what
# passes here passes there.
TEXT_MAX_CHARS: Final = 1000
CLIENT_REF_MAX_CHARS: Final = 100
PROBLEM: Final = "application/problem+json"
ERRORS: Final = "https://developer.vonage.com/api-errors"

# Error codes of a rejected SMS, with the texts of the error table.
MESSAGES_ERRORS: Final = {
    1330: "Delivery failed",
    1190: "Absent Subscriber Permanent",
    1250: "Unroutable",
    1260: "Destination unreachable",
    1280: "Blocked by carrier",
}
_EXPIRED_TEXT: Final = "TTL activated / expired"
_TTL: Final = BOUNDS[ProviderName.VONAGE_MESSAGES]

MESSAGES_MAGIC_ERROR: Final = 1330
# A message whose ttl ran out before delivery is rejected with this code.
MESSAGES_EXPIRED_ERROR: Final = 1360
# The api_key claim of a status webhook for a send made with an application token.
APPLICATION_API_KEY: Final = "simulator"

_TO = re.compile(r"\d{7,15}")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
_ENCODINGS: Final = {"text": Encoding.GSM7, "unicode": Encoding.UCS2, "auto": None}


def problem(
    status: int,
    kind: str,
    title: str,
    detail: str,
    *,
    tally: Tally = Tally.REJECTED,
    headers: tuple[tuple[str, str], ...] = (),
    **extra: Any,
) -> Refusal:
    """An RFC 7807 refusal; the server adds `instance` when it answers."""
    document = {"type": kind, "title": title, "detail": detail, **extra}
    return Refusal(dumps(document), tally, status, headers, PROBLEM)


def with_instance(body: bytes, request_id: str) -> bytes:
    """A problem document with its `instance`: the id of the answer that carries it."""
    return body[:-1] + b',"instance":"' + request_id.encode() + b'"}'


def unauthorized(detail: str) -> Refusal:
    """HTTP 401, spelled as Vonage spells it (`unathorized` sic)."""
    return problem(
        401, f"{ERRORS}/#unathorized", "You did not provide correct credentials.", detail
    )


def echoed_credentials(text: str) -> Refusal:
    """HTTP 401 quoting the request's credentials in both its title and its detail."""
    return problem(401, f"{ERRORS}/#unathorized", f"Invalid credentials: {text}", text)


def invalid_params(name: str, reason: str) -> Refusal:
    """HTTP 422 #1150 naming the parameter, like Vonage's own fixture."""
    return problem(
        422,
        f"{ERRORS}/messages#1150",
        "Invalid params",
        "The value of one or more parameters is invalid.",
        invalid_parameters=[{"name": name, "reason": reason}],
    )


def rate_limited(retry_after_s: int | None) -> Refusal:
    """HTTP 429 with Retry-After in whole seconds, as Vonage sends it (None: without)."""
    return problem(
        429,
        f"{ERRORS}/messages-olympus#1010",
        "Rate Limit Hit",
        "Please wait, then retry your request",
        tally=Tally.THROTTLED,
        headers=() if retry_after_s is None else (("Retry-After", str(retry_after_s)),),
    )


def throttled(wait_s: float | None) -> Refusal:
    """The throttle's 429: Retry-After rounded up to whole seconds, at least 1 (None: none)."""
    return rate_limited(None if wait_s is None else max(1, math.ceil(wait_s)))


ILLEGAL_NUMBER: Final = problem(
    422,
    f"{ERRORS}/messages#1240",
    "Illegal Number",
    "The recipient has opted out (STOP) or the number is barred.",
)
INVALID_RECIPIENT: Final = invalid_params("to", "invalid value")
BAD_CREDENTIALS: Final = unauthorized("Invalid credentials")
LOW_BALANCE: Final = problem(
    402,
    f"{ERRORS}/#low-balance",
    "Low balance",
    "This request could not be performed due to your account balance being low.",
)
# Refused before processing and says so with Retry-After: safe to resend.
UNAVAILABLE: Final = problem(
    503,
    f"{ERRORS}/#service-unavailable",
    "Service Unavailable",
    "Please wait, then retry your request",
    tally=Tally.HTTP_503,
    headers=(("Retry-After", "1"),),
)
# No Retry-After: a client cannot tell whether the message was taken before the error.
INTERNAL_ERROR: Final = problem(
    500, f"{ERRORS}/messages#1030", "Internal Error", "An internal error occurred."
)
TOO_MANY: Final = problem(
    429,
    f"{ERRORS}/messages-olympus#1010",
    "Rate Limit Hit",
    "Too many concurrent requests",
    headers=(("Retry-After", "1"),),
)
INVALID_JSON: Final = problem(
    422, f"{ERRORS}#invalid-json", "Invalid JSON", "The request body did not contain valid JSON"
)
UNSUPPORTED_CHANNEL: Final = problem(
    422, f"{ERRORS}/messages#1100", "Unsupported channel", "The simulator sends SMS only."
)
INVALID_MESSAGE_TYPE: Final = problem(
    422, f"{ERRORS}/messages#1140", "Invalid message type", "The SMS channel sends text only."
)
INVALID_TTL: Final = problem(
    422,
    f"{ERRORS}/messages#1130",
    "Invalid TTL",
    "The value of ttl in your request was invalid.",
    invalid_parameters=[
        {"name": "ttl", "reason": f"must be whole seconds from {_TTL.min_s} to {_TTL.max_s}"}
    ],
)

MAGIC_ALWAYS: Final = {
    "9990": ILLEGAL_NUMBER,
    "9991": INVALID_RECIPIENT,
    "9992": BAD_CREDENTIALS,
    "9993": LOW_BALANCE,
}
MAGIC_FIRST: Final = {"9994": rate_limited(1), "9995": UNAVAILABLE, "9998": INTERNAL_ERROR}


def accepted_body(message_uuid: str) -> bytes:
    """The 202 answer."""
    return b'{"message_uuid":"' + message_uuid.encode() + b'"}'


# --- credentials --------------------------------------------------------------------------------


def check_application_jwt(
    token: str, now_s: float, application_id: str | None = None
) -> tuple[str, str]:
    """`(application_id, "")` for a well-formed, unexpired RS256 token, else `("", why not)`.

    The signature is not checked: that needs the application's public key. With
    `application_id` given, the token must be for that application.
    """
    segments = token.split(".")
    if len(segments) != 3 or not all(_BASE64URL.fullmatch(s) for s in segments):
        return "", "Invalid Token: not a JWT"
    header, claims = _json_object(segments[0]), _json_object(segments[1])
    if header is None or claims is None:
        return "", "Invalid Token: not a JWT"
    if header.get("alg") != "RS256":
        return "", "Invalid Token: alg is not RS256"
    claimed = claims.get("application_id")
    if not isinstance(claimed, str) or not claimed:
        return "", "Invalid Token: no application_id"
    if application_id is not None and claimed != application_id:
        return "", "Invalid Token: unknown application_id"
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return "", "Invalid Token: no exp"
    if exp <= now_s:
        return "", "Invalid Token: expired"
    return claimed, ""


def _json_object(segment: str) -> dict[str, Any] | None:
    try:
        value = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (binascii.Error, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _credentials(
    authorization: str, config: SimulatorConfig, now_s: float
) -> tuple[dict[str, str], Refusal | None]:
    """Who is sending (`api_key` or `application_id`), or the 401 that refuses them."""
    if not authorization:
        return {}, unauthorized("Request header 'Authorization' missing")
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() == "bearer":
        claimed, why_not = check_application_jwt(credentials.strip(), now_s, config.application_id)
        return {"application_id": claimed}, (unauthorized(why_not) if why_not else None)
    key, secret = basic_credentials(authorization)
    if not key or not secret:
        return {}, unauthorized("Use Basic key:secret or a Bearer application token")
    if (config.api_key is not None and key != config.api_key) or (
        config.api_secret is not None and secret != config.api_secret
    ):
        return {}, BAD_CREDENTIALS
    return {"api_key": key}, None


# --- the request --------------------------------------------------------------------------------


def read(incoming: Incoming, config: SimulatorConfig) -> SendRequest:
    """The request's sender, recipient and segments, and its first problem of each kind.

    `fields` (for accepting it) has `to`, `from`, `text`, `type` (text or unicode), `api_key` or
    `application_id`, and `client_ref` and `webhook_url` when given.
    """
    who, auth_problem = _credentials(incoming.authorization, config, time.time())
    key = who.get("api_key") or who.get("application_id") or ""
    try:
        document = json.loads(incoming.body)
    except (ValueError, RecursionError):
        document = None
    if not isinstance(document, dict):
        return SendRequest("", key, 1, auth_problem, INVALID_JSON)
    to = document.get("to")
    text = document.get("text")
    sms = document.get("sms")
    encoding_type = sms.get("encoding_type", "auto") if isinstance(sms, dict) else "auto"
    segments = 1
    encoding = Encoding.GSM7
    if isinstance(text, str) and text and encoding_type in _ENCODINGS:
        encoding = _ENCODINGS[encoding_type] or analyse(text).encoding
        segments = count_segments(text, encoding)
    fields: dict[str, Any] = {"to": to, "from": document.get("from"), "text": text, **who}
    fields["type"] = "unicode" if encoding is Encoding.UCS2 else "text"
    for name in ("client_ref", "webhook_url", "ttl"):
        if name in document:
            fields[name] = document[name]
    problem_found = _parameters_problem(document, fields, sms, encoding_type)
    return SendRequest(
        to if isinstance(to, str) else "",
        key,
        segments,
        auth_problem,
        problem_found,
        None if problem_found else fields,
    )


def _parameters_problem(
    document: dict[str, Any], fields: dict[str, Any], sms: object, encoding_type: object
) -> Refusal | None:
    if document.get("channel") != "sms":
        return UNSUPPORTED_CHANNEL
    if document.get("message_type") != "text":
        return INVALID_MESSAGE_TYPE
    for name in ("to", "from", "text"):
        value = fields[name]
        if not isinstance(value, str) or not value:
            return invalid_params(name, "is required and must be a string")
    if _TO.fullmatch(fields["to"]) is None:
        return invalid_params("to", "must be 7 to 15 digits, without '+' or 00")
    if len(fields["text"]) > TEXT_MAX_CHARS:
        return invalid_params("text", f"must be at most {TEXT_MAX_CHARS} characters")
    client_ref = fields.get("client_ref")
    if client_ref is not None and (
        not isinstance(client_ref, str) or len(client_ref) > CLIENT_REF_MAX_CHARS
    ):
        return invalid_params("client_ref", f"must be at most {CLIENT_REF_MAX_CHARS} characters")
    webhook_url = fields.get("webhook_url")
    if webhook_url is not None and (
        not isinstance(webhook_url, str) or not is_http_url(webhook_url)
    ):
        return invalid_params("webhook_url", "must be an http:// or https:// URL")
    if sms is not None and not isinstance(sms, dict):
        return invalid_params("sms", "must be an object")
    if encoding_type not in _ENCODINGS:
        return invalid_params("sms.encoding_type", "must be text, unicode or auto")
    ttl = fields.get("ttl")
    if "ttl" in fields and (
        isinstance(ttl, bool) or not isinstance(ttl, int) or not _TTL.min_s <= ttl <= _TTL.max_s
    ):
        return INVALID_TTL
    return None


# --- as the server runs it ----------------------------------------------------------------------


def accept(send: SendRequest, till: Till, config: SimulatorConfig) -> Accepted:
    """Charge a message: one uuid, one price per part; its webhooks to its `webhook_url`, else
    to the configured `callback_url`."""
    fields = send.fields or {}
    message_uuid = str(uuid.uuid4())
    till.charge(send.segments)
    client_ref = fields.get("client_ref")
    kept: dict[str, Any] = {
        "id": message_uuid,
        "from": fields["from"],
        "text": fields["text"],
        "type": fields["type"],
        "client_ref": client_ref,
    }
    ttl_s = int(fields["ttl"]) if "ttl" in fields else None  # checked: whole seconds
    if ttl_s is not None:
        kept["ttl_s"] = ttl_s
    body = accepted_body(message_uuid)
    url = fields.get("webhook_url") or config.callback_url
    if url is None:
        return Accepted(202, body, None, kept)
    message = AcceptedMessage(
        to=send.to,
        sender=fields["from"],
        api_key=fields.get("api_key") or config.api_key or "",
        network=NETWORK,
        price=till.price,
        message_ids=(message_uuid,),
        style=RECEIPTS,
        client_ref=client_ref,
        url=url,
        parts=send.segments,
        application_id=fields.get("application_id"),
        ttl_s=ttl_s,
    )
    return Accepted(202, body, message, kept)


def answer(body: bytes, content_type: str) -> tuple[bytes, Headers]:
    """Every answer carries a fresh `X-Request-Id`; a problem document names it its `instance`."""
    request_id = str(uuid.uuid4())
    if content_type == PROBLEM:
        body = with_instance(body, request_id)
    return body, (("X-Request-Id", request_id),)


# --- receipts: one status webhook per message ----------------------------------------------------


def _receipt_plan(
    message: AcceptedMessage, decision: Decision, rng: random.Random, intermediate_rate: float
) -> list[PlannedReceipt]:
    plan = []
    if intermediate_rate and rng.random() < intermediate_rate:
        plan.append(PlannedReceipt(0, "submitted"))
    # An expired message is rejected too, with its own error code.
    plan.append(PlannedReceipt(0, "delivered" if decision.delivered else "rejected"))
    return plan


def status_fields(
    message: AcceptedMessage, decision: Decision, planned: PlannedReceipt, now_s: float
) -> dict[str, Any]:
    """A status webhook: one per message, whatever its number of parts."""
    status = planned.status
    parts = message.segments
    fields: dict[str, Any] = {
        "message_uuid": message.message_ids[0],
        "to": message.to,
        "from": message.sender,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now_s)),
        "status": status,
        "channel": "sms",
    }
    if message.client_ref is not None:
        fields["client_ref"] = message.client_ref
    total = Decimal(message.price) * parts
    fields["usage"] = {"currency": "EUR", "price": f"{total.normalize():f}"}
    fields["destination"] = {"network_code": message.network}
    if parts > 1:
        fields["sms"] = {"count_total": str(parts)}
    if status == "rejected":
        code = decision.err_code
        fields["error"] = {
            "type": f"https://developer.vonage.com/api-errors/messages#{code}",
            "title": str(code),
            "detail": _EXPIRED_TEXT
            if decision.expired
            else MESSAGES_ERRORS.get(code, "Delivery failed"),
            "instance": str(uuid.uuid4()),
        }
    return fields


def _receipt_request(
    message: AcceptedMessage,
    url: str,
    fields: Mapping[str, Any],
    settings: CallbackSettings,
    now_s: float,
) -> CallbackRequest:
    """A JSON POST, signed with an HS256 JWT in `Authorization: Bearer` when a secret is set."""
    body = json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode()
    secret = settings.signature_secret
    if secret is None:
        return CallbackRequest("POST", url, body, JSON)
    api_key = message.api_key or APPLICATION_API_KEY
    authorization = sign_messages_webhook(
        body, secret, now_s=now_s, api_key=api_key, application_id=message.application_id
    )
    return CallbackRequest("POST", url, body, JSON, (("Authorization", authorization),))


RECEIPTS: Final = ReceiptStyle(
    MESSAGES_MAGIC_ERROR,
    tuple(MESSAGES_ERRORS),
    _receipt_plan,
    status_fields,
    _receipt_request,
    expired_code=MESSAGES_EXPIRED_ERROR,
)
DIALECT: Final = Dialect(
    Api.VONAGE_MESSAGES,
    MESSAGES_PATH,
    read,
    accept,
    answer,
    counts_segments=False,
    too_many=TOO_MANY,
    echo=echoed_credentials,
    throttled=throttled,
    rate_limited=rate_limited,
    magic_always=MAGIC_ALWAYS,
    magic_first=MAGIC_FIRST,
    unavailable=UNAVAILABLE,
)
