"""The command line, the only module that imports click: flags -> settings -> run -> exit code."""

from __future__ import annotations

import asyncio
import contextlib
import io
import math
import os
import re
import sys
from collections.abc import Callable, Coroutine
from decimal import Decimal, InvalidOperation
from typing import Any, TextIO, TypeVar

import click
from click.core import ParameterSource

from sms_blaster import __version__, launch, logs, stopsignals
from sms_blaster.errors import OptionValueError, OutputError, SmsBlasterError, UsageError
from sms_blaster.inputs import InputFormat
from sms_blaster.lookalikes import SmartEncoding
from sms_blaster.providers.names import OPTION_NAMES, ProviderName
from sms_blaster.receiver.signatures import SMS_METHODS as SMS_SIGNATURE_METHODS
from sms_blaster.settings import BREAKER_WINDOW, MIN_BREAKER_SAMPLES, RunSettings
from sms_blaster.transport.base import TransportName
from sms_blaster.validity import default_text, parse_duration_s

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


class _Decimal(click.ParamType[Decimal]):
    name = "decimal"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> Decimal:
        try:
            number = Decimal(_number_text(self, value, param, ctx))
        except InvalidOperation:
            self.fail(f"{value!r} is not a number", param, ctx)
        if not number.is_finite() or number < 0:
            self.fail(f"{value!r} is not a price", param, ctx)
        return number


# Every number option (and its variable) takes ASCII decimal text, surrounding spaces stripped:
# Python's float(), int() and Decimal() also read other scripts' digits (Arabic-Indic ones),
# underscores (`1_000`), exponents and `inf`, which no other option (--ttl, --quiet-hours) takes,
# and through which a mistyped or pasted value would pass unnoticed.
_DECIMAL_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
_WHOLE_TEXT = re.compile(r"[+-]?[0-9]+")
_MOST_DIGITS = 40  # a number text longer than this is no value any option takes


def _number_text(
    kind: click.ParamType[Any],
    value: Any,
    param: click.Parameter | None,
    ctx: click.Context | None,
    *,
    whole: bool = False,
) -> str:
    """`value` as number text the rule above allows, or a usage error naming the option."""
    text = str(value).strip()
    if len(text) > _MOST_DIGITS:  # past any option's range (and Python's int() limit)
        shown = f"{text[:20]}…" if len(text) > 20 else text
        kind.fail(f"{shown!r} is {len(text)} characters long: far past any range", param, ctx)
    if (_WHOLE_TEXT if whole else _DECIMAL_TEXT).fullmatch(text) is None:
        if whole:
            kind.fail(f"{value!r} is not a whole number in ASCII digits; give e.g. 10", param, ctx)
        kind.fail(
            f"{value!r} is not a finite number in ASCII digits; give e.g. 25 or 0.5", param, ctx
        )
    return text


class FiniteFloat(click.FloatRange):
    """A number in a range, never inf or nan: every float option of every command uses it."""

    name = "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, float):
            return super().convert(value, param, ctx)  # a default
        text = _number_text(self, value, param, ctx)
        # Digits past a float's range read as inf, which passes a lower bound: refuse it first.
        if not math.isfinite(float(text)):
            self.fail(f"{value!r} is not a finite number; give a plain number", param, ctx)
        return super().convert(float(text), param, ctx)


class WholeNumber(click.IntRange):
    """A whole number in a range (no bounds: any): every integer option of every command."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int):
            return super().convert(value, param, ctx)  # a default
        return super().convert(int(_number_text(self, value, param, ctx, whole=True)), param, ctx)


DECIMAL = _Decimal()


class _Duration(click.ParamType[int]):
    """A duration (`90s`, `30m`, `4h`, `1d`, `1h30m`, or seconds) as whole seconds."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            return parse_duration_s(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class _QuietHours(click.ParamType[str]):
    """--quiet-hours from the environment, checked here so its error names the variable; a
    flag's value is checked with the input, as before."""

    name = "window"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        name = None if param is None else param.name
        if (
            ctx is not None
            and name
            and ctx.get_parameter_source(name) is ParameterSource.ENVIRONMENT
        ):
            from sms_blaster.quiet_hours import window_problem

            if (problem := window_problem(str(value))) is not None:
                self.fail(problem, param, ctx)
        return str(value)


ENV = "SMS_BLASTER_"


def _env(name: str) -> str:
    return ENV + name.upper().replace("-", "_")


def _empty_variable(option: click.Parameter, what: str) -> None:
    """Refuse the option's variable set to "" (click takes it as unset): as blank as the flag
    given "", and refused as that is, naming the variable."""
    names = [option.envvar] if isinstance(option.envvar, str) else list(option.envvar or ())
    for name in names:
        if os.environ.get(name) == "":
            flag = option.opts[0] if option.opts else name
            raise UsageError(f"{name}=: empty; give {what} (for {flag}); fix or unset {name}")


def _utf8_name(_context: click.Context, option: click.Parameter, value: str | None) -> str | None:
    """A campaign's name, kept and labelled as UTF-8: bytes that are no UTF-8 are refused, and so
    is a blank name (a script's unset variable), which would otherwise be the campaign `default`
    in silence, another campaign's rows and journal included."""
    if value is None:
        _empty_variable(option, "the campaign's name")
    else:
        try:
            value.encode()
        except UnicodeEncodeError:
            raise click.BadParameter("not valid UTF-8; give the name in UTF-8 text") from None
        if not value.strip():
            leave_out = "" if option.required else ", or leave --campaign out"
            raise click.BadParameter(f"empty; give the campaign's name{leave_out}")
    return value


def _region(_context: click.Context, option: click.Parameter, value: str | None) -> str | None:
    """--default-region, refused blank: "" (a script's unset variable) would be no region at all,
    and every national number would then fail `invalid_number`."""
    if value is None:
        _empty_variable(option, "a two-letter ISO code such as GB")
    elif not value.strip():
        raise click.BadParameter("empty; give a two-letter ISO code such as GB, or leave it out")
    return value


def _log_format_option() -> click.Option:
    """--log-format, which every command takes (and the group, before the command's name). It is
    read from the command line before click parses it (`logs.format_from`), so that click's own
    errors come out in it too; click only checks it and shows it in --help."""
    return click.Option(
        [logs.OPTION],
        type=click.Choice([fmt.value for fmt in logs.LogFormat]),
        default=logs.LogFormat.TEXT.value,
        envvar=logs.ENVIRONMENT_VARIABLE,
        expose_value=False,
        help="What stderr's lines are: text for people, or json, one object a line (ts, level, "
        "msg and the line's figures) for journald, Loki or ELK.",
    )


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
    params=[_log_format_option()],
)
@click.version_option(__version__, prog_name="sms-blaster")
def cli() -> None:
    """Bulk SMS from the command line: paced just under the provider's limit, never sent twice.

    Records (JSON lines) go to stdout; progress, the summary and errors go to stderr. Every option
    of send, enqueue, worker and receive can also be set in the environment as
    SMS_BLASTER_<OPTION> (e.g. SMS_BLASTER_RATE=25). report's and mock-provider's options are
    flags only (mock-provider's address, credentials and callback options, and every command's
    --log-format, excepted), so a shell set up for sending does not change what they do.
    """


