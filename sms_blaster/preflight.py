"""What can be wrong with the flags or the input, found before the first request leaves.

Each check returns nothing when all is well and raises a UsageError (exit 2) whose one line
names the problem and the fix; what a run is made of is built from the same settings by
`run_parts`, once they passed.
"""

from __future__ import annotations

import os
import urllib.parse

import phonenumbers

from sms_blaster import run_parts, sender_id, validity
from sms_blaster.errors import OptionValueError, UsageError
from sms_blaster.inputs import STDIN_NAME, RowSource
from sms_blaster.kept_files import kept_as, run_files
from sms_blaster.key_file import private_key_pem
from sms_blaster.prepare import (
    NUMBER_COLUMNS,
    TEXT_COLUMN,
    TemplateError,
    compile_template,
    pick_number_column,
)
from sms_blaster.providers import registry
from sms_blaster.providers.names import ProviderName
from sms_blaster.run_parts import sender_as_sent
from sms_blaster.settings import RunSettings
from sms_blaster.transport import choice
from sms_blaster.url_text import mask_password


def check_sender(settings: RunSettings) -> None:
    """The sender is a number of up to 15 digits (E.164, no '+') or a name of up to 11 ASCII
    letters and digits (single spaces between words); none only with a Twilio messaging
    service, which picks it, or with a pool of senders (`--from-pool`, checked as it is read)."""
    if settings.from_pool is not None:
        if settings.sender:
            both = _both(settings, ("sender", "--from"), ("from_pool", "--from-pool"))
            raise UsageError(
                f"{both}: a pool names every sender; "
                "give one of them (a sender for any country is a pool line with no country)"
            )
        return
    sender = sender_as_sent(settings)
    if not sender:
        if settings.provider is ProviderName.TWILIO and settings.messaging_service_sid:
            return
        raise UsageError("no sender: give --from (a number or a name) or set SMS_BLASTER_FROM")
    wrong = sender_id.problem(sender)
    if wrong is None:
        return
    shown = settings.sender if sender.isdigit() else repr(sender)
    raise OptionValueError("--from", shown or "", wrong)


def check_journal(settings: RunSettings) -> None:
    """--journal and --no-journal are not both given: which one was meant decides whether a
    rerun skips what was sent or sends every row again."""
    if settings.journal_path is not None and not settings.use_journal:
        both = _both(settings, ("journal_path", "--journal"), ("no_journal", "--no-journal"))
        raise UsageError(
            f"{both}: --no-journal keeps no journal, so a rerun would send every row again; "
            "give one of them"
        )


def _both(settings: RunSettings, *options: tuple[str, str]) -> str:
    """'A and B both given', each as the user gave it (a flag, or an environment variable)."""
    return " and ".join(settings.spelled(name, flag) for name, flag in options) + " both given"


def check_columns(settings: RunSettings, source: RowSource) -> None:
    """The input has rows and a number column, and --text (or the text column) fits it."""
    if not source.has_rows:
        # A cron job fed an empty export must hear of it, not exit 0 having sent nothing.
        what = "the input ended" if source.name == STDIN_NAME else "the file ends"
        raise UsageError(
            f"{source.name}: no rows to send ({what} "
            f"{'after the header' if source.columns else 'before any row'}); nothing was sent"
        )
    columns = source.columns
    if columns and pick_number_column(columns, settings.to_column) is None:
        if settings.to_column is not None:
            raise OptionValueError(
                "--to-column",
                settings.to_column,
                f"{source.name} has no such column (columns: {_listed(source)}); "
                "name the number column",
            )
        raise UsageError(
            f"{source.name}: no number column (looked for {', '.join(NUMBER_COLUMNS)}; "
            f"columns: {_listed(source)}); name it with --to-column"
        )
    _check_text(settings, source)


def _check_text(settings: RunSettings, source: RowSource) -> None:
    """--text compiles and every placeholder is a column; without it, there is a text column."""
    if settings.text is None:
        if source.columns and TEXT_COLUMN not in source.columns:
            raise UsageError(
                f"{source.name}: no '{TEXT_COLUMN}' column (columns: {_listed(source)}); "
                "give the message with --text 'Hello {name}'"
            )
        return
    try:
        template = compile_template(settings.text)
    except TemplateError as exc:
        raise UsageError(f"--text: {exc}") from exc
    if not template.fields and not settings.text.strip():
        raise UsageError("--text is empty; give the message, e.g. --text 'Hello {name}'")
    for name, key in zip(template.fields, template.keys, strict=True):
        if source.columns and key not in source.columns:
            raise UsageError(
                f"{source.name}: --text uses {{{name}}} but there is no column '{name}' "
                f"(columns: {_listed(source)}); fix the placeholder or write {{{{ for a brace"
            )


