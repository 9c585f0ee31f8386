"""Provider callbacks as values: what each route's fields mean, without any I/O.

One `Receipt` per callback, whatever its provider and format: a delivery receipt (one per message
part for the Vonage SMS API), a status update (Messages API, Twilio), or an inbound message. The
provider's own status is kept as given and also mapped to a `Delivery`, the state the campaign
report counts:

    delivered      the handset has it
    failed         it will not arrive (failed, rejected, undeliverable, undelivered)
    expired        it will not arrive: its validity period ran out first (Vonage SMS `expired`;
                   Messages API `rejected` with error 1360; Twilio error 30036)
    pending        on its way, or no useful information yet (accepted, buffered, submitted, sent)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sms_blaster.models import Delivery, Receipt, ReceiptKind
from sms_blaster.providers.names import ProviderName


class ReceiptError(ValueError):
    """A callback that lacks what every callback of its kind carries; answered 400."""


_VONAGE_DLR = {
    "delivered": Delivery.DELIVERED,
    "failed": Delivery.FAILED,
    "expired": Delivery.EXPIRED,
    "rejected": Delivery.FAILED,
    "accepted": Delivery.PENDING,
    "buffered": Delivery.PENDING,
    "unknown": Delivery.PENDING,
}
_MESSAGES = {
    "delivered": Delivery.DELIVERED,
    "read": Delivery.DELIVERED,
    "rejected": Delivery.FAILED,
    "undeliverable": Delivery.FAILED,
    "submitted": Delivery.PENDING,
}
_TWILIO = {
    "delivered": Delivery.DELIVERED,
    "read": Delivery.DELIVERED,
    "undelivered": Delivery.FAILED,
    "failed": Delivery.FAILED,
    "canceled": Delivery.FAILED,
}
# The error codes that say a message's validity period ran out: "TTL activated / expired" on a
# Messages API `rejected`; "Validity Period Expired" on a Twilio `failed` (or `undelivered`).
_MESSAGES_EXPIRED = "1360"
_TWILIO_EXPIRED = "30036"
# Fields that prove who sent the callback, not what it says: never stored or emitted.
_SIGNATURE_FIELDS = frozenset({"sig", "nonce"})


def vonage_dlr(params: Mapping[str, str]) -> Receipt:
    """A Vonage SMS API delivery receipt (one message part), in any of its three formats."""
    message_id = _required(params, "messageId", "delivery receipt")
    status = _required(params, "status", "delivery receipt").lower()
    error_code = params.get("err-code", "")
    return Receipt(
        provider=ProviderName.VONAGE_SMS,
        kind=ReceiptKind.DLR,
        message_id=message_id,
        status=status,
        delivery=_VONAGE_DLR.get(status, Delivery.PENDING),
        to=params.get("msisdn"),
        sender=params.get("to"),
        client_ref=params.get("client-ref") or None,
        error_code="" if error_code == "0" else error_code,
        price=params.get("price"),
        event_at=params.get("message-timestamp"),
        payload=_payload(params),
    )


def vonage_inbound(params: Mapping[str, str]) -> Receipt:
    """A Vonage SMS API inbound message (one part of a concatenated one)."""
    return Receipt(
        provider=ProviderName.VONAGE_SMS,
        kind=ReceiptKind.INBOUND,
        message_id=_required(params, "messageId", "inbound message"),
        status="received",
        delivery=None,
        to=params.get("to"),
        sender=_required(params, "msisdn", "inbound message"),
        client_ref=None,
        error_code="",
        price=None,
        event_at=params.get("message-timestamp"),
        payload=_payload(params),
    )


def vonage_messages_status(body: Mapping[str, Any]) -> Receipt:
    """A Messages API status webhook (v1, or v0.1 where `to`/`from` are objects)."""
    message_id = _text(body.get("message_uuid"))
    status = _text(body.get("status")).lower()
    if not message_id or not status:
        raise ReceiptError("status webhook without message_uuid or status")
    usage = body.get("usage")
    price = _text(usage.get("price")) if isinstance(usage, dict) else ""
    error_code = _messages_error_code(body.get("error"))
    return Receipt(
        provider=ProviderName.VONAGE_MESSAGES,
        kind=ReceiptKind.STATUS,
        message_id=message_id,
        status=status,
        delivery=_expired_or(
            _MESSAGES.get(status, Delivery.PENDING), error_code, _MESSAGES_EXPIRED
        ),
        to=_number(body.get("to")) or None,
        sender=_number(body.get("from")) or None,
        client_ref=_text(body.get("client_ref")) or None,
        error_code=error_code,
        price=price or None,
        event_at=_text(body.get("timestamp")) or None,
        payload=json.dumps(dict(body), separators=(",", ":"), ensure_ascii=False),
    )


def _messages_error_code(error: object) -> str:
    # v1: {"type": ".../messages#1320", "title": "1320", ...}; v0.1: {"code": 1320, "reason": ...}
    if not isinstance(error, dict):
        return ""
    for key in ("title", "code"):
        value = _text(error.get(key))
        if value.isdigit():
            return value
    return _text(error.get("type")).rpartition("#")[2]


def _number(value: object) -> str:
    if isinstance(value, dict):
        return _text(value.get("number"))
    return _text(value)


def twilio_status(params: Mapping[str, str], client_ref: str | None) -> Receipt:
    """A Twilio status callback; the client ref travels in the callback URL's query."""
    message_id = params.get("MessageSid") or params.get("SmsSid") or ""
    status = (params.get("MessageStatus") or params.get("SmsStatus") or "").lower()
    if not message_id or not status:
        raise ReceiptError("status callback without MessageSid or MessageStatus")
    error_code = params.get("ErrorCode", "")
    return Receipt(
        provider=ProviderName.TWILIO,
        kind=ReceiptKind.STATUS,
        message_id=message_id,
        status=status,
        delivery=_expired_or(_TWILIO.get(status, Delivery.PENDING), error_code, _TWILIO_EXPIRED),
        to=params.get("To"),
        sender=params.get("From"),
        client_ref=client_ref or None,
        error_code=error_code,
        price=None,
        event_at=params.get("RawDlrDoneDate"),
        payload=_payload(params),
    )


