"""The Vonage Messages API adapter: JSON requests, application tokens, recorded answers."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from sms_blaster.models import Encoding, Message, Outcome
from sms_blaster.providers.base import Provider
from sms_blaster.providers.vonage_messages import VonageMessages

FIXTURES = Path(__file__).parent / "fixtures" / "vonage_messages"
APPLICATION_ID = "aaaaaaaa-bbbb-cccc-dddd-0123456789ab"
START_S = 1_700_000_000.0

# One key pair for the module: generating RSA keys takes a noticeable fraction of a second.
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PRIVATE_PEM = KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
)
BASIC = VonageMessages("My Shop", "http://messages.test/", api_key="abcd1234", api_secret="s3cr3t!")


class FakeClock:
    def __init__(self, now_s: float = START_S) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


def message(text: str = 'Hi "Ana" & co', encoding: Encoding = Encoding.GSM7) -> Message:
    return Message(3, "447911123456", text, encoding, 1, "c0ffee000000-3")


def answer(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def body_of(provider: VonageMessages, sent: Message) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(provider.build_request(sent).body)
    return decoded


def application(clock: FakeClock) -> VonageMessages:
    return VonageMessages(
        "My Shop", application_id=APPLICATION_ID, private_key_pem=PRIVATE_PEM, clock=clock
    )


def bearer_token(provider: VonageMessages) -> str:
    authorization = provider.build_request(message()).headers["Authorization"]
    scheme, _, token = authorization.partition(" ")
    assert scheme == "Bearer"
    return token


def b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def verified_claims(token: str) -> dict[str, Any]:
    """The token's claims, after checking its RS256 signature with the public key."""
    header, claims, signature = token.split(".")
    KEY.public_key().verify(
        b64url_decode(signature),
        f"{header}.{claims}".encode(),
        padding.PKCS1v15(),
        hashes.SHA256(),
    )
    assert json.loads(b64url_decode(header)) == {"alg": "RS256", "typ": "JWT"}
    decoded: dict[str, Any] = json.loads(b64url_decode(claims))
    return decoded


def test_the_adapter_fits_the_provider_interface() -> None:
    """It is a Provider, named as --provider spells it, with its status route."""
    provider: Provider = BASIC
    assert (provider.name, provider.receipt_route) == (
        "vonage-messages",
        "/webhooks/messages/status",
    )


def test_request_is_a_json_post_to_v1_messages() -> None:
    """The SMS channel's fields, with the message's client_ref."""
    request = BASIC.build_request(message())
    assert request.url == "http://messages.test/v1/messages"
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.body) == {
        "message_type": "text",
        "channel": "sms",
        "to": "447911123456",
        "from": "My Shop",
        "text": 'Hi "Ana" & co',
        "client_ref": "c0ffee000000-3",
        "sms": {"encoding_type": "text"},
    }


def test_the_default_endpoint_is_api_nexmo_com() -> None:
    """Without --base-url the request goes to Vonage's global API host."""
    provider = VonageMessages("My Shop", api_key="k", api_secret="s")
    assert provider.build_request(message()).url == "https://api.nexmo.com/v1/messages"


def test_basic_auth_carries_the_key_and_secret_in_the_header_only() -> None:
    """Basic base64(key:secret); the secret is never in the body."""
    request = BASIC.build_request(message())
    expected = "Basic " + base64.b64encode(b"abcd1234:s3cr3t!").decode()
    assert request.headers["Authorization"] == expected
    assert b"s3cr3t" not in request.body
    assert b"abcd1234" not in request.body


def test_webhook_url_is_sent_when_given() -> None:
    """--callback-url becomes the per-message webhook_url; without it the field is absent."""
    provider = VonageMessages(
        "My Shop", api_key="k", api_secret="s", webhook_url="https://hooks.test/status?a=1&b=2"
    )
    assert body_of(provider, message())["webhook_url"] == "https://hooks.test/status?a=1&b=2"
    assert "webhook_url" not in body_of(BASIC, message())


