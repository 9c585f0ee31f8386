"""A small HTTP forward proxy on loopback for the tests: tunnels (`CONNECT host:port`), with
Basic auth when given a user, and ways to fail the CONNECT exchange a real proxy has. It keeps
every CONNECT head it read and counts the tunnels it opened, so a test sees what went through.

Requests in absolute form (`POST http://…`) are answered 501: the lean transport tunnels to
`http://` providers too, and aiohttp tunnels to `https://` ones.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass

from sms_blaster.transport.lean import GUARD_MIN_S, LeanTransport
from sms_blaster.transport.proxy import parse_proxy

_REASONS = {403: "Forbidden", 407: "Proxy Authentication Required", 502: "Bad Gateway"}


@dataclass(frozen=True, slots=True)
class Refusal:
    """How the proxy fails a CONNECT: answers `status` (with `echo`, the credentials it was given
    in its reason, as a careless proxy quotes them), closes without a word (`status` 0), or
    closes after half a status line (`status` -1); with `raw`, writes those bytes instead and
    closes (`hang`: never answers, nor closes, until the proxy is closed)."""

    status: int
    echo: bool = False
    raw: bytes | None = None
    hang: bool = False


class ForwardProxy:
    """A CONNECT proxy on 127.0.0.1, as an async context manager."""

    def __init__(
        self,
        user: str | None = None,
        password: str = "",
        refusal: Refusal | None = None,
        before_200: bytes = b"",
        gated: bool = False,
        established: bytes = b"HTTP/1.1 200 Connection established\r\n\r\n",
    ) -> None:
        self._expected = (
            None
            if user is None
            else "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        )
        self._refusal = refusal
        self._before_200 = before_200  # written before the 200 that opens a tunnel (a 1xx)
        self._established = established  # the answer that opens a tunnel
        # With `gated`, each CONNECT waits until the test sets the event it finds here, in the
        # order the CONNECTs came (a proxy slow to open tunnels, at the test's pace).
        self.gates: asyncio.Queue[asyncio.Event] | None = asyncio.Queue() if gated else None
        self.connects: list[bytes] = []  # each CONNECT head, as read
        self.connected = asyncio.Event()  # set once a CONNECT was read
        self.tunnels = 0  # opened (answered 2xx)
        # Set once the proxy closed a client's side after the provider closed its own: the close
        # a client sees in its socket only after this hop.
        self.passed_close = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    def url(self, userinfo: str = "") -> str:
        """The proxy's URL, with `userinfo` (`user:password`, percent-encoded) when given."""
        return f"http://{userinfo + '@' if userinfo else ''}127.0.0.1:{self.port}"

    async def __aenter__(self) -> ForwardProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._tunnel(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client went away: what it saw is what the test checks
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _tunnel(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        method, target, _ = head.split(b"\r\n", 1)[0].split(b" ", 2)
        if method != b"CONNECT":
            writer.write(b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\n\r\n")
            return
        self.connects.append(head)
        self.connected.set()
        given = _header(head, b"proxy-authorization")
        refusal = self._refusal
        if self._expected is not None and given != self._expected:
            refusal = Refusal(407, refusal is not None and refusal.echo)
        if self.gates is not None:
            gate = asyncio.Event()
            self.gates.put_nowait(gate)
            await gate.wait()
        if refusal is not None:
            if refusal.hang:
                await asyncio.Event().wait()  # until cancelled as the proxy closes
            if refusal.raw is not None:
                writer.write(refusal.raw)
            elif refusal.status == -1:
                writer.write(b"HTTP/1.1 20")
            elif refusal.status > 0:
                reason = _REASONS.get(refusal.status, "No")
                if refusal.echo and given:
                    user_password = base64.b64decode(given.split()[-1]).decode()
                    reason += f" for {given} ({user_password})"
                extra = 'Proxy-Authenticate: Basic realm="t"\r\n' if refusal.status == 407 else ""
                writer.write(
                    f"HTTP/1.1 {refusal.status} {reason}\r\n{extra}"
                    "Content-Length: 0\r\n\r\n".encode()
                )
            await writer.drain()
            return
        host, _, port = target.decode().rpartition(":")
        try:
            up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
        except OSError:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        self.tunnels += 1
        writer.write(self._before_200 + self._established)
        try:
            await asyncio.gather(_pipe(reader, up_writer), self._pipe_back(up_reader, writer))
        finally:
            up_writer.close()

    async def _pipe_back(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The provider's bytes to the client; its close (or reset) closes the client's side."""
        await _pipe(reader, writer)
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        self.passed_close.set()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until the reading side ends (a close or a reset), then close the writing side."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


def _header(head: bytes, name: bytes) -> str | None:
    for line in head.split(b"\r\n")[1:]:
        key, colon, value = line.partition(b":")
        if colon and key.strip().lower() == name:
            return value.strip().decode()
    return None


@contextlib.asynccontextmanager
async def lean_through_proxy(
    window: int,
    timeout_s: float,
    *,
    ssl_context: ssl.SSLContext | None = None,
    guard_min_s: float = GUARD_MIN_S,
) -> AsyncIterator[tuple[LeanTransport, ForwardProxy]]:
    """The lean transport through a fresh ForwardProxy, closed after."""
    async with ForwardProxy() as proxy:
        transport = LeanTransport(
            window,
            timeout_s,
            ssl_context=ssl_context,
            guard_min_s=guard_min_s,
            proxy=parse_proxy(proxy.url()),
        )
        try:
            yield transport, proxy
        finally:
            await transport.close()