def _options(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    """Several click options as one decorator, so commands that share them spell them once."""

    def apply(function: F) -> F:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


# What a message is made of: the rows, the template, the sender (send, enqueue).
_message_options = _options(
    click.option(
        "--from",
        "sender",
        envvar=_env("from"),
        help="Sender: a number, or a name of up to 11 ASCII letters and digits (single spaces "
        "between words allowed).",
    ),
    click.option(
        "--from-pool",
        type=click.Path(dir_okay=False),
        envvar=_env("from_pool"),
        metavar="FILE",
        help="Send from a pool of senders instead of --from: a CSV of sender,rate[,country] "
        "(rate: 1 or 1/s messages a second, 3seg/s parts); each recipient keeps one sender.",
    ),
    click.option(
        "--text",
        envvar=_env("text"),
        help="Message template with {column} placeholders; else a 'text' column.",
    ),
    click.option(
        "--format",
        "input_format",
        type=click.Choice([f.value for f in InputFormat]),
        default="auto",
        envvar=_env("format"),
        help="Input format (auto: by extension, else by content).",
    ),
    click.option(
        "--encoding",
        "input_encoding",
        default="utf-8",
        envvar=_env("encoding"),
        help="Input text encoding.",
    ),
    click.option(
        "--to-column",
        envvar=_env("to_column"),
        help="Column with the number.  [default: the first of to, phone, msisdn, number, mobile]",
    ),
    click.option(
        "--default-region",
        envvar=_env("default_region"),
        callback=_region,
        help="Country for numbers without a country code (e.g. GB, US).",
    ),
    click.option(
        "--max-segments",
        type=WholeNumber(min=1, max=255),
        envvar=_env("max_segments"),
        help="Refuse texts needing more SMS parts than this.",
    ),
    click.option(
        "--smart-encoding",
        type=click.Choice([mode.value for mode in SmartEncoding]),
        default=SmartEncoding.AUTO.value,
        callback=lambda _context, _option, value: SmartEncoding(value),
        envvar=_env("smart_encoding"),
        help="Replace look-alikes (curly quotes, dashes, odd spaces...) with GSM-7 characters: "
        "auto when that saves parts, always, or never.",
    ),
    click.option(
        "--suppress",
        "suppress_path",
        type=click.Path(dir_okay=False),
        envvar=_env("suppress"),
        help="Opt-out list (numbers, one a line, or CSV/JSONL): skipped as 'suppressed'.",
    ),
    click.option(
        "--ttl",
        "ttl_s",
        type=_Duration(),
        envvar=_env("ttl"),
        metavar="DURATION",
        help="Validity period: the provider gives up on a message not delivered within it "
        "(receipt 'expired'), e.g. 10m, 4h, 1d, 1h30m.  [default: the provider's, "
        f"{default_text(ProviderName.VONAGE_SMS)} Vonage, {default_text(ProviderName.TWILIO)} "
        "Twilio]",
    ),
    click.option(
        "--quiet-hours",
        envvar=_env("quiet_hours"),
        type=_QuietHours(),
        metavar="HH:MM-HH:MM",
        help="Send nothing in these hours of the recipient's local time (e.g. 21:00-08:00); "
        "rows inside them stay pending for the next run.",
    ),
    click.option(
        "--tz-column",
        envvar=_env("tz_column"),
        help="Column with each row's IANA time zone for --quiet-hours.  [default: the number's]",
    ),
)

# The opt-out list a run consults (send, enqueue, worker).
_optouts_option = _options(
    click.option(
        "--optouts",
        "optouts_path",
        type=click.Path(dir_okay=False),
        envvar=_env("optouts"),
        help="The opt-out list: the receiver's store (a journal, followed while sending) or an "
        "exported CSV/JSONL list; rows to numbers on it are skipped as 'opted_out'.",
    ),
)


class _Keywords(click.ParamType[tuple[str, ...]]):
    """A comma-separated list of keywords (`receive --optout-keywords STOP,QUIT`)."""

    name = "keywords"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, ...]:
        if isinstance(value, tuple):
            return value
        from sms_blaster.keywords import parse_list

        try:
            return parse_list(str(value), param.opts[0] if param else "keywords")
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class _ReplyText(click.ParamType[str]):
    """A reply to a keyword (`receive --reply-stop TEXT`): UTF-8, no control character, short."""

    name = "text"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from sms_blaster.receiver.replies import reply_problem

        problem = reply_problem(str(value))
        if problem is not None:
            self.fail(problem, param, ctx)
        return str(value)


# What `receive` makes of inbound messages: the keywords, and the replies.
_keyword_options = _options(
    click.option(
        "--optout-keywords",
        type=_Keywords(),
        envvar=_env("optout_keywords"),
        help="Comma-separated keywords that opt a number out.  [default: STOP, STOPALL, "
        "UNSUBSCRIBE, CANCEL, END, QUIT, REVOKE, OPTOUT]",
    ),
    click.option(
        "--optin-keywords",
        type=_Keywords(),
        envvar=_env("optin_keywords"),
        help="Keywords that opt a number back in.  [default: START, YES, UNSTOP]",
    ),
    click.option(
        "--help-keywords",
        type=_Keywords(),
        envvar=_env("help_keywords"),
        help="Keywords answered with --reply-help.  [default: HELP, INFO]",
    ),
    click.option(
        "--reply-stop",
        type=_ReplyText(),
        envvar=_env("reply_stop"),
        help="Answer an opt-out keyword with this text (Twilio: in the webhook's TwiML answer; "
        "Vonage: an SMS sent with --api-key and --api-secret).",
    ),
    click.option(
        "--reply-help",
        type=_ReplyText(),
        envvar=_env("reply_help"),
        help="Answer a help keyword with this text (as --reply-stop).",
    ),
)

# The provider's address and Vonage's credentials (send, worker; receive, for its replies).
_vonage_options = _options(
    click.option(
        "--base-url",
        envvar=_env("base_url"),
        help="Provider API base URL.  [default: the provider's API]",
    ),
    click.option(
        "--api-key", envvar="VONAGE_API_KEY", show_envvar=True, help="Vonage API key (both APIs)."
    ),
    click.option(
        "--api-secret", envvar="VONAGE_API_SECRET", show_envvar=True, help="Vonage API secret."
    ),
    click.option(
        "--application-id",
        envvar="VONAGE_APPLICATION_ID",
        show_envvar=True,
        help="Messages API: sign requests as this application (JWT) instead of key and secret.",
    ),
    click.option(
        "--private-key",
        "private_key_path",
        type=click.Path(dir_okay=False),
        envvar="VONAGE_PRIVATE_KEY_PATH",
        show_envvar=True,
        help="Messages API: the application's private key file (PEM).",
    ),
)

