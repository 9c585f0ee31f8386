"""Webhook signatures: Vonage SMS `sig`, Twilio `X-Twilio-Signature` and Vonage Messages JWTs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sms_blaster.receiver.signatures import (
    SMS_METHODS,
    make_jwt_hs256,
    sign_messages_webhook,
    sign_twilio,
    sign_vonage_sms,
    twilio_signature,
    verify_messages_jwt,
    verify_twilio,
    verify_vonage_sms,
    vonage_sms_signature,
)

FIXTURE = Path(__file__).parent / "fixtures" / "signature-vectors.json"
VECTORS: dict[str, Any] = json.loads(FIXTURE.read_text(encoding="utf-8"))


@dataclass(frozen=True, slots=True)
class SmsVector:
    params: dict[str, str]
    secret: str
    method: str
    sig: str

    @property
    def sent_s(self) -> float:
        return float(self.params["timestamp"])

    def signed(self) -> dict[str, str]:
        return {**self.params, "sig": self.sig}


SMS_VECTORS = [
    SmsVector(v["params"], v["secret"], v["method"], v["sig"])
    for v in VECTORS["vonage_sms_signature"]["vectors"]
]
SMS_CASES = [pytest.param(v, id=f"{i}-{v.method}") for i, v in enumerate(SMS_VECTORS)]
MAX_AGE_S = 300.0


def verify_sms(
    params: dict[str, str], vector: SmsVector, *, now_s: float | None = None
) -> str | None:
    return verify_vonage_sms(
        params,
        vector.secret,
        vector.method,
        now_s=vector.sent_s if now_s is None else now_s,
        max_age_s=MAX_AGE_S,
    )


# Vonage SMS API `sig`.


@pytest.mark.parametrize("vector", SMS_CASES)
def test_every_vonage_vector_signature_is_reproduced(vector: SmsVector) -> None:
    """The computed sig equals the published one, as lowercase hex."""
    assert vonage_sms_signature(vector.params, vector.secret, vector.method) == vector.sig.lower()


@pytest.mark.parametrize("vector", SMS_CASES)
def test_every_vonage_vector_is_accepted(vector: SmsVector) -> None:
    """Each published vector verifies at the moment it was signed."""
    assert verify_sms(vector.signed(), vector) is None


@pytest.mark.parametrize("vector", SMS_CASES)
def test_a_changed_value_is_refused(vector: SmsVector) -> None:
    """Changing any one value breaks the signature."""
    key = min(k for k in vector.params if k != "timestamp")
    tampered = {**vector.signed(), key: vector.params[key] + "x"}
    assert verify_sms(tampered, vector) == "bad signature"


@pytest.mark.parametrize("vector", SMS_CASES)
def test_an_added_param_is_refused(vector: SmsVector) -> None:
    """A parameter the signer did not send breaks the signature."""
    assert verify_sms({**vector.signed(), "extra": "1"}, vector) == "bad signature"


@pytest.mark.parametrize("vector", SMS_CASES)
def test_a_wrong_secret_is_refused(vector: SmsVector) -> None:
    """A signature made with another secret is refused."""
    reason = verify_vonage_sms(
        vector.signed(), vector.secret + "x", vector.method, now_s=vector.sent_s, max_age_s=60
    )
    assert reason == "bad signature"


@pytest.mark.parametrize("vector", SMS_CASES)
def test_a_wrong_method_is_refused(vector: SmsVector) -> None:
    """A signature checked with another method is refused."""
    for method in SMS_METHODS:
        if method != vector.method:
            reason = verify_vonage_sms(
                vector.signed(), vector.secret, method, now_s=vector.sent_s, max_age_s=60
            )
            assert reason == "bad signature", method


def test_signatures_compare_case_insensitively() -> None:
    """Uppercase hex (as PHP signs) and lowercase hex (as Python signs) are both accepted."""
    for vector in SMS_VECTORS:
        for sig in (vector.sig.upper(), vector.sig.lower()):
            assert verify_sms({**vector.params, "sig": sig}, vector) is None


def test_ampersand_and_equals_in_values_are_signed_as_underscores() -> None:
    """`&` and `=` in a value are replaced by `_` in the signed string (keys untouched)."""
    raw = {"param1": "value&1", "param2": "value=2", "timestamp": "1234567890"}
    replaced = {"param1": "value_1", "param2": "value_2", "timestamp": "1234567890"}
    assert vonage_sms_signature(raw, "signature_secret", "md5") == vonage_sms_signature(
        replaced, "signature_secret", "md5"
    )
    assert (
        vonage_sms_signature(raw, "signature_secret", "md5") == "2bbf0abafb2c55e5af6231513896a2ac"
    )


def test_md5hash_is_the_md5_of_the_sorted_string_and_the_secret() -> None:
    """md5hash hashes `&k=v…` (leading `&`, keys sorted) with the secret appended."""
    params = {"timestamp": "1461605396", "b": "2", "a": "1"}
    expected = hashlib.md5(b"&a=1&b=2&timestamp=1461605396secret").hexdigest()
    assert vonage_sms_signature(params, "secret", "md5hash") == expected


def test_hmac_methods_are_hmacs_of_the_sorted_string() -> None:
    """The HMAC methods key the named hash with the secret over `&k=v…`."""
    signed = b"&a=1&b=2&timestamp=1461605396"
    for method in ("md5", "sha1", "sha256", "sha512"):
        expected = hmac.new(b"secret", signed, method).hexdigest()
        params = {"a": "1", "b": "2", "timestamp": "1461605396"}
        assert vonage_sms_signature(params, "secret", method) == expected


def test_a_sig_param_is_left_out_of_the_signature() -> None:
    """Whatever `sig` params carry, it is not part of what is signed."""
    vector = SMS_VECTORS[0]
    assert vonage_sms_signature({**vector.params, "sig": "0"}, vector.secret, vector.method) == (
        vector.sig
    )


def test_a_missing_sig_is_refused() -> None:
    """Params without `sig` are refused."""
    vector = SMS_VECTORS[0]
    assert verify_sms(dict(vector.params), vector) == "missing sig"


def test_a_missing_timestamp_is_refused() -> None:
    """A signed request without `timestamp` cannot be checked for freshness."""
    params = {"a": "1", "b": "2"}
    params["sig"] = vonage_sms_signature(params, "secret", "sha256")
    assert verify_vonage_sms(params, "secret", "sha256", now_s=0, max_age_s=60) == (
        "missing timestamp"
    )


@pytest.mark.parametrize("timestamp", ["", "soon", "1e9", "-5", "12.5", "nan"])
def test_a_timestamp_that_is_not_whole_seconds_is_refused(timestamp: str) -> None:
    """`timestamp` must be a whole number of seconds."""
    params = {"a": "1", "timestamp": timestamp}
    params["sig"] = vonage_sms_signature(params, "secret", "sha256")
    reason = verify_vonage_sms(params, "secret", "sha256", now_s=1e9, max_age_s=60)
    assert reason == "timestamp not a number"


def test_a_stale_timestamp_is_refused() -> None:
    """A valid signature older than max_age_s is refused as stale."""
    vector = SMS_VECTORS[0]
    assert verify_sms(vector.signed(), vector, now_s=vector.sent_s + MAX_AGE_S + 1) == (
        "stale timestamp"
    )


def test_a_timestamp_exactly_max_age_old_is_accepted() -> None:
    """The age limit itself is still fresh."""
    vector = SMS_VECTORS[0]
    assert verify_sms(vector.signed(), vector, now_s=vector.sent_s + MAX_AGE_S) is None


def test_a_timestamp_too_far_in_the_future_is_refused() -> None:
    """A timestamp more than max_ahead_s ahead of the clock is refused."""
    vector = SMS_VECTORS[0]
    reason = verify_vonage_sms(
        vector.signed(),
        vector.secret,
        vector.method,
        now_s=vector.sent_s - 31,
        max_age_s=MAX_AGE_S,
        max_ahead_s=30,
    )
    assert reason == "timestamp in the future"


def test_a_timestamp_slightly_ahead_is_accepted() -> None:
    """Clock skew within max_ahead_s is tolerated."""
    vector = SMS_VECTORS[0]
    assert verify_sms(vector.signed(), vector, now_s=vector.sent_s - 299) is None


def test_a_refusal_never_shows_the_secret_or_the_expected_signature() -> None:
    """Reasons go to logs, so they hold neither the secret nor the right signature."""
    vector = SMS_VECTORS[-1]
    reason = verify_sms({**vector.params, "sig": "00"}, vector)
    assert reason is not None
    assert vector.secret not in reason
    assert vector.sig.lower() not in reason.lower()


@pytest.mark.parametrize("method", ["MD5", "sha384", "", "hash"])
def test_an_unknown_method_raises_value_error(method: str) -> None:
    """Only the five Vonage methods are known; anything else is a caller's mistake."""
    with pytest.raises(ValueError, match="unknown signature method"):
        vonage_sms_signature({"a": "1"}, "secret", method)
    with pytest.raises(ValueError, match="unknown signature method"):
        sign_vonage_sms({"a": "1"}, "secret", method, now_s=0)
    with pytest.raises(ValueError, match="unknown signature method"):
        verify_vonage_sms({"a": "1"}, "secret", method, now_s=0, max_age_s=60)


