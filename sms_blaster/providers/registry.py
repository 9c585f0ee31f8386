"""The providers `--provider` can name, their default endpoints, and how each is built.

The adapters are imported when one is built, not with this module: the command line imports it
for the names, and `--help` must stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sms_blaster.providers.names import OPTION_NAMES, ProviderName

if TYPE_CHECKING:
    from sms_blaster.providers.base import Provider

# Each adapter's DEFAULT_BASE_URL (a test keeps them equal).
DEFAULT_BASE_URLS = {
    ProviderName.VONAGE_SMS: "https://rest.nexmo.com",
    ProviderName.VONAGE_MESSAGES: "https://api.nexmo.com",
    ProviderName.TWILIO: "https://api.twilio.com",
}


@dataclass(frozen=True, slots=True)
class Credentials:
    """Every provider's secrets; each provider uses its own (checked before anything is sent)."""

    api_key: str | None = field(default=None, repr=False)
    api_secret: str | None = field(default=None, repr=False)
    application_id: str | None = None
    private_key_pem: bytes | None = field(default=None, repr=False)
    account_sid: str | None = None
    auth_token: str | None = field(default=None, repr=False)
    messaging_service_sid: str | None = None


def make_provider(
    name: ProviderName,
    *,
    sender: str,
    base_url: str,
    credentials: Credentials,
    callback_url: str | None = None,
    ttl_s: int | None = None,
) -> Provider:
    """The adapter for `name`, asking for a validity period of `ttl_s` when given (checked against
    the provider's bounds before); raises ValueError when its credentials are missing."""
    if name is ProviderName.VONAGE_SMS:
        from sms_blaster.providers import vonage_sms

        if not credentials.api_key or not credentials.api_secret:
            raise ValueError("the SMS API needs an API key and secret")
        return vonage_sms.VonageSms(
            credentials.api_key,
            credentials.api_secret,
            sender,
            base_url,
            callback_url=callback_url,
            ttl_s=ttl_s,
        )
    if name is ProviderName.VONAGE_MESSAGES:
        from sms_blaster.providers import vonage_messages

        return vonage_messages.VonageMessages(
            sender,
            base_url,
            api_key=credentials.api_key,
            api_secret=credentials.api_secret,
            application_id=credentials.application_id,
            private_key_pem=credentials.private_key_pem,
            webhook_url=callback_url,
            ttl_s=ttl_s,
        )
    if name is ProviderName.TWILIO:
        from sms_blaster.providers import twilio

        if not credentials.account_sid or not credentials.auth_token:
            raise ValueError("Twilio needs an account SID and auth token")
        return twilio.Twilio(
            credentials.account_sid,
            credentials.auth_token,
            sender or None,
            base_url,
            messaging_service_sid=credentials.messaging_service_sid,
            status_callback=callback_url,
            ttl_s=ttl_s,
        )
    raise ValueError(f"unknown provider {name!r}; use one of {', '.join(OPTION_NAMES)}")
