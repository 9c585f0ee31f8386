"""Replies to keywords written to a Vonage number (`receive --reply-stop` / `--reply-help`).

Twilio takes a reply in the answer to its webhook (`replies.twiml`); the Vonage APIs take none, so
a reply to them is an SMS sent back through the API the message came by, to the number that
wrote, from the number it wrote to: the SMS API's `POST /sms/json` (key and secret), the Messages
API's `POST /v1/messages` (signed as `send` signs it: an application's token, else key and
secret), over the transport `send` uses.

It leaves from the stage that processes stored receipts (beside the user's hook), never from the
webhook's answer, which waits for the commit only. Once per stored message: a callback the
provider retries is a duplicate the store drops. Processing is at least once, so a receiver
stopped between a reply and the mark of its message sends that reply again at its next start.
A reply that fails is logged once with its reason and never stops the receiver: a throttle or a
failure before the request left is tried again twice at most; an answer that may have been
accepted (a timeout after the request left) never is. Replies are paced at `RATE_PER_S`, well
under the provider's limit, so a burst of STOPs does not get a running campaign throttled.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sms_blaster.encoding import analyse
from sms_blaster.errors import OptionValueError, UsageError
from sms_blaster.key_file import private_key_pem
from sms_blaster.keywords import KeywordLists
from sms_blaster.models import Message, Outcome, Receipt, ReceiptKind, SendResult, StoredReceipt
from sms_blaster.optouts.model import inbound_text, phone_number
from sms_blaster.preflight import check_application_credentials
from sms_blaster.providers import registry
from sms_blaster.providers.base import Provider
from sms_blaster.providers.names import ProviderName, read_name
from sms_blaster.providers.registry import Credentials
from sms_blaster.ratelimit import PacedLimiter, RateLimiter
from sms_blaster.receiver.replies import reply_text
from sms_blaster.receiver.stores.base import Hook
from sms_blaster.retry import RetryPolicy, Step, next_step
from sms_blaster.settings import ReceiveSettings
from sms_blaster.transport.base import Transport, TransportName
from sms_blaster.transport.choice import choose, open_transport, proxy_problem
from sms_blaster.url_text import http_url_problem, mask_password

log = logging.getLogger("sms_blaster.receiver")

RATE_PER_S = 5.0  # replies a second, whatever the burst of keywords (Vonage's default: 30/s)
_POLICY = RetryPolicy(retries=2, base_s=1.0, cap_s=10.0, throttle_retries=2)
_TIMEOUT_S = 10.0
_PROVIDERS_KEPT = 64  # (API, our number) pairs whose request builder is kept
_CLIENT_REF_CHARS = 40  # what both APIs take in a client ref
_VONAGE = (ProviderName.VONAGE_SMS, ProviderName.VONAGE_MESSAGES)


@dataclass(frozen=True, slots=True)
class Reply:
    """One reply to send: through `provider`'s API, to the number that wrote, from ours."""

    provider: ProviderName
    to: str  # E.164 digits of the number that wrote
    sender: str  # our number, the one it wrote to
    text: str
    inbound_id: str  # the message answered


def reply_for(
    receipt: Receipt, lists: KeywordLists, reply_stop: str | None, reply_help: str | None
) -> Reply | None:
    """The reply a stored Vonage inbound message gets, or None (not a keyword with a configured
    reply, not Vonage's, or from a short code or a name, which takes no SMS)."""
    if receipt.kind is not ReceiptKind.INBOUND:  # most of what is processed: receipts
        return None
    name = read_name(receipt.provider)
    if name is None or name not in _VONAGE:
        return None
    text = reply_text(inbound_text(receipt), lists, reply_stop, reply_help)
    if not text:
        return None
    to = phone_number(receipt.sender or "")
    sender = (receipt.to or "").strip().lstrip("+")
    if to is None or not sender:
        return None
    return Reply(name, to, sender, text, receipt.message_id)