def check_endpoint(settings: RunSettings) -> None:
    """A real run has an http(s) base URL without credentials in it, a proxy for it (if the
    environment sets one) that can be gone through, a usable --callback-url, and the credentials
    the chosen provider needs."""
    provider = settings.provider
    default_url = registry.DEFAULT_BASE_URLS[provider]
    url = settings.base_url or default_url
    parts = _split(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or not _has_valid_port(parts):
        raise OptionValueError(
            "--base-url", mask_password(url), f"not an http(s) URL; give e.g. {default_url}"
        )
    if parts.username is not None or parts.password is not None:
        raise OptionValueError(
            "--base-url",
            mask_password(url),
            "give the credentials in their options, not in the URL",
        )
    proxy_problem = choice.proxy_problem(url, os.environ)
    if proxy_problem is not None:
        raise UsageError(proxy_problem)
    if settings.callback_url is not None:
        check_callback_url(settings.callback_url)
    if provider is ProviderName.TWILIO:
        _check_twilio_credentials(settings)
    elif provider is ProviderName.VONAGE_MESSAGES and (
        settings.application_id or settings.private_key_path
    ):
        check_application_credentials(settings.application_id, settings.private_key_path)
    elif not settings.api_key:
        raise UsageError("no Vonage API key: set VONAGE_API_KEY or give --api-key")
    elif not settings.api_secret:
        raise UsageError("no Vonage API secret: set VONAGE_API_SECRET or give --api-secret")


def check_application_credentials(application_id: str | None, private_key_path: str | None) -> None:
    """--application-id and --private-key come together, and the key file holds a usable key."""
    if not application_id:
        raise UsageError(
            "--private-key needs --application-id (or VONAGE_APPLICATION_ID): the key signs "
            "tokens for one application"
        )
    if not private_key_path:
        raise UsageError(
            "--application-id needs --private-key PATH (or VONAGE_PRIVATE_KEY_PATH): the "
            "application's private key file"
        )
    private_key_pem(private_key_path)


def _check_twilio_credentials(settings: RunSettings) -> None:
    if not settings.account_sid:
        raise UsageError("no Twilio account SID: set TWILIO_ACCOUNT_SID or give --account-sid")
    if not settings.auth_token:
        raise UsageError("no Twilio auth token: set TWILIO_AUTH_TOKEN or give --auth-token")


def check_callback_url(url: str) -> None:
    """--callback-url is an absolute http(s) URL the provider can call."""
    parts = _split(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or not _has_valid_port(parts):
        raise OptionValueError(
            "--callback-url",
            mask_password(url),
            "not an http(s) URL; give the address of your receiver, "
            "e.g. https://hooks.example.com/webhooks/dlr",
        )


def _split(url: str) -> urllib.parse.SplitResult:
    """`url`'s parts; one that cannot be split ("Invalid IPv6 URL") as no URL at all."""
    try:
        return urllib.parse.urlsplit(url)
    except ValueError:
        return urllib.parse.SplitResult("", "", "", "", "")


def _has_valid_port(parts: urllib.parse.SplitResult) -> bool:
    """No port, or a number from 1 to 65535 (`http://host:http://host:8080` has none)."""
    try:
        port = parts.port
    except ValueError:
        return False
    return port is None or port > 0


def check_ttl(settings: RunSettings) -> None:
    """--ttl is a validity period the chosen provider takes."""
    if settings.ttl_s is None:
        return
    problem = validity.BOUNDS[settings.provider].problem(settings.ttl_s)
    if problem is not None:
        raise OptionValueError("--ttl", validity.duration_text(settings.ttl_s), problem)


def check_ttl_for_workers(settings: RunSettings) -> None:
    """--ttl of `enqueue` is a validity period some provider takes (the workers choose one)."""
    problem = None if settings.ttl_s is None else validity.any_provider_problem(settings.ttl_s)
    if problem is not None:
        raise OptionValueError("--ttl", validity.duration_text(settings.ttl_s or 0), problem)


def check_region(region: str | None) -> None:
    """--default-region is a region phonenumbers knows (ISO 3166: GB, not UK)."""
    if region is not None and region not in phonenumbers.SUPPORTED_REGIONS:
        hint = " (the United Kingdom is GB)" if region == "UK" else ""
        raise OptionValueError(
            "--default-region", region, f"not a known region{hint}; give a two-letter ISO code"
        )


def check_output(settings: RunSettings, source: RowSource) -> None:
    """--output must not overwrite a file the run reads, nor the journal or the files SQLite
    keeps beside it, whether they exist yet or not (the journal of a dry run or --no-journal
    included)."""
    output_path = settings.output_path
    if output_path is None:
        return
    # Stdin redirected from a file (`< list.csv`) is that file: /dev/stdin leads to it.
    input_path = _STDIN_PATH if source.name == STDIN_NAME else source.name
    kept = kept_as(
        output_path, run_files(settings, input_path, run_parts.kept_journal_path(settings))
    )
    if kept is not None:
        what, path = kept
        raise OptionValueError(
            "--output", output_path, f"that is {what} ({path}); write the records elsewhere"
        )


_STDIN_PATH = "/dev/stdin"


def _listed(source: RowSource) -> str:
    return ", ".join(source.names) if source.names else "none"
