"""The receiver's HTTP/1.1 server: an asyncio.Protocol over httptools' parser (llhttp).

A callback is one small request answered with a few bytes, a thousand or more a second; aiohttp's
web stack cost about 100 µs of CPU for each here, where a Protocol with httptools costs under 30.
This module reads requests into `Request` values, hands each to the application, and writes its
`Response`: keep-alive, pipelined requests answered in order, bodies by length or chunked,
`Expect: 100-continue`. A client that does not read its answers, or pipelines more than 16
requests ahead of them, is read no further until they drain: its memory stays bounded.
No TLS: a receiver behind a proxy or load balancer gets plain HTTP.

What no route should see is answered here, in one short line naming the cause, and logged through
the receiver's RefusalLog (any client can send it, so none gets a traceback or a line of its own):
a URL over 32 KiB (414), a header over 8190 bytes, more than 128 of them or a head over 64 KiB
(431), a body over
256 KiB (413), a head not received within 10 s of its first byte or a body within 10 s of its
head (408: a client that trickles bytes holds no connection), anything llhttp cannot parse (400).
One sweep a second finds the stuck heads and bodies and closes connections idle for 75 s (or
whose client reads none of its answers for as long); no request arms a timer of its own.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import email.utils
import logging
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import parse_qsl, urlsplit

import httptools

from sms_blaster.receiver.metrics import Metrics
from sms_blaster.receiver.refusals import Refusal, RefusalLog

log = logging.getLogger("sms_blaster.receiver")

# The two limits differ so that a long request line is told from a long header. A Vonage inbound
# message by GET carries its whole text in the URL: 1600 characters, escaped, fit in 32 KiB.
MAX_URL_BYTES = 32 * 1024
MAX_HEADER_BYTES = 8190  # a header's name and value together
MAX_HEADERS = 128  # a provider sends about 10
MAX_BODY_BYTES = 256 * 1024  # a callback is well under 4 KiB
HEAD_TIMEOUT_S = 10.0  # from a request's first byte to the end of its headers
BODY_TIMEOUT_S = 10.0  # a provider sends its callback at once: a body still coming is stuck
IDLE_TIMEOUT_S = 75.0  # a keep-alive connection with nothing to do is closed after this
_SWEEP_EVERY_S = 1.0
_PIPELINED = 16  # requests read ahead of their answers; beyond, reading pauses
# What one read holds is parsed a slice at a time, so that a read full of pipelined requests
# stops being parsed (the rest kept as bytes) once answers back up, not after every request in it.
_SLICE_BYTES = 4096
# The whole head (request line and headers), whatever each part's limit: a head still coming is
# held in memory, and 128 headers of 8190 bytes each would let a connection hold a megabyte (a
# thousand idle ones, a gigabyte). A provider's head is under 2 KiB; a GET's whole inbound text
# fits in the URL's 32 KiB.
MAX_HEAD_BYTES = 64 * 1024
_WHERE = "request"  # the route of a refusal that reaches no route
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Request:
    """One request as received: the target as sent, header names in lower case."""

    method: str
    target: str  # the request target, undecoded (Twilio signs it byte for byte)
    path: str  # the target's path (of an absolute-form target too), undecoded
    query_string: str
    headers: Mapping[str, str]  # the first value of each name; bytes past UTF-8 kept as escapes
    body: bytes  # as sent: a Content-Encoding is not undone here
    remote: str | None  # the client's address
    local: str  # the address the request came to, host:port (when it names no Host)

    @property
    def content_type(self) -> str:
        """The media type, lower case, without parameters; application/octet-stream when none."""
        mime, _, _ = self.headers.get("content-type", "").partition(";")
        return mime.strip().lower() or "application/octet-stream"

    @property
    def charset(self) -> str | None:
        """The Content-Type's charset parameter, None when it names none."""
        for parameter in self.headers.get("content-type", "").split(";")[1:]:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "charset":
                return value.strip().strip('"') or None
        return None

    @property
    def host(self) -> str:
        return self.headers.get("host") or self.local

    def query(self) -> dict[str, str]:
        """The query's fields; the first of a name repeated. UnicodeError for one not UTF-8,
        escaped (`%ff`) or sent raw."""
        self.query_string.encode()  # raw bytes past UTF-8 are kept as surrogate escapes
        fields: dict[str, str] = {}
        for name, value in parse_qsl(self.query_string, keep_blank_values=True, errors="strict"):
            fields.setdefault(name, value)
        return fields


