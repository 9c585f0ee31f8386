"""The lean transport through an HTTP proxy: each connection is a tunnel (`CONNECT host:port`)
through the proxy to the provider, then exactly what a direct connection is (TLS with SNI and
the provider's hostname checked, or plain HTTP/1.1).

Why a tunnel for `http://` providers too, rather than requests in absolute form to the proxy:
a tunnel is one TCP connection to the provider that the proxy does not read, so what the lean
transport knows of a connection (what was written, an answer too many, a close while idle) is
what the provider did. A proxy reading absolute-form requests keeps its own connections to the
provider: an answer too many would land on whatever request it sends next on its connection (one
of another of ours, or nothing we can see), and a POST it resends on a stale connection of its
own would be a second SMS nobody saw leave. The cost: a proxy that allows CONNECT only to
port 443 (the default of Squid and tinyproxy) refuses a tunnel to an `http://` provider on
another port, a fatal `proxy_refused`; `--transport aiohttp` sends absolute-form requests.

What a failure means: any failure before the tunnel is open (connecting to the proxy, the
CONNECT exchange, the proxy closing mid-way, its 5xx: it could not reach the provider) leaves
the request unwritten -> `connect_error`, safe to resend. A proxy that refuses the tunnel for
good (407: credentials missing or wrong, 403: not allowed, any other answer that is not 2xx or
a 5xx, or no HTTP at all) would refuse every one -> `proxy_refused`, fatal: the run stops, the
rows are left to the resume.

The proxy's password (and the Basic token made from it) is a secret: it is written only in
the CONNECT request, never in a text this module makes, and `Proxy.redactor` masks it in every
result a transport gives (a proxy's own words may quote it).
"""

from __future__ import annotations

import asyncio
import base64
import re
import socket
import urllib.parse
from dataclasses import dataclass

from sms_blaster.providers.redact import Redactor, url_password
from sms_blaster.transport.base import USER_AGENT
from sms_blaster.transport.connection import MAX_HEAD_BYTES, Failed
from sms_blaster.transport.failures import Failure, describe
from sms_blaster.url_text import http_url_problem, mask_password

# The proxy's answer to CONNECT: its status line (the headers are not needed). Lines may end
# with a bare LF, as RFC 9112 lets a recipient read them.
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?: ([^\r\n]*))?\r?\n")
# An interim answer (`100 Continue`, any 1xx): the answer to CONNECT comes after it (RFC 9110).
_INTERIM = re.compile(rb"HTTP/1\.[01] 1[0-9]{2}[ \r\n]")
# The blank line that ends a head: after a line's LF, a CRLF or a bare LF.
_HEAD_END = re.compile(rb"\n\r?\n")
# Statuses after which a later tunnel may open: the proxy could not reach the provider (5xx),
# timed out waiting for our request, or asked us to slow down. Nothing was written.
_TRY_AGAIN = frozenset({408, 429})
# A proxy's reason phrase is shown as it came, to this length (it comes from outside).
_REASON_CHARS = 80


class InvalidProxyUrl(ValueError):
    """A proxy URL the lean transport cannot go through (its text has the password masked)."""


@dataclass(frozen=True, slots=True)
class Proxy:
    """An `http://` proxy: where it listens, and the credentials its URL gives."""

    host: str  # an IPv6 address without brackets
    port: int
    authorization: str | None  # the Proxy-Authorization value (Basic), a secret
    redactor: Redactor  # masks the password and the token

    @property
    def where(self) -> str:
        return f"{_bracketed(self.host)}:{self.port}"


def parse_proxy(url: str) -> Proxy:
    """The proxy an `http://[user[:password]@]host[:port]` URL names (port 80 when unsaid, as
    aiohttp and Python read it). Raises InvalidProxyUrl."""
    problem = http_url_problem(url)
    parts = urllib.parse.urlsplit(url) if problem is None else None
    if parts is None or parts.scheme != "http" or not parts.hostname:
        shown = mask_password(url)
        raise InvalidProxyUrl(f"{shown}: {problem or 'not an http:// proxy URL'}")
    token = _basic_token(parts)
    authorization = None if token is None else f"Basic {token}"
    return Proxy(parts.hostname, parts.port or 80, authorization, proxy_redactor(url))


def proxy_redactor(url: str | None) -> Redactor:
    """Masks a proxy URL's password and the Basic token made from it, in either transport's
    results (aiohttp's errors may quote the proxy URL; a proxy, what it was sent)."""
    if not url:
        return Redactor.of(())
    try:
        parts = urllib.parse.urlsplit(url)
        token = _basic_token(parts)
    except ValueError:  # no URL: nothing in it to mask that a request could carry
        return Redactor.of(())
    return Redactor.of((url_password(url), token))