def reply_message(reply: Reply) -> Message:
    """The reply as a message; its client ref names the message it answers."""
    info = analyse(reply.text)
    return Message(
        line=0,
        to=reply.to,
        text=reply.text,
        encoding=info.encoding,
        segments=info.segments,
        client_ref=f"reply-{reply.inbound_id}"[:_CLIENT_REF_CHARS],
    )


def credentials_of(settings: ReceiveSettings) -> Credentials | None:
    """The credentials Vonage replies are sent with; None when there are none to send (no reply
    text, or a receiver that shows nothing of Vonage: no credentials, no signature secret).

    Raises UsageError (exit 2, before listening) when a reply is configured for Vonage callbacks
    but the credentials are missing or half given.
    """
    if not (settings.reply_stop or settings.reply_help):
        return None
    application = settings.application_id or settings.private_key_path
    key_pair = settings.api_key or settings.api_secret
    if not (application or key_pair or settings.vonage_secret):
        return None  # Twilio only: its replies need no credentials
    option = "--reply-stop" if settings.reply_stop else "--reply-help"
    url = settings.base_url
    if url is not None and http_url_problem(url) is not None:
        raise OptionValueError(
            "--base-url",
            mask_password(url),
            f"not an http(s) URL; give e.g. {registry.DEFAULT_BASE_URLS[ProviderName.VONAGE_SMS]}",
        )
    for name in (ProviderName.VONAGE_SMS, ProviderName.VONAGE_MESSAGES):
        # A proxy no reply could go through: said before listening, not at the first reply.
        problem = proxy_problem(url or registry.DEFAULT_BASE_URLS[name], os.environ)
        if problem is not None:
            raise UsageError(problem)
    if not (application or key_pair):
        raise UsageError(
            f"{option} answers a Vonage inbound message with an SMS: give --api-key and "
            "--api-secret (or VONAGE_API_KEY and VONAGE_API_SECRET)"
        )
    if key_pair and not settings.api_key:
        raise UsageError("no Vonage API key for the replies: set VONAGE_API_KEY or give --api-key")
    if key_pair and not settings.api_secret:
        raise UsageError(
            "no Vonage API secret for the replies: set VONAGE_API_SECRET or give --api-secret"
        )
    pem = _private_key(settings) if application else None
    return Credentials(
        api_key=settings.api_key,
        api_secret=settings.api_secret,
        application_id=settings.application_id,
        private_key_pem=pem,
    )


def _private_key(settings: ReceiveSettings) -> bytes:
    check_application_credentials(settings.application_id, settings.private_key_path)
    assert settings.private_key_path is not None  # checked
    return private_key_pem(settings.private_key_path)  # read by the check


def _api_credentials(name: ProviderName, credentials: Credentials) -> Credentials | None:
    """What `name`'s API signs with, or None when it has nothing it can use."""
    if name is ProviderName.VONAGE_MESSAGES and credentials.private_key_pem:
        return Credentials(
            application_id=credentials.application_id,
            private_key_pem=credentials.private_key_pem,
        )
    if credentials.api_key and credentials.api_secret:
        return Credentials(api_key=credentials.api_key, api_secret=credentials.api_secret)
    return None


OpenTransport = Callable[[str], Transport]


def _transport_for(url: str) -> Transport:
    """A transport of one connection to `url` (through a proxy the environment names)."""
    return open_transport(choose(TransportName.LEAN, url, os.environ), 1, _TIMEOUT_S)


