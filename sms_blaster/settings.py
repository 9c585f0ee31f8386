"""The settings of a run, built once from flags and environment by the CLI."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from sms_blaster.inputs import InputFormat
from sms_blaster.keywords import DEFAULT_KEYWORDS, KeywordLists
from sms_blaster.lookalikes import SmartEncoding
from sms_blaster.providers.names import ProviderName
from sms_blaster.transport.base import TransportName

# With no --window, keep enough requests in flight to hide this much latency at the full rate.
LATENCY_TO_HIDE_S = 0.5
MIN_WINDOW, MAX_DEFAULT_WINDOW = 4, 256
# --max-error-rate judges the last BREAKER_WINDOW sends, from the MIN_BREAKER_SAMPLES-th on.
BREAKER_WINDOW, MIN_BREAKER_SAMPLES = 100, 20


def default_window(rate_per_s: float) -> int:
    """In-flight requests needed for `rate_per_s` at LATENCY_TO_HIDE_S (Little's law), bounded."""
    return max(MIN_WINDOW, min(MAX_DEFAULT_WINDOW, math.ceil(rate_per_s * LATENCY_TO_HIDE_S)))


@dataclass(frozen=True, slots=True)
class RunSettings:
    """One run that sends or prepares a campaign: `send`, `enqueue` or `worker`."""

    input_path: str = "-"  # a path, or "-" for stdin; a worker reads no input
    sender: str | None = None
    text: str | None = None
    input_format: InputFormat = InputFormat.AUTO
    input_encoding: str = "utf-8"
    provider: ProviderName = ProviderName.VONAGE_SMS
    base_url: str | None = None  # None: the provider's own API
    api_key: str | None = field(default=None, repr=False)
    api_secret: str | None = field(default=None, repr=False)
    application_id: str | None = None  # Messages API: JWT application auth, with private_key_path
    private_key_path: str | None = None
    account_sid: str | None = None  # Twilio
    auth_token: str | None = field(default=None, repr=False)
    messaging_service_sid: str | None = None
    callback_url: str | None = None  # where the provider sends this campaign's receipts
    rate_per_s: float = 30.0
    window: int | None = None
    adaptive: bool = True  # find the provider's limit below --rate; False pins the rate
    retries: int = 5
    timeout_s: float = 10.0
    retry_unknown: bool = False
    dry_run: bool = False
    output_path: str | None = None
    force: bool = False  # a new campaign may overwrite a non-empty --output
    to_column: str | None = None
    default_region: str | None = None
    max_segments: int | None = None
    campaign: str | None = None
    journal_path: str | None = None  # None: next to a file input, none for stdin
    use_journal: bool = True
    journal_fsync: bool = True  # in-flight marks on disk before their requests leave
    only_new: bool = False  # no records for rows an earlier run settled
    suppress_path: str | None = None
    not_after: str | None = None
    max_error_rate: float | None = None
    unreachable_timeout_s: float = 30.0  # stop once nothing could connect for this long
    price: Decimal | None = None  # per segment, for the dry-run estimate
    progress: bool | None = None  # None: a bar on a terminal, plain lines elsewhere
    use_uvloop: bool = True
    transport: TransportName = TransportName.LEAN
    ttl_s: int | None = None  # the validity period asked of the provider; None: its default
    smart_encoding: SmartEncoding = SmartEncoding.AUTO  # look-alikes replaced when it saves parts
    quiet_hours: str | None = None  # HH:MM-HH:MM in each recipient's local time
    tz_column: str | None = None  # a column with each row's IANA zone, else the number's
    optouts_path: str | None = None  # a journal holding the opt-out list, or an exported list
    from_pool: str | None = None  # a CSV of senders and their rates, instead of --from
    metrics_file: str | None = None  # Prometheus' text format, for node_exporter's textfile
    pushgateway: str | None = None  # a Pushgateway's URL, pushed the same metrics
    # The options the environment gave, by their names here, each as an error line names it:
    # "--no-journal (SMS_BLASTER_NO_JOURNAL)". A conflict must name where a value came from,
    # or a user who never typed the flag cannot find it.
    from_environment: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def effective_window(self) -> int:
        return self.window or default_window(self.rate_per_s)

    def spelled(self, name: str, flag: str) -> str:
        """Option `name` (its `flag`) as an error line names it: the flag, or the flag and the
        environment variable that gave its value."""
        return self.from_environment.get(name, flag)


@dataclass(frozen=True, slots=True)
class ReceiveSettings:
    """The settings of one `receive` server."""

    store_path: str | None = None  # a journal (SQLite); or, with redis_url, Redis's stream
    redis_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    vonage_secret: str | None = field(default=None, repr=False)
    signature_method: str = "md5hash"
    twilio_token: str | None = field(default=None, repr=False)
    public_url: str | None = None  # the scheme and host providers call, for Twilio's signature
    # Providers ("vonage", "twilio") whose routes take callbacks unsigned though another
    # provider's secret is set (receiver/signing.py).
    accept_unsigned: frozenset[str] = frozenset()
    max_age_s: float = 72 * 3600.0  # a signed timestamp older than this is refused
    queue_size: int = 10_000
    emit: bool = False
    hook: str | None = None  # "module:function", an async function given each stored receipt
    hook_concurrency: int = 256
    drain_timeout_s: float = 10.0
    shutdown_delay_s: float = 0.0  # at SIGTERM: /healthz 503 at once, the listener closes after
    keywords: KeywordLists = DEFAULT_KEYWORDS  # what inbound messages opt out, in, or ask help
    reply_stop: str | None = None  # answered to an opt-out keyword (Twilio: TwiML)
    reply_help: str | None = None  # answered to a help keyword
    # What a reply to a Vonage number is sent with (receiver/vonage_replies.py).
    base_url: str | None = None  # None: each API's own
    api_key: str | None = None
    api_secret: str | None = field(default=None, repr=False)
    application_id: str | None = None
    private_key_path: str | None = None


@dataclass(frozen=True, slots=True)
class DistributedSettings:
    """Where a distributed campaign lives, and how one worker takes part in it."""

    redis_url: str
    campaign: str
    worker: str | None = None  # the consumer name; None: <host>-<pid>
    lease_s: float = 60.0  # a message held longer by a silent worker is taken over
    follow: bool = False  # keep waiting for new messages instead of exiting once drained
    redis_grace_s: float = 30.0  # how long a worker waits for a lost Redis before it stops


# The settings a `worker` takes from its own options (and where it takes part): the only ones
# its run records and the report shows. The rest (the input, the text, the sender, the journal)
# came with the campaign from `enqueue`. A new option a worker takes belongs here.
WORKER_SETTINGS = frozenset(
    {
        "provider", "base_url", "application_id", "private_key_path", "account_sid",
        "messaging_service_sid", "callback_url", "optouts_path", "rate_per_s", "window",
        "adaptive", "retries", "timeout_s", "retry_unknown", "max_error_rate",
        "unreachable_timeout_s", "transport", "use_uvloop", "metrics_file", "pushgateway",
        "output_path", "progress", "campaign", "redis_url", "lease_s", "redis_grace_s", "follow",
    }
)  # fmt: skip