@pytest.mark.parametrize("method", SMS_METHODS)
def test_signing_then_verifying_succeeds_for_every_method(method: str) -> None:
    """What sign_vonage_sms produces, verify_vonage_sms accepts."""
    params = {"msisdn": "447700900000", "text": "a=b & c", "messageId": "0A0000000123ABCD"}
    signed = sign_vonage_sms(params, "s3cr3t", method, now_s=1_700_000_000.7)
    assert verify_vonage_sms(signed, "s3cr3t", method, now_s=1_700_000_010, max_age_s=60) is None


def test_signing_adds_a_whole_second_timestamp_only_when_absent() -> None:
    """timestamp is now_s truncated to seconds, unless params already have one."""
    assert sign_vonage_sms({}, "s", "md5hash", now_s=1_700_000_000.9)["timestamp"] == "1700000000"
    kept = sign_vonage_sms({"timestamp": "12"}, "s", "md5hash", now_s=1_700_000_000)
    assert kept["timestamp"] == "12"


def test_signing_uses_the_given_nonce() -> None:
    """A nonce given by the caller is sent as is."""
    assert sign_vonage_sms({}, "s", "sha1", now_s=0, nonce="n-1")["nonce"] == "n-1"


def test_signing_without_a_nonce_adds_a_uuid4() -> None:
    """Without a nonce, each signed request gets a fresh uuid4."""
    first = sign_vonage_sms({}, "s", "sha1", now_s=0)["nonce"]
    second = sign_vonage_sms({}, "s", "sha1", now_s=0)["nonce"]
    assert uuid.UUID(first).version == 4
    assert first != second