# Which provider, and its credentials (send, worker).
_provider_options = _options(
    click.option(
        "--provider",
        type=click.Choice(OPTION_NAMES),
        default="vonage",
        callback=lambda _context, _option, value: ProviderName(value),
        envvar=_env("provider"),
        help="vonage: the Vonage SMS API; vonage-messages: the Vonage Messages API; twilio.",
    ),
    _vonage_options,
    click.option(
        "--account-sid", envvar="TWILIO_ACCOUNT_SID", show_envvar=True, help="Twilio account SID."
    ),
    click.option(
        "--auth-token", envvar="TWILIO_AUTH_TOKEN", show_envvar=True, help="Twilio auth token."
    ),
    click.option(
        "--messaging-service-sid",
        envvar="TWILIO_MESSAGING_SERVICE_SID",
        show_envvar=True,
        help="Twilio: send through this messaging service (then --from is optional).",
    ),
    click.option(
        "--callback-url",
        envvar=_env("callback_url"),
        help="Where the provider sends this campaign's delivery receipts: your `receive` route, "
        "e.g. https://hooks.example.com/webhooks/dlr.",
    ),
)

# How fast and how hard to try (send, worker).
_sending_options = _options(
    click.option(
        "--rate",
        "rate_per_s",
        type=FiniteFloat(min=0.001),
        default=30.0,
        envvar=_env("rate"),
        help="Messages per second, at most (the provider's limit).",
    ),
    click.option(
        "--window",
        type=WholeNumber(min=1, max=10_000),
        envvar=_env("window"),
        help="Requests in flight, at most.  [default: enough to hide 0.5 s of latency, 4 to 256]",
    ),
    click.option(
        "--adaptive/--no-adaptive",
        default=True,
        envvar=_env("adaptive"),
        help="Slow down on throttles and grow back (--rate and --window are ceilings); "
        "--no-adaptive pins the rate.",
    ),
    click.option(
        "--retries",
        type=WholeNumber(min=0, max=100),
        default=5,
        envvar=_env("retries"),
        help="Retries of a transient failure; throttles and failed connections use none "
        "(--unreachable-timeout ends an outage).",
    ),
    click.option(
        "--timeout",
        "timeout_s",
        type=FiniteFloat(min=0.01),
        default=10.0,
        envvar=_env("timeout"),
        help="Seconds to wait for one answer.",
    ),
    click.option(
        "--retry-unknown",
        is_flag=True,
        envvar=_env("retry_unknown"),
        help="Resend after a timeout or reset once the request left: MAY SEND TWICE.",
    ),
    click.option(
        "--max-error-rate",
        type=FiniteFloat(0, 1, min_open=True),
        envvar=_env("max_error_rate"),
        help=f"Stop (exit 3, resumable) when more than this share of the last {BREAKER_WINDOW} "
        f"sends failed or are unknown (of the sends so far, from the {MIN_BREAKER_SAMPLES}th on).",
    ),
    click.option(
        "--unreachable-timeout",
        "unreachable_timeout_s",
        type=FiniteFloat(min=0, min_open=True),
        default=30.0,
        envvar=_env("unreachable_timeout"),
        help="Stop (exit 3, resumable) once every request for this many seconds failed to "
        "connect to the provider or was throttled; any other answer, even an error, starts "
        "the count again.",
    ),
    click.option(
        "--progress/--no-progress",
        default=None,
        envvar=_env("progress"),
        help="Progress on stderr.  [default: a bar on a terminal, a line every 10 s elsewhere]",
    ),
    click.option(
        "--uvloop/--no-uvloop",
        "use_uvloop",
        default=True,
        envvar=_env("uvloop"),
        help="Use uvloop when installed.",
    ),
    click.option(
        "--transport",
        type=click.Choice([name.value for name in TransportName]),
        default=TransportName.LEAN.value,
        envvar=_env("transport"),
        help="The HTTP client: lean (our own keep-alive HTTP/1.1) or aiohttp, which a proxy in "
        "the environment (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY) chooses.",
    ),
)

# Where a run's Prometheus metrics go (send, worker).
_metrics_options = _options(
    click.option(
        "--metrics-file",
        type=click.Path(dir_okay=False),
        envvar=_env("metrics_file"),
        metavar="PATH",
        help="Write Prometheus metrics here (node_exporter's textfile collector: a .prom file) "
        "every 10 s and at exit.",
    ),
    click.option(
        "--pushgateway",
        envvar=_env("pushgateway"),
        metavar="URL",
        help="Push the same metrics to this Prometheus Pushgateway (job sms_blaster) every 10 s "
        "and at exit.",
    ),
)

_output_option = _options(
    click.option(
        "--output",
        "output_path",
        type=click.Path(dir_okay=False, allow_dash=False),
        envvar=_env("output"),
        help="Write the records here instead of stdout. A resumed campaign appends to it; a new "
        "one refuses a file that is not empty (see --force).",
    ),
)

_force_option = _options(
    click.option(
        "--force",
        is_flag=True,
        envvar=_env("force"),
        help="Let a new campaign overwrite a non-empty --output file.",
    ),
)


@cli.command()
@click.argument("input_path", metavar="[INPUT]", required=False)
@_message_options
@_optouts_option
@_provider_options
@_sending_options
@_metrics_options
@_output_option
@_force_option
@click.option(
    "--dry-run",
    is_flag=True,
    envvar=_env("dry_run"),
    help="Say what the run would do, sending nothing: a record for each row it would send, and an"
    " estimate; the journal is only read.",
)
@click.option(
    "--campaign",
    envvar=_env("campaign"),
    callback=_utf8_name,
    help="Campaign name: a new name starts a new campaign in the journal.  [default: default]",
)
@click.option(
    "--journal",
    "journal_path",
    type=click.Path(dir_okay=False),
    envvar=_env("journal"),
    help="Journal file, to resume without sending twice.  [default: INPUT.journal; none for stdin]",
)
@click.option(
    "--no-journal",
    is_flag=True,
    envvar=_env("no_journal"),
    help="Keep no journal: the run cannot be resumed.",
)
@click.option(
    "--no-fsync",
    is_flag=True,
    envvar=_env("no_fsync"),
    help="Faster at low latency: do not fsync in-flight marks before their requests leave. "
    "Risk: a power cut or OS crash can lose the last marks, and a resume may then resend "
    "those rows.",
)
@click.option(
    "--only-new",
    is_flag=True,
    envvar=_env("only_new"),
    help="No records for rows an earlier run settled.",
)
@click.option(
    "--not-after",
    envvar=_env("not_after"),
    help="Send nothing after this time (HH:MM today, or 2026-12-01T18:00); the rest stays pending.",
)
@click.option(
    "--price",
    type=DECIMAL,
    envvar=_env("price"),
    help="Price of one segment, for the --dry-run estimate.",
)
def send(input_path: str | None, **options: Any) -> None:
    """Send a campaign from INPUT (CSV or JSONL; '-' or a pipe for stdin).

    \b
    Exit codes: 0 all sent or skipped, 1 some failed or unknown (or --not-after came),
    2 usage or input error (nothing sent), 3 stopped by a fatal provider answer, an unreachable
    provider, one that throttled every request, or the error-rate breaker, 4 journal or records
    cannot be used, 130 interrupted (SIGINT, SIGTERM or SIGHUP).

    Re-running the same command resumes: rows settled earlier are skipped, rows recorded
    'stopped' are sent, rows found in flight after a crash are 'unknown' and are not resent
    unless --retry-unknown (a resume that leaves rows unknown exits 1).
    """
    from sms_blaster.campaign import run_send

    _check_records_stream(options["output_path"])
    if input_path is None:
        if sys.stdin is None or sys.stdin.isatty():
            raise UsageError("no input: give a CSV or JSONL file, or pipe rows on stdin ('-')")
        input_path = "-"
    region = options.pop("default_region")
    settings = RunSettings(
        input_path=input_path,
        use_journal=not options.pop("no_journal"),
        journal_fsync=not options.pop("no_fsync"),
        input_format=InputFormat(options.pop("input_format")),
        default_region=region.upper() if region else None,
        transport=TransportName(options.pop("transport")),
        from_environment=_options_from_environment(),
        **options,
    )
    code = _run(
        lambda: run_send(
            settings,
            stdout=sys.stdout.buffer,
            stderr=sys.stderr,
            stdin=sys.stdin.buffer if input_path == "-" else None,
            stderr_is_tty=sys.stderr.isatty(),
        ),
        settings.use_uvloop,
    )
    sys.exit(code)