def _expired_or(delivery: Delivery, error_code: str, expired_code: str) -> Delivery:
    """`delivery`, or expired when a failure's error code says the validity period ran out."""
    if delivery is Delivery.FAILED and error_code == expired_code:
        return Delivery.EXPIRED
    return delivery


def twilio_inbound(params: Mapping[str, str]) -> Receipt:
    """A Twilio inbound message (the number's or the messaging service's incoming webhook)."""
    message_id = params.get("MessageSid") or params.get("SmsSid") or ""
    if not message_id:
        raise ReceiptError("inbound message without MessageSid")
    return Receipt(
        provider=ProviderName.TWILIO,
        kind=ReceiptKind.INBOUND,
        message_id=message_id,
        status="received",
        delivery=None,
        to=params.get("To"),
        sender=_required(params, "From", "inbound message"),
        client_ref=None,
        error_code="",
        price=None,
        event_at=None,  # Twilio's inbound webhook carries no time: the time received stands
        payload=_payload(params),
    )


def vonage_messages_inbound(body: Mapping[str, Any]) -> Receipt:
    """A Messages API inbound message (v1, or v0.1 where `to`/`from` are objects)."""
    message_id = _text(body.get("message_uuid"))
    sender = _number(body.get("from"))
    if not message_id or not sender:
        raise ReceiptError("inbound message without message_uuid or from")
    return Receipt(
        provider=ProviderName.VONAGE_MESSAGES,
        kind=ReceiptKind.INBOUND,
        message_id=message_id,
        status="received",
        delivery=None,
        to=_number(body.get("to")) or None,
        sender=sender,
        client_ref=None,
        error_code="",
        price=None,
        event_at=_text(body.get("timestamp")) or None,
        payload=json.dumps(dict(body), separators=(",", ":"), ensure_ascii=False),
    )


def to_record(receipt: Receipt, received_at_s: float) -> dict[str, Any]:
    """A stored receipt as plain data: the `--emit` line, and what a user hook is given."""
    return {
        "provider": receipt.provider,
        "kind": receipt.kind.value,
        "message_id": receipt.message_id,
        "status": receipt.status,
        "delivery": receipt.delivery.value if receipt.delivery else None,
        "to": receipt.to,
        "from": receipt.sender,
        "client_ref": receipt.client_ref,
        "error_code": receipt.error_code or None,
        "price": receipt.price,
        "event_at": receipt.event_at,
        "received_at": round(received_at_s, 3),
        "fields": json.loads(receipt.payload),
    }


def _required(params: Mapping[str, str], name: str, what: str) -> str:
    value = params.get(name, "")
    if not value:
        raise ReceiptError(f"{what} without '{name}'")
    return value


def _text(value: object) -> str:
    if value is None or isinstance(value, (dict, list)):
        return ""
    return str(value)


# What json.dumps(..., separators=(",", ":"), ensure_ascii=False) builds at every call.
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _payload(params: Mapping[str, str]) -> str:
    kept = {key: value for key, value in params.items() if key not in _SIGNATURE_FIELDS}
    return _COMPACT_JSON.encode(kept)
