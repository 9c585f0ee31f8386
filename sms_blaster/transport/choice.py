"""Which transport a run uses, and through which proxy: the one asked for, through the proxy the
environment sets for the provider's URL (each transport goes through an `http://` one); only an
`https://` proxy, which the lean transport does not speak TLS to, means aiohttp through it. A
proxy of another scheme (SOCKS) is refused before anything is sent (`proxy_problem`), not
passed by: the user set it, and the provider may only be reachable through it."""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

from sms_blaster.transport.base import Transport, TransportName
from sms_blaster.url_text import has_scheme, http_url_problem, mask_password

# The variables curl and Python read, lower case first (either case is honoured).
_PROXY_VARIABLES = {"https": ("https_proxy", "all_proxy"), "http": ("http_proxy", "all_proxy")}


@dataclass(frozen=True, slots=True)
class Choice:
    name: TransportName
    proxy: str | None = None  # the proxy URL the transport goes through
    note: str | None = None  # why the choice differs from what was asked, said once on stderr
    variable: str | None = None  # the environment variable `proxy` came from, for messages


def proxy_for(url: str, environ: Mapping[str, str]) -> tuple[str, str] | None:
    """The proxy variable that applies to `url`, and its value as a URL (one with no scheme read
    as `http://`, as curl reads it); None when there is none or NO_PROXY exempts the host.
    Any proxy URL is returned, a SOCKS one or one that cannot be read too: `proxy_problem`
    refuses it, where going direct would leave the proxy the user set unused unawares. Never
    raises, whatever the texts."""
    try:
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:  # no URL a request can go to: the check of --base-url says so
        return None
    for variable in _PROXY_VARIABLES.get(parts.scheme, ()):
        for spelled in (variable, variable.upper()):
            value = environ.get(spelled)
            if not value:
                continue
            if not has_scheme(value):
                value = f"http://{value}"  # `host:port`, `user:password@host:port`
            no_proxy = environ.get("no_proxy") or environ.get("NO_PROXY") or ""
            return None if exempted(host, port, no_proxy) else (spelled, value)
    return None


def exempted(host: str, port: int | None, no_proxy: str) -> bool:
    """Whether NO_PROXY (`*`, or names, `.domains` and `name:port`, comma-separated) covers
    `host`: a name covers itself and the names under it, as curl reads it."""
    host = host.lower()
    for entry in no_proxy.lower().replace(" ", "").split(","):
        if entry == "*":
            return True
        name, colon, entry_port = entry.lstrip(".").rpartition(":")
        if not colon or not (entry_port.isascii() and entry_port.isdigit()):
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
    if requested is TransportName.AIOHTTP or value.partition("://")[0].lower() != "https":
        return Choice(requested, value, variable=variable)
    note = (
        f"{variable} is an https:// proxy: sending through it with --transport aiohttp "
        "(lean tunnels through http:// proxies only)"
    )
    return Choice(TransportName.AIOHTTP, value, note, variable)


def proxy_problem(url: str, environ: Mapping[str, str]) -> str | None:
    """Why the proxy the environment sets for `url` cannot be gone through (its password masked),
    as an error line says it; None when there is none, or it can be."""
    proxy = proxy_for(url, environ)
    if proxy is None:
        return None
    variable, value = proxy
    shown = f"{variable}={mask_password(value)}"
    scheme = value.partition("://")[0].lower()
    if scheme not in ("http", "https"):
        return (
            f"{shown}: a {scheme}:// proxy, which sms-blaster does not speak (http:// and "
            f"https:// proxies only); give an http(s):// proxy or unset {variable}"
        )
    problem = http_url_problem(value)
    if problem is None:
        return None
    return f"{shown}: {problem}; fix or unset {variable}"


def open_transport(choice: Choice, window: int, timeout_s: float) -> Transport:
    """The chosen transport, sized to the window (call inside the run's event loop). Raises
    InvalidProxyUrl for a proxy URL `proxy_problem` would refuse."""
    if choice.name is TransportName.AIOHTTP:
        from sms_blaster.transport.aiohttp_transport import AiohttpTransport

        return AiohttpTransport(window, timeout_s, choice.proxy, choice.variable)
    from sms_blaster.transport.lean import LeanTransport
    from sms_blaster.transport.proxy import parse_proxy

    proxy = None if choice.proxy is None else parse_proxy(choice.proxy)
    return LeanTransport(window, timeout_s, proxy=proxy)