def test_ucs2_messages_ask_for_unicode_encoding() -> None:
    """encoding_type follows our own segment count: unicode for UCS-2, with the text intact."""
    body = body_of(BASIC, message("Łukasz 😀", Encoding.UCS2))
    assert body["sms"] == {"encoding_type": "unicode"}
    assert body["text"] == "Łukasz 😀"


def test_texts_that_need_escaping_stay_valid_json() -> None:
    """Quotes, backslashes, newlines and control characters survive the round trip."""
    text = 'line "one"\\\nline\ttwo\x07 </script>'
    assert body_of(BASIC, message(text))["text"] == text


def test_a_sender_name_that_needs_escaping_stays_valid_json() -> None:
    """The sender is encoded once, properly."""
    provider = VonageMessages('Ana "B"', api_key="k", api_secret="s")
    assert body_of(provider, message())["from"] == 'Ana "B"'


def test_application_auth_sends_an_rs256_token_the_public_key_verifies() -> None:
    """Authorization: Bearer <JWT> signed with the application's private key."""
    assert verified_claims(bearer_token(application(FakeClock())))["application_id"]


def test_the_token_claims_name_the_application_and_last_fifteen_minutes() -> None:
    """application_id, iat from the clock, a uuid4 jti, exp = iat + 900."""
    claims = verified_claims(bearer_token(application(FakeClock(START_S + 0.7))))
    assert claims["application_id"] == APPLICATION_ID
    assert claims["iat"] == int(START_S)
    assert claims["exp"] == claims["iat"] + 900
    assert uuid.UUID(claims["jti"]).version == 4


def test_the_token_is_reused_while_it_has_more_than_a_minute_left() -> None:
    """Signing once per 14 minutes, not once per message."""
    clock = FakeClock()
    provider = application(clock)
    first = bearer_token(provider)
    clock.now_s = START_S + 839
    assert bearer_token(provider) == first


def test_the_token_is_renewed_a_minute_before_it_expires() -> None:
    """At exp - 60 s a new token is minted, with a new iat and jti."""
    clock = FakeClock()
    provider = application(clock)
    first = verified_claims(bearer_token(provider))
    clock.now_s = START_S + 840
    renewed = verified_claims(bearer_token(provider))
    assert renewed["iat"] == first["iat"] + 840
    assert renewed["jti"] != first["jti"]


def test_a_request_built_before_renewal_keeps_its_token() -> None:
    """Renewal replaces the headers; it does not change those of requests already built."""
    clock = FakeClock()
    provider = application(clock)
    before = provider.build_request(message())
    token = before.headers["Authorization"]
    clock.now_s = START_S + 900
    assert provider.build_request(message()).headers["Authorization"] != token
    assert before.headers["Authorization"] == token


def test_application_auth_wins_over_key_and_secret() -> None:
    """With both, requests are signed as the application (Vonage takes one or the other)."""
    provider = VonageMessages(
        "My Shop",
        api_key="k",
        api_secret="s",
        application_id=APPLICATION_ID,
        private_key_pem=PRIVATE_PEM,
        clock=FakeClock(),
    )
    assert provider.build_request(message()).headers["Authorization"].startswith("Bearer ")


def test_no_credentials_is_an_error_that_names_the_options() -> None:
    """Neither pair given: say which options and environment variables to set."""
    with pytest.raises(ValueError, match="--api-key") as caught:
        VonageMessages("My Shop", api_key="k")
    for hint in ("--api-secret", "--application-id", "--private-key", "VONAGE_API_KEY"):
        assert hint in str(caught.value)


def test_half_the_application_pair_is_an_error_that_names_the_missing_half() -> None:
    """An application id without a key (or the reverse) is a mistake, not a fallback."""
    with pytest.raises(ValueError, match="needs --private-key"):
        VonageMessages("My Shop", application_id=APPLICATION_ID, api_key="k", api_secret="s")
    with pytest.raises(ValueError, match="needs --application-id"):
        VonageMessages("My Shop", private_key_pem=PRIVATE_PEM)


