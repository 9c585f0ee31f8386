"""Twilio Programmable Messaging as the simulator answers it.

`POST /2010-04-01/Accounts/{AccountSid}/Messages.json` with a form body (`To` with its '+', `From`
or `MessagingServiceSid`, `Body`, optional `StatusCallback`, `ValidityPeriod`) and Basic auth
`AccountSid:AuthToken`,
the user being the account in the path. Accepted: HTTP 201 with Twilio's message JSON (`sid` "SM"
and 32 hex digits, `status` "queued", or "accepted" through a Messaging Service, `num_segments` a
string). Refused: `{"code", "message", "more_info", "status"}` with Twilio's error code. Twilio
counts segments, not requests, so a send costs its segments. No I/O: the clock and fresh sids
are all it takes from outside.
"""

from __future__ import annotations

import email.utils
import json
import random
import re
import secrets
import time
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit

from sms_blaster.encoding import GSM7_ALL, analyse
from sms_blaster.providers.names import ProviderName
from sms_blaster.receiver.signatures import sign_twilio
from sms_blaster.simulator.answers import (
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
    FORM,
    AcceptedMessage,
    CallbackRequest,
    CallbackSettings,
    Decision,
    PlannedReceipt,
    ReceiptStyle,
)
from sms_blaster.simulator.config import SimulatorConfig
from sms_blaster.simulator.dialect import Accepted, Dialect, Incoming, Till, plain_answer
from sms_blaster.validity import BOUNDS

TWILIO_PATH: Final = "/2010-04-01/Accounts/{account_sid}/Messages.json"
API_VERSION: Final = "2010-04-01"
BODY_MAX_CHARS: Final = 1600
# The sender a Messaging Service picks from its pool, as the status callbacks name it.
SERVICE_NUMBER: Final = "+15005550006"

# Delivery error codes: unreachable handset, unknown destination, landline or unreachable carrier,
# carrier filtering, unknown error.
TWILIO_ERRORS: Final = (30003, 30005, 30006, 30007, 30008)
TWILIO_MAGIC_ERROR: Final = 30003
# "Validity Period Expired": the message waited in Twilio's queue past its ValidityPeriod and was
# never sent, so it ends `failed`, not `undelivered`.
TWILIO_EXPIRED_ERROR: Final = 30036
_VALIDITY: Final = BOUNDS[ProviderName.TWILIO]

_TO = re.compile(r"\+\d{7,15}")


def error(
    status: int,
    code: int,
    message: str,
    *,
    tally: Tally = Tally.REJECTED,
    headers: tuple[tuple[str, str], ...] = (),
) -> Refusal:
    """Twilio's error JSON."""
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return Refusal(dumps(body), tally, status, headers)


AUTHENTICATE: Final = error(
    401, 20003, "Authenticate", headers=(("WWW-Authenticate", 'Basic realm="Twilio API"'),)
)
UNSUBSCRIBED: Final = error(400, 21610, "Attempt to send to unsubscribed recipient")
INVALID_TO: Final = error(400, 21211, "The 'To' number is not a valid phone number.")
# Twilio documents no Retry-After on its 429s.
THROTTLED: Final = error(429, 20429, "Too Many Requests", tally=Tally.THROTTLED)
TOO_MANY: Final = error(429, 20429, "Too Many Requests")


def rate_limited(retry_after_s: int) -> Refusal:
    """The throttle's 429 with a Retry-After in whole seconds, which Twilio does not send."""
    headers = (("Retry-After", str(retry_after_s)),)
    return error(429, 20429, "Too Many Requests", tally=Tally.THROTTLED, headers=headers)


# Refused before processing and says so with Retry-After: safe to resend.
UNAVAILABLE: Final = error(
    503, 20503, "Service Unavailable", tally=Tally.HTTP_503, headers=(("Retry-After", "1"),)
)
# No Retry-After: a client cannot tell whether the message was created before the error.
INTERNAL_ERROR: Final = error(500, 20500, "Internal Server Error")
MISSING_TO: Final = error(400, 21604, "A 'To' phone number is required.")
MISSING_FROM: Final = error(400, 21603, "A 'From' phone number is required.")
MISSING_BODY: Final = error(400, 21602, "Message body is required.")
BODY_TOO_LONG: Final = error(
    400, 21617, f"The concatenated message body exceeds the {BODY_MAX_CHARS} character limit."
)
INVALID_CALLBACK: Final = error(400, 21609, "Invalid StatusCallback url")
INVALID_VALIDITY_PERIOD: Final = error(400, 21624, "Invalid validity period value")

