"""The transport over one `aiohttp.ClientSession`: what every run used before the lean one, and
what a run uses where the lean one does not go (through an `https://` proxy)."""

from __future__ import annotations

import time

import aiohttp

from sms_blaster.models import Message, SendResult
from sms_blaster.providers.base import Exchange, Provider
from sms_blaster.transport.base import USER_AGENT, unbuildable
from sms_blaster.transport.failures import Failure, describe, failure_result
from sms_blaster.transport.proxy import proxy_redactor, refused_for_now


class AiohttpTransport:
    """Keep-alive connections, as many as the window, in one session; redirects not followed."""

    __slots__ = ("_proxy_redactor", "_session")

    def __init__(self, window: int, timeout_s: float, proxy: str | None = None) -> None:
        # aiohttp's errors may quote the proxy URL, and the proxy its Proxy-Authorization.
        self._proxy_redactor = proxy_redactor(proxy)
        connector = aiohttp.TCPConnector(limit=window, limit_per_host=window, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=session_timeout(timeout_s),
            headers={"User-Agent": USER_AGENT},
            proxy=proxy,
        )

    async def send(self, provider: Provider, message: Message) -> Exchange:
        """Send one request and classify what came back (timeouts are the session's)."""
        try:
            request = provider.build_request(message)
        except Exception as exc:
            return unbuildable(provider, exc)
        started = time.perf_counter()
        try:
            async with self._session.post(
                request.url, data=request.body, headers=request.headers, allow_redirects=False
            ) as response:
                body = await response.read()
                result = provider.parse_response(
                    response.status, response.headers, body, message.to
                )
        except Exception as exc:  # every failure is classified; none escapes
            result = classify_exception(exc)
        result = self._proxy_redactor.result(provider.redactor.result(result))
        return Exchange(result, time.perf_counter() - started)

    async def close(self) -> None:
        await self._session.close()


def classify_exception(exc: BaseException) -> SendResult:
    """Translate an aiohttp failure into an outcome (see `failures`)."""
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        # The proxy refused the tunnel (CONNECT): no byte of the request was written.
        failure = Failure.CONNECT if refused_for_now(exc.status) else Failure.PROXY
        return failure_result(failure, f"the proxy refused a tunnel: {describe(exc)}")
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return failure_result(Failure.TLS, describe(exc))
    if isinstance(exc, aiohttp.InvalidURL):
        # Refused before any connection: never sent, and no request to this URL ever will be.
        return failure_result(Failure.INVALID_URL, describe(exc))
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return failure_result(Failure.CONNECT, describe(exc))
    if isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
        return failure_result(Failure.TIMEOUT, describe(exc))
    return failure_result(Failure.LOST, describe(exc))


def session_timeout(timeout_s: float) -> aiohttp.ClientTimeout:
    """A whole-request timeout, with connecting given half of it so that a connect timeout (nothing
    sent, safe to retry) is told apart from a timeout after the request left (ambiguous)."""
    return aiohttp.ClientTimeout(total=timeout_s, connect=timeout_s / 2, sock_connect=timeout_s / 2)
