"""Inbound messages from the simulator: a handset writing to one of our numbers ("STOP"), sent to a
receiver's inbound route as the provider would send it, signed as the provider signs.

`POST /_simulator/inbound` with a JSON object:

    api    "twilio", "vonage-sms" (the default) or "vonage-messages"
    url    the receiver's inbound route (/webhooks/twilio/inbound, /webhooks/inbound,
           /webhooks/messages/inbound)
    from   the handset's number ("+447700900123" or digits)
    text   what it wrote
    to     our number (optional)

The simulator sends it at once, once (no retry), and answers `{"status": …, "body": …}` with the
receiver's answer, so a test sees the TwiML a Twilio route replied with. Twilio's webhook is a form
signed with X-Twilio-Signature (the simulator's Twilio auth token); the SMS API's comes in the
configured callback format with `sig` when a signature secret is set; the Messages API's is JSON
with a JWT when one is set.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlencode

import aiohttp
from yarl import URL

from sms_blaster.receiver.signatures import (
    sign_messages_webhook,
    sign_twilio,
    sign_vonage_sms,
)
from sms_blaster.simulator.answers import JSON, Api, is_http_url
from sms_blaster.simulator.callbacks import FORM, CallbackRequest, callback_request
from sms_blaster.simulator.config import SimulatorConfig
from sms_blaster.simulator.messages_api import APPLICATION_API_KEY

INBOUND_PATH: Final = "/_simulator/inbound"
_OUR_NUMBER: Final = "447700900000"
_TIMEOUT_S: Final = 10.0


class InboundError(ValueError):
    """A request to send an inbound message that cannot be sent; the answer says why."""


def inbound_request(
    asked: Mapping[str, Any], config: SimulatorConfig, now_s: float
) -> CallbackRequest:
    """The provider's webhook for an inbound message as `POST /_simulator/inbound` asked for it."""
    try:
        api = Api(str(asked.get("api") or Api.VONAGE_SMS))
    except ValueError:
        raise InboundError(f"api must be one of {', '.join(Api)}") from None
    url, sender, text = (str(asked.get(name) or "") for name in ("url", "from", "text"))
    if not is_http_url(url) or not sender:
        raise InboundError("give url (the receiver's inbound route), from and text")
    digits = sender.lstrip("+")
    to = str(asked.get("to") or _OUR_NUMBER).lstrip("+")
    message_id = uuid.uuid4().hex
    if api is Api.TWILIO:
        fields = {
            "MessageSid": f"SM{message_id}",
            "SmsSid": f"SM{message_id}",
            "AccountSid": config.twilio_account_sid or "AC" + "0" * 32,
            "From": f"+{digits}",
            "To": f"+{to}",
            "Body": text,
            "NumMedia": "0",
            "NumSegments": "1",
            "SmsStatus": "received",
            "ApiVersion": "2010-04-01",
        }
        signature = sign_twilio(url, fields.items(), config.twilio_auth_token or "")
        headers = (("X-Twilio-Signature", signature),)
        return CallbackRequest("POST", url, urlencode(fields).encode(), FORM, headers)
    if api is Api.VONAGE_MESSAGES:
        body = json.dumps(
            {
                "channel": "sms",
                "message_uuid": str(uuid.UUID(message_id)),
                "to": to,
                "from": digits,
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now_s)),
                "text": text,
                "message_type": "text",
                "sms": {"num_messages": "1"},
            },
            separators=(",", ":"),
        ).encode()
        secret = config.signature_secret
        if secret is None:
            return CallbackRequest("POST", url, body, JSON)
        authorization = sign_messages_webhook(
            body, secret, now_s=now_s, api_key=config.api_key or APPLICATION_API_KEY
        )
        return CallbackRequest("POST", url, body, JSON, (("Authorization", authorization),))
    params = {
        "msisdn": digits,
        "to": to,
        "messageId": message_id[:16].upper(),
        "text": text,
        "type": "text",
        "keyword": (text.split() or [""])[0].upper(),
        "message-timestamp": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now_s)),
    }
    if config.signature_secret is not None:
        params = sign_vonage_sms(
            params, config.signature_secret, config.signature_method, now_s=now_s
        )
    return callback_request(url, params, config.callback_format)


async def send_inbound(request: CallbackRequest) -> tuple[int, str]:
    """Send the webhook once; the receiver's status and answer."""
    headers = dict(request.headers)
    if request.content_type is not None:
        headers["Content-Type"] = request.content_type
    timeout = aiohttp.ClientTimeout(total=_TIMEOUT_S)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        # Sent exactly as signed (Twilio signs the URL as written), not requoted by the client.
        session.request(
            request.method, URL(request.url, encoded=True), data=request.body, headers=headers
        ) as response,
    ):
        return response.status, await response.text()