# 9993: the reference has no quota answer for Twilio; an account Twilio will not serve (suspended,
# unpaid) is refused like bad credentials, account-wide, which a client treats as fatal.
MAGIC_ALWAYS: Final = {
    "9990": UNSUBSCRIBED,
    "9991": INVALID_TO,
    "9992": AUTHENTICATE,
    "9993": AUTHENTICATE,
}
MAGIC_FIRST: Final = {"9994": THROTTLED, "9995": UNAVAILABLE, "9998": INTERNAL_ERROR}


def invalid_to(to: str) -> Refusal:
    """21211, naming the number as Twilio does."""
    return error(400, 21211, f"The 'To' number {to} is not a valid phone number.")


def read(incoming: Incoming, config: SimulatorConfig) -> SendRequest:
    """The request's account, recipient and segments, and its first problem of each kind.

    `fields` (for accepting it) has `To`, `Body`, `AccountSid`, `AuthToken` (what signs its
    callbacks) and, when given, `From`, `MessagingServiceSid`, `StatusCallback` and `client_ref`
    (from the StatusCallback's query).
    """
    path_sid = incoming.path["account_sid"]
    authorization = incoming.authorization
    user, token = basic_credentials(authorization) if authorization else ("", "")
    auth_problem = None
    if (
        not user
        or not token
        or user != path_sid
        or (config.twilio_account_sid is not None and user != config.twilio_account_sid)
        or (config.twilio_auth_token is not None and token != config.twilio_auth_token)
    ):
        auth_problem = AUTHENTICATE
    form = dict(parse_qsl(incoming.body.decode("utf-8", "replace"), keep_blank_values=True))
    to = form.get("To", "")
    text = form.get("Body", "")
    segments = analyse(text).segments if text else 1
    problem = _parameters_problem(form)
    fields = None
    if problem is None:
        fields = {
            name: form[name]
            for name in (
                "To",
                "From",
                "MessagingServiceSid",
                "Body",
                "StatusCallback",
                "ValidityPeriod",
            )
            if form.get(name)
        }
        fields |= {"AccountSid": path_sid, "AuthToken": token}
        client_ref = callback_client_ref(form.get("StatusCallback", ""))
        if client_ref is not None:
            fields["client_ref"] = client_ref
    return SendRequest(to.removeprefix("+"), path_sid, segments, auth_problem, problem, fields)


def _parameters_problem(form: Mapping[str, str]) -> Refusal | None:
    to = form.get("To", "")
    if not to:
        return MISSING_TO
    if _TO.fullmatch(to) is None:
        return invalid_to(to)
    if not form.get("From") and not form.get("MessagingServiceSid"):
        return MISSING_FROM
    text = form.get("Body", "")
    if not text:
        return MISSING_BODY
    if len(text) > BODY_MAX_CHARS:
        return BODY_TOO_LONG
    callback = form.get("StatusCallback")
    # "must contain a valid hostname and underscores are not allowed"
    if callback and (not is_http_url(callback) or "_" in (urlsplit(callback).hostname or "")):
        return INVALID_CALLBACK
    validity = form.get("ValidityPeriod")
    if validity is not None and not (
        validity.isascii()
        and validity.isdigit()
        and _VALIDITY.min_s <= int(validity) <= _VALIDITY.max_s
    ):
        return INVALID_VALIDITY_PERIOD
    return None


def callback_client_ref(url: str) -> str | None:
    """The `client_ref` a client put in its StatusCallback's query, if any."""
    values = parse_qs(urlsplit(url).query).get("client_ref") if url else None
    return values[0] if values else None


def created_body(fields: Mapping[str, str], sid: str, segments: int, now_s: float) -> bytes:
    """The 201 answer: Twilio's whole message resource, as it stands at creation."""
    account = fields["AccountSid"]
    service = fields.get("MessagingServiceSid")
    uri = f"/2010-04-01/Accounts/{account}/Messages/{sid}"
    created = email.utils.formatdate(now_s)[:-5] + "+0000"
    resource: dict[str, Any] = {
        "account_sid": account,
        "api_version": API_VERSION,
        "body": fields["Body"],
        "date_created": created,
        "date_sent": None,
        "date_updated": created,
        "direction": "outbound-api",
        "error_code": None,
        "error_message": None,
        "from": fields.get("From"),
        "messaging_service_sid": service,
        "num_media": "0",
        # A Messaging Service picks the sender, and so the encoding, later: "0" until then.
        "num_segments": "0" if service else str(segments),
        "price": None,
        "price_unit": None,
        "sid": sid,
        "status": "accepted" if service else "queued",
        "subresource_uris": {"media": f"{uri}/Media.json"},
        "tags": None,
        "to": fields["To"],
        "uri": f"{uri}.json",
    }
    return json.dumps(resource, separators=(",", ":"), ensure_ascii=False).encode()


