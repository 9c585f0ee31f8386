"""Status callbacks from the simulator, each API's own: Vonage SMS DLRs, Messages API status
webhooks and Twilio status callbacks.

Each accepted message is decided once, when it is accepted: delivered, or failed with an error
code of its API, or, sent with a ttl, expired (see `decide`). Then its receipts are planned:

    Vonage SMS API       one receipt per part (some first `accepted` or `buffered`), the final one
                         `delivered`, or `failed` with a non-zero err-code on one part; JSON, form
                         or GET as configured, signed with `sig` when a secret is set
    Vonage Messages API  one aggregated webhook per message (some first `submitted`), `delivered`
                         or `rejected` with `error` {type …/messages#1330, title "1330", detail},
                         `sms.count_total` for a multi-part one; JSON POST, signed with an HS256
                         JWT in `Authorization: Bearer` when a secret is set
    Twilio               `sent`, then `delivered` or `undelivered` with ErrorCode (30003 …), a form
                         POST always signed with X-Twilio-Signature over the URL called and its
                         fields, keyed with the account's auth token

Every receipt waits a random 0 to 2 x `callback_delay_ms`, so receipts arrive out of order, and a
share of them is sent twice.

A receipt is done when the receiver answers 2xx. Like Vonage, one not answered 2xx within the
timeout, answered otherwise, or not reaching the receiver at all is sent again `callback_retry_s`
later, until `callback_retry_for_s` after its first attempt; then it is given up.

Each API module spells its own receipts as a `ReceiptStyle` (its failure codes, its plan, the
fields, the signed request) that travels with the message; this module decides, schedules and
retries them the same way for all. The pure part (the decision, the plan, the fields, the request)
is separate from `CallbackSender`, the one part that touches the network: one
`aiohttp.ClientSession`, a heap of due receipts and a single scheduler task, whatever the number of
receipts waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final, Protocol
from urllib.parse import urlencode, urlsplit

import aiohttp
from yarl import URL

from sms_blaster.receiver.signatures import SMS_METHODS
from sms_blaster.simulator.answers import JSON

# A recipient ending in these digits is accepted, then always gets a failed receipt.
MAGIC_FAILED_SUFFIX: Final = "9989"
# One ending in these is never reached in time: a message sent to it with a ttl expires.
MAGIC_EXPIRED_SUFFIX: Final = "9988"
FORM: Final = "application/x-www-form-urlencoded"
# Vonage connects for at most 3 s of its 15 s response timeout.
CONNECT_TIMEOUT_S: Final = 3.0


class CallbackFormat(Enum):
    """How a receipt travels: Vonage's three webhook formats."""

    JSON = "json"  # POST, JSON body
    POST = "post"  # POST, form body
    GET = "get"  # GET, query string


class CallbackSettings(Protocol):
    """The `SimulatorConfig` fields the callbacks read."""

    @property
    def callback_url(self) -> str | None: ...
    @property
    def callback_format(self) -> CallbackFormat: ...
    @property
    def callback_delay_ms(self) -> float: ...
    @property
    def callback_duplicate_rate(self) -> float: ...
    @property
    def callback_early_rate(self) -> float: ...
    @property
    def callback_intermediate_rate(self) -> float: ...
    @property
    def dlr_fail_rate(self) -> float: ...
    @property
    def callback_retry_s(self) -> float: ...
    @property
    def callback_retry_for_s(self) -> float: ...
    @property
    def callback_timeout_s(self) -> float: ...
    @property
    def callback_connections(self) -> int: ...
    @property
    def signature_secret(self) -> str | None: ...
    @property
    def signature_method(self) -> str: ...
    @property
    def magic_numbers(self) -> bool: ...


def settings_problems(settings: CallbackSettings) -> list[str]:
    """What is wrong with the callback settings, one phrase each; empty when they are usable."""
    problems = []
    url = settings.callback_url
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            problems.append(f"callback_url must be an http:// or https:// URL, not {url!r}")
    for name in ("callback_duplicate_rate", "callback_early_rate", "callback_intermediate_rate"):
        value = getattr(settings, name)
        if not 0 <= value <= 1:
            problems.append(f"{name} is a probability between 0 and 1, not {value}")
    if not 0 <= settings.dlr_fail_rate <= 1:
        problems.append(
            f"dlr_fail_rate is a probability between 0 and 1, not {settings.dlr_fail_rate}"
        )
    if settings.callback_delay_ms < 0:
        problems.append(f"callback_delay_ms must be 0 or more, not {settings.callback_delay_ms}")
    if settings.callback_retry_s <= 0:
        problems.append(f"callback_retry_s must be above 0, not {settings.callback_retry_s}")
    if settings.callback_retry_for_s < 0:
        problems.append(
            f"callback_retry_for_s must be 0 or more, not {settings.callback_retry_for_s}"
        )
    if settings.callback_timeout_s <= 0:
        problems.append(f"callback_timeout_s must be above 0, not {settings.callback_timeout_s}")
    if settings.callback_connections < 1:
        problems.append(
            f"callback_connections must be at least 1, not {settings.callback_connections}"
        )
    if settings.signature_method not in SMS_METHODS:
        problems.append(
            f"signature_method must be one of {', '.join(SMS_METHODS)}, "
            f"not {settings.signature_method!r}"
        )
    return problems


