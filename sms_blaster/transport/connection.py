"""One keep-alive HTTP/1.1 connection of the lean transport: an `asyncio.Protocol` that writes one
request at a time and feeds the answer to httptools' response parser.

What it knows about a request decides its classification (see `lean.py`): whether any byte of
it was handed to the socket (`start` took it and `write` wrote it; a waiter answered NOT_WRITTEN
says not a byte left), and whether any byte of an answer came.

HTTP/1.1 ties an answer to a request only by their order on the connection, so a server that
writes one answer too many (a second answer to one request, an answer nobody asked for) shifts
every later answer onto the wrong request. An answer that would have its request sent again is
trusted only once the connection has shown nothing more (`witness`): a second answer to the
request it was read for may say that request was accepted.
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
from sms_blaster.transport.wire import (
    AnswerHeaders,
    body_runs_to_close,
    keep_alive_max,
    keep_alive_s,
)

# A server's keep-alive counts from when it wrote its answer, a little before we read it: stop
# reusing a connection this much before the server would close it.
KEEP_ALIVE_MARGIN_S = 0.5
# An SMS API's answer is a few hundred bytes; one far larger is not an answer to trust, and must
# not fill the memory (a server that sends headers or a body without end).
MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 1024 * 1024
# The first byte of a TLS record (an alert, a handshake): the server speaks TLS, not HTTP.
_TLS_RECORDS = (b"\x15", b"\x16")


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: AnswerHeaders
    body: bytes
    # Its body ran to the server's close (no length, not chunked): whatever came after it, a
    # second answer too, is in the body.
    to_close: bool = False


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
        "_answer_bytes",
        "_answered_at",
        "_answered_before",
        "_body",
        "_complete",
        "_default_keep_alive_s",
        "_ends",
        "_headers",
        "_headers_done",
        "_idle_since",
        "_judged",
        "_keep_alive",
        "_keep_alive_s",
        "_last_body",
        "_loop",
        "_now",
        "_on_closed",
        "_on_idle",
        "_on_late",
        "_ours",
        "_parser",
        "_poll",
        "_request",
        "_status",
        "_stray",
        "_transport",
        "_waiter",
        "_watchers",
        "_witnessed",
        "closed",
        "deadline",
        "retiring",
        "served",
    )

    def __init__(
        self,
        on_idle: Callable[[Connection], None],
        on_closed: Callable[[Connection], None],
        now: Callable[[], float],
        default_keep_alive_s: float,
        on_late: Callable[[float, bytes, tuple[str, ...]], None] = lambda *late: None,
    ) -> None:
        self._on_idle = on_idle
        # Bytes came this long after the last answer, unasked for (an answer too many): the
        # transport learns how late, which numbers they name, and which rows' answers read on
        # this connection would have had them sent again (`_witnessed`).
        self._on_late = on_late
        self._witnessed: tuple[str, ...] = ()
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
        self._answer_bytes = 0  # of the answer being read, head and body
        # Answers acted on only if no byte more than asked for follows (see `witness`).
        self._watchers: list[tuple[asyncio.Future[bool], asyncio.TimerHandle]] = []
        self.retiring = False  # takes no new request while watched
        self._ends = False  # the server said it closes after the last answer (or closed)
        self._ours = False  # closed by this side, not by the server
        self._answered_at = 0.0  # the loop's time of the last answer
        self._answered_before = 0.0  # and of the one before it
        self._last_body = b""  # the last answer's body
        # The answer read is judged by the request's coroutine (`release`) before the
        # connection is idle: a throttle retires it, and no request may be written first.
        self._judged = True
        self.closed = False  # seen closed (EOF, reset, or closed by us): never written to again
        self.deadline = 0.0  # the loop time by which the request in flight must be answered
        self.served = 0  # answers read; a connection that served one is a reused one

    # --- the pool's side -------------------------------------------------------------------

    def reusable(self) -> bool:
        """Whether a request can go on this idle connection without meeting the server's close:
        not seen closed, idle for less than the server keeps it, and nothing waiting unread in
        the socket (an EOF or a reset the loop has not read yet)."""
        if self.closed or self.retiring or self._transport is None:
            return False
        if self._transport.is_closing():
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
        self._answer_bytes = 0
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
        self.closed = self._ours = True
        if self._transport is not None:
            self._transport.abort()

    def witness(self, guard_s: float, to: str) -> asyncio.Future[bool]:
        """Retire the connection (it takes no new request; one already taken is answered) and
        watch it for `guard_s`: True when no byte more than was asked for came meanwhile, or the
        connection closed without one; False as soon as one came (the connection is dropped).

        Asked after an answer that would have its request sent again: if that answer was one
        too many (a second answer to an earlier request), the request's own answer follows it,
        and may say it was accepted."""
        assert self._loop is not None  # a connection answered has its loop
        future: asyncio.Future[bool] = self._loop.create_future()
        self.retiring = True
        self._witnessed = (*self._witnessed[-15:], to)  # the request `to`'s answer is watched
        if self.closed:
            future.set_result(self._closed_in_sync())  # nothing more can come
            return future
        timer = self._loop.call_later(guard_s, self._watched, future)
        self._watchers.append((future, timer))
        return future

    def release(self) -> None:
        """The answer read was judged (a throttle's connection retired first): the connection
        may take the next request, unless it cannot any more."""
        if self._judged:
            return
        self._judged = True
        if self._ends:  # closed once judged, or once its watches end: unread, a late answer
            if not self._watchers:  # would go unseen
                self._close()
        elif not (self.closed or self.retiring):
            self._on_idle(self)

    def desync(self, *, by_answer: bool = False) -> None:
        """An answer was found to be another request's (`by_answer`: the last one read): every
        answer read on this connection may be one too many, so none of them is trusted and the
        connection is dropped."""
        if by_answer and self.served > 1:
            # Likely the previous request's own, come after the one read for it: this late.
            self._on_late(
                self._answered_at - self._answered_before, self._last_body, self._witnessed
            )
        watchers, self._watchers = self._watchers, []
        for future, timer in watchers:
            timer.cancel()
            if not future.done():
                future.set_result(False)
        self.abort()

    def _watched(self, future: asyncio.Future[bool]) -> None:
        """A watch ended with nothing more on the connection: once none is left, it is handed
        back to the pool (which closes it when it has no room for it), not closed: a throttle
        storm would otherwise open a connection a throttle."""
        self._watchers = [(f, t) for f, t in self._watchers if f is not future]
        if not future.done():
            future.set_result(True)
        if not self._watchers and self._waiter is None and not self.closed:
            if self._ends:
                self._close()
                return
            self.retiring = False
            self._on_idle(self)

    def _unwatch(self) -> None:
        """The connection closed: no more bytes can come; see `_closed_in_sync`."""
        in_sync = self._closed_in_sync()
        watchers, self._watchers = self._watchers, []
        for future, timer in watchers:
            timer.cancel()
            if not future.done():
                future.set_result(in_sync)

    def _closed_in_sync(self) -> bool:
        """Whether a watch that the close ended found the connection in sync: when its last
        answer said it ends, or this side closed it. A server that drops a connection it said
        it keeps, while watched, may have taken the next request after an answer too many
        and died before answering it: not trusted."""
        return self._ends or self._ours

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
            # taken but not written yet is not written to it), and so is an answer read on it
            # and not yet trusted.
            if self._request is not None:
                self._unwritten()
            elif self._loop is not None and self.served:
                self._on_late(self._loop.time() - self._answered_at, data, self._witnessed)
            self.desync()
            return
        if not self._answer_bytes and data[:1] in _TLS_RECORDS and data[1:2] == b"\x03":
            # A TLS record (a handshake, or the alert a TLS server sends for what is not TLS).
            self._fail(Failure.TLS, "the server answered in TLS: --base-url needs https://")
            return
        self._answer_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(Failure.LOST, "the server switched protocols")
            return
        except httptools.HttpParserError as exc:
            self._fail(Failure.LOST, f"unreadable answer: {describe(exc)}")
            self._on_late(0.0, data, self._witnessed)  # what it held may be a late answer
            return
        if self._stray:
            self._fail(Failure.LOST, "the server answered more than was asked")
            self._on_late(0.0, data, self._witnessed)  # an earlier request's, maybe
            self.desync()
        elif self._answer_bytes > MAX_HEAD_BYTES and not self._headers_done:
            self._fail(Failure.LOST, f"an answer's head over {MAX_HEAD_BYTES} bytes")
        elif self._answer_bytes > MAX_HEAD_BYTES + MAX_BODY_BYTES:
            self._fail(Failure.LOST, f"an answer over {MAX_BODY_BYTES} bytes")
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
        self._unwatch()
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
        if self._loop is not None:
            self._answered_before, self._answered_at = self._answered_at, self._loop.time()
        to_close = self.closed  # the body ran to the server's close
        self._last_body = body = b"".join(self._body)
        self._finish(Answer(self._status, AnswerHeaders(headers), body, to_close))
        left = keep_alive_max(headers)
        if self.closed or not self._keep_alive or (left is not None and left <= 0):
            # `Connection: close`, HTTP/1.0, `Keep-Alive: max=0`, or a body that ran to the
            # close: it takes no more requests, and is closed once its answer is judged, not
            # now: a witness must see whether one answer too many is still on its way.
            self._ends = self.retiring = True
            self._judged = False
            return
        if self.retiring:
            if not self._watchers:
                self._close()
            return  # watched until its watches end, then closed
        self._idle_since = self._now()
        server_keep_alive_s = keep_alive_s(headers)
        self._keep_alive_s = (
            self._default_keep_alive_s
            if server_keep_alive_s is None
            else server_keep_alive_s - KEEP_ALIVE_MARGIN_S
        )
        self._judged = False  # idle once `release`d

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
        self.closed = self._ours = True
        if self._transport is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closing it
                self._transport.close()
