"""Vonage Messages API (v1): `POST {base}/v1/messages`, a JSON body, JWT or Basic auth.

Success is HTTP 202 with a `message_uuid`; errors are RFC 7807 problem documents whose `type` ends
in a fragment naming the error (`…/messages#1150`). Application auth signs a short-lived RS256 JWT
with the application's private key; one token serves every request until shortly before it
expires, so signing costs nothing per message. The body is built from pieces encoded once.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from sms_blaster.models import Encoding, Message, Outcome, SendResult
from sms_blaster.providers.base import HttpRequest, parse_retry_after
from sms_blaster.providers.names import ProviderName
from sms_blaster.providers.redact import Redactor, url_password
from sms_blaster.providers.rules import BasicAuth, Rung, no_message_id, on_rung, rung_of
from sms_blaster.validity import BOUNDS

DEFAULT_BASE_URL = "https://api.nexmo.com"

TOKEN_LIFETIME_S = 900  # Vonage's SDKs mint 15-minute application tokens
RENEW_BEFORE_S = 60  # margin for clock skew and for requests queued behind the limiter

_CREDENTIALS_HINT = (
    "give --application-id and --private-key (VONAGE_APPLICATION_ID, VONAGE_PRIVATE_KEY_PATH) "
    "for application auth, or --api-key and --api-secret (VONAGE_API_KEY, VONAGE_API_SECRET)"
)

_json_string = json.JSONEncoder(ensure_ascii=False).encode
_ENCODING_TYPE = {
    # Said explicitly, so that Vonage's own detection cannot disagree with our segment count.
    Encoding.GSM7: b',"sms":{"encoding_type":"text"}}',
    Encoding.UCS2: b',"sms":{"encoding_type":"unicode"}}',
}


def _b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


_JWT_HEADER = _b64url(b'{"alg":"RS256","typ":"JWT"}')


class VonageMessages:
    """The Vonage Messages API adapter, SMS channel (pure: no I/O)."""

    name = ProviderName.VONAGE_MESSAGES
    receipt_route = "/webhooks/messages/status"

    __slots__ = (
        "_application_id",
        "_clock",
        "_headers",
        "_key",
        "_prefix",
        "_renew_at_s",
        "_url",
        "redactor",
    )

    def __init__(
        self,
        sender: str,
        base_url: str = DEFAULT_BASE_URL,
        *,
        api_key: str | None = None,
        api_secret: str | None = None,
        application_id: str | None = None,
        private_key_pem: bytes | None = None,
        webhook_url: str | None = None,
        clock: Callable[[], float] = time.time,
        ttl_s: int | None = None,
    ) -> None:
        self._url = base_url.rstrip("/") + "/v1/messages"
        self._clock = clock
        self._application_id = application_id or ""
        self._key: rsa.RSAPrivateKey | None = None
        self._headers: Mapping[str, str] = {}  # with a key, the first request mints a token
        self._renew_at_s = float("-inf")
        # The tokens minted from the key change; every JWT and Bearer value is masked anyway.
        self.redactor = Redactor.of((api_secret, private_key_pem, url_password(webhook_url)))
        if application_id or private_key_pem:
            if not application_id or not private_key_pem:
                missing = "--private-key" if application_id else "--application-id"
                raise ValueError(f"application auth needs {missing} too; {_CREDENTIALS_HINT}")
            self._key = load_private_key(private_key_pem)
        elif api_key and api_secret:
            auth = BasicAuth.of(api_key, api_secret)
            self._headers = {"Authorization": auth.header, "Content-Type": "application/json"}
            self.redactor = Redactor.of((api_secret, auth.token, url_password(webhook_url)))
        else:
            raise ValueError(f"the Messages API needs credentials: {_CREDENTIALS_HINT}")
        webhook = f',"webhook_url":{_json_string(webhook_url)}' if webhook_url else ""
        bounds = BOUNDS[self.name]
        ttl = f',"{bounds.field}":{bounds.value(ttl_s)}' if ttl_s is not None else ""
        self._prefix = (
            f'{{"message_type":"text","channel":"sms","from":{_json_string(sender)}{webhook}{ttl},'
            '"to":"'
        ).encode()

    def build_request(self, message: Message) -> HttpRequest:
        # `to` is digits and `client_ref` hex and digits: neither needs quoting.
        body = b"".join(
            (
                self._prefix,
                message.to.encode(),
                b'","client_ref":"',
                message.client_ref.encode(),
                b'","text":',
                _json_string(message.text).encode(),
                _ENCODING_TYPE[message.encoding],
            )
        )
        key = self._key
        if key is not None and self._clock() >= self._renew_at_s:
            self._mint_token(key)
        return HttpRequest(self._url, body, self._headers)

    def parse_response(
        self, status: int, headers: Mapping[str, str], body: bytes, to: str = ""
    ) -> SendResult:
        # The answer names no number to check `to` against: an answer read on the wrong request
        # is guarded against only by the transport's dropping of a connection that speaks idle.
        if 200 <= status < 300:
            return parse_accepted(body)
        wait_s = parse_retry_after(headers.get("Retry-After"), self._clock())
        return classify_error(status, Problem.parse(body), wait_s)

    def cost(self, message: Message) -> float:
        return 1.0  # Vonage counts requests, not parts

    def _mint_token(self, key: rsa.RSAPrivateKey) -> None:
        issued_at = int(self._clock())
        claims = {
            "application_id": self._application_id,
            "iat": issued_at,
            "jti": str(uuid.uuid4()),
            "exp": issued_at + TOKEN_LIFETIME_S,
        }
        signing_input = (
            _JWT_HEADER + b"." + _b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        token = (signing_input + b"." + _b64url(signature)).decode()
        # A new mapping, not an update: requests already built keep the token they were built with.
        self._headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self._renew_at_s = issued_at + TOKEN_LIFETIME_S - RENEW_BEFORE_S


def load_private_key(pem: bytes) -> rsa.RSAPrivateKey:
    """The application's RSA private key, or a ValueError that names the problem (never the key;
    the caller names the file: `sms_blaster.key_file`)."""
    try:
        with warnings.catch_warnings():  # a DSA key's deprecation: refused below in one line
            warnings.simplefilter("ignore")
            key = serialization.load_pem_private_key(pem, password=None)
    except TypeError as exc:
        raise ValueError(
            "the key is protected by a passphrase; give the unencrypted PEM file Vonage "
            "generated for the application"
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError(
            "not a PEM private key; give the PEM file Vonage generated for the application "
            "(it starts with '-----BEGIN PRIVATE KEY-----')"
        ) from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(
            "not an RSA key; Vonage application tokens are RS256: give the PEM file Vonage "
            "generated for the application"
        )
    return key


def parse_accepted(body: bytes) -> SendResult:
    """A 2xx answer: sent when it names the message, else it may have been sent."""
    try:
        message_uuid = json.loads(body)["message_uuid"]
    except (ValueError, KeyError, TypeError, RecursionError):
        message_uuid = None
    if not isinstance(message_uuid, str) or not message_uuid:
        return no_message_id("accepted without a message_uuid; it may have been sent")
    return SendResult(Outcome.SENT, message_ids=(message_uuid,))


@dataclass(frozen=True, slots=True)
class Problem:
    """What an RFC 7807 error body says: a short code and a readable text (both may be empty)."""

    code: str
    text: str

    @classmethod
    def parse(cls, body: bytes) -> Problem:
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            return cls("", "")
        if not isinstance(document, dict):
            return cls("", "")
        kind, title, detail = (_field(document, name) for name in ("type", "title", "detail"))
        code = kind.rpartition("#")[2] if "#" in kind else title
        text = ": ".join(part for part in (title, detail) if part)
        parameters = document.get("invalid_parameters")
        reasons = [
            f"{_field(item, 'name')}: {_field(item, 'reason')}"
            for item in (parameters if isinstance(parameters, list) else ())
            if isinstance(item, dict)
        ]
        if reasons:
            text = f"{text} ({'; '.join(reasons)})" if text else "; ".join(reasons)
        return cls(code, text)


def _field(document: Mapping[str, object], name: str) -> str:
    value = document.get(name)
    return value.strip() if isinstance(value, str) else ""


def classify_error(status: int, problem: Problem, wait_s: float | None) -> SendResult:
    """An answer other than 2xx, by the ladder; the problem document adds the provider's words."""
    code = f"http_{status}"
    step = rung_of(status, wait_s)
    if step is Rung.REFUSED:  # the problem document names the error
        return on_rung(step, problem.code or code, problem.text or step.words, wait_s)
    if step is Rung.REDIRECTED:
        detail = step.words
    elif step is Rung.NOT_FOUND:
        detail = "no Messages API at this address; check --base-url"
    elif step is Rung.CREDENTIALS:
        detail = f"{_said('the provider refused the credentials or application', problem)}; "
        detail += _CREDENTIALS_HINT
    else:
        detail = _said(step.words, problem)
    return on_rung(step, code, detail, wait_s)


def _said(what: str, problem: Problem) -> str:
    return f"{what}: {problem.text}" if problem.text else what
