"""The Messages API application's private key file (`--private-key`): read once, bounded, checked.

Every run that signs with it (send, worker, receive's replies) reads it here, before anything is
sent, so a file that is no usable key is one `Error:` line (exit 2) naming the option, or the
variable that gave it, the file and the fix, not a traceback once the provider is built.
"""

from __future__ import annotations

import functools

from sms_blaster.errors import OptionValueError

OPTION = "--private-key"

# A key file is a few kB (an RSA-4096 PEM is 3.3 kB). Anything past this bound is no key, and a
# device such as /dev/zero would otherwise be read until memory runs out.
MAX_KEY_FILE_BYTES = 1 << 20


def private_key_pem(path: str) -> bytes:
    """The key file's bytes, once they load as an unencrypted RSA private key.

    Raises OptionValueError (exit 2) when the file cannot be read, is empty or larger than
    MAX_KEY_FILE_BYTES, or holds no such key. The message never shows the file's contents.
    """
    # Imported here: cryptography loads only for runs that sign with a key.
    from sms_blaster.providers.vonage_messages import load_private_key

    pem = _read(path)
    if not pem.strip():
        raise OptionValueError(OPTION, path, f"the file is empty; {_FIX}")
    if b"PUBLIC KEY-----" in pem and b"PRIVATE KEY-----" not in pem:
        raise OptionValueError(OPTION, path, f"a public key, not the private one; {_FIX}")
    try:
        load_private_key(pem)
    except ValueError as exc:
        raise OptionValueError(OPTION, path, str(exc)) from None
    return pem


_FIX = "give the PEM file Vonage generated for the application"


@functools.cache
def _read(path: str) -> bytes:
    """The file's bytes, read once a process: a pipe (`<(…)`) cannot be read twice, and a pool's
    providers (one a sender) share the key. A read that fails is not kept, so it is said again."""
    try:
        with open(path, "rb") as handle:
            pem = handle.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise OptionValueError(OPTION, path, f"cannot read it ({exc.strerror})") from None
    if len(pem) > MAX_KEY_FILE_BYTES:
        raise OptionValueError(OPTION, path, f"larger than 1 MiB: not a key file; {_FIX}")
    return pem
