"""Which routes check signatures, which take callbacks unsigned, and which refuse them all.

Each provider's routes are checked with its own secret: Vonage's (SMS API and Messages API) with
VONAGE_SIGNATURE_SECRET, Twilio's with TWILIO_AUTH_TOKEN. A receiver given one of them is one
whose owner expects forged callbacks; the routes of a provider without a secret would still take
anything, and a forged Twilio receipt or START applies to every row and number of the store,
whichever provider sent them. So once any secret is set, the routes of a provider without one
refuse every callback (403) unless `--accept-unsigned PROVIDER` says to take them unsigned. With
no secret at all every route takes callbacks unsigned, as before, and start-up warns.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from sms_blaster.errors import UsageError
from sms_blaster.receiver.refusals import Refusal
from sms_blaster.settings import ReceiveSettings
from sms_blaster.url_text import mask_password

VONAGE = "vonage"
TWILIO = "twilio"
PROVIDERS = (VONAGE, TWILIO)  # what --accept-unsigned names

_SECRET = {VONAGE: "VONAGE_SIGNATURE_SECRET", TWILIO: "TWILIO_AUTH_TOKEN"}
_TITLE = {VONAGE: "Vonage", TWILIO: "Twilio"}
_ROUTES = {
    VONAGE: (
        "/webhooks/dlr",
        "/webhooks/inbound",
        "/webhooks/messages/status",
        "/webhooks/messages/inbound",
    ),
    TWILIO: ("/webhooks/twilio/status", "/webhooks/twilio/inbound"),
}


class Check(enum.Enum):
    """What a provider's routes do with a callback's signature."""

    VERIFY = "verify"  # its secret is set: a callback must carry a valid signature
    ACCEPT = "accept"  # no secret: taken unsigned (no secret at all, or --accept-unsigned)
    REFUSE = "refuse"  # no secret while another provider's is set: every callback refused


@dataclass(frozen=True, slots=True)
class Signing:
    """The check of each provider's routes."""

    vonage: Check
    twilio: Check


def secret_of(settings: ReceiveSettings, provider: str) -> str | None:
    return settings.vonage_secret if provider == VONAGE else settings.twilio_token


def signing(settings: ReceiveSettings) -> Signing:
    """Each provider's check; UsageError when --accept-unsigned names a provider whose secret
    is set (its callbacks cannot be both checked and taken unsigned)."""
    for provider in sorted(settings.accept_unsigned):
        if secret_of(settings, provider):
            raise UsageError(
                f"--accept-unsigned {provider} with {_SECRET[provider]} set: its callbacks are "
                f"checked with the secret; unset it, or drop --accept-unsigned {provider}"
            )
    any_secret = any(secret_of(settings, provider) for provider in PROVIDERS)

    def check(provider: str) -> Check:
        if secret_of(settings, provider):
            return Check.VERIFY
        if any_secret and provider not in settings.accept_unsigned:
            return Check.REFUSE
        return Check.ACCEPT

    return Signing(vonage=check(VONAGE), twilio=check(TWILIO))


def refusal(provider: str) -> Refusal:
    """The answer of a route that refuses every callback."""
    return Refusal(403, "no_secret", "unsigned callbacks are refused here", _SECRET[provider])


def warn(log: logging.Logger, settings: ReceiveSettings, checks: Signing) -> None:
    """Say once, at start, which routes take callbacks unsigned and which refuse them all."""
    for provider, check in ((VONAGE, checks.vonage), (TWILIO, checks.twilio)):
        secret, title = _SECRET[provider], _TITLE[provider]
        if check is Check.ACCEPT:
            chosen = " (--accept-unsigned)" if provider in settings.accept_unsigned else ""
            log.warning(
                "%s is not set: %s callbacks are accepted unsigned%s", secret, title, chosen
            )
        elif check is Check.REFUSE:
            log.warning(
                "%s is not set: %s refuse every callback (403), since another provider's secret "
                "is set; set %s to check their signatures, or give --accept-unsigned %s to "
                "accept them unsigned",
                secret,
                ", ".join(_ROUTES[provider]),
                secret,
                provider,
            )


def public_url(text: str) -> str:
    """--public-url as Twilio's signature needs it: the scheme and host the provider called (and
    a path a proxy strips, if any), the scheme and host in lower case (URLs do not tell their
    case apart, and HTTP clients send them so). UsageError (exit 2) for what would fail every
    signed callback: no http(s) scheme or no host (`hooks.example.com`), a query or fragment
    (the request's own is appended)."""
    try:
        parts = urlsplit(text.strip())
        _ = parts.port  # raises for a port that is not a number, or out of range
    except ValueError as exc:
        raise UsageError(f"--public-url {mask_password(text)}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(
            f"--public-url {mask_password(text)}: give the scheme and host providers call, e.g. "
            "https://hooks.example.com"
        )
    if parts.query or parts.fragment or text.rstrip().endswith(("?", "#")):
        raise UsageError(
            f"--public-url {mask_password(text)}: no query or fragment; the scheme and host "
            "(and a path a proxy strips) only, e.g. https://hooks.example.com"
        )
    user, at, host = parts.netloc.rpartition("@")
    return urlunsplit((scheme, user + at + host.lower(), parts.path, "", ""))
