"""A local server that answers like the Vonage SMS API, the Vonage Messages API and Twilio, for
tests, demos and benchmarks.

    POST /sms/json                                  Vonage SMS API (this module)
    POST /v1/messages                               Vonage Messages API (`messages_api`)
    POST /2010-04-01/Accounts/{sid}/Messages.json   Twilio (`twilio_api`)

The SMS API takes a form or JSON body with credentials in a Basic header or in `api_key` and
`api_secret` (body or query). Every business answer is HTTP 200 with
`{"message-count": "N", "messages": [...]}` and numbers as strings; an accepted message gets one
element per SMS part. The other two answer in their own shapes (see their modules). On top of that
the simulator adds latency, a throttle (a token bucket or another limiter shape), a concurrency cap
and random faults, the same for all three APIs, all set by `SimulatorConfig`.

A request goes through these checks in order; the first that refuses it answers:

    0. random reset      `reset_before_rate`: the connection drops before the request is read
    1. concurrency cap   HTTP 429 (refused at the door, no latency): SMS API Retry-After: 1;
                         Messages API Retry-After: 1; Twilio code 20429
    2. credentials       SMS API status "2" Missing api_key / api_secret, "4" Bad Credentials;
                         Messages API 401; Twilio 401 code 20003
    3. throttle          SMS API status "1" Throughput Rate Exceeded - please wait [ N ] and retry
                         (N: ms); Messages API 429 with Retry-After (whole s); Twilio 429 code 20429
                         (no wait); spelled otherwise by `throttle_hint`, see below
    4. parameters        SMS API status "2" Missing from/to/text param, "3" Invalid to address,
                         Invalid type param, Invalid callback param; Messages API 422; Twilio 400
    5. magic recipients  see the table below
    6. random HTTP 503   `error_5xx_rate`: not accepted, Retry-After: 1, safe to retry
    7. accept            counted and charged; a random or magic reset or timeout may follow

With `echo_credentials` every send is refused at step 2 as bad credentials, in its API's shape,
with the credentials it carried (the Authorization header, decoded, and the form and query) quoted
in the error text: a client must keep them out of everything it stores or shows.

The throttle has one limiter per API and credential (API key, application id, account SID): the
token bucket of `rate_per_s` and `burst`, or the shape `limiter` names (`sms_blaster.simulator.
limiters`: bucket, sliding log, fixed window, cap in service, queue, or a schedule of these). The
Vonage APIs count requests; Twilio counts segments: a Twilio send costs as many units as its Body
has SMS segments (`sms_blaster.encoding`: GSM-7, else UCS-2), and a send bigger than the whole
bucket goes when the bucket is full. A request the throttle accepted holds its place in a
`concurrency` cap until its answer goes out (or it is dropped or left hanging); a `queue` adds the
request's wait in the queue to its latency. A `concurrency` refusal goes out at once, without the
latency, as a provider refusing at the door does; the other refusals wait out the latency.

`throttle_hint` spells the throttle's refusals: `exact` as in step 3, with the true wait (a
`concurrency` refusal, which knows none, hints the latency); `none` the same answers without a wait
(SMS API "please wait and retry", Messages API 429 without Retry-After); `wrong` a wait drawn at
random between 0 and 2 s whatever the truth; `retry-after` HTTP 429 with Retry-After in whole
seconds (at least 1) from every API, the SMS API included. Twilio's 429 carries a wait only with
`retry-after`. Magic number 9994 keeps its own answer.

Magic recipients, chosen by the last four digits of `to`; client tests rely on these:

    | ends | Vonage SMS API             | Messages API            | Twilio                 | when  |
    |------|----------------------------|-------------------------|------------------------|-------|
    | 9990 | "7" Number barred.         | 422 #1240 Illegal Number| 400 21610 unsubscribed | every |
    | 9991 | "6" Invalid Message        | 422 #1150 Invalid params| 400 21211 invalid To   | every |
    | 9992 | "4" Bad Credentials        | 401                     | 401 20003 Authenticate | every |
    | 9993 | "9" Quota Exceeded         | 402 Low balance         | 401 20003 (account)    | every |
    | 9994 | "1" Throughput … [ 50 ]    | 429, Retry-After: 1     | 429 20429              | first |
    | 9995 | HTTP 503, Retry-After: 1   | 503, Retry-After: 1     | 503 20503, Retry-After | first |
    | 9996 | accepted and counted, then never answered (all three)                       | every |
    | 9997 | accepted and counted, then the connection drops, no answer (all three)      | every |
    | 9998 | "5" Server Error           | 500                     | 500 20500              | first |
    | 9989 | accepted; its receipts say failed: err-code 3 / rejected 1330 / 30003       | every |

Twilio has no quota answer in the reference, so 9993 is the account-wide refusal it does document,
20003, which a client treats as fatal like Vonage's status 9 and 402. Status "5" of the SMS API is
a refusal: the message was not taken. A Messages API or Twilio 500 says no such thing: to a client
it is ambiguous (it may have been taken), though the simulator did not accept it.

"First request" numbers are accepted from their second request to that API on;
`POST /_simulator/reset` makes them fail once more. `GET /_simulator/stats` returns the counters
(see `RunningSimulator.stats`). `GET /_simulator/timeline` returns every request's outcome by
when it arrived, all APIs together: `{"arrivals": [[t_ms, accepted, throttled, other], ...]}`,
one row per millisecond with arrivals, t_ms from the first arrival since the last reset;
`throttled` counts the throttle's refusals, `other` every other request not accepted.
`POST /_simulator/config` with a JSON object changes faults, latency, throttle and expected
credentials of the running simulator (`CONFIGURABLE`), so a test can revoke credentials or add
a latency spike mid-run and undo it; it answers 400 to anything else and the changed settings
otherwise.

Every accepted message whose receipts have somewhere to go is decided delivered or failed and its
receipts are sent, in its API's shape (see `sms_blaster.simulator.callbacks`): to the send's own
URL (SMS API `callback`, Messages API `webhook_url`, Twilio `StatusCallback`), else, for the two
Vonage APIs, to `callback_url`. Twilio calls back only when the send named a StatusCallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import random
import re
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import Enum
from types import TracebackType
from typing import Any, Final
from urllib.parse import parse_qsl, quote

from aiohttp import web

from sms_blaster.encoding import GSM7_ALL, count_segments
from sms_blaster.models import Encoding
from sms_blaster.simulator import limiters, messages_api, twilio_api
from sms_blaster.simulator.answers import (
    JSON,
    Api,
    Refusal,
    SendRequest,
    Tally,
    basic_credentials,
    dumps,
    is_http_url,
)
from sms_blaster.simulator.callbacks import (
    AcceptedMessage,
    CallbackFormat,
    CallbackSender,
    settings_problems,
)
from sms_blaster.simulator.messages_api import MESSAGES_PATH
from sms_blaster.simulator.twilio_api import TWILIO_PATH

SMS_PATH: Final = "/sms/json"
STATS_PATH: Final = "/_simulator/stats"
RESET_PATH: Final = "/_simulator/reset"
CONFIG_PATH: Final = "/_simulator/config"
TIMELINE_PATH: Final = "/_simulator/timeline"
# What POST /_simulator/config may change while the simulator runs.
CONFIGURABLE: Final = frozenset(
    {
        "latency_ms",
        "jitter_ms",
        "rate_per_s",
        "burst",
        "limiter",
        "throttle_hint",
        "max_concurrency",
        "error_5xx_rate",
        "reset_rate",
        "reset_before_rate",
        "timeout_rate",
        "api_key",
        "api_secret",
        "application_id",
        "twilio_account_sid",
        "twilio_auth_token",
    }
)

NETWORK: Final = "23410"
# The `wrong` throttle hint is drawn between 0 and this, whatever the truth.
WRONG_HINT_MAX_S: Final = 2.0
MAGIC_THROTTLE_WAIT_MS: Final = 50
CALLBACK_MAX_CHARS: Final = 100  # the SMS API's `callback` parameter
# "Never answers": far longer than any client timeout; close() wakes these requests at once.
HANG_S: Final = 3600.0
# How long close() lets requests still sleeping out their latency finish before cancelling them.
SHUTDOWN_TIMEOUT_S: Final = 0.1

_TO = re.compile(r"\d{7,15}")
_TWILIO_ACCOUNT = re.compile(r"AC[0-9a-fA-F]{32}")
_TYPES: Final = {"text": Encoding.GSM7, "unicode": Encoding.UCS2}


class ThrottleHint(Enum):
    """How a limiter's refusal says when to retry."""

    EXACT = "exact"  # each API's own spelling of the true wait
    NONE = "none"  # the same answers without any wait
    WRONG = "wrong"  # a wait drawn at random, 0 to WRONG_HINT_MAX_S
    RETRY_AFTER = "retry-after"  # HTTP 429 with Retry-After in whole seconds, every API


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """How the simulator behaves: latency, throttle, concurrency cap, faults, credentials, price."""

    latency_ms: float = 0.0  # added before every answer
    jitter_ms: float = 0.0  # plus uniform random 0..jitter_ms
    rate_per_s: float | None = None  # per credential throttle (Twilio: segments); None = unlimited
    burst: float | None = None  # token-bucket capacity; None -> max(2, rate_per_s / 20)
    # Another limiter shape instead of rate_per_s and burst (`sms_blaster.simulator.limiters`).
    limiter: str | None = None
    throttle_hint: ThrottleHint = ThrottleHint.EXACT
    max_concurrency: int | None = None  # more requests at once -> HTTP 429
    error_5xx_rate: float = 0.0  # probability of HTTP 503 before accepting (safe to retry)
    reset_rate: float = 0.0  # probability of: accept, then drop the connection with no answer
    # Probability of dropping the connection before the request is read: nothing accepted.
    reset_before_rate: float = 0.0
    timeout_rate: float = 0.0  # probability of: accept, then never answer
    # Expected credentials; None = any non-empty ones.
    api_key: str | None = None  # Vonage SMS and Messages API, Basic or body
    api_secret: str | None = field(default=None, repr=False)
    application_id: str | None = None  # Messages API application tokens
    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = field(default=None, repr=False)
    price_per_part: Decimal = Decimal("0.03330000")
    balance: Decimal = Decimal("100.00000000")
    keep_messages: bool = True  # keep each accepted message in the stats (off for big benchmarks)
    per_recipient: bool = True  # count per recipient (off for big runs: memory per number)
    magic_numbers: bool = True  # answer the magic suffixes below (off: real numbers' answers)
    # Refuse every send as bad credentials, quoting the credentials it carried (header, form,
    # query) in the error text: what a careless provider or proxy does, for redaction tests.
    echo_credentials: bool = False
    seed: int | None = None  # for the random faults, jitter and delivery decisions
    # Receipts (see sms_blaster.simulator.callbacks) for the two Vonage APIs, unless a send names
    # its own URL; None = only to those.
    callback_url: str | None = None
    callback_format: CallbackFormat = CallbackFormat.JSON  # SMS API only
    callback_delay_ms: float = 200.0  # each receipt waits a random 0 to 2 x this
    callback_duplicate_rate: float = 0.05  # receipts sent twice
    callback_early_rate: float = 0.0  # messages whose first receipt goes before the answer
    callback_intermediate_rate: float = 1 / 3  # SMS parts, Messages: a receipt before the final
    dlr_fail_rate: float = 0.0  # messages decided failed
    callback_retry_s: float = 60.0  # resend a receipt not acknowledged after this long
    callback_retry_for_s: float = 259_200.0  # give a receipt up 72 h after its first attempt
    callback_timeout_s: float = 15.0  # per attempt, as Vonage
    callback_connections: int = 100
    # Signs SMS API receipts (sig) and Messages API webhooks (JWT); Twilio signs with its token.
    signature_secret: str | None = field(default=None, repr=False)
    signature_method: str = "md5hash"

    def __post_init__(self) -> None:
        problems = [
            *settings_problems(self),
            *_not_negative("latency_ms", self.latency_ms),
            *_not_negative("jitter_ms", self.jitter_ms),
            *_probability("error_5xx_rate", self.error_5xx_rate),
            *_probability("reset_rate", self.reset_rate),
            *_probability("reset_before_rate", self.reset_before_rate),
            *_probability("timeout_rate", self.timeout_rate),
            *_credential_problems(self),
        ]
        if self.rate_per_s is not None and self.rate_per_s <= 0:
            problems.append(
                f"rate_per_s must be above 0 or None (unlimited), not {self.rate_per_s}"
            )
        if self.limiter is not None:
            problems.extend(_limiter_problems(self))
        if not isinstance(self.throttle_hint, ThrottleHint):
            hints = ", ".join(hint.value for hint in ThrottleHint)
            problems.append(f"throttle_hint must be one of {hints}, not {self.throttle_hint!r}")
        if self.burst is not None and self.burst < 1:
            problems.append(f"burst must be at least 1 (one request), not {self.burst}")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            problems.append(
                f"max_concurrency must be at least 1 or None, not {self.max_concurrency}"
            )
        if self.reset_rate + self.timeout_rate > 1:
            problems.append("reset_rate + timeout_rate must not exceed 1")
        if problems:
            raise ValueError("SimulatorConfig: " + "; ".join(problems))

    @property
    def bucket_capacity(self) -> float:
        """The throttle's burst: as configured, else 50 ms worth of requests but at least 2."""
        if self.burst is not None:
            return self.burst
        return max(2.0, (self.rate_per_s or 0.0) / 20)

    def new_limiter(self) -> limiters.Limiter | None:
        """A fresh limiter for one API and credential: `limiter`, else the rate's token bucket."""
        if self.limiter is not None:
            return limiters.parse(self.limiter)
        if self.rate_per_s is None:
            return None
        return limiters.TokenBucket(self.rate_per_s, self.bucket_capacity)


