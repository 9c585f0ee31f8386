"""The lean transport: our own keep-alive HTTP/1.1 client, built for one thing, many small POSTs
to one origin, at a fraction of a general client's cost per request.

How it works: a pool of keep-alive connections to each origin, as many as the window, opened
when first needed (`connection.Connection`: an `asyncio.Protocol` feeding httptools' parser);
each endpoint's request line and fixed headers built once (`wire.RequestHead`), so a request is
one join of prebuilt bytes, the length and the body; the requests of one turn of the event loop
written together at the start of the next; TLS through the event loop with the
system's trust store (`ssl.create_default_context()`, which reads SSL_CERT_FILE and
SSL_CERT_DIR), SNI and hostname verification; one periodic sweep for all timeouts instead of a
timer per request. Redirects are not followed. Through an `http://` proxy (`choice.py`: the
environment's), each connection is a tunnel through it (`proxy.py`), and from then on the same.

What a failure means (the engine resends only what was never written; `failures.py`):

- no connection (refused, DNS, connect timeout after half of --timeout, no pooled connection
  free in time; through a proxy, no tunnel: the proxy unreachable, closing during CONNECT or
  answering it with a 5xx): not a byte was written -> `connect_error`, safe to resend;
- a proxy refusing the tunnel for good (407, 403, ...) -> `proxy_refused`, fatal;
- a TLS handshake refused, the certificate not trusted or not for this host -> `tls_error`,
  fatal (every request to this endpoint would be refused the same way);
- a URL no request can go to -> `invalid_url`, fatal;
- once any byte of the request was handed to the socket: a reset, a close, a broken or truncated
  answer -> `connection_lost`; no whole answer within --timeout -> `timeout`; both ambiguous (the
  provider may have accepted it), whether or not any byte of an answer came.

The stale keep-alive race: a server closes a connection it kept idle; a request written to it in
the meantime meets a close it cannot be told apart from a server that read the request and
died. So a pooled connection is reused only when it is safe to: it has not been seen closed (an
EOF or a reset read by the loop drops it from the pool); it has been idle for less than the
server said it keeps connections (`Keep-Alive: timeout=N`, less half a second) or 4 s when it
did not say; and a poll of its socket finds nothing waiting (a close the loop has not read yet).
A connection failing any of these is dropped before a byte of the request is written to it.
Should a reused connection still be found closing as the request is written (the transport
already closing, or the very first send refused), nothing of it left: it is sent once more, on a
new connection, inside the transport, and is not ambiguous. What remains is a close still on the
wire when the request leaves, which only the keep-alive margin guards against: ambiguous.

One answer too many: a server that writes a second answer to a request, or one nobody asked for,
has it read as the answer of the next request written on that connection. An answer that names
another number than its request's is found out (the provider's parser says so): the connection
is dropped, so the shift goes no further. An answer that would have its request sent again
(throttled, come back later, a fatal refusal that leaves the row to the resume) names no number
to check, so it comes with a witness (`Exchange.in_sync`): its connection takes no new request
(it goes back to the pool only once its answer was judged, `Connection.release`) and is watched
for twice the slowest recent answer, or longer than the latest answer too many came after its
connection's last answer (at least GUARD_MIN_S, at most --timeout); any byte that comes
meanwhile, or an answer for another number on it, says the answer read may have been another
request's, and the engine records the row unknown instead of sending it again. A connection found
quiet is used again (closed if the pool filled up meanwhile). One the server said it closes
(`Connection: close`, HTTP/1.0, `Keep-Alive: max=0`) is watched the same way before it is
closed: closing it at once would leave a late answer unseen. A server that drops, while it is
watched, a connection it said it keeps may have taken a request and died: not trusted. An answer
whose body holds a status line has swallowed the next answer (by its length, its chunks or the
close): not trusted.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import re
import socket
import ssl
import time
from collections.abc import Callable, Mapping

from sms_blaster.models import Message, Outcome, SendResult
from sms_blaster.providers.base import Exchange, Provider
from sms_blaster.providers.rules import ANOTHER_NUMBERS_ANSWER, NAMED_LATE, numbers_named
from sms_blaster.transport.base import (
    cancelled_unwritten,
    late,
    pace_again,
    unbuildable,
)
from sms_blaster.transport.connection import NOT_WRITTEN, Answer, Connection, Failed, Reply
from sms_blaster.transport.failures import Failure, describe, failure_result
from sms_blaster.transport.proxy import Proxy, open_tunnel
from sms_blaster.transport.wire import InvalidRequestUrl, Origin, RequestHead, request_head

# Reuse a connection idle for less than this when the server does not say how long it keeps one
# (under the 5 s of Node.js and Apache, far under nginx's 75 s).
DEFAULT_KEEP_ALIVE_S = 4.0
# The sweep looks for overdue requests this often, as a share of --timeout (a timeout fires up to
# this much late), within these bounds.
_SWEEPS_PER_TIMEOUT = 10
_SWEEP_EVERY_S = (0.005, 0.5)
# A sweep that ran later than this share of its interval after it was due looks again after
# this delay before it expires anything (see `LeanTransport._sweep`): long enough for the loop
# to poll its sockets first (uvloop's clock has 1 ms steps), far under any --timeout.
_READ_FIRST_S = 0.002
_NEVER_WRITTEN = "the connection closed before the request was written"
_STOPPED_BEFORE_WRITTEN = "the run stopped before the request was written"
# The answers that would have their request sent again (now, after a wait, or by the resume).
_RESENT = frozenset({Outcome.THROTTLED, Outcome.TRANSIENT, Outcome.FATAL})
# A status line in a body: an answer too many whose length (or chunks, or the close) took the
# next answer in as its body.
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] [1-5][0-9][0-9]")
# How long a connection is watched after such an answer: twice the slowest answer of the last
# second or two, within these bounds (the least for a loop held up by a busy machine).
GUARD_MIN_S = 0.05


class LeanTransport:
    """Keep-alive connections, as many as the window, to the provider's origin."""

    __slots__ = (
        "_busy",
        "_clock",
        "_guard_min_s",
        "_heads",
        "_late_s",
        "_named_late",
        "_pools",
        "_proxy",
        "_size",
        "_slowest",
        "_ssl_context",
        "_sweep_due",
        "_sweep_every_s",
        "_sweep_held",
        "_sweeper",
        "_timeout_s",
        "_unwritten",
        "_written_s",
    )

    def __init__(
        self,
        window: int,
        timeout_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        ssl_context: ssl.SSLContext | None = None,
        guard_min_s: float = GUARD_MIN_S,
        proxy: Proxy | None = None,
    ) -> None:
        self._size = window
        self._proxy = proxy  # every connection a tunnel through it
        self._timeout_s = timeout_s
        self._clock = clock  # idle times, for keep-alive (deadlines are the loop's time)
        self._ssl_context = ssl_context
        self._pools: dict[Origin, _Pool] = {}
        self._heads: dict[str, tuple[Mapping[str, str], RequestHead]] = {}
        # The requests in flight, by their waiter (for the sweep of overdue ones). A connection
        # answered is back in the pool only once its answer was judged (`Connection.release`).
        self._busy: dict[asyncio.Future[Reply], Connection] = {}
        low, high = _SWEEP_EVERY_S
        self._sweep_every_s = min(high, max(low, timeout_s / _SWEEPS_PER_TIMEOUT))
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweep_due = 0.0  # the loop time the next sweep is due at
        self._sweep_held = False  # the sweep that ran late held its expiries back for a turn
        # Requests taken by their connections in this turn of the loop, written together at the
        # start of the next: a burst of writes wakes the server once, not once a request (on
        # loopback, that wake-up is paid by the writer's system call).
        self._unwritten: list[Connection] = []
        self._written_s = float("-inf")  # the loop time requests were last written at
        self._guard_min_s = guard_min_s
        self._slowest = _Slowest()
        # The latest an answer too many was seen after its connection's last answer: the watch
        # lasts longer than that from then on (a server whose answers are fast, but whose second
        # answers come late).
        self._late_s = 0.0
        # The numbers answers too many named: a number is one row's (duplicates are skipped), so
        # a later request to one is that row's resend, and its first request may be accepted.
        self._named_late: set[str] = set()

    async def send(self, provider: Provider, message: Message) -> Exchange:
        """Send one request and classify what came back (see the module docstring)."""
        try:
            request = provider.build_request(message)
            head = self._head(request.url, request.headers)
        except InvalidRequestUrl as exc:
            failure = failure_result(Failure.INVALID_URL, describe(exc))
            return Exchange(self._clean(provider, failure), 0.0)
        except Exception as exc:
            return unbuildable(provider, exc)
        if self._named_late and message.to in self._named_late:
            return Exchange(self._clean(provider, NAMED_LATE), 0.0)  # not sent again
        started = time.perf_counter()
        # One coroutine a request: the exchange is written out here, and a safe idle connection
        # is taken without a wait (the usual case, with the pool as large as the window).
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadline, connect_deadline = now + self._timeout_s, now + self._timeout_s / 2
        pool = self._pool(head.origin)
        data = head.request(request.body)
        reuse = True
        paced = False  # took a new rate slot after waiting for its connection
        written_s = None  # the loop time it is written at, when not `now` (it waited)
        reply: Reply = NOT_WRITTEN
        for _ in range(2):
            got = pool.idle() if reuse else None
            if got is None:
                try:
                    acquired = await pool.acquire(connect_deadline, reuse)
                except asyncio.CancelledError:  # no connection yet: nothing was written
                    cancelled_unwritten()
                    raise
                if type(acquired) is Failed:
                    reply = acquired
                    break
                assert type(acquired) is Connection
                got = acquired
                written_s = loop.time()
                if not paced and late(now, written_s):
                    # Its slot passed while it waited (see base.LATE_S): paced again, the
                    # connection held meanwhile.
                    paced = True
                    try:
                        go = await pace_again(message, self._written_s > now)
                    except asyncio.CancelledError:
                        got.abort()
                        cancelled_unwritten()
                        raise
                    if not go:
                        got.abort()
                        reply = Failed(Failure.CONNECT, _STOPPED_BEFORE_WRITTEN)
                        break
                    # The exchange begins now: its time and --timeout count from here.
                    started = time.perf_counter()
                    written_s = loop.time()
                    deadline = written_s + self._timeout_s
            waiter = got.start(data, deadline)
            if waiter is not None:
                # Written at the start of the next turn: later requests that waited see it.
                self._written_s = now if written_s is None else written_s
                self._busy[waiter] = got
                if not self._unwritten:
                    loop.call_soon(self._write_all)
                self._unwritten.append(got)
                if self._sweeper is None:
                    self._arm_sweep(loop, self._sweep_every_s)
                try:
                    reply = await waiter
                except BaseException:
                    # Cancelled in flight (the connection holds an answer nobody reads, or a
                    # request not written), or with its answer read but not judged.
                    got.abort()
                    raise
                finally:
                    del self._busy[waiter]
                if reply is not NOT_WRITTEN:
                    break
            # Found closing before a byte of the request left.
            got.abort()
            reply = NOT_WRITTEN
            if not (got.served and reuse):
                break
            reuse = False  # the stale keep-alive race: once more, on a new connection
        latency_s = time.perf_counter() - started
        if type(reply) is not Answer:
            assert type(reply) is Failed
            result = failure_result(reply.failure, reply.detail)
            return Exchange(self._clean(provider, result), latency_s)
        answered = loop.time()
        self._slowest.add(latency_s, answered)
        try:
            result = provider.parse_response(reply.status, reply.headers, reply.body, message.to)
        except Exception as exc:  # as over aiohttp: every failure is classified
            result = failure_result(Failure.LOST, describe(exc))
        assert got is not None  # an answer came on it
        in_sync = None
        named_late = None
        if result is ANOTHER_NUMBERS_ANSWER:
            got.desync(by_answer=True)  # an answer too many came on it: the rest is as shifted
        elif result.outcome in _RESENT:
            named_late = functools.partial(self._was_named_late, message.to)
            if _STATUS_LINE.search(reply.body):
                # The body holds another answer, maybe the request's own: an answer too many
                # whose length, chunks or close took it in. Nothing to watch: not trusted.
                got.desync()
                in_sync = loop.create_future()
                in_sync.set_result(False)
            else:
                slowest_s = max(2 * self._slowest.of(answered), 1.5 * self._late_s)
                in_sync = got.witness(
                    min(self._timeout_s, max(self._guard_min_s, slowest_s)), message.to
                )
                pool.retire(got)
        got.release()  # back in the pool only now: no request was written to it meanwhile
        return Exchange(
            self._clean(provider, result),
            latency_s,
            in_sync=in_sync,
            named_late=named_late,
            late_by_s=deadline if named_late is not None else None,
        )

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for pool in self._pools.values():
            await pool.close()

    def _clean(self, provider: Provider, result: SendResult) -> SendResult:
        """The result with the provider's secrets masked, and the proxy's."""
        result = provider.redactor.result(result)
        return result if self._proxy is None else self._proxy.redactor.result(result)

    def _head(self, url: str, headers: Mapping[str, str]) -> RequestHead:
        """The prebuilt head for a URL and its headers (a provider keeps both as they are until
        its credentials change)."""
        known = self._heads.get(url)
        if known is not None and known[0] is headers:
            return known[1]
        head = request_head(url, headers)
        self._heads[url] = (headers, head)
        return head

    def _pool(self, origin: Origin) -> _Pool:
        pool = self._pools.get(origin)
        if pool is None:
            context = None
            if origin.tls:
                if self._ssl_context is None:
                    self._ssl_context = _client_context()
                context = self._ssl_context
            pool = self._pools[origin] = _Pool(
                origin, self._size, context, self._clock, self._answer_came_late, self._proxy
            )
        return pool

    def _answer_came_late(self, late_s: float, data: bytes, witnessed: tuple[str, ...]) -> None:
        """An answer too many came `late_s` after its connection's last answer: later watches
        last longer; the numbers it names, and those of the rows whose answers read on that
        connection would have had them sent again (the late answer may be one's own, whatever
        the API says in it), are not sent again."""
        if late_s > self._late_s:
            self._late_s = min(late_s, self._timeout_s)
        self._named_late |= numbers_named(data)
        self._named_late.update(witnessed)

    def _was_named_late(self, to: str) -> bool:
        return to in self._named_late

    def _write_all(self) -> None:
        unwritten, self._unwritten = self._unwritten, []
        for connection in unwritten:
            connection.write()

    def _arm_sweep(self, loop: asyncio.AbstractEventLoop, delay_s: float) -> None:
        self._sweep_due = loop.time() + delay_s
        self._sweeper = loop.call_later(delay_s, self._sweep)

    def _sweep(self) -> None:
        """Answer every overdue request with a timeout; look again later while any is in flight.

        A sweep that runs long after it was due finds the loop ran nothing meanwhile: the
        process was stopped (SIGSTOP, Ctrl-Z) or starved. Its clock kept counting, so requests
        look overdue whose answers came meanwhile and wait unread in their sockets: a stopped
        process's poll returns early without them (EINTR, once it continues), and both loops
        run the timers that came due before polling again. So such a sweep expires nothing: it
        looks again after the loop has polled, and expires what is still unanswered then.
        """
        loop = asyncio.get_running_loop()
        now = loop.time()
        overdue = [
            connection
            for waiter, connection in self._busy.items()
            # A waiter not done yet is its connection's request in flight (one at a time).
            if not waiter.done() and connection.deadline <= now
        ]
        if overdue and not self._sweep_held and now - self._sweep_due > self._sweep_every_s:
            self._sweep_held = True
            self._arm_sweep(loop, _READ_FIRST_S)
            return
        self._sweep_held = False
        for connection in overdue:
            connection.expire()
        if self._busy:
            self._arm_sweep(loop, self._sweep_every_s)
        else:
            self._sweeper = None