_redis_options = _options(
    click.option(
        "--redis",
        "redis_url",
        required=True,
        envvar=_env("redis"),
        metavar="URL",
        help="The Redis the senders share, e.g. redis://10.0.0.5:6379/0.",
    ),
    click.option(
        "--campaign",
        required=True,
        envvar=_env("campaign"),
        metavar="NAME",
        callback=_utf8_name,
        help="The campaign's name in Redis.",
    ),
)


@cli.command()
@click.argument("input_path", metavar="INPUT")
@_redis_options
@_message_options
@_optouts_option
@_output_option
@_force_option
def enqueue(input_path: str, redis_url: str, campaign: str, **options: Any) -> None:
    """Prepare INPUT (CSV or JSONL, '-' for stdin) into a campaign that workers send.

    \b
    Rows are checked and prepared exactly as `send` does; rows that will not be sent get their
    record on stdout now. Running it again adds only rows not added before.
    Exit codes: 0 every row queued, 1 some rows refused, 2 usage error, 4 Redis unusable.
    """
    from sms_blaster.distributed.run import run_enqueue
    from sms_blaster.settings import DistributedSettings

    _check_records_stream(options["output_path"])
    region = options.pop("default_region")
    settings = RunSettings(
        input_path=input_path,
        campaign=campaign,
        input_format=InputFormat(options.pop("input_format")),
        default_region=region.upper() if region else None,
        from_environment=_options_from_environment(),
        **options,
    )
    dist = DistributedSettings(redis_url=redis_url, campaign=campaign)
    code = _run(
        lambda: run_enqueue(
            settings,
            dist,
            stdout=sys.stdout.buffer,
            stderr=sys.stderr,
            stdin=sys.stdin.buffer if input_path == "-" else None,
        ),
        use_uvloop=True,
    )
    sys.exit(code)


@cli.command()
@_redis_options
@_provider_options
@_optouts_option
@_sending_options
@_metrics_options
@_output_option
@click.option(
    "--lease",
    "lease_s",
    type=FiniteFloat(min=1),
    default=60.0,
    envvar=_env("lease"),
    help="Seconds after which a silent worker's messages are taken over.",
)
@click.option(
    "--redis-grace",
    "redis_grace_s",
    type=FiniteFloat(min=0),
    default=30.0,
    envvar=_env("redis_grace"),
    help="Seconds to wait for a lost Redis (a restart, a failover) before stopping; 0: at once.",
)
@click.option(
    "--follow",
    is_flag=True,
    envvar=_env("follow"),
    help="Keep waiting for new messages instead of exiting once the campaign is drained.",
)
@click.option(
    "--name",
    "worker",
    envvar=_env("worker_name"),
    help="This worker's name in the consumer group.  [default: <host>-<pid>]",
)
def worker(
    redis_url: str,
    campaign: str,
    lease_s: float,
    redis_grace_s: float,
    follow: bool,
    worker: str | None,
    **options: Any,
) -> None:
    """Send a campaign's messages from Redis; run any number, on any hosts.

    \b
    --rate is the campaign's rate for all workers together (one limit in Redis); --window is
    this worker's. Records of the rows this worker settles go to stdout, or are appended to
    --output (one file a worker: records of two would interleave). A worker that dies leaves
    its messages to the others after --lease: a message whose request may have left
    is recorded 'unknown', never resent (unless --retry-unknown). A worker that loses Redis
    claims nothing new, lets its requests in flight finish and waits up to --redis-grace for
    Redis to return, then goes on; past it, it stops.
    Exit codes as `send`: 0, 1 some failed or unknown, 2, 3 fatal answer, 4 Redis, 130.
    """
    from sms_blaster.distributed.run import run_worker
    from sms_blaster.settings import DistributedSettings

    logs.log_to(sys.stderr, "worker")
    _check_records_stream(options["output_path"])

    settings = RunSettings(
        campaign=campaign,
        transport=TransportName(options.pop("transport")),
        from_environment=_options_from_environment(),
        **options,
    )
    dist = DistributedSettings(
        redis_url=redis_url,
        campaign=campaign,
        worker=worker,
        lease_s=lease_s,
        follow=follow,
        redis_grace_s=redis_grace_s,
    )
    code = _run(
        lambda: run_worker(
            settings,
            dist,
            stdout=sys.stdout.buffer,
            stderr=sys.stderr,
            stderr_is_tty=sys.stderr.isatty(),
        ),
        settings.use_uvloop,
    )
    sys.exit(code)


@cli.command()
@click.argument("journal", metavar="[JOURNAL]", required=False)
@click.option(
    "--campaign",
    callback=_utf8_name,
    help="Only this campaign.  [default: every campaign in the journal]",
)
@click.option(
    "--redis",
    "redis_url",
    envvar=_env("redis"),
    metavar="URL",
    help="Report a distributed campaign (give --campaign) from Redis instead of a journal.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document, for machines.")