def test_signing_leaves_the_given_params_unchanged() -> None:
    """sign_vonage_sms returns a copy."""
    params = {"a": "1"}
    signed = sign_vonage_sms(params, "s", "sha256", now_s=0)
    assert params == {"a": "1"}
    assert set(signed) == {"a", "timestamp", "nonce", "sig"}


# Twilio X-Twilio-Signature.

TWILIO = VECTORS["twilio_signature"]["vectors"][0]
TWILIO_URL: str = TWILIO["url"]
TWILIO_PARAMS: list[tuple[str, str]] = list(TWILIO["params"].items())
TWILIO_TOKEN: str = TWILIO["token"]
TWILIO_SIGNATURE: str = TWILIO["signature"]
JSON_BODY = b'{"property": "value", "boolean": true}'
BODY_SHA256 = "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620"
JSON_URL = TWILIO_URL + "&bodySHA256=" + BODY_SHA256


def test_the_twilio_vector_is_reproduced() -> None:
    """The published signature is recomputed from URL, params and token."""
    assert twilio_signature(TWILIO_URL, TWILIO_PARAMS, TWILIO_TOKEN) == TWILIO_SIGNATURE
    assert sign_twilio(TWILIO_URL, TWILIO_PARAMS, TWILIO_TOKEN) == TWILIO_SIGNATURE