def test_a_file_that_is_not_a_private_key_is_named_without_its_contents() -> None:
    """A bad key says what is wrong and never echoes the key material."""
    bogus = b"-----BEGIN PRIVATE KEY-----\nTUlJQ0VFTlVGU0VDUkVU\n-----END PRIVATE KEY-----\n"
    with pytest.raises(ValueError, match="not a PEM private key") as caught:
        VonageMessages("My Shop", application_id=APPLICATION_ID, private_key_pem=bogus)
    assert "TUlJQ0VFTlVGU0VDUkVU" not in str(caught.value)


def test_a_passphrase_protected_key_is_refused() -> None:
    """An encrypted PEM cannot be used without a passphrase: say so."""
    encrypted = KEY.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
    with pytest.raises(ValueError, match="passphrase"):
        VonageMessages("My Shop", application_id=APPLICATION_ID, private_key_pem=encrypted)


def test_a_key_that_is_not_rsa_is_refused() -> None:
    """Application tokens are RS256: an EC key cannot sign them."""
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ValueError, match="not an RSA key"):
        VonageMessages("My Shop", application_id=APPLICATION_ID, private_key_pem=ec_pem)


@pytest.mark.parametrize(
    ("name", "message_uuid"),
    [
        ("send_message.json", "d8f86df1-dec6-442f-870a-2241be27d721"),
        ("send_message_with_failover.json", "d8f86df1-dec6-442f-870a-2241be27d721"),
        ("sms-success.json", "aaaaaaaa-bbbb-4ccc-8ddd-0123456789ab"),
    ],
)
def test_a_202_with_a_message_uuid_is_sent(name: str, message_uuid: str) -> None:
    """202 Accepted: sent, the message_uuid is the id; the price comes later, in the status."""
    result = BASIC.parse_response(202, {}, answer(name))
    assert result.outcome is Outcome.SENT
    assert result.message_ids == (message_uuid,)
    assert result.price is None


@pytest.mark.parametrize(
    "body",
    [b"", b"<html>ok</html>", b"{}", b"[]", b'{"message_uuid": ""}', b'{"message_uuid": 7}'],
)
def test_a_2xx_without_a_readable_message_uuid_is_ambiguous(body: bytes) -> None:
    """The provider took the request but does not say which message: it may have been sent."""
    result = BASIC.parse_response(202, {}, body)
    assert (result.outcome, result.code) == (Outcome.AMBIGUOUS, "bad_answer")


@pytest.mark.parametrize(("status", "name"), [(401, "401.json"), (403, "403.json")])
def test_refused_credentials_are_fatal_and_say_what_to_give(status: int, name: str) -> None:
    """401/403 stop the run, with the options that fix it."""
    result = BASIC.parse_response(status, {}, answer(name))
    assert (result.outcome, result.code) == (Outcome.FATAL, f"http_{status}")
    assert "--application-id" in result.detail


def test_low_balance_is_fatal_with_the_providers_words() -> None:
    """402: out of credit stops the run; the problem's title and detail are kept."""
    result = BASIC.parse_response(402, {}, answer("low_balance_error.json"))
    assert (result.outcome, result.code) == (Outcome.FATAL, "http_402")
    assert "Low balance: This request could not be performed" in result.detail


def test_not_found_is_fatal_and_points_at_the_base_url() -> None:
    """404 on POST /v1/messages means the address is wrong, for every message."""
    result = BASIC.parse_response(404, {}, answer("not_found.json"))
    assert (result.outcome, result.code) == (Outcome.FATAL, "http_404")
    assert "--base-url" in result.detail


def test_a_redirect_is_fatal() -> None:
    """A 301 or 307 means the base URL is wrong: POSTs are not re-sent elsewhere."""
    assert BASIC.parse_response(307, {}, b"").outcome is Outcome.FATAL


