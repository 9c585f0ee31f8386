"""A local server that answers like the Vonage SMS API, for tests, `--dry-run` and benchmarks.

`POST /sms/json` takes a form or JSON body with credentials in a Basic header or in `api_key` and
`api_secret` (body or query). Every business answer is HTTP 200 with
`{"message-count": "N", "messages": [...]}` and numbers as strings; an accepted message gets one
element per SMS part. On top of that the simulator adds latency, a per-key token-bucket throttle,
a concurrency cap and random faults, all set by `SimulatorConfig`.

A request goes through these checks in order; the first that refuses it answers:

    1. concurrency cap   HTTP 429 + Retry-After: 1 (refused at the door: body unread, no latency)
    2. credentials       status "2" Missing api_key / api_secret; status "4" Bad Credentials
    3. throttle          status "1" Throughput Rate Exceeded - please wait [ N ] and retry (N: ms)
    4. parameters        status "2" Missing from/to/text param; status "3" Invalid to address,
                         Invalid type param
    5. magic recipients  see the table below
    6. random HTTP 503   `error_5xx_rate`: not accepted, safe to retry
    7. accept            counted and charged; a random or magic reset or timeout may follow

Magic recipients, chosen by the last four digits of `to`; client tests rely on these:

    | to ends in | answer                                                       | when          |
    |------------|--------------------------------------------------------------|---------------|
    | 9990       | status "7" `Number barred.` (permanent)                      | every time    |
    | 9991       | status "6" `Invalid Message` (permanent)                     | every time    |
    | 9992       | status "4" `Bad Credentials` (fatal for a client)            | every time    |
    | 9993       | status "9" `Quota Exceeded - rejected` (fatal)               | every time    |
    | 9994       | status "1" `Throughput Rate Exceeded - please wait [ 50 ]…`  | first request |
    | 9995       | HTTP 503 with Retry-After: 1, not accepted                   | first request |
    | 9996       | accepted and counted, then never answers                     | every time    |
    | 9997       | accepted and counted, then the connection drops, no answer   | every time    |
    | 9998       | status "5" `Server Error`                                    | first request |
    | 9989       | accepted; with callbacks, one part's receipt fails, err 3    | every time    |

"First request" numbers are accepted from their second request on; `POST /_simulator/reset` makes
them fail once more. `GET /_simulator/stats` returns the counters (see `RunningSimulator.stats`).

With a `callback_url`, every accepted message is decided delivered or failed and its delivery
receipts are sent there, one per part, like Vonage's (see `sms_blaster.simulator.callbacks`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import math
import random
import re
import secrets
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import Enum
from functools import lru_cache
from types import TracebackType
from typing import Any, Final
from urllib.parse import parse_qsl

from aiohttp import web

from sms_blaster.encoding import GSM7_ALL, split_parts
from sms_blaster.models import Encoding
from sms_blaster.simulator.callbacks import (
    AcceptedMessage,
    CallbackCounts,
    CallbackFormat,
    CallbackSender,
    callbacks_snapshot,
    settings_problems,
)

SMS_PATH: Final = "/sms/json"
STATS_PATH: Final = "/_simulator/stats"
RESET_PATH: Final = "/_simulator/reset"

NETWORK: Final = "23410"
MAGIC_THROTTLE_WAIT_MS: Final = 50
# "Never answers": far longer than any client timeout; close() wakes these requests at once.
HANG_S: Final = 3600.0
# How long close() lets requests still sleeping out their latency finish before cancelling them.
SHUTDOWN_TIMEOUT_S: Final = 0.1

_TO = re.compile(r"\d{7,15}")
_TYPES: Final = {"text": Encoding.GSM7, "unicode": Encoding.UCS2}
_JSON: Final = "application/json"


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """How the simulator behaves: latency, throttle, concurrency cap, faults, credentials, price."""

    latency_ms: float = 0.0  # added before every answer
    jitter_ms: float = 0.0  # plus uniform random 0..jitter_ms
    rate_per_s: float | None = None  # per api_key throttle; None = unlimited
    burst: float | None = None  # token-bucket capacity; None -> max(2, rate_per_s / 20)
    max_concurrency: int | None = None  # more requests at once -> HTTP 429, Retry-After: 1
    error_5xx_rate: float = 0.0  # probability of HTTP 503 before accepting (safe to retry)
    reset_rate: float = 0.0  # probability of: accept, then drop the connection with no answer
    timeout_rate: float = 0.0  # probability of: accept, then never answer
    api_key: str | None = None  # expected credentials; None = any non-empty key and secret
    api_secret: str | None = None
    price_per_part: Decimal = Decimal("0.03330000")
    balance: Decimal = Decimal("100.00000000")
    keep_messages: bool = True  # keep each accepted message in the stats (off for big benchmarks)
    per_recipient: bool = True  # count per recipient (off for a dry run: memory per number)
    magic_numbers: bool = True  # answer the magic suffixes below (off for a dry run)
    seed: int | None = None  # for the random faults, jitter and delivery decisions
    # Delivery receipts (see sms_blaster.simulator.callbacks); None = no callbacks.
    callback_url: str | None = None
    callback_format: CallbackFormat = CallbackFormat.JSON
    callback_delay_ms: float = 200.0  # each receipt waits a random 0 to 2 x this
    callback_duplicate_rate: float = 0.05  # receipts sent twice
    callback_early_rate: float = 0.0  # messages whose first receipt goes before the answer
    callback_intermediate_rate: float = 1 / 3  # parts with an accepted/buffered receipt first
    dlr_fail_rate: float = 0.0  # messages decided failed
    callback_retry_s: float = 60.0  # resend a receipt not acknowledged after this long
    callback_retry_for_s: float = 259_200.0  # give a receipt up 72 h after its first attempt
    callback_timeout_s: float = 15.0  # per attempt, as Vonage
    callback_connections: int = 100
    signature_secret: str | None = field(default=None, repr=False)  # signs receipts when set
    signature_method: str = "md5hash"

    def __post_init__(self) -> None:
        problems = [
            *settings_problems(self),
            *_not_negative("latency_ms", self.latency_ms),
            *_not_negative("jitter_ms", self.jitter_ms),
            *_probability("error_5xx_rate", self.error_5xx_rate),
            *_probability("reset_rate", self.reset_rate),
            *_probability("timeout_rate", self.timeout_rate),
        ]
        if self.rate_per_s is not None and self.rate_per_s <= 0:
            problems.append(
                f"rate_per_s must be above 0 or None (unlimited), not {self.rate_per_s}"
            )
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


def _not_negative(name: str, value: float) -> list[str]:
    return [] if value >= 0 else [f"{name} must be 0 or more, not {value}"]


def _probability(name: str, value: float) -> list[str]:
    return [] if 0 <= value <= 1 else [f"{name} is a probability between 0 and 1, not {value}"]


# --- pure pieces: answers, credentials, throttle arithmetic -------------------------------------


def error_body(status: str, text: str) -> bytes:
    """The body of a refused message: one element with a status and an error text."""
    element = {"status": status, "error-text": text}
    return _dumps({"message-count": "1", "messages": [element]})


def throttle_body(wait_ms: int) -> bytes:
    """The status-1 answer, with the wait in whole milliseconds that clients parse."""
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


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


@lru_cache(maxsize=64)
def basic_credentials(header: str) -> tuple[str, str]:
    """`(api_key, api_secret)` from an `Authorization: Basic` header; empty if unreadable."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return "", ""
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return "", ""
    key, _, secret = decoded.partition(":")
    return key, secret


