"""`sms-blaster receive`: the webhook server. Verify, store durably, acknowledge; process after.

Routes:
    /webhooks/dlr              Vonage SMS API delivery receipts (GET query, POST form, POST JSON)
    /webhooks/inbound          Vonage SMS API inbound messages (same three formats)
    /webhooks/messages/status  Vonage Messages API status (POST JSON, JWT signed)
    /webhooks/messages/inbound Vonage Messages API inbound messages (the same)
    /webhooks/twilio/status    Twilio status callbacks (POST form, X-Twilio-Signature)
    /webhooks/twilio/inbound   Twilio inbound messages (the same; answered with TwiML)
    /healthz, /metrics         liveness (503 while stopping) and Prometheus counters

Answers: 2xx once the callback is on disk; 401 for a wrong or stale signature, 403 on the routes
of a provider without a secret while another provider's is set (signing.py), 400 for a callback
missing what it must carry or a body that cannot be read, 408 for a body still not received after
10 s, 413 for a body over the limit, 415 for a content type the route does not read (none of them
is retried by the providers); 503 with Retry-After when the queue is full, the store cannot write,
or a Vonage callback carries no signature at all (Vonage retries those, so nothing is lost). Each
refusal is a short line naming its cause, logged at a bounded rate (RefusalLog); the HTTP server
(`http`) does the same for requests that never reach a route (414, 431, 413, 408, 400).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import gc
import importlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from sms_blaster import stopsignals
from sms_blaster.errors import UsageError
from sms_blaster.models import Receipt, ReceiptKind, StoredReceipt
from sms_blaster.providers.redact import Redactor, url_password
from sms_blaster.receiver import bodies, callbacks, replies, signatures, signing
from sms_blaster.receiver.bodies import FORM, FORMS, JSON, Refused, invalid
from sms_blaster.receiver.hook_loop import HookLoop
from sms_blaster.receiver.http import Deferred, Request, Response, Server
from sms_blaster.receiver.metrics import Metrics
from sms_blaster.receiver.refusals import Refusal, RefusalLog
from sms_blaster.receiver.stores.base import Hook, ReceiptStore, StoreBusy, StoreOptions
from sms_blaster.receiver.stores.sqlite import SqliteReceiptStore
from sms_blaster.receiver.vonage_replies import with_replies
from sms_blaster.settings import ReceiveSettings

log = logging.getLogger("sms_blaster.receiver")

# How long a stop waits for the hooks' own loop to end, once the store has cut them short.
_HOOK_LOOP_GRACE_S = 1.0
_RETRY_AFTER = (("Retry-After", "1"),)  # what a 503 asks the provider to wait before it retries
_NO_CONTENT = Response(204)
_JSON_OR_FORM = f"{JSON} or {FORM}"  # what a Vonage SMS route reads
_OK = Response(200)
# A provider's routes without its secret, while another's is set (signing.py): refused before
# anything of the request is read.
_NO_VONAGE_SECRET = signing.refusal(signing.VONAGE)
_NO_TWILIO_SECRET = signing.refusal(signing.TWILIO)


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
        redact=_redactor(settings).text,
    )
    if settings.redis_url is not None:
        from sms_blaster.receiver.stores.redis import RedisReceiptStore

        return RedisReceiptStore(settings.redis_url, **options)
    assert settings.store_path is not None
    return SqliteReceiptStore(settings.store_path, **options)


_PROXY_VARIABLES = ("https_proxy", "http_proxy", "all_proxy")


def _redactor(settings: ReceiveSettings, environ: Mapping[str, str] = os.environ) -> Redactor:
    """What masks the receiver's secrets in the texts it logs from code not its own (a hook):
    the proxies' passwords too (the replies it sends go through them; a hook may quote them)."""
    proxies = [value for name, value in environ.items() if name.lower() in _PROXY_VARIABLES]
    return Redactor.of(
        (
            settings.vonage_secret,
            settings.twilio_token,
            settings.api_secret,
            url_password(settings.redis_url),
            *map(url_password, proxies),
        )
    )


Route = Callable[[Request], Response | Deferred]