# --- as the server runs it ----------------------------------------------------------------------


def accept(send: SendRequest, till: Till, config: SimulatorConfig) -> Accepted:
    """Charge a message, one price per segment; it calls back only if it named a StatusCallback."""
    fields = send.fields or {}
    sid = "SM" + secrets.token_hex(16)
    till.charge(send.segments)
    client_ref = fields.get("client_ref")
    text = fields["Body"]
    kept: dict[str, Any] = {
        "id": sid,
        "from": fields.get("From") or fields.get("MessagingServiceSid", ""),
        "text": text,
        "type": "text" if GSM7_ALL.issuperset(text) else "unicode",
        "client_ref": client_ref,
    }
    ttl_s = int(fields["ValidityPeriod"]) if "ValidityPeriod" in fields else None
    if ttl_s is not None:
        kept["ttl_s"] = ttl_s
    body = created_body(fields, sid, send.segments, time.time())
    url = fields.get("StatusCallback")
    if url is None:
        return Accepted(201, body, None, kept)
    message = AcceptedMessage(
        to=fields["To"],
        sender=fields.get("From") or SERVICE_NUMBER,
        api_key=fields["AccountSid"],
        network=NETWORK,
        price=till.price,
        message_ids=(sid,),
        style=RECEIPTS,
        client_ref=client_ref,
        url=url,
        parts=send.segments,
        token=config.twilio_auth_token or fields["AuthToken"],
        service_sid=fields.get("MessagingServiceSid"),
        ttl_s=ttl_s,
    )
    return Accepted(201, body, message, kept)


# --- receipts: `sent`, then the outcome ----------------------------------------------------------


def _receipt_plan(
    message: AcceptedMessage, decision: Decision, rng: random.Random, intermediate_rate: float
) -> list[PlannedReceipt]:
    # Twilio calls back for every status after the first: always `sent`, then the outcome; an
    # expired message was never sent, and fails in the queue.
    if decision.expired:
        return [PlannedReceipt(0, "failed")]
    final = "delivered" if decision.delivered else "undelivered"
    return [PlannedReceipt(0, "sent"), PlannedReceipt(0, final)]


def status_fields(
    message: AcceptedMessage, decision: Decision, planned: PlannedReceipt, now_s: float
) -> dict[str, Any]:
    """A status callback's form fields."""
    status = planned.status
    sid = message.message_ids[0]
    fields = {
        "AccountSid": message.api_key,
        "ApiVersion": "2010-04-01",
        "From": message.sender,
        "MessageSid": sid,
        "MessageStatus": status,
        "SmsSid": sid,
        "SmsStatus": status,
        "To": message.to,
    }
    if message.service_sid is not None:
        fields["MessagingServiceSid"] = message.service_sid
    if status in ("delivered", "undelivered"):
        fields["RawDlrDoneDate"] = time.strftime("%y%m%d%H%M", time.gmtime(now_s))
    if status in ("undelivered", "failed"):
        fields["ErrorCode"] = str(decision.err_code)
    return fields


def _receipt_request(
    message: AcceptedMessage,
    url: str,
    fields: Mapping[str, Any],
    settings: CallbackSettings,
    now_s: float,
) -> CallbackRequest:
    """A form POST, always signed with X-Twilio-Signature over the URL and the fields, keyed with
    the account's auth token."""
    signature = sign_twilio(url, fields.items(), message.token or "")
    body = urlencode(fields).encode()
    return CallbackRequest("POST", url, body, FORM, (("X-Twilio-Signature", signature),))


RECEIPTS: Final = ReceiptStyle(
    TWILIO_MAGIC_ERROR,
    TWILIO_ERRORS,
    _receipt_plan,
    status_fields,
    _receipt_request,
    url_as_signed=True,
    expired_code=TWILIO_EXPIRED_ERROR,
)
DIALECT: Final = Dialect(
    Api.TWILIO,
    TWILIO_PATH,
    read,
    accept,
    plain_answer,
    counts_segments=True,
    too_many=TOO_MANY,
    echo=lambda text: error(401, 20003, f"Authenticate: {text}"),
    throttled=lambda _wait_s: THROTTLED,  # Twilio's 429 says no wait
    rate_limited=rate_limited,
    magic_always=MAGIC_ALWAYS,
    magic_first=MAGIC_FIRST,
    unavailable=UNAVAILABLE,
)
