"""The parts of a run built from its settings (once `preflight` passed them): the sender as
sent, the number column, the template, what identifies the campaign, the journal's path, the
provider's endpoint, the retry policy, the breaker, flow control and the transport."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from typing import TextIO

from sms_blaster import logs, sender_id
from sms_blaster.breaker import ErrorRateBreaker
from sms_blaster.campaign_identity import CampaignParams
from sms_blaster.engine import RunControl
from sms_blaster.flow import FlowController, FlowSettings
from sms_blaster.inputs import STDIN_NAME, RowSource
from sms_blaster.journal.store import Journal
from sms_blaster.key_file import private_key_pem
from sms_blaster.models import Message, column_key
from sms_blaster.pool import SenderPool
from sms_blaster.pool_pacing import PoolScheduler, send_by_sender
from sms_blaster.prepare import (
    NUMBER_COLUMNS,
    Template,
    campaign_id,
    compile_template,
    pick_number_column,
)
from sms_blaster.providers import registry
from sms_blaster.providers.base import Provider
from sms_blaster.providers.names import ProviderName
from sms_blaster.providers.registry import Credentials
from sms_blaster.retry import RetryPolicy
from sms_blaster.settings import RunSettings
from sms_blaster.transport.base import Transport
from sms_blaster.transport.choice import choose, open_transport, proxy_for

# The campaign's sender when a pool names them: no sender id can be written so.
POOL_SENDER = "(pool)"
DEFAULT_CAMPAIGN = "default"
JOURNAL_SUFFIX = ".journal"
# Messages a pool holds while their senders are busy: enough that the others always have some.
POOL_LOOKAHEAD = 1024
# Rows marked in flight ahead of a free window place, a share of the window (`Window.ready`).
READY_SHARE = 0.2


def ready_places(window: int) -> int:
    """How many rows of a journalled run are marked in flight while every request the window
    allows is out, so that one leaves the moment a request ends. Enough for the marks' commit
    and fsync to take a fifth of the exchange (10 ms at 50 ms: a busy disk's fsync) without a
    place waiting; and as many rows at most that a kill leaves marked but never sent."""
    return max(1, round(window * READY_SHARE))


def sender_as_sent(settings: RunSettings) -> str:
    """--from as the provider gets it: a number's digits (no '+', no spaces), or the name; ""
    when there is none (a Twilio messaging service picks it)."""
    if settings.from_pool is not None:
        return POOL_SENDER
    return sender_id.as_sent(settings.sender or "")


def number_column(settings: RunSettings, source: RowSource) -> str:
    """The key of the column with the numbers."""
    column = pick_number_column(source.columns, settings.to_column)
    if column is not None:
        return column
    # No such column: checked before (with no valid JSONL object ahead, each row fails as
    # malformed on its own).
    return column_key(settings.to_column or NUMBER_COLUMNS[0])


def message_template(settings: RunSettings) -> Template | None:
    """The compiled --text; None to send the text column as is."""
    return None if settings.text is None else compile_template(settings.text)


def campaign_params(
    settings: RunSettings, source: RowSource, sender: str, to_column: str
) -> CampaignParams:
    """What identifies this campaign; its id prefixes every client ref."""
    name = settings.campaign or DEFAULT_CAMPAIGN
    input_id = "-" if source.name == STDIN_NAME else os.path.abspath(source.name)
    text = settings.text or ""
    return CampaignParams(
        name=name,
        campaign_id=campaign_id("|".join((name, input_id, text, sender))),
        input=input_id,
        text=text,
        sender=sender,
        provider=settings.provider,
        to_column=to_column,
        default_region=settings.default_region or "",
    )


def journal_path(settings: RunSettings) -> str | None:
    """--journal, else `<input>.journal` next to a file input; None without one."""
    if not settings.use_journal:
        return None
    return kept_journal_path(settings)


def kept_journal_path(settings: RunSettings) -> str | None:
    """The campaign's journal, also when this run keeps none (--no-journal, a dry run): a file
    no output of the run may write over."""
    return settings.journal_path or default_journal_path(settings.input_path)


def default_journal_path(input_path: str) -> str | None:
    """`<input>.journal` next to an input that is a file; None for stdin, a pipe or a device
    (`/dev/stdin` is not a place for a journal, and what comes through it cannot be read again
    to resume)."""
    if input_path == "-" or input_path.startswith(("/dev/", "/proc/")):
        return None
    try:
        if not stat.S_ISREG(os.stat(input_path).st_mode):
            return None
    except OSError:
        pass  # the input's own check says what is wrong with it
    return input_path + JOURNAL_SUFFIX


def provider(settings: RunSettings, sender: str) -> Provider:
    """The provider client of a real run: its base URL and credentials, for `sender`."""
    name = settings.provider
    if name is ProviderName.TWILIO:
        credentials = Credentials(
            account_sid=settings.account_sid,
            auth_token=settings.auth_token,
            messaging_service_sid=settings.messaging_service_sid,
        )
    elif name is ProviderName.VONAGE_MESSAGES and settings.private_key_path:
        # With --application-id (checked: one needs the other): JWT application auth.
        pem = private_key_pem(settings.private_key_path)  # read and checked by the preflight
        credentials = Credentials(application_id=settings.application_id, private_key_pem=pem)
    else:
        credentials = Credentials(api_key=settings.api_key, api_secret=settings.api_secret)
    return registry.make_provider(
        name,
        sender=sender,
        base_url=settings.base_url or registry.DEFAULT_BASE_URLS[name],
        credentials=credentials,
        callback_url=settings.callback_url,
        ttl_s=settings.ttl_s,
    )


def policy(settings: RunSettings) -> RetryPolicy:
    return RetryPolicy(
        retries=settings.retries,
        retry_unknown=settings.retry_unknown,
        unreachable_s=settings.unreachable_timeout_s,
    )


def flow(settings: RunSettings, window: int) -> FlowController | None:
    if not settings.adaptive or settings.dry_run:
        return None
    return FlowController(FlowSettings(settings.rate_per_s, window), time.monotonic())


def breaker(settings: RunSettings) -> ErrorRateBreaker | None:
    if settings.max_error_rate is None:
        return None
    return ErrorRateBreaker(settings.max_error_rate)


def proxy_variable(settings: RunSettings) -> str | None:
    """The environment variable naming the proxy the run's requests go through; None for none."""
    url = settings.base_url or registry.DEFAULT_BASE_URLS[settings.provider]
    proxy = proxy_for(url, os.environ)
    return None if proxy is None else proxy[0]


def transport(settings: RunSettings, window: int, stderr: TextIO) -> Transport:
    """The run's transport, with as many keep-alive connections as the window; when a proxy in the
    environment chose it instead of the one asked for, stderr says so once."""
    url = settings.base_url or registry.DEFAULT_BASE_URLS[settings.provider]
    choice = choose(settings.transport, url, os.environ)
    if choice.note is not None:
        logs.say(stderr, f"sms-blaster: {choice.note}", transport=choice.name.value)
    return open_transport(choice, window, settings.timeout_s)


def pool_scheduler(
    settings: RunSettings,
    pool: SenderPool,
    transport: Transport,
    control: RunControl,
    journal: Journal | None,
) -> tuple[PoolScheduler, Callable[[Message], float]]:
    """What sends a pool's messages (a provider client for each sender, each at its rate), and
    what a send costs the global limit."""
    providers = {member.sender: provider(settings, member.sender) for member in pool.senders}
    scheduler = PoolScheduler(
        pool,
        send_by_sender(providers, transport.send),
        control,
        lookahead=max(POOL_LOOKAHEAD, 4 * settings.effective_window),
        recorded=journal.recorded_sender if journal is not None else lambda line: None,
    )
    return scheduler, providers[pool.senders[0].sender].cost