def test_the_twilio_vector_is_accepted() -> None:
    """The published signature verifies."""
    assert verify_twilio(TWILIO_URL, TWILIO_PARAMS, TWILIO_SIGNATURE, TWILIO_TOKEN) is None


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://mycompany.com:443/myapp.php?foo=1&bar=2", "kvajT1Ptam85bY51eRf/AJRuM3w="),
        ("http://mycompany.com:80/myapp.php?foo=1&bar=2", "0ZXoZLH/DfblKGATFgpif+LLRf4="),
    ],
)
def test_a_url_with_its_default_port_signs_to_twilios_vector(url: str, expected: str) -> None:
    """The port is part of the signed URL when the URL carries one."""
    assert twilio_signature(url, TWILIO_PARAMS, TWILIO_TOKEN) == expected


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_a_signature_made_with_the_default_port_is_accepted_on_the_url_without_it(
    scheme: str,
) -> None:
    """Twilio may sign `host:443` while the receiver sees `host`."""
    port = 443 if scheme == "https" else 80
    with_port = f"{scheme}://mycompany.com:{port}/myapp.php?foo=1&bar=2"
    without_port = f"{scheme}://mycompany.com/myapp.php?foo=1&bar=2"
    signature = twilio_signature(with_port, TWILIO_PARAMS, TWILIO_TOKEN)
    assert verify_twilio(without_port, TWILIO_PARAMS, signature, TWILIO_TOKEN) is None


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_a_signature_made_without_the_port_is_accepted_on_the_url_with_it(scheme: str) -> None:
    """Twilio may sign `host` while the receiver sees `host:443`."""
    port = 443 if scheme == "https" else 80
    with_port = f"{scheme}://mycompany.com:{port}/myapp.php?foo=1&bar=2"
    without_port = f"{scheme}://mycompany.com/myapp.php?foo=1&bar=2"
    signature = twilio_signature(without_port, TWILIO_PARAMS, TWILIO_TOKEN)
    assert verify_twilio(with_port, TWILIO_PARAMS, signature, TWILIO_TOKEN) is None


def test_a_signature_made_without_a_custom_port_is_accepted_on_the_url_with_it() -> None:
    """Like Twilio's validator, any port is also tried removed, not only the default one."""
    url = "https://mycompany.com:1234/myapp.php?foo=1&bar=2"
    assert verify_twilio(url, TWILIO_PARAMS, TWILIO_SIGNATURE, TWILIO_TOKEN) is None


def test_a_signature_made_with_a_custom_port_is_accepted_on_that_url() -> None:
    """A URL with a non-default port is also tried as given (Twilio's http :1234 vector)."""
    url = "http://mycompany.com:1234/myapp.php?foo=1&bar=2"
    assert verify_twilio(url, TWILIO_PARAMS, "Zmvh+3yNM1Phv2jhDCwEM3q5ebU=", TWILIO_TOKEN) is None


def test_a_signature_made_with_another_port_is_refused() -> None:
    """Only the URL as given, without its port, or with the default port is tried."""
    signature = twilio_signature(
        "https://mycompany.com:8443/myapp.php?foo=1&bar=2", TWILIO_PARAMS, TWILIO_TOKEN
    )
    assert verify_twilio(TWILIO_URL, TWILIO_PARAMS, signature, TWILIO_TOKEN) == "bad signature"


def test_repeated_names_are_signed_with_their_values_sorted() -> None:
    """A name sent twice signs each value, sorted (Twilio's multi-value vector)."""
    params = [("Sid", "CA123"), ("SidAccount", "AC123"), ("Digits", "5678"), ("Digits", "1234")]
    assert twilio_signature(TWILIO_URL, params, TWILIO_TOKEN) == "IK+Dwps556ElfBT0I3Rgjkr1wJU="