@click.option(
    "--html",
    "html_path",
    metavar="FILE",
    help="Write one self-contained HTML page with charts to FILE ('-' for stdout).",
)
def report(
    journal: str | None,
    campaign: str | None,
    redis_url: str | None,
    as_json: bool,
    html_path: str | None,
) -> None:
    """Summarise a campaign from its JOURNAL: outcomes, errors, cost, rate, latency, delivery.

    It reads the journal only, and can run while a send is writing it. With --redis URL
    --campaign NAME, a distributed campaign (receipts waiting in Redis are applied first).
    """
    from sms_blaster.report import run_report

    if html_path is not None and as_json:
        raise UsageError("report: give --json or --html FILE, not both")
    if redis_url is None:
        if journal is None:
            raise UsageError("report: give a JOURNAL, or --redis URL --campaign NAME")
        if html_path is not None:
            from sms_blaster.html_report.write import write_journal_page

            write_journal_page(journal, campaign, html_path, sys.stdout)
            return
        run_report(journal, campaign, as_json, sys.stdout)
        return
    if journal is not None or campaign is None:
        raise UsageError("report --redis: give --campaign NAME and no JOURNAL")
    if html_path is not None:
        from sms_blaster.distributed.run import load_page
        from sms_blaster.html_report.write import check_target, write_page

        check_target(html_path)
        view = _run(lambda: load_page(redis_url, campaign), use_uvloop=False)
        write_page([view], view.source, html_path, sys.stdout)
        return
    from sms_blaster.distributed.run import load_report

    summary = _run(lambda: load_report(redis_url, campaign), use_uvloop=False)
    from sms_blaster.url_text import mask_password

    run_report(
        f"{mask_password(redis_url)} campaign {campaign}", None, as_json, sys.stdout, [summary]
    )


@cli.command()
@click.option(
    "--store",
    "store_path",
    envvar=_env("store"),
    metavar="PATH",
    help="SQLite file for receipts: a campaign journal, to tie receipts to its rows.",
)
@click.option(
    "--redis",
    "redis_url",
    envvar=_env("redis"),
    metavar="URL",
    help="Store receipts in Redis instead, for distributed campaigns (workers apply them).",
)
@click.option(
    "--host",
    default="127.0.0.1",
    envvar=_env("receive_host"),
    help="Address to listen on (0.0.0.0 for every interface).",
)
@click.option(
    "--port",
    type=WholeNumber(0, 65535),
    default=8080,
    envvar=_env("receive_port"),
    help="0 picks a free port.",
)
@click.option(
    "--signature-method",
    type=click.Choice(SMS_SIGNATURE_METHODS),
    default="md5hash",
    envvar=_env("signature_method"),
    help="How the Vonage SMS API signs callbacks (the dashboard's setting).",
)
@click.option(
    "--max-age",
    "max_age_s",
    type=FiniteFloat(min=1),
    default=72 * 3600.0,
    envvar=_env("max_age"),
    help="Refuse signed callbacks whose timestamp is older (seconds). Vonage retries "
    "receipts for 72 h and stored receipts are deduplicated, so a replay is harmless.",
)
@click.option(
    "--public-url",
    envvar=_env("public_url"),
    help="Scheme and host providers call (https://hooks.example.com), when behind a "
    "proxy: Twilio signs the URL it called.",
)
@click.option(
    "--accept-unsigned",
    type=click.Choice(["vonage", "twilio"]),
    multiple=True,
    envvar=_env("accept_unsigned"),
    help="Take this provider's callbacks unsigned though another provider's secret is set "
    "(without it, its routes answer 403). Repeat for both.",
)
@click.option(
    "--queue-size",
    type=WholeNumber(min=1),
    default=10_000,
    envvar=_env("queue_size"),
    help="Callbacks waiting for a commit; above it the answer is 503 + Retry-After.",
)
@click.option(
    "--emit/--no-emit",
    default=False,
    envvar=_env("emit"),
    help="Write each stored receipt to stdout as one JSON line.",
)
@click.option(
    "--hook",
    envvar=_env("hook"),
    metavar="MODULE:FUNCTION",
    help="An async function called with each stored receipt (a dict), after the ack.",
)
@click.option(
    "--hook-concurrency",
    type=WholeNumber(min=1),
    default=256,
    envvar=_env("hook_concurrency"),
    help="Hook calls running at once.",
)
@click.option(
    "--shutdown-delay",
    "shutdown_delay_s",
    type=FiniteFloat(min=0),
    default=0.0,
    envvar=_env("shutdown_delay"),
    help="At SIGTERM, answer /healthz 503 at once but keep taking callbacks this many seconds "
    "before closing the listener, so a load balancer stops sending first.",
)
@click.option(
    "--port-file",
    type=click.Path(dir_okay=False),
    envvar=_env("port_file"),
    help="Write the URL here once listening.",
)
@_keyword_options
@_vonage_options
def receive(port_file: str | None, **options: Any) -> None:
    """Run the webhook receiver: delivery receipts and inbound messages, acknowledged once stored.

    \b
    Routes: /webhooks/dlr and /webhooks/inbound (Vonage SMS API: GET, POST form or POST JSON),
    /webhooks/messages/status and /webhooks/messages/inbound (Vonage Messages API),
    /webhooks/twilio/status and /webhooks/twilio/inbound (Twilio), /healthz and /metrics.
    Inbound STOP / START keywords update the opt-out list in the store.
    Signatures are checked when VONAGE_SIGNATURE_SECRET / TWILIO_AUTH_TOKEN are set; once
    either is, the other provider's routes refuse every callback (403) unless --accept-unsigned
    names it.
    SIGTERM, SIGHUP or Ctrl-C: stop accepting, store what is queued, exit 0; a second one: exit
    130 at once (what was acknowledged is stored already).
    """
    from sms_blaster.receiver.app import serve
    from sms_blaster.settings import ReceiveSettings
    from sms_blaster.url_text import mask_password

    if (options["store_path"] is None) == (options["redis_url"] is None):
        raise UsageError(
            "receive: give --store PATH (a campaign journal) or --redis URL (distributed "
            "campaigns), one of the two"
        )
    if options["public_url"] is not None:
        from sms_blaster.receiver.signing import public_url

        options["public_url"] = public_url(options["public_url"])
    settings = ReceiveSettings(
        keywords=_keyword_lists(options),
        vonage_secret=os.environ.get("VONAGE_SIGNATURE_SECRET") or None,
        twilio_token=os.environ.get("TWILIO_AUTH_TOKEN") or None,
        accept_unsigned=frozenset(options.pop("accept_unsigned")),
        **options,
    )
    logs.log_to(sys.stderr, "receive")

    if port_file:
        _check_port_file(port_file)

    def ready(url: str) -> None:
        if port_file:  # first: a file that cannot be written stops the receiver unannounced
            _write_port_file(port_file, url)
        logs.say(
            sys.stderr,
            f"sms-blaster: receiver listening on {url} "
            f"(store: {settings.store_path or mask_password(settings.redis_url or '')})",
            flush=True,
            url=url,
        )

    _run(lambda: serve(settings, ready), use_uvloop=True)


def _check_port_file(path: str) -> None:
    """UsageError (exit 2, before listening) when --port-file's directory does not exist."""
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise UsageError(f"--port-file {path}: no such directory {directory}")


def _write_port_file(path: str, url: str) -> None:
    """Write the URL listened on; UsageError (exit 2) when it cannot be (a full disk, no right
    to write), before the server says it listens."""
    try:
        with open(path, "w") as handle:
            handle.write(url + "\n")
    except OSError as exc:
        raise UsageError(f"--port-file {path}: cannot write it ({exc.strerror or exc})") from exc


