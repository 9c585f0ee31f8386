"""What the receiver answers to an inbound keyword: the configured text, as each provider takes it.

Twilio takes a reply in the answer to its inbound webhook (TwiML), so `receive --reply-stop` and
`--reply-help` need no credentials there. The Vonage APIs take none: a reply to a Vonage number is
an SMS the receiver sends after the acknowledgement (`vonage_replies`), so it answers their
webhooks as it always does.
"""

from __future__ import annotations

import re
from xml.sax.saxutils import escape

from sms_blaster.encoding import analyse
from sms_blaster.keywords import Intent, KeywordLists, recognise

TWIML_TYPE = "text/xml"
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'
MAX_REPLY_PARTS = 10  # more is a mistake (a file pasted in), and costs as many messages a keyword

# What XML 1.0 cannot carry (controls other than tab, newline and return; U+FFFE, U+FFFF), plus
# DEL and the C1 controls it allows but no handset shows: Twilio could not parse the TwiML.
_NOT_IN_TWIML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffe\uffff]")
_SURROGATE = re.compile("[\ud800-\udfff]")  # bytes that were not UTF-8 (surrogateescape)


def reply_problem(text: str) -> str | None:
    """Why `text` cannot be a reply, or None: it is refused when the receiver starts, rather than
    answered with a 500 to every keyword."""
    if _SURROGATE.search(text):
        return "is not UTF-8 text; give the reply in UTF-8"
    if (control := _NOT_IN_TWIML.search(text)) is not None:
        return (
            f"holds the control character U+{ord(control.group()):04X}, which no "
            "SMS reply can carry; remove it"
        )
    parts = analyse(text).segments
    if parts > MAX_REPLY_PARTS:
        return f"takes {parts} SMS parts; a reply takes at most {MAX_REPLY_PARTS}: shorten it"
    return None


def reply_text(
    text: str | None, lists: KeywordLists, reply_stop: str | None, reply_help: str | None
) -> str | None:
    """The configured reply to a message (an opt-out or a help keyword), or None."""
    match = recognise(text, lists)
    if match is None:
        return None
    if match.intent is Intent.OPT_OUT:
        return reply_stop
    if match.intent is Intent.HELP:
        return reply_help
    return None


def twiml(reply: str | None) -> str:
    """The TwiML answer to an inbound webhook: the reply as a message, or nothing to send."""
    if not reply:
        return EMPTY_TWIML
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Response><Message>{escape(reply)}</Message></Response>"
    )