# --- pure pieces: the decision, the plan, the fields, the request -------------------------------


@dataclass(frozen=True, slots=True)
class AcceptedMessage:
    """What a receipt needs to know of an accepted send."""

    to: str  # as the API spells it (Twilio with its '+')
    sender: str  # the send's `from`, which a Vonage SMS DLR calls `to`
    api_key: str  # Vonage: the key it was sent with; Twilio: the account SID
    network: str
    price: str  # per part
    message_ids: tuple[str, ...]  # SMS API: one per part; the others: the message's one id
    style: ReceiptStyle  # its API's receipts
    client_ref: str | None = None  # Twilio: the one in the StatusCallback's query
    url: str | None = None  # where its receipts go; None: the configured callback_url
    parts: int = 0  # 0: one per message id
    token: str | None = field(default=None, repr=False)  # Twilio: the auth token that signs
    application_id: str | None = None  # Messages API: the application token's
    service_sid: str | None = None  # Twilio: the Messaging Service it was sent through
    ttl_s: float | None = None  # its validity period, as the send asked; None: the API's default

    @property
    def key(self) -> str:
        """How the stats name this message: its client-ref, else its first message id."""
        return self.client_ref if self.client_ref is not None else self.message_ids[0]

    @property
    def segments(self) -> int:
        return self.parts or len(self.message_ids)


@dataclass(frozen=True, slots=True)
class Decision:
    """A message's fate: delivered, failed on one part with a non-zero err-code, or expired
    (every part) with its API's code for that."""

    failed_part: int | None = None
    err_code: int = 0
    expired: bool = False

    @property
    def delivered(self) -> bool:
        return self.failed_part is None and not self.expired

    @property
    def outcome(self) -> str:
        """As the stats name it: delivered, failed or expired."""
        return "expired" if self.expired else "delivered" if self.delivered else "failed"

    def final_status(self, part: int) -> str:
        """A Vonage SMS API part's final DLR status."""
        if self.expired:
            return "expired"
        return "failed" if part == self.failed_part else "delivered"


def decide(
    message: AcceptedMessage,
    rng: random.Random,
    fail_rate: float,
    *,
    magic_numbers: bool,
    delay_spread_s: float = 0.0,
) -> Decision:
    """Delivered, failed or expired: failed always for the magic suffix; expired, for a message
    sent with a ttl, when its delivery (a delay drawn like its receipts', up to
    `delay_spread_s`) would take longer than the ttl, or always for the magic expired suffix;
    else failed with `fail_rate`.

    A failure or an expiry has an error code of the message's API: a DLR err-code, a Messages
    API error code or a Twilio ErrorCode.
    """
    parts = message.segments
    style = message.style
    if magic_numbers and message.to.endswith(MAGIC_FAILED_SUFFIX):
        return Decision(rng.randrange(parts), style.magic_code)
    if message.ttl_s is not None and (
        (magic_numbers and message.to.endswith(MAGIC_EXPIRED_SUFFIX))
        or rng.uniform(0.0, delay_spread_s) > message.ttl_s
    ):
        return Decision(err_code=style.expired_code, expired=True)
    if fail_rate and rng.random() < fail_rate:
        return Decision(rng.randrange(parts), rng.choice(style.codes))
    return Decision()


@dataclass(frozen=True, slots=True)
class PlannedReceipt:
    part: int
    status: str


@dataclass(frozen=True, slots=True)
class CallbackRequest:
    method: str
    url: str
    body: bytes | None = None
    content_type: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


def callback_request(url: str, fields: dict[str, str], fmt: CallbackFormat) -> CallbackRequest:
    """The HTTP request that carries `fields` in the given format."""
    if fmt is CallbackFormat.JSON:
        return CallbackRequest("POST", url, json.dumps(fields).encode(), JSON)
    encoded = urlencode(fields)
    if fmt is CallbackFormat.POST:
        return CallbackRequest("POST", url, encoded.encode(), FORM)
    return CallbackRequest("GET", url + ("&" if urlsplit(url).query else "?") + encoded)


