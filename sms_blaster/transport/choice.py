"""Which transport a run uses, and through which proxy: the one asked for, through the proxy the
environment sets for the provider's URL (each transport goes through an `http://` one); only an
`https://` proxy, which the lean transport does not speak TLS to, means aiohttp through it."""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

from sms_blaster.transport.base import Transport, TransportName
from sms_blaster.url_text import http_url_problem, mask_password

# The variables curl and Python read, lower case first (either case is honoured).
_PROXY_VARIABLES = {"https": ("https_proxy", "all_proxy"), "http": ("http_proxy", "all_proxy")}


@dataclass(frozen=True, slots=True)
class Choice:
    name: TransportName
    proxy: str | None = None  # the proxy URL the transport goes through
    note: str | None = None  # why the choice differs from what was asked, said once on stderr


def proxy_for(url: str, environ: Mapping[str, str]) -> tuple[str, str] | None:
    """The proxy variable that applies to `url`, and its value; None when there is none or
    NO_PROXY exempts the host."""
    parts = urllib.parse.urlsplit(url)
    for variable in _PROXY_VARIABLES.get(parts.scheme, ()):
        for spelled in (variable, variable.upper()):
            value = environ.get(spelled)
            if not value:
                continue
            if urllib.parse.urlsplit(value).scheme not in ("http", "https"):
                return None  # a SOCKS proxy: neither transport speaks it, as before
            no_proxy = environ.get("no_proxy") or environ.get("NO_PROXY") or ""
            return (
                None if exempted(parts.hostname or "", parts.port, no_proxy) else (spelled, value)
            )
    return None


def exempted(host: str, port: int | None, no_proxy: str) -> bool:
    """Whether NO_PROXY (`*`, or names, `.domains` and `name:port`, comma-separated) covers
    `host`: a name covers itself and the names under it, as curl reads it."""
    host = host.lower()
    for entry in no_proxy.lower().replace(" ", "").split(","):
        if entry == "*":
            return True
        name, colon, entry_port = entry.lstrip(".").rpartition(":")
        if not colon or not entry_port.isdigit():
            name, entry_port = entry.lstrip("."), ""
        if entry_port and port is not None and int(entry_port) != port:
            continue
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


def choose(requested: TransportName, url: str, environ: Mapping[str, str]) -> Choice:
    """The transport for a run sending to `url`."""
    proxy = proxy_for(url, environ)
    if proxy is None:
        return Choice(requested)
    variable, value = proxy
    if requested is TransportName.AIOHTTP or urllib.parse.urlsplit(value).scheme == "http":
        return Choice(requested, value)
    note = (
        f"{variable} is an https:// proxy: sending through it with --transport aiohttp "
        "(lean tunnels through http:// proxies only)"
    )
    return Choice(TransportName.AIOHTTP, value, note)


def proxy_problem(url: str, environ: Mapping[str, str]) -> str | None:
    """Why the proxy the environment sets for `url` cannot be gone through (its password masked),
    as an error line says it; None when there is none, or it can be."""
    proxy = proxy_for(url, environ)
    if proxy is None:
        return None
    variable, value = proxy
    problem = http_url_problem(value)
    if problem is None:
        return None
    return f"{variable}={mask_password(value)}: {problem}; fix or unset {variable}"


def open_transport(choice: Choice, window: int, timeout_s: float) -> Transport:
    """The chosen transport, sized to the window (call inside the run's event loop). Raises
    InvalidProxyUrl for a proxy URL `proxy_problem` would refuse."""
    if choice.name is TransportName.AIOHTTP:
        from sms_blaster.transport.aiohttp_transport import AiohttpTransport

        return AiohttpTransport(window, timeout_s, choice.proxy)
    from sms_blaster.transport.lean import LeanTransport
    from sms_blaster.transport.proxy import parse_proxy

    proxy = None if choice.proxy is None else parse_proxy(choice.proxy)
    return LeanTransport(window, timeout_s, proxy=proxy)