def _limiter_problems(config: SimulatorConfig) -> list[str]:
    if config.rate_per_s is not None or config.burst is not None:
        return ["give limiter or rate_per_s (and burst), not both"]
    try:
        limiters.parse(str(config.limiter))
    except ValueError as exc:
        return [f"limiter {config.limiter!r}: {exc}"]
    return []


def _not_negative(name: str, value: float) -> list[str]:
    return [] if value >= 0 else [f"{name} must be 0 or more, not {value}"]


def _probability(name: str, value: float) -> list[str]:
    return [] if 0 <= value <= 1 else [f"{name} is a probability between 0 and 1, not {value}"]


def _credential_problems(config: SimulatorConfig) -> list[str]:
    problems = []
    for name in ("api_key", "api_secret", "application_id", "twilio_auth_token"):
        value = getattr(config, name)
        if value is not None and (not value or value != value.strip()):
            problems.append(f"{name} must be non-empty, without surrounding spaces, or None")
    sid = config.twilio_account_sid
    if sid is not None and _TWILIO_ACCOUNT.fullmatch(sid) is None:
        problems.append(f"twilio_account_sid must be AC and 32 hex digits, not {sid!r}")
    return problems


# --- pure pieces: Vonage SMS API answers, throttle arithmetic -----------------------------------