class _Slowest:
    """The slowest answer of the current second and the one before (on the loop's clock)."""

    __slots__ = ("_current_s", "_ends", "_previous_s")

    def __init__(self) -> None:
        self._current_s = self._previous_s = 0.0
        self._ends = 0.0

    def add(self, latency_s: float, now: float) -> None:
        if now >= self._ends:
            self._roll(now)
        if latency_s > self._current_s:
            self._current_s = latency_s

    def of(self, now: float) -> float:
        if now >= self._ends:
            self._roll(now)
        return max(self._current_s, self._previous_s)

    def _roll(self, now: float) -> None:
        late = now >= self._ends + 1.0  # a whole second without answers
        self._previous_s = 0.0 if late else self._current_s
        self._current_s, self._ends = 0.0, now + 1.0


class _Pool:
    """The connections to one origin: idle ones reused last-in first-out, at most `size` open
    (and retired ones apart while watched: back in use after if there is room, else kept open
    and read, out of use, up to `size` of them, until the server closes them)."""

    __slots__ = (
        "_clock",
        "_connecting",
        "_context",
        "_emptied",
        "_idle",
        "_on_late",
        "_open",
        "_origin",
        "_proxy",
        "_retired",
        "_size",
        "_waiters",
    )

    def __init__(
        self,
        origin: Origin,
        size: int,
        context: ssl.SSLContext | None,
        clock: Callable[[], float],
        on_late: Callable[[float, bytes, tuple[str, ...]], None],
        proxy: Proxy | None = None,
    ) -> None:
        self._origin = origin
        self._proxy = proxy
        self._on_late = on_late
        self._size = size
        self._context = context
        self._clock = clock
        self._idle: list[Connection] = []
        self._open: set[Connection] = set()
        self._retired: set[Connection] = set()  # watched (Connection.witness), out of use
        self._connecting = 0  # these count toward `size` too
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._emptied: asyncio.Future[None] | None = None

    def idle(self) -> Connection | None:
        """A safe idle connection, the last one back first; None when there is none."""
        while self._idle:
            connection = self._idle.pop()
            if connection.reusable():
                return connection
            self._drop(connection)  # before any byte of a request was written to it
        return None

    async def acquire(self, connect_deadline: float, reuse: bool) -> Connection | Failed:
        """A connection a request can be written to: a safe idle one (`reuse`), or a new one."""
        while True:
            if reuse and (connection := self.idle()) is not None:
                return connection
            if len(self._open) + self._connecting < self._size:
                return await self._connect(connect_deadline)
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout_at(connect_deadline):
                    await waiter
            except TimeoutError:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # woken as the time ran out: pass the turn on
                return Failed(Failure.CONNECT, "no connection free in time")
            finally:
                if not waiter.done():
                    self._waiters.remove(waiter)

    def retire(self, connection: Connection) -> None:
        """Take a connection out of use while it is watched: its place is free meanwhile."""
        if connection in self._idle:
            self._idle.remove(connection)
        if connection in self._open:
            self._open.discard(connection)
            if not connection.closed:
                self._retired.add(connection)
            self._wake()

    async def close(self) -> None:
        for connection in list(self._retired):
            connection.abort()
        for connection in list(self._open):
            connection.abort()
        if self._open:
            self._emptied = asyncio.get_running_loop().create_future()
            await self._emptied

    async def _connect(self, connect_deadline: float) -> Connection | Failed:
        origin, proxy = self._origin, self._proxy
        where = f"{origin.host}:{origin.port}"
        if proxy is not None:
            where += f" through the proxy {proxy.where}"
        self._connecting += 1
        try:
            async with asyncio.timeout_at(connect_deadline):
                opened = await self._open_connection()
        except ssl.SSLError as exc:  # not trusted, not for this host, or no TLS at all
            failed = Failed(Failure.TLS, f"TLS to {where} failed: {describe(exc)}")
        except TimeoutError:
            failed = Failed(Failure.CONNECT, f"cannot connect to {where}: timed out")
        except OSError as exc:
            failed = Failed(Failure.CONNECT, f"cannot connect to {where}: {describe(exc)}")
        else:
            if isinstance(opened, Failed):  # no tunnel: nothing was written
                failed = opened
            elif not opened.closed:
                self._open.add(opened)
                return opened
            else:
                failed = Failed(Failure.CONNECT, f"{where}: {_NEVER_WRITTEN}")
        finally:
            self._connecting -= 1
        self._wake()  # the place it held is free again
        return failed

    async def _open_connection(self) -> Connection | Failed:
        """A connection to the origin, directly or through a tunnel of the proxy; with TLS, the
        origin's own (SNI and its hostname checked), whichever way."""
        origin, loop = self._origin, asyncio.get_running_loop()
        server_hostname = origin.host if origin.tls else None
        if self._proxy is None:
            _, connection = await loop.create_connection(
                self._new_connection,
                origin.host,
                origin.port,
                ssl=self._context,
                server_hostname=server_hostname,
            )
            return connection
        tunnel = await open_tunnel(self._proxy, origin.host, origin.port)
        if type(tunnel) is Failed:
            return tunnel
        assert type(tunnel) is socket.socket
        # The loop owns the socket from here, and closes it should TLS fail.
        _, connection = await loop.create_connection(
            self._new_connection, sock=tunnel, ssl=self._context, server_hostname=server_hostname
        )
        return connection

    def _new_connection(self) -> Connection:
        return Connection(
            self._idled, self._closed, self._clock, DEFAULT_KEEP_ALIVE_S, self._on_late
        )

    def _idled(self, connection: Connection) -> None:
        if connection in self._retired:  # watched and found quiet: back in use if room
            if len(self._open) + self._connecting >= self._size:
                # No room: kept open, out of use, still read (as many as the pool holds), so a
                # row's own answer that comes later than the watch is seen and names its row.
                if len(self._retired) > self._size:
                    connection.abort()
                else:
                    connection.retiring = True
                return
            self._retired.discard(connection)
            self._open.add(connection)
        self._idle.append(connection)
        self._wake()

    def _closed(self, connection: Connection) -> None:
        self._drop(connection)

    def _drop(self, connection: Connection) -> None:
        connection.abort()
        self._retired.discard(connection)
        if connection in self._open:
            self._open.discard(connection)
            self._wake()
        if connection in self._idle:
            self._idle.remove(connection)
        if not self._open and self._emptied is not None and not self._emptied.done():
            self._emptied.set_result(None)

    def _wake(self) -> None:
        """Let one waiting request look again: a connection came free or a place opened."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


def _client_context() -> ssl.SSLContext:
    """The system's trust store (SSL_CERT_FILE, SSL_CERT_DIR honoured), SNI, hostnames checked."""
    context = ssl.create_default_context()
    context.set_alpn_protocols(["http/1.1"])
    return context
