"""Both transports against real loopback servers: the simulator, nginx, and a raw server that
misbehaves at each stage of a request. What each failure is classified as is the engine's whole
promise (never written: resend; may have been accepted: unknown), so both must say the same.
The lean transport runs them through an HTTP proxy's tunnels too (tests/forward_proxy.py): what
a tunnel shows must be what the server did. Each test runs on asyncio's loop and on uvloop
(conftest.py), whose transports differ.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uvloop

from sms_blaster.models import Encoding, Message, Outcome, SendResult
from sms_blaster.providers.base import Exchange, HttpRequest
from sms_blaster.providers.names import ProviderName
from sms_blaster.providers.redact import Redactor
from sms_blaster.providers.vonage_sms import VonageSms
from sms_blaster.simulator.config import SimulatorConfig
from sms_blaster.simulator.provider import start_simulator
from sms_blaster.transport.base import Transport, TransportName
from sms_blaster.transport.choice import Choice, open_transport
from sms_blaster.transport.lean import LeanTransport
from tests.cli_helpers import cli_env, number, run_cli, write_csv
from tests.forward_proxy import ForwardProxy, lean_through_proxy
from tests.test_deploy_configs import (
    Certificate,
    accepts,
    executable,
    free_port,
    make_certificate,
    nginx_main_config,
)

AIOHTTP_STALE_RACE = (
    "on asyncio's loop, aiohttp writes a POST to a pooled connection whose close it has not read "
    "yet, and does not resend a POST: the request is recorded unknown, never read by the server"
)
TIMEOUT_S = 0.5  # only the tests of a server that never answers wait this long
VONAGE_ANSWER = (  # nginx's one answer to every request: the rows go to the number it names
    '{"message-count":"1","messages":[{"to":"447911100001","message-id":"nginx-1",'
    '"status":"0","remaining-balance":"9","message-price":"0.03","network":"23410"}]}'
)

# --- a provider that shows what the transport handed it ---------------------------------------


@dataclass
class Probe:
    """A provider that posts a message's text to `url` and keeps each answer as it came."""

    url: str
    answers: list[tuple[int, str | None, bytes]] = field(default_factory=list)
    name: ProviderName = ProviderName.VONAGE_SMS
    receipt_route: str = "/webhooks/dlr"
    redactor: Redactor = field(default_factory=lambda: Redactor.of(()))

    def build_request(self, message: Message) -> HttpRequest:
        return HttpRequest(self.url, message.text.encode(), {"Content-Type": "text/plain"})

    def parse_response(self, status: int, headers: object, body: bytes, to: str = "") -> SendResult:
        assert hasattr(headers, "get")
        self.answers.append((status, headers.get("Retry-After"), body))
        return SendResult(Outcome.SENT, str(status), message_ids=(body.decode(),))

    def cost(self, message: Message) -> float:
        return 1.0


def message(text: str = "hello", to: str = "447911100001") -> Message:
    return Message(1, to, text, Encoding.GSM7, 1, "ref-1")


def outcome(exchange: Exchange) -> tuple[Outcome, str]:
    return exchange.result.outcome, exchange.result.code


THROUGH_PROXY = "lean-through-proxy"
PROXY = pytest.StashKey[ForwardProxy]()  # the proxy of a test's transport, if it has one


@pytest.fixture(params=[*TransportName, THROUGH_PROXY])
async def transport(request: pytest.FixtureRequest) -> AsyncIterator[Transport]:
    """Each transport, and the lean one through a proxy, four connections at most, closed
    after the test."""
    if request.param == THROUGH_PROXY:
        async with lean_through_proxy(4, TIMEOUT_S) as (lean, proxy):
            request.node.stash[PROXY] = proxy
            yield lean
        return
    opened = open_transport(Choice(request.param), 4, TIMEOUT_S)
    yield opened
    await opened.close()


# --- a raw server that misbehaves -------------------------------------------------------------

Handler = Callable[["RawServer", socket.socket], Awaitable[None]]


