"""The real CLI given hostile flags, environment and input: refused in one safe line, exit 2."""

from __future__ import annotations

import asyncio
import os
import resource
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import click
import pytest

from sms_blaster.cli import ENV, cli
from sms_blaster.simulator import RunningSimulator, SimulatorConfig, start_simulator
from tests.cli_helpers import Run, cli_env, number, run_cli, write_csv


@pytest.fixture
async def simulator() -> AsyncIterator[RunningSimulator]:
    running = await start_simulator(SimulatorConfig())
    yield running
    await running.close()


def send_args(sim: RunningSimulator, path: Path | str, *extra: str) -> list[str]:
    return ["send", str(path), "--base-url", sim.url, "--from", "Shop", "--rate", "500", *extra]


def one_error_line(run: Run) -> str:
    """The run's only stderr line, which must be an `Error:` line."""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("Error: "), run.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--timeout", "inf"),
        ("--timeout", "nan"),
        ("--rate", "inf"),
        ("--rate", "nan"),
        ("--rate", "1e400"),
        ("--max-error-rate", "nan"),
    ],
)
async def test_a_non_finite_number_is_a_usage_error_naming_the_option(
    simulator: RunningSimulator, tmp_path: Path, option: str, value: str
) -> None:
    """inf and nan are refused with exit 2 and one line naming the option; nothing is sent."""
    path = write_csv(tmp_path / "c.csv", [("x", "+" + number(1))], header="text,to")
    run = await run_cli(*send_args(simulator, path, option, value))
    assert run.code == 2, run.stderr
    assert run.stdout == b""
    line = one_error_line(run)
    assert option in line
    assert "finite" in line
    assert (await simulator.stats())["requests"] == 0


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--rate", "\u0661\u0660"),  # Arabic-Indic 10
        ("--rate", "1_000"),
        ("--rate", "1e3"),
        ("--window", "\u0663"),
        ("--retries", "\uff15"),  # a fullwidth 5
        ("--price", "1_0"),
    ],
)
async def test_a_number_option_takes_ascii_decimal_digits_only(
    simulator: RunningSimulator, tmp_path: Path, option: str, value: str
) -> None:
    """Other scripts' digits, underscores and exponents, which Python's number parsers read,
    are refused as --ttl refuses them: exit 2 naming the option; nothing sent. Before, an
    Arabic-Indic `--rate` 10 sent at 10/s."""
    path = write_csv(tmp_path / "c.csv", [("x", "+" + number(1))], header="text,to")
    run = await run_cli(*send_args(simulator, path, option, value))
    assert run.code == 2, run.stderr
    line = one_error_line(run)
    assert option in line
    assert "in ASCII digits" in line
    assert (await simulator.stats())["requests"] == 0


@pytest.mark.parametrize("option", ["--window", "--rate", "--retries"])
async def test_a_number_of_thousands_of_digits_is_one_short_error_line(
    simulator: RunningSimulator, tmp_path: Path, option: str
) -> None:
    """4,301 digits (past Python's int() limit, which raised a traceback): exit 2, one line
    that does not echo the thousands of digits; nothing sent."""
    path = write_csv(tmp_path / "c.csv", [("x", "+" + number(1))], header="text,to")
    run = await run_cli(*send_args(simulator, path, option, "1" * 4301))
    assert run.code == 2, run.stderr
    line = one_error_line(run)
    assert option in line
    assert len(line) < 300
    assert (await simulator.stats())["requests"] == 0


@pytest.mark.parametrize(("value", "code"), [("1_000", 2), (" 5 ", 0)])
async def test_a_number_variable_follows_the_flag_rule_spaces_around_it_stripped(
    simulator: RunningSimulator, tmp_path: Path, value: str, code: int
) -> None:
    """SMS_BLASTER_RATE=1_000 is refused naming the variable; ' 5 ' is 5."""
    path = write_csv(tmp_path / "c.csv", [("x", "+" + number(1))], header="text,to")
    args = ["send", str(path), "--base-url", simulator.url, "--from", "Shop"]
    run = await run_cli(*args, env=cli_env(SMS_BLASTER_RATE=value))
    assert run.code == code, run.stderr
    if code == 2:
        assert one_error_line(run).startswith(f"Error: SMS_BLASTER_RATE={value}: ")
        assert (await simulator.stats())["requests"] == 0
    else:
        assert (await simulator.stats())["accepted"] == 1