class TokenBucket:
    """A token bucket that is told the time, so its arithmetic is testable without a clock."""

    __slots__ = ("_capacity", "_rate_per_s", "_tokens", "_updated_s")

    def __init__(self, rate_per_s: float, capacity: float, now_s: float) -> None:
        self._rate_per_s = rate_per_s
        self._capacity = capacity
        self._tokens = capacity
        self._updated_s = now_s

    def take(self, now_s: float) -> float:
        """Spend a token and return 0.0, or return the seconds until there is one to spend."""
        elapsed_s = max(0.0, now_s - self._updated_s)
        self._tokens = min(self._capacity, self._tokens + elapsed_s * self._rate_per_s)
        self._updated_s = now_s
        # The tolerance absorbs float error, so a client that waits exactly as told gets through.
        if self._tokens >= 1 - 1e-9:
            self._tokens = max(0.0, self._tokens - 1)
            return 0.0
        return (1 - self._tokens) / self._rate_per_s


def wait_ms(wait_s: float) -> int:
    """The wait a throttled client is told: whole milliseconds, rounded up, at least 1."""
    return max(1, math.ceil(wait_s * 1000))


def message_id(number: int) -> str:
    """A Vonage-style message id: 16 uppercase hex digits, e.g. `0A0000001234ABCD`."""
    return f"0A{number & 0xFFFF_FFFF_FFFF_FF:014X}"


