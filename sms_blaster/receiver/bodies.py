"""What a callback's body says: its bytes decoded, its form fields, its JSON object; no I/O.

Each function takes a request already read whole and raises Refused (with the answer to give)
for a body no provider sends: compressed in a way that cannot be undone, a form in an unknown
charset or not UTF-8, JSON that is not an object or holds text SQLite cannot store.
"""

from __future__ import annotations

import codecs
import email.errors
import email.parser
import email.policy
import json
import zlib
from typing import Any
from urllib.parse import parse_qsl

from sms_blaster.receiver.http import MAX_BODY_BYTES, Request
from sms_blaster.receiver.refusals import Refusal

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"
FORMS = frozenset({FORM, MULTIPART})
# Sent with no type, or a generic one: read as JSON when the body is JSON (see json_body).
_UNNAMED = frozenset({"text/plain", "application/octet-stream"})
_MAX_JSON_DEPTH = 32  # real callbacks nest two or three levels
# zlib's window bits: a gzip header, or a zlib one (what HTTP calls deflate).
_DECODERS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
_FORM_CODECS = frozenset({"utf-8", "ascii", "iso8859-1"})  # codecs.lookup's names: aliases too
_TRUNCATED = (email.errors.StartBoundaryNotFoundDefect, email.errors.CloseBoundaryNotFoundDefect)
# A body is read before its signature is checked, so what any client sends is parsed: bounded
# first, by counts that take a pass of C code, so that no body keeps the event loop for long
# (measured on this project's 2-core VM; the limits are far above any provider's callback).
# - A form: a callback has 10-40 fields (Twilio's inbound message with ten media, 50). An
#   urlencoded one costs 0.5 µs a field and 0.3 µs a percent escape: 256 KiB of `k=v&` took
#   20 ms, of `%41` 25 ms; within the bounds, under 5 ms.
# - A multipart form: email's parser costs 0.15 ms a part, and lines, long headers and bare CRs
#   cost more: 5,000 empty parts took a second, 80,000 bare CRs 48 ms; within them, under 10 ms.
# - JSON: json.loads is fast, but the walk of _check_text (a body with many brackets) costs about
#   1 µs a value: 85,000 empty objects took 76 ms; within the bound, 4 ms.
MAX_FORM_FIELDS = 256
_MAX_PERCENT_ESCAPES = 16 * 1024  # a 1,600-character text in 3-byte UTF-8 is 14,400
_MAX_MULTIPART_PARTS = 64
_MAX_MULTIPART_LINES = 1024
_MAX_MULTIPART_BYTES = 64 * 1024
_MAX_JSON_CONTAINERS = 4096  # objects and arrays (brackets in strings count too)


class Refused(Exception):
    """A request no provider sends (too large, of a foreign type, not JSON, not UTF-8)."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.text)
        self.refusal = refusal


def invalid(cause: str, detail: str = "") -> Refusal:
    return Refusal(400, "invalid", cause, detail)


def content(request: Request) -> bytes:
    """The body with its Content-Encoding (gzip, deflate) undone."""
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if not encoding or encoding == "identity":
        return request.body
    if encoding in ("br", "zstd") or (encoding not in _DECODERS and "," in encoding):
        raise Refused(_undecodable(encoding))
    if encoding not in _DECODERS:
        return request.body  # a name no client compresses with: the bytes as sent
    decoder = zlib.decompressobj(_DECODERS[encoding])
    try:
        body = decoder.decompress(request.body, MAX_BODY_BYTES + 1)
    except zlib.error:
        raise Refused(_undecodable(encoding)) from None
    if len(body) > MAX_BODY_BYTES or decoder.unconsumed_tail:
        raise Refused(Refusal(413, "too_large", f"body over {MAX_BODY_BYTES // 1024} KiB"))
    return body


def _undecodable(encoding: str) -> Refusal:
    return Refusal(
        400, "malformed", "body that cannot be read", f"Can not decode content-encoding: {encoding}"
    )


def unsupported(request: Request, accepted: str) -> Refusal:
    sent = request.headers.get("content-type", "none")
    return Refusal(
        415, "unsupported_type", "content type not read here", f"{sent}; send {accepted}"
    )


def query_fields(request: Request) -> dict[str, str]:
    """The query's fields (see Request.query); 400 for one that is not UTF-8."""
    try:
        return request.query()
    except UnicodeError:
        raise Refused(invalid("query that is not UTF-8")) from None


def form_fields(request: Request) -> list[tuple[str, str]]:
    """The fields of a form body (urlencoded or multipart), in order; files are left out."""
    body = content(request)
    try:
        if request.content_type == MULTIPART:
            if (
                len(body) > _MAX_MULTIPART_BYTES
                or max(body.count(b"\n"), body.count(b"\r")) > _MAX_MULTIPART_LINES
                or body.count(b"--") > 2 * _MAX_MULTIPART_PARTS + 2  # each part's delimiter
            ):
                raise Refused(_TOO_MANY_PARTS)
            return _multipart(body, request.headers.get("content-type", ""))
        if not body:
            return []
        if body.count(b"&") >= MAX_FORM_FIELDS or body.count(b"%") > _MAX_PERCENT_ESCAPES:
            raise Refused(_TOO_MANY_FIELDS)
        charset = _form_charset(request.charset or "utf-8")
        text = body.rstrip().decode(charset)
        return parse_qsl(text, keep_blank_values=True, encoding=charset, errors="strict")
    except UnicodeDecodeError:
        raise Refused(invalid("form data that is not UTF-8")) from None
    except LookupError:
        raise Refused(invalid("form in an unknown charset", request.charset or "")) from None
    except ValueError as exc:  # multipart without a boundary, or cut short
        raise Refused(invalid("form that cannot be read", str(exc))) from None