def error_body(status: str, text: str) -> bytes:
    """The body of a refused message: one element with a status and an error text."""
    element = {"status": status, "error-text": text}
    return dumps({"message-count": "1", "messages": [element]})


def throttle_body(wait_ms: int | None) -> bytes:
    """The status-1 answer, with the wait in whole milliseconds that clients parse (or none)."""
    if wait_ms is None:
        return error_body("1", "Throughput Rate Exceeded - please wait and retry")
    return error_body("1", f"Throughput Rate Exceeded - please wait [ {wait_ms} ] and retry")


def success_body(
    to: str, message_ids: list[str], balances: list[str], price: str, client_ref: str | None
) -> bytes:
    """The status-0 answer: one element per part, each with its own id and remaining balance."""
    # Formatted by hand: this runs once per accepted request, and `to` is validated digits.
    ref = "" if client_ref is None else ',"client-ref":' + json.dumps(client_ref)
    elements = ",".join(
        f'{{"to":"{to}","message-id":"{message_id}","status":"0",'
        f'"remaining-balance":"{balance}","message-price":"{price}","network":"{NETWORK}"{ref}}}'
        for message_id, balance in zip(message_ids, balances, strict=True)
    )
    return f'{{"message-count":"{len(message_ids)}","messages":[{elements}]}}'.encode()


def wait_ms(wait_s: float) -> int:
    """The wait a throttled client is told: whole milliseconds, rounded up, at least 1."""
    return max(1, math.ceil(wait_s * 1000))


def message_id(number: int) -> str:
    """A Vonage-style message id: 16 uppercase hex digits, e.g. `0A0000001234ABCD`."""
    return f"0A{number & 0xFFFF_FFFF_FFFF_FF:014X}"


def _rejected(status: str, text: str) -> Refusal:
    return Refusal(error_body(status, text))


def _sms_throttled(wait_s: float | None) -> Refusal:
    return Refusal(throttle_body(None if wait_s is None else wait_ms(wait_s)), Tally.THROTTLED)


def _sms_rate_limited(retry_after_s: int) -> Refusal:
    return Refusal(
        dumps({"title": "Too Many Requests", "detail": "throughput rate exceeded"}),
        Tally.THROTTLED,
        429,
        (("Retry-After", str(retry_after_s)),),
    )


_MISSING: Final = {
    name: _rejected("2", f"Missing {name}" if name.startswith("api_") else f"Missing {name} param")
    for name in ("api_key", "api_secret", "from", "to", "text")
}
_BAD_CREDENTIALS: Final = _rejected("4", "Bad Credentials")
_INVALID_TO: Final = _rejected("3", "Invalid to address")
_INVALID_TYPE: Final = _rejected("3", "Invalid type param")
_INVALID_CALLBACK: Final = _rejected("3", "Invalid callback param")
# A refusal before processing says so with Retry-After, which is what makes it safe to resend.
_UNAVAILABLE: Final = Refusal(
    dumps({"title": "Service Unavailable", "status": 503}),
    Tally.HTTP_503,
    503,
    (("Retry-After", "1"),),
)
_TOO_MANY: Final = Refusal(
    dumps({"title": "Too Many Requests", "detail": "too many concurrent requests"}),
    http_status=429,
    headers=(("Retry-After", "1"),),
)


def read_sms(
    params: Mapping[str, str],
    authorization: str | None,
    *,
    api_key: str | None = None,
    api_secret: str | None = None,
) -> SendRequest:
    """A Vonage SMS API request, read from its parameters (form, JSON and query merged).

    With `api_key` or `api_secret` given, other credentials are bad ones.
    """
    key, secret = _sms_credentials(params, authorization)
    text = params.get("text", "")
    kind = params.get("type") or "text"
    encoding = _TYPES.get(kind)
    segments = count_segments(text, encoding) if text and encoding is not None else 1
    problem = _sms_parameters_problem(params, kind)
    return SendRequest(
        params.get("to", ""),
        key,
        segments,
        _sms_credentials_problem(key, secret, api_key, api_secret),
        problem,
        params if problem is None else None,
        kind == "text" and problem is None and not GSM7_ALL.issuperset(text),
    )