# --- refusals -----------------------------------------------------------------------------------


class _Counter(Enum):
    """Which stats counter a refusal bumps."""

    THROTTLED = "throttled"
    REJECTED = "rejected"
    HTTP_503 = "http_503"


@dataclass(frozen=True, slots=True)
class _Refusal:
    """An answer that does not accept the message; the body is prebuilt once where possible."""

    body: bytes
    counter: _Counter = _Counter.REJECTED
    http_status: int = 200
    retry_after_s: int | None = None


def _rejected(status: str, text: str) -> _Refusal:
    return _Refusal(error_body(status, text))


def _throttled(wait_ms: int) -> _Refusal:
    return _Refusal(throttle_body(wait_ms), _Counter.THROTTLED)


_MISSING: Final = {
    name: _rejected("2", f"Missing {name}" if name.startswith("api_") else f"Missing {name} param")
    for name in ("api_key", "api_secret", "from", "to", "text")
}
_BAD_CREDENTIALS: Final = _rejected("4", "Bad Credentials")
_INVALID_TO: Final = _rejected("3", "Invalid to address")
_INVALID_TYPE: Final = _rejected("3", "Invalid type param")
# A refusal before processing says so with Retry-After, which is what makes it safe to resend.
_UNAVAILABLE: Final = _Refusal(
    _dumps({"title": "Service Unavailable", "status": 503}), _Counter.HTTP_503, 503, 1
)
_TOO_MANY: Final = _dumps({"title": "Too Many Requests", "detail": "too many concurrent requests"})

_MAGIC_ALWAYS: Final = {
    "9990": _rejected("7", "Number barred."),
    "9991": _rejected("6", "Invalid Message"),
    "9992": _BAD_CREDENTIALS,
    "9993": _rejected("9", "Quota Exceeded - rejected"),
}
_MAGIC_FIRST: Final = {
    "9994": _throttled(MAGIC_THROTTLE_WAIT_MS),
    "9995": _UNAVAILABLE,
    "9998": _rejected("5", "Server Error"),
}


class _After(Enum):
    """What happens to an accepted request: an answer, a dropped connection, or silence."""

    ANSWER = "answer"
    RESET = "reset"
    HANG = "hang"


_MAGIC_AFTER: Final = {"9996": _After.HANG, "9997": _After.RESET}


# --- state --------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Recipient:
    requests: int = 0
    accepted: int = 0
    messages: list[dict[str, Any]] = field(default_factory=list)


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
    timeout: int = 0
    max_in_flight: int = 0
    recipients: dict[str, _Recipient] = field(default_factory=dict)
    buckets: dict[str, TokenBucket] = field(default_factory=dict)
    answered_once: set[str] = field(default_factory=set)  # "first request" magic numbers seen
    arrivals_ms: Counter[int] = field(default_factory=Counter)  # requests per millisecond

    def count(self, refusal: _Refusal) -> None:
        if refusal.counter is _Counter.THROTTLED:
            self.throttled += 1
        elif refusal.counter is _Counter.HTTP_503:
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
        self.callbacks = None if config.callback_url is None else CallbackSender(config, self.rng)

    def reset(self) -> None:
        self.counts = _Counts(balance=self.config.balance, max_in_flight=self.in_flight)
        if self.callbacks is not None:
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
                "timeout": counts.timeout,
            },
            "max_in_flight": counts.max_in_flight,
            "arrivals": arrival_summary(counts.arrivals_ms),
            "recipients": {
                to: _recipient_snapshot(recipient, keep)
                for to, recipient in counts.recipients.items()
            },
            "callbacks": (
                callbacks_snapshot(CallbackCounts(), 0, keep)
                if self.callbacks is None
                else self.callbacks.snapshot(keep)
            ),
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


