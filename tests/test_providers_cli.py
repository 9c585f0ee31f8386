"""Choosing a provider on the command line: defaults, credentials, and what is refused early."""

from __future__ import annotations

from pathlib import Path

import pytest

from sms_blaster.providers import registry, twilio, vonage_messages, vonage_sms
from sms_blaster.providers.names import ProviderName
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
