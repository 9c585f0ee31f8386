"""The simulator's shared machinery: one aiohttp application that runs the same checks, in the
same order, over every API it answers (`DIALECTS`, each read, accepted and answered in its own
module behind `sms_blaster.simulator.dialect`), adds latency and faults, keeps the counters
(`sms_blaster.simulator.stats`) and sends the receipts (`sms_blaster.simulator.callbacks`); and
the runner that starts it. What the simulator does, check by check: `sms_blaster.simulator`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import random
import secrets
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from types import TracebackType
from typing import Any, Final
from urllib.parse import quote

import aiohttp
from aiohttp import web

from sms_blaster.simulator import inbound, limiters, messages_api, sms_api, twilio_api
from sms_blaster.simulator.answers import JSON, Refusal, SendRequest, basic_credentials
from sms_blaster.simulator.callbacks import CallbackSender
from sms_blaster.simulator.config import (
    WRONG_HINT_MAX_S,
    SimulatorConfig,
    ThrottleHint,
    reconfigured,
    settings_json,
)
from sms_blaster.simulator.dialect import Dialect, Incoming
from sms_blaster.simulator.stats import Counts

# The APIs the simulator answers, each at its own route: adding one is adding its module here.
DIALECTS: Final = (sms_api.DIALECT, messages_api.DIALECT, twilio_api.DIALECT)

STATS_PATH: Final = "/_simulator/stats"
RESET_PATH: Final = "/_simulator/reset"
CONFIG_PATH: Final = "/_simulator/config"
TIMELINE_PATH: Final = "/_simulator/timeline"
# "Never answers": far longer than any client timeout; close() wakes these requests at once.
HANG_S: Final = 3600.0
# How long close() lets requests still sleeping out their latency finish before cancelling them.
SHUTDOWN_TIMEOUT_S: Final = 0.1


class _After(Enum):
    """What happens to an accepted request: an answer, a dropped connection, or silence."""

    ANSWER = "answer"
    RESET = "reset"
    HANG = "hang"


_MAGIC_AFTER: Final = {"9996": _After.HANG, "9997": _After.RESET}


# --- state --------------------------------------------------------------------------------------


class _State:
    """One running simulator's config, counters and receipts; the `Till` its APIs charge."""

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
        self.counts = Counts(balance=config.balance)
        self.in_flight = 0
        # A random start keeps ids unique across simulator restarts under one journal.
        self.next_id = secrets.randbits(48)
        self.closing = asyncio.Event()
        self.accept_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.callbacks = CallbackSender(config, self.rng)

    def charge(self, parts: int) -> list[str]:
        balances = []
        for _ in range(parts):
            self.counts.balance -= self.config.price_per_part
            balances.append(f"{self.counts.balance:.8f}")
        return balances

    def serials(self, count: int) -> range:
        first = self.next_id + 1
        self.next_id += count
        return range(first, first + count)

    def reset(self) -> None:
        self.counts = Counts(balance=self.config.balance, max_in_flight=self.in_flight)
        self.callbacks.reset()

    def snapshot(self) -> dict[str, Any]:
        keep = self.config.keep_messages
        return self.counts.snapshot(keep) | {"callbacks": self.callbacks.snapshot(keep)}


STATE: Final = web.AppKey("sms_blaster.simulator.state", _State)


# --- the decision for one request ---------------------------------------------------------------


def _refusal(state: _State, dialect: Dialect, send: SendRequest) -> Refusal | None:
    """Checks 4-6 (see `sms_blaster.simulator`), in order: the first refusal, or None to accept."""
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


def _sender_of(send: SendRequest) -> str:
    """The request's sender (its from), without a '+'; "" when it names none."""
    fields = send.fields or {}
    return str(fields.get("from") or fields.get("From") or "").removeprefix("+")


def _sender_throttle(state: _State, dialect: Dialect, send: SendRequest) -> _Throttled | None:
    """The sender's own limiter's refusal (`sender_limiter`); None when it lets the request by."""
    spec, sender = state.config.sender_limiter, _sender_of(send)
    if spec is None or not sender:
        return None
    key = (dialect.api, send.key, sender)
    limiter = state.counts.sender_limiters.get(key)
    if limiter is None:
        limiter = state.counts.sender_limiters[key] = limiters.parse(spec)
    verdict = limiter.admit(time.monotonic(), send.segments if dialect.counts_segments else 1.0)
    if verdict.accepted:
        return None
    return _Throttled(_throttled_answer(state, dialect, verdict.wait_s))


def _throttle(state: _State, dialect: Dialect, send: SendRequest) -> _Throttled:
    refused = _sender_throttle(state, dialect, send)
    if refused is not None:
        return refused
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


def _throttled_answer(state: _State, dialect: Dialect, wait_s: float | None) -> Refusal:
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


def _magic_refusal(state: _State, dialect: Dialect, to: str) -> Refusal | None:
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