def _recipient_snapshot(recipient: _Recipient, keep_messages: bool) -> dict[str, Any]:
    snapshot: dict[str, Any] = {"requests": recipient.requests, "accepted": recipient.accepted}
    if keep_messages:
        snapshot["messages"] = list(recipient.messages)
    return snapshot


STATE: Final = web.AppKey("sms_blaster.simulator.state", _State)


# --- the decision for one request ---------------------------------------------------------------


def _refusal(state: _State, params: dict[str, str], authorization: str | None) -> _Refusal | None:
    """Checks 2-6 of the module docstring, in order: the first refusal, or None to accept."""
    key, secret = _credentials(params, authorization)
    refusal = (
        _credentials_problem(key, secret, state.config)
        or _throttle(state, key)
        or _parameters_problem(params)
    )
    if refusal is not None:
        return refusal
    if _kind(params) == "text" and not GSM7_ALL.issuperset(params["text"]):
        state.counts.non_gsm_as_text += 1
    magic = _magic_refusal(state, params["to"]) if state.config.magic_numbers else None
    return magic or _random_unavailable(state)


def _kind(params: dict[str, str]) -> str:
    return params.get("type") or "text"


def _credentials(params: dict[str, str], authorization: str | None) -> tuple[str, str]:
    if authorization:
        return basic_credentials(authorization)
    return params.get("api_key", ""), params.get("api_secret", "")


def _credentials_problem(key: str, secret: str, config: SimulatorConfig) -> _Refusal | None:
    if not key:
        return _MISSING["api_key"]
    if not secret:
        return _MISSING["api_secret"]
    if config.api_key is not None and key != config.api_key:
        return _BAD_CREDENTIALS
    if config.api_secret is not None and secret != config.api_secret:
        return _BAD_CREDENTIALS
    return None


def _throttle(state: _State, key: str) -> _Refusal | None:
    rate_per_s = state.config.rate_per_s
    if rate_per_s is None:
        return None
    # time.monotonic, not loop.time(): uvloop's clock ticks in whole milliseconds.
    now_s = time.monotonic()
    bucket = state.counts.buckets.get(key)
    if bucket is None:
        bucket = TokenBucket(rate_per_s, state.config.bucket_capacity, now_s)
        state.counts.buckets[key] = bucket
    wait_s = bucket.take(now_s)
    return None if wait_s == 0.0 else _throttled(wait_ms(wait_s))


def _parameters_problem(params: dict[str, str]) -> _Refusal | None:
    for name in ("from", "to", "text"):
        if not params.get(name):
            return _MISSING[name]
    if _TO.fullmatch(params["to"]) is None:
        return _INVALID_TO
    if _kind(params) not in _TYPES:
        return _INVALID_TYPE
    return None


def _magic_refusal(state: _State, to: str) -> _Refusal | None:
    suffix = to[-4:]
    always = _MAGIC_ALWAYS.get(suffix)
    if always is not None:
        return always
    first = _MAGIC_FIRST.get(suffix)
    if first is None or to in state.counts.answered_once:
        return None
    state.counts.answered_once.add(to)
    return first


def _random_unavailable(state: _State) -> _Refusal | None:
    rate = state.config.error_5xx_rate
    return _UNAVAILABLE if rate and state.rng.random() < rate else None


def _accept(
    state: _State, params: dict[str, str], authorization: str | None
) -> tuple[bytes, asyncio.Future[None] | None]:
    """Count and charge an accepted message and hand it to the callbacks, if any.

    Returns its success body, and a future to await before answering for an early receipt.
    """
    to, text, kind = params["to"], params["text"], _kind(params)
    parts = len(split_parts(text, _TYPES[kind]))
    counts = state.counts
    counts.accepted += 1
    if state.accept_waiters:
        _wake_accept_waiters(state)
    counts.accepted_parts += parts
    client_ref = params.get("client-ref")
    recipient = counts.recipients.get(to)
    if recipient is not None:
        recipient.accepted += 1
        if state.config.keep_messages:
            message = {"from": params["from"], "text": text, "type": kind, "client_ref": client_ref}
            recipient.messages.append({**message, "parts": parts})
    ids, balances = [], []
    for _ in range(parts):
        state.next_id += 1
        counts.balance -= state.config.price_per_part
        ids.append(message_id(state.next_id))
        balances.append(f"{counts.balance:.8f}")
    body = success_body(to, ids, balances, state.price, client_ref)
    if state.callbacks is None:
        return body, None
    accepted = AcceptedMessage(
        to=to,
        sender=params["from"],
        api_key=_credentials(params, authorization)[0],
        network=NETWORK,
        price=state.price,
        message_ids=tuple(ids),
        client_ref=client_ref,
    )
    return body, state.callbacks.submit(accepted, state.config.keep_messages)


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


