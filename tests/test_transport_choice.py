"""Which transport a run uses, what the lean one writes and reads, and the `--transport` flag."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sms_blaster.simulator import RunningSimulator, SimulatorConfig, start_simulator
from sms_blaster.transport.base import TransportName
from sms_blaster.transport.choice import choose, exempted, proxy_for, proxy_problem
from sms_blaster.transport.wire import (
    AnswerHeaders,
    InvalidRequestUrl,
    body_runs_to_close,
    keep_alive_s,
    request_head,
)
from sms_blaster.url_text import http_url_problem
from tests.cli_helpers import cli_env, number, run_cli, write_csv

LEAN, AIOHTTP = TransportName.LEAN, TransportName.AIOHTTP
URL = "https://rest.nexmo.com/sms/json"


# --- choosing ----------------------------------------------------------------------------------


def test_with_no_proxy_in_the_environment_the_transport_asked_for_is_used() -> None:
    """Nothing set: lean stays lean, with nothing to say."""
    choice = choose(LEAN, URL, {"PATH": "/bin"})
    assert (choice.name, choice.proxy, choice.note) == (LEAN, None, None)


@pytest.mark.parametrize("variable", ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"])
def test_a_proxy_for_the_url_s_scheme_keeps_the_lean_transport_through_it(variable: str) -> None:
    """Either case, the scheme's own variable or ALL_PROXY: lean, through that proxy's tunnels,
    with nothing to say."""
    choice = choose(LEAN, URL, {variable: "http://proxy.internal:3128"})
    assert (choice.name, choice.proxy, choice.note) == (LEAN, "http://proxy.internal:3128", None)


def test_an_https_proxy_chooses_aiohttp_through_it_and_says_so() -> None:
    """TLS to the proxy itself is aiohttp's: it goes through it, and the note names the
    variable."""
    choice = choose(LEAN, URL, {"HTTPS_PROXY": "https://proxy.internal:3129"})
    assert (choice.name, choice.proxy) == (AIOHTTP, "https://proxy.internal:3129")
    assert choice.note is not None
    assert "HTTPS_PROXY" in choice.note


def test_a_proxy_for_another_scheme_does_not_apply() -> None:
    """HTTP_PROXY is for http:// URLs; an https:// provider is reached directly."""
    assert choose(LEAN, URL, {"HTTP_PROXY": "http://proxy.internal:3128"}).name is LEAN


@pytest.mark.parametrize(
    "no_proxy", ["*", "rest.nexmo.com", ".nexmo.com", "nexmo.com", "other.org, nexmo.com:443"]
)
def test_no_proxy_exempting_the_host_keeps_the_lean_transport(no_proxy: str) -> None:
    """NO_PROXY naming the host, a domain above it, or everything: no proxy, lean."""
    environ = {"HTTPS_PROXY": "http://proxy.internal:3128", "NO_PROXY": no_proxy}
    assert choose(LEAN, URL, environ).name is LEAN


def test_no_proxy_for_another_host_or_port_does_not_exempt() -> None:
    """A sibling name, a longer name, or another port is no exemption."""
    assert not exempted("rest.nexmo.com", 443, "api.nexmo.com,xrest.nexmo.com,rest.nexmo.com:8443")


@pytest.mark.parametrize(
    "environ",
    [
        {"ALL_PROXY": "socks5://127.0.0.1:1080"},
        {"HTTPS_PROXY": "ftp://127.0.0.1:21"},
        # A lower-case SOCKS proxy is the one that applies: it hides no valid ALL_PROXY.
        {"https_proxy": "socks5h://u:pw@127.0.0.1:1080", "ALL_PROXY": "http://proxy.internal:1"},
    ],
)
def test_a_socks_or_other_proxy_is_refused_not_passed_by(environ: dict[str, str]) -> None:
    """A proxy neither transport speaks: one error line naming the variable (the password
    masked), rather than a run that goes direct as if no proxy were set."""
    problem = proxy_problem(URL, environ)
    assert problem is not None
    variable = next(iter(environ))
    assert problem.startswith(f"{variable}=")
    assert f"unset {variable}" in problem
    assert "pw" not in problem


@pytest.mark.parametrize(
    ("value", "proxy"),
    [
        ("127.0.0.1:3128", "http://127.0.0.1:3128"),
        ("user:pass@proxy.internal:3128", "http://user:pass@proxy.internal:3128"),
        ("proxy.internal", "http://proxy.internal"),
    ],
)
def test_a_proxy_without_a_scheme_is_read_as_http(value: str, proxy: str) -> None:
    """As curl reads it: `host:port` (credentials too) is an http:// proxy, gone through by
    the lean transport."""
    choice = choose(LEAN, URL, {"HTTPS_PROXY": value})
    assert (choice.name, choice.proxy, choice.variable) == (LEAN, proxy, "HTTPS_PROXY")
    assert proxy_problem(URL, {"HTTPS_PROXY": value}) is None