def _random_unavailable(state: _State, dialect: Dialect) -> Refusal | None:
    rate = state.config.error_5xx_rate
    return dialect.unavailable if rate and state.rng.random() < rate else None


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


def _incoming(request: web.Request, body: bytes) -> Incoming:
    query = request.query if request.query_string else {}
    authorization = request.headers.get("Authorization", "")
    return Incoming(body, authorization, request.content_type, query, request.match_info)


def _response(
    dialect: Dialect,
    body: bytes,
    status: int,
    headers: tuple[tuple[str, str], ...] = (),
    content_type: str = JSON,
) -> web.Response:
    body, own_headers = dialect.answer(body, content_type)
    headers = (*headers, *own_headers)
    return web.Response(
        body=body, status=status, content_type=content_type, headers=dict(headers) or None
    )


def _refused(dialect: Dialect, refusal: Refusal) -> web.Response:
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


async def _handle(request: web.Request, dialect: Dialect) -> web.StreamResponse:
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
            # An API that counts segments (Twilio) weighs even a request refused at the door.
            incoming = _incoming(request, await request.read())
            segments = dialect.read(incoming, state.config).segments
        counts.segment_arrivals_ms[dialect.api][arrived_ms] += segments
        return _refused(dialect, dialect.too_many)
    rate = state.config.reset_before_rate
    if rate and state.rng.random() < rate:
        counts.reset_before += 1
        return _drop(request)
    state.in_flight += 1
    counts.max_in_flight = max(counts.max_in_flight, state.in_flight)
    try:
        return await _answer(state, request, dialect, arrived_ms)
    finally:
        state.in_flight -= 1


async def _answer(
    state: _State, request: web.Request, dialect: Dialect, arrived_ms: int
) -> web.StreamResponse:
    body = await request.read()
    send = dialect.read(_incoming(request, body), state.config)
    counts = state.counts
    counts.segment_arrivals_ms[dialect.api][arrived_ms] += send.segments
    to = send.to
    if to and state.config.per_recipient:
        counts.asked(to)
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
        accepted = dialect.accept(send, state, state.config)
        counts.book(dialect.api, to, send.segments, accepted.kept, state.config.keep_messages)
        if state.accept_waiters:
            _wake_accept_waiters(state)
        counts.accepted_ms[arrived_ms] += 1
        sender_accepted = counts.sender_accepted_ms.setdefault(_sender_of(send), Counter())
        sender_accepted[arrived_ms] += 1
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
        return _response(dialect, accepted.body, accepted.http_status)
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
    return web.json_response({"arrivals": request.app[STATE].counts.timeline()})


async def _handle_reset(request: web.Request) -> web.Response:
    request.app[STATE].reset()
    return web.Response(status=204)


async def _handle_config(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        changes = json.loads(await request.read())
    except ValueError:
        changes = None
    try:
        state.config = reconfigured(state.config, changes)
    except ValueError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    if {"rate_per_s", "burst", "limiter"} & set(changes):
        state.counts.limiters.clear()  # each limiter keeps the shape it was made with
    return web.json_response(settings_json(state.config, changes))


async def _handle_inbound(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        asked = json.loads(await request.read())
        if not isinstance(asked, dict):
            raise inbound.InboundError("give a JSON object")
        webhook = inbound.inbound_request(asked, state.config, time.time())
    except ValueError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    try:
        status, body = await inbound.send_inbound(webhook)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return web.json_response({"error": f"the receiver did not answer: {exc!r}"}, status=502)
    return web.json_response({"status": status, "body": body})


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
    for dialect in DIALECTS:
        app.router.add_post(dialect.path, functools.partial(_handle, dialect=dialect))
    app.router.add_get(STATS_PATH, _handle_stats)
    app.router.add_get(TIMELINE_PATH, _handle_timeline)
    app.router.add_post(RESET_PATH, _handle_reset)
    app.router.add_post(CONFIG_PATH, _handle_config)
    app.router.add_post(inbound.INBOUND_PATH, _handle_inbound)
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
        """The counters, as `GET /_simulator/stats` returns them (`stats.Counts.snapshot`)."""
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
    config: SimulatorConfig,
    host: str = "127.0.0.1",
    port: int = 0,
    ssl_context: ssl.SSLContext | None = None,
) -> RunningSimulator:
    """Start the simulator on `host:port` (port 0 picks a free one) and return it running; over
    TLS with `ssl_context` (its URL https://), as a provider is reached for real."""
    app = create_app(config)
    # No access log: benchmarks push thousands of requests a second through here.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=1024, ssl_context=ssl_context)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    real_port = runner.addresses[0][1]
    shown_host = f"[{host}]" if ":" in host else host
    scheme = "http" if ssl_context is None else "https"
    return RunningSimulator(runner, app[STATE], f"{scheme}://{shown_host}:{real_port}")


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
