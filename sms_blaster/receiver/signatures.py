"""Webhook signatures: Vonage SMS `sig`, Twilio `X-Twilio-Signature` and Vonage Messages JWTs.

Pure functions: the clock is the `now_s` parameter. Each `verify_*` returns None when the request
is authentic and fresh, else a short reason for the log; a reason never contains a secret or an
expected signature. Secrets and signatures are compared in constant time.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import math
import re
import uuid
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qs, urlsplit

SMS_METHODS: tuple[str, ...] = ("md5hash", "md5", "sha1", "sha256", "sha512")

_TIMESTAMP = re.compile(r"[0-9]{1,15}")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


# Vonage SMS API: `sig` over the sorted parameters.


def _check_method(method: str) -> None:
    if method not in SMS_METHODS:
        raise ValueError(
            f"unknown signature method {method!r}; use one of {', '.join(SMS_METHODS)}"
        )


@functools.lru_cache(maxsize=8)
def _keyed(secret: str, method: str) -> hmac.HMAC:
    """The HMAC state after the key, the same for every callback: each one copies it.

    `hmac.digest` looks the digest up in OpenSSL and keys it anew at every call; a callback a
    millisecond apart finds little of that in the CPU's caches.
    """
    return hmac.new(secret.encode(), digestmod=method)


def vonage_sms_signature(params: Mapping[str, str], secret: str, method: str) -> str:
    """Vonage SMS API `sig` over params (any `sig` key ignored): lowercase hex."""
    _check_method(method)
    signed = "".join(
        [
            f"&{key}={params[key].replace('&', '_').replace('=', '_')}"
            for key in sorted(params)
            if key != "sig"
        ]
    ).encode()
    if method == "md5hash":
        return hashlib.md5(signed + secret.encode()).hexdigest()
    keyed = _keyed(secret, method).copy()
    keyed.update(signed)
    return keyed.hexdigest()


def sign_vonage_sms(
    params: Mapping[str, str],
    secret: str,
    method: str,
    *,
    now_s: float,
    nonce: str | None = None,
) -> dict[str, str]:
    """A copy of params with `timestamp` (int seconds, only if absent), `nonce` and `sig` added.

    The nonce is the one given, else the one params already carry, else a new uuid4 string.
    """
    signed = dict(params)
    signed.setdefault("timestamp", str(int(now_s)))
    if nonce is not None:
        signed["nonce"] = nonce
    else:
        signed.setdefault("nonce", str(uuid.uuid4()))
    signed["sig"] = vonage_sms_signature(signed, secret, method)
    return signed


def verify_vonage_sms(
    params: Mapping[str, str],
    secret: str,
    method: str,
    *,
    now_s: float,
    max_age_s: float,
    max_ahead_s: float = 300.0,
) -> str | None:
    """None when params carry a valid `sig` with a fresh `timestamp`, else the reason refused."""
    _check_method(method)
    given = params.get("sig")
    if not given:
        return "missing sig"
    timestamp = params.get("timestamp")
    if timestamp is None:
        return "missing timestamp"
    if not _TIMESTAMP.fullmatch(timestamp):
        return "timestamp not a number"
    expected = vonage_sms_signature(params, secret, method)
    # PHP signs with uppercase hex, Python with lowercase: compare both lowercased.
    if not hmac.compare_digest(expected.encode(), given.lower().encode()):
        return "bad signature"
    return _freshness(int(timestamp), "timestamp", now_s, max_age_s, max_ahead_s)


def _freshness(
    sent_s: float, name: str, now_s: float, max_age_s: float, max_ahead_s: float
) -> str | None:
    if now_s - sent_s > max_age_s:
        return f"stale {name}"
    if sent_s - now_s > max_ahead_s:
        return f"{name} in the future"
    return None


# Twilio: base64 HMAC-SHA1 over the URL and the sorted form parameters.


def twilio_signature(url: str, params: Iterable[tuple[str, str]], token: str) -> str:
    """base64 HMAC-SHA1 of url + each name+value, names sorted, values of a name sorted.

    Repeated values of a name count once, as Twilio's own validators do.
    """
    values: dict[str, set[str]] = {}
    for name, value in params:
        values.setdefault(name, set()).add(value)
    signed = url + "".join(
        name + value for name in sorted(values) for value in sorted(values[name])
    )
    # surrogateescape: a Host header that is not UTF-8 (the receiver keeps its bytes as
    # surrogates) is signed as the bytes sent, and fails the comparison like any wrong URL.
    digest = hmac.new(token.encode(), signed.encode("utf-8", "surrogateescape"), "sha1").digest()
    return base64.b64encode(digest).decode("ascii")


sign_twilio = twilio_signature


def verify_twilio(
    url: str,
    params: Iterable[tuple[str, str]],
    signature: str | None,
    token: str,
    *,
    body: bytes = b"",
) -> str | None:
    """None when valid; the URL is tried as given, without its port and with the default one.

    When the URL's query has bodySHA256 (a JSON webhook), params are ignored and the raw body's
    sha256 hex must match it.
    """
    if not signature:
        return "missing signature"
    query = parse_qs(urlsplit(url).query)
    body_hash = query["bodySHA256"][0] if "bodySHA256" in query else None
    pairs = [] if body_hash is not None else list(params)
    given = signature.encode("utf-8", "surrogateescape")  # a header's bytes, whatever they are
    if not any(
        hmac.compare_digest(twilio_signature(candidate, pairs, token).encode(), given)
        for candidate in _url_variants(url)
    ):
        return "bad signature"
    if body_hash is not None and not hmac.compare_digest(
        hashlib.sha256(body).hexdigest().encode(), body_hash.lower().encode()
    ):
        return "body does not match bodySHA256"
    return None


def _url_variants(url: str) -> list[str]:
    """The URL as given, with any port removed and, when it has none, the default port added."""
    parts = urlsplit(url)
    start = url.find("//") + 2
    if not parts.netloc or url[start : start + len(parts.netloc)] != parts.netloc:
        return [url]
    try:
        port = parts.port
    except ValueError:
        return [url]
    before, after = url[:start], url[start + len(parts.netloc) :]
    if port is None:
        default = 443 if parts.scheme == "https" else 80
        return [url, f"{before}{parts.netloc}:{default}{after}"]
    return [url, before + parts.netloc.rsplit(":", 1)[0] + after]


# Vonage Messages API: an HS256 JWT in the Authorization header.


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(segment: str) -> bytes | None:
    """The bytes of a base64url segment (alphabet already checked), padding restored, or None."""
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        return None


def _json_object(segment: str) -> dict[str, object] | None:
    raw = _unb64url(segment)
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _number(value: object) -> float | None:
    """The claim as a finite number, or None (booleans, NaN and infinities are not times)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _hs256(signing_input: str, secret: str) -> str:
    return _b64url(hmac.new(secret.encode(), signing_input.encode("ascii"), "sha256").digest())


