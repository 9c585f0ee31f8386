"""URLs as they may be shown: on stderr, in a report, in a log line."""

from __future__ import annotations

import urllib.parse

# Query parameters whose value is a credential, by name (any case).
SECRET_QUERY_NAMES = frozenset(
    {
        "password", "passwd", "pass", "pwd", "token", "secret", "key", "api_key", "apikey",
        "auth", "signature", "sig", "access_token",
    }
)  # fmt: skip


def mask_password(url: str) -> str:
    """`url` with any password (in the address) and secret query value masked, to be printed."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username or ''}:***@{netloc.rpartition('@')[2]}"
    query = urllib.parse.urlencode(
        [
            (name, "***" if name.lower() in SECRET_QUERY_NAMES else value)
            for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        ],
        safe="*",
    )
    rest = f"{parts.path}?{query}" if query else parts.path
    return f"{parts.scheme}://{netloc}{rest}"


def mask_url_password(text: str) -> str:
    """`text` with the password and secret query values of a URL masked (other text as it is)."""
    if "://" not in text or any(space in text for space in " \t\n"):
        return text
    try:
        parts = urllib.parse.urlsplit(text)
    except ValueError:
        return text
    return mask_password(text) if parts.scheme and parts.netloc else text
