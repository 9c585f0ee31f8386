"""The Twilio adapter: request bodies and the classification of recorded answers."""

from __future__ import annotations

import base64
from decimal import Decimal
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from sms_blaster.models import Encoding, Message, Outcome
from sms_blaster.providers.twilio import Twilio

FIXTURES = Path(__file__).parent / "fixtures" / "twilio"
SID = "AC0123456789abcdef0123456789abcdef"
TOKEN = "t0k3n&secret"
PROVIDER = Twilio(SID, TOKEN, "15017122661", "http://twilio.test/")


def message(text: str = "Hi Ana & co", encoding: Encoding = Encoding.GSM7) -> Message:
    return Message(3, "447911123456", text, encoding, 1, "c0ffee000000-3")


def fields(provider: Twilio, msg: Message | None = None) -> dict[str, list[str]]:
    body = provider.build_request(msg or message()).body.decode()
    return parse_qs(body, keep_blank_values=True, strict_parsing=True)


def answer(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_request_is_a_form_post_to_the_account_messages_with_basic_auth() -> None:
    """URL under the account, form and JSON headers, the credentials in the Basic header."""
    request = PROVIDER.build_request(message())
    assert request.url == f"http://twilio.test/2010-04-01/Accounts/{SID}/Messages.json"
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert request.headers["Accept"] == "application/json"
    token = base64.b64encode(f"{SID}:{TOKEN}".encode()).decode()
    assert request.headers["Authorization"] == f"Basic {token}"


def test_body_has_to_from_and_body_with_plus_prefixed_numbers() -> None:
    """To and a digits-only sender get their '+'; the text is form-encoded."""
    assert fields(PROVIDER) == {
        "To": ["+447911123456"],
        "From": ["+15017122661"],
        "Body": ["Hi Ana & co"],
    }


def test_the_auth_token_is_never_in_the_body() -> None:
    """Neither the token nor the account SID travels in the form."""
    body = PROVIDER.build_request(message()).body
    assert b"t0k3n" not in body
    assert SID.encode() not in body


def test_a_sender_given_with_its_plus_is_kept() -> None:
    """'+15017122661' is not prefixed a second time."""
    assert fields(Twilio(SID, TOKEN, "+15017122661"))["From"] == ["+15017122661"]


def test_an_alphanumeric_sender_goes_as_given() -> None:
    """An alphanumeric sender id gets no '+'."""
    assert fields(Twilio(SID, TOKEN, "My Shop"))["From"] == ["My Shop"]


def test_a_messaging_service_replaces_from() -> None:
    """With a Messaging Service and no sender, the service picks the number: no From."""
    provider = Twilio(SID, TOKEN, None, messaging_service_sid="MG0123")
    body = fields(provider)
    assert body["MessagingServiceSid"] == ["MG0123"]
    assert "From" not in body


def test_a_messaging_service_with_a_sender_sends_both() -> None:
    """A sender given with a Messaging Service is sent as From as well."""
    body = fields(Twilio(SID, TOKEN, "My Shop", messaging_service_sid="MG0123"))
    assert (body["From"], body["MessagingServiceSid"]) == (["My Shop"], ["MG0123"])


def test_neither_sender_nor_messaging_service_is_refused() -> None:
    """Twilio needs one of them; the error says which options give it."""
    with pytest.raises(ValueError, match="--from or --messaging-service-sid"):
        Twilio(SID, TOKEN, None)


def test_status_callback_carries_the_client_ref_in_its_query() -> None:
    """Twilio echoes no reference, so the receiver reads client_ref from the callback URL."""
    provider = Twilio(
        SID, TOKEN, "1555", status_callback="https://hooks.test/webhooks/twilio/status"
    )
    callback = fields(provider)["StatusCallback"]
    assert callback == ["https://hooks.test/webhooks/twilio/status?client_ref=c0ffee000000-3"]


def test_status_callback_with_a_query_gets_the_client_ref_appended() -> None:
    """An existing query is kept and the ref joins it with '&'."""
    provider = Twilio(SID, TOKEN, "1555", status_callback="https://hooks.test/s?key=a%26b")
    (callback,) = fields(provider)["StatusCallback"]
    assert callback == "https://hooks.test/s?key=a%26b&client_ref=c0ffee000000-3"
    assert parse_qs(urlsplit(callback).query) == {"key": ["a&b"], "client_ref": ["c0ffee000000-3"]}


def test_status_callback_keeps_a_fragment_after_the_client_ref() -> None:
    """The ref goes into the query, before any '#fragment'."""
    provider = Twilio(SID, TOKEN, "1555", status_callback="https://hooks.test/s#top")
    callback = fields(provider)["StatusCallback"]
    assert callback == ["https://hooks.test/s?client_ref=c0ffee000000-3#top"]


def test_no_status_callback_means_no_field() -> None:
    """Without a callback URL the form has no StatusCallback."""
    assert "StatusCallback" not in fields(PROVIDER)


def test_ucs2_text_round_trips_through_the_form_body() -> None:
    """Non-GSM text is UTF-8 percent-encoded; Twilio chooses the encoding itself."""
    text = "Łukasz 😀 + ünïcödé & 100%"
    assert fields(PROVIDER, message(text, Encoding.UCS2))["Body"] == [text]


def test_cost_is_the_number_of_segments() -> None:
    """Twilio's limits count segments, not requests."""
    long_message = Message(1, "447911123456", "x" * 300, Encoding.GSM7, 2, "c0ffee000000-1")
    assert PROVIDER.cost(long_message) == 2.0


def test_the_recorded_create_answer_is_sent_with_its_sid_and_price() -> None:
    """twilio-python's 201 (with a Messaging Service): the sid, and the price made positive."""
    result = PROVIDER.parse_response(201, {}, answer("create-201.json"))
    assert result.outcome is Outcome.SENT
    assert result.message_ids == ("SMaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",)
    assert result.price == Decimal("0.00750")


@pytest.mark.parametrize("name", ["create-201-docs.json", "create-201-no-service.json"])
def test_a_create_answer_without_a_price_yet_is_sent(name: str) -> None:
    """Twilio usually gives the price as null at creation: sent, price unknown."""
    result = PROVIDER.parse_response(201, {}, answer(name))
    assert result.outcome is Outcome.SENT
    assert result.message_ids == ("SMaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",)
    assert result.price is None


def test_a_200_with_a_sid_is_sent_too() -> None:
    """Any 2xx naming the message counts as created."""
    assert PROVIDER.parse_response(200, {}, b'{"sid": "SM1"}').outcome is Outcome.SENT


@pytest.mark.parametrize(
    "body", [b"", b"<html>ok</html>", b"[]", b'{"status": "queued"}', b'{"sid": null}']
)
def test_a_2xx_without_a_sid_is_ambiguous(body: bytes) -> None:
    """The request arrived but the answer does not say what became of it: it may have been sent."""
    result = PROVIDER.parse_response(201, {}, body)
    assert (result.outcome, result.code) == (Outcome.AMBIGUOUS, "bad_answer")


@pytest.mark.parametrize(
    ("name", "status", "code"),
    [("error-21211.json", 400, "21211"), ("error-21610.json", 400, "21610")],
)
def test_recipient_errors_are_permanent_with_twilios_code(
    name: str, status: int, code: str
) -> None:
    """Invalid and unsubscribed recipients fail that message only."""
    result = PROVIDER.parse_response(status, {}, answer(name))
    assert (result.outcome, result.code) == (Outcome.PERMANENT, code)


def test_the_error_message_is_kept_as_detail() -> None:
    """Twilio's own message explains a refused row."""
    result = PROVIDER.parse_response(400, {}, answer("error-21211.json"))
    assert result.detail == "The 'To' number +15005550001 is not a valid phone number."


@pytest.mark.parametrize("code", ["21408", "21606", "21612", "21614"])
def test_other_per_message_codes_are_permanent(code: str) -> None:
    """Region, route and number-type refusals depend on the recipient, so the run goes on."""
    body = f'{{"code": {code}, "message": "x", "status": 400}}'.encode()
    assert PROVIDER.parse_response(400, {}, body).outcome is Outcome.PERMANENT


def test_bad_credentials_are_fatal_and_say_what_to_check() -> None:
    """20003 stops the run, naming the settings to fix."""
    result = PROVIDER.parse_response(401, {}, answer("error-20003.json"))
    assert (result.outcome, result.code) == (Outcome.FATAL, "20003")
    assert "TWILIO_AUTH_TOKEN" in result.detail


@pytest.mark.parametrize(("code", "hint"), [("20005", "not active"), ("21212", "--from")])
def test_account_and_sender_codes_are_fatal_whatever_the_status(code: str, hint: str) -> None:
    """An inactive account or an invalid sender fails every message: stop, saying why."""
    body = f'{{"code": {code}, "message": "x", "status": 400}}'.encode()
    result = PROVIDER.parse_response(400, {}, body)
    assert (result.outcome, result.code) == (Outcome.FATAL, code)
    assert hint in result.detail


@pytest.mark.parametrize("status", [401, 402, 403])
def test_refused_account_statuses_are_fatal_without_a_body(status: int) -> None:
    """401, 402 and 403 stop the run even when the body is not Twilio's."""
    result = PROVIDER.parse_response(status, {}, b"<html>denied</html>")
    assert (result.outcome, result.code) == (Outcome.FATAL, f"http_{status}")


def test_the_recorded_throttle_waits_for_retry_after() -> None:
    """429 with code 20429 throttles, with the Retry-After wait."""
    result = PROVIDER.parse_response(429, {"Retry-After": "2"}, answer("error-20429.json"))
    assert (result.outcome, result.code, result.wait_s) == (Outcome.THROTTLED, "20429", 2.0)


def test_a_bare_429_throttles_without_a_hint() -> None:
    """HTTP 429 throttles whatever the body; no Retry-After, no wait hint."""
    result = PROVIDER.parse_response(429, {}, b"")
    assert (result.outcome, result.code, result.wait_s) == (Outcome.THROTTLED, "http_429", None)


def test_code_20429_throttles_under_any_status() -> None:
    """The Twilio code alone is enough to throttle."""
    body = b'{"code": 20429, "message": "Too Many Requests", "status": 400}'
    assert PROVIDER.parse_response(400, {}, body).outcome is Outcome.THROTTLED


def test_a_503_asking_to_come_back_later_is_transient() -> None:
    """A 503 with Retry-After was refused before processing: safe to resend after the wait."""
    result = PROVIDER.parse_response(503, {"Retry-After": "1"}, b"")
    assert (result.outcome, result.wait_s) == (Outcome.TRANSIENT, 1.0)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_other_server_errors_are_ambiguous(status: int) -> None:
    """A 5xx may come after the message was created: never resent by default."""
    assert PROVIDER.parse_response(status, {}, b"").outcome is Outcome.AMBIGUOUS


@pytest.mark.parametrize("status", [404, 405])
def test_a_wrong_address_is_fatal(status: int) -> None:
    """No Messages API at this URL: stop and check --base-url."""
    result = PROVIDER.parse_response(status, {}, b"")
    assert result.outcome is Outcome.FATAL
    assert "--base-url" in result.detail


def test_a_redirect_is_fatal() -> None:
    """A 3xx means the base URL is wrong: a POST is not re-sent elsewhere."""
    assert PROVIDER.parse_response(301, {}, b"").outcome is Outcome.FATAL


def test_an_unknown_4xx_is_permanent_with_the_http_status_as_code() -> None:
    """A 4xx without Twilio's JSON fails that message with http_<status>."""
    result = PROVIDER.parse_response(400, {}, b"bad request")
    assert (result.outcome, result.code) == (Outcome.PERMANENT, "http_400")


def test_twilio_is_never_asked_to_smart_encode() -> None:
    """sms-blaster replaces look-alikes itself (--smart-encoding): no SmartEncoded field, so the
    record's parts and encoding are those of the text Twilio gets."""
    assert "SmartEncoded" not in fields(PROVIDER, message("It\u2019s 2 \u2013 3", Encoding.UCS2))


def test_a_created_answer_for_another_number_is_unknown() -> None:
    """A stray answer read as this request's names another `to`: it says nothing of this one."""
    result = PROVIDER.parse_response(201, {}, answer("create-201.json"), "447911123456")
    assert (result.outcome, result.code, result.detail) == (
        Outcome.AMBIGUOUS,
        "bad_answer",
        "the answer is for another number",
    )


@pytest.mark.parametrize("body", [b'{"sid": "SM1", "to": "+44 7911 123456"}', b'{"sid": "SM1"}'])
def test_a_created_answer_naming_the_requests_number_or_none_is_sent(body: bytes) -> None:
    """Digits are compared (Twilio writes `to` with its '+'); an answer with no `to` is taken."""
    result = PROVIDER.parse_response(201, {}, body, "447911123456")
    assert (result.outcome, result.message_ids) == (Outcome.SENT, ("SM1",))