def test_a_repeated_identical_value_counts_once() -> None:
    """The same name and value sent twice sign as once, as Twilio's validators do."""
    once = [("Digits", "1234"), ("From", "+14158675309")]
    twice = [*once, ("Digits", "1234")]
    assert twilio_signature(TWILIO_URL, twice, TWILIO_TOKEN) == (
        twilio_signature(TWILIO_URL, once, TWILIO_TOKEN)
    )


def test_the_order_params_arrive_in_does_not_matter() -> None:
    """Params are sorted by name before signing."""
    shuffled = list(reversed(TWILIO_PARAMS))
    assert twilio_signature(TWILIO_URL, shuffled, TWILIO_TOKEN) == TWILIO_SIGNATURE


def test_a_changed_twilio_param_is_refused() -> None:
    """Changing one value breaks the signature."""
    tampered = [(k, v + "1" if k == "Digits" else v) for k, v in TWILIO_PARAMS]
    assert verify_twilio(TWILIO_URL, tampered, TWILIO_SIGNATURE, TWILIO_TOKEN) == "bad signature"


def test_an_added_twilio_param_is_refused() -> None:
    """A parameter Twilio did not sign breaks the signature."""
    added = [*TWILIO_PARAMS, ("Extra", "1")]
    assert verify_twilio(TWILIO_URL, added, TWILIO_SIGNATURE, TWILIO_TOKEN) == "bad signature"


def test_a_changed_twilio_url_is_refused() -> None:
    """The query string is signed too."""
    url = TWILIO_URL.replace("foo=1", "foo=2")
    assert verify_twilio(url, TWILIO_PARAMS, TWILIO_SIGNATURE, TWILIO_TOKEN) == "bad signature"


def test_a_wrong_twilio_token_is_refused() -> None:
    """A signature checked with another auth token is refused."""
    assert verify_twilio(TWILIO_URL, TWILIO_PARAMS, TWILIO_SIGNATURE, "54321") == "bad signature"


@pytest.mark.parametrize("signature", [None, ""])
def test_a_missing_twilio_signature_is_refused(signature: str | None) -> None:
    """No X-Twilio-Signature header, no entry."""
    assert verify_twilio(TWILIO_URL, TWILIO_PARAMS, signature, TWILIO_TOKEN) == (
        "missing signature"
    )


def test_a_non_ascii_twilio_signature_is_refused_without_an_exception() -> None:
    """A garbled header is a refusal, not a crash."""
    assert verify_twilio(TWILIO_URL, TWILIO_PARAMS, "é" * 28, TWILIO_TOKEN) == "bad signature"


def test_a_json_webhook_whose_body_matches_bodysha256_is_accepted() -> None:
    """Twilio's JSON vector: the URL with bodySHA256 is signed without params."""
    assert hashlib.sha256(JSON_BODY).hexdigest() == BODY_SHA256
    signature = "a9nBmqA0ju/hNViExpshrM61xv4="
    assert twilio_signature(JSON_URL, [], TWILIO_TOKEN) == signature
    assert verify_twilio(JSON_URL, [], signature, TWILIO_TOKEN, body=JSON_BODY) is None


def test_a_json_webhook_ignores_form_params() -> None:
    """With bodySHA256 in the URL, whatever params are passed are not signed."""
    signature = "a9nBmqA0ju/hNViExpshrM61xv4="
    assert verify_twilio(JSON_URL, TWILIO_PARAMS, signature, TWILIO_TOKEN, body=JSON_BODY) is None


def test_a_json_webhook_with_a_changed_body_is_refused() -> None:
    """The body must hash to the signed bodySHA256."""
    body = JSON_BODY.replace(b"true", b"false")
    reason = verify_twilio(JSON_URL, [], "a9nBmqA0ju/hNViExpshrM61xv4=", TWILIO_TOKEN, body=body)
    assert reason == "body does not match bodySHA256"


# Vonage Messages API JWT.