@pytest.mark.parametrize(
    "value",
    ["http://user:pw@[::1:8080", "http://[::1", "http://u:pw@]:8080", "http://u:pw@[zz]:8080"],
)
def test_a_malformed_ipv6_proxy_url_is_a_problem_not_an_exception(value: str) -> None:
    """Brackets urllib cannot read: a problem named, the password masked, nothing raised."""
    problem = proxy_problem(URL, {"HTTPS_PROXY": value})
    assert problem is not None
    assert problem.startswith("HTTPS_PROXY=")
    assert "pw" not in problem


@given(
    url=st.one_of(st.text(), st.sampled_from([URL, "http://127.0.0.1:8090/sms/json"])),
    value=st.one_of(
        st.text(),
        st.text(st.sampled_from("htps:/@[]:1.zu% ")),
        st.builds("http://{}".format, st.text(st.sampled_from("[]:@1fz/%. "))),
    ),
    no_proxy=st.text(),
)
def test_reading_the_proxy_variables_never_raises(url: str, value: str, no_proxy: str) -> None:
    """Whatever the URL, the proxy variable and NO_PROXY hold: a choice or a problem, never an
    exception (a traceback before anything is sent)."""
    for variable in ("HTTPS_PROXY", "HTTP_PROXY", "all_proxy"):
        environ = {variable: value, "NO_PROXY": no_proxy}
        proxy_for(url, environ)
        proxy_problem(url, environ)
        if proxy_problem(url, environ) is None and http_url_problem(url) is None:
            choose(LEAN, url, environ)


def test_aiohttp_asked_for_goes_through_the_proxy_without_a_note() -> None:
    """--transport aiohttp with a proxy set: through the proxy, nothing to explain."""
    choice = choose(AIOHTTP, URL, {"HTTPS_PROXY": "http://proxy.internal:3128"})
    assert (choice.name, choice.proxy, choice.note) == (AIOHTTP, "http://proxy.internal:3128", None)


# --- the lean transport's bytes ----------------------------------------------------------------


def test_a_request_is_the_prebuilt_head_then_its_length_and_body() -> None:
    """Request line, Host with a non-default port, our headers, the provider's, the length."""
    head = request_head("http://127.0.0.1:8090/sms/json?x=1", {"Content-Type": "text/plain"})
    assert head.request(b"hello") == (
        b"POST /sms/json?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8090\r\nUser-Agent: sms-blaster\r\n"
        b"Accept: */*\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
    )
    assert (head.origin.host, head.origin.port, head.origin.tls) == ("127.0.0.1", 8090, False)


def test_the_default_port_is_not_written_in_host() -> None:
    """https on 443: Host is the name alone, and the connection goes to 443 over TLS."""
    head = request_head(URL, {})
    assert b"\r\nHost: rest.nexmo.com\r\n" in head.prefix
    assert (head.origin.port, head.origin.tls) == (443, True)


@pytest.mark.parametrize("url", ["ftp://example.com/x", "http:///x", "http://example.com:99999/"])
def test_a_url_no_request_can_go_to_is_refused(url: str) -> None:
    """Another scheme, no host, a port that is not one."""
    with pytest.raises(InvalidRequestUrl):
        request_head(url, {})


def test_a_header_that_would_split_the_request_is_refused() -> None:
    """A line break in a value would write a header of its own."""
    with pytest.raises(ValueError, match="line break"):
        request_head(URL, {"Authorization": "Bearer x\r\nX-Evil: 1"})


def test_answer_headers_are_found_in_any_case_first_value_first() -> None:
    """Retry-After by any spelling; the first of two values."""
    headers = AnswerHeaders([(b"retry-after", b"7"), (b"Retry-After", b"9")])
    assert (headers.get("Retry-After"), headers.get("RETRY-AFTER"), headers.get("x")) == (
        "7",
        "7",
        None,
    )


def test_keep_alive_timeout_is_read_from_the_header() -> None:
    """`Keep-Alive: timeout=5, max=100` -> 5 s; none said -> None."""
    assert keep_alive_s([(b"Keep-Alive", b"timeout=5, max=100")]) == 5.0
    assert keep_alive_s([(b"Connection", b"keep-alive")]) is None


