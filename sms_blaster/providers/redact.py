"""Secrets out of every text that came from outside, before it is stored or shown.

A provider may echo what it was sent (the Authorization header, the form, the URL) in its error
texts, and a transport error may quote a request. A transport's `send`, where an answer or a
failure becomes a `SendResult`, passes its texts through the provider's `Redactor`.

What is secret: the API secret, the auth token, the private key, and what is made from them (the
Basic token, the application JWT); and the password of a callback URL (`https://user:pass@…`, how
a receiver behind Basic auth is called), which the request carries to the provider. The API key,
account SID and application id are identifiers: they name the account in URLs and dashboards, and
an error may need to say which account.

A secret is found in every form it may come back in:

- as given, or with any of its characters percent-encoded (either hex case, once or twice), a
  space as '+', a character escaped as JSON, a Python repr or HTML escape it (`\"`, `\'`,
  `&quot;`, `&#x27;`); letters in either case;
- in base64, standard or URL-safe, padded or not, alone or inside a longer value such as
  `key:secret` (each of the three alignments of the secret in the encoding);
- in hex, either case.

Whatever the credentials, `Basic <token>`, `Bearer <token>`, a JWT and a PEM private key are
masked too.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import re
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass

from sms_blaster.models import SendResult

REDACTED = "[redacted]"

# A base64 run shorter than this could match ordinary text; a secret's shorter runs are still
# found in their other forms.
_MIN_BASE64_CHARS = 6
# A "secret" shorter than this (a test's `s`) cannot be told from ordinary text: masking it would
# mangle every message and code ("connection_lo[redacted]t"), and it protects nothing.
_MIN_SECRET_CHARS = 4

_ALWAYS = (
    r"-----BEGIN[A-Z ]*PRIVATE KEY-----.*?(?:-----END[A-Z ]*PRIVATE KEY-----|\Z)",
    r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*",  # a JWT: '{"' starts its header
    # An Authorization value: a scheme, then a token with a digit or a base64 sign in it (so that
    # "basic information" stays as it is).
    r"(?i:(?P<scheme>basic|bearer)\s+)(?=[A-Za-z0-9+/._~-]*[0-9+/=])[A-Za-z0-9+/._~-]{8,}=*",
)


@dataclass(frozen=True, slots=True)
class Redactor:
    """Masks a set of secrets, in all their forms, in texts from outside."""

    _pattern: re.Pattern[str]

    @classmethod
    def of(cls, secrets: Iterable[str | bytes | None]) -> Redactor:
        """A redactor for `secrets` (None, empty and too short ones are skipped) and the forms
        above."""
        alternatives = list(_ALWAYS)
        texts = {_text(secret) for secret in secrets if secret}
        found = sorted((t for t in texts if len(t) >= _MIN_SECRET_CHARS), key=len, reverse=True)
        for secret in found:
            if "-----BEGIN" in secret:  # a PEM key: the pattern above, and each of its lines
                alternatives.extend(re.escape(line) for line in _pem_lines(secret))
                continue
            alternatives.append(_textual(secret))
            alternatives.extend(re.escape(run) for run in _base64_runs(secret.encode()))
            alternatives.append(f"(?i:{secret.encode().hex()})")
        return cls(re.compile("|".join(alternatives), re.DOTALL))

    def text(self, text: str) -> str:
        """`text` with every secret masked, and any lone surrogate (JSON's `\\ud800` is one)
        replaced: it could be neither stored nor written as UTF-8."""
        if len(text) < _MIN_SECRET_CHARS and text.isascii():
            return text  # shorter than anything masked (a status code such as "0")
        if not text.isascii():
            text = text.encode("utf-8", "replace").decode("utf-8")
        return self._pattern.sub(_mask, text)

    def result(self, result: SendResult) -> SendResult:
        """The result with its code, detail and message ids masked (a provider may put anything
        in any of them)."""
        code, detail = self.text(result.code), self.text(result.detail)
        ids = result.message_ids
        if ids:
            ids = tuple(map(self.text, ids))
        if code == result.code and detail == result.detail and ids == result.message_ids:
            return result
        return dataclasses.replace(result, code=code, detail=detail, message_ids=ids)


def url_password(url: str | None) -> str | None:
    """The password in a URL's user info, decoded; None without one."""
    if not url:
        return None
    try:
        password = urllib.parse.urlsplit(url).password
    except ValueError:
        return None
    return urllib.parse.unquote(password) if password else None


def _mask(match: re.Match[str]) -> str:
    scheme = match.group("scheme")
    return f"{scheme} {REDACTED}" if scheme else REDACTED


def _text(secret: str | bytes) -> str:
    return secret.decode("utf-8", "replace") if isinstance(secret, bytes) else secret


def _textual(secret: str) -> str:
    """The secret as given or percent-encoded char by char, any letter case."""
    return "(?i:" + "".join(_char(char) for char in secret) + ")"


def _char(char: str) -> str:
    forms = [re.escape(char)]
    encoded = char.encode()
    forms.append("".join(f"%(?:25)?{byte:02X}" for byte in encoded))
    if char == " ":
        forms.append(r"\+")
    escapes = {json.dumps(char)[1:-1], repr(char)[1:-1], html.escape(char)}
    if char == "'":
        escapes |= {"\\'", "&#x27;", "&#39;", "&apos;"}  # repr of a text with both quotes
    elif char == "/":
        escapes.add("\\/")
    forms.extend(re.escape(escaped) for escaped in sorted(escapes) if escaped != char)
    return "(?:" + "|".join(forms) + ")"


def _base64_runs(data: bytes) -> set[str]:
    """The base64 characters that encode only `data`, at each of its three possible offsets in a
    longer value, in both alphabets; with or without padding, these appear in any encoding of a
    value that contains `data`."""
    runs = set()
    for offset in range(3):
        encoded = base64.b64encode(bytes(offset) + data).decode()
        start = -(-8 * offset // 6)  # the first character made of `data` bits only
        end = 8 * (offset + len(data)) // 6  # past the last one
        run = encoded[start:end]
        if len(run) >= _MIN_BASE64_CHARS:
            runs.add(run)
            runs.add(run.translate(str.maketrans("+/", "-_")))
    return runs


def _pem_lines(secret: str) -> list[str]:
    """The base64 lines of a PEM key, each secret on its own (a provider may echo part of it)."""
    return [
        line.strip()
        for line in secret.splitlines()
        if len(line.strip()) >= _MIN_BASE64_CHARS and not line.startswith("-----")
    ]