JWT_VECTORS = VECTORS["vonage_messages_webhook_jwt"]["vectors"]
SDK_TOKEN: str = JWT_VECTORS[0]["token"]
SDK_SECRET: str = JWT_VECTORS[0]["secret"]
SDK_IAT_S = 1697634680.0
MESSAGES_TOKEN: str = JWT_VECTORS[2]["token"]
MESSAGES_BODY: bytes = JWT_VECTORS[2]["body"].encode()
MESSAGES_IAT_S = 1738584865.0
SECRET = "qwertyuiopasdfghjklzxcvbnm123456"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(header: object, claims: object, secret: str = SECRET) -> str:
    """A token built by hand, so that tests do not trust the module's own encoder."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    mac = hmac.new(secret.encode(), signing_input.encode(), "sha256").digest()
    return f"{signing_input}.{b64url(mac)}"


def verify_at(
    authorization: str | None,
    now_s: float,
    body: bytes = b"",
    secret: str = SECRET,
    *,
    require_claims: bool = True,
) -> str | None:
    return verify_messages_jwt(
        authorization,
        body,
        secret,
        now_s=now_s,
        max_age_s=MAX_AGE_S,
        require_claims=require_claims,
    )


HS256 = {"alg": "HS256", "typ": "JWT"}
EMPTY_BODY_HASH = hashlib.sha256(b"").hexdigest()  # the payload_hash of an empty body


def test_the_sdk_jwt_is_accepted_with_its_secret() -> None:
    """The SDK's test token verifies with the secret it was made with."""
    assert JWT_VECTORS[0]["valid"] is True
    token = f"Bearer {SDK_TOKEN}"
    assert verify_at(token, SDK_IAT_S + 5, secret=SDK_SECRET, require_claims=False) is None


def test_the_sdk_jwt_lacks_the_payload_hash_a_webhook_must_carry() -> None:
    """The SDK's token hashes no body: a receiver requiring the claims refuses it."""
    reason = verify_at(f"Bearer {SDK_TOKEN}", SDK_IAT_S + 5, secret=SDK_SECRET)
    assert reason == "missing payload_hash"


def test_the_sdk_jwt_is_refused_with_another_secret() -> None:
    """The same token checked with `asdf` is refused."""
    assert JWT_VECTORS[1]["valid"] is False
    secret: str = JWT_VECTORS[1]["secret"]
    reason = verify_at(f"Bearer {SDK_TOKEN}", SDK_IAT_S + 5, secret=secret, require_claims=False)
    assert reason == "bad signature"


def test_the_messages_jwt_is_accepted_with_its_body() -> None:
    """The Vonage-style token verifies, payload hash included."""
    assert hashlib.sha256(MESSAGES_BODY).hexdigest() == JWT_VECTORS[2]["payload_hash"]
    assert verify_at(f"Bearer {MESSAGES_TOKEN}", MESSAGES_IAT_S + 5, MESSAGES_BODY) is None


def test_the_messages_jwt_is_refused_with_a_changed_body() -> None:
    """A body that does not hash to payload_hash is refused."""
    body = MESSAGES_BODY.replace(b"delivered", b"failed")
    assert verify_at(f"Bearer {MESSAGES_TOKEN}", MESSAGES_IAT_S + 5, body) == (
        "body does not match payload_hash"
    )


def test_make_jwt_hs256_reproduces_the_messages_vector() -> None:
    """Same claims in the same order give byte for byte the same token."""
    claims: dict[str, object] = {
        "iat": 1738584865,
        "jti": "c5ba8f24-1a14-4c10-bfdf-3fbe8ce511b5",
        "iss": "Vonage",
        "payload_hash": JWT_VECTORS[2]["payload_hash"],
        "api_key": "a1b2c3d",
        "application_id": "aaaaaaaa-bbbb-cccc-dddd-0123456789ab",
    }
    assert make_jwt_hs256(claims, SECRET) == MESSAGES_TOKEN


def test_a_signed_messages_webhook_verifies() -> None:
    """What sign_messages_webhook produces, verify_messages_jwt accepts with the same body."""
    authorization = sign_messages_webhook(MESSAGES_BODY, SECRET, now_s=1_700_000_000, api_key="k")
    assert verify_at(authorization, 1_700_000_001, MESSAGES_BODY) is None