@dataclass(frozen=True, slots=True)
class ReceiptStyle:
    """How one API's receipts go: its failure codes, which receipts a message gets, their fields,
    and the request that carries one, signed; each API module builds its own."""

    magic_code: int  # the failure of a recipient ending in MAGIC_FAILED_SUFFIX
    codes: tuple[int, ...]  # the failures a random one picks from
    # A message's receipts, given its decision and `callback_intermediate_rate`.
    plan: Callable[[AcceptedMessage, Decision, random.Random, float], list[PlannedReceipt]]
    # The fields of one planned receipt, at a time in seconds since the epoch.
    fields: Callable[[AcceptedMessage, Decision, PlannedReceipt, float], dict[str, Any]]
    # The request that carries a receipt's fields to a URL, signed, at a time.
    request: Callable[
        [AcceptedMessage, str, Mapping[str, Any], CallbackSettings, float], CallbackRequest
    ]
    url_as_signed: bool = False  # the URL is signed: send it as it is, never requoted
    expired_code: int = 0  # the error code of a receipt saying the ttl ran out


# --- sending ------------------------------------------------------------------------------------


@dataclass(slots=True)
class CallbackCounts:
    """The counters a stats reset zeroes."""

    sent: int = 0  # attempts
    acked: int = 0
    retried: int = 0
    given_up: int = 0
    delivered: int = 0  # messages decided delivered
    failed: int = 0
    expired: int = 0
    outcomes: dict[str, str] = field(default_factory=dict)


class _Receipt:
    """One receipt to deliver, with its retry state; built into fields at its first attempt."""

    __slots__ = (
        "attempts",
        "decision",
        "early",
        "fields",
        "first_attempt_s",
        "message",
        "plan",
        "url",
    )

    def __init__(
        self, message: AcceptedMessage, decision: Decision, plan: PlannedReceipt, url: str
    ) -> None:
        self.message = message
        self.decision = decision
        self.plan = plan
        self.url = url
        self.fields: dict[str, Any] | None = None
        self.attempts = 0
        self.first_attempt_s = 0.0
        self.early: asyncio.Future[None] | None = None