def test_invalid_parameters_are_permanent_with_the_error_code_and_reasons() -> None:
    """422: rejected, code from the type's fragment, text naming each invalid parameter."""
    result = BASIC.parse_response(422, {}, answer("invalid_error.json"))
    assert (result.outcome, result.code) == (Outcome.PERMANENT, "1150")
    assert result.detail == (
        "Invalid params: The value of one or more parameters is invalid. "
        "(messenger.tag: invalid value)"
    )


def test_invalid_json_is_permanent_with_its_named_fragment() -> None:
    """A fragment that is a name, not a number, is the code as it stands."""
    result = BASIC.parse_response(422, {}, answer("bad-request.json"))
    assert (result.outcome, result.code) == (Outcome.PERMANENT, "invalid-json")
    assert result.detail.startswith("The request body did not contain valid JSON: Unexpected")


def test_a_problem_type_without_a_fragment_takes_its_title_as_the_code() -> None:
    """400 with a plain type URL: the title names the error."""
    body = b'{"type":"https://developer.vonage.com/api-errors","title":"Bad Request"}'
    result = BASIC.parse_response(400, {}, body)
    assert (result.outcome, result.code, result.detail) == (
        Outcome.PERMANENT,
        "Bad Request",
        "Bad Request",
    )


@pytest.mark.parametrize("status", [400, 409, 413, 415])
def test_other_4xx_without_a_problem_are_permanent(status: int) -> None:
    """A refusal the body does not explain keeps the HTTP status as its code."""
    result = BASIC.parse_response(status, {}, b"<html>no</html>")
    assert (result.outcome, result.code) == (Outcome.PERMANENT, f"http_{status}")


def test_rate_limit_hit_is_a_throttle_with_retry_after_seconds() -> None:
    """429 with Retry-After: 15 waits 15 s; the problem's words are kept."""
    result = BASIC.parse_response(429, {"Retry-After": "15"}, answer("rate-limit.json"))
    assert (result.outcome, result.code, result.wait_s) == (Outcome.THROTTLED, "http_429", 15.0)
    assert "Rate Limit Hit" in result.detail


def test_a_retry_after_date_is_read_against_the_injected_clock() -> None:
    """Retry-After as an HTTP date: the wait is that date minus now."""
    provider = VonageMessages("My Shop", api_key="k", api_secret="s", clock=FakeClock(1445412480.0))
    headers = {"Retry-After": "Wed, 21 Oct 2015 07:28:05 GMT"}
    assert provider.parse_response(429, headers, answer("429.json")).wait_s == 5.0


def test_a_throttle_without_retry_after_has_no_wait_hint() -> None:
    """429 alone: throttled, the engine's backoff decides the wait."""
    result = BASIC.parse_response(429, {}, answer("429.json"))
    assert (result.outcome, result.wait_s) == (Outcome.THROTTLED, None)


@pytest.mark.parametrize(
    ("status", "body"),
    [(500, answer("500.json")), (502, b""), (503, b""), (504, b"<html>gateway</html>")],
)
def test_server_errors_are_ambiguous(status: int, body: bytes) -> None:
    """A 5xx may follow acceptance: unknown, never resent by default."""
    result = BASIC.parse_response(status, {}, body)
    assert (result.outcome, result.code) == (Outcome.AMBIGUOUS, f"http_{status}")


def test_a_503_asking_to_come_back_later_is_safe_to_retry() -> None:
    """503 with Retry-After was refused before processing: transient, with the wait."""
    result = BASIC.parse_response(503, {"Retry-After": "2"}, b"")
    assert (result.outcome, result.wait_s) == (Outcome.TRANSIENT, 2.0)


def test_one_send_costs_one_request_whatever_its_segments() -> None:
    """Vonage counts requests against the limit, not parts."""
    long_message = Message(4, "447911123456", "x" * 500, Encoding.GSM7, 4, "c0ffee000000-4")
    assert BASIC.cost(long_message) == 1.0