def test_a_signed_messages_webhook_carries_vonages_claims() -> None:
    """iat, a uuid4 jti, iss Vonage, payload_hash, api_key and the application id."""
    authorization = sign_messages_webhook(
        MESSAGES_BODY, SECRET, now_s=1_700_000_000.8, api_key="a1b2c3d", application_id="app-1"
    )
    assert authorization.startswith("Bearer ")
    segment = authorization.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    assert uuid.UUID(claims.pop("jti")).version == 4
    assert claims == {
        "iat": 1_700_000_000,
        "iss": "Vonage",
        "payload_hash": JWT_VECTORS[2]["payload_hash"],
        "api_key": "a1b2c3d",
        "application_id": "app-1",
    }


def test_a_signed_messages_webhook_has_no_application_id_unless_given() -> None:
    """application_id is optional and left out when not given."""
    authorization = sign_messages_webhook(b"{}", SECRET, now_s=0, api_key="k")
    segment = authorization.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    assert "application_id" not in claims


@pytest.mark.parametrize("size", range(4))
def test_segments_without_padding_are_decoded(size: int) -> None:
    """Base64url segments of every length modulo 4 decode without `=` padding."""
    claims = {"iat": 1_700_000_000, "payload_hash": EMPTY_BODY_HASH, "pad": "x" * size}
    token = make_jwt_hs256(claims, SECRET)
    assert "=" not in token
    assert verify_at(f"Bearer {token}", 1_700_000_000) is None


def test_alg_none_is_refused() -> None:
    """An unsigned token (`alg: none`, empty signature) is refused."""
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    claims = b64url(json.dumps({"iat": 1_700_000_000}).encode())
    assert verify_at(f"Bearer {header}.{claims}.", 1_700_000_000) == "alg is not HS256"


@pytest.mark.parametrize("alg", ["none", "None", "HS512", "RS256", "hs256", None])
def test_any_alg_but_hs256_is_refused_even_when_the_mac_is_right(alg: str | None) -> None:
    """The header must say HS256, whatever the signature."""
    token = jwt({"alg": alg, "typ": "JWT"}, {"iat": 1_700_000_000})
    assert verify_at(f"Bearer {token}", 1_700_000_000) == "alg is not HS256"


def test_an_expired_token_is_refused() -> None:
    """A token whose exp has passed is refused."""
    token = jwt(HS256, {"iat": 1_700_000_000, "exp": 1_700_000_060})
    assert verify_at(f"Bearer {token}", 1_700_000_060) == "expired"


def test_a_token_before_its_exp_is_accepted() -> None:
    """exp is checked against now_s, not the wall clock."""
    token = jwt(HS256, {"iat": 1_700_000_000, "exp": 1_700_000_060,
                        "payload_hash": EMPTY_BODY_HASH})  # fmt: skip
    assert verify_at(f"Bearer {token}", 1_700_000_059) is None


def test_a_stale_iat_is_refused() -> None:
    """A token issued more than max_age_s ago is refused."""
    token = jwt(HS256, {"iat": 1_700_000_000})
    assert verify_at(f"Bearer {token}", 1_700_000_000 + MAX_AGE_S + 1) == "stale iat"


def test_an_iat_in_the_future_is_refused() -> None:
    """A token issued more than max_ahead_s ahead of now_s is refused."""
    token = jwt(HS256, {"iat": 1_700_000_000})
    assert verify_at(f"Bearer {token}", 1_700_000_000 - 301) == "iat in the future"


@pytest.mark.parametrize("iat", ["1700000000", True, None, float("nan"), float("inf"), 10**400])
def test_an_iat_that_is_not_a_finite_number_is_refused(iat: object) -> None:
    """Strings, booleans, null, NaN, infinities and huge integers are not times."""
    token = jwt(HS256, {"iat": iat})
    assert verify_at(f"Bearer {token}", 1_700_000_000) == "iat not a number"


def test_a_token_without_iat_is_refused() -> None:
    """Without iat a captured token could be replayed forever."""
    token = jwt(HS256, {"payload_hash": EMPTY_BODY_HASH})
    assert verify_at(f"Bearer {token}", 0) == "missing iat"


