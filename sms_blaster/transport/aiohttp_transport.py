"""The transport over one `aiohttp.ClientSession`: what every run used before the lean one, and
what a run uses where the lean one does not go (through an `https://` proxy).

What was written: aiohttp says when it is about to write a request's head (the trace signal
`on_request_headers_sent`, called before the head is serialised and handed to the socket, for
our requests only: the proxy's CONNECT is sent without traces). A failure before it, whatever
its kind (the proxy closing during CONNECT, answering it with no HTTP or too long a head, a
timeout waiting for a connection), left nothing of the request written: `connect_error`, or a
fatal refusal; only one after it may have reached the provider.

The proxy's credentials are sent UTF-8, as the lean transport sends them (aiohttp's own
reading of a proxy URL encodes them latin-1, and fails on any other character).
"""

from __future__ import annotations

import asyncio
import ssl
import time
import urllib.parse
from types import SimpleNamespace
from typing import Any

import aiohttp
import yarl

from sms_blaster.models import Message, SendResult
from sms_blaster.providers.base import Exchange, Provider
from sms_blaster.transport.base import (
    USER_AGENT,
    cancelled_unwritten,
    late,
    pace_again,
    unbuildable,
)
from sms_blaster.transport.failures import Failure, describe, failure_result
from sms_blaster.transport.proxy import proxy_redactor, refused_for_now

# The keys of an attempt's state (`trace_request_ctx`): whether its head is leaving (set by the
# trace signal), when it was handed over (the loop's time), and its message.
_WRITTEN = "written"
_HANDED = "handed"
_MESSAGE = "message"
_PACED = "paced"  # the perf_counter time a request that took a new rate slot left at
_STOPPED = "the run stopped before the request was written"


class AiohttpTransport:
    """Keep-alive connections, as many as the window, in one session; redirects not followed."""

    __slots__ = (
        "_proxy_redactor", "_proxy_variable", "_proxy_where", "_session", "_written_s",
    )  # fmt: skip

    def __init__(
        self,
        window: int,
        timeout_s: float,
        proxy: str | None = None,
        proxy_variable: str | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,  # the system's trust store when None
    ) -> None:
        # aiohttp's errors may quote the proxy URL, and the proxy its Proxy-Authorization.
        self._proxy_redactor = proxy_redactor(proxy)
        self._proxy_variable = proxy_variable or "the proxy variable"
        proxy_url, proxy_auth = _proxy_parts(proxy)
        self._proxy_where = None if proxy_url is None else (proxy_url.host, proxy_url.port)
        connector = aiohttp.TCPConnector(
            limit=window,
            limit_per_host=window,
            ttl_dns_cache=300,
            ssl=True if ssl_context is None else ssl_context,
        )
        self._written_s = float("-inf")  # the loop time a request's head last left at
        tracing = aiohttp.TraceConfig()
        tracing.on_request_headers_sent.append(self._head_leaving)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=session_timeout(timeout_s),
            headers={"User-Agent": USER_AGENT},
            proxy=proxy_url,
            proxy_auth=proxy_auth,
            trace_configs=[tracing],
        )

    async def send(self, provider: Provider, message: Message) -> Exchange:
        """Send one request and classify what came back (timeouts are the session's)."""
        try:
            request = provider.build_request(message)
        except Exception as exc:
            return unbuildable(provider, exc)
        started = time.perf_counter()
        # _WRITTEN is set by the trace signal as the head is about to leave.
        handed_s = asyncio.get_running_loop().time()
        attempt: dict[str, Any] = {_WRITTEN: False, _HANDED: handed_s, _MESSAGE: message}
        try:
            async with self._session.post(
                request.url,
                data=request.body,
                headers=request.headers,
                allow_redirects=False,
                trace_request_ctx=attempt,
            ) as response:
                body = await response.read()
                result = provider.parse_response(
                    response.status, response.headers, body, message.to
                )
        except asyncio.CancelledError:
            if not attempt[_WRITTEN]:
                cancelled_unwritten()
            raise
        except Exception as exc:  # every failure is classified; none escapes
            result = self._classify(exc, attempt[_WRITTEN])
        result = self._proxy_redactor.result(provider.redactor.result(result))
        # Timed from its new slot, for a request that took one (see `_head_leaving`).
        started = attempt.get(_PACED, started)
        return Exchange(result, time.perf_counter() - started)

    async def close(self) -> None:
        await self._session.close()

    async def _head_leaving(
        self,
        session: aiohttp.ClientSession,
        context: SimpleNamespace,
        params: aiohttp.TraceRequestHeadersSentParams,
    ) -> None:
        """The trace signal: the request's head is about to be written (its `trace_request_ctx`,
        the attempt's own state, says so from now on). Awaited before a byte of it is: a request
        that waited for its connection is paced again here first (`base.LATE_S`); raises _Stopped
        when the run stopped meanwhile."""
        attempt = context.trace_request_ctx
        if not isinstance(attempt, dict) or _WRITTEN not in attempt:
            return
        loop = asyncio.get_running_loop()
        handed_s = attempt[_HANDED]
        if late(handed_s, loop.time()):
            if not await pace_again(attempt[_MESSAGE], self._written_s > handed_s):
                raise _Stopped(_STOPPED)
            attempt[_PACED] = time.perf_counter()
        attempt[_WRITTEN] = True
        self._written_s = loop.time()

    def _classify(self, exc: BaseException, written: bool) -> SendResult:
        if self._proxy_where is not None and _tls_to(exc, self._proxy_where):
            # TLS to the proxy itself (an https:// proxy URL): the provider is not at fault.
            return failure_result(
                Failure.PROXY,
                f"TLS to the proxy failed ({describe(exc)}): if it is a plain http proxy, "
                f"give {self._proxy_variable} as http://",
            )
        return classify_exception(exc, written)


