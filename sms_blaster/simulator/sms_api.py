"""The Vonage SMS API as the simulator answers it: `POST /sms/json`.

A form or JSON body (`from`, `to`, `text`, optional `type` text or unicode, `client-ref`,
`callback`, `ttl` in milliseconds) with credentials in a Basic header or in `api_key` and
`api_secret` (body or query).
Every business answer is HTTP 200 with `{"message-count": "N", "messages": [...]}` and numbers as
strings; an accepted message gets one element per SMS part, each with its own message id and the
balance left after it. A refusal is one element with a non-zero `status` and an `error-text`.
Pure: no I/O.
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import parse_qsl

from sms_blaster.encoding import GSM7_ALL, count_segments
from sms_blaster.models import Encoding
from sms_blaster.providers.names import ProviderName
from sms_blaster.receiver.signatures import sign_vonage_sms
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
    callback_request,
)
from sms_blaster.simulator.config import SimulatorConfig
from sms_blaster.simulator.dialect import Accepted, Dialect, Incoming, Till, plain_answer
from sms_blaster.validity import BOUNDS

SMS_PATH: Final = "/sms/json"
MAGIC_THROTTLE_WAIT_MS: Final = 50
MAGIC_FAILED_ERR_CODE: Final = 3  # Absent Subscriber - Permanent
# An expired message: the handset stayed out of reach (Absent Subscriber - Temporary) while the
# message waited in the retry scheme until its ttl ran out.
EXPIRED_ERR_CODE: Final = 2
# Non-zero err-codes of the Vonage DLR table that a random failure picks from.
FAILED_ERR_CODES: Final = (2, 3, 4, 6, 8, 11, 12, 99)
INTERMEDIATE_STATUSES: Final = ("accepted", "buffered")
CALLBACK_MAX_CHARS: Final = 100  # the `callback` parameter

_TO = re.compile(r"\d{7,15}")
_TYPES: Final = {"text": Encoding.GSM7, "unicode": Encoding.UCS2}


def error_body(status: str, text: str) -> bytes:
    """The body of a refused message: one element with a status and an error text."""
    element = {"status": status, "error-text": text}
    return dumps({"message-count": "1", "messages": [element]})


def throttle_body(wait_ms: int | None) -> bytes:
    """The status-1 answer, with the wait in whole milliseconds that clients parse (or none)."""
    if wait_ms is None:
        return error_body("1", "Throughput Rate Exceeded - please wait and retry")
    return error_body("1", f"Throughput Rate Exceeded - please wait [ {wait_ms} ] and retry")


def success_body(
    to: str, message_ids: list[str], balances: list[str], price: str, client_ref: str | None
) -> bytes:
    """The status-0 answer: one element per part, each with its own id and remaining balance."""
    # Formatted by hand: this runs once per accepted request, and `to` is validated digits.
    ref = "" if client_ref is None else ',"client-ref":' + json.dumps(client_ref)
    elements = ",".join(
        f'{{"to":"{to}","message-id":"{message_id}","status":"0",'
        f'"remaining-balance":"{balance}","message-price":"{price}","network":"{NETWORK}"{ref}}}'
        for message_id, balance in zip(message_ids, balances, strict=True)
    )
    return f'{{"message-count":"{len(message_ids)}","messages":[{elements}]}}'.encode()


def wait_ms(wait_s: float) -> int:
    """The wait a throttled client is told: whole milliseconds, rounded up, at least 1."""
    return max(1, math.ceil(wait_s * 1000))


def message_id(number: int) -> str:
    """A Vonage-style message id: 16 uppercase hex digits, e.g. `0A0000001234ABCD`."""
    return f"0A{number & 0xFFFF_FFFF_FFFF_FF:014X}"


def _rejected(status: str, text: str) -> Refusal:
    return Refusal(error_body(status, text))


def _throttled(wait_s: float | None) -> Refusal:
    return Refusal(throttle_body(None if wait_s is None else wait_ms(wait_s)), Tally.THROTTLED)


def _rate_limited(retry_after_s: int) -> Refusal:
    return Refusal(
        dumps({"title": "Too Many Requests", "detail": "throughput rate exceeded"}),
        Tally.THROTTLED,
        429,
        (("Retry-After", str(retry_after_s)),),
    )


_MISSING: Final = {
    name: _rejected("2", f"Missing {name}" if name.startswith("api_") else f"Missing {name} param")
    for name in ("api_key", "api_secret", "from", "to", "text")
}
_BAD_CREDENTIALS: Final = _rejected("4", "Bad Credentials")
_INVALID_TO: Final = _rejected("3", "Invalid to address")
_INVALID_TYPE: Final = _rejected("3", "Invalid type param")
_INVALID_CALLBACK: Final = _rejected("3", "Invalid callback param")
# Status 16 "Invalid TTL" is no longer used: a bad ttl is one more invalid parameter.
_INVALID_TTL: Final = _rejected("3", "Invalid ttl param")
_TTL_MS: Final = BOUNDS[ProviderName.VONAGE_SMS]
# A refusal before processing says so with Retry-After, which is what makes it safe to resend.
_UNAVAILABLE: Final = Refusal(
    dumps({"title": "Service Unavailable", "status": 503}),
    Tally.HTTP_503,
    503,
    (("Retry-After", "1"),),
)
_TOO_MANY: Final = Refusal(
    dumps({"title": "Too Many Requests", "detail": "too many concurrent requests"}),
    http_status=429,
    headers=(("Retry-After", "1"),),
)


def read(incoming: Incoming, config: SimulatorConfig) -> SendRequest:
    """A send request, read from its parameters (form or JSON body and query, merged).

    With `api_key` or `api_secret` configured, other credentials are bad ones.
    """
    params = _params(incoming)
    key, secret = _credentials(params, incoming.authorization)
    text = params.get("text", "")
    kind = params.get("type") or "text"
    encoding = _TYPES.get(kind)
    segments = count_segments(text, encoding) if text and encoding is not None else 1
    problem = _parameters_problem(params, kind)
    return SendRequest(
        params.get("to", ""),
        key,
        segments,
        _credentials_problem(key, secret, config.api_key, config.api_secret),
        problem,
        params if problem is None else None,
        kind == "text" and problem is None and not GSM7_ALL.issuperset(text),
    )


def _credentials(params: Mapping[str, str], authorization: str) -> tuple[str, str]:
    if authorization:
        return basic_credentials(authorization)
    return params.get("api_key", ""), params.get("api_secret", "")


def _credentials_problem(
    key: str, secret: str, api_key: str | None, api_secret: str | None
) -> Refusal | None:
    if not key:
        return _MISSING["api_key"]
    if not secret:
        return _MISSING["api_secret"]
    if (api_key is not None and key != api_key) or (
        api_secret is not None and secret != api_secret
    ):
        return _BAD_CREDENTIALS
    return None


def _parameters_problem(params: Mapping[str, str], kind: str) -> Refusal | None:
    for name in ("from", "to", "text"):
        if not params.get(name):
            return _MISSING[name]
    if _TO.fullmatch(params["to"]) is None:
        return _INVALID_TO
    if kind not in _TYPES:
        return _INVALID_TYPE
    callback = params.get("callback")
    if callback is not None and (len(callback) > CALLBACK_MAX_CHARS or not is_http_url(callback)):
        return _INVALID_CALLBACK
    ttl = params.get("ttl")
    if ttl is not None and not (
        ttl.isascii()
        and ttl.isdigit()
        and _TTL_MS.value(_TTL_MS.min_s) <= int(ttl) <= _TTL_MS.value(_TTL_MS.max_s)
    ):
        return _INVALID_TTL
    return None


def _params(incoming: Incoming) -> dict[str, str]:
    """Form or JSON body and query, merged: a body parameter wins over the query's."""
    if incoming.content_type == JSON:
        params = _json_params(incoming.body)
    else:
        # One plain dict for form and JSON alike; request.post() measured no faster.
        params = dict(parse_qsl(incoming.body.decode("utf-8", "replace"), keep_blank_values=True))
    for name, value in incoming.query.items():
        params.setdefault(name, value)
    return params


