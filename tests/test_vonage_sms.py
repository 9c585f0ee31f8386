"""The Vonage SMS API adapter: request bodies and the classification of recorded answers."""

from __future__ import annotations

import base64
import json
import random
from decimal import Decimal
from pathlib import Path
from urllib.parse import parse_qs, quote_plus

import pytest

from sms_blaster.models import Encoding, Message, Outcome
from sms_blaster.providers import vonage_sms
from sms_blaster.providers.base import parse_retry_after
from sms_blaster.providers.vonage_sms import (
    VonageSms,
    form_quoted,
    parse_any_body,
    parse_body,
)
from sms_blaster.simulator.sms_api import success_body

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


@pytest.mark.parametrize("price", ["NaN", "-5", "Infinity", "abc"])
def test_a_price_that_is_no_price_is_left_out(price: str) -> None:
    """A record's price and the summary's cost stay numbers whatever the answer says."""
    for body in (
        b'{"message-count":"1","messages":[{"to":"447700900000","message-id":"id-1",'
        b'"status":"0","remaining-balance":"3.1","message-price":"'
        + price.encode()
        + b'","network":"23410"}]}',  # the form the fast path reads
        b'{"messages": [{"status": "0", "message-id": "id-1", "message-price": "'
        + price.encode()
        + b'"}]}',
    ):
        result = PROVIDER.parse_response(200, {}, body)
        assert result.outcome is Outcome.SENT
        assert result.message_ids == ("id-1",)
        assert result.price is None


@pytest.mark.parametrize("message_id", [b"null", b"12", b'["a"]', b'""'])
def test_a_message_id_that_is_not_a_string_is_not_recorded_as_one(message_id: bytes) -> None:
    """`null` became the id "None" and `["a"]` the id "['a']": no receipt can match those, and an
    acceptance naming no message is unknown."""
    body = b'{"messages": [{"status": "0", "message-id": ' + message_id + b"}]}"
    result = PROVIDER.parse_response(200, {}, body)
    assert (result.outcome, result.code) == (Outcome.AMBIGUOUS, "bad_answer")
    assert result.message_ids == ()


@pytest.mark.parametrize(
    "body",
    [
        b'{"message-count":"1","messages":[{"to":"447700900000","message-id":"",'
        b'"status":"0","remaining-balance":"3.1","message-price":"0.03","network":"23410"}]}',
        b'{"message-count": "1", "messages": [{"to": "447700900000", "status": "0"}]}',
    ],
    ids=["empty-id", "no-id"],
)
def test_an_acceptance_that_names_no_message_is_unknown(body: bytes) -> None:
    """Status 0 without a message id: it may have been sent, but nothing names it."""
    result = PROVIDER.parse_response(200, {}, body, "447700900000")
    assert (result.outcome, result.code, result.detail) == (
        Outcome.AMBIGUOUS,
        "bad_answer",
        "answer names no message id",
    )


ACCEPTED_FOR_ANOTHER = [
    b'{"message-count":"1","messages":[{"to":"447000000000","message-id":"id-9",'
    b'"status":"0","remaining-balance":"3.1","message-price":"0.03","network":"23410"}]}',
    b'{"message-count": "1", "messages": [{"to": "447000000000", "message-id": "id-9", '
    b'"status": "0"}]}',
    b'{"message-count":"2","messages":[{"to":"447700900000","message-id":"id-1","status":"0"},'
    b'{"to":"447000000000","message-id":"id-2","status":"0"}]}',
]


@pytest.mark.parametrize(
    "body", ACCEPTED_FOR_ANOTHER, ids=["api-form", "spaced", "one-of-two-parts"]
)
def test_an_answer_for_another_number_is_unknown(body: bytes) -> None:
    """A stray acceptance read as this request's answer says nothing of this request."""
    result = PROVIDER.parse_response(200, {}, body, "447700900000")
    assert (result.outcome, result.code, result.detail) == (
        Outcome.AMBIGUOUS,
        "bad_answer",
        "the answer is for another number",
    )


def test_a_refusal_for_another_number_is_unknown_too() -> None:
    """Another number's refusal does not make this row failed: its request may have been sent."""
    body = b'{"message-count":"1","messages":[{"to":"447000000000","status":"7"}]}'
    assert PROVIDER.parse_response(200, {}, body, "447700900000").code == "bad_answer"