def _keyword_lists(options: dict[str, Any]) -> Any:
    """The receiver's keyword lists from its options (taken out of `options`)."""
    from sms_blaster.keywords import DEFAULT_KEYWORDS, KeywordLists

    return KeywordLists(
        opt_out=options.pop("optout_keywords") or DEFAULT_KEYWORDS.opt_out,
        opt_in=options.pop("optin_keywords") or DEFAULT_KEYWORDS.opt_in,
        help=options.pop("help_keywords") or DEFAULT_KEYWORDS.help,
    )


@cli.group()
def optouts() -> None:
    """Manage the opt-out list: the receiver's (--store JOURNAL) or Redis's (--redis URL).

    \b
    The receiver adds numbers that send STOP (and takes out those that send START); a Twilio
    send answered 21610 adds its number too. send, enqueue and worker skip the numbers on it
    (--optouts; workers always check Redis's). Lists are CSV or JSONL with the columns number,
    opted_out, at, source, reason; '-' is stdin or stdout.
    """


_list_options = _options(
    click.option(
        "--store",
        "store_path",
        envvar=_env("store"),
        metavar="JOURNAL",
        help="The journal holding the list (the receiver's --store).",
    ),
    click.option(
        "--redis", "redis_url", envvar=_env("redis"), metavar="URL", help="Redis's list instead."
    ),
)
_region_option = _options(
    click.option(
        "--default-region",
        envvar=_env("default_region"),
        callback=_region,
        help="Country for numbers without a country code (e.g. GB, US).",
    ),
)
_list_format_option = _options(
    click.option(
        "--format",
        "list_format",
        type=click.Choice(["auto", "csv", "jsonl"]),
        default="auto",
        help="auto: by the file's extension, CSV for stdout.",
    ),
)


def _optouts_run(options: dict[str, Any], make: Callable[[Any], Coroutine[Any, Any, int]]) -> None:
    from sms_blaster.optouts.command import list_store

    store_path, redis_url = options.pop("store_path"), options.pop("redis_url")
    region = options.pop("default_region", None)
    if region is not None:
        from sms_blaster.preflight import check_region

        check_region(region.upper())
    store = list_store(store_path, redis_url)
    sys.exit(_run(lambda: make(store), use_uvloop=False))


@optouts.command("list")
@_list_options
@click.option("--all", "show_all", is_flag=True, help="Also the numbers that opted back in.")
def optouts_list(show_all: bool, **options: Any) -> None:
    """Print the numbers opted out (number, since when, why), one a line."""
    from sms_blaster.optouts.command import run_list

    _optouts_run(options, lambda store: run_list(store, sys.stdout, show_all=show_all))


# add and remove: the numbers, and a note kept with each entry.
_change_options = _options(
    click.argument("numbers", nargs=-1, required=True),
    _list_options,
    _region_option,
    click.option("--reason", default="", help="A note kept with the entry."),
)


def _change(
    numbers: tuple[str, ...], opted_out: bool, reason: str, options: dict[str, Any]
) -> None:
    from sms_blaster.optouts.command import run_change

    region = options.get("default_region")
    _optouts_run(
        options,
        lambda store: run_change(store, numbers, opted_out, reason, region and region.upper()),
    )


@optouts.command("add")
@_change_options
def optouts_add(numbers: tuple[str, ...], reason: str, **options: Any) -> None:
    """Opt NUMBERS out (source: manual)."""
    _change(numbers, True, reason, options)


@optouts.command("remove")
@_change_options
def optouts_remove(numbers: tuple[str, ...], reason: str, **options: Any) -> None:
    """Opt NUMBERS back in (source: manual); a later STOP opts them out again."""
    _change(numbers, False, reason, options)


@optouts.command("import")
@click.argument("path", metavar="FILE")
@_list_options
@_region_option
def optouts_import(path: str, **options: Any) -> None:
    """Add the entries of FILE (CSV, JSONL or one number a line; '-' for stdin).

    \b
    Missing columns: opted_out 1, at now, source import. An entry older than the list's for
    its number changes nothing; a number that is not valid stops the import (exit 2, nothing
    written) naming its line.
    """
    from sms_blaster.optouts.command import run_import

    region = options.get("default_region")
    _optouts_run(
        options, lambda store: run_import(store, path, region and region.upper(), sys.stdin.buffer)
    )


@optouts.command("export")
@click.argument("path", metavar="[FILE]", default="-")
@_list_options
@_list_format_option
def optouts_export(path: str, list_format: str, **options: Any) -> None:
    """Write the whole list (numbers out, and those back in) to FILE ('-', the default: stdout)
    as CSV or JSONL, for --optouts or an import elsewhere."""
    from sms_blaster.optouts.command import run_export

    _optouts_run(options, lambda store: run_export(store, path, list_format, sys.stdout))


