"""Which transport a run uses, and through which proxy: the one asked for, through the proxy the
environment sets for the provider's URL (each transport goes through an `http://` one); only an
`https://` proxy, which the lean transport does not speak TLS to, means aiohttp through it. A
proxy of another scheme (SOCKS) is refused before anything is sent (`proxy_problem`), not
passed by: the user set it, and the provider may only be reachable through it."""

from __future__ import annotations

import ipaddress
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
            value = (environ.get(spelled) or "").strip()  # spaces around it, as curl reads it
            if not value:
                continue
            if not has_scheme(value):
                value = f"http://{value}"  # `host:port`, `user:password@host:port`
            no_proxy = environ.get("no_proxy") or environ.get("NO_PROXY") or ""
            return None if exempted(host, port, no_proxy) else (spelled, value)
    return None


def exempted(host: str, port: int | None, no_proxy: str) -> bool:
    """Whether NO_PROXY covers `host` (and `port`), as curl and Python read it: entries split
    by commas (spaces around them ignored), any case; `*` covers every host; a name covers
    itself and the names under it, written `name`, `.name` or `*.name`, with or without a
    trailing dot; an IP address covers itself, a network (`10.0.0.0/8`, `fd00::/8`) the
    addresses in it (an IPv6 address with or without brackets); `:port` after any of them
    covers that port only. Names are not resolved: a network covers an address, not a name."""
    host = host.lower().rstrip(".")
    address = _address(host)
    for raw in no_proxy.lower().split(","):
        entry = raw.strip()
        if entry == "*":
            return True
        entry, entry_port = _split_port(entry)
        if entry_port is not None and port is not None and entry_port != port:
            continue
        if "/" in entry:  # a network
            network = _network(entry)
            if network is not None and address is not None and address in network:
                return True
            continue
        name = entry.removeprefix("*.").lstrip(".").rstrip(".").strip("[]")
        if not name:
            continue
        if address is not None:
            if address == _address(name):
                return True
        elif host == name or host.endswith("." + name):
            return True
    return False


def _split_port(entry: str) -> tuple[str, int | None]:
    """An entry and the port it names after its last `:` (None when it names none): `[v6]:p`
    and `name:p`; a bare IPv6 address (more than one `:`) names no port."""
    if entry.startswith("["):
        inside, bracket, rest = entry[1:].partition("]")
        if bracket and rest.startswith(":") and rest[1:].isdigit() and rest[1:].isascii():
            return inside, int(rest[1:])
        return inside if bracket else entry, None
    if entry.count(":") == 1:
        name, _, digits = entry.partition(":")
        if digits.isascii() and digits.isdigit():
            return name, int(digits)
    return entry, None


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(text.strip("[]"), strict=False)
    except ValueError:
        return None


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
