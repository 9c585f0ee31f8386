"""URLs as they may be shown: on stderr, in a report, in a log line."""

from __future__ import annotations

import urllib.parse


def mask_password(url: str) -> str:
    """`url` with any password (in the address or the query) masked, to be printed."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username or ''}:***@{netloc.rpartition('@')[2]}"
    query = urllib.parse.urlencode(
        [
            (name, "***" if name.lower() == "password" else value)
            for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        ],
        safe="*",
    )
    rest = f"{parts.path}?{query}" if query else parts.path
    return f"{parts.scheme}://{netloc}{rest}"