def _sms_credentials(params: Mapping[str, str], authorization: str | None) -> tuple[str, str]:
    if authorization:
        return basic_credentials(authorization)
    return params.get("api_key", ""), params.get("api_secret", "")


def _sms_credentials_problem(
    key: str, secret: str, api_key: str | None, api_secret: str | None
) -> Refusal | None:
    if not key:
        return _MISSING["api_key"]
    if not secret:
        return _MISSING["api_secret"]
    if (api_key is not None and key != api_key) or (
        api_secret is not None and secret != api_secret
    ):
        return _BAD_CREDENTIALS
    return None


def _sms_parameters_problem(params: Mapping[str, str], kind: str) -> Refusal | None:
    for name in ("from", "to", "text"):
        if not params.get(name):
            return _MISSING[name]
    if _TO.fullmatch(params["to"]) is None:
        return _INVALID_TO
    if kind not in _TYPES:
        return _INVALID_TYPE
    callback = params.get("callback")
    if callback is not None and (len(callback) > CALLBACK_MAX_CHARS or not is_http_url(callback)):
        return _INVALID_CALLBACK
    return None


class _After(Enum):
    """What happens to an accepted request: an answer, a dropped connection, or silence."""

    ANSWER = "answer"
    RESET = "reset"
    HANG = "hang"


_MAGIC_AFTER: Final = {"9996": _After.HANG, "9997": _After.RESET}


# --- one API's answers, for the checks every API shares ------------------------------------------


@dataclass(frozen=True, slots=True)
class _Accepted:
    """The answer to an accepted send, and the message its receipts describe (None: no receipts)."""

    status: int
    body: bytes
    message: AcceptedMessage | None


@dataclass(frozen=True, slots=True)
class _Dialect:
    """How one API spells the shared checks' answers, and reads and accepts its sends."""

    api: Api
    magic_always: Mapping[str, Refusal]
    magic_first: Mapping[str, Refusal]
    unavailable: Refusal
    too_many: Refusal  # the concurrency cap
    throttled: Callable[[float | None], Refusal]  # given the wait in seconds, or no hint
    rate_limited: Callable[[int], Refusal]  # HTTP 429 with Retry-After: this many seconds
    counts_segments: bool  # the throttle takes one token per segment, not per request
    echo: Callable[[str], Refusal]  # bad credentials, quoting the request's (echo_credentials)


# --- state --------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Recipient:
    requests: int = 0
    accepted: int = 0
    messages: list[dict[str, Any]] = field(default_factory=list)


def _per_api() -> dict[Api, Counter[int]]:
    return {api: Counter() for api in Api}


@dataclass(slots=True)
class _Counts:
    """Everything `POST /_simulator/reset` zeroes; mutable because every request bumps it."""

    balance: Decimal
    requests: int = 0
    accepted: int = 0
    accepted_parts: int = 0
    throttled: int = 0
    rejected: int = 0
    non_gsm_as_text: int = 0
    http_503: int = 0
    http_429: int = 0
    reset: int = 0
    reset_before: int = 0
    timeout: int = 0
    max_in_flight: int = 0
    recipients: dict[str, _Recipient] = field(default_factory=dict)
    # The throttle: one limiter per API and credential, made on its first request.
    limiters: dict[tuple[Api, str], limiters.Limiter] = field(default_factory=dict)
    # "First request" magic numbers seen, per API.
    answered_once: set[tuple[Api, str]] = field(default_factory=set)
    # Per API and millisecond of arrival: requests, and the SMS segments they carried.
    arrivals_ms: dict[Api, Counter[int]] = field(default_factory=_per_api)
    segment_arrivals_ms: dict[Api, Counter[int]] = field(default_factory=_per_api)
    # Per millisecond of arrival, all APIs: accepted, and refused by the throttle.
    accepted_ms: Counter[int] = field(default_factory=Counter)
    throttled_ms: Counter[int] = field(default_factory=Counter)

    def count(self, refusal: Refusal) -> None:
        if refusal.tally is Tally.THROTTLED:
            self.throttled += 1
        elif refusal.tally is Tally.HTTP_503:
            self.http_503 += 1
        else:
            self.rejected += 1


class _State:
    __slots__ = (
        "accept_waiters",
        "callbacks",
        "closing",
        "config",
        "counts",
        "in_flight",
        "next_id",
        "price",
        "rng",
    )

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.price = f"{config.price_per_part:.8f}"
        self.counts = _Counts(balance=config.balance)
        self.in_flight = 0
        # A random start keeps ids unique across simulator restarts under one journal.
        self.next_id = secrets.randbits(48)
        self.closing = asyncio.Event()
        self.accept_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.callbacks = CallbackSender(config, self.rng)

    def reset(self) -> None:
        self.counts = _Counts(balance=self.config.balance, max_in_flight=self.in_flight)
        self.callbacks.reset()

    def snapshot(self) -> dict[str, Any]:
        counts = self.counts
        keep = self.config.keep_messages
        return {
            "requests": counts.requests,
            "accepted": counts.accepted,
            "accepted_parts": counts.accepted_parts,
            "throttled": counts.throttled,
            "rejected": counts.rejected,
            "non_gsm_as_text": counts.non_gsm_as_text,
            "faults": {
                "http_503": counts.http_503,
                "http_429": counts.http_429,
                "reset": counts.reset,
                "reset_before": counts.reset_before,
                "timeout": counts.timeout,
            },
            "max_in_flight": counts.max_in_flight,
            "arrivals": arrivals_snapshot(counts.arrivals_ms, counts.segment_arrivals_ms),
            "recipients": {
                to: _recipient_snapshot(recipient, keep)
                for to, recipient in counts.recipients.items()
            },
            "callbacks": self.callbacks.snapshot(keep),
        }


def arrival_summary(arrivals_ms: Mapping[int, int], window_ms: int = 1000) -> dict[str, Any]:
    """Requests as the provider counts them: the span they arrived over and the most that
    arrived in any `window_ms` (a sliding window, at millisecond resolution)."""
    if not arrivals_ms:
        return {"count": 0, "span_s": 0.0, "peak_1s": 0}
    times = sorted(arrivals_ms)
    peak = in_window = 0
    start = 0
    for end_ms in times:
        in_window += arrivals_ms[end_ms]
        while times[start] <= end_ms - window_ms:
            in_window -= arrivals_ms[times[start]]
            start += 1
        peak = max(peak, in_window)
    span_s = (times[-1] - times[0]) / 1000
    return {"count": sum(arrivals_ms.values()), "span_s": span_s, "peak_1s": peak}