async def _read_params(request: web.Request) -> dict[str, str]:
    body = await request.read()
    if request.content_type == _JSON:
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


def _json_response(
    body: bytes, status: int = 200, retry_after_s: int | None = None
) -> web.Response:
    headers = None if retry_after_s is None else {"Retry-After": str(retry_after_s)}
    return web.Response(body=body, status=status, content_type=_JSON, headers=headers)


async def _delay(state: _State) -> None:
    config = state.config
    delay_ms = config.latency_ms
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


async def _handle_sms(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    counts = state.counts
    counts.requests += 1
    counts.arrivals_ms[int(time.monotonic() * 1000)] += 1
    cap = state.config.max_concurrency
    if cap is not None and state.in_flight >= cap:
        counts.http_429 += 1
        return web.Response(
            body=_TOO_MANY, status=429, content_type=_JSON, headers={"Retry-After": "1"}
        )
    state.in_flight += 1
    counts.max_in_flight = max(counts.max_in_flight, state.in_flight)
    try:
        return await _answer(state, request)
    finally:
        state.in_flight -= 1


async def _answer(state: _State, request: web.Request) -> web.StreamResponse:
    params = await _read_params(request)
    to = params.get("to", "")
    if to and state.config.per_recipient:
        recipient = state.counts.recipients.get(to)
        if recipient is None:
            recipient = state.counts.recipients[to] = _Recipient()
        recipient.requests += 1
    authorization = request.headers.get("Authorization")
    refusal = _refusal(state, params, authorization)
    if refusal is not None:
        state.counts.count(refusal)
        await _delay(state)
        return _json_response(refusal.body, refusal.http_status, refusal.retry_after_s)
    body, early_receipt = _accept(state, params, authorization)
    if early_receipt is not None:
        await early_receipt
    after = _after_accept(state, to)
    if after is _After.HANG:
        return await _hang(state, request)
    await _delay(state)
    if after is _After.RESET:
        return _drop(request)
    return _json_response(body)


async def _handle_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].snapshot())


async def _handle_reset(request: web.Request) -> web.Response:
    request.app[STATE].reset()
    return web.Response(status=204)


async def _wake_hung_requests(app: web.Application) -> None:
    app[STATE].closing.set()


async def _start_callbacks(app: web.Application) -> None:
    callbacks = app[STATE].callbacks
    if callbacks is not None:
        await callbacks.start()


async def _abandon_callbacks(app: web.Application) -> None:
    callbacks = app[STATE].callbacks
    if callbacks is not None:
        await callbacks.close()


def create_app(config: SimulatorConfig) -> web.Application:
    """The simulator as an aiohttp application (`POST /sms/json` plus the `/_simulator` routes)."""
    app = web.Application()
    app[STATE] = _State(config)
    app.router.add_post(SMS_PATH, _handle_sms)
    app.router.add_get(STATS_PATH, _handle_stats)
    app.router.add_post(RESET_PATH, _handle_reset)
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
        self.url = url  # the base URL: clients POST to url + "/sms/json"

    async def stats(self) -> dict[str, Any]:
        """The counters, as `GET /_simulator/stats` returns them.

        `requests` counts every POST to /sms/json, HTTP 429s included; `recipients` only those whose
        body was read. `non_gsm_as_text` counts `type=text` requests that passed the credential,
        throttle and parameter checks with a text that is not all GSM-7, accepted or not.
        `recipients[to].messages` is present only with `keep_messages`.

        `callbacks` counts delivery receipts: `sent` (attempts), `acked` (answered 2xx),
        `retried` (attempts after the first), `given_up`, `pending` (not yet acked or given up),
        `decided` (messages decided `delivered` / `failed`), and with `keep_messages`,
        `outcomes`: each message's client-ref (else its first message id) -> its decision.
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
        if self._state.callbacks is not None:
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
