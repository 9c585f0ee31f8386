"""URLs as they may be shown (on stderr, in a report, in a log line), and checked."""

from __future__ import annotations

import ipaddress
import re
import urllib.parse

# Query parameters whose value is a credential, by name (any case).
SECRET_QUERY_NAMES = frozenset(
    {
        "password", "passwd", "pass", "pwd", "token", "secret", "key", "api_key", "apikey",
        "auth", "signature", "sig", "access_token",
    }
)  # fmt: skip


# A host name as http.client sends it: letters, digits, dots, hyphens, underscores.
_HOST_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_BAD_PORT = "its port is no number from 1 to 65535"
# How a URL starts: a scheme (RFC 3986's letters) and `://`.
_URL_START = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def has_scheme(text: str) -> bool:
    """Whether `text` starts as a URL with a scheme does (`scheme://`)."""
    return _URL_START.match(text) is not None


def mask_password(url: str) -> str:
    """`url` with any password masked, to be printed: everything between `//` and the last `@`
    after it but a user name before a `:`, and the value of a query parameter named in
    SECRET_QUERY_NAMES. Any scheme, and a URL that cannot be parsed; a URL without a secret is
    returned as it is.

    The last `@` of the whole rest, not of the authority as a parser reads it: a raw password
    may hold any character (`/ ? # @ :`, `%`, spaces), and a parser would end the authority
    inside it and show the rest. The cost: an `@` in a path or a query (`?to=me@example.com`)
    masks what comes before it, host included."""
    head, slashes, tail = url.partition("//")
    if not slashes:
        return url
    userinfo, at, rest = tail.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        # A user name holding a character an authority ends at may be a password's start.
        if any(char in user for char in "/?#"):
            user, colon = "", ""
        userinfo = f"{user}:***" if colon else "***"  # a lone user name may be a token
        tail = f"{userinfo}@{rest}"
    path, question, query = tail.partition("?")
    query, hash_, fragment = query.partition("#")
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    if any(name.lower() in SECRET_QUERY_NAMES for name, _ in pairs):
        query = urllib.parse.urlencode(
            [
                (name, "***" if name.lower() in SECRET_QUERY_NAMES else value)
                for name, value in pairs
            ],
            safe="*",
        )
        tail = f"{path}{question}{query}{hash_}{fragment}"
    return f"{head}{slashes}{tail}"


def http_url_problem(url: str) -> str | None:
    """Why `url` is no http(s) URL a request can be sent to; None when it is one. Checks what
    urllib and http.client would otherwise refuse mid-run: the host, the port, IPv6 brackets."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # "Invalid IPv6 URL": brackets that do not close
        return "not an http(s) URL (its host cannot be read)"
    try:
        port = parts.port
    except ValueError:  # no number, or out of range: said as a port 0 is
        return f"not an http(s) URL ({_BAD_PORT})"
    if parts.scheme not in ("http", "https"):
        return "not an http(s) URL"
    host = parts.hostname
    if not host:
        return "not an http(s) URL (no host)"
    if port == 0 or parts.netloc.endswith(":"):
        return f"not an http(s) URL ({_BAD_PORT})"
    if "[" in parts.netloc:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return "not an http(s) URL (no IPv6 address in its brackets)"
    elif not _HOST_NAME.fullmatch(host):
        return "not an http(s) URL (its host has characters a host name cannot have)"
    if any(char.isspace() or ord(char) < 0x20 or ord(char) == 0x7F for char in url):
        return "not an http(s) URL (it holds a space or a control character)"
    return None


def mask_url_password(text: str) -> str:
    """`text` with the password and secret query values of a URL masked (other text as it is):
    a text that starts as a URL does (`scheme://`) is masked whatever follows, spaces and
    unparsable parts included (a raw password may hold them)."""
    if not has_scheme(text):
        return text
    return mask_password(text)
