"""Keyword recognition: what an inbound message asks for, from its first word."""

from __future__ import annotations

import pytest

from sms_blaster.keywords import Intent, KeywordLists, Match, parse_list, recognise
from sms_blaster.receiver.replies import EMPTY_TWIML, reply_text, twiml


@pytest.mark.parametrize(
    "text", ["STOP", "stop", "  Stop \n", "Stop.", "STOP please", "stop!!", "Unsubscribe", "quit"]
)
def test_an_opt_out_keyword_alone_or_first_opts_out(text: str) -> None:
    """Case, spaces around and punctuation after the keyword do not matter."""
    match = recognise(text)
    assert match is not None
    assert match.intent is Intent.OPT_OUT


@pytest.mark.parametrize(
    "text",
    [
        "\uff33\uff34\uff2f\uff30",
        "\u200bSTOP",
        "\ufeffstop",
        "S\u200dTOP",
        "\u2066STOP\u2069",
        "\u017ftop",
    ],
)
def test_a_keyword_in_full_width_or_behind_invisible_characters_is_recognised(text: str) -> None:
    """Full-width letters fold to plain ones; zero-width, BOM and bidi characters are ignored."""
    match = recognise(text)
    assert match == Match(Intent.OPT_OUT, "STOP")


@pytest.mark.parametrize("text", ["sto\u1e55", "stop\u0301", "\u0455top"])
def test_a_keyword_with_another_letter_is_no_keyword(text: str) -> None:
    """An accented letter (composed or not) or a lookalike of another script is another word."""
    assert recognise(text) is None


@pytest.mark.parametrize("text", ["please stop", "stopping now", "", "   ", "?!", "STOP2"])
def test_a_message_that_does_not_start_with_a_keyword_asks_for_nothing(text: str) -> None:
    """A keyword further on, or a longer word that starts like one, is not a keyword."""
    assert recognise(text) is None


@pytest.mark.parametrize(
    ("text", "intent"),
    [("START", Intent.OPT_IN), ("yes", Intent.OPT_IN), ("unstop", Intent.OPT_IN),
     ("HELP", Intent.HELP), ("info?", Intent.HELP)],
)  # fmt: skip
def test_opt_in_and_help_keywords_are_told_apart(text: str, intent: Intent) -> None:
    """Twilio's defaults: START, YES, UNSTOP back in; HELP and INFO for help."""
    match = recognise(text)
    assert match is not None
    assert match.intent is intent


def test_a_recognised_keyword_is_named_as_configured() -> None:
    """The match carries the keyword in upper case, whatever the message's case."""
    match = recognise("Stop.")
    assert match is not None
    assert match.keyword == "STOP"


def test_configured_lists_replace_the_defaults() -> None:
    """With --optout-keywords ARRET, STOP is no keyword any more."""
    lists = KeywordLists(opt_out=("ARRET",))
    assert recognise("stop", lists) is None
    match = recognise("Arret", lists)
    assert match is not None
    assert match.intent is Intent.OPT_OUT


def test_a_word_in_two_lists_opts_out() -> None:
    """A misconfigured list never loses an opt-out."""
    lists = KeywordLists(opt_out=("STOP",), opt_in=("STOP",))
    assert lists.intent("stop") is Intent.OPT_OUT


def test_a_keyword_list_is_parsed_upper_case_without_blanks_or_repeats() -> None:
    """`stop, Quit,,STOP` is STOP and QUIT."""
    assert parse_list("stop, Quit,,STOP", "--optout-keywords") == ("STOP", "QUIT")


@pytest.mark.parametrize("value", ["", " , ", "two words", "stop;quit"])
def test_a_keyword_list_without_one_word_keywords_is_refused(value: str) -> None:
    """The error names the option."""
    with pytest.raises(ValueError, match="--optout-keywords"):
        parse_list(value, "--optout-keywords")


def test_the_stop_reply_answers_an_opt_out_and_the_help_reply_a_help_keyword() -> None:
    """An opt-in or any other message gets no reply."""
    lists = KeywordLists()
    assert reply_text("Stop", lists, "bye", "call us") == "bye"
    assert reply_text("help", lists, "bye", "call us") == "call us"
    assert reply_text("START", lists, "bye", "call us") is None
    assert reply_text("hello", lists, "bye", "call us") is None


def test_twiml_carries_the_reply_escaped_or_nothing() -> None:
    """Text is XML-escaped; no reply is an empty Response."""
    assert twiml("a < b & c") == (
        '<?xml version="1.0" encoding="UTF-8"?>'
        "<Response><Message>a &lt; b &amp; c</Message></Response>"
    )
    assert twiml(None) == EMPTY_TWIML
