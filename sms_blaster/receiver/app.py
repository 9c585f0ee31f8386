"""`sms-blaster receive`: the webhook server. Verify, store durably, acknowledge; process after.

Routes:
    /webhooks/dlr              Vonage SMS API delivery receipts (GET query, POST form, POST JSON)
    /webhooks/inbound          Vonage SMS API inbound messages (same three formats)
    /webhooks/messages/status  Vonage Messages API status (POST JSON, JWT signed)
    /webhooks/messages/inbound Vonage Messages API inbound messages (the same)
    /webhooks/twilio/status    Twilio status callbacks (POST form, X-Twilio-Signature)
    /webhooks/twilio/inbound   Twilio inbound messages (the same; answered with TwiML)
    /healthz, /metrics         liveness (503 while stopping) and Prometheus counters

Answers: 2xx once the callback is on disk; 401 for a wrong or stale signature, 400 for a callback
missing what it must carry or a body that cannot be read, 408 for a body still not received after
10 s, 413 for a body over the limit, 415 for a content type the route does not read (none of them
is retried by the providers); 503 with Retry-After when the queue is full, the store cannot write,
or a Vonage callback carries no signature at all (Vonage retries those, so nothing is lost). Each
refusal is a short line naming its cause, logged at a bounded rate (RefusalLog); `connection` does
the same for requests that never reach a route (414, 431, 400).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import importlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from aiohttp import hdrs, web
from aiohttp.http_exceptions import BadHttpMessage

from sms_blaster import stopsignals
from sms_blaster.errors import UsageError
from sms_blaster.models import Receipt, StoredReceipt
from sms_blaster.receiver import callbacks, replies, signatures
from sms_blaster.receiver.connection import MAX_URL_BYTES, Runner, parser_refusal
from sms_blaster.receiver.metrics import Metrics
from sms_blaster.receiver.refusals import Refusal, RefusalLog
from sms_blaster.receiver.stores.base import Hook, ReceiptStore, StoreBusy, StoreOptions
from sms_blaster.receiver.stores.sqlite import SqliteReceiptStore
from sms_blaster.receiver.vonage_replies import with_replies
from sms_blaster.settings import ReceiveSettings

log = logging.getLogger("sms_blaster.receiver")

_RETRY_AFTER_S = 1  # what a 503 asks the provider to wait before it retries
_MAX_JSON_DEPTH = 32  # real callbacks nest two or three levels
_MAX_BODY_BYTES = 256 * 1024  # a callback is well under 4 KiB
_BODY_TIMEOUT_S = 10.0  # a provider sends its callback at once: a body still coming is stuck
_JSON = "application/json"
_FORM = "application/x-www-form-urlencoded"
_FORMS = frozenset({_FORM, "multipart/form-data"})
# Sent with no type, or a generic one: read as JSON when the body is JSON (see _json_body).
_UNNAMED = frozenset({"text/plain", "application/octet-stream"})


_SETTINGS = web.AppKey("settings", ReceiveSettings)
_STORE: web.AppKey[ReceiptStore[Any]] = web.AppKey("store")
_METRICS = web.AppKey("metrics", Metrics)
_STOPPING = web.AppKey("stopping", asyncio.Event)
_REFUSALS = web.AppKey("refusals", RefusalLog)
_CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("clock")


def _open_store(
    settings: ReceiveSettings, hook: Hook | None, metrics: Metrics
) -> ReceiptStore[Any]:
    options = StoreOptions(
        queue_size=settings.queue_size,
        hook=hook,
        hook_concurrency=settings.hook_concurrency,
        emit=_emitter(sys.stdout) if settings.emit else None,
        observe_commit=metrics.observe_commit,
        keywords=settings.keywords,
    )
    if settings.redis_url is not None:
        from sms_blaster.receiver.stores.redis import RedisReceiptStore

        return RedisReceiptStore(settings.redis_url, **options)
    assert settings.store_path is not None
    return SqliteReceiptStore(settings.store_path, **options)


def create_app(
    settings: ReceiveSettings,
    store: ReceiptStore[Any],
    metrics: Metrics,
    *,
    clock: Callable[[], float] = time.time,
    refusals: RefusalLog | None = None,
) -> web.Application:
    """The web application over a started store; `clock` (unix seconds) judges signed times."""
    app = web.Application(client_max_size=_MAX_BODY_BYTES, middlewares=[_bounded_url])
    app[_SETTINGS] = settings
    app[_STORE] = store
    app[_METRICS] = metrics
    app[_STOPPING] = asyncio.Event()
    app[_REFUSALS] = refusals or RefusalLog(log)
    app[_CLOCK] = clock
    metrics.gauge(
        "sms_blaster_receipt_queue_depth", "Callbacks waiting for a commit.", lambda: store.depth
    )
    metrics.gauge(
        "sms_blaster_receipts_stored_total",
        "Receipts stored by this process (duplicates not counted).",
        lambda: store.stats.stored,
    )
    metrics.gauge(
        "sms_blaster_receipts_duplicate_total",
        "Callbacks already stored (a provider retry).",
        lambda: store.stats.duplicates,
    )
    dlr = _vonage_sms_route("dlr", callbacks.vonage_dlr)
    inbound = _vonage_sms_route("inbound", callbacks.vonage_inbound)
    app.router.add_route("GET", "/webhooks/dlr", dlr)
    app.router.add_route("POST", "/webhooks/dlr", dlr)
    app.router.add_route("GET", "/webhooks/inbound", inbound)
    app.router.add_route("POST", "/webhooks/inbound", inbound)
    app.router.add_post("/webhooks/messages/status", _messages_status)
    app.router.add_post("/webhooks/messages/inbound", _messages_inbound)
    app.router.add_post("/webhooks/twilio/status", _twilio_status)
    app.router.add_post("/webhooks/twilio/inbound", _twilio_inbound)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    return app


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _bounded_url(request: web.Request, handler: Handler) -> web.StreamResponse:
    """414 for a URL over the limit. The HTTP parser measures each piece of the request line it
    is handed, not their sum, so a long URL that arrives in several reads passes it."""
    if len(request.raw_path) > MAX_URL_BYTES:
        return _refuse(
            request, "request", Refusal(414, "too_long", f"URL over {MAX_URL_BYTES} bytes")
        )
    return await handler(request)


def _vonage_sms_route(route: str, parse: Callable[[Mapping[str, str]], Receipt]) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        app = request.app
        app[_METRICS].received(route)
        try:
            params = await _vonage_params(request)
        except _Refused as exc:
            return _refuse(request, route, exc.refusal)
        settings = app[_SETTINGS]
        if settings.vonage_secret:
            if not params.get("sig"):
                return _refuse_unsigned(request, route, "missing sig")
            reason = signatures.verify_vonage_sms(
                params,
                settings.vonage_secret,
                settings.signature_method,
                now_s=app[_CLOCK](),
                max_age_s=settings.max_age_s,
            )
            if reason is not None:
                return _refuse(request, route, Refusal(401, "signature", reason))
        try:
            receipt = parse(params)
        except callbacks.ReceiptError as exc:
            return _refuse(request, route, _invalid(str(exc)))
        return await _store(request, route, receipt, 204)

    return handle


class _Refused(Exception):
    """A request no provider sends (too large, of a foreign type, not JSON, not UTF-8)."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.text)
        self.refusal = refusal


