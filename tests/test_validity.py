"""The validity period (--ttl): the duration parser, each provider's bounds, and the field each
provider's request carries it in."""

from __future__ import annotations

import json
from urllib.parse import parse_qs

import pytest

from sms_blaster.models import Encoding, Message
from sms_blaster.providers.names import ProviderName
from sms_blaster.providers.twilio import Twilio
from sms_blaster.providers.vonage_messages import VonageMessages
from sms_blaster.providers.vonage_sms import VonageSms
from sms_blaster.validity import (
    BOUNDS,
    any_provider_problem,
    as_sent,
    duration_text,
    parse_duration_s,
)

MESSAGE = Message(3, "447911123456", "Your code is 1234", Encoding.GSM7, 1, "c0ffee000000-3")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("30m", 1800),
        ("4h", 14_400),
        ("1d", 86_400),
        ("1h30m", 5400),
        ("1d12h", 129_600),
        ("2h0m5s", 7205),
        ("3600", 3600),
        (" 4H ", 14_400),
    ],
)
def test_durations_read_in_days_hours_minutes_and_seconds(text: str, seconds: int) -> None:
    """Units largest first, each once; a bare number is seconds; case and edge spaces aside."""
    assert parse_duration_s(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "4x", "1.5h", "30m1h", "4h4h", "-5m", "4 h", "1h 30m"])
def test_a_text_that_is_no_duration_is_refused_with_examples(text: str) -> None:
    """The refusal shows what to give instead."""
    with pytest.raises(ValueError, match=r"not a duration; give whole units .* e\.g\. 90s"):
        parse_duration_s(text)


@pytest.mark.parametrize("text", ["0", "0s", "0h0m"])
def test_a_duration_of_nothing_is_refused(text: str) -> None:
    """A validity period of no time would expire every message unsent."""
    with pytest.raises(ValueError, match="above zero"):
        parse_duration_s(text)


@pytest.mark.parametrize(
    ("seconds", "text"), [(20, "20s"), (5400, "1h30m"), (36_000, "10h"), (604_800, "7d")]
)
def test_a_duration_is_shown_in_the_fewest_units_the_parser_reads_back(
    seconds: int, text: str
) -> None:
    """What an error names is what the flag takes."""
    assert duration_text(seconds) == text
    assert parse_duration_s(text) == seconds


def test_twilio_refuses_more_than_ten_hours_naming_its_bound() -> None:
    """ValidityPeriod is 1 to 36000 seconds."""
    bounds = BOUNDS[ProviderName.TWILIO]
    assert bounds.problem(36_000) is None
    assert bounds.problem(36_001) == (
        "Twilio keeps a message at most 10h (36000 s); give 10h or less"
    )


@pytest.mark.parametrize("provider", [ProviderName.VONAGE_SMS, ProviderName.VONAGE_MESSAGES])
def test_the_vonage_apis_take_twenty_seconds_to_seven_days(provider: ProviderName) -> None:
    """Below 20 s and above 7 days are refused, each naming the bound."""
    bounds = BOUNDS[provider]
    assert bounds.problem(20) is None
    assert bounds.problem(604_800) is None
    assert bounds.problem(19) == f"{bounds.provider} keeps a message at least 20s; give 20s or more"
    assert bounds.problem(604_801) == (
        f"{bounds.provider} keeps a message at most 7d (604800 s); give 7d or less"
    )


def test_a_campaign_without_a_provider_yet_is_held_to_the_longest_any_takes() -> None:
    """`enqueue` cannot know the workers' provider: only what none takes is refused."""
    assert any_provider_problem(604_800) is None
    assert any_provider_problem(1) is None
    assert any_provider_problem(604_801) == (
        "no provider keeps a message longer than 7d (604800 s); give 7d or less"
    )


def test_the_dry_run_names_the_field_and_unit_each_provider_gets() -> None:
    """The SMS API counts milliseconds, the others seconds."""
    assert as_sent(ProviderName.VONAGE_SMS, 14_400) == "4h (the Vonage SMS API ttl=14400000)"
    assert as_sent(ProviderName.VONAGE_MESSAGES, 600) == "10m (the Vonage Messages API ttl=600)"
    assert as_sent(ProviderName.TWILIO, 5400) == "1h30m (Twilio ValidityPeriod=5400)"


def test_the_sms_api_gets_the_ttl_in_milliseconds() -> None:
    """`ttl=14400000` in the form, the rest of the body as without it."""
    plain = VonageSms("key", "secret", "Shop", "http://sms.test").build_request(MESSAGE).body
    provider = VonageSms("key", "secret", "Shop", "http://sms.test", ttl_s=14_400)
    with_ttl = provider.build_request(MESSAGE).body
    assert parse_qs(with_ttl.decode()) == parse_qs(plain.decode()) | {"ttl": ["14400000"]}


def test_the_messages_api_gets_the_ttl_in_seconds() -> None:
    """`"ttl": 600` in the JSON, the rest of the document as without it."""
    plain = VonageMessages("Shop", api_key="k", api_secret="s").build_request(MESSAGE).body
    provider = VonageMessages("Shop", api_key="k", api_secret="s", ttl_s=600)
    document = json.loads(provider.build_request(MESSAGE).body)
    assert document == json.loads(plain) | {"ttl": 600}


def test_twilio_gets_a_validity_period_in_seconds() -> None:
    """`ValidityPeriod=5400` in the form, the rest of the body as without it."""
    plain = Twilio("AC1", "token", "15017122661").build_request(MESSAGE).body
    provider = Twilio("AC1", "token", "15017122661", ttl_s=5400)
    with_ttl = provider.build_request(MESSAGE).body
    assert parse_qs(with_ttl.decode()) == parse_qs(plain.decode()) | {"ValidityPeriod": ["5400"]}


def test_without_a_ttl_each_request_is_as_it_always_was() -> None:
    """No field at all: the provider's own default applies."""
    requests = [
        VonageSms("key", "secret", "Shop").build_request(MESSAGE).body,
        VonageMessages("Shop", api_key="k", api_secret="s").build_request(MESSAGE).body,
        Twilio("AC1", "token", "15017122661").build_request(MESSAGE).body,
    ]
    for body in requests:
        assert b"ttl" not in body.lower()
        assert b"ValidityPeriod" not in body


@pytest.mark.parametrize(
    "text", ["\u0661\u0660m", "\uff11\uff10m", "\u0663\u0666\u0660\u0660", "1\uff10m"]
)
def test_only_ascii_digits_make_a_duration(text: str) -> None:
    """Arabic-Indic or full-width digits are refused, not read as the ASCII ones."""
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration_s(text)


@pytest.mark.parametrize("text", ["5" * 5000, "1" * 10 + "h", "1h" + "3" * 40 + "m"])
def test_an_absurd_number_of_digits_is_refused_in_our_own_words(text: str) -> None:
    """More than nine digits (31 years of seconds) is a typo: one short message, never Python's
    limit on converting long numbers."""
    with pytest.raises(ValueError, match="too many digits") as refused:
        parse_duration_s(text)
    assert len(str(refused.value)) < 200
