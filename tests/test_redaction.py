"""No secret reaches a record, stderr, the journal or `report`, whatever a provider echoes."""

from __future__ import annotations

import base64
import html
import json
import urllib.parse
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sms_blaster.models import Outcome, SendResult
from sms_blaster.providers.redact import REDACTED, Redactor
from sms_blaster.simulator import RunningSimulator, SimulatorConfig, start_simulator
from tests.cli_helpers import cli_env, run_cli, write_csv

# Characters that every encoding spells differently: '/', '+', '=', a space, a non-ASCII letter.
SECRET = "s3cr/t+Tok=Zq é9"
KEY = "key-1234"
TWILIO_SID = "AC" + "0123456789abcdef" * 2


def forms_of(secret: str, user: str) -> set[bytes]:
    """Every way the secret may be written out: as is, in either case, URL-encoded once or twice
    (either hex case, '+' or %20 for a space), JSON-escaped, hex, and base64 alone and in
    `user:secret`."""
    quoted = urllib.parse.quote(secret, safe="")
    texts = {
        secret,
        secret.lower(),
        secret.upper(),
        quoted,
        quoted.lower(),
        urllib.parse.quote(quoted, safe=""),
        urllib.parse.quote_plus(urllib.parse.quote(secret, safe="")),
        urllib.parse.quote_plus(secret),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=True)[1:-1],
        secret.encode().hex(),
        secret.encode().hex().upper(),
        base64.b64encode(secret.encode()).decode().rstrip("="),
        base64.b64encode(f"{user}:{secret}".encode()).decode().rstrip("="),
        base64.urlsafe_b64encode(secret.encode()).decode().rstrip("="),
    }
    return {text.encode() for text in texts}


def leaks(data: bytes, forms: set[bytes]) -> list[bytes]:
    return sorted(form for form in forms if form in data)


def journal_bytes(journal: Path) -> bytes:
    """The journal file and whatever WAL, shared-memory and lock files it has, as bytes."""
    parts = [journal, *(Path(f"{journal}{suffix}") for suffix in ("-wal", "-shm", ".lock"))]
    return b"".join(path.read_bytes() for path in parts if path.exists())


@pytest.fixture
async def echoing() -> AsyncIterator[RunningSimulator]:
    running = await start_simulator(SimulatorConfig(echo_credentials=True))
    yield running
    await running.close()


PROVIDERS = {
    "vonage": ({"VONAGE_API_KEY": KEY, "VONAGE_API_SECRET": SECRET}, KEY),
    "vonage-messages": ({"VONAGE_API_KEY": KEY, "VONAGE_API_SECRET": SECRET}, KEY),
    "twilio": ({"TWILIO_ACCOUNT_SID": TWILIO_SID, "TWILIO_AUTH_TOKEN": SECRET}, TWILIO_SID),
}


@pytest.mark.slow
@pytest.mark.parametrize("provider", sorted(PROVIDERS))
async def test_credentials_echoed_by_the_provider_are_kept_out_of_every_output(
    tmp_path: Path, echoing: RunningSimulator, provider: str
) -> None:
    """Records, stderr, the journal's bytes and `report` hold no form of the secret."""
    env, user = PROVIDERS[provider]
    path = write_csv(tmp_path / "c.csv", [("Ann", "447911123456"), ("Bob", "447911123457")])
    journal = tmp_path / "c.journal"
    run = await run_cli(
        "send", str(path), "--provider", provider, "--base-url", echoing.url, "--from", "Shop",
        "--text", "Hi {name}", "--journal", str(journal), "--no-progress",
        env=cli_env(**env),
    )  # fmt: skip
    assert run.code == 3, run.stderr
    # The simulator did echo them: the redacted text is there, and the provider's own words.
    assert REDACTED in run.stderr
    report = await run_cli("report", str(journal), env=cli_env(**env))
    assert report.code == 0, report.stderr
    forms = forms_of(SECRET, user)
    assert leaks(run.stdout, forms) == []
    assert leaks(run.stderr.encode(), forms) == []
    assert leaks(journal_bytes(journal), forms) == []
    assert leaks(report.stdout + report.stderr.encode(), forms) == []