@pytest.mark.parametrize(
    ("variable", "value"),
    [("SMS_BLASTER_TIMEOUT", "inf"), ("SMS_BLASTER_RATE", "nan"), ("SMS_BLASTER_WINDOW", "abc")],
)
async def test_a_bad_environment_variable_is_named_with_its_value(
    simulator: RunningSimulator, tmp_path: Path, variable: str, value: str
) -> None:
    """A bad value from the environment names the variable, not only the flag it stands for."""
    path = write_csv(tmp_path / "c.csv", [("x", "+" + number(1))], header="text,to")
    args = ["send", str(path), "--base-url", simulator.url, "--from", "Shop"]
    run = await run_cli(*args, env=cli_env(**{variable: value}))
    assert run.code == 2, run.stderr
    assert one_error_line(run).startswith(f"Error: {variable}={value}: ")
    assert (await simulator.stats())["requests"] == 0


@pytest.mark.parametrize(
    ("command", "option"),
    [
        (["worker", "--redis", "redis://127.0.0.1:1", "--campaign", "c"], "--lease"),
        (["receive", "--port", "0", "--store", "{tmp}/x.journal"], "--max-age"),
        (["receive", "--port", "0", "--store", "{tmp}/x.journal"], "--shutdown-delay"),
        (["mock-provider", "--port", "0"], "--latency-ms"),
        (["mock-provider", "--port", "0"], "--rate"),
        (["mock-provider", "--port", "0"], "--callback-retry-s"),
    ],
)
async def test_every_command_refuses_a_non_finite_number(
    tmp_path: Path, command: list[str], option: str
) -> None:
    """Worker, receiver and simulator refuse inf/nan the same way, before they start anything."""
    args = [arg.format(tmp=tmp_path) for arg in command]
    run = await run_cli(*args, option, "inf", timeout_s=20)
    assert run.code == 2, run.stderr
    assert option in one_error_line(run)


async def test_an_error_line_shows_control_characters_escaped(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """A header holding terminal escapes and a bidi override is printed escaped, never raw."""
    path = tmp_path / "c.csv"
    path.write_text("te\x1b[2J\x1b]0;owned\x07xt,ph\u202eone\x9b\x7f\n+447911100001,hi\n")
    run = await run_cli(*send_args(simulator, path))
    assert run.code == 2
    line = one_error_line(run)
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in line)
    assert "\u202e" not in line
    assert "te\\x1b[2J\\x1b]0;owned\\x07xt" in line
    assert "ph\\u202eone\\x9b\\x7f" in line


def url_args(sim: RunningSimulator, tmp_path: Path, option: str, url: str) -> list[str]:
    """A one-row send with `url` as its --base-url or its --callback-url."""
    args = send_args(sim, write_csv(tmp_path / "c.csv", [("x", "+" + number(1))], "text,to"))
    if option == "--base-url":
        args[args.index("--base-url") + 1] = url
    else:
        args += ["--callback-url", url]
    return args


@pytest.mark.slow
@pytest.mark.parametrize("option", ["--base-url", "--callback-url"])
async def test_a_url_whose_port_is_not_a_port_is_refused_before_sending(
    simulator: RunningSimulator, tmp_path: Path, option: str
) -> None:
    """`http://127.0.0.1:http://127.0.0.1:8080` (a URL pasted after a host) is exit 2, not a
    run whose every row ends `unknown`."""
    bad = f"http://127.0.0.1:{simulator.url}"
    run = await run_cli(*url_args(simulator, tmp_path, option, bad))
    assert run.code == 2, run.stderr
    assert f"{option} {bad}: not an http(s) URL" in one_error_line(run)
    assert run.stdout == b""
    assert (await simulator.stats())["requests"] == 0