@dataclass(frozen=True, slots=True)
class Response:
    """An answer: a status, a short text body (none for 204), extra headers."""

    status: int
    text: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = _TEXT


_INTERNAL_ERROR = Response(500, "internal error\n")


@dataclass(frozen=True, slots=True)
class Deferred:
    """An answer that waits for a future (a commit): `answer(future)` once it is done.

    A route returns one instead of awaiting, so that a request costs no task and no coroutine:
    the connection answers from the future's callback.
    """

    future: asyncio.Future[Any]
    answer: Callable[[asyncio.Future[Any]], Response]


Handler = Callable[[Request], Response | Deferred]


_ENCODED_KEPT = 32  # answers kept encoded: the few a route gives again and again (204, 200)


class _Encoded:
    """Answers as bytes, each made once a second (its Date changes), not once a request: a
    receipt's 204 is the same for every callback of that second."""

    __slots__ = ("_answers", "_date", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._date = b""
        self._answers: dict[tuple[Response, bool, bool], bytes] = {}

    def answer(self, response: Response, now_s: float, *, close: bool, head: bool) -> bytes:
        second = int(now_s)
        if second != self._second:
            self._second = second
            self._date = b"Date: %s\r\n" % email.utils.formatdate(second, usegmt=True).encode()
            self._answers.clear()
        key = (response, close, head)
        data = self._answers.get(key)
        if data is None:
            data = encode(response, self._date, close=close, head=head)
            if len(self._answers) < _ENCODED_KEPT:  # refusals name their causes: not kept
                self._answers[key] = data
        return data


def encode(response: Response, date: bytes, *, close: bool, head: bool = False) -> bytes:
    """The response's bytes: status line, headers, body (none for HEAD or a 204)."""
    status = response.status
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode()), date]
    for name, value in response.headers:
        lines.append(b"%s: %s\r\n" % (name.encode(), value.encode("latin-1")))
    body = b""
    if status != 204:
        body = response.text.encode()
        lines.append(b"Content-Type: %s\r\nContent-Length: %d\r\n" % (
            response.content_type.encode(), len(body)))  # fmt: skip
    if close:
        lines.append(b"Connection: close\r\n")
    lines.append(b"\r\n")
    if not head:
        lines.append(body)
    return b"".join(lines)


def parser_refusal(exc: httptools.HttpParserError) -> Refusal:
    """How to answer a request llhttp could not parse."""
    if isinstance(exc, httptools.HttpParserInvalidMethodError):
        return Refusal(400, "malformed", "not HTTP, or an unknown method (TLS to a plain port?)")
    # llhttp's reasons are fixed words, safe to repeat to the client.
    reason = str(exc)
    if isinstance(exc, httptools.HttpParserInvalidURLError):
        return Refusal(400, "malformed", "invalid URL", reason)
    if "header" in reason.lower():
        return Refusal(400, "malformed", "invalid header", reason)
    return Refusal(400, "malformed", "malformed request", reason)