def _basic_token(parts: urllib.parse.SplitResult) -> str | None:
    """The Basic credentials of a URL's user and password, percent-decoded; None without them."""
    if parts.username is None and parts.password is None:
        return None
    user = urllib.parse.unquote(parts.username or "")
    password = urllib.parse.unquote(parts.password or "")
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def connect_request(proxy: Proxy, host: str, port: int) -> bytes:
    """The CONNECT request for a tunnel to `host:port`."""
    authority = f"{_bracketed(host)}:{port}"
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}", f"User-Agent: {USER_AGENT}"]
    if proxy.authorization is not None:
        lines.append(f"Proxy-Authorization: {proxy.authorization}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def refusal(proxy: Proxy, target: str, head: bytes, after: bytes) -> Failed | None:
    """What the proxy's answer to CONNECT (`head`, up to its blank line; `after`, any bytes that
    came with it) means: None when the tunnel is open."""
    if head[:1] in (b"\x15", b"\x16") and head[1:2] == b"\x03":
        return Failed(
            Failure.PROXY,
            f"the proxy {proxy.where} answered in TLS (an https:// proxy given as http://)",
        )
    matched = _STATUS_LINE.match(head)
    if matched is None:
        return Failed(Failure.PROXY, f"the proxy {proxy.where} did not answer CONNECT in HTTP")
    status = int(matched[1])
    # Masked before it is cut: a cut password would no longer be found.
    reason = proxy.redactor.text((matched[2] or b"").decode("utf-8", "replace"))[:_REASON_CHARS]
    said = f"{status} {reason}".strip()
    if 200 <= status < 300:
        if after:  # a tunnel's server says nothing before our request (nor TLS's first word)
            return Failed(
                Failure.CONNECT, f"the proxy {proxy.where} sent bytes after opening the tunnel"
            )
        return None
    if refused_for_now(status):
        return Failed(
            Failure.CONNECT, f"the proxy {proxy.where} could not open a tunnel to {target}: {said}"
        )
    if status == 407:
        given = "refused the user and password" if proxy.authorization else "asks for a user"
        return Failed(
            Failure.PROXY,
            f"the proxy {proxy.where} {given} in its URL ({said}); "
            "give them as http://user:password@host:port",
        )
    return Failed(Failure.PROXY, f"the proxy {proxy.where} refused a tunnel to {target}: {said}")


def refused_for_now(status: int) -> bool:
    """Whether a proxy's refusal of a tunnel (`status`, not 2xx) may not hold for the next one."""
    return status >= 500 or status in _TRY_AGAIN


async def open_tunnel(proxy: Proxy, host: str, port: int) -> socket.socket | Failed:
    """A connected socket tunnelled through `proxy` to `host:port`, nothing of a request written
    yet; or why there is none (a failure that left every request unwritten, or a refusal).
    The caller bounds the time (the connect deadline); a cancelled tunnel closes its socket."""
    target = f"{_bracketed(host)}:{port}"
    loop = asyncio.get_running_loop()
    try:
        sock = await _connect(loop, proxy)
    except OSError as exc:
        return Failed(
            Failure.CONNECT, f"cannot connect to the proxy {proxy.where}: {describe(exc)}"
        )
    try:
        await loop.sock_sendall(sock, connect_request(proxy, host, port))
        data = b""
        while True:
            end = _HEAD_END.search(data)
            if end is not None:
                if not _INTERIM.match(data):
                    break
                data = data[end.end() :]  # a 1xx is interim: the answer follows
                continue
            if data[:1] in (b"\x15", b"\x16") and data[1:2] == b"\x03":
                break  # TLS, which has no blank line to wait for: said below
            if len(data) > MAX_HEAD_BYTES:
                sock.close()
                return Failed(
                    Failure.PROXY,
                    f"the proxy {proxy.where}'s answer to CONNECT has a head longer than "
                    f"{MAX_HEAD_BYTES} bytes",
                )
            chunk = await loop.sock_recv(sock, 65536)
            if not chunk:
                sock.close()
                return Failed(
                    Failure.CONNECT,
                    f"the proxy {proxy.where} closed the connection during CONNECT to {target}",
                )
            data += chunk
    except OSError as exc:
        sock.close()
        return Failed(
            Failure.CONNECT,
            f"the proxy {proxy.where} failed during CONNECT to {target}: {describe(exc)}",
        )
    except BaseException:  # cancelled: the connect deadline, or the run stopping
        sock.close()
        raise
    end = _HEAD_END.search(data)
    head, after = (data, b"") if end is None else (data[: end.start() + 1], data[end.end() :])
    refused = refusal(proxy, target, head, after)
    if refused is not None:
        sock.close()
        return refused
    return sock


async def _connect(loop: asyncio.AbstractEventLoop, proxy: Proxy) -> socket.socket:
    """A TCP connection to the proxy: each of its addresses in turn, the last error raised."""
    infos = await loop.getaddrinfo(proxy.host, proxy.port, type=socket.SOCK_STREAM)
    error: OSError = OSError(f"no address for {proxy.host}")
    for family, kind, protocol, _, address in infos:
        sock = socket.socket(family, kind, protocol)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    raise error


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host