class RawServer:
    """A listener on loopback whose `handler` does what it likes with each connection; it counts
    connections and keeps every whole request it read."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.idle_closed = asyncio.Event()  # a handler closed a connection left idle
        self.got_request = asyncio.Event()  # a whole request was read
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepting: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/send"

    async def __aenter__(self) -> RawServer:
        self._accepting = asyncio.create_task(self._accept())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._accepting is not None
        for task in (self._accepting, *self._tasks):  # handlers still reading or hanging
            task.cancel()
        await asyncio.gather(self._accepting, *self._tasks, return_exceptions=True)
        self._listener.close()

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, _ = await loop.sock_accept(self._listener)
            sock.setblocking(False)
            self.connections += 1
            task = asyncio.create_task(self._serve(sock))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, sock: socket.socket) -> None:
        try:
            await self.handler(self, sock)
        except OSError:
            pass  # the client went away: what it saw is what the test checks
        finally:
            sock.close()

    async def read_head(self, sock: socket.socket) -> bytes | None:
        """Bytes up to the end of a request's head; None when the client closed first."""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await asyncio.get_running_loop().sock_recv(sock, 65536)
            if not chunk:
                return None
            data += chunk
        return data

    async def read_request(self, sock: socket.socket) -> bytes | None:
        """One whole request (its Content-Length body too), kept; None when the client closed."""
        data = await self.read_head(sock)
        if data is None:
            return None
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(body) < length:
            body += await asyncio.get_running_loop().sock_recv(sock, 65536)
        self.requests.append(head + b"\r\n\r\n" + body)
        self.got_request.set()
        return body


async def send_all(sock: socket.socket, data: bytes) -> None:
    await asyncio.get_running_loop().sock_sendall(sock, data)


async def readable(sock: socket.socket, within_s: float | None = None) -> bool:
    """Wait until the client wrote something (not read here); False if `within_s` passed first."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        async with asyncio.timeout(within_s):
            await ready
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(sock.fileno())


def reset(sock: socket.socket) -> None:
    """Close with a reset (RST), not an orderly close."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def answer(body: bytes = b"ok", *headers: str, status: str = "200 OK") -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{head}\r\n".encode() + body


async def answers_each(server: RawServer, sock: socket.socket) -> None:
    """A well-behaved keep-alive server: answers every request with its body."""
    while (body := await server.read_request(sock)) is not None:
        await send_all(sock, answer(body))


# --- connecting --------------------------------------------------------------------------------


async def test_a_refused_connection_was_never_written(transport: Transport) -> None:
    """Nothing listens: connect_error, transient, safe to resend."""
    with socket.socket() as bound:  # bound, never listening: every connect is refused
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        exchange = await transport.send(Probe(f"http://127.0.0.1:{port}/send"), message())
    assert outcome(exchange) == (Outcome.TRANSIENT, "connect_error")


async def test_a_name_that_does_not_resolve_was_never_written(transport: Transport) -> None:
    """DNS fails (the .invalid domain never resolves): connect_error, transient."""
    exchange = await transport.send(Probe("http://no-such-host.invalid/send"), message())
    assert outcome(exchange) == (Outcome.TRANSIENT, "connect_error")


# --- the server fails at each stage of a request ----------------------------------------------


async def test_a_close_before_the_request_is_read_is_ambiguous(transport: Transport) -> None:
    """Accepted, the request arrived, closed unread: it was written, so it may have been taken."""

    async def closes_unread(server: RawServer, sock: socket.socket) -> None:
        await readable(sock)
        reset(sock)

    async with RawServer(closes_unread) as server:
        exchange = await transport.send(Probe(server.url), message())
    assert outcome(exchange) == (Outcome.AMBIGUOUS, "connection_lost")
    assert server.requests == []


async def test_a_reset_after_part_of_the_request_is_ambiguous(transport: Transport) -> None:
    """The head read, then a reset: connection_lost, ambiguous."""

    async def resets_midway(server: RawServer, sock: socket.socket) -> None:
        await server.read_head(sock)
        reset(sock)

    async with RawServer(resets_midway) as server:
        exchange = await transport.send(Probe(server.url), message())
    assert outcome(exchange) == (Outcome.AMBIGUOUS, "connection_lost")