def _json_params(body: bytes) -> dict[str, str]:
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): v if isinstance(v, str) else str(v) for k, v in data.items() if v is not None}


def accept(send: SendRequest, till: Till, config: SimulatorConfig) -> Accepted:
    """Charge a message: one id and one price per part; receipts to its `callback`, else to the
    configured `callback_url`."""
    params = send.fields or {}
    to, text, kind = params["to"], params["text"], params.get("type") or "text"
    client_ref = params.get("client-ref")
    ids = [message_id(number) for number in till.serials(send.segments)]
    balances = till.charge(send.segments)
    kept: dict[str, Any] = {
        "id": ids[0],
        "from": params["from"],
        "text": text,
        "type": kind,
        "client_ref": client_ref,
    }
    ttl_s = int(params["ttl"]) / 1000 if "ttl" in params else None
    if ttl_s is not None:
        kept["ttl_s"] = ttl_s
    body = success_body(to, ids, balances, till.price, client_ref)
    url = params.get("callback") or config.callback_url
    if url is None:
        return Accepted(200, body, None, kept)
    message = AcceptedMessage(
        to=to,
        sender=params["from"],
        api_key=send.key,
        network=NETWORK,
        price=till.price,
        message_ids=tuple(ids),
        style=RECEIPTS,
        client_ref=client_ref,
        url=url,
        ttl_s=ttl_s,
    )
    return Accepted(200, body, message, kept)