def test_a_token_without_payload_hash_is_refused() -> None:
    """Without payload_hash the token would vouch for any body."""
    token = jwt(HS256, {"iat": 1_700_000_000})
    assert verify_at(f"Bearer {token}", 1_700_000_000, b"any body") == "missing payload_hash"


def test_without_required_claims_exp_iat_and_payload_hash_are_checked_only_when_present() -> None:
    """require_claims=False: a bare signed token passes, for tokens that are not webhooks."""
    token = f"Bearer {jwt(HS256, {})}"
    assert verify_at(token, 0, b"any body", require_claims=False) is None


def test_a_tampered_claims_segment_is_refused() -> None:
    """Claims swapped under a valid header and signature are refused."""
    header, _, signature = MESSAGES_TOKEN.split(".")
    claims = b64url(json.dumps({"iat": MESSAGES_IAT_S}).encode())
    assert verify_at(f"Bearer {header}.{claims}.{signature}", MESSAGES_IAT_S) == "bad signature"


def test_a_token_without_bearer_is_refused() -> None:
    """The bare token, without the Bearer scheme, is refused."""
    assert verify_at(MESSAGES_TOKEN, MESSAGES_IAT_S, MESSAGES_BODY) == "not a Bearer token"


def test_another_authorization_scheme_is_refused() -> None:
    """Basic credentials are not a Messages webhook signature."""
    assert verify_at("Basic YWJjOmRlZg==", MESSAGES_IAT_S) == "not a Bearer token"


def test_the_bearer_scheme_is_case_insensitive() -> None:
    """HTTP auth schemes are case-insensitive."""
    assert verify_at(f"bearer {MESSAGES_TOKEN}", MESSAGES_IAT_S, MESSAGES_BODY) is None


@pytest.mark.parametrize("authorization", [None, ""])
def test_a_missing_authorization_is_refused(authorization: str | None) -> None:
    """No Authorization header, no entry."""
    assert verify_at(authorization, MESSAGES_IAT_S) == "missing Authorization"


@pytest.mark.parametrize(
    ("authorization", "reason"),
    [
        ("Bearer", "malformed token"),
        ("Bearer ", "malformed token"),
        ("Bearer a.b", "malformed token"),
        ("Bearer a.b.c.d", "malformed token"),
        ("Bearer a+b.c.d", "malformed token"),
        ("Bearer é.b.c", "malformed token"),
        ("Bearer a.b.c", "malformed token header"),
        (f"Bearer {b64url(b'not json')}.e30.x", "malformed token header"),
        (f"Bearer {b64url(b'[1]')}.e30.x", "malformed token header"),
        (f"Bearer {b64url(b'[' * 100_000)}.e30.x", "malformed token header"),
        (f"Bearer {b64url(bytes([0xFF, 0xFE]))}.e30.x", "malformed token header"),
    ],
)
def test_a_malformed_token_gives_a_reason_not_an_exception(authorization: str, reason: str) -> None:
    """Garbage in the header is refused with a reason."""
    assert verify_at(authorization, 0) == reason


def test_well_signed_claims_that_are_not_a_json_object_are_refused() -> None:
    """A correctly signed payload that is not a JSON object is refused."""
    header = b64url(json.dumps(HS256).encode())
    signing_input = f"{header}.{b64url(b'[1, 2]')}"
    mac = b64url(hmac.new(SECRET.encode(), signing_input.encode(), "sha256").digest())
    assert verify_at(f"Bearer {signing_input}.{mac}", 0) == "malformed token claims"


def test_a_jwt_refusal_never_shows_the_secret() -> None:
    """Reasons go to logs, so they never hold the secret or the expected signature."""
    header, claims, signature = MESSAGES_TOKEN.split(".")
    reason = verify_at(f"Bearer {header}.{claims}.AAAA", MESSAGES_IAT_S, MESSAGES_BODY)
    assert reason == "bad signature"
    assert SECRET not in reason
    assert signature not in reason