def arrivals_snapshot(
    requests_ms: Mapping[Api, Mapping[int, int]], segments_ms: Mapping[Api, Mapping[int, int]]
) -> dict[str, Any]:
    """The `arrivals` stats: requests and segments, all APIs together and per API.

    `count`, `span_s` and `peak_1s` count requests; `segments` and `segments_peak_1s` weigh each
    request by its SMS segments, as Twilio counts. `by_api` has the same five keys per API.
    """

    def summary(requests: Mapping[int, int], segments: Mapping[int, int]) -> dict[str, Any]:
        weighed = arrival_summary(segments)
        return arrival_summary(requests) | {
            "segments": weighed["count"],
            "segments_peak_1s": weighed["peak_1s"],
        }

    all_requests: Counter[int] = Counter()
    all_segments: Counter[int] = Counter()
    for api in Api:
        all_requests.update(requests_ms[api])
        all_segments.update(segments_ms[api])
    return summary(all_requests, all_segments) | {
        "by_api": {api.value: summary(requests_ms[api], segments_ms[api]) for api in Api}
    }


def timeline(
    arrivals_ms: list[Counter[int]], accepted_ms: Mapping[int, int], throttled_ms: Mapping[int, int]
) -> list[list[int]]:
    """`[t_ms, accepted, throttled, other]` for each millisecond with arrivals, t_ms counted from
    the first; `other` is every arrival neither accepted nor refused by the throttle."""
    all_ms: Counter[int] = Counter()
    for counter in arrivals_ms:
        all_ms.update(counter)
    if not all_ms:
        return []
    first_ms = min(all_ms)
    rows = []
    for at_ms in sorted(all_ms):
        accepted, throttled = accepted_ms.get(at_ms, 0), throttled_ms.get(at_ms, 0)
        # max(): a reset between a request's arrival and its answer moves its outcome only.
        other = max(0, all_ms[at_ms] - accepted - throttled)
        rows.append([at_ms - first_ms, accepted, throttled, other])
    return rows


def _recipient_snapshot(recipient: _Recipient, keep_messages: bool) -> dict[str, Any]:
    snapshot: dict[str, Any] = {"requests": recipient.requests, "accepted": recipient.accepted}
    if keep_messages:
        snapshot["messages"] = list(recipient.messages)
    return snapshot


STATE: Final = web.AppKey("sms_blaster.simulator.state", _State)


# --- the decision for one request ---------------------------------------------------------------


def _refusal(state: _State, dialect: _Dialect, send: SendRequest) -> Refusal | None:
    """Checks 4-6 of the module docstring, in order: the first refusal, or None to accept."""
    if send.params_problem is not None:
        return send.params_problem
    if send.non_gsm_as_text:
        state.counts.non_gsm_as_text += 1
    magic = _magic_refusal(state, dialect, send.to) if state.config.magic_numbers else None
    return magic or _random_unavailable(state, dialect)


@dataclass(frozen=True, slots=True)
class _Throttled:
    """The throttle's decision on one request (check 3)."""

    refusal: Refusal | None = None  # refused by the limiter
    at_once: bool = False  # the refusal skips the latency: a cap in service refuses at the door
    queued_s: float = 0.0  # accepted: its wait in the provider's queue, added to the latency
    limiter: limiters.Limiter | None = None  # accepted: told `done` when its answer goes out


_NOT_THROTTLED: Final = _Throttled()


def _throttle(state: _State, dialect: _Dialect, send: SendRequest) -> _Throttled:
    key = (dialect.api, send.key)
    limiter = state.counts.limiters.get(key)
    if limiter is None:
        limiter = state.config.new_limiter()
        if limiter is None:
            return _NOT_THROTTLED
        state.counts.limiters[key] = limiter
    # time.monotonic, not loop.time(): uvloop's clock ticks in whole milliseconds.
    verdict = limiter.admit(time.monotonic(), send.segments if dialect.counts_segments else 1.0)
    if verdict.accepted:
        return _Throttled(queued_s=verdict.queued_s, limiter=limiter)
    # Only the cap in service cannot say when a place frees: its refusals are the fast ones.
    refusal = _throttled_answer(state, dialect, verdict.wait_s)
    return _Throttled(refusal, at_once=verdict.wait_s is None)


def _throttled_answer(state: _State, dialect: _Dialect, wait_s: float | None) -> Refusal:
    """A limiter's refusal, spelled as `throttle_hint` says; a refusal that knows no wait (the
    cap in service) hints the configured latency, about when a place frees."""
    hint = state.config.throttle_hint
    if hint is ThrottleHint.NONE:
        return dialect.throttled(None)
    if hint is ThrottleHint.WRONG:
        wait_s = state.rng.uniform(0.0, WRONG_HINT_MAX_S)
    elif wait_s is None:
        wait_s = state.config.latency_ms / 1000
    if hint is ThrottleHint.RETRY_AFTER:
        return dialect.rate_limited(max(1, math.ceil(wait_s)))
    return dialect.throttled(wait_s)


def _magic_refusal(state: _State, dialect: _Dialect, to: str) -> Refusal | None:
    suffix = to[-4:]
    always = dialect.magic_always.get(suffix)
    if always is not None:
        return always
    first = dialect.magic_first.get(suffix)
    seen = (dialect.api, to)
    if first is None or seen in state.counts.answered_once:
        return None
    state.counts.answered_once.add(seen)
    return first


def _random_unavailable(state: _State, dialect: _Dialect) -> Refusal | None:
    rate = state.config.error_5xx_rate
    return dialect.unavailable if rate and state.rng.random() < rate else None


def _book(
    state: _State,
    api: Api,
    to: str,
    parts: int,
    message: Callable[[], dict[str, Any]],
) -> None:
    """Count an accepted message; keep `message()` in its recipient's list when asked to."""
    counts = state.counts
    counts.accepted += 1
    if state.accept_waiters:
        _wake_accept_waiters(state)
    counts.accepted_parts += parts
    recipient = counts.recipients.get(to)
    if recipient is not None:
        recipient.accepted += 1
        if state.config.keep_messages:
            recipient.messages.append({"api": api.value, **message(), "parts": parts})