_TOO_MANY_FIELDS = Refusal(
    413, "too_large", f"form over {MAX_FORM_FIELDS} fields or {_MAX_PERCENT_ESCAPES} escapes"
)
_TOO_MANY_PARTS = Refusal(
    413,
    "too_large",
    f"multipart form over {_MAX_MULTIPART_PARTS} parts, {_MAX_MULTIPART_LINES} lines or "
    f"{_MAX_MULTIPART_BYTES // 1024} KiB",
)
_TOO_MANY_CONTAINERS = Refusal(
    413, "too_large", f"JSON over {_MAX_JSON_CONTAINERS} objects and arrays"
)


def _form_charset(charset: str) -> str:
    """The codec of a form's charset: LookupError for one no provider sends (UTF-7, IDNA...:
    codecs that read ASCII as something else)."""
    codec = codecs.lookup(charset).name
    if codec not in _FORM_CODECS:
        raise LookupError(charset)
    return codec


def _multipart(body: bytes, content_type: str) -> list[tuple[str, str]]:
    head = b"Content-Type: " + content_type.encode("utf-8", "surrogateescape") + b"\r\n\r\n"
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if message.get_boundary() is None:
        raise ValueError(f"boundary missed for Content-Type: {content_type}")
    if any(isinstance(defect, _TRUNCATED) for defect in message.defects):
        # Without it, the last part runs to the body's end: a field cut short would be stored.
        raise ValueError("closing boundary missing: the body is cut short")
    fields = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or part.get_filename():
            continue  # a file, or a part without a name: not a field
        payload = part.get_payload(decode=True)
        value = payload if isinstance(payload, bytes) else b""
        charset = part.get_content_charset() or "utf-8"
        fields.append((name, value.decode(_form_charset(charset))))
    return fields


def json_body(request: Request, accepted: str) -> bytes:
    """The body of a request read as JSON; 415 for a content type the route does not read.

    A body sent as text/plain or with no type is read as JSON when it looks like JSON: a signed
    callback behind a proxy that rewrote its type verifies and is stored, rather than refused
    with an answer the provider would repeat for days.
    """
    content_type = request.content_type
    named = content_type == JSON or content_type.endswith("+json")
    if not named and content_type not in _UNNAMED:
        raise Refused(unsupported(request, accepted))
    body = content(request)
    if not named and body.lstrip()[:1] not in (b"{", b"["):
        raise Refused(unsupported(request, accepted))
    return body


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool) or value is None:
        return "literal"
    return "number"


def json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object whose every string SQLite can store."""
    if body.startswith(codecs.BOM_UTF8):  # JSON is UTF-8 (RFC 8259); a BOM is tolerated
        body = body[len(codecs.BOM_UTF8) :]  # (not by "utf-8-sig": a codec written in Python)
    try:
        text = body.decode()
    except UnicodeDecodeError as exc:
        raise Refused(
            invalid("body is not UTF-8", f"byte 0x{body[exc.start]:02x} at offset {exc.start}")
        ) from None
    containers = text.count("{") + text.count("[")
    if containers > _MAX_JSON_CONTAINERS:  # before parsing: see _MAX_JSON_CONTAINERS
        raise Refused(_TOO_MANY_CONTAINERS)
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Refused(
            invalid("body is not JSON", f"{exc.msg} at line {exc.lineno} column {exc.colno}")
        ) from None
    except ValueError:  # an integer of more digits than Python converts
        raise Refused(invalid("body is not JSON", "a number too long")) from None
    except RecursionError:
        raise Refused(invalid("body nested too deep")) from None
    if not isinstance(parsed, dict):
        raise Refused(invalid("body is not a JSON object", f"a JSON {_json_kind(parsed)}"))
    # Both faults need text a callback never carries: a lone surrogate only comes from a `\u`
    # escape (the UTF-8 just decoded holds none), and nesting deeper than the limit needs more
    # brackets than it. Counting them costs a microsecond; the walk costs twenty.
    if "\\u" in text or containers > _MAX_JSON_DEPTH:
        _check_text(parsed)
    return parsed


def _check_text(value: object) -> None:
    """Refuse strings that are not UTF-8 (JSON's lone surrogates, `\\ud800`) and deep nesting.

    Either would fail later, in the store or in a recursive encoder, after the signature check.
    Iterative, so that the check itself cannot overflow the stack.
    """
    pending = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if depth > _MAX_JSON_DEPTH:
            raise Refused(invalid("body nested too deep"))
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode()
                except UnicodeEncodeError:
                    raise Refused(invalid("text that is not UTF-8")) from None
        elif isinstance(item, dict):
            pending.extend((key, depth + 1) for key in item)
            pending.extend((element, depth + 1) for element in item.values())
        elif isinstance(item, list):
            pending.extend((element, depth + 1) for element in item)


def field(value: object) -> str:
    """A JSON value as a form field's text: strings as they are, the rest as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))