def _invalid(cause: str, detail: str = "") -> Refusal:
    return Refusal(400, "invalid", cause, detail)


async def _vonage_params(request: web.Request) -> dict[str, str]:
    """The callback's fields, whichever of the three formats it came in."""
    if request.method == "GET":
        params = dict(request.query)
    elif request.content_type in _FORMS:
        params = dict(await _form(request))
    else:
        body = _json_object(await _json_body(request, f"{_JSON} or {_FORM}"))
        params = {key: _field(value) for key, value in body.items()}
    # `sig` escapes `&` and `=` in values, not in names: a name holding them could merge two
    # signed fields into one and still verify.
    if any("&" in key or "=" in key for key in params):
        raise _Refused(_invalid("field name with '&' or '='"))
    return params


async def _json_body(request: web.Request, accepted: str) -> bytes:
    """The body of a request read as JSON; 415 for a content type the route does not read.

    A body sent as text/plain or with no type is read as JSON when it looks like JSON: a signed
    callback behind a proxy that rewrote its type verifies and is stored, rather than refused
    with an answer the provider would repeat for days.
    """
    content_type = request.content_type
    named = content_type == _JSON or content_type.endswith("+json")
    if not named and content_type not in _UNNAMED:
        raise _Refused(_unsupported(request, accepted))
    body = await _body(request)
    if not named and body.lstrip()[:1] not in (b"{", b"["):
        raise _Refused(_unsupported(request, accepted))
    return body


def _unsupported(request: web.Request, accepted: str) -> Refusal:
    sent = request.headers.get(hdrs.CONTENT_TYPE, "none")
    return Refusal(
        415, "unsupported_type", "content type not read here", f"{sent}; send {accepted}"
    )


async def _body(request: web.Request) -> bytes:
    async with _reading(request):
        return await request.read()


