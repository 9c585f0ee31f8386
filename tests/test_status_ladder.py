"""The HTTP status ladder every provider shares: one table, checked against all three adapters."""

from __future__ import annotations

import aiohttp
import pytest

from sms_blaster.models import Outcome
from sms_blaster.providers.base import Provider
from sms_blaster.providers.twilio import Twilio
from sms_blaster.providers.vonage_messages import VonageMessages
from sms_blaster.providers.vonage_sms import VonageSms
from sms_blaster.transport.aiohttp_transport import classify_exception

PROVIDERS: dict[str, Provider] = {
    "vonage-sms": VonageSms("key", "secret", "Shop", "http://sms.test"),
    "vonage-messages": VonageMessages("Shop", "http://messages.test", api_key="k", api_secret="s"),
    "twilio": Twilio("AC0123", "token", "15017122661", "http://twilio.test"),
}

# status, with Retry-After, outcome: for an answer whose body says nothing of the provider's own.
LADDER = [
    (100, False, Outcome.AMBIGUOUS),  # an interim answer as the last: it may have been sent
    (199, False, Outcome.AMBIGUOUS),
    (301, False, Outcome.FATAL),  # redirected: the base URL is wrong
    (302, True, Outcome.FATAL),
    (307, False, Outcome.FATAL),
    (308, False, Outcome.FATAL),
    (400, False, Outcome.PERMANENT),
    (401, False, Outcome.FATAL),
    (402, False, Outcome.FATAL),
    (403, False, Outcome.FATAL),
    (404, False, Outcome.FATAL),
    (405, False, Outcome.FATAL),
    (408, False, Outcome.TRANSIENT),  # the server gave up waiting for it: it was not read
    (409, False, Outcome.PERMANENT),
    (422, True, Outcome.PERMANENT),
    (429, False, Outcome.THROTTLED),
    (429, True, Outcome.THROTTLED),
    (500, False, Outcome.AMBIGUOUS),
    (502, True, Outcome.AMBIGUOUS),
    (503, False, Outcome.AMBIGUOUS),  # no "come back later": it may have reached the provider
    (503, True, Outcome.TRANSIENT),
    (504, False, Outcome.AMBIGUOUS),
    (599, False, Outcome.AMBIGUOUS),
]


@pytest.mark.parametrize("name", sorted(PROVIDERS))
@pytest.mark.parametrize(("status", "retry_after", "outcome"), LADDER)
def test_every_provider_classifies_an_http_status_by_the_same_ladder(
    name: str, status: int, retry_after: bool, outcome: Outcome
) -> None:
    """Each adapter gives a bare HTTP status the ladder's outcome and `http_<status>` code."""
    headers = {"Retry-After": "7"} if retry_after else {}
    result = PROVIDERS[name].parse_response(status, headers, b"")
    assert (result.outcome, result.code) == (outcome, f"http_{status}")


@pytest.mark.parametrize("name", sorted(PROVIDERS))
@pytest.mark.parametrize("status", [429, 503])
def test_every_provider_keeps_the_wait_a_throttle_or_unavailable_answer_asks_for(
    name: str, status: int
) -> None:
    """Retry-After on a 429 or a 503 becomes the result's wait, in seconds."""
    result = PROVIDERS[name].parse_response(status, {"Retry-After": "7"}, b"")
    assert result.wait_s == 7.0


@pytest.mark.parametrize("name", sorted(PROVIDERS))
@pytest.mark.parametrize("body", [b"", b"not json", b"{}", b"[]", b'{"messages": []}'])
def test_every_provider_calls_a_success_that_names_no_message_ambiguous(
    name: str, body: bytes
) -> None:
    """A 200 without a message id may have been sent: ambiguous, `bad_answer`, never resent."""
    result = PROVIDERS[name].parse_response(200, {}, body)
    assert (result.outcome, result.code, result.message_ids) == (
        Outcome.AMBIGUOUS,
        "bad_answer",
        (),
    )


@pytest.mark.parametrize("name", sorted(PROVIDERS))
@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_every_provider_reads_any_2xx_as_its_success_answer(name: str, status: int) -> None:
    """Whatever 2xx the API documents, a 2xx with no message id is ambiguous, never refused."""
    result = PROVIDERS[name].parse_response(status, {}, b"")
    assert (result.outcome, result.code) == (Outcome.AMBIGUOUS, "bad_answer")


def test_a_url_refused_before_any_connection_is_fatal_never_ambiguous() -> None:
    """aiohttp refuses a malformed URL before connecting: nothing was sent, and nothing to that
    URL ever will be; the run stops (the row stays pending) instead of recording it unknown."""
    result = classify_exception(aiohttp.InvalidURL("http://127.0.0.1:http://127.0.0.1:8080"))
    assert (result.outcome, result.code) == (Outcome.FATAL, "invalid_url")


@pytest.mark.parametrize("name", sorted(PROVIDERS))
@pytest.mark.parametrize("status", [200, 201, 202, 400, 429])
def test_an_answer_nested_past_the_json_parser_s_depth_is_unreadable(
    name: str, status: int
) -> None:
    """A body nested 100,000 deep (JSON's parser recurses): read as any unreadable body of its
    status, never an error escaping the parser."""
    result = PROVIDERS[name].parse_response(status, {}, b"[" * 100_000 + b"]" * 100_000, "1")
    assert result.code
    if status < 300:
        assert (result.outcome, result.code) == (Outcome.AMBIGUOUS, "bad_answer")
