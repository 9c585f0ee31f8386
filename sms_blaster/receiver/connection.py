"""The receiver's HTTP connections: what aiohttp's parser refuses is answered in one short line.

aiohttp answers a request its parser cannot read (a URL or header over the limit, a bad method,
broken chunking) with 400, a body that echoes the client's bytes, and a full traceback in the log
for each. Here each is answered with the status that names it (414, 431, 400) and a short cause,
and logged through the receiver's RefusalLog: any client can send those, so none gets a traceback.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    PayloadEncodingError,
)

from sms_blaster.receiver.metrics import Metrics
from sms_blaster.receiver.refusals import Refusal, RefusalLog

# The two limits differ so that a LineTooLong says by its limit which one was crossed. A Vonage
# inbound message by GET carries its whole text in the URL: 1600 characters, escaped, fit in 32 KiB.
MAX_URL_BYTES = 32 * 1024
MAX_HEADER_BYTES = 8190  # aiohttp's default, for a header's name and value together
MAX_HEADERS = 128  # aiohttp's default; a provider sends about 10
_WHERE = "request"  # refused before any route saw it


def parser_refusal(exc: BaseException | None) -> Refusal | None:
    """How to answer a request aiohttp could not read; None for anything else (a bug: a 500)."""
    if isinstance(exc, web.RequestPayloadError):  # raised by a read of the body, not the parser
        exc = exc.__cause__ if isinstance(exc.__cause__, HttpProcessingError) else None
        if exc is None:
            return Refusal(400, "malformed", "body that cannot be read")
    if not isinstance(exc, HttpProcessingError):
        return None
    if isinstance(exc, LineTooLong):
        if exc.args[1:2] == (MAX_URL_BYTES,):
            return Refusal(414, "too_long", f"URL over {MAX_URL_BYTES} bytes")
        return Refusal(431, "too_long", f"header over {MAX_HEADER_BYTES} bytes")
    if isinstance(exc, BadHttpMessage) and exc.message.startswith("Too many headers"):
        return Refusal(431, "too_long", f"more than {MAX_HEADERS} headers")
    if isinstance(exc, BadHttpMethod):
        return Refusal(400, "malformed", "not HTTP, or an unknown method (TLS to a plain port?)")
    # llhttp's reason comes before the quoted bytes: fixed words, safe to repeat to the client.
    reason = exc.message.split(":\n", 1)[0]
    if isinstance(exc, InvalidURLError):
        return Refusal(400, "malformed", "invalid URL", reason)
    if isinstance(exc, BadStatusLine):
        return Refusal(400, "malformed", "invalid request line", reason)
    if isinstance(exc, InvalidHeader):
        return Refusal(400, "malformed", "invalid header")
    if isinstance(exc, PayloadEncodingError):
        return Refusal(400, "malformed", "body that cannot be read", reason)
    return Refusal(400, "malformed", "malformed request", reason)


class _CheckedParser:
    """aiohttp's request parser, refusing absolute-form targets that yarl cannot take apart.

    yarl raises ValueError (an IPv6 host left open, a port over 65535) where aiohttp expects its
    own errors: from the parser, a traceback and no answer; from the request built later, a dead
    connection task and a client left waiting. As an InvalidURLError each is a 400.
    """

    __slots__ = ("_parser",)

    def __init__(self, parser: Any) -> None:
        self._parser = parser

    def feed_data(self, data: bytes) -> tuple[list[Any], bool, bytes]:
        try:
            messages, upgraded, tail = self._parser.feed_data(data)
        except ValueError as exc:
            raise InvalidURLError(str(exc)) from exc
        for message, _ in messages:
            try:
                _ = message.url.absolute and (message.url.host, message.url.port)  # as the request
            except ValueError as exc:
                raise InvalidURLError(str(exc)) from exc
        return messages, upgraded, tail

    def __getattr__(self, name: str) -> Any:
        return getattr(self._parser, name)


class Connection(web.RequestHandler):
    """aiohttp's connection handler, answering and logging the parser's refusals itself."""

    __slots__ = ("_metrics", "_refusals")

    def __init__(
        self, manager: web.Server, *, refusals: RefusalLog, metrics: Metrics, **options: Any
    ) -> None:
        super().__init__(manager, **options)
        # Private to aiohttp (pinned below 3.14): the one place its parser can be wrapped.
        self._request_parser = _CheckedParser(self._request_parser)  # type: ignore[assignment]
        self._refusals = refusals
        self._metrics = metrics

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        refusal = parser_refusal(exc)
        if refusal is None:
            return super().handle_error(request, status, exc, message)
        self._note(refusal, request.remote)
        if request.writer.output_size > 0:
            # As aiohttp does: an answer has begun, so this one cannot be sent; the caller closes.
            raise ConnectionError("refused after the answer had begun")
        response = web.Response(status=refusal.status, text=refusal.text + "\n")
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        # A body the route left unread, found broken as it is drained after the answer: the
        # client has its answer, and a route that read the body has logged the refusal.
        exc = kwargs.get("exc_info")
        if isinstance(exc, BaseException) and parser_refusal(exc) is not None:
            self.log_debug(*args, **kwargs)
            return
        super().log_exception(*args, **kwargs)

    def _note(self, refusal: Refusal, remote: str | None) -> None:
        self._metrics.refused(_WHERE, refusal.kind)
        self._refusals.refused(_WHERE, refusal, remote)


class _Server(web.Server):
    """aiohttp's low-level server, with a Connection for each client."""

    def __init__(self, plain: web.Server, options: dict[str, Any]) -> None:
        super().__init__(plain.request_handler, request_factory=plain.request_factory)
        self._options = options

    def __call__(self) -> web.RequestHandler:
        return Connection(self, loop=self._loop, **self._options)


class Runner(web.AppRunner):
    """An AppRunner whose connections answer and log what the HTTP parser refuses."""

    __slots__ = ("_options",)

    def __init__(
        self,
        app: web.Application,
        *,
        refusals: RefusalLog,
        metrics: Metrics,
        shutdown_timeout_s: float,
    ) -> None:
        super().__init__(app, handle_signals=False, shutdown_timeout=shutdown_timeout_s)
        self._options: dict[str, Any] = {
            "refusals": refusals,
            "metrics": metrics,
            "access_log": None,
            "max_line_size": MAX_URL_BYTES,
            "max_field_size": MAX_HEADER_BYTES,
            "max_headers": MAX_HEADERS,
        }

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()  # starts and freezes the application
        return _Server(plain, self._options)