class VonageReplies:
    """Sends the replies of stored Vonage inbound messages: a hook of the processing stage."""

    __slots__ = (
        "_base_url",
        "_credentials",
        "_draw",
        "_keywords",
        "_limiter",
        "_open_transport",
        "_providers",
        "_reply_help",
        "_reply_stop",
        "_sleep",
        "_unable",
    )

    def __init__(
        self,
        credentials: Credentials,
        keywords: KeywordLists,
        reply_stop: str | None,
        reply_help: str | None,
        *,
        base_url: str | None = None,
        limiter: RateLimiter | None = None,
        transport: OpenTransport = _transport_for,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self._credentials = credentials
        self._keywords = keywords
        self._reply_stop = reply_stop
        self._reply_help = reply_help
        self._base_url = base_url
        self._limiter = limiter or PacedLimiter(RATE_PER_S)
        self._open_transport = transport
        self._sleep = sleep
        self._draw = draw
        self._providers: dict[tuple[ProviderName, str], Provider] = {}
        self._unable: set[ProviderName] = set()  # APIs whose missing credentials were logged

    async def __call__(self, item: StoredReceipt) -> None:
        """Reply to `item` if it is a keyword with a reply; logs, never raises."""
        reply = reply_for(item.receipt, self._keywords, self._reply_stop, self._reply_help)
        if reply is None:
            return
        try:
            await self._send(reply)
        except Exception:  # a bug here must not stop the processing of other receipts
            log.exception("reply to %s not sent", reply.to)

    async def _send(self, reply: Reply) -> None:
        provider = self._provider(reply)
        if provider is None:
            return
        message = reply_message(reply)
        url = self._base_url or registry.DEFAULT_BASE_URLS[reply.provider]
        transport = self._open_transport(url)
        try:
            result = await self._attempts(transport, provider, message)
        finally:
            await transport.close()
        if result.outcome is Outcome.SENT:
            log.info(
                "replied to %s from %s (%s): %s",
                reply.to,
                reply.sender,
                reply.provider,
                ", ".join(result.message_ids) or "no message id",
            )
        else:
            detail = f": {result.detail}" if result.detail else ""
            log.error(
                "reply to %s from %s (%s) not sent: %s %s%s",
                reply.to,
                reply.sender,
                reply.provider,
                result.outcome,
                result.code,
                detail,
            )

    async def _attempts(
        self, transport: Transport, provider: Provider, message: Message
    ) -> SendResult:
        """Send, and try again as the retry policy says (a few times at most)."""
        attempt = throttles = 0
        while True:
            attempt += 1
            await self._limiter.acquire()
            result = (await transport.send(provider, message)).result
            throttles += result.outcome is Outcome.THROTTLED
            decision = next_step(result, attempt, _POLICY, self._draw, throttles)
            if decision.step is not Step.RETRY:
                return result
            await self._sleep(decision.delay_s)

    def _provider(self, reply: Reply) -> Provider | None:
        """The request builder for replies through `reply.provider` from `reply.sender`."""
        key = (reply.provider, reply.sender)
        provider = self._providers.get(key)
        if provider is not None:
            return provider
        credentials = _api_credentials(reply.provider, self._credentials)
        if credentials is None:
            if reply.provider not in self._unable:
                self._unable.add(reply.provider)
                log.error(
                    "%s inbound messages get no reply: give --api-key and --api-secret",
                    reply.provider,
                )
            return None
        if len(self._providers) >= _PROVIDERS_KEPT:
            self._providers.clear()
        provider = registry.make_provider(
            reply.provider,
            sender=reply.sender,
            base_url=self._base_url or registry.DEFAULT_BASE_URLS[reply.provider],
            credentials=credentials,
        )
        self._providers[key] = provider
        return provider


def with_replies(settings: ReceiveSettings, hook: Hook | None) -> Hook | None:
    """The processing stage's hook: Vonage replies, when configured, then the user's hook."""
    credentials = credentials_of(settings)
    if credentials is None:
        if settings.reply_stop or settings.reply_help:
            log.info(
                "replies go to Twilio numbers only (in the TwiML answer): give --api-key and "
                "--api-secret to answer Vonage numbers too"
            )
        return hook
    replies = VonageReplies(
        credentials,
        settings.keywords,
        settings.reply_stop,
        settings.reply_help,
        base_url=settings.base_url,
    )
    if hook is None:
        return replies
    user = hook

    async def both(item: StoredReceipt) -> None:
        await replies(item)
        await user(item)

    return both