class _Refused(Exception):
    """Raised from a parser callback: the request is refused before any route sees it."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.text)
        self.refusal = refusal


_URL_TOO_LONG = Refusal(414, "too_long", f"URL over {MAX_URL_BYTES} bytes")
_HEADER_TOO_LONG = Refusal(431, "too_long", f"header over {MAX_HEADER_BYTES} bytes")
_HEAD_TOO_LONG = Refusal(431, "too_long", f"request head over {MAX_HEAD_BYTES // 1024} KiB")
_TOO_MANY_HEADERS = Refusal(431, "too_long", f"more than {MAX_HEADERS} headers")
_TOO_LARGE = Refusal(413, "too_large", f"body over {MAX_BODY_BYTES // 1024} KiB")
_HEAD_TIMEOUT = Refusal(408, "timeout", f"request head not received within {HEAD_TIMEOUT_S:g} s")
# A request for another protocol is refused before any route runs: one request, one answer.
_UPGRADE = Refusal(400, "malformed", "protocol upgrade not served here")
_CONNECT = Refusal(501, "malformed", "CONNECT not served here")
_BODY_TIMEOUT = Refusal(408, "timeout", f"body not received within {BODY_TIMEOUT_S:g} s")


def _split_target(target: str) -> tuple[str, str]:
    """The path and query of a request target; an absolute-form one is taken apart as urllib
    does (a host's IPv6 bracket left open, a port over 65535: _Refused)."""
    if target.startswith("/"):
        path, _, query = target.partition("?")
        return path, query
    try:
        parts = urlsplit(target)
        _ = parts.port  # raises for a port out of range
    except ValueError as exc:
        raise _Refused(Refusal(400, "malformed", "invalid URL", str(exc))) from None
    return parts.path or "/", parts.query


class _Connection(asyncio.Protocol):
    """One client connection: parses requests, answers them in order."""

    def __init__(self, server: Server) -> None:
        self._server = server
        self._loop = server.loop
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._remote: str | None = None
        self._local = ""
        self._pending: collections.deque[Request | Refusal] = collections.deque()
        self._waiting: tuple[Request, Deferred] | None = None  # the answer waited for
        self._paused = False  # reading paused: answers back up, or no more requests are read
        self._unread = b""  # read, parsed up to _unread_at: the rest waits for answers to drain
        self._unread_at = 0
        self._write_blocked = False  # the transport's write buffer is over its high-water mark
        self._closing = False  # no more requests are read: the last answer closes
        self.active_s = self._loop.time()  # when data last came or an answer went
        # The message being read.
        self.in_message = False
        self.head_since_s = 0.0  # when the message's first byte was read
        self.body_since_s: float | None = None  # headers read, body not yet whole
        self._url: list[bytes] = []
        self._url_bytes = 0
        self._head_bytes = 0
        self._headers: dict[str, str] = {}
        self._header_count = 0
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._keep_alive = True
        self._discarding = False  # refused while its body still comes: read it, drop it

    # --- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # An answer is one small write: Nagle would hold it for the client's delayed ACK
            # (40 ms) whenever an earlier one on the connection is not acknowledged yet.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        self._remote = peer[0] if isinstance(peer, tuple) else None
        local = transport.get_extra_info("sockname")
        self._local = f"{local[0]}:{local[1]}" if isinstance(local, tuple) else ""
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.forget(self)
        self._transport = None
        self._unread = b""
        self._pending.clear()  # nobody to answer; a handler under way finishes (its commit)

    def data_received(self, data: bytes) -> None:
        self.active_s = self._loop.time()
        self._unread = self._unread[self._unread_at :] + data if self._unread else data
        self._unread_at = 0
        self._parse_unread()

    def pause_writing(self) -> None:
        # A client that does not read its answers: answer and read no more until it does.
        self._write_blocked = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._write_blocked = False
        if self._waiting is None:
            self._answer_pending()
        self._parse_unread()

    # --- reading --------------------------------------------------------------------------------

    @property
    def _backed_up(self) -> bool:
        """Answers wait: the client does not read them, or pipelined requests wait for theirs."""
        return self._write_blocked or len(self._pending) >= _PIPELINED

    def _parse_unread(self) -> None:
        """Parse what was read, a slice at a time, while answers do not back up; then read on
        only if all of it is parsed."""
        while self._unread and not self._backed_up and self._transport is not None:
            if self._closing and not self._discarding:
                break  # after a request that ends the connection, nothing more is read
            start = self._unread_at
            self._unread_at += _SLICE_BYTES
            if self._unread_at >= len(self._unread):
                data, self._unread, self._unread_at = self._unread[start:], b"", 0
                self._parse(data)
            else:
                self._parse(memoryview(self._unread)[start : self._unread_at])
        if self._closing and not self._discarding:
            self._unread, self._unread_at = b"", 0
        if self._unread or self._backed_up or (self._closing and not self._discarding):
            self._pause_reading()
        elif self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()

    def _pause_reading(self) -> None:
        if not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def _parse(self, data: bytes | memoryview) -> None:
        if self.body_since_s is None and self.in_message:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(_HEAD_TOO_LONG)
                return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if not isinstance(cause, _Refused):
                raise
            self._refuse(cause.refusal)
        except httptools.HttpParserUpgrade:  # refused at its headers already: not reached
            self._refuse(_UPGRADE)
        except httptools.HttpParserError as exc:
            self._refuse(parser_refusal(exc))

    # --- httptools' callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.in_message = True
        self.head_since_s = self._loop.time()
        self._url.clear()
        self._url_bytes = 0
        self._head_bytes = 0
        self._headers = {}
        self._header_count = 0
        self._body.clear()
        self._body_bytes = 0
        self._discarding = False

    def on_url(self, url: bytes) -> None:
        # A request line that arrives in several reads comes in several pieces: their sum counts.
        self._url_bytes += len(url)
        if self._url_bytes > MAX_URL_BYTES:
            raise _Refused(_URL_TOO_LONG)
        self._url.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > MAX_HEADERS:
            raise _Refused(_TOO_MANY_HEADERS)
        if len(name) + len(value) > MAX_HEADER_BYTES:
            raise _Refused(_HEADER_TOO_LONG)
        self._headers.setdefault(
            name.decode("latin-1").lower(), value.decode("utf-8", "surrogateescape")
        )

    def on_headers_complete(self) -> None:
        if self._parser.should_upgrade():  # Connection: Upgrade with an Upgrade, or CONNECT
            raise _Refused(_CONNECT if self._parser.get_method() == b"CONNECT" else _UPGRADE)
        self._keep_alive = self._parser.should_keep_alive()
        self.body_since_s = self._loop.time()
        length = self._headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            self._refuse_body(_TOO_LARGE)
        elif (
            self._headers.get("expect", "").lower() == "100-continue"
            and ("transfer-encoding" in self._headers or (length.isdigit() and int(length) > 0))
            and self._transport
        ):  # a request with no body to send is answered, not told to go on
            self._transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        if self._discarding:
            return
        self._body_bytes += len(body)
        if self._body_bytes > MAX_BODY_BYTES:
            self._refuse_body(_TOO_LARGE)
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.in_message = False
        self.body_since_s = None
        if self._discarding:
            self._discarding = False
            if self._closing and self._transport is not None and self._waiting is None:
                self._transport.close()  # the refusal is written: the body is read, close
            return
        if self._closing:
            return  # pipelined after a request that ends the connection
        target = b"".join(self._url).decode("utf-8", "surrogateescape")
        path, query = _split_target(target)
        request = Request(
            method=self._parser.get_method().decode("ascii", "replace"),
            target=target,
            path=path,
            query_string=query,
            headers=self._headers,
            body=b"".join(self._body),
            remote=self._remote,
            local=self._local,
        )
        self._body.clear()
        if not self._keep_alive:
            self._stop_reading()
        self._enqueue(request)

    # --- answering ------------------------------------------------------------------------------

    def _enqueue(self, item: Request | Refusal) -> None:
        self._pending.append(item)
        if self._waiting is None:
            self._answer_pending()

    def _answer_pending(self) -> None:
        """Answer what is pending, in order, until an answer has to wait for its future."""
        while self._pending and self._transport is not None and not self._write_blocked:
            item = self._pending.popleft()
            if isinstance(item, Refusal):
                self._write(Response(item.status, item.text + "\n"), close=True)
                if not self._discarding:
                    self._close()
                elif self._transport.can_write_eof():
                    # The client reads the answer to its end now; its body is still read (and
                    # dropped) so that it is not reset while writing, then the connection closes.
                    self._transport.write_eof()
                return
            answer = self._server.respond(item)
            if isinstance(answer, Deferred):
                self._waiting = (item, answer)
                answer.future.add_done_callback(self._answered)
                return
            if self._written(item, answer):
                return

    def _answered(self, future: asyncio.Future[Any]) -> None:
        assert self._waiting is not None
        request, deferred = self._waiting
        self._waiting = None
        response = self._server.settle(request, deferred)
        if self._transport is not None and not self._written(request, response):
            self._answer_pending()
            self._parse_unread()

    def _written(self, request: Request, response: Response) -> bool:
        """Write the answer to `request`; True when it closed the connection."""
        close = (not self._pending and self._closing) or self._server.closing
        self._write(response, close=close, head=request.method == "HEAD")
        if close:
            self._close()
            return True
        return False

    def _write(self, response: Response, *, close: bool, head: bool = False) -> None:
        if self._transport is None:
            return
        self.active_s = self._loop.time()
        self._transport.write(
            self._server.encoded.answer(response, time.time(), close=close, head=head)
        )

    def _close(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.close()

    def _stop_reading(self) -> None:
        """Read no further requests on this connection: the last answer closes it."""
        self._closing = True
        self._pause_reading()

    # --- refusals -----------------------------------------------------------------------------

    def _refuse(self, refusal: Refusal) -> None:
        """Refuse the request being read; the connection closes once it is answered.

        Not once the connection is ending: bytes after a request that ends it (a body longer
        than its Content-Length, read to its end after a 413) are no request of their own, and
        an answer to them would be written after the end of the stream."""
        if self._closing and not self._discarding:
            return
        self._server.refused(refusal, self._remote)
        self._stop_reading()
        self.in_message = False
        self.body_since_s = None
        self._enqueue(refusal)

    def _refuse_body(self, refusal: Refusal) -> None:
        """Refuse a request whose body is still coming: read it to its end (a client that is
        still writing would otherwise get a reset, not the answer) and drop it."""
        self._server.refused(refusal, self._remote)
        self._discarding = True
        self._body.clear()
        self._closing = True
        self._enqueue(refusal)

    def sweep(self, now_s: float) -> None:
        """Refuse a head stuck for HEAD_TIMEOUT_S or a body for BODY_TIMEOUT_S; close a connection
        idle for IDLE_TIMEOUT_S, or whose client has read none of its answers for as long."""
        if self._transport is None:
            return
        if self.in_message and self.body_since_s is None and not self._unread:
            # (a head with bytes still unread waits for its answers to drain, not for the client)
            if now_s - self.head_since_s > HEAD_TIMEOUT_S:
                self._refuse(_HEAD_TIMEOUT)
        elif self.body_since_s is not None and now_s - self.body_since_s > BODY_TIMEOUT_S:
            if self._discarding:
                self._transport.close()
            else:
                self._refuse(_BODY_TIMEOUT)
        elif self.idle and now_s - self.active_s > IDLE_TIMEOUT_S:
            self._transport.close()
        elif self._write_blocked and now_s - self.active_s > IDLE_TIMEOUT_S:
            self._transport.abort()  # a client that reads none of its answers: nothing to flush

    @property
    def idle(self) -> bool:
        """Between requests: nothing read of the next one, nothing to answer."""
        return not self.in_message and self._waiting is None and not self._pending

    def close_when_idle(self) -> None:
        """At a stop: close now if idle; else the request being read is read to its end, and
        the connection closes after its answer (see `_answer`)."""
        if self.idle and self._transport is not None:
            self._close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


class Server:
    """Listens, answers with `handle`, and stops: no new connections, answers under way end."""

    def __init__(
        self,
        handle: Handler,
        *,
        refusals: RefusalLog,
        metrics: Metrics,
    ) -> None:
        self._handle = handle
        self._refusals = refusals
        self._metrics = metrics
        self.loop = asyncio.get_running_loop()
        self.encoded = _Encoded()
        self.connections: set[_Connection] = set()
        self.closing = False
        self._listener: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._all_closed = asyncio.Event()

    def forget(self, connection: _Connection) -> None:
        """A connection closed."""
        self.connections.discard(connection)
        if self.closing and not self.connections:
            self._all_closed.set()

    async def listen(self, host: str | None, port: int, *, backlog: int = 1024) -> None:
        """Start listening (OSError when the address cannot be used)."""
        self._listener = await self.loop.create_server(
            lambda: _Connection(self), host, port, backlog=backlog
        )
        self._sweeper = self.loop.create_task(self._sweep(), name="http-sweep")

    @property
    def address(self) -> tuple[str, int]:
        assert self._listener is not None, "listen() first"
        host, port = self._listener.sockets[0].getsockname()[:2]
        return host, port

    def respond(self, request: Request) -> Response | Deferred:
        try:
            return self._handle(request)
        except Exception:
            log.exception("error answering %s %s", request.method, request.path)
            return _INTERNAL_ERROR

    def settle(self, request: Request, deferred: Deferred) -> Response:
        """The answer a Deferred gives once its future is done."""
        try:
            return deferred.answer(deferred.future)
        except Exception:
            log.exception("error answering %s %s", request.method, request.path)
            return _INTERNAL_ERROR

    def refused(self, refusal: Refusal, remote: str | None) -> None:
        self._metrics.refused(_WHERE, refusal.kind)
        self._refusals.refused(_WHERE, refusal, remote)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP_EVERY_S)
            now_s = self.loop.time()
            for connection in list(self.connections):
                connection.sweep(now_s)

    async def close(self, grace_s: float) -> None:
        """Stop listening, close idle connections, let answers under way end within `grace_s`
        (each waits its commit), then cut what is left."""
        self.closing = True
        if self._listener is not None:
            self._listener.close()
        for connection in list(self.connections):
            connection.close_when_idle()
        if self.connections:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace_s):
                    await self._all_closed.wait()
        for connection in list(self.connections):
            connection.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        if self._listener is not None:
            await self._listener.wait_closed()