@cli.command("mock-provider")
@click.option("--host", default="127.0.0.1", envvar=_env("host"))
@click.option(
    "--port",
    type=WholeNumber(0, 65535),
    default=8090,
    envvar=_env("port"),
    help="0 picks a free port.",
)
@click.option("--latency-ms", type=FiniteFloat(min=0), default=0.0, help="Added to every answer.")
@click.option(
    "--jitter-ms",
    type=FiniteFloat(min=0),
    default=0.0,
    help="Plus up to this much, at random.",
)
@click.option(
    "--rate",
    "rate_per_s",
    type=FiniteFloat(min=0.001),
    help="Throttle above this many requests/s per key (Twilio: segments/s).",
)
@click.option(
    "--burst",
    type=FiniteFloat(min=1),
    help="Throttle bucket size.  [default: max(2, rate/20)]",
)
@click.option(
    "--limiter",
    help="Throttle with this limiter shape instead of --rate, e.g. sliding:150, "
    "bucket:1000:100, concurrency:8, queue:150:20, sliding:150@10,sliding:60.",
)
@click.option(
    "--sender-limiter",
    help="Also throttle each sender (from) on its own with this limiter shape, e.g. "
    "sliding:1 (one a second per sender, as a US long code).",
)
@click.option(
    "--throttle-hint",
    type=click.Choice(["exact", "none", "wrong", "retry-after"]),
    default="exact",
    help="How a throttled answer says when to retry: the true wait, none, a random one, "
    "or HTTP 429 with Retry-After from every API.",
)
@click.option(
    "--max-concurrency",
    type=WholeNumber(min=1),
    help="Answer HTTP 429 above this many requests at once.",
)
@click.option(
    "--error-5xx-rate",
    type=FiniteFloat(0, 1),
    default=0.0,
    help="Share answered 503 before accepting.",
)
@click.option(
    "--reset-rate",
    type=FiniteFloat(0, 1),
    default=0.0,
    help="Share accepted, then the connection dropped.",
)
@click.option(
    "--reset-before-rate",
    type=FiniteFloat(0, 1),
    default=0.0,
    help="Share dropped before the request is read (not accepted).",
)
@click.option(
    "--timeout-rate",
    type=FiniteFloat(0, 1),
    default=0.0,
    help="Share accepted, then never answered.",
)
@click.option("--api-key", envvar="VONAGE_API_KEY", help="Accept only this key (default: any).")
@click.option(
    "--api-secret", envvar="VONAGE_API_SECRET", help="Accept only this secret (default: any)."
)
@click.option(
    "--application-id",
    envvar=[_env("application_id"), "VONAGE_APPLICATION_ID"],
    help="Messages API: accept only tokens of this application (default: any).",
)
@click.option(
    "--twilio-account-sid",
    envvar=[_env("twilio_account_sid"), "TWILIO_ACCOUNT_SID"],
    help="Twilio: accept only this account SID (default: any).",
)
@click.option(
    "--twilio-auth-token",
    envvar=[_env("twilio_auth_token"), "TWILIO_AUTH_TOKEN"],
    help="Twilio: accept only this token; it signs callbacks (default: any, the send's).",
)
@click.option(
    "--keep-messages/--no-keep-messages",
    default=True,
    help="Keep every accepted message in the stats.",
)
@click.option("--seed", type=WholeNumber(), help="Seed for faults, jitter and delivery decisions.")
@click.option(
    "--echo-credentials",
    is_flag=True,
    help="Refuse every send as bad credentials, quoting the credentials it carried.",
)
@click.option(
    "--callback-url",
    envvar=_env("callback_url"),
    help="Send Vonage receipts here, unless a send names its own URL.  [default: none]",
)
@click.option(
    "--callback-format",
    type=click.Choice(["json", "post", "get"]),
    default="json",
    envvar=_env("callback_format"),
    help="POST a JSON body, POST a form body, or GET with a query string.",
)
@click.option(
    "--callback-delay-ms",
    type=FiniteFloat(min=0),
    default=200.0,
    envvar=_env("callback_delay_ms"),
    help="Each receipt waits a random 0 to 2x this.",
)
@click.option(
    "--callback-duplicate-rate",
    type=FiniteFloat(0, 1),
    default=0.05,
    envvar=_env("callback_duplicate_rate"),
    help="Share of receipts sent twice.",
)
@click.option(
    "--callback-early-rate",
    type=FiniteFloat(0, 1),
    default=0.0,
    envvar=_env("callback_early_rate"),
    help="Share of messages whose first receipt is sent before the send is answered.",
)
@click.option(
    "--dlr-fail-rate",
    type=FiniteFloat(0, 1),
    default=0.0,
    envvar=_env("dlr_fail_rate"),
    help="Share of messages not delivered: one part's receipt says failed.",
)
@click.option(
    "--callback-retry-s",
    type=FiniteFloat(min=0, min_open=True),
    default=60.0,
    envvar=_env("callback_retry_s"),
    help="Resend a receipt not answered 2xx after this many seconds.",
)
@click.option(
    "--callback-retry-for-s",
    type=FiniteFloat(min=0),
    default=259_200.0,
    envvar=_env("callback_retry_for_s"),
    help="Give a receipt up this long after its first attempt (72 h).",
)
@click.option(
    "--signature-secret",
    envvar=[_env("signature_secret"), "VONAGE_SIGNATURE_SECRET"],
    help="Sign Vonage receipts: SMS API sig, Messages API JWT.",
)
@click.option(
    "--signature-method",
    type=click.Choice(["md5hash", "md5", "sha1", "sha256", "sha512"]),
    default="md5hash",
    envvar=_env("signature_method"),
    help="md5hash, or HMAC with md5, sha1, sha256 or sha512.",
)
@click.option(
    "--port-file", type=click.Path(dir_okay=False), help="Write the URL here once listening."
)
def mock_provider(host: str, port: int, port_file: str | None, **options: Any) -> None:
    """Run the provider simulator for demos, tests and benchmarks: the Vonage SMS API
    (/sms/json), the Vonage Messages API (/v1/messages) and Twilio
    (/2010-04-01/Accounts/{sid}/Messages.json), each answering in its own shapes.

    \b
    Stats: GET /_simulator/stats; reset: POST /_simulator/reset; change faults, latency,
    throttle or credentials while running: POST /_simulator/config with a JSON object. Make a
    handset write to a receiver: POST /_simulator/inbound {"api", "url", "from", "text"}.
    Magic recipients (last four digits): 9990 barred, 9991 invalid, 9992 bad credentials,
    9993 quota exceeded, 9994 throttled once, 9995 HTTP 503 once, 9996 accepted then no answer,
    9997 accepted then reset, 9998 internal error once, 9989 accepted then a failed receipt,
    9988 sent with a ttl: accepted then an expired receipt.
    Receipts go to a send's own URL (callback, webhook_url, StatusCallback), else for Vonage to
    --callback-url, in each API's format and signature, retried until answered 2xx.
    """
    from sms_blaster.simulator import CallbackFormat, SimulatorConfig, ThrottleHint, serve
    from sms_blaster.simulator.limiters import parse as parse_limiter

    options["callback_format"] = CallbackFormat(options["callback_format"])
    options["throttle_hint"] = ThrottleHint(options["throttle_hint"])
    limiter = options["limiter"]
    if limiter is not None:
        if options["rate_per_s"] is not None or options["burst"] is not None:
            raise UsageError(
                "mock-provider: give --rate (and --burst) or --limiter, not both; "
                "--limiter bucket:RATE:BURST is --rate RATE --burst BURST"
            )
        try:
            parse_limiter(limiter)
        except ValueError as exc:
            raise UsageError(f"--limiter {limiter}: {exc}") from exc
    if options["sender_limiter"] is not None:
        try:
            parse_limiter(options["sender_limiter"])
        except ValueError as exc:
            raise UsageError(f"--sender-limiter {options['sender_limiter']}: {exc}") from exc
    try:
        config = SimulatorConfig(**options)
    except ValueError as exc:
        raise UsageError(f"mock-provider: {exc}") from exc

    if port_file:
        _check_port_file(port_file)

    def ready(url: str) -> None:
        if port_file:
            _write_port_file(port_file, url)
        logs.say(sys.stderr, f"sms-blaster: simulator listening on {url}", flush=True, url=url)

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a simulator is stopped
        _run(lambda: serve(config, host, port, ready), use_uvloop=True)


def _log_format_everywhere(group: click.Group) -> None:
    """--log-format on every command of `group` and of its subgroups, after their own options."""
    for command in group.commands.values():
        command.params.append(_log_format_option())
        if isinstance(command, click.Group):
            _log_format_everywhere(command)


_log_format_everywhere(cli)


def _run(make: Callable[[], Coroutine[Any, Any, T]], use_uvloop: bool) -> T:
    """Run a coroutine on uvloop when asked for and installed, else on the default loop."""
    factory = None
    if use_uvloop:
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:
            pass
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(make())
    except OptionValueError as exc:
        raise _named_source(exc) from None
    finally:
        stopsignals.keep_ignored()  # a run that ended ignores stop signals until the exit