def _accept_sms(state: _State, send: SendRequest) -> _Accepted:
    """Count and charge a Vonage SMS API message: one id and one price per part."""
    params = send.fields or {}
    to, text, kind = params["to"], params["text"], params.get("type") or "text"
    parts = send.segments
    client_ref = params.get("client-ref")
    ids, balances = [], []
    counts = state.counts
    for _ in range(parts):
        state.next_id += 1
        counts.balance -= state.config.price_per_part
        ids.append(message_id(state.next_id))
        balances.append(f"{counts.balance:.8f}")
    _book(
        state,
        Api.VONAGE_SMS,
        to,
        parts,
        lambda: (
            {"id": ids[0], "from": params["from"], "text": text, "type": kind}
            | {"client_ref": client_ref}
        ),
    )
    body = success_body(to, ids, balances, state.price, client_ref)
    url = params.get("callback") or state.config.callback_url
    if url is None:
        return _Accepted(200, body, None)
    message = AcceptedMessage(
        to=to,
        sender=params["from"],
        api_key=send.key,
        network=NETWORK,
        price=state.price,
        message_ids=tuple(ids),
        client_ref=client_ref,
        url=url,
    )
    return _Accepted(200, body, message)


def _accept_messages(state: _State, send: SendRequest) -> _Accepted:
    """Count and charge a Messages API message: one uuid, one price per part."""
    fields = send.fields or {}
    message_uuid = str(uuid.uuid4())
    parts = send.segments
    state.counts.balance -= state.config.price_per_part * parts
    client_ref = fields.get("client_ref")
    _book(
        state,
        Api.VONAGE_MESSAGES,
        send.to,
        parts,
        lambda: (
            {"id": message_uuid, "from": fields["from"], "text": fields["text"]}
            | {"type": fields["type"], "client_ref": client_ref}
        ),
    )
    body = messages_api.accepted_body(message_uuid)
    url = fields.get("webhook_url") or state.config.callback_url
    if url is None:
        return _Accepted(202, body, None)
    message = AcceptedMessage(
        to=send.to,
        sender=fields["from"],
        api_key=fields.get("api_key") or state.config.api_key or "",
        network=NETWORK,
        price=state.price,
        message_ids=(message_uuid,),
        client_ref=client_ref,
        api=Api.VONAGE_MESSAGES,
        url=url,
        parts=parts,
        application_id=fields.get("application_id"),
    )
    return _Accepted(202, body, message)


def _accept_twilio(state: _State, send: SendRequest) -> _Accepted:
    """Count and charge a Twilio message; it calls back only if it named a StatusCallback."""
    fields = send.fields or {}
    sid = "SM" + secrets.token_hex(16)
    parts = send.segments
    state.counts.balance -= state.config.price_per_part * parts
    client_ref = fields.get("client_ref")
    sender = fields.get("From") or fields.get("MessagingServiceSid", "")
    text = fields["Body"]
    kind = "text" if GSM7_ALL.issuperset(text) else "unicode"
    _book(
        state,
        Api.TWILIO,
        send.to,
        parts,
        lambda: {"id": sid, "from": sender, "text": text, "type": kind, "client_ref": client_ref},
    )
    body = twilio_api.created_body(fields, sid, parts, time.time())
    url = fields.get("StatusCallback")
    if url is None:
        return _Accepted(201, body, None)
    message = AcceptedMessage(
        to=fields["To"],
        sender=fields.get("From") or twilio_api.SERVICE_NUMBER,
        api_key=fields["AccountSid"],
        network=NETWORK,
        price=state.price,
        message_ids=(sid,),
        client_ref=client_ref,
        api=Api.TWILIO,
        url=url,
        parts=parts,
        token=state.config.twilio_auth_token or fields["AuthToken"],
        service_sid=fields.get("MessagingServiceSid"),
    )
    return _Accepted(201, body, message)


def _wake_accept_waiters(state: _State) -> None:
    accepted = state.counts.accepted
    waiting = []
    for count, waiter in state.accept_waiters:
        if accepted >= count:
            if not waiter.done():
                waiter.set_result(None)
        else:
            waiting.append((count, waiter))
    state.accept_waiters = waiting


def _after_accept(state: _State, to: str) -> _After:
    config = state.config
    after = _MAGIC_AFTER.get(to[-4:], _After.ANSWER) if config.magic_numbers else _After.ANSWER
    if after is _After.ANSWER and (config.reset_rate or config.timeout_rate):
        draw = state.rng.random()
        if draw < config.reset_rate:
            after = _After.RESET
        elif draw < config.reset_rate + config.timeout_rate:
            after = _After.HANG
    if after is _After.RESET:
        state.counts.reset += 1
    elif after is _After.HANG:
        state.counts.timeout += 1
    return after


# --- the aiohttp edge ---------------------------------------------------------------------------


def _read_params(request: web.Request, body: bytes) -> dict[str, str]:
    if request.content_type == JSON:
        params = _json_params(body)
    else:
        # One plain dict for form and JSON alike; request.post() measured no faster.
        params = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    if request.query_string:
        for name, value in request.query.items():
            params.setdefault(name, value)
    return params


def _json_params(body: bytes) -> dict[str, str]:
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): v if isinstance(v, str) else str(v) for k, v in data.items() if v is not None}


async def _read_sms(state: _State, request: web.Request, body: bytes) -> SendRequest:
    return read_sms(
        _read_params(request, body),
        request.headers.get("Authorization"),
        api_key=state.config.api_key,
        api_secret=state.config.api_secret,
    )


def _response(
    dialect: _Dialect,
    body: bytes,
    status: int,
    headers: tuple[tuple[str, str], ...] = (),
    content_type: str = JSON,
) -> web.Response:
    if dialect.api is Api.VONAGE_MESSAGES:
        request_id = str(uuid.uuid4())
        headers = (*headers, ("X-Request-Id", request_id))
        if content_type == messages_api.PROBLEM:
            body = messages_api.with_instance(body, request_id)
    return web.Response(
        body=body, status=status, content_type=content_type, headers=dict(headers) or None
    )


def _refused(dialect: _Dialect, refusal: Refusal) -> web.Response:
    return _response(
        dialect, refusal.body, refusal.http_status, refusal.headers, refusal.content_type
    )


async def _delay(state: _State, queued_s: float = 0.0) -> None:
    config = state.config
    delay_ms = config.latency_ms + queued_s * 1000
    if config.jitter_ms:
        delay_ms += state.rng.uniform(0.0, config.jitter_ms)
    if delay_ms > 0:
        await asyncio.sleep(delay_ms / 1000)