@pytest.mark.parametrize("answer_to", ["447700900000", "+44 7700 900000", None])
def test_an_answer_naming_the_requests_number_or_none_is_taken(answer_to: str | None) -> None:
    """Digits are compared; an answer with no `to` is not checked."""
    part = {"message-id": "id-1", "status": "0"} | ({"to": answer_to} if answer_to else {})
    body = json.dumps({"message-count": "1", "messages": [part]}).encode()
    result = PROVIDER.parse_response(200, {}, body, "447700900000")
    assert (result.outcome, result.message_ids) == (Outcome.SENT, ("id-1",))


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


ANSWERS = sorted(path.name for path in FIXTURES.glob("*.json"))


def variants(body: bytes, draw: random.Random, count: int) -> list[bytes]:
    """`body` mutated at random: JSON whitespace added, bytes dropped, doubled or replaced."""
    pieces = [b" ", b"\n", b"\t", b"\r", b",", b'"', b"\\", b":", b"0", b"{", b"}", b"\xc3\xa9"]
    found = []
    for _ in range(count):
        mutated = bytearray(body)
        for _ in range(draw.randint(1, 3)):
            at = draw.randrange(len(mutated) + 1)
            action = draw.randrange(4)
            if action == 0:
                mutated[at:at] = draw.choice(pieces[:4])
            elif action == 1 and at < len(mutated):
                del mutated[at]
            elif action == 2 and at < len(mutated):
                mutated[at:at] = mutated[at : at + 1]
            else:
                mutated[at : at + 1] = draw.choice(pieces)
        found.append(bytes(mutated))
    return found


@pytest.mark.parametrize("name", ANSWERS)
def test_the_fast_reading_of_an_answer_equals_the_full_one(name: str) -> None:
    """Every recorded answer, and 2,000 mutations of it, read alike by both parsers."""
    body = answer(name)
    draw = random.Random(name)
    for candidate in [body, b" " + body.replace(b",", b" , ") + b"\n", *variants(body, draw, 2000)]:
        assert parse_body(candidate) == parse_any_body(candidate), candidate


def test_the_simulators_answers_read_alike_by_both_parsers() -> None:
    """The simulator's success answer (with a client ref), and 2,000 mutations of it."""
    body = success_body("447700900001", ["id-1"], ["3.00"], "0.0333", "ref-1")
    for candidate in [body, *variants(body, random.Random(3), 2000)]:
        assert parse_body(candidate) == parse_any_body(candidate), candidate


# One part accepted, the answer naming no number (no `to`).
NO_NUMBER = (
    b'{"message-count":"1","messages":[{"message-id":"0A0000000123ABCD1","status":"0",'
    b'"remaining-balance":"3.14159265","message-price":"0.03330000","network":"23410"}]}'
)


def test_an_accepted_answer_naming_no_number_is_read_by_the_fast_match(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No `to`: nothing to check the request's number against, in either parser; the match
    reads it without the full parser."""

    def full_parser(body: bytes, to: str = "") -> object:
        raise AssertionError("read by the full parser")

    monkeypatch.setattr(vonage_sms, "parse_any_body", full_parser)
    result = parse_body(NO_NUMBER, "447700900001")
    assert result.outcome is Outcome.SENT
    assert result.message_ids == ("0A0000000123ABCD1",)
    assert result.price == Decimal("0.03330000")


def test_an_answer_naming_no_number_reads_alike_by_both_parsers() -> None:
    """The answer without `to`, for a request to a number and to none, and 2,000 mutations."""
    for candidate in [NO_NUMBER, *variants(NO_NUMBER, random.Random(11), 2000)]:
        for to in ("", "447700900001"):
            assert parse_body(candidate, to) == parse_any_body(candidate, to), candidate


def test_the_fast_reading_takes_the_last_of_a_repeated_key() -> None:
    """A key given twice counts once, at its last value, as a JSON decoder reads it."""
    body = b'{"message-count":"1","messages":[{"status":"0","status":"2","message-id":"a"}]}'
    assert parse_body(body) == parse_any_body(body)
    assert parse_body(body).outcome is Outcome.PERMANENT


def test_form_values_are_quoted_as_quote_plus_quotes_them() -> None:
    """Every ASCII character, random ASCII texts and non-ASCII texts quote as quote_plus does."""
    draw = random.Random(7)
    every = "".join(map(chr, range(128)))
    texts = [every, "Łukasz 😀 & co", *("".join(draw.sample(every, 20)) for _ in range(500))]
    assert [form_quoted(text) for text in texts] == [quote_plus(text).encode() for text in texts]
