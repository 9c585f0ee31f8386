"""What the receiver answers to an inbound keyword: the configured text, as each provider takes it.

Twilio takes a reply in the answer to its inbound webhook (TwiML), so `receive --reply-stop` and
`--reply-help` need no credentials there. The Vonage APIs take none: a reply to a Vonage number is
a message sent like any other (`send`), so the receiver answers their webhooks as it always does.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

from sms_blaster.keywords import Intent, KeywordLists, recognise

TWIML_TYPE = "text/xml"
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'


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