@pytest.mark.parametrize("option", ["--base-url", "--callback-url"])
@pytest.mark.parametrize("bad", ["http://[::1", "http://u:PW1@[::1"])
async def test_a_url_with_an_unclosed_ipv6_bracket_is_refused_in_one_line(
    simulator: RunningSimulator, tmp_path: Path, option: str, bad: str
) -> None:
    """`http://[::1` (urlsplit's "Invalid IPv6 URL") is one `Error:` line, exit 2, no
    traceback and no password."""
    run = await run_cli(*url_args(simulator, tmp_path, option, bad))
    assert run.code == 2, run.stderr
    assert f"{option} {bad.replace('PW1', '***')}: not an http(s) URL" in one_error_line(run)
    assert (await simulator.stats())["requests"] == 0


async def test_a_base_url_password_never_reaches_stderr(tmp_path: Path) -> None:
    """`--base-url ftp://u:PW@x`: the error masks the password."""
    path = write_csv(tmp_path / "c.csv", [("x", "+" + number(1))], header="text,to")
    run = await run_cli("send", str(path), "--from", "Shop", "--base-url", "ftp://u:FLAGPW1@x")
    assert run.code == 2
    assert one_error_line(run).startswith("Error: --base-url ftp://u:***@x: not an http(s) URL")


@pytest.mark.parametrize("variable", ["SMS_BLASTER_BASE_URL", "SMS_BLASTER_PUSHGATEWAY"])
async def test_a_url_password_from_the_environment_never_reaches_stderr(
    tmp_path: Path, variable: str
) -> None:
    """A URL given by its variable is refused with the password masked."""
    path = write_csv(tmp_path / "c.csv", [("x", "+" + number(1))], header="text,to")
    run = await run_cli(
        "send", str(path), "--from", "Shop", env=cli_env(**{variable: "ftp://u:FLAGPW1@x"})
    )
    assert run.code == 2
    assert "FLAGPW1" not in run.stderr
    assert "u:***@x" in one_error_line(run)


@pytest.mark.parametrize("name", ["", "  "])
async def test_a_blank_campaign_name_is_refused_in_one_line(
    simulator: RunningSimulator, tmp_path: Path, name: str
) -> None:
    """`--campaign ''` (a script's unset variable) is one `Error:` line and exit 2, nothing
    sent; before, it was the campaign `default` in silence."""
    path = write_csv(tmp_path / "c.csv", [("x", "+" + number(1))], header="text,to")
    run = await run_cli(*send_args(simulator, path, "--campaign", name))
    assert run.code == 2, run.stderr
    assert "--campaign" in one_error_line(run)
    assert "empty; give the campaign's name" in run.stderr
    assert (await simulator.stats())["requests"] == 0


@pytest.mark.parametrize(
    ("flags", "env", "named"),
    [
        (["--default-region", ""], {}, "--default-region"),
        ([], {"SMS_BLASTER_DEFAULT_REGION": ""}, "SMS_BLASTER_DEFAULT_REGION=: empty"),
        ([], {"SMS_BLASTER_CAMPAIGN": ""}, "SMS_BLASTER_CAMPAIGN=: empty"),
    ],
    ids=["region-flag", "region-variable", "campaign-variable"],
)
async def test_an_empty_region_or_campaign_is_refused_as_the_blank_flag_is(
    simulator: RunningSimulator,
    tmp_path: Path,
    flags: list[str],
    env: dict[str, str],
    named: str,
) -> None:
    """`--default-region ''` was no region (every national number then failed
    invalid_number, exit 1), and a variable set to '' was taken as unset (the campaign
    `default`): one line naming the flag or the variable, exit 2, nothing sent."""
    path = write_csv(tmp_path / "c.csv", [("x", "07911100001")], header="text,to")
    run = await run_cli(*send_args(simulator, path, *flags), env=cli_env(**env))
    assert run.code == 2, run.stderr
    line = one_error_line(run)
    assert named in line
    assert "empty; give" in line
    assert (await simulator.stats())["requests"] == 0