# --- receipts: one DLR per part -----------------------------------------------------------------


def plan_receipts(
    message: AcceptedMessage, decision: Decision, rng: random.Random, intermediate_rate: float
) -> list[PlannedReceipt]:
    """Every DLR of a message, part by part: an optional intermediate one, then the final."""
    plan = []
    for part in range(message.segments):
        if intermediate_rate and rng.random() < intermediate_rate:
            plan.append(PlannedReceipt(part, rng.choice(INTERMEDIATE_STATUSES)))
        plan.append(PlannedReceipt(part, decision.final_status(part)))
    return plan


def dlr_fields(
    message: AcceptedMessage, decision: Decision, planned: PlannedReceipt, now_s: float
) -> dict[str, Any]:
    """The fields of a delivery receipt (DLR) for one part, all strings."""
    part, status = planned.part, planned.status
    now = time.gmtime(now_s)
    err_code = decision.err_code if status in ("failed", "expired") else 0
    fields = {
        "msisdn": message.to,
        "to": message.sender,
        "network-code": message.network,
        "messageId": message.message_ids[part],
        "price": message.price,
        "status": status,
        "scts": time.strftime("%y%m%d%H%M", now),
        "err-code": str(err_code),
        "api-key": message.api_key,
        "message-timestamp": time.strftime("%Y-%m-%d %H:%M:%S", now),
    }
    if message.client_ref is not None:
        fields["client-ref"] = message.client_ref
    return fields


def _receipt_request(
    message: AcceptedMessage,
    url: str,
    fields: Mapping[str, Any],
    settings: CallbackSettings,
    now_s: float,
) -> CallbackRequest:
    """JSON, form or GET as configured, signed with `sig` when a secret is set."""
    secret = settings.signature_secret
    if secret is not None:
        fields = sign_vonage_sms(fields, secret, settings.signature_method, now_s=now_s)
    return callback_request(url, dict(fields), settings.callback_format)


RECEIPTS: Final = ReceiptStyle(
    MAGIC_FAILED_ERR_CODE,
    FAILED_ERR_CODES,
    plan_receipts,
    dlr_fields,
    _receipt_request,
    expired_code=EXPIRED_ERR_CODE,
)
DIALECT: Final = Dialect(
    Api.VONAGE_SMS,
    SMS_PATH,
    read,
    accept,
    plain_answer,
    counts_segments=False,
    too_many=_TOO_MANY,
    echo=lambda text: _rejected("4", f"Bad Credentials: {text}"),
    throttled=_throttled,
    rate_limited=_rate_limited,
    magic_always={
        "9990": _rejected("7", "Number barred."),
        "9991": _rejected("6", "Invalid Message"),
        "9992": _BAD_CREDENTIALS,
        "9993": _rejected("9", "Quota Exceeded - rejected"),
    },
    magic_first={
        "9994": Refusal(throttle_body(MAGIC_THROTTLE_WAIT_MS), Tally.THROTTLED),
        "9995": _UNAVAILABLE,
        "9998": _rejected("5", "Server Error"),
    },
    unavailable=_UNAVAILABLE,
)