async def _form(request: web.Request) -> list[tuple[str, str]]:
    async with _reading(request):
        try:
            form = await request.post()
        except UnicodeDecodeError:
            raise _Refused(_invalid("form data that is not UTF-8")) from None
        except LookupError:
            raise _Refused(_invalid("form in an unknown charset", request.charset or "")) from None
        except ValueError as exc:  # multipart without a boundary
            raise _Refused(_invalid("form that cannot be read", str(exc))) from None
        except BadHttpMessage as exc:  # a multipart part's headers
            raise _Refused(_invalid("form that cannot be read", exc.message)) from None
    return [(key, value) for key, value in form.items() if isinstance(value, str)]


@contextlib.asynccontextmanager
async def _reading(request: web.Request) -> AsyncIterator[None]:
    """Read a body within the size and time limits; what goes wrong is a _Refused."""
    try:
        if request.content.is_eof():  # all of it came with the headers, as callbacks do
            yield
        else:
            async with asyncio.timeout(_BODY_TIMEOUT_S):
                yield
    except web.HTTPRequestEntityTooLarge:
        raise _Refused(
            Refusal(413, "too_large", f"body over {_MAX_BODY_BYTES // 1024} KiB")
        ) from None
    except TimeoutError:
        raise _Refused(
            Refusal(408, "timeout", f"body not received within {_BODY_TIMEOUT_S:g} s")
        ) from None
    except ConnectionResetError:  # the client hung up mid-body: the answer goes nowhere
        raise _Refused(
            Refusal(400, "malformed", "connection closed before the body ended")
        ) from None
    except web.RequestPayloadError as exc:  # broken chunking or compression
        raise _Refused(
            parser_refusal(exc) or Refusal(400, "malformed", "body that cannot be read")
        ) from None


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool) or value is None:
        return "literal"
    return "number"


