"""The pure parts of the lean transport: request bytes from prebuilt pieces, and what an answer's
headers say (case-insensitive lookup, keep-alive, where the body ends)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import yarl

from sms_blaster.transport.base import USER_AGENT

# Headers the transport writes itself; a provider's own value for one would be a second copy.
_OWN_HEADERS = frozenset(("host", "content-length", "transfer-encoding", "connection"))
_FORBIDDEN_IN_HEADERS = ("\r", "\n", "\0")
# No answer body without a length or a chunked encoding after these, whatever the headers say.
_NO_BODY_STATUSES = frozenset((204, 304))


class InvalidRequestUrl(ValueError):
    """A URL no request can be sent to (not http(s), no host, a port that is not one)."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where connections go: the host as connected to (an IPv6 address without brackets)."""

    host: str
    port: int
    tls: bool


@dataclass(frozen=True, slots=True)
class RequestHead:
    """One endpoint's request line and fixed headers, built once, up to the Content-Length value."""

    origin: Origin
    prefix: bytes

    def request(self, body: bytes) -> bytes:
        """The whole request: the prebuilt head, the length, the body."""
        return b"%b%d\r\n\r\n%b" % (self.prefix, len(body), body)


def request_head(url: str, headers: Mapping[str, str]) -> RequestHead:
    """The head of a POST to `url` with `headers` (Host, User-Agent and Accept added, as aiohttp
    adds them). Raises InvalidRequestUrl, or ValueError for a header that would split the head."""
    try:
        parsed = yarl.URL(url)
        port = parsed.port
    except (TypeError, ValueError) as exc:
        raise InvalidRequestUrl(f"{url}: {exc}") from exc
    if parsed.scheme not in ("http", "https") or not parsed.raw_host or port is None:
        raise InvalidRequestUrl(f"{url}: not an http(s) URL with a host")
    lines = [
        f"POST {parsed.raw_path_qs or '/'} HTTP/1.1",
        f"Host: {parsed.host_port_subcomponent}",
        f"User-Agent: {USER_AGENT}",
        "Accept: */*",
    ]
    for name, value in headers.items():
        if name.lower() in _OWN_HEADERS:
            continue
        if any(c in name or c in value for c in _FORBIDDEN_IN_HEADERS) or ":" in name:
            raise ValueError(f"header {name!r}: a line break, NUL or colon would split the request")
        lines.append(f"{name}: {value}")
    prefix = ("\r\n".join(lines) + "\r\nContent-Length: ").encode()
    return RequestHead(Origin(parsed.raw_host, port, parsed.scheme == "https"), prefix)


class AnswerHeaders(Mapping[str, str]):
    """An answer's headers as a provider reads them: by name, in any case; the first value of a
    name. Decoded on the first lookup only (most answers are never asked)."""

    __slots__ = ("_by_name", "_raw")

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self._raw = raw
        self._by_name: dict[str, str] | None = None

    def _index(self) -> dict[str, str]:
        if self._by_name is None:
            by_name: dict[str, str] = {}
            for name, value in self._raw:
                key = name.decode("utf-8", "surrogateescape").lower()
                by_name.setdefault(key, value.decode("utf-8", "surrogateescape"))
            self._by_name = by_name
        return self._by_name

    def __getitem__(self, name: str) -> str:
        return self._index()[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._index())

    def __len__(self) -> int:
        return len(self._index())


def keep_alive_s(raw: list[tuple[bytes, bytes]]) -> float | None:
    """The idle time the server keeps a connection for (`Keep-Alive: timeout=N`); None if unsaid."""
    number = _keep_alive_param(raw, b"timeout")
    try:
        return None if number is None else max(0.0, float(number))
    except ValueError:
        return None


def keep_alive_max(raw: list[tuple[bytes, bytes]]) -> int | None:
    """How many more requests the server takes on the connection (`Keep-Alive: max=N`, as
    Apache counts it down); None if unsaid or unreadable."""
    number = _keep_alive_param(raw, b"max")
    try:
        return None if number is None else int(number)
    except ValueError:
        return None


def _keep_alive_param(raw: list[tuple[bytes, bytes]], wanted: bytes) -> bytes | None:
    for name, value in raw:
        if name.lower() != b"keep-alive":
            continue
        for part in value.split(b","):
            key, _, number = part.partition(b"=")
            if key.strip().lower() == wanted:
                return number.strip()
    return None


def body_runs_to_close(status: int, raw: list[tuple[bytes, bytes]]) -> bool:
    """Whether an answer's body ends only when the server closes: no length, and not chunked
    last (RFC 9112 6.3: a `Transfer-Encoding` whose final coding is not chunked runs to the
    close too)."""
    if status < 200 or status in _NO_BODY_STATUSES:
        return False
    codings: list[bytes] = []
    for name, value in raw:
        lowered = name.lower()
        if lowered == b"content-length":
            return False
        if lowered == b"transfer-encoding":
            codings += [coding.strip().lower() for coding in value.split(b",")]
    return not codings or codings[-1] != b"chunked"
