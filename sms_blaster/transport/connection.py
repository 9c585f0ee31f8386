"""One keep-alive HTTP/1.1 connection of the lean transport: an `asyncio.Protocol` that writes one
request at a time and feeds the answer to httptools' response parser.

What it knows about a request decides its classification (see `lean.py`): whether any byte of
it was handed to the socket (`start` took it and `write` wrote it; a waiter answered NOT_WRITTEN
says not a byte left), and whether any byte of an answer came.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import httptools

from sms_blaster.transport.failures import Failure, describe
from sms_blaster.transport.wire import AnswerHeaders, body_runs_to_close, keep_alive_s

# A server's keep-alive counts from when it wrote its answer, a little before we read it: stop
# reusing a connection this much before the server would close it.
KEEP_ALIVE_MARGIN_S = 0.5


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: AnswerHeaders
    body: bytes


@dataclass(frozen=True, slots=True)
class Failed:
    failure: Failure
    detail: str


Reply = Answer | Failed  # what a request's waiter is given

# A request not a byte of which was written (the connection was found closing first): safe to
# send again, and sent once more on a new connection when this one was a reused one.
NOT_WRITTEN = Failed(Failure.CONNECT, "the connection closed before the request was written")


class Connection(asyncio.Protocol):
    """One connection to an origin; the pool owns it between requests."""

    __slots__ = (
        "_body",
        "_complete",
        "_default_keep_alive_s",
        "_headers",
        "_headers_done",
        "_idle_since",
        "_keep_alive",
        "_keep_alive_s",
        "_loop",
        "_now",
        "_on_closed",
        "_on_idle",
        "_parser",
        "_poll",
        "_request",
        "_status",
        "_stray",
        "_transport",
        "_waiter",
        "closed",
        "deadline",
        "served",
    )

    def __init__(
        self,
        on_idle: Callable[[Connection], None],
        on_closed: Callable[[Connection], None],
        now: Callable[[], float],
        default_keep_alive_s: float,
    ) -> None:
        self._on_idle = on_idle
        self._on_closed = on_closed
        self._now = now
        self._default_keep_alive_s = default_keep_alive_s
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._poll: select.poll | None = None  # the socket alone, to see a close not read yet
        self._waiter: asyncio.Future[Reply] | None = None
        self._request: bytes | None = None  # started but not written yet
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._headers_done = False
        self._keep_alive = False
        self._complete = False
        self._stray = False
        self._idle_since = 0.0
        self._keep_alive_s = default_keep_alive_s
        self.closed = False  # seen closed (EOF, reset, or closed by us): never written to again
        self.deadline = 0.0  # the loop time by which the request in flight must be answered
        self.served = 0  # answers read; a connection that served one is a reused one

    # --- the pool's side -------------------------------------------------------------------

    def reusable(self) -> bool:
        """Whether a request can go on this idle connection without meeting the server's close:
        not seen closed, idle for less than the server keeps it, and nothing waiting unread in
        the socket (an EOF or a reset the loop has not read yet)."""
        if self.closed or self._transport is None or self._transport.is_closing():
            return False
        if self._now() - self._idle_since >= self._keep_alive_s:
            return False
        # Readable (an EOF, or bytes nobody asked for) or in error (a reset): not quiet.
        return self._poll is None or not self._poll.poll(0)

    def start(self, request: bytes, deadline: float) -> asyncio.Future[Reply] | None:
        """Take `request`, to be written by `write`; the waiter of its answer (NOT_WRITTEN when
        not a byte of it left), or None when the connection is closing already."""
        transport = self._transport
        if self.closed or transport is None or transport.is_closing():
            return None
        self._status, self._headers, self._body = 0, [], []
        self._headers_done = self._complete = self._stray = False
        self.deadline = deadline
        self._request = request
        assert self._loop is not None  # set with the transport
        self._waiter = waiter = self._loop.create_future()
        return waiter

    def write(self) -> None:
        """Write the request taken by `start`, unless its waiter was answered already."""
        request, self._request = self._request, None
        if request is None:
            return
        transport = self._transport
        if self.closed or transport is None or transport.is_closing():
            self._unwritten()
            return
        transport.write(request)
        if transport.is_closing():
            # The first send failed at once (a reset found at write time): nothing was written.
            self._unwritten()

    def _unwritten(self) -> None:
        self._request = None
        self.closed = True
        self._finish(NOT_WRITTEN)

    def expire(self) -> None:
        """The request in flight ran out of time: answer it so, and drop the connection."""
        if self._request is not None:
            self._unwritten()
        else:
            self._finish(Failed(Failure.TIMEOUT, "no answer in time"))
        self.abort()

    def abort(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.abort()

    # --- asyncio's side ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self._transport = cast(asyncio.Transport, transport)
        self._loop = asyncio.get_running_loop()
        self._idle_since = self._now()
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # To look for a close before reusing the connection: one poll(2) of the socket, which
            # (unlike a peek) takes no socket lock and raises nothing when all is quiet. The
            # descriptor stays the transport's: it is polled only while the transport is open.
            self._poll = select.poll()
            self._poll.register(sock.fileno(), select.POLLIN)

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._request is not None:
            # Bytes nobody asked for: what follows on this connection is unknown (a request
            # taken but not written yet is not written to it).
            if self._request is not None:
                self._unwritten()
            self.abort()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(Failure.LOST, "the server switched protocols")
            return
        except httptools.HttpParserError as exc:
            self._fail(Failure.LOST, f"unreadable answer: {describe(exc)}")
            return
        if self._stray:
            self._fail(Failure.LOST, "the server answered more than was asked")
        elif self._complete:
            self._answered()

    def eof_received(self) -> bool:
        self.closed = True
        self._end_of_answer("the server closed the connection before answering")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._poll = None
        self._end_of_answer(describe(exc) if exc else "server disconnected")
        self._on_closed(self)

    # --- httptools' side ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete:
            self._stray = True

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self._headers_done = True
        # Asked now: the parser forgets once the message is complete.
        self._keep_alive = self._parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._status < 200:  # 100 Continue and the like: the answer follows
            self._headers, self._body, self._headers_done = [], [], False
        else:
            self._complete = True

    # --- the answer --------------------------------------------------------------------------

    def _answered(self) -> None:
        headers = self._headers
        self.served += 1
        self._finish(Answer(self._status, AnswerHeaders(headers), b"".join(self._body)))
        if self.closed or not self._keep_alive:
            self._close()  # `Connection: close`, or a body that ran to the close
            return
        self._idle_since = self._now()
        server_keep_alive_s = keep_alive_s(headers)
        self._keep_alive_s = (
            self._default_keep_alive_s
            if server_keep_alive_s is None
            else server_keep_alive_s - KEEP_ALIVE_MARGIN_S
        )
        self._on_idle(self)

    def _end_of_answer(self, detail: str) -> None:
        """The server closed: an answer whose body runs to the close is whole; any other answer
        in flight is lost."""
        if self._request is not None:
            self._unwritten()
        if self._waiter is None:
            return
        if (
            self._headers_done
            and not self._complete
            and body_runs_to_close(self._status, self._headers)
        ):
            self._complete = True
            self._answered()
        else:
            self._fail(Failure.LOST, detail)

    def _fail(self, failure: Failure, detail: str) -> None:
        self._finish(Failed(failure, detail))
        self.abort()

    def _finish(self, reply: Reply) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(reply)

    def _close(self) -> None:
        self.closed = True
        if self._transport is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closing it
                self._transport.close()