def test_only_a_body_without_length_or_chunking_runs_to_the_close() -> None:
    """No Content-Length nor Transfer-Encoding (and a status that has a body)."""
    assert body_runs_to_close(200, [(b"Server", b"x")])
    assert not body_runs_to_close(200, [(b"Content-Length", b"3")])
    assert not body_runs_to_close(200, [(b"Transfer-Encoding", b"chunked")])
    assert not body_runs_to_close(204, [])


# --- the flag ------------------------------------------------------------------------------------


@pytest.fixture
async def simulator() -> AsyncIterator[RunningSimulator]:
    running = await start_simulator(SimulatorConfig())
    yield running
    await running.close()


async def test_a_transport_that_is_none_is_one_error_line_naming_the_choices(
    tmp_path: Path,
) -> None:
    """--transport curl: exit 2, one `Error:` line that lists lean and aiohttp."""
    path = write_csv(tmp_path / "c.csv", [("a", number(1))])
    run = await run_cli("send", str(path), "--from", "Shop", "--transport", "curl")
    lines = run.stderr.strip().splitlines()
    assert run.code == 2
    assert [line for line in lines if line.startswith("Error:")] == [lines[-1]]
    assert "'lean'" in lines[-1]
    assert "'aiohttp'" in lines[-1]


async def test_an_https_proxy_in_the_environment_is_said_once_on_stderr(
    tmp_path: Path, simulator: RunningSimulator
) -> None:
    """HTTP_PROXY an https:// proxy for the provider's http URL: aiohttp goes through it, and
    stderr says so once, however many rows (the simulator speaks no TLS: the run stops)."""
    path = write_csv(tmp_path / "c.csv", [("a", number(1)), ("b", number(2))])
    env = cli_env(HTTP_PROXY=simulator.url.replace("http:", "https:"))
    run = await run_cli(
        "send", str(path), "--base-url", "http://sms.test", "--from", "Shop", "--text", "hi",
        "--no-progress", "--no-journal", env=env,
    )  # fmt: skip
    assert run.stderr.count("HTTP_PROXY is an https:// proxy") == 1, run.stderr


@pytest.mark.parametrize(
    ("host", "no_proxy"),
    [
        ("127.0.0.1", "127.0.0.0/8"),  # a network covers its addresses
        ("10.1.2.3", " other.org , 10.0.0.0/8 "),  # spaces around the entries
        ("::1", "::1/128"),
        ("::1", "[::1]"),  # an IPv6 address, bracketed or not
        ("::1", "::1"),
        ("rest.nexmo.com", "*.nexmo.com"),  # a leading `*.`, as curl reads it
        ("rest.nexmo.com", ".nexmo.com"),
        ("nexmo.com", ".nexmo.com"),  # a `.domain` covers the domain itself too
        ("rest.nexmo.com", "nexmo.com."),  # a trailing dot: the same name
        ("rest.nexmo.com.", "rest.nexmo.com"),
        ("rest.nexmo.com", "REST.Nexmo.com"),
        ("127.0.0.1", "127.0.0.0/8:443"),  # a port after a network
        ("::1", "[::1]:443"),
    ],
)
def test_no_proxy_forms_curl_and_python_read_exempt_the_host(host: str, no_proxy: str) -> None:
    """The NO_PROXY forms curl and Python's urllib honour, each exempting the host."""
    assert exempted(host, 443, no_proxy)


@pytest.mark.parametrize(
    ("host", "no_proxy"),
    [
        ("128.0.0.1", "127.0.0.0/8"),
        ("localhost", "127.0.0.0/8"),  # names are not resolved: a network covers addresses
        ("evilnexmo.com", "*.nexmo.com"),
        ("127.0.0.1", "127.0.0.0/8:8443"),  # another port
        ("::2", "::1"),
        ("127.0.0.1", "127.0.0.0/33, 127.0.0.0.1"),  # no network, no address: no exemption
    ],
)
def test_no_proxy_forms_that_do_not_cover_the_host(host: str, no_proxy: str) -> None:
    assert not exempted(host, 443, no_proxy)


def test_spaces_around_a_proxy_value_are_not_part_of_it() -> None:
    """` http://proxy.internal:3128 ` (a pasted value): the proxy, read as curl reads it."""
    environ = {"HTTPS_PROXY": " http://proxy.internal:3128\t"}
    assert proxy_for(URL, environ) == ("HTTPS_PROXY", "http://proxy.internal:3128")
    assert proxy_problem(URL, environ) is None


@pytest.mark.parametrize("port", ["0", "99999", "abc", "-1"])
def test_every_bad_proxy_port_is_said_the_same_way(port: str) -> None:
    problem = proxy_problem(URL, {"HTTPS_PROXY": f"http://proxy.internal:{port}"})
    assert problem is not None
    assert "its port is no number from 1 to 65535" in problem