class CallbackSender:
    """Delivers receipts: a heap of due receipts drained by one scheduler task into at most
    `callback_connections` attempts at once, over one session."""

    __slots__ = (
        "_attempts",
        "_clock",
        "_closed",
        "_heap",
        "_idle",
        "_rng",
        "_scheduler",
        "_sequence",
        "_session",
        "_settings",
        "_wakeup",
        "counts",
        "pending",
    )

    def __init__(
        self,
        settings: CallbackSettings,
        rng: random.Random,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._rng = rng
        self._clock = clock  # wall time, for the receipts' timestamps and signatures
        self._session: aiohttp.ClientSession | None = None
        self._scheduler: asyncio.Task[None] | None = None
        self._attempts: set[asyncio.Task[None]] = set()
        self._heap: list[tuple[float, int, _Receipt]] = []
        self._sequence = 0  # ties on the heap go first come, first served
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        self.counts = CallbackCounts()
        self.pending = 0  # receipts not yet acked or given up

    async def start(self) -> None:
        """Open the session and start the scheduler; call once, on the running loop."""
        timeout_s = self._settings.callback_timeout_s
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._settings.callback_connections),
            timeout=aiohttp.ClientTimeout(
                total=timeout_s, sock_connect=min(CONNECT_TIMEOUT_S, timeout_s)
            ),
        )
        self._scheduler = asyncio.create_task(self._schedule(), name="sms-blaster-callbacks")

    def submit(self, message: AcceptedMessage, keep_outcome: bool) -> asyncio.Future[None] | None:
        """Decide an accepted message and queue its receipts, to its own URL or the configured one;
        with neither, do nothing.

        Returns a future for an early message (`callback_early_rate`): its first receipt is
        attempted at once, and the future is done when that attempt is.
        """
        settings, rng = self._settings, self._rng
        url = message.url or settings.callback_url
        if url is None or self._closed or self._session is None:
            return None
        spread_s = 2 * settings.callback_delay_ms / 1000
        decision = decide(
            message,
            rng,
            settings.dlr_fail_rate,
            magic_numbers=settings.magic_numbers,
            delay_spread_s=spread_s,
        )
        counts = self.counts
        if decision.expired:
            counts.expired += 1
        elif decision.delivered:
            counts.delivered += 1
        else:
            counts.failed += 1
        if keep_outcome:
            counts.outcomes[message.key] = decision.outcome
        plan = message.style.plan(message, decision, rng, settings.callback_intermediate_rate)
        receipts = []
        for planned in plan:
            receipts.append(_Receipt(message, decision, planned, url))
            if settings.callback_duplicate_rate and rng.random() < settings.callback_duplicate_rate:
                receipts.append(_Receipt(message, decision, planned, url))
        self.pending += len(receipts)
        self._idle.clear()
        early = None
        if settings.callback_early_rate and rng.random() < settings.callback_early_rate:
            first = receipts.pop(0)
            early = first.early = asyncio.get_running_loop().create_future()
            self._launch(first)
        now_s = asyncio.get_running_loop().time()
        for receipt in receipts:
            self._push(now_s + rng.uniform(0.0, spread_s), receipt)
        return early

    async def wait_done(self) -> None:
        """Return once no receipt is pending, or the sender is closed."""
        await self._idle.wait()

    def reset(self) -> None:
        """Zero the counters; receipts still pending stay pending."""
        self.counts = CallbackCounts()

    def snapshot(self, keep_outcomes: bool) -> dict[str, Any]:
        return callbacks_snapshot(self.counts, self.pending, keep_outcomes)

    async def close(self) -> None:
        """Abandon pending receipts: cancel the scheduler and attempts, close the session."""
        self._closed = True
        tasks = [*self._attempts]
        if self._scheduler is not None:
            tasks.append(self._scheduler)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._heap.clear()
        if self._session is not None:
            await self._session.close()
        self._idle.set()

    def _push(self, due_s: float, receipt: _Receipt) -> None:
        if not self._heap or due_s < self._heap[0][0]:
            self._wakeup.set()  # a new first receipt: the scheduler may be sleeping past it
        self._sequence += 1
        heapq.heappush(self._heap, (due_s, self._sequence, receipt))

    async def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        heap = self._heap
        while True:
            self._wakeup.clear()
            wait_s = None
            if heap and len(self._attempts) < self._settings.callback_connections:
                wait_s = heap[0][0] - loop.time()
                if wait_s <= 0:
                    self._launch(heapq.heappop(heap)[2])
                    continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self._wakeup.wait()

    def _launch(self, receipt: _Receipt) -> None:
        task = asyncio.create_task(self._attempt(receipt))
        self._attempts.add(task)
        task.add_done_callback(self._attempt_done)

    def _attempt_done(self, task: asyncio.Task[None]) -> None:
        self._attempts.discard(task)
        if self._heap:
            self._wakeup.set()  # a slot is free

    async def _attempt(self, receipt: _Receipt) -> None:
        loop = asyncio.get_running_loop()
        if receipt.fields is None:
            receipt.first_attempt_s = loop.time()
            receipt.fields = receipt.message.style.fields(
                receipt.message, receipt.decision, receipt.plan, self._clock()
            )
        counts = self.counts
        counts.sent += 1
        if receipt.attempts:
            counts.retried += 1
        receipt.attempts += 1
        try:
            acked = await self._deliver(receipt.message, receipt.url, receipt.fields)
        finally:
            if receipt.early is not None and not receipt.early.done():
                receipt.early.set_result(None)
            receipt.early = None
        retry_s = self._settings.callback_retry_s
        if acked:
            self.counts.acked += 1
        elif loop.time() + retry_s <= receipt.first_attempt_s + self._settings.callback_retry_for_s:
            self._push(loop.time() + retry_s, receipt)
            return
        else:
            self.counts.given_up += 1
        self.pending -= 1
        if self.pending == 0:
            self._idle.set()

    async def _deliver(self, message: AcceptedMessage, url: str, fields: Mapping[str, Any]) -> bool:
        """One attempt: True when the receiver answered 2xx."""
        style = message.style
        request = style.request(message, url, fields, self._settings, self._clock())
        headers = dict(request.headers)
        if request.content_type is not None:
            headers["Content-Type"] = request.content_type
        session = self._session
        if session is None:
            return False
        # A signed URL (Twilio's) must go exactly as signed, not requoted by the client.
        target = URL(request.url, encoded=True) if style.url_as_signed else request.url
        try:
            async with session.request(
                request.method, target, data=request.body, headers=headers
            ) as response:
                await response.read()
                return 200 <= response.status < 300
        except (aiohttp.ClientError, TimeoutError):
            return False


def callbacks_snapshot(counts: CallbackCounts, pending: int, keep_outcomes: bool) -> dict[str, Any]:
    """The `callbacks` section of the simulator's stats."""
    snapshot: dict[str, Any] = {
        "sent": counts.sent,
        "acked": counts.acked,
        "retried": counts.retried,
        "given_up": counts.given_up,
        "pending": pending,
        "decided": {"delivered": counts.delivered, "failed": counts.failed},
    }
    if counts.expired:  # only once a message sent with a ttl expired
        snapshot["decided"]["expired"] = counts.expired
    if keep_outcomes:
        snapshot["outcomes"] = dict(counts.outcomes)
    return snapshot