async def test_a_close_after_reading_without_answering_is_ambiguous(transport: Transport) -> None:
    """The whole request read, then an orderly close and no answer: connection_lost."""

    async def reads_then_closes(server: RawServer, sock: socket.socket) -> None:
        await server.read_request(sock)

    async with RawServer(reads_then_closes) as server:
        exchange = await transport.send(Probe(server.url), message("read"))
    assert outcome(exchange) == (Outcome.AMBIGUOUS, "connection_lost")
    assert [request.endswith(b"\r\n\r\nread") for request in server.requests] == [True]


async def test_an_answer_that_stops_after_its_headers_times_out(transport: Transport) -> None:
    """Headers, then nothing until --timeout: timeout, ambiguous."""

    async def hangs(server: RawServer, sock: socket.socket) -> None:
        await server.read_request(sock)
        await send_all(sock, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
        await asyncio.get_running_loop().create_future()  # hangs

    async with RawServer(hangs) as server:
        exchange = await transport.send(Probe(server.url), message())
    assert outcome(exchange) == (Outcome.AMBIGUOUS, "timeout")


async def test_a_truncated_body_is_ambiguous(transport: Transport) -> None:
    """Content-Length 10, four bytes, a close: connection_lost, never a short answer."""

    async def truncates(server: RawServer, sock: socket.socket) -> None:
        await server.read_request(sock)
        await send_all(sock, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabcd")

    async with RawServer(truncates) as server:
        exchange = await transport.send(Probe(server.url), message())
    assert outcome(exchange) == (Outcome.AMBIGUOUS, "connection_lost")


async def test_a_broken_answer_is_ambiguous(transport: Transport) -> None:
    """Bytes that are not HTTP after the request was read: connection_lost."""

    async def babbles(server: RawServer, sock: socket.socket) -> None:
        await server.read_request(sock)
        await send_all(sock, b"SMTP ready\r\n\r\n")

    async with RawServer(babbles) as server:
        exchange = await transport.send(Probe(server.url), message())
    assert outcome(exchange) == (Outcome.AMBIGUOUS, "connection_lost")


# --- answers of every shape --------------------------------------------------------------------


async def test_a_connection_close_answer_is_read_and_the_next_request_reconnects(
    transport: Transport,
) -> None:
    """`Connection: close`: the answer is whole, and the next request goes on a new connection."""

    async def answers_once(server: RawServer, sock: socket.socket) -> None:
        body = await server.read_request(sock)
        await send_all(sock, answer(body or b"", "Connection: close"))

    async with RawServer(answers_once) as server:
        probe = Probe(server.url)
        first = await transport.send(probe, message("one"))
        second = await transport.send(probe, message("two"))
    assert [outcome(first), outcome(second)] == [(Outcome.SENT, "200")] * 2
    assert [body for _, _, body in probe.answers] == [b"one", b"two"]
    assert server.connections == 2


async def test_a_chunked_answer_is_joined(transport: Transport) -> None:
    """A chunked body arrives whole."""

    async def chunks(server: RawServer, sock: socket.socket) -> None:
        await server.read_request(sock)
        await send_all(sock, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await send_all(sock, b"3\r\nabc\r\n")
        await send_all(sock, b"4\r\ndefg\r\n0\r\n\r\n")
        await asyncio.get_running_loop().create_future()  # hangs

    async with RawServer(chunks) as server:
        probe = Probe(server.url)
        exchange = await transport.send(probe, message())
    assert outcome(exchange) == (Outcome.SENT, "200")
    assert probe.answers == [(200, None, b"abcdefg")]


async def test_a_body_that_runs_to_the_close_is_whole(transport: Transport) -> None:
    """No length and not chunked: the body is what came before the close."""

    async def closes_to_end(server: RawServer, sock: socket.socket) -> None:
        await server.read_request(sock)
        await send_all(sock, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nto the end")

    async with RawServer(closes_to_end) as server:
        probe = Probe(server.url)
        exchange = await transport.send(probe, message())
    assert outcome(exchange) == (Outcome.SENT, "200")
    assert probe.answers == [(200, None, b"to the end")]


async def test_a_body_under_a_transfer_encoding_not_chunked_runs_to_the_close(
    transport: Transport,
) -> None:
    """`Transfer-Encoding: identity`, no length: the body is what came before the close."""

    async def identity_then_close(server: RawServer, sock: socket.socket) -> None:
        await server.read_request(sock)
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\n"
        await send_all(sock, head + b"whole body")

    async with RawServer(identity_then_close) as server:
        probe = Probe(server.url)
        result = await transport.send(probe, message())
    assert outcome(result) == (Outcome.SENT, "200")
    assert probe.answers == [(200, None, b"whole body")]


async def test_an_interim_100_continue_is_skipped(transport: Transport) -> None:
    """`100 Continue`, then the real answer: the provider sees only the real one."""

    async def continues(server: RawServer, sock: socket.socket) -> None:
        await server.read_request(sock)
        await send_all(sock, b"HTTP/1.1 100 Continue\r\n\r\n")
        await send_all(sock, answer(b"real", status="201 Created"))
        await asyncio.get_running_loop().create_future()  # hangs

    async with RawServer(continues) as server:
        probe = Probe(server.url)
        exchange = await transport.send(probe, message())
    assert outcome(exchange) == (Outcome.SENT, "201")
    assert probe.answers == [(201, None, b"real")]


async def test_answer_headers_are_read_in_any_case(transport: Transport) -> None:
    """A provider asks for Retry-After; the server wrote retry-after."""

    async def throttles(server: RawServer, sock: socket.socket) -> None:
        await server.read_request(sock)
        await send_all(sock, answer(b"slow down", "retry-after: 7", status="429 Too Many"))
        await asyncio.get_running_loop().create_future()  # hangs

    async with RawServer(throttles) as server:
        probe = Probe(server.url)
        await transport.send(probe, message())
    assert probe.answers == [(429, "7", b"slow down")]


async def test_a_redirect_is_not_followed(transport: Transport) -> None:
    """A 302 goes to the provider as it is: the base URL is wrong, the Location is not tried."""

    async def redirects(server: RawServer, sock: socket.socket) -> None:
        await server.read_request(sock)
        await send_all(sock, answer(b"", "Location: http://127.0.0.1:1/", status="302 Found"))
        await asyncio.get_running_loop().create_future()  # hangs

    async with RawServer(redirects) as server:
        probe = Probe(server.url)
        await transport.send(probe, message())
    assert [status for status, _, _ in probe.answers] == [302]


# --- keep-alive --------------------------------------------------------------------------------


async def test_requests_reuse_one_keep_alive_connection(transport: Transport) -> None:
    """Three requests one after another: one connection."""
    async with RawServer(answers_each) as server:
        probe = Probe(server.url)
        for text in ("a", "b", "c"):
            await transport.send(probe, message(text))
    assert [body for _, _, body in probe.answers] == [b"a", b"b", b"c"]
    assert server.connections == 1


@pytest.mark.parametrize("closing", ["reset", "close"])
async def test_a_connection_the_server_closed_while_idle_is_not_reused(
    request: pytest.FixtureRequest, transport: Transport, closing: str
) -> None:
    """The stale keep-alive race: the server closed the idle connection (the client's loop has not
    read that yet); the next request goes out on a new one and is sent, never ambiguous."""
    on_asyncio = not isinstance(asyncio.get_running_loop(), uvloop.Loop)
    if request.node.callspec.params["transport"] is TransportName.AIOHTTP and on_asyncio:
        # Kept as a record of why the lean transport is the default (on uvloop, aiohttp's
        # connection happens to read the close first here).
        request.applymarker(pytest.mark.xfail(strict=True, reason=AIOHTTP_STALE_RACE))

    async def closes_when_idle(server: RawServer, sock: socket.socket) -> None:
        while (body := await server.read_request(sock)) is not None:
            await send_all(sock, answer(body))
            if not await readable(sock, within_s=0.05):
                if closing == "reset":
                    reset(sock)
                sock.close()
                server.idle_closed.set()
                return

    async with RawServer(closes_when_idle) as server:
        probe = Probe(server.url)
        first = await transport.send(probe, message("one"))
        await server.idle_closed.wait()
        if (proxy := request.node.stash.get(PROXY, None)) is not None:
            await proxy.passed_close.wait()  # the close reaches the client one hop later
        second = await transport.send(probe, message("two"))
    assert [outcome(first), outcome(second)] == [(Outcome.SENT, "200")] * 2
    assert (server.connections, len(server.requests)) == (2, 2)  # each read once


async def test_keep_alive_timeout_of_the_server_is_honoured() -> None:
    """`Keep-Alive: timeout=1`: reused within it, a new connection after it (lean's own rule;
    aiohttp keeps its own 15 s)."""
    now = [100.0]
    lean = LeanTransport(4, TIMEOUT_S, clock=lambda: now[0])

    async def keeps_one_second(server: RawServer, sock: socket.socket) -> None:
        while (body := await server.read_request(sock)) is not None:
            await send_all(sock, answer(body, "Keep-Alive: timeout=1"))

    async with RawServer(keeps_one_second) as server:
        probe = Probe(server.url)
        await lean.send(probe, message("a"))
        now[0] += 0.2
        await lean.send(probe, message("b"))
        reused = server.connections
        now[0] += 1.0
        await lean.send(probe, message("c"))
        await lean.close()
    assert (reused, server.connections) == (1, 2)
    assert [body for _, _, body in probe.answers] == [b"a", b"b", b"c"]


async def test_no_more_connections_than_the_window_are_opened(transport: Transport) -> None:
    """Twenty requests at once over a transport of four connections: four connections."""
    async with RawServer(answers_each) as server:
        probe = Probe(server.url)
        exchanges = await asyncio.gather(
            *(transport.send(probe, message(str(n))) for n in range(20))
        )
    assert {outcome(exchange) for exchange in exchanges} == {(Outcome.SENT, "200")}
    assert server.connections == 4


@pytest.mark.parametrize("name", list(TransportName))
async def test_a_send_cancelled_in_flight_frees_its_connection(name: TransportName) -> None:
    """One connection; the request on it never answered is cancelled (a stopping run): the next
    request gets a connection and is sent."""

    async def first_hangs(server: RawServer, sock: socket.socket) -> None:
        if server.connections == 1:
            await server.read_request(sock)
            await asyncio.get_running_loop().create_future()  # hangs
        await answers_each(server, sock)

    one = open_transport(Choice(name), 1, 60.0)
    async with RawServer(first_hangs) as server:
        probe = Probe(server.url)
        hanging = asyncio.create_task(one.send(probe, message("hang")))
        await server.got_request.wait()
        hanging.cancel()
        second = await one.send(probe, message("next"))
        await one.close()
    assert outcome(second) == (Outcome.SENT, "200")
    assert hanging.cancelled()


@pytest.mark.parametrize("name", list(TransportName))
async def test_a_request_on_a_connection_just_answered_keeps_its_timeout(
    name: TransportName,
) -> None:
    """Two requests answered in one turn of the loop, each sender sending again at once: the
    first to resume takes the other's connection from the pool before that one's sender has
    resumed. The server never answers a second request: both still time out."""
    both_read = asyncio.Event()

    async def answers_once_together(server: RawServer, sock: socket.socket) -> None:
        await server.read_request(sock)
        if len(server.requests) == 2:  # both wake in one turn, and answer in the same one
            asyncio.get_running_loop().call_soon(both_read.set)
        await both_read.wait()
        await send_all(sock, answer(b"first"))
        await server.read_request(sock)
        await asyncio.get_running_loop().create_future()  # never answers again

    two = open_transport(Choice(name), 2, TIMEOUT_S)
    async with RawServer(answers_once_together) as server:
        probe = Probe(server.url)

        async def twice(text: str) -> list[Exchange]:
            return [await two.send(probe, message(text)), await two.send(probe, message(text))]

        async with asyncio.timeout(10 * TIMEOUT_S):
            results = await asyncio.gather(twice("a"), twice("b"))
        await two.close()
    assert sorted(outcome(exchanges[1]) for exchanges in results) == [
        (Outcome.AMBIGUOUS, "timeout"),
        (Outcome.AMBIGUOUS, "timeout"),
    ]
    assert [outcome(exchanges[0]) for exchanges in results] == [(Outcome.SENT, "200")] * 2


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TransportName))
async def test_no_connection_free_in_time_was_never_written(name: TransportName) -> None:
    """One connection, held by a request the server never answers: the next request waits half
    of --timeout for it, then gives up as connect_error, and the server never sees it."""

    async def hangs(server: RawServer, sock: socket.socket) -> None:
        await server.read_request(sock)
        await asyncio.get_running_loop().create_future()  # hangs

    one = open_transport(Choice(name), 1, 1.0)
    async with RawServer(hangs) as server:
        probe = Probe(server.url)
        holding = asyncio.create_task(one.send(probe, message("held")))
        await server.got_request.wait()
        waiting = await one.send(probe, message("waits"))
        held = await holding
        await one.close()
    assert outcome(waiting) == (Outcome.TRANSIENT, "connect_error")
    assert outcome(held) == (Outcome.AMBIGUOUS, "timeout")
    assert len(server.requests) == 1


async def test_a_url_no_request_can_go_to_is_fatal(transport: Transport) -> None:
    """A port that is not one: invalid_url, fatal, nothing sent."""
    exchange = await transport.send(Probe("http://127.0.0.1:99999/send"), message())
    assert outcome(exchange) == (Outcome.FATAL, "invalid_url")


# --- the simulator ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("last_digits", "expected"),
    [
        ("0001", (Outcome.SENT, "0")),
        ("9995", (Outcome.TRANSIENT, "http_503")),
        ("9996", (Outcome.AMBIGUOUS, "timeout")),
        ("9997", (Outcome.AMBIGUOUS, "connection_lost")),
    ],
    ids=["accepted", "503-once", "no-answer", "reset-after-accepting"],
)
async def test_the_simulator_s_answers_and_faults_are_classified_alike(
    transport: Transport, last_digits: str, expected: tuple[Outcome, str]
) -> None:
    """Accepted, a 503, accepted then no answer, accepted then a reset: as the engine expects."""
    async with await start_simulator(SimulatorConfig()) as sim:
        provider = VonageSms("test-key", "test-secret", "Shop", sim.url)
        exchange = await transport.send(provider, message(to=number(int(last_digits))))
    assert outcome(exchange) == expected


# --- nginx, over plain HTTP and TLS -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Nginx:
    http_url: str
    https_port: int
    cert: Certificate


@contextlib.asynccontextmanager
async def nginx(folder: Path) -> AsyncIterator[Nginx]:
    """nginx answering every POST with a Vonage acceptance, over HTTP and TLS (a fresh
    self-signed certificate), closing a connection after every third request."""
    cert = make_certificate(folder)
    http_port, https_port = free_port(), free_port()
    config = folder / "nginx.conf"
    config.write_text(
        nginx_main_config(
            folder,
            f"""    keepalive_requests 3;
    server {{
        listen 127.0.0.1:{http_port};
        listen 127.0.0.1:{https_port} ssl;
        ssl_certificate {cert.cert};
        ssl_certificate_key {cert.key};
        default_type application/json;
        location / {{ return 200 '{VONAGE_ANSWER}'; }}
    }}""",
        )
    )
    process = await asyncio.create_subprocess_exec(
        executable("nginx"), "-p", str(folder), "-c", str(config), "-e", str(folder / "error.log"),
        stdin=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        while not await accepts(https_port):
            assert process.returncode is None, (folder / "error.log").read_text()
            await asyncio.sleep(0.02)  # not yet listening
        yield Nginx(f"http://127.0.0.1:{http_port}", https_port, cert)
    finally:
        process.terminate()
        await process.wait()


@pytest.mark.slow
async def test_nginx_answers_every_request_over_cycling_keep_alive_connections(
    transport: Transport, tmp_path: Path
) -> None:
    """Thirty requests, four at a time, nginx closing each connection after three: all sent."""
    async with nginx(tmp_path) as server:
        provider = VonageSms("test-key", "test-secret", "Shop", server.http_url)
        semaphore = asyncio.Semaphore(4)

        async def one(n: int) -> Exchange:
            async with semaphore:
                return await transport.send(provider, message(str(n)))

        exchanges = await asyncio.gather(*(one(n) for n in range(30)))
    assert {outcome(exchange) for exchange in exchanges} == {(Outcome.SENT, "0")}
    assert {exchange.result.message_ids for exchange in exchanges} == {("nginx-1",)}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("host", "trusted", "expected"),
    [
        ("127.0.0.1", True, ("sent", None)),
        ("127.0.0.1", False, ("failed", "tls_error")),
        ("localhost", True, ("failed", "tls_error")),
    ],
    ids=["trusted-through-SSL_CERT_FILE", "untrusted", "wrong-hostname"],
)
@pytest.mark.parametrize("name", list(TransportName))
async def test_tls_is_verified_against_the_system_trust_store(
    tmp_path: Path, name: TransportName, host: str, trusted: bool, expected: tuple[str, str | None]
) -> None:
    """A whole `send` over TLS: sent when SSL_CERT_FILE trusts the certificate; an untrusted
    one, or one for another host, stops the run (exit 3, tls_error, resumable)."""
    path = write_csv(tmp_path / "c.csv", [("a", number(1))])
    async with nginx(tmp_path) as server:
        env = cli_env(SSL_CERT_FILE=str(server.cert.cert) if trusted else str(tmp_path / "none"))
        run = await run_cli(
            "send", str(path), "--base-url", f"https://{host}:{server.https_port}",
            "--from", "Shop", "--text", "hi", "--no-progress", "--transport", name.value,
            env=env,
        )  # fmt: skip
    [record] = run.records
    error = record["error"]
    assert (record["status"], error and error["code"]) == expected
    assert run.code == (0 if expected[0] == "sent" else 3), run.stderr


# --- answers a provider should never send, lean transport ---------------------------------------


async def test_keep_alive_max_0_is_honoured() -> None:
    """`Keep-Alive: max=0` (Apache's count of requests left on the connection): the next request
    goes on a new connection, not on the one the server is about to close."""
    lean = LeanTransport(4, TIMEOUT_S)

    async def takes_one_each(server: RawServer, sock: socket.socket) -> None:
        body = await server.read_request(sock)
        assert body is not None
        await send_all(sock, answer(body, "Keep-Alive: timeout=5, max=0"))
        await readable(sock)  # a request written here would meet the close

    async with RawServer(takes_one_each) as server:
        probe = Probe(server.url)
        first = await lean.send(probe, message("a"))
        second = await lean.send(probe, message("b"))
        await lean.close()
    assert [outcome(first), outcome(second)] == [(Outcome.SENT, "200")] * 2
    assert (server.connections, len(server.requests)) == (2, 2)


@pytest.mark.parametrize(
    "oversized",
    [
        b"HTTP/1.1 200 OK\r\n" + b"X-Padding: " + b"p" * (70 * 1024) + b"\r\n",  # a head
        b"HTTP/1.1 200 OK\r\nContent-Length: 3000000\r\n\r\n" + b"b" * (1100 * 1024),  # a body
    ],
    ids=["head", "body"],
)
async def test_an_answer_larger_than_any_api_s_is_not_read_whole(oversized: bytes) -> None:
    """An answer far beyond an SMS API's few hundred bytes: the connection is dropped before the
    rest is read (memory stays bounded), and the request is ambiguous (it was written)."""
    lean = LeanTransport(1, 5.0)

    async def oversized_answer(server: RawServer, sock: socket.socket) -> None:
        await server.read_request(sock)
        with contextlib.suppress(OSError):  # the client drops the connection mid-way
            await send_all(sock, oversized)
            await readable(sock)

    async with RawServer(oversized_answer) as server:
        exchange = await lean.send(Probe(server.url), message())
        await lean.close()
    assert outcome(exchange) == (Outcome.AMBIGUOUS, "connection_lost")
    assert "bytes" in exchange.result.detail


async def test_a_tls_server_on_a_plain_url_is_fatal() -> None:
    """An http:// URL to a TLS port: the server's first bytes are a TLS record (here an alert),
    so the request was never read as HTTP: fatal, the base URL needs https://."""
    lean = LeanTransport(1, 5.0)

    async def speaks_tls(server: RawServer, sock: socket.socket) -> None:
        await server.read_head(sock)
        await send_all(sock, b"\x15\x03\x01\x00\x02\x02\x46")  # alert: protocol version

    async with RawServer(speaks_tls) as server:
        exchange = await lean.send(Probe(server.url), message())
        await lean.close()
    assert outcome(exchange) == (Outcome.FATAL, "tls_error")
    assert "https://" in exchange.result.detail