class _Stopped(Exception):
    """The run stopped while a request waited for a new rate slot: it is not written."""


def _proxy_parts(proxy: str | None) -> tuple[yarl.URL | None, aiohttp.BasicAuth | None]:
    """The proxy URL without its user and password, and those as credentials sent UTF-8. Read
    as the lean transport reads it (`urllib`, then percent-decoded): yarl refuses characters a
    raw password may hold (a backslash), with a ValueError no run should meet mid-send."""
    if proxy is None:
        return None, None
    parts = urllib.parse.urlsplit(proxy)
    url = yarl.URL.build(scheme=parts.scheme, host=parts.hostname or "", port=parts.port)
    if parts.username is None and parts.password is None:
        return url, None
    user = urllib.parse.unquote(parts.username or "")
    password = urllib.parse.unquote(parts.password or "")
    return url, aiohttp.BasicAuth(user, password, encoding="utf-8")


def _tls_to(exc: BaseException, where: tuple[str | None, int | None]) -> bool:
    """Whether `exc` is a TLS failure connecting to `where` (host, port)."""
    if not isinstance(
        exc, aiohttp.ClientConnectorSSLError | aiohttp.ClientConnectorCertificateError
    ):
        return False
    return (exc.host, exc.port) == where


def classify_exception(exc: BaseException, written: bool = True) -> SendResult:
    """Translate an aiohttp failure into an outcome (see `failures`); `written`: whether the
    request's head may have been handed to the socket."""
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        # The proxy refused the tunnel (CONNECT): no byte of the request was written.
        failure = Failure.CONNECT if refused_for_now(exc.status) else Failure.PROXY
        return failure_result(failure, f"the proxy refused a tunnel: {describe(exc)}")
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return failure_result(Failure.TLS, describe(exc))
    if isinstance(exc, aiohttp.InvalidURL):
        # Refused before any connection: never sent, and no request to this URL ever will be.
        return failure_result(Failure.INVALID_URL, describe(exc))
    if not written:
        if isinstance(exc, aiohttp.ClientResponseError):
            # An answer read before our request left: the proxy's to CONNECT, not HTTP (or a
            # head too long to be one). It would answer every tunnel so.
            return failure_result(
                Failure.PROXY, f"the proxy did not answer CONNECT in HTTP: {describe(exc)}"
            )
        # The proxy closed during CONNECT, no connection in time, ...: nothing was written.
        return failure_result(Failure.CONNECT, f"{describe(exc)} (before the request was written)")
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return failure_result(Failure.CONNECT, describe(exc))
    if isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
        return failure_result(Failure.TIMEOUT, describe(exc))
    return failure_result(Failure.LOST, describe(exc))


def session_timeout(timeout_s: float) -> aiohttp.ClientTimeout:
    """A whole-request timeout, with connecting given half of it so that a connect timeout (nothing
    sent, safe to retry) is told apart from a timeout after the request left (ambiguous)."""
    return aiohttp.ClientTimeout(total=timeout_s, connect=timeout_s / 2, sock_connect=timeout_s / 2)