# The standard descriptors the caller closed (`>&-`), held by the null device since.
_closed_at_start: frozenset[int] = frozenset()


def _hold_standard_descriptors() -> None:
    """Open the null device on any of descriptors 0-2 the caller closed (`<&-`, `2>&-`).

    Otherwise the first socket, pipe or file the run opens takes that number: the event loop
    (uvloop) aborts the process when it closes it, and a write meant for the closed stream would
    land in it. The stream then reads as empty and takes writes nowhere, as `</dev/null` and
    `>/dev/null` would; a run whose records would go to a closed stdout is refused
    (`_check_records_stream`)."""
    global _closed_at_start
    closed = set()
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
        except OSError:
            closed.add(fd)
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            if getattr(sys, name) is None:  # Python saw it closed at start-up
                setattr(sys, name, open(fd, mode, closefd=False))  # noqa: SIM115
    _closed_at_start = frozenset(closed)


def _check_records_stream(output_path: str | None) -> None:
    """Refuse, before anything is sent, a run whose records would go to a stdout the caller
    closed (`>&-`): they would all be lost, and the run would exit 0."""
    if output_path is None and 1 in _closed_at_start:
        raise UsageError(
            "stdout is closed, so the records would be lost: give --output FILE, or send stdout "
            "to a file or pipe (>/dev/null to throw the records away)"
        )


def main(argv: list[str] | None = None) -> None:
    """Entry point: one line on stderr and the documented exit code for every error."""
    _hold_standard_descriptors()
    sys.stderr = _QuietStream(sys.stderr)
    logs.use(logs.format_from(sys.argv[1:] if argv is None else argv, os.environ), sys.stderr)
    stopsignals.interrupt_until_handled()
    try:
        _invoke(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt:
        # A stop signal before the command took the signals itself: nothing was sent.
        launch.interrupted_while_starting()
    except click.exceptions.Abort:
        _error("aborted", 130)
        sys.exit(130)
    except click.exceptions.NoArgsIsHelpError as exc:
        help_text = exc.format_message()  # the help itself, not an error
        logs.say(sys.stderr, help_text, logs.Level.ERROR, exit_code=2)
        sys.exit(2)
    except click.ClickException as exc:
        hint = ""
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            hint = f" (see '{exc.ctx.command_path} --help')"
        code = 2 if isinstance(exc, click.UsageError) else exc.exit_code
        _error((_from_environment(exc) or exc.format_message()) + hint, code)
        sys.exit(code)
    except SmsBlasterError as exc:
        _error(str(exc), exc.exit_code)
        if isinstance(exc, OutputError):
            # stdout is a closed pipe: let the interpreter's last flush go nowhere, quietly.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        sys.exit(exc.exit_code)


def _invoke(args: list[str]) -> None:
    """What click's `main` does without standalone mode, except that a KeyboardInterrupt (a
    stop signal while starting) reaches `main` as itself: click's own catch of it writes a blank
    line to stderr (to end a terminal's `^C`) and raises Abort, so the one line said for it
    came second, and for a SIGTERM said "aborted" after a blank line."""
    cli._main_shell_completion({}, "sms-blaster")  # as click's main: `_SMS_BLASTER_COMPLETE`
    try:
        with cli.make_context("sms-blaster", list(args)) as ctx:
            cli.invoke(ctx)
    except click.exceptions.Exit as exc:  # --help, --version: what click's main returns
        if exc.exit_code:
            sys.exit(exc.exit_code)


# An error line shows this much of a variable's value: a pasted file or a number of thousands of
# digits would bury the reason.
_LONGEST_SHOWN = 200


def _from_environment(exc: click.ClickException) -> str | None:
    """`SMS_BLASTER_RATE=abc: …` for a bad value that came from the environment, not a flag."""
    if not isinstance(exc, click.BadParameter) or exc.ctx is None or exc.param is None:
        return None
    return _environment_error(exc.ctx, exc.param, exc.message.rstrip("."))


def _options_from_environment() -> dict[str, str]:
    """The current command's options the environment gave, each as `flag (VARIABLE)`: for
    RunSettings.from_environment, so that a conflict names where a value came from."""
    ctx = click.get_current_context()
    named = {}
    for param in ctx.command.params:
        if param.name and (variable := _variable_of(ctx, param)) is not None:
            flag = param.opts[0] if param.opts else param.name
            named[param.name] = f"{flag} ({variable})"
    return named


def _variable_of(ctx: click.Context, param: click.Parameter) -> str | None:
    """The environment variable that gave `param` its value; None when a flag (or the
    default) did."""
    if (
        param.name is None
        or ctx.get_parameter_source(param.name) is not ParameterSource.ENVIRONMENT
    ):
        return None
    names = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or ())
    return next((n for n in names if os.environ.get(n)), None)


def _named_source(exc: OptionValueError) -> UsageError:
    """`exc` as `_from_environment` says it when its option's value came from the environment
    (the value was checked against the other options only once every one was read)."""
    ctx = click.get_current_context(silent=True)
    params = () if ctx is None else ctx.command.params
    param = next((param for param in params if exc.option in param.opts), None)
    message = None if ctx is None or param is None else _environment_error(ctx, param, exc.problem)
    return exc if message is None else UsageError(message)


def _environment_error(ctx: click.Context, param: click.Parameter, reason: str) -> str | None:
    """The error line naming the variable that gave `param` its value; None for a flag's."""
    name = _variable_of(ctx, param)
    if name is None:
        return None
    from sms_blaster.url_text import mask_password

    flag = param.get_error_hint(ctx)
    value = mask_password(os.environ[name])  # a URL's password never reaches stderr
    shown = value if len(value) <= _LONGEST_SHOWN else value[:_LONGEST_SHOWN] + "…"
    return f"{name}={shown}: {reason} (for {flag}); fix or unset {name}"


# C0 and C1 controls, DEL, and the bidirectional overrides, marks and isolates: text that
# could move the cursor, recolour or clear the terminal, or reorder what the reader sees.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """`text` with every control character escaped, so a line cannot drive the terminal."""
    return _UNSAFE.sub(lambda match: ascii(match.group())[1:-1], text)


def _error(message: str, exit_code: int) -> None:
    logs.say(sys.stderr, f"Error: {printable(message)}", logs.Level.ERROR, exit_code=exit_code)


class _QuietStream(io.TextIOBase):
    """stderr that cannot fail the run: after a hangup the terminal is gone (EIO), and then
    progress, the summary and the error line go nowhere instead of raising mid-drain."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._guard(self._stream.write, text)
        return len(text)

    def flush(self) -> None:
        self._guard(self._stream.flush)

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]  # TextIOBase declares it a str attribute
        return self._stream.encoding

    def _guard(self, call: Callable[..., object], *args: str) -> None:
        try:
            call(*args)
        except OSError:
            # Send the terminal's fd to /dev/null, so what is buffered, and the interpreter's
            # last flush, go nowhere quietly instead of failing again.
            with contextlib.suppress(OSError, ValueError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, self._stream.fileno())
                os.close(devnull)
                self._stream.flush()