def make_jwt_hs256(claims: Mapping[str, object], secret: str) -> str:
    """A compact HS256 JWT of claims, in the order given."""
    header = _b64url(b'{"alg":"HS256","typ":"JWT"}')
    payload = _b64url(json.dumps(dict(claims), separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}"
    return f"{signing_input}.{_hs256(signing_input, secret)}"


def sign_messages_webhook(
    body: bytes,
    secret: str,
    *,
    now_s: float,
    api_key: str,
    application_id: str | None = None,
) -> str:
    """The Authorization header value ("Bearer <jwt>") Vonage sends with a Messages API webhook."""
    claims: dict[str, object] = {
        "iat": int(now_s),
        "jti": str(uuid.uuid4()),
        "iss": "Vonage",
        "payload_hash": hashlib.sha256(body).hexdigest(),
        "api_key": api_key,
    }
    if application_id is not None:
        claims["application_id"] = application_id
    return "Bearer " + make_jwt_hs256(claims, secret)


def verify_messages_jwt(
    authorization: str | None,
    body: bytes,
    secret: str,
    *,
    now_s: float,
    max_age_s: float,
    max_ahead_s: float = 300.0,
    require_claims: bool = True,
) -> str | None:
    """None when the Bearer JWT is HS256, signed with secret, in date and hashes body, else why not.

    Vonage's webhook tokens always carry `iat` and `payload_hash`: without them a token would vouch
    for any body, forever. `require_claims=False` checks each only when present (as `exp` always
    is), for tokens that are not webhooks, such as the SDK's test vectors.
    """
    if not authorization:
        return "missing Authorization"
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return "not a Bearer token"
    segments = token.strip().split(".")
    if len(segments) != 3 or not all(_BASE64URL.fullmatch(segment) for segment in segments):
        return "malformed token"
    header = _json_object(segments[0])
    if header is None:
        return "malformed token header"
    # Only HS256: refusing "none" and every other alg stops algorithm-confusion forgeries.
    if header.get("alg") != "HS256":
        return "alg is not HS256"
    expected = _hs256(f"{segments[0]}.{segments[1]}", secret)
    if not hmac.compare_digest(expected.encode(), segments[2].encode()):
        return "bad signature"
    claims = _json_object(segments[1])
    if claims is None:
        return "malformed token claims"
    return _check_claims(claims, body, now_s, max_age_s, max_ahead_s, require_claims)


def _check_claims(
    claims: Mapping[str, object],
    body: bytes,
    now_s: float,
    max_age_s: float,
    max_ahead_s: float,
    require_claims: bool,
) -> str | None:
    if "exp" in claims:
        exp = _number(claims["exp"])
        if exp is None:
            return "exp not a number"
        if now_s >= exp:
            return "expired"
    if "iat" in claims:
        iat = _number(claims["iat"])
        if iat is None:
            return "iat not a number"
        stale = _freshness(iat, "iat", now_s, max_age_s, max_ahead_s)
        if stale is not None:
            return stale
    elif require_claims:
        return "missing iat"
    if "payload_hash" in claims:
        payload_hash = claims["payload_hash"]
        if not isinstance(payload_hash, str) or not hmac.compare_digest(
            hashlib.sha256(body).hexdigest().encode(), payload_hash.lower().encode()
        ):
            return "body does not match payload_hash"
    elif require_claims:
        return "missing payload_hash"
    return None