def _drop(request: web.Request) -> web.Response:
    # aiohttp quietly skips writing a response to a closed transport.
    if request.transport is not None:
        request.transport.close()
    return web.Response()


async def _hang(state: _State, request: web.Request) -> web.Response:
    # Not asyncio.sleep: close() sets `closing`, so a hung request never holds up shutdown.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(state.closing.wait(), HANG_S)
    return _drop(request)


_SMS: Final = _Dialect(
    Api.VONAGE_SMS,
    {
        "9990": _rejected("7", "Number barred."),
        "9991": _rejected("6", "Invalid Message"),
        "9992": _BAD_CREDENTIALS,
        "9993": _rejected("9", "Quota Exceeded - rejected"),
    },
    {
        "9994": Refusal(throttle_body(MAGIC_THROTTLE_WAIT_MS), Tally.THROTTLED),
        "9995": _UNAVAILABLE,
        "9998": _rejected("5", "Server Error"),
    },
    _UNAVAILABLE,
    _TOO_MANY,
    _sms_throttled,
    _sms_rate_limited,
    counts_segments=False,
    echo=lambda text: _rejected("4", f"Bad Credentials: {text}"),
)
_MESSAGES: Final = _Dialect(
    Api.VONAGE_MESSAGES,
    messages_api.MAGIC_ALWAYS,
    messages_api.MAGIC_FIRST,
    messages_api.UNAVAILABLE,
    messages_api.TOO_MANY,
    messages_api.throttled,
    messages_api.rate_limited,
    counts_segments=False,
    echo=messages_api.echoed_credentials,
)
_TWILIO: Final = _Dialect(
    Api.TWILIO,
    twilio_api.MAGIC_ALWAYS,
    twilio_api.MAGIC_FIRST,
    twilio_api.UNAVAILABLE,
    twilio_api.TOO_MANY,
    lambda _wait_s: twilio_api.THROTTLED,  # Twilio's 429 says no wait
    twilio_api.rate_limited,
    counts_segments=True,
    echo=lambda text: twilio_api.error(401, 20003, f"Authenticate: {text}"),
)


async def _read_messages(state: _State, request: web.Request, body: bytes) -> SendRequest:
    config = state.config
    return messages_api.read(
        body,
        request.headers.get("Authorization", ""),
        api_key=config.api_key,
        api_secret=config.api_secret,
        application_id=config.application_id,
        now_s=time.time(),
    )


async def _read_twilio(state: _State, request: web.Request, body: bytes) -> SendRequest:
    config = state.config
    return twilio_api.read(
        request.match_info["account_sid"],
        body,
        request.headers.get("Authorization", ""),
        account_sid=config.twilio_account_sid,
        auth_token=config.twilio_auth_token,
    )


_Reader = Callable[[_State, web.Request, bytes], Awaitable[SendRequest]]
_Acceptor = Callable[[_State, SendRequest], _Accepted]


async def _handle_sms(request: web.Request) -> web.StreamResponse:
    return await _handle(request, _SMS, _read_sms, _accept_sms)


async def _handle_messages(request: web.Request) -> web.StreamResponse:
    return await _handle(request, _MESSAGES, _read_messages, _accept_messages)


async def _handle_twilio(request: web.Request) -> web.StreamResponse:
    return await _handle(request, _TWILIO, _read_twilio, _accept_twilio)


async def _handle(
    request: web.Request, dialect: _Dialect, read: _Reader, accept: _Acceptor
) -> web.StreamResponse:
    state = request.app[STATE]
    counts = state.counts
    counts.requests += 1
    arrived_ms = int(time.monotonic() * 1000)
    counts.arrivals_ms[dialect.api][arrived_ms] += 1
    cap = state.config.max_concurrency
    if cap is not None and state.in_flight >= cap:
        counts.http_429 += 1
        segments = 1
        if dialect.counts_segments:
            # Twilio counts segments, so even a request refused at the door is weighed.
            segments = (await read(state, request, await request.read())).segments
        counts.segment_arrivals_ms[dialect.api][arrived_ms] += segments
        return _refused(dialect, dialect.too_many)
    rate = state.config.reset_before_rate
    if rate and state.rng.random() < rate:
        counts.reset_before += 1
        return _drop(request)
    state.in_flight += 1
    counts.max_in_flight = max(counts.max_in_flight, state.in_flight)
    try:
        return await _answer(state, request, dialect, read, accept, arrived_ms)
    finally:
        state.in_flight -= 1


async def _answer(
    state: _State,
    request: web.Request,
    dialect: _Dialect,
    read: _Reader,
    accept: _Acceptor,
    arrived_ms: int,
) -> web.StreamResponse:
    body = await request.read()
    send = await read(state, request, body)
    counts = state.counts
    counts.segment_arrivals_ms[dialect.api][arrived_ms] += send.segments
    to = send.to
    if to and state.config.per_recipient:
        recipient = counts.recipients.get(to)
        if recipient is None:
            recipient = counts.recipients[to] = _Recipient()
        recipient.requests += 1
    if state.config.echo_credentials:
        refusal: Refusal | None = dialect.echo(_echoed_credentials(request, body))
    else:
        refusal = send.auth_problem
    throttled = _NOT_THROTTLED if refusal is not None else _throttle(state, dialect, send)
    if throttled.refusal is not None:
        counts.count(throttled.refusal)
        counts.throttled_ms[arrived_ms] += 1
        if not throttled.at_once:
            await _delay(state)
        return _refused(dialect, throttled.refusal)
    # A place the throttle gave is held until the answer goes out, whatever the answer.
    holder = throttled.limiter
    try:
        refusal = refusal or _refusal(state, dialect, send)
        if refusal is not None:
            counts.count(refusal)
            await _delay(state)
            return _refused(dialect, refusal)
        accepted = accept(state, send)
        counts.accepted_ms[arrived_ms] += 1
        if accepted.message is not None:
            early_receipt = state.callbacks.submit(accepted.message, state.config.keep_messages)
            if early_receipt is not None:
                await early_receipt
        after = _after_accept(state, to)
        if after is _After.HANG:
            # Never answered, but no longer served: the place frees now, not at shutdown.
            if holder is not None:
                holder.done(time.monotonic())
                holder = None
            return await _hang(state, request)
        await _delay(state, throttled.queued_s)
        if after is _After.RESET:
            return _drop(request)
        return _response(dialect, accepted.body, accepted.status)
    finally:
        if holder is not None:
            holder.done(time.monotonic())


