"""The Vonage SMS API adapter: request bodies and the classification of recorded answers."""

from __future__ import annotations

import base64
from decimal import Decimal
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from sms_blaster.models import Encoding, Message, Outcome
from sms_blaster.providers.base import parse_retry_after
from sms_blaster.providers.vonage_sms import VonageSms

FIXTURES = Path(__file__).parent / "fixtures" / "vonage_sms"
PROVIDER = VonageSms("abcd1234", "s3cr3t!", "My Shop", "http://sms.test/")


def message(text: str = "Hi Ana & co", encoding: Encoding = Encoding.GSM7) -> Message:
    return Message(3, "447911123456", text, encoding, 1, "c0ffee000000-3")


def answer(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_request_is_a_form_post_to_sms_json_with_basic_auth() -> None:
    """Body fields are form-encoded; the credentials travel in the Basic header only."""
    request = PROVIDER.build_request(message())
    assert request.url == "http://sms.test/sms/json"
    assert parse_qs(request.body.decode(), strict_parsing=True) == {
        "from": ["My Shop"],
        "to": ["447911123456"],
        "client-ref": ["c0ffee000000-3"],
        "text": ["Hi Ana & co"],
    }
    assert (
        request.headers["Authorization"]
        == "Basic " + base64.b64encode(b"abcd1234:s3cr3t!").decode()
    )
    assert b"s3cr3t" not in request.body


def test_ucs2_messages_are_sent_as_type_unicode() -> None:
    """type=unicode exactly when the text needs UCS-2, with the text UTF-8 percent-encoded."""
    body = parse_qs(PROVIDER.build_request(message("Łukasz 😀", Encoding.UCS2)).body.decode())
    assert body["type"] == ["unicode"]
    assert body["text"] == ["Łukasz 😀"]
    assert "type" not in parse_qs(PROVIDER.build_request(message()).body.decode())


def test_success_gives_ids_and_price() -> None:
    """status 0 on every part: sent, with each part's id and the summed price."""
    result = PROVIDER.parse_response(200, {}, answer("send-success.json"))
    assert result.outcome is Outcome.SENT
    assert result.message_ids == ("0C000000217B7F02",)
    assert result.price == Decimal("0.03330000")


def test_a_long_message_reports_every_part() -> None:
    """Three parts: three ids, prices added."""
    result = PROVIDER.parse_response(200, {}, answer("multi.json"))
    assert result.outcome is Outcome.SENT
    assert len(result.message_ids) == 3
    assert result.price == Decimal("0.15000000")


def test_throttle_wait_hint_is_read_in_milliseconds() -> None:
    """'please wait [ 702 ]' means 0.702 s."""
    result = PROVIDER.parse_response(200, {}, answer("ratelimit.json"))
    assert (result.outcome, result.code, result.wait_s) == (Outcome.THROTTLED, "1", 0.702)


@pytest.mark.parametrize("name", ["ratelimit-notime.json", "mt-limit.json"])
def test_throttles_without_a_usable_hint_still_throttle(name: str) -> None:
    """Other status 1 texts are throttles with no hint."""
    result = PROVIDER.parse_response(200, {}, answer(name))
    assert (result.outcome, result.wait_s) == (Outcome.THROTTLED, None)


@pytest.mark.parametrize(
    ("name", "outcome", "code"),
    [
        ("fail.json", Outcome.PERMANENT, "2"),
        ("barred.json", Outcome.PERMANENT, "7"),
        ("fail-server.json", Outcome.TRANSIENT, "5"),
        ("bad-credentials.json", Outcome.FATAL, "4"),
    ],
)
def test_recorded_errors_are_classified(name: str, outcome: Outcome, code: str) -> None:
    """Recorded error answers map to the classes of docs/architecture.md."""
    result = PROVIDER.parse_response(200, {}, answer(name))
    assert (result.outcome, result.code) == (outcome, code)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        ("8", Outcome.FATAL),
        ("9", Outcome.FATAL),
        ("10", Outcome.THROTTLED),
        ("15", Outcome.PERMANENT),
    ],
)
def test_other_statuses_follow_the_table(status: str, outcome: Outcome) -> None:
    """Barred account and no credit are fatal, too many binds a throttle, bad sender permanent."""
    body = f'{{"message-count":"1","messages":[{{"status":"{status}","error-text":"x"}}]}}'
    assert PROVIDER.parse_response(200, {}, body.encode()).outcome is outcome


def test_a_partly_accepted_message_is_not_retried() -> None:
    """Part 1 accepted, part 2 throttled: resending would repeat part 1, so it is final."""
    result = PROVIDER.parse_response(200, {}, answer("partial-error.json"))
    assert (result.outcome, result.code) == (Outcome.PERMANENT, "partial")
    assert result.message_ids == ("3295d748-4e14-4681-af78-166dca3c5aab",)


@pytest.mark.parametrize("body", [b"", b"<html>oops</html>", b'{"messages": []}', b'{"x": 1}'])
def test_an_unreadable_200_is_ambiguous(body: bytes) -> None:
    """The provider got the request but the answer says nothing: it may have been sent."""
    assert PROVIDER.parse_response(200, {}, body).outcome is Outcome.AMBIGUOUS


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (401, Outcome.FATAL),
        (403, Outcome.FATAL),
        (404, Outcome.FATAL),
        (429, Outcome.THROTTLED),
        (503, Outcome.AMBIGUOUS),
        (500, Outcome.AMBIGUOUS),
        (502, Outcome.AMBIGUOUS),
        (504, Outcome.AMBIGUOUS),
        (400, Outcome.PERMANENT),
    ],
)
def test_http_statuses_are_classified(status: int, outcome: Outcome) -> None:
    """Refusals before processing are safe to retry; errors that may follow processing are not."""
    assert PROVIDER.parse_response(status, {}, b"").outcome is outcome


def test_a_503_asking_to_come_back_later_is_safe_to_retry() -> None:
    """A 503 with Retry-After was refused before processing: transient, with the wait."""
    result = PROVIDER.parse_response(503, {"Retry-After": "1"}, b"")
    assert (result.outcome, result.wait_s) == (Outcome.TRANSIENT, 1.0)


def test_a_redirect_is_fatal() -> None:
    """A 301 or 307 means the base URL is wrong: POSTs are not re-sent elsewhere."""
    assert PROVIDER.parse_response(307, {}, b"").outcome is Outcome.FATAL


def test_retry_after_is_read_as_seconds_or_a_date() -> None:
    """Retry-After is a delay in seconds or an HTTP date."""
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:05 GMT", now_s=1445412480.0) == 5.0
    assert parse_retry_after("soon") is None
    assert PROVIDER.parse_response(429, {"Retry-After": "2"}, b"").wait_s == 2.0