async def test_a_journal_that_is_no_regular_file_is_refused_before_anything_is_created(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """`--journal /dev/null`: exit 4 naming the path, and neither SQLite's `-journal` nor the
    lock file beside it is made (before, `/dev/null-journal` and `/dev/null.lock` were left)."""
    left = [Path("/dev/null-journal"), Path("/dev/null.lock")]
    if any(path.exists() for path in left):
        pytest.skip("an earlier run left files beside /dev/null")
    path = write_csv(tmp_path / "c.csv", [("x", "+" + number(1))], header="text,to")
    run = await run_cli(*send_args(simulator, path, "--journal", "/dev/null"))
    assert run.code == 4, run.stderr
    assert one_error_line(run).startswith(
        "Error: /dev/null: cannot use it as a journal (not a regular file)"
    )
    assert not any(path.exists() for path in left)
    assert (await simulator.stats())["requests"] == 0


def no_file_may_grow() -> None:
    """In the child: no file may grow (Python ignores SIGXFSZ: writes fail, as on a full disk)."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))


async def test_a_journal_on_a_full_disk_at_start_is_one_line_that_says_to_free_space(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """The lock file cannot be written (the disk is full, or the file size limit reached): exit
    4 in one line, not a traceback, saying to free space and that another journal resends."""
    path = write_csv(tmp_path / "c.csv", [("x", "+" + number(1))], header="text,to")
    assert (await run_cli(*send_args(simulator, path))).code == 0
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sms_blaster", *send_args(simulator, path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=cli_env(),
        preexec_fn=no_file_may_grow,
    )  # fmt: skip
    async with asyncio.timeout(60):
        stdout, stderr = await process.communicate()
    assert process.returncode is not None
    run = Run(process.returncode, stdout, stderr.decode())
    assert run.code == 4, run.stderr
    line = one_error_line(run)
    assert line.startswith(f"Error: {path}.journal: cannot write its lock file (File too large)")
    assert "free space on its filesystem" in line
    assert "would send every row of the input again" in line
    assert (await simulator.stats())["requests"] == 1  # the first run's


async def test_a_damaged_journal_is_refused_saying_another_journal_sends_every_row_again(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """A journal cut in half: its refusal's advice (another --journal, or none) would resend
    every row the earlier run sent, and says so, as the refusal of other settings does."""
    path = write_csv(tmp_path / "c.csv", [("x", "+" + number(1))], header="text,to")
    assert (await run_cli(*send_args(simulator, path))).code == 0
    journal = tmp_path / "c.csv.journal"
    os.truncate(journal, journal.stat().st_size // 2)
    run = await run_cli(*send_args(simulator, path))
    assert run.code == 4, run.stderr
    line = one_error_line(run)
    assert "cannot use it as a journal (database disk image is malformed)" in line
    assert "would send every row of the input again" in line
    assert "free space" not in line
    assert (await simulator.stats())["requests"] == 1


async def test_a_campaign_name_that_is_no_utf8_is_refused_in_one_line(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """`--campaign $'bad\\xffname'` is one `Error:` line and exit 2, nothing sent."""
    path = write_csv(tmp_path / "c.csv", [("x", "+" + number(1))], header="text,to")
    run = await run_cli(*send_args(simulator, path, "--campaign", "bad\udcffname"))
    assert run.code == 2, run.stderr
    assert "--campaign" in one_error_line(run)
    assert "not valid UTF-8" in run.stderr
    assert (await simulator.stats())["requests"] == 0


@pytest.mark.parametrize(
    "sender", ["Shop&x=y", "Shop!", " Shop", "Shop  Co", "Caf\u00e9", "A" * 12]
)
async def test_a_name_sender_of_other_than_letters_and_digits_is_refused(
    simulator: RunningSimulator, tmp_path: Path, sender: str
) -> None:
    """--from as a name is ASCII letters and digits with single inner spaces; else exit 2."""
    path = write_csv(tmp_path / "c.csv", [("x", "+" + number(1))], header="text,to")
    args = ["send", str(path), "--base-url", simulator.url, "--from", sender]
    run = await run_cli(*args)
    assert run.code == 2, run.stderr
    assert "--from" in one_error_line(run)
    assert (await simulator.stats())["requests"] == 0


async def test_a_name_sender_with_a_space_between_words_is_sent(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """'My Shop 2' is a valid name sender and reaches the provider as given."""
    path = write_csv(tmp_path / "c.csv", [("x", "+" + number(1))], header="text,to")
    run = await run_cli("send", str(path), "--base-url", simulator.url, "--from", "My Shop 2")
    assert run.code == 0, run.stderr
    stats = await simulator.stats()
    assert stats["recipients"][number(1)]["messages"][0]["from"] == "My Shop 2"


@pytest.mark.parametrize("command", ["send", "enqueue", "worker", "receive"])
def test_every_option_of_a_run_command_can_come_from_the_environment(command: str) -> None:
    """Each option reads an SMS_BLASTER_ variable, or its provider's credential variable."""
    credentials = {"VONAGE_API_KEY", "VONAGE_API_SECRET", "VONAGE_APPLICATION_ID",
                   "VONAGE_PRIVATE_KEY_PATH", "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN",
                   "TWILIO_MESSAGING_SERVICE_SID"}  # fmt: skip
    options = [p for p in cli.commands[command].params if isinstance(p, click.Option)]
    unread = []
    for option in options:
        names = [option.envvar] if isinstance(option.envvar, str) else list(option.envvar or ())
        if option.name != "help" and not any(
            name.startswith(ENV) or name in credentials for name in names
        ):
            unread.append(option.opts[0])
    assert len(options) > 1
    assert unread == []


@pytest.mark.parametrize(
    ("flags", "environment", "named"),
    [
        (["--journal", "{tmp}/c.journal", "--no-journal"], {}, "--journal and --no-journal"),
        (
            ["--journal", "{tmp}/c.journal"],
            {"SMS_BLASTER_NO_JOURNAL": "1"},
            "--journal and --no-journal (SMS_BLASTER_NO_JOURNAL)",
        ),
        (
            ["--no-journal"],
            {"SMS_BLASTER_JOURNAL": "{tmp}/c.journal"},
            "--journal (SMS_BLASTER_JOURNAL) and --no-journal",
        ),
    ],
)
async def test_a_journal_and_no_journal_together_are_refused_naming_where_each_came_from(
    simulator: RunningSimulator,
    tmp_path: Path,
    flags: list[str],
    environment: dict[str, str],
    named: str,
) -> None:
    """Either could be meant, and they differ in whether a rerun sends every row again: an
    `Error:` line, nothing sent. Before, --no-journal won in silence (from the environment
    too), and a rerun with the same --journal sent every row a second time."""
    path = write_csv(tmp_path / "c.csv", [("x", "+" + number(1))], header="text,to")
    given = [flag.format(tmp=tmp_path) for flag in flags]
    env = cli_env(**{name: value.format(tmp=tmp_path) for name, value in environment.items()})
    run = await run_cli(*send_args(simulator, path, *given), env=env)
    assert run.code == 2, run.stderr
    assert one_error_line(run).startswith(f"Error: {named} both given: ")
    assert (await simulator.stats())["requests"] == 0
    assert not (tmp_path / "c.journal").exists()


async def test_from_pool_from_the_environment_beside_from_names_the_variable(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """A conflict with a value the user never typed names the variable that gave it."""
    pool = tmp_path / "pool.csv"
    pool.write_text("sender,rate\nShop,10\n")
    path = write_csv(tmp_path / "c.csv", [("x", "+" + number(1))], header="text,to")
    run = await run_cli(*send_args(simulator, path), env=cli_env(SMS_BLASTER_FROM_POOL=str(pool)))
    assert run.code == 2, run.stderr
    assert one_error_line(run).startswith(
        "Error: --from and --from-pool (SMS_BLASTER_FROM_POOL) both given: "
    )


@pytest.mark.parametrize(
    ("variable", "value", "extra"),
    [
        ("SMS_BLASTER_FROM", "Shop&Co", {}),
        ("SMS_BLASTER_FROM_POOL", "{tmp}/pool.csv", {}),
        ("SMS_BLASTER_NOT_AFTER", "soon", {}),
        ("SMS_BLASTER_OPTOUTS", "{tmp}/none.journal", {}),
        ("SMS_BLASTER_OPTOUTS", "{tmp}/pool.csv", {}),  # a list, but no opt-out list
        ("SMS_BLASTER_SUPPRESS", "{tmp}/none.txt", {}),
        ("SMS_BLASTER_SUPPRESS", "{tmp}/pool.csv", {}),
        ("SMS_BLASTER_TZ_COLUMN", "zone", {"SMS_BLASTER_QUIET_HOURS": "21:00-08:00"}),
        ("SMS_BLASTER_OUTPUT", "{tmp}/c.csv", {}),
        ("SMS_BLASTER_CALLBACK_URL", "ftp://hooks.example.com/dlr", {}),
        ("SMS_BLASTER_TO_COLUMN", "mobile", {}),
        ("SMS_BLASTER_ENCODING", "utf-9", {}),
        ("SMS_BLASTER_DEFAULT_REGION", "UK", {}),
    ],
)
async def test_a_bad_value_from_the_environment_names_its_variable(
    simulator: RunningSimulator,
    tmp_path: Path,
    variable: str,
    value: str,
    extra: dict[str, str],
) -> None:
    """A value checked against the input or the other options (after every option was read) is
    named as the user gave it: `SMS_BLASTER_FROM=Shop&Co: … (for '--from'); fix or unset
    SMS_BLASTER_FROM`, as a malformed one is. Before, the line named only --from, a flag the
    user never typed. Nothing is sent."""
    path = write_csv(tmp_path / "c.csv", [("x", "+" + number(1))], header="text,to")
    (tmp_path / "pool.csv").write_text("Shop,fast\n")
    given = value.format(tmp=tmp_path)
    args = ["send", str(path), "--base-url", simulator.url, "--rate", "500"]
    if variable not in ("SMS_BLASTER_FROM", "SMS_BLASTER_FROM_POOL"):
        args += ["--from", "Shop"]
    run = await run_cli(*args, env=cli_env(**{variable: given}, **extra))
    assert run.code == 2, run.stderr
    line = one_error_line(run)
    assert line.startswith(f"Error: {variable}={given}: "), line
    assert line.endswith(f"; fix or unset {variable}"), line
    assert (await simulator.stats())["requests"] == 0


@pytest.mark.parametrize(
    ("value", "problem"),
    [("ftp://x", "not an http(s) URL"), ("http://u:PW1@x", "give the credentials in their")],
)
async def test_a_base_url_from_the_environment_that_is_refused_names_its_variable(
    tmp_path: Path, value: str, problem: str
) -> None:
    """SMS_BLASTER_BASE_URL=ftp://x: the line names the variable, as the README promises;
    before, it said `--base-url ftp://x`, a flag the user never typed."""
    path = write_csv(tmp_path / "c.csv", [("x", "+" + number(1))], header="text,to")
    run = await run_cli(
        "send", str(path), "--from", "Shop", env=cli_env(SMS_BLASTER_BASE_URL=value)
    )
    assert run.code == 2, run.stderr
    line = one_error_line(run)
    shown = value.replace("PW1", "***")
    assert line.startswith(f"Error: SMS_BLASTER_BASE_URL={shown}: {problem}"), line
    assert line.endswith("; fix or unset SMS_BLASTER_BASE_URL"), line


async def test_a_journal_from_the_environment_that_cannot_be_used_names_its_variable(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """SMS_BLASTER_JOURNAL in a missing directory: the journal's error (exit 4) says the path
    came from the variable; before, it said only to give another --journal PATH."""
    path = write_csv(tmp_path / "c.csv", [("x", "+" + number(1))], header="text,to")
    journal = tmp_path / "missing" / "c.journal"
    run = await run_cli(*send_args(simulator, path), env=cli_env(SMS_BLASTER_JOURNAL=str(journal)))
    assert run.code == 4, run.stderr
    assert one_error_line(run).startswith(
        f"Error: --journal (SMS_BLASTER_JOURNAL): {journal}: cannot create its lock file"
    )
    assert (await simulator.stats())["requests"] == 0
