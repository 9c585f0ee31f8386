"""Choosing a provider on the command line: defaults, credentials, and what is refused early."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sms_blaster.providers import registry, twilio, vonage_messages, vonage_sms
from sms_blaster.providers.names import ProviderName
from sms_blaster.simulator import SimulatorConfig, start_simulator
from tests.cli_helpers import cli_env, number, run_cli, write_csv


def test_each_provider_default_endpoint_is_the_adapter_own() -> None:
    """The registry lists the adapters' endpoints without importing them at start-up."""
    assert registry.DEFAULT_BASE_URLS == {
        "vonage-sms": vonage_sms.DEFAULT_BASE_URL,
        "vonage-messages": vonage_messages.DEFAULT_BASE_URL,
        "twilio": twilio.DEFAULT_BASE_URL,
    }


def test_each_provider_names_itself_and_its_receipt_route() -> None:
    """The journal keeps `name`; the receiver serves `receipt_route`."""
    credentials = registry.Credentials(
        api_key="k", api_secret="s", account_sid="AC1", auth_token="t"
    )
    routes = {}
    for name in ProviderName:
        provider = registry.make_provider(
            name, sender="Shop", base_url="http://x.test", credentials=credentials
        )
        assert provider.name == name
        routes[name] = provider.receipt_route
    assert routes == {
        "vonage-sms": "/webhooks/dlr",
        "vonage-messages": "/webhooks/messages/status",
        "twilio": "/webhooks/twilio/status",
    }


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--provider", "twilio"], {}, "no Twilio account SID: set TWILIO_ACCOUNT_SID"),
        (
            ["--provider", "twilio"],
            {"TWILIO_ACCOUNT_SID": "AC1"},
            "no Twilio auth token: set TWILIO_AUTH_TOKEN",
        ),
        (
            ["--provider", "vonage-messages", "--application-id", "app-1"],
            {},
            "--application-id needs --private-key PATH",
        ),
        (
            ["--provider", "vonage-messages", "--application-id", "app-1", "--private-key", "nope"],
            {},
            "--private-key nope: cannot read it",
        ),
        (["--callback-url", "hooks.example.com"], {}, "--callback-url hooks.example.com: not"),
        (["--provider", "sinch"], {}, "'sinch' is not one of"),
    ],
)
async def test_a_provider_without_what_it_needs_is_refused_before_sending(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    """One line naming the missing option or variable; exit 2; nothing sent."""
    path = write_csv(tmp_path / "c.csv", [("Ann", number(1))])
    run = await run_cli(
        "send", str(path), "--from", "Shop", *args, env=cli_env(**env) if env else None
    )
    assert run.code == 2, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1
    assert message in errors[0]
    assert run.stdout == b""


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, password: bytes | None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.NoEncryption()
        if password is None
        else serialization.BestAvailableEncryption(password)
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_PUBLIC = _RSA.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)
_BAD_KEYS = {
    "empty": (b"", "the file is empty"),
    "csv": (b"name,phone\nAnn,+447911000001\n", "not a PEM private key"),
    "binary": (bytes(range(256)) * 4, "not a PEM private key"),
    "public": (_PUBLIC, "a public key, not the private one"),
    "ec": (_pem(ec.generate_private_key(ec.SECP256R1()), None), "not an RSA key"),
    "encrypted": (_pem(_RSA, b"passphrase"), "the key is protected by a passphrase"),
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", [*_BAD_KEYS, "endless"])
@pytest.mark.parametrize("given_by", ["flag", "variable"])
async def test_a_private_key_file_that_is_no_usable_key_is_one_error_line_before_sending(
    tmp_path: Path, kind: str, given_by: str
) -> None:
    """A CSV, binary, empty, public, EC or encrypted key file, or /dev/zero (read no further than
    a key file could be): exit 2 naming the option or variable, the file and the fix, and no
    request. Before, a traceback and exit 1 (an empty file: "needs --private-key too"), and
    /dev/zero was read until memory ran out."""
    if kind == "endless":
        key_path, expected = "/dev/zero", "larger than 1 MiB: not a key file"
    else:
        content, expected = _BAD_KEYS[kind]
        key_path = str(tmp_path / "key.pem")
        await asyncio.to_thread(Path(key_path).write_bytes, content)
    path = write_csv(tmp_path / "c.csv", [("Ann", number(1))])
    flags = ["--provider", "vonage-messages", "--application-id", "app-1"]
    env = cli_env()
    if given_by == "flag":
        flags += ["--private-key", key_path]
    else:
        env["VONAGE_PRIVATE_KEY_PATH"] = key_path
    async with await start_simulator(SimulatorConfig()) as simulator:
        run = await run_cli(
            "send", str(path), "--from", "Shop", "--text", "Hi", "--base-url", simulator.url,
            "--no-journal", *flags, env=env,
        )  # fmt: skip
        requests = (await simulator.stats())["requests"]

    assert run.code == 2, run.stderr
    assert "Traceback" not in run.stderr
    [error] = run.stderr.splitlines()
    named = (
        f"--private-key {key_path}:"
        if given_by == "flag"
        else f"VONAGE_PRIVATE_KEY_PATH={key_path}:"
    )
    assert error.startswith(f"Error: {named} {expected}"), error
    assert "PEM file Vonage generated for the application" in error
    assert requests == 0


@pytest.mark.slow
async def test_a_private_key_given_through_a_pipe_is_read_once_and_signs(tmp_path: Path) -> None:
    """`--private-key /dev/stdin` (or `<(…)`): the check before sending and the provider read
    the key once, so a pipe (which cannot be read twice) signs the requests."""
    path = write_csv(tmp_path / "c.csv", [("Ann", number(1))])
    async with await start_simulator(SimulatorConfig()) as simulator:
        run = await run_cli(
            "send", str(path), "--from", "Shop", "--text", "Hi", "--base-url", simulator.url,
            "--no-journal", "--provider", "vonage-messages", "--application-id", "app-1",
            "--private-key", "/dev/stdin", stdin=_pem(_RSA, None),
        )  # fmt: skip
        accepted = (await simulator.stats())["accepted"]
    assert run.code == 0, run.stderr
    assert accepted == 1