@pytest.mark.slow
async def test_an_application_private_key_and_its_tokens_are_kept_out_of_the_records(
    tmp_path: Path, echoing: RunningSimulator
) -> None:
    """Messages API application auth: the Bearer JWT the simulator echoes is masked."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    key_path = tmp_path / "private.key"
    key_path.write_bytes(pem)
    path = write_csv(tmp_path / "c.csv", [("Ann", "447911123456")])
    run = await run_cli(
        "send", str(path), "--provider", "vonage-messages", "--base-url", echoing.url,
        "--from", "Shop", "--text", "Hi", "--no-journal", "--no-progress",
        "--application-id", "aaaaaaaa-bbbb-cccc-dddd-0123456789ab",
        "--private-key", str(key_path),
    )  # fmt: skip
    assert run.code == 3, run.stderr
    assert "Bearer [redacted]" in run.stderr
    assert b"eyJ" not in run.stdout
    assert "eyJ" not in run.stderr


@pytest.mark.parametrize(
    "echoed",
    [
        SECRET,
        SECRET.upper(),
        urllib.parse.quote(SECRET, safe="").lower(),
        urllib.parse.quote(urllib.parse.quote(SECRET, safe=""), safe=""),
        urllib.parse.quote_plus(SECRET),
        json.dumps(SECRET, ensure_ascii=True)[1:-1],
        SECRET.encode().hex().upper(),
        base64.b64encode(SECRET.encode()).decode(),
        base64.urlsafe_b64encode(b"x" + SECRET.encode()).decode(),
        base64.b64encode(f"{KEY}:{SECRET}".encode()).decode(),
    ],
)
def test_every_encoding_of_a_secret_is_masked(echoed: str) -> None:
    """The secret as is, upper case, URL-encoded once or twice, JSON, hex, base64 at any offset."""
    redactor = Redactor.of([SECRET])
    masked = redactor.text(f"refused ({echoed}) try again")
    assert masked.startswith("refused (")
    assert masked.endswith(") try again")
    assert REDACTED in masked
    assert leaks(masked.encode(), forms_of(SECRET, KEY)) == []


@pytest.mark.parametrize("echo", [repr, lambda text: repr([text]), html.escape, json.dumps])
def test_a_secret_with_both_quotes_is_masked_as_a_repr_or_html_shows_it(
    echo: Callable[[str], str],
) -> None:
    """A secret holding both quote characters, echoed as Python shows it ('\\'' inside), as
    HTML escapes it, or as JSON does."""
    secret = "Se\"cr'et %20 sp\u00e4 ce\\x"
    masked = Redactor.of([secret]).text(f"password {echo(secret)} refused")
    assert masked.startswith("password ")
    assert masked.endswith(" refused")
    assert "cr" not in masked.removeprefix("password ").removesuffix(" refused")


def test_ordinary_words_after_basic_or_bearer_are_kept() -> None:
    """Only a token-like value after an Authorization scheme is masked."""
    redactor = Redactor.of([])
    assert redactor.text("basic information is missing") == "basic information is missing"
    assert redactor.text("Authorization: Basic a2V5OnNlY3JldA==") == (
        f"Authorization: Basic {REDACTED}"
    )


def test_a_secret_too_short_to_tell_from_text_leaves_texts_whole() -> None:
    """A test's one-letter secret `s` would mask every s: it is not searched for."""
    failed = SendResult(Outcome.AMBIGUOUS, "connection_lost", "server disconnected; it may be sent")
    assert Redactor.of(["s", "abc"]).result(failed) is failed
    assert REDACTED in Redactor.of(["abcd"]).text("key abcd")


def test_an_accepted_send_is_not_rewritten() -> None:
    """Results with nothing to mask pass unchanged: no copy on the hot path."""
    sent = SendResult(Outcome.SENT, "0", "", ("id-1",))
    assert Redactor.of([SECRET]).result(sent) is sent


def test_a_secret_in_an_accepted_sends_message_id_is_masked() -> None:
    """A provider may put anything in a message id: it reaches the record and the journal."""
    sent = SendResult(Outcome.SENT, "0", "", (f"ID-{SECRET}",))
    assert Redactor.of([SECRET]).result(sent).message_ids == (f"ID-{REDACTED}",)


def test_a_lone_surrogate_from_an_answer_becomes_a_character_utf8_can_hold() -> None:
    """JSON may carry `\\ud800`: stored or written as is, it would fail the journal's commit."""
    sent = SendResult(Outcome.SENT, "0", "", (json.loads('"a\\ud800b"'),))
    (message_id,) = Redactor.of([]).result(sent).message_ids
    assert message_id == "a?b"
    assert message_id.encode("utf-8")


@pytest.mark.slow
async def test_the_password_of_a_callback_url_echoed_in_the_form_is_kept_out_of_the_records(
    tmp_path: Path, echoing: RunningSimulator
) -> None:
    """Twilio carries --callback-url (with a receiver's password) in its form; echoed, it is
    masked in the record and on stderr."""
    password = "Hook/pa55 w"
    callback = f"https://hook:{urllib.parse.quote(password, safe='')}@hooks.example.com/t"
    path = write_csv(tmp_path / "c.csv", [("Ann", "447911123456")])
    env, _ = PROVIDERS["twilio"]
    run = await run_cli(
        "send", str(path), "--provider", "twilio", "--base-url", echoing.url, "--from", "Shop",
        "--text", "Hi", "--no-journal", "--no-progress", "--callback-url", callback,
        env=cli_env(**env),
    )  # fmt: skip
    assert run.code == 3, run.stderr
    assert "StatusCallback=" in run.stderr  # the form was echoed
    forms = forms_of(password, "hook")
    assert leaks(run.stdout, forms) == []
    assert leaks(run.stderr.encode(), forms) == []


async def test_the_echoing_simulator_quotes_the_credentials_it_was_sent(
    echoing: RunningSimulator,
) -> None:
    """--echo-credentials: the secret comes back verbatim, so the tests above prove something."""
    form = urllib.parse.urlencode(
        {"api_key": KEY, "api_secret": SECRET, "from": "Shop", "to": "447911123456", "text": "x"}
    )
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{echoing.url}/sms/json",
            data=form,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ) as response,
    ):
        answer = await response.json()
    [message] = answer["messages"]
    assert message["status"] == "4"
    assert urllib.parse.quote_plus(SECRET) in message["error-text"]