class ReceiverApp:
    """The routes over a started store: a Request in, a Response out.

    `clock` (unix seconds) judges signed times; `stopping` makes /healthz answer 503.
    """

    def __init__(
        self,
        settings: ReceiveSettings,
        store: ReceiptStore[Any],
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
        refusals: RefusalLog | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.refusals = refusals or RefusalLog(log)
        self.clock = clock
        self.stopping = False
        self.signing = signing.signing(settings)
        metrics.gauge(
            "sms_blaster_receipt_queue_depth",
            "Callbacks waiting for a commit.",
            lambda: store.depth,
        )
        metrics.counter(
            "sms_blaster_receipts_stored_total",
            "Receipts stored by this process (duplicates not counted).",
            lambda: store.stats.stored,
        )
        metrics.counter(
            "sms_blaster_receipts_duplicate_total",
            "Callbacks already stored (a provider retry).",
            lambda: store.stats.duplicates,
        )
        metrics.counter(
            "sms_blaster_receipts_foreign_total",
            "Receipts naming a row sent through another provider or account: kept, not applied.",
            lambda: store.stats.foreign,
        )
        dlr = self._vonage_sms_route("dlr", callbacks.vonage_dlr)
        inbound = self._vonage_sms_route("inbound", callbacks.vonage_inbound)
        self._routes: dict[str, dict[str, Route]] = {
            "/webhooks/dlr": {"GET": dlr, "POST": dlr},
            "/webhooks/inbound": {"GET": inbound, "POST": inbound},
            "/webhooks/messages/status": {"POST": self._messages_status},
            "/webhooks/messages/inbound": {"POST": self._messages_inbound},
            "/webhooks/twilio/status": {"POST": self._twilio_status},
            "/webhooks/twilio/inbound": {"POST": self._twilio_inbound},
            "/healthz": {"GET": self._healthz, "HEAD": self._healthz},
            "/metrics": {"GET": self._metrics, "HEAD": self._metrics},
        }

    def handle(self, request: Request) -> Response | Deferred:
        """The answer to one request: its route's, or 404 / 405; Deferred until a commit."""
        methods = self._routes.get(request.path)
        if methods is None:
            return Response(404, "not found\n")
        route = methods.get(request.method)
        if route is None:
            return Response(405, "method not allowed\n", (("Allow", ", ".join(methods)),))
        return route(request)

    def _vonage_sms_route(self, route: str, parse: Callable[[Mapping[str, str]], Receipt]) -> Route:
        def handle(request: Request) -> Response | Deferred:
            self.metrics.received(route)
            if self.signing.vonage is signing.Check.REFUSE:
                return self._refuse(request, route, _NO_VONAGE_SECRET)
            try:
                params = _vonage_params(request)
            except Refused as exc:
                return self._refuse(request, route, exc.refusal)
            settings = self.settings
            if settings.vonage_secret:
                if not params.get("sig"):
                    return self._refuse_unsigned(request, route, "missing sig")
                reason = signatures.verify_vonage_sms(
                    params,
                    settings.vonage_secret,
                    settings.signature_method,
                    now_s=self.clock(),
                    max_age_s=settings.max_age_s,
                )
                if reason is not None:
                    return self._refuse(request, route, Refusal(401, "signature", reason))
            try:
                receipt = parse(params)
            except callbacks.ReceiptError as exc:
                return self._refuse(request, route, invalid(str(exc)))
            return self._store(route, receipt, _NO_CONTENT)

        return handle

    def _messages_status(self, request: Request) -> Response | Deferred:
        return self._messages(request, "messages/status", callbacks.vonage_messages_status)

    def _messages_inbound(self, request: Request) -> Response | Deferred:
        return self._messages(request, "messages/inbound", callbacks.vonage_messages_inbound)

    def _messages(
        self, request: Request, route: str, parse: Callable[[Mapping[str, Any]], Receipt]
    ) -> Response | Deferred:
        self.metrics.received(route)
        if self.signing.vonage is signing.Check.REFUSE:
            return self._refuse(request, route, _NO_VONAGE_SECRET)
        try:
            body = bodies.json_body(request, JSON)
            parsed = bodies.json_object(body)
        except Refused as exc:
            return self._refuse(request, route, exc.refusal)
        settings = self.settings
        if settings.vonage_secret:
            authorization = request.headers.get("authorization")
            if not authorization:
                return self._refuse_unsigned(request, route, "missing Authorization")
            reason = signatures.verify_messages_jwt(
                authorization,
                body,
                settings.vonage_secret,
                now_s=self.clock(),
                max_age_s=settings.max_age_s,
            )
            if reason is not None:
                return self._refuse(request, route, Refusal(401, "signature", reason))
        try:
            receipt = parse(parsed)
        except callbacks.ReceiptError as exc:
            return self._refuse(request, route, invalid(str(exc)))
        return self._store(route, receipt, _OK)

    def _twilio_status(self, request: Request) -> Response | Deferred:
        return self._twilio(request, "twilio/status")

    def _twilio_inbound(self, request: Request) -> Response | Deferred:
        return self._twilio(request, "twilio/inbound")

    def _twilio(self, request: Request, route: str) -> Response | Deferred:
        self.metrics.received(route)
        if self.signing.twilio is signing.Check.REFUSE:
            return self._refuse(request, route, _NO_TWILIO_SECRET)
        is_form = request.content_type in FORMS
        try:
            pairs = bodies.form_fields(request) if is_form else []
            body = bodies.content(request)
        except Refused as exc:
            return self._refuse(request, route, exc.refusal)
        settings = self.settings
        if settings.twilio_token:
            reason = signatures.verify_twilio(
                _called_url(request, settings.public_url),
                pairs,
                request.headers.get("x-twilio-signature"),
                settings.twilio_token,
                body=body,
            )
            if reason is not None:
                return self._refuse(request, route, Refusal(401, "signature", reason))
        if not is_form:  # checked after the signature: a forged request learns nothing more
            return self._refuse(request, route, bodies.unsupported(request, FORM))
        fields = dict(pairs)
        try:
            if route == "twilio/inbound":
                receipt = callbacks.twilio_inbound(fields)
            else:
                client_ref = bodies.query_fields(request).get("client_ref")
                receipt = callbacks.twilio_status(fields, client_ref)
        except callbacks.ReceiptError as exc:
            return self._refuse(request, route, invalid(str(exc)))
        except Refused as exc:
            return self._refuse(request, route, exc.refusal)
        if receipt.kind is not ReceiptKind.INBOUND:
            return self._store(route, receipt, _OK)
        # Twilio reads the answer to an inbound message as TwiML: what to reply.
        text = replies.reply_text(
            fields.get("Body"), settings.keywords, settings.reply_stop, settings.reply_help
        )
        answer = Response(200, replies.twiml(text), content_type=replies.TWIML_TYPE)
        return self._store(route, receipt, answer)

    def _store(self, route: str, receipt: Receipt, ok: Response) -> Response | Deferred:
        """`ok` once the receipt is committed, 503 when the store cannot take it."""
        try:
            committed = self.store.submit(receipt)
        except StoreBusy as exc:
            return self._busy(route, exc)
        return Deferred(committed, functools.partial(self._committed, route, ok))

    def _committed(self, route: str, ok: Response, committed: asyncio.Future[bool]) -> Response:
        if committed.cancelled():  # nothing cancels it today; were it to, the provider retries
            return self._busy(route, StoreBusy("the commit was cancelled"))
        error = committed.exception()
        if error is None:
            return ok
        if isinstance(error, StoreBusy):
            return self._busy(route, error)
        raise error

    def _busy(self, route: str, exc: StoreBusy) -> Response:
        self.metrics.refused(route, "busy")
        return Response(503, f"{exc}; retry\n", _RETRY_AFTER)

    def _refuse_unsigned(self, request: Request, route: str, reason: str) -> Response:
        """503, not 401: Vonage may send a callback unsigned after an internal error of its own,
        and it retries only on 429 and 5xx. The retry comes signed; a 401 would lose it."""
        refusal = Refusal(503, "unsigned", reason)
        self._note(request, route, refusal)
        return Response(refusal.status, refusal.text + "\n", _RETRY_AFTER)

    def _refuse(self, request: Request, route: str, refusal: Refusal) -> Response:
        self._note(request, route, refusal)
        return Response(refusal.status, refusal.text + "\n")

    def _note(self, request: Request, route: str, refusal: Refusal) -> None:
        self.metrics.refused(route, refusal.kind)
        self.refusals.refused(route, refusal, request.remote)

    def _healthz(self, request: Request) -> Response:
        if self.stopping:
            return Response(503, "stopping\n")
        return Response(200, "ok\n")

    def _metrics(self, request: Request) -> Response:
        return Response(200, self.metrics.render())


# The fields that say which message a Vonage callback is about, and what of it.
_IDENTITY_FIELDS = ("messageId", "status", "msisdn")


def _vonage_params(request: Request) -> dict[str, str]:
    """The callback's fields, whichever of the three formats it came in."""
    if request.method == "GET":
        params = bodies.query_fields(request)
    elif request.content_type in FORMS:
        params = dict(bodies.form_fields(request))
    else:
        body = bodies.json_object(bodies.json_body(request, _JSON_OR_FORM))
        for name in _IDENTITY_FIELDS:
            value = body.get(name)
            if value is not None and type(value) is not str and type(value) is not int:
                # `null`, `true` or a list would be stored as the text "null", "true", "[...]":
                # one id for every such callback, each a duplicate of the first.
                raise Refused(invalid(f"'{name}' is not a string"))
            if value is None and name in body:
                raise Refused(invalid(f"'{name}' is null"))
        params = {
            key: value if type(value) is str else bodies.field(value) for key, value in body.items()
        }
    # `sig` escapes `&` and `=` in values, not in names: a name holding them could merge two
    # signed fields into one and still verify.
    names = "".join(params)
    if "&" in names or "=" in names:
        raise Refused(invalid("field name with '&' or '='"))
    return params


def _called_url(request: Request, public_url: str | None) -> str:
    """The URL the provider called, as it sent it: Twilio signs that string byte for byte.

    The request target is taken raw (escapes and dot segments as sent, not normalised); behind a
    proxy, --public-url gives the scheme and host the provider saw.
    """
    target = request.target
    if not target.startswith("/"):  # absolute-form (`POST http://host/path`): keep the path
        parts = urlsplit(target)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
    if public_url:
        return public_url.rstrip("/") + target
    return f"http://{request.host}{target}"


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
    """Run until SIGTERM, SIGINT or SIGHUP, then stop accepting, store what is queued, return.

    The stop signals are taken first: one that comes while the store opens or the hook loads
    ends the start there (the store closed, nothing received, exit 0, as any stop of a receiver);
    a second one exits 130 at once, as it does later.
    """
    signing.signing(settings)  # a contradictory --accept-unsigned: exit 2 before anything opens
    stop = asyncio.Event()
    stopping: list[ReceiverApp] = []  # the app, once it answers: /healthz 503 at the first signal
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            # Everything acknowledged is committed already: nothing is lost by not draining.
            log.warning("forced stop (%s again): exiting now", signal.Signals(signum).name)
            sys.stderr.flush()
            os._exit(130)
        stop.set()
        for app in stopping:
            app.stopping = True  # /healthz answers 503 at once, before the listener closes

    # Kept until the end, so a second signal can cut the drain short.
    signums = stopsignals.taken()
    for signum in signums:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await _serve(settings, ready, stop, stopping)
    finally:
        # Ignored, not given back to their default: a signal after the drain must not kill
        # the process before its last lines (remove_signal_handler would reset them first).
        stopsignals.ignore(signums)


async def _serve(
    settings: ReceiveSettings,
    ready: Callable[[str], None],
    stop: asyncio.Event,
    stopping: list[ReceiverApp],
) -> None:
    hook = with_replies(settings, load_hook(settings.hook) if settings.hook else None)
    hooks = HookLoop() if hook is not None else None
    if hooks is not None and hook is not None:
        hooks.start()
        hook = hooks.apart(hook)  # a hook that blocks never holds an acknowledgement
    try:
        await _serve_with(settings, ready, stop, stopping, hook)
    finally:
        if hooks is not None and not await hooks.stop(_HOOK_LOOP_GRACE_S):
            log.warning(
                "a receipt hook still blocks its event loop (synchronous I/O or a sleep in an "
                "async def?): exiting without it; its receipt is handed to the hook again at "
                "the next start"
            )


async def _serve_with(
    settings: ReceiveSettings,
    ready: Callable[[str], None],
    stop: asyncio.Event,
    stopping: list[ReceiverApp],
    hook: Hook | None,
) -> None:
    metrics = Metrics()
    store = _open_store(settings, hook, metrics)
    await store.start()
    if stop.is_set():
        await _stopped_while_starting(store)
        return
    # What exists now lives as long as the server: out of the collector's reach, a full
    # collection pauses the loop (and every acknowledgement) for a few ms instead of 15-60.
    gc.collect()
    gc.freeze()
    refusals = RefusalLog(log)
    app = ReceiverApp(settings, store, metrics, refusals=refusals)
    stopping.append(app)
    server = Server(app.handle, refusals=refusals, metrics=metrics)
    if stop.is_set():
        await _stopped_while_starting(store)
        return
    try:
        await _listen(server, settings)
        signing.warn(log, settings, app.signing)
        host, port = server.address
        ready(f"http://{host}:{port}")
        await stop.wait()
        if settings.shutdown_delay_s > 0:
            log.info(
                "stopping: /healthz answers 503; still taking callbacks for %g s",
                settings.shutdown_delay_s,
            )
            await asyncio.sleep(settings.shutdown_delay_s)
        log.info("stopping: no new connections; storing what is queued")
    finally:
        # Stops listening, waits for the answers under way (each waits its commit).
        await server.close(grace_s=settings.drain_timeout_s)
        await store.close(grace_s=settings.drain_timeout_s)
        refusals.flush()
    stats = store.stats
    # Every 503 the store's state caused (a full queue, a commit that failed, a stop), as
    # answered: `stats.busy` counts the full queue alone.
    log.info(
        "stopped: %d callbacks received, %d receipts stored, %d duplicates, %d refused busy "
        "(503: queue full or store failing)",
        metrics.received_total,
        stats.stored,
        stats.duplicates,
        metrics.refused_total("busy"),
    )


async def _stopped_while_starting(store: ReceiptStore[Any]) -> None:
    """A stop signal before the receiver listened: nothing was received, the store is closed."""
    await store.close(grace_s=0)
    log.info("stopped while starting: nothing was received")


async def _listen(server: Server, settings: ReceiveSettings) -> None:
    """Start listening; UsageError (one line, exit 2) when the address cannot be used."""
    try:
        await server.listen(settings.host, settings.port, backlog=1024)
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