def _echoed_credentials(request: web.Request, body: bytes) -> str:
    """Every credential the request carried, as it came and decoded, for `echo_credentials`."""
    authorization = request.headers.get("Authorization", "")
    user, password = basic_credentials(authorization) if authorization else ("", "")
    form = body.decode("utf-8", "replace") if request.content_type != JSON else ""
    return (
        f"Authorization: {authorization}; user {user!r} password {password!r}; "
        f"api_secret={quote(password, safe='')}; form {form}; query {request.query_string}"
    )


async def _handle_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].snapshot())


async def _handle_timeline(request: web.Request) -> web.Response:
    counts = request.app[STATE].counts
    arrivals = timeline(
        [counts.arrivals_ms[api] for api in Api], counts.accepted_ms, counts.throttled_ms
    )
    return web.json_response({"arrivals": arrivals})


async def _handle_reset(request: web.Request) -> web.Response:
    request.app[STATE].reset()
    return web.Response(status=204)


async def _handle_config(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        changes = json.loads(await request.read())
    except ValueError:
        changes = None
    if not isinstance(changes, dict) or not changes:
        return web.json_response({"error": "give a JSON object of settings"}, status=400)
    unknown = sorted(set(changes) - CONFIGURABLE)
    if unknown:
        allowed = ", ".join(sorted(CONFIGURABLE))
        message = f"cannot change {', '.join(unknown)}; these can: {allowed}"
        return web.json_response({"error": message}, status=400)
    try:
        if "throttle_hint" in changes:
            changes["throttle_hint"] = ThrottleHint(changes["throttle_hint"])
        state.config = dataclasses.replace(state.config, **changes)
    except (TypeError, ValueError) as exc:
        return web.json_response({"error": str(exc)}, status=400)
    if {"rate_per_s", "burst", "limiter"} & set(changes):
        state.counts.limiters.clear()  # each limiter keeps the shape it was made with
    changed = {name: getattr(state.config, name) for name in sorted(changes)}
    return web.json_response(
        {name: value.value if isinstance(value, Enum) else value for name, value in changed.items()}
    )


async def _wake_hung_requests(app: web.Application) -> None:
    app[STATE].closing.set()


async def _start_callbacks(app: web.Application) -> None:
    await app[STATE].callbacks.start()


async def _abandon_callbacks(app: web.Application) -> None:
    await app[STATE].callbacks.close()


def create_app(config: SimulatorConfig) -> web.Application:
    """The simulator as an aiohttp application: the three send routes and `/_simulator`."""
    app = web.Application()
    app[STATE] = _State(config)
    app.router.add_post(SMS_PATH, _handle_sms)
    app.router.add_post(MESSAGES_PATH, _handle_messages)
    app.router.add_post(TWILIO_PATH, _handle_twilio)
    app.router.add_get(STATS_PATH, _handle_stats)
    app.router.add_get(TIMELINE_PATH, _handle_timeline)
    app.router.add_post(RESET_PATH, _handle_reset)
    app.router.add_post(CONFIG_PATH, _handle_config)
    app.on_startup.append(_start_callbacks)
    app.on_shutdown.append(_wake_hung_requests)
    app.on_shutdown.append(_abandon_callbacks)
    return app


# --- running it ---------------------------------------------------------------------------------


class RunningSimulator:
    """A listening simulator; an async context manager that closes it."""

    __slots__ = ("_runner", "_state", "url")

    def __init__(self, runner: web.AppRunner, state: _State, url: str) -> None:
        self._runner = runner
        self._state = state
        self.url = url  # the base URL: clients POST to url + "/sms/json", "/v1/messages", …

    async def stats(self) -> dict[str, Any]:
        """The counters, as `GET /_simulator/stats` returns them.

        `requests` counts every send request to any of the three APIs, HTTP 429s included;
        `recipients` only those whose body was read, keyed by the number's digits (Twilio's
        without its '+'). `non_gsm_as_text` counts SMS API `type=text` requests that passed the
        credential, throttle and parameter checks with a text that is not all GSM-7, accepted or
        not. `recipients[to].messages` (each with its `api`, `id`: the first message id, uuid or
        sid, `from`, `text`, `type`, `client_ref` and `parts`) is present only with
        `keep_messages`.

        `arrivals` counts requests as they arrived: `count`, `span_s` and `peak_1s` (the most in
        any sliding second), and `segments` and `segments_peak_1s`, the same weighed by each
        request's SMS segments (1 for one refused unread at the door, except Twilio's); `by_api`
        has these five keys for each of "vonage-sms", "vonage-messages" and "twilio".

        `callbacks` counts receipts: `sent` (attempts), `acked` (answered 2xx), `retried`
        (attempts after the first), `given_up`, `pending` (not yet acked or given up), `decided`
        (messages decided `delivered` / `failed`), and with `keep_messages`, `outcomes`: each
        message's client ref (Twilio: the `client_ref` of its StatusCallback's query), else its
        first message id, uuid or sid -> its decision.
        """
        return self._state.snapshot()

    async def wait_for_accepted(self, count: int) -> None:
        """Return once `count` messages have been accepted since the last reset (for tests)."""
        if self._state.counts.accepted >= count:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._state.accept_waiters.append((count, waiter))
        await waiter

    async def wait_for_callbacks_done(self) -> None:
        """Return once every receipt queued so far is acked or given up (for tests)."""
        await self._state.callbacks.wait_done()

    async def close(self) -> None:
        """Stop listening, wake requests that hang, and cancel any still running shortly after."""
        await self._runner.cleanup()

    async def __aenter__(self) -> RunningSimulator:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


async def start_simulator(
    config: SimulatorConfig, host: str = "127.0.0.1", port: int = 0
) -> RunningSimulator:
    """Start the simulator on `host:port` (port 0 picks a free one) and return it running."""
    app = create_app(config)
    # No access log: benchmarks push thousands of requests a second through here.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    real_port = runner.addresses[0][1]
    shown_host = f"[{host}]" if ":" in host else host
    return RunningSimulator(runner, app[STATE], f"http://{shown_host}:{real_port}")


async def serve(
    config: SimulatorConfig, host: str, port: int, on_ready: Callable[[str], None]
) -> None:
    """Run the simulator until cancelled, calling `on_ready(url)` once it is listening."""
    simulator = await start_simulator(config, host, port)
    try:
        on_ready(simulator.url)
        await asyncio.get_running_loop().create_future()
    finally:
        await simulator.close()