def _json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object whose every string SQLite can store."""
    try:
        text = body.decode("utf-8-sig")  # JSON is UTF-8 (RFC 8259); a BOM is tolerated
    except UnicodeDecodeError as exc:
        raise _Refused(
            _invalid("body is not UTF-8", f"byte 0x{body[exc.start]:02x} at offset {exc.start}")
        ) from None
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _Refused(
            _invalid("body is not JSON", f"{exc.msg} at line {exc.lineno} column {exc.colno}")
        ) from None
    except ValueError:  # an integer of more digits than Python converts
        raise _Refused(_invalid("body is not JSON", "a number too long")) from None
    except RecursionError:
        raise _Refused(_invalid("body nested too deep")) from None
    if not isinstance(parsed, dict):
        raise _Refused(_invalid("body is not a JSON object", f"a JSON {_json_kind(parsed)}"))
    _check_text(parsed)
    return parsed


def _check_text(value: object) -> None:
    """Refuse strings that are not UTF-8 (JSON's lone surrogates, `\\ud800`) and deep nesting.

    Either would fail later, in the store or in a recursive encoder, after the signature check.
    Iterative, so that the check itself cannot overflow the stack.
    """
    pending = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if depth > _MAX_JSON_DEPTH:
            raise _Refused(_invalid("body nested too deep"))
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode()
                except UnicodeEncodeError:
                    raise _Refused(_invalid("text that is not UTF-8")) from None
        elif isinstance(item, dict):
            pending.extend((key, depth + 1) for key in item)
            pending.extend((element, depth + 1) for element in item.values())
        elif isinstance(item, list):
            pending.extend((element, depth + 1) for element in item)


def _field(value: object) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


async def _messages_status(request: web.Request) -> web.StreamResponse:
    return await _messages(request, "messages/status", callbacks.vonage_messages_status)


async def _messages_inbound(request: web.Request) -> web.StreamResponse:
    return await _messages(request, "messages/inbound", callbacks.vonage_messages_inbound)


async def _messages(
    request: web.Request, route: str, parse: Callable[[Mapping[str, Any]], Receipt]
) -> web.StreamResponse:
    app = request.app
    app[_METRICS].received(route)
    try:
        body = await _json_body(request, _JSON)
        parsed = _json_object(body)
    except _Refused as exc:
        return _refuse(request, route, exc.refusal)
    settings = app[_SETTINGS]
    if settings.vonage_secret:
        authorization = request.headers.get("Authorization")
        if not authorization:
            return _refuse_unsigned(request, route, "missing Authorization")
        reason = signatures.verify_messages_jwt(
            authorization,
            body,
            settings.vonage_secret,
            now_s=app[_CLOCK](),
            max_age_s=settings.max_age_s,
        )
        if reason is not None:
            return _refuse(request, route, Refusal(401, "signature", reason))
    try:
        receipt = parse(parsed)
    except callbacks.ReceiptError as exc:
        return _refuse(request, route, _invalid(str(exc)))
    return await _store(request, route, receipt, 200)


async def _twilio_status(request: web.Request) -> web.StreamResponse:
    return await _twilio(request, "twilio/status")


async def _twilio_inbound(request: web.Request) -> web.StreamResponse:
    return await _twilio(request, "twilio/inbound")


async def _twilio(request: web.Request, route: str) -> web.StreamResponse:
    app = request.app
    app[_METRICS].received(route)
    is_form = request.content_type in _FORMS
    try:
        pairs = await _form(request) if is_form else []
        body = await _body(request)
    except _Refused as exc:
        return _refuse(request, route, exc.refusal)
    settings = app[_SETTINGS]
    if settings.twilio_token:
        reason = signatures.verify_twilio(
            _called_url(request, settings.public_url),
            pairs,
            request.headers.get("X-Twilio-Signature"),
            settings.twilio_token,
            body=body,
        )
        if reason is not None:
            return _refuse(request, route, Refusal(401, "signature", reason))
    if not is_form:  # checked after the signature: a forged request learns nothing more
        return _refuse(request, route, _unsupported(request, _FORM))
    inbound = route == "twilio/inbound"
    try:
        if inbound:
            receipt = callbacks.twilio_inbound(dict(pairs))
        else:
            receipt = callbacks.twilio_status(dict(pairs), request.query.get("client_ref"))
    except callbacks.ReceiptError as exc:
        return _refuse(request, route, _invalid(str(exc)))
    answer = await _store(request, route, receipt, 200)
    if inbound and answer.status == 200:  # Twilio reads the answer as TwiML: what to reply
        text = replies.reply_text(
            dict(pairs).get("Body"), settings.keywords, settings.reply_stop, settings.reply_help
        )
        return web.Response(text=replies.twiml(text), content_type=replies.TWIML_TYPE)
    return answer


def _called_url(request: web.Request, public_url: str | None) -> str:
    """The URL the provider called, as it sent it: Twilio signs that string byte for byte.

    The request target is taken raw (escapes and dot segments as sent, not normalised); behind a
    proxy, --public-url gives the scheme and host the provider saw.
    """
    target = request.raw_path
    if not target.startswith("/"):  # absolute-form (`POST http://host/path`): keep the path
        parts = urlsplit(target)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
    if public_url:
        return public_url.rstrip("/") + target
    return f"{request.scheme}://{request.host}{target}"


async def _store(
    request: web.Request, route: str, receipt: Receipt, ok_status: int
) -> web.StreamResponse:
    store = request.app[_STORE]
    try:
        # Shielded: a provider that hangs up does not cancel a commit other callbacks share.
        await asyncio.shield(store.submit(receipt))
    except StoreBusy as exc:
        request.app[_METRICS].refused(route, "busy")
        return web.Response(
            status=503, text=f"{exc}; retry\n", headers={"Retry-After": f"{_RETRY_AFTER_S:d}"}
        )
    return web.Response(status=ok_status)


def _refuse_unsigned(request: web.Request, route: str, reason: str) -> web.StreamResponse:
    """503, not 401: Vonage may send a callback unsigned after an internal error of its own, and
    it retries only on 429 and 5xx. The retry comes signed; a 401 would lose the receipt."""
    response = _refuse(request, route, Refusal(503, "unsigned", reason))
    response.headers["Retry-After"] = f"{_RETRY_AFTER_S:d}"
    return response


def _refuse(request: web.Request, route: str, refusal: Refusal) -> web.Response:
    app = request.app
    app[_METRICS].refused(route, refusal.kind)
    app[_REFUSALS].refused(route, refusal, request.remote)
    return web.Response(status=refusal.status, text=refusal.text + "\n")


async def _healthz(request: web.Request) -> web.StreamResponse:
    if request.app[_STOPPING].is_set():
        return web.Response(status=503, text="stopping\n")
    return web.Response(text="ok\n")


async def _metrics(request: web.Request) -> web.StreamResponse:
    return web.Response(
        text=request.app[_METRICS].render(), content_type="text/plain", charset="utf-8"
    )


def load_hook(spec: str) -> Hook:
    """The user hook `module:function` (an async function given each stored receipt as a dict)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise UsageError(f"--hook {spec!r}: give it as module:function, e.g. myhooks:on_receipt")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(
            f"--hook {spec!r}: cannot import {module_name} ({exc}); check PYTHONPATH"
        ) from exc
    function = getattr(module, attribute, None)
    if function is None or not asyncio.iscoroutinefunction(function):
        raise UsageError(f"--hook {spec!r}: {attribute} is not an async function in {module_name}")
    user: Callable[[dict[str, Any]], Awaitable[None]] = function

    async def hook(item: StoredReceipt) -> None:
        await user(callbacks.to_record(item.receipt, item.received_at_s))

    return hook


def _emitter(stream: Any) -> Callable[[Sequence[StoredReceipt]], None]:
    """Write a batch as JSON lines; called from a thread, so a stalled reader blocks only it."""
    broken = False

    def emit(batch: Sequence[StoredReceipt]) -> None:
        nonlocal broken
        if broken:
            return
        lines = "".join(
            json.dumps(
                callbacks.to_record(item.receipt, item.received_at_s),
                separators=(",", ":"),
                ensure_ascii=False,
            )
            + "\n"
            for item in batch
        )
        try:
            stream.write(lines)
            stream.flush()
        except (BrokenPipeError, OSError) as exc:
            broken = True  # the receipts are stored; only the copy on stdout stops
            log.error("stdout closed, --emit stops (receipts are still stored): %s", exc)

    return emit


async def serve(settings: ReceiveSettings, ready: Callable[[str], None]) -> None:
    """Run until SIGTERM, SIGINT or SIGHUP, then stop accepting, store what is queued, return."""
    hook = with_replies(settings, load_hook(settings.hook) if settings.hook else None)
    metrics = Metrics()
    store = _open_store(settings, hook, metrics)
    await store.start()
    # What exists now lives as long as the server: out of the collector's reach, a full
    # collection pauses the loop (and every acknowledgement) for a few ms instead of 15-60.
    gc.collect()
    gc.freeze()
    refusals = RefusalLog(log)
    app = create_app(settings, store, metrics, refusals=refusals)
    runner = Runner(
        app, refusals=refusals, metrics=metrics, shutdown_timeout_s=settings.drain_timeout_s
    )
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            # Everything acknowledged is committed already: nothing is lost by not draining.
            log.warning("forced stop (%s again): exiting now", signal.Signals(signum).name)
            sys.stderr.flush()
            os._exit(130)
        stop.set()
        app[_STOPPING].set()  # /healthz answers 503 at once, before the listener closes

    # Kept until the end, so a second signal can cut the drain short.
    signums = stopsignals.taken()
    for signum in signums:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await _listen(runner, settings)
        _warn_unsigned(settings)
        ready(_address(runner))
        await stop.wait()
        if settings.shutdown_delay_s > 0:
            log.info(
                "stopping: /healthz answers 503; still taking callbacks for %g s",
                settings.shutdown_delay_s,
            )
            await asyncio.sleep(settings.shutdown_delay_s)
        log.info("stopping: no new connections; storing what is queued")
    finally:
        await runner.cleanup()  # stops listening, waits for handlers (each waits its commit)
        await store.close(grace_s=settings.drain_timeout_s)
        for signum in signums:
            loop.remove_signal_handler(signum)
        refusals.flush()
    stats = store.stats
    log.info(
        "stopped: %d callbacks received, %d receipts stored, %d duplicates, %d refused busy",
        metrics.received_total,
        stats.stored,
        stats.duplicates,
        stats.busy,
    )


async def _listen(runner: web.AppRunner, settings: ReceiveSettings) -> None:
    """Start listening; UsageError (one line, exit 2) when the address cannot be used."""
    site = web.TCPSite(runner, settings.host, settings.port, backlog=1024)
    try:
        await site.start()
    except OSError as exc:
        where = f"{settings.host}:{settings.port}"
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(
                f"cannot listen on {where}: address already in use; stop what listens there "
                "or choose another --port"
            ) from exc
        reason = exc.strerror if isinstance(exc, socket.gaierror) else None
        reason = reason or (os.strerror(exc.errno) if exc.errno else str(exc))
        raise UsageError(
            f"cannot listen on {where}: {reason.lower()}; --host must be an address of this "
            "machine (0.0.0.0 for all of them)"
        ) from exc


def _address(runner: web.AppRunner) -> str:
    host, port = runner.addresses[0][:2]
    return f"http://{host}:{port}"


def _warn_unsigned(settings: ReceiveSettings) -> None:
    if not settings.vonage_secret:
        log.warning("VONAGE_SIGNATURE_SECRET is not set: Vonage callbacks are accepted unsigned")
    if not settings.twilio_token:
        log.warning("TWILIO_AUTH_TOKEN is not set: Twilio callbacks are accepted unsigned")
