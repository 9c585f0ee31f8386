"""The transports through an HTTP proxy (tests/forward_proxy.py, on loopback): a tunnel a
connection, TLS to the provider through it, the proxy's credentials, and what each failure of
the CONNECT exchange is (never written: safe to resend; a refusal for good: fatal). The proxy's
password never shows. Whole `send` runs through HTTPS_PROXY / HTTP_PROXY, and NO_PROXY.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sms_blaster.models import Message, Outcome
from sms_blaster.providers.vonage_sms import VonageSms
from sms_blaster.retry import SilentStart
from sms_blaster.simulator import RunningSimulator, SimulatorConfig, start_simulator
from sms_blaster.transport import base as transport_base
from sms_blaster.transport.aiohttp_transport import AiohttpTransport
from sms_blaster.transport.base import Transport, TransportName, pace_again_with
from sms_blaster.transport.choice import Choice, choose, open_transport
from sms_blaster.transport.failures import Failure, failure_result
from sms_blaster.transport.lean import LeanTransport
from sms_blaster.transport.proxy import parse_proxy
from tests.cli_helpers import cli_env, number, run_cli, start_cli, write_csv
from tests.forward_proxy import ForwardProxy, Refusal, lean_through_proxy
from tests.test_deploy_configs import Certificate, make_certificate
from tests.test_transport_conformance import RawServer, answers_each, message, outcome

URL = "https://sms.test"
PASSWORD = "p@ss:w/rd 1"  # characters a URL must percent-encode
USERINFO = "ops:p%40ss%3Aw%2Frd%201"
TOKEN = "b3BzOnBAc3M6dy9yZCAx"  # base64 of ops:PASSWORD


@contextlib.asynccontextmanager
async def tls_simulator(folder: Path) -> AsyncIterator[tuple[RunningSimulator, Certificate]]:
    """The simulator over TLS, with a fresh self-signed certificate for 127.0.0.1."""
    cert = make_certificate(folder)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert.cert, cert.key)
    async with await start_simulator(SimulatorConfig(), ssl_context=context) as simulator:
        yield simulator, cert


def journal_bytes(folder: Path) -> bytes:
    """The journal's files as stored (the database, its WAL and side files)."""
    return b"".join(p.read_bytes() for p in folder.iterdir() if p.name.startswith("j.db"))


def trusting(name: TransportName, proxy_url: str, cert: Certificate, window: int = 1) -> Transport:
    """Transport `name` through `proxy_url`, trusting the test certificate."""
    if name is TransportName.AIOHTTP:
        return AiohttpTransport(window, 5.0, proxy_url, ssl_context=cert.context)
    return LeanTransport(window, 5.0, ssl_context=cert.context, proxy=parse_proxy(proxy_url))


def vonage(url: str) -> VonageSms:
    return VonageSms("test-key", "test-secret", "Shop", url)


# --- through a tunnel ----------------------------------------------------------------------------


async def test_an_https_provider_is_reached_through_one_tunnel_a_connection(
    tmp_path: Path,
) -> None:
    """Three messages, one connection: one CONNECT to the provider's host and port, TLS to the
    provider through it, each message sent once."""
    async with tls_simulator(tmp_path) as (simulator, cert):
        port = simulator.url.rsplit(":", 1)[1]
        provider = vonage(simulator.url)
        async with lean_through_proxy(1, 5.0, ssl_context=cert.context) as (transport, proxy):
            exchanges = [await transport.send(provider, message(to=number(n))) for n in (1, 2, 3)]
        stats = await simulator.stats()
    assert [outcome(exchange) for exchange in exchanges] == [(Outcome.SENT, "0")] * 3
    assert (proxy.tunnels, stats["accepted"]) == (1, 3)
    assert proxy.connects[0].startswith(
        f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode()
    )
    assert b"Proxy-Authorization" not in proxy.connects[0]


async def test_the_provider_s_certificate_is_checked_through_the_tunnel(tmp_path: Path) -> None:
    """The tunnel opens, but the certificate is not for the host asked for (localhost): TLS
    fails as it does without a proxy, fatal, and no message was read."""
    async with tls_simulator(tmp_path) as (simulator, cert):
        provider = vonage(simulator.url.replace("127.0.0.1", "localhost"))
        async with lean_through_proxy(1, 5.0, ssl_context=cert.context) as (transport, proxy):
            exchange = await transport.send(provider, message())
        stats = await simulator.stats()
    assert outcome(exchange) == (Outcome.FATAL, "tls_error")
    assert "through the proxy" in exchange.result.detail
    assert (proxy.tunnels, stats["requests"]) == (1, 0)


async def test_an_http_provider_is_reached_through_a_tunnel_too() -> None:
    """http:// through the proxy: a tunnel as well (not a request in absolute form), so what
    the connection shows is what the provider did."""
    async with (
        await start_simulator(SimulatorConfig()) as simulator,
        lean_through_proxy(2, 5.0) as (transport, proxy),
    ):
        exchange = await transport.send(vonage(simulator.url), message())
    assert outcome(exchange) == (Outcome.SENT, "0")
    assert proxy.tunnels == 1


async def test_the_proxy_url_s_user_and_password_are_sent_percent_decoded() -> None:
    """`http://ops:p%40ss…@host`: Proxy-Authorization carries the decoded password; the proxy
    that asks for it opens the tunnel."""
    async with (
        await start_simulator(SimulatorConfig()) as simulator,
        ForwardProxy("ops", PASSWORD) as proxy,
    ):
        transport = LeanTransport(1, 5.0, proxy=parse_proxy(proxy.url(USERINFO)))
        exchange = await transport.send(vonage(simulator.url), message())
        await transport.close()
    assert outcome(exchange) == (Outcome.SENT, "0")
    assert proxy.tunnels == 1
    assert f"Proxy-Authorization: Basic {TOKEN}\r\n".encode() in proxy.connects[0]


# --- a CONNECT that fails ----------------------------------------------------------------------


async def _sent_once_through(proxy: ForwardProxy, tmp_path: Path, name: TransportName) -> None:
    """One message through `proxy` to the TLS simulator: sent, in one tunnel, accepted once."""
    async with tls_simulator(tmp_path) as (simulator, cert), proxy:
        transport = trusting(name, proxy.url(), cert)
        exchange = await transport.send(vonage(simulator.url), message())
        await transport.close()
        stats = await simulator.stats()
    assert outcome(exchange) == (Outcome.SENT, "0"), exchange.result.detail
    assert (proxy.tunnels, stats["accepted"]) == (1, 1)


@pytest.mark.parametrize(
    ("user", "userinfo", "refusal", "expected"),
    [
        ("ops", "ops:wrong", None, (Outcome.FATAL, "proxy_refused")),
        ("ops", "", None, (Outcome.FATAL, "proxy_refused")),
        (None, "", Refusal(403), (Outcome.FATAL, "proxy_refused")),
        (None, "", Refusal(502), (Outcome.TRANSIENT, "connect_error")),
        (None, "", Refusal(0), (Outcome.TRANSIENT, "connect_error")),
        (None, "", Refusal(-1), (Outcome.TRANSIENT, "connect_error")),
    ],
    ids=["407-wrong-password", "407-no-credentials", "403", "502", "closes", "closes-mid-answer"],
)
@pytest.mark.parametrize("name", list(TransportName))
async def test_a_tunnel_refused_or_cut_was_never_written(
    name: TransportName,
    user: str | None,
    userinfo: str,
    refusal: Refusal | None,
    expected: tuple[Outcome, str],
) -> None:
    """Whatever happens before the tunnel opens, no byte of the request reached the provider:
    a refusal for good (407, 403) stops the run, fatal; the proxy unable to reach the provider
    (502) or closing mid-CONNECT is safe to resend."""
    async with RawServer(answers_each) as server, ForwardProxy(user, "right", refusal) as proxy:
        transport = open_transport(Choice(name, proxy.url(userinfo)), 1, 5.0)
        exchange = await transport.send(vonage(server.url.replace("http:", "https:")), message())
        await transport.close()
    assert outcome(exchange) == expected, exchange.result.detail
    assert (len(proxy.connects), proxy.tunnels, server.connections) == (1, 0, 0)


@pytest.mark.parametrize(
    "raw",
    [b"SSH-2.0-OpenSSH_9.6\r\n\r\n", b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70000 + b"\r\n\r\n"],
    ids=["not-http", "head-too-long"],
)
@pytest.mark.parametrize("name", list(TransportName))
async def test_a_proxy_answering_connect_in_no_http_refuses_for_good(
    name: TransportName, raw: bytes
) -> None:
    """Bytes that are no HTTP answer (or a head longer than any), before the tunnel opened:
    nothing was written: fatal (the proxy would answer every tunnel so; the run stops and its
    rows go to the resume) or, should the proxy's close come first, safe to resend; never
    `connection_lost`, unknown for good."""
    async with (
        RawServer(answers_each) as server,
        ForwardProxy(refusal=Refusal(0, raw=raw)) as proxy,
    ):
        transport = open_transport(Choice(name, proxy.url()), 1, 5.0)
        exchange = await transport.send(vonage(server.url.replace("http:", "https:")), message())
        await transport.close()
    assert outcome(exchange) in {
        (Outcome.FATAL, "proxy_refused"),
        (Outcome.TRANSIENT, "connect_error"),
    }, exchange.result.detail
    assert (len(proxy.connects), proxy.tunnels, server.connections) == (1, 0, 0)


@pytest.mark.parametrize("name", list(TransportName))
@pytest.mark.parametrize(
    ("password", "in_url"),
    [("p\u20acss99", "p%E2%82%ACss99"), ("Zq9\\Wk7", "Zq9\\Wk7")],
    ids=["euro-percent-encoded", "raw-backslash"],
)
async def test_odd_credentials_are_sent_as_the_lean_transport_sends_them(
    tmp_path: Path, name: TransportName, password: str, in_url: str
) -> None:
    """A password with a euro sign (percent-encoded in the URL): both transports send it UTF-8,
    as curl does. One with a raw backslash: aiohttp's URL parser refused it (a ValueError, a
    traceback before anything was sent); both read the proxy URL alike. Either way the proxy
    that expects it opens the tunnel: not a request lost unsent."""
    async with (
        tls_simulator(tmp_path) as (simulator, cert),
        ForwardProxy("ops", password) as proxy,
    ):
        transport = trusting(name, proxy.url(f"ops:{in_url}"), cert)
        exchange = await transport.send(vonage(simulator.url), message())
        await transport.close()
    assert outcome(exchange) == (Outcome.SENT, "0"), exchange.result.detail
    assert proxy.tunnels == 1


@pytest.mark.parametrize("name", list(TransportName))
async def test_a_1xx_answer_before_the_tunnel_s_200_is_passed_over(
    tmp_path: Path, name: TransportName
) -> None:
    """`100 Continue` (any 1xx) then `200` to CONNECT: the tunnel is open, as RFC 9110 reads
    an interim answer, and the message sent once."""
    await _sent_once_through(
        ForwardProxy(before_200=b"HTTP/1.1 100 Continue\r\n\r\n"), tmp_path, name
    )


@pytest.mark.parametrize("name", list(TransportName))
async def test_a_request_that_waited_for_its_tunnel_is_paced_again_before_it_is_written(
    tmp_path: Path, name: TransportName, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy slow to open tunnels: A is handed over, then B, and their tunnels open in turn.
    Their rate slots passed while they waited, so each is paced again before a byte of it is
    written: A, passed by no request, as leaving off its slot (the slots after it are spaced
    from it); B, passed by A, with a new slot. Without it both would leave as their tunnels
    opened, however many slots had passed: a burst at the provider."""
    monkeypatch.setattr(transport_base, "LATE_S", -1.0)  # any wait for a connection is late
    paced: list[tuple[str, bool, int]] = []
    async with (
        tls_simulator(tmp_path) as (simulator, cert),
        ForwardProxy(gated=True) as proxy,
    ):

        async def pace(message: Message, passed: bool) -> bool:
            paced.append((message.to, passed, (await simulator.stats())["requests"]))
            return True

        pace_again_with(pace)  # as the engine does for each of its sending tasks
        transport = trusting(name, proxy.url(), cert, window=2)
        provider = vonage(simulator.url)
        assert proxy.gates is not None
        a = asyncio.create_task(transport.send(provider, message(to=number(1))))
        a_tunnel = await proxy.gates.get()
        b = asyncio.create_task(transport.send(provider, message(to=number(2))))
        b_tunnel = await proxy.gates.get()
        a_tunnel.set()
        a_exchange = await a
        b_tunnel.set()
        b_exchange = await b
        await transport.close()
        stats = await simulator.stats()
    assert [outcome(a_exchange), outcome(b_exchange)] == [(Outcome.SENT, "0")] * 2
    # Who was paced, passed or not, and how many requests the provider had by then.
    assert paced == [(number(1), False, 0), (number(2), True, 1)]
    assert stats["accepted"] == 2


@pytest.mark.parametrize("name", list(TransportName))
async def test_a_request_the_run_stopped_while_it_was_paced_again_is_never_written(
    tmp_path: Path, name: TransportName, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run stops while a request that waited for its tunnel waits for its new slot: it is
    not written (connect_error: the resume sends it), and the provider got nothing."""
    monkeypatch.setattr(transport_base, "LATE_S", -1.0)

    async def stopped(message: Message, passed: bool) -> bool:
        return False

    async with (
        tls_simulator(tmp_path) as (simulator, cert),
        ForwardProxy(gated=True) as proxy,
    ):
        pace_again_with(stopped)
        transport = trusting(name, proxy.url(), cert)
        assert proxy.gates is not None
        sending = asyncio.create_task(transport.send(vonage(simulator.url), message()))
        (await proxy.gates.get()).set()
        exchange = await sending
        await transport.close()
        stats = await simulator.stats()
    assert outcome(exchange) == (Outcome.TRANSIENT, "connect_error"), exchange.result.detail
    assert "the run stopped before the request was written" in exchange.result.detail
    assert stats["requests"] == 0


@pytest.mark.parametrize("name", list(TransportName))
async def test_a_connect_answer_whose_lines_end_with_a_bare_lf_opens_the_tunnel(
    tmp_path: Path, name: TransportName
) -> None:
    """`200` to CONNECT with lines ended by a bare LF (RFC 9112 lets a recipient read them so):
    the tunnel is open and the message sent once, not a wait for a CRLF until the connect
    deadline ("timed out")."""
    answer = b"HTTP/1.1 200 Connection established\nProxy-Agent: t\n\n"
    await _sent_once_through(ForwardProxy(established=answer), tmp_path, name)


async def test_a_proxy_that_is_not_listening_was_never_written() -> None:
    """Nothing listens where the proxy should: connect_error, the proxy named."""
    with socket.socket() as bound:  # bound, never listening: every connect is refused
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        transport = LeanTransport(1, 5.0, proxy=parse_proxy(f"http://127.0.0.1:{port}"))
        exchange = await transport.send(vonage("https://sms.test/sms/json"), message())
        await transport.close()
    assert outcome(exchange) == (Outcome.TRANSIENT, "connect_error")
    assert f"the proxy 127.0.0.1:{port}" in exchange.result.detail


@pytest.mark.parametrize("name", list(TransportName))
async def test_the_proxy_s_password_is_masked_in_what_it_says(name: TransportName) -> None:
    """A proxy that quotes the credentials it was given in its refusal: the result shows
    neither the password nor the Basic token, over either transport."""
    async with ForwardProxy("ops", PASSWORD, Refusal(403, echo=True)) as proxy:
        transport = open_transport(Choice(name, proxy.url(USERINFO)), 1, 5.0)
        exchange = await transport.send(vonage("https://sms.test/sms/json"), message())
        await transport.close()
    result = exchange.result
    shown = f"{result.code} {result.detail}"
    assert result.outcome is Outcome.FATAL
    for secret in (PASSWORD, "p@ss", TOKEN, "cEBzczp3L3Jk"):
        assert secret not in shown, shown
    assert "[redacted]" in shown


# --- whole runs --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TransportName))
async def test_send_through_https_proxy_sends_every_row_once(
    tmp_path: Path, name: TransportName
) -> None:
    """`send` with HTTPS_PROXY (credentials in it) to the simulator over TLS: every row sent,
    once, through tunnels no more than the window; the lean transport stays lean (stderr says
    nothing of a switch)."""
    rows = [(f"r{n}", number(n)) for n in range(1, 41)]
    path = write_csv(tmp_path / "c.csv", rows)
    async with tls_simulator(tmp_path) as (simulator, cert), ForwardProxy("ops", PASSWORD) as proxy:
        env = cli_env(HTTPS_PROXY=proxy.url(USERINFO), SSL_CERT_FILE=str(cert.cert))
        run = await run_cli(
            "send", str(path), "--base-url", simulator.url, "--from", "Shop", "--text", "hi",
            "--no-progress", "--window", "8", "--transport", name.value,
            "--journal", str(tmp_path / "j.db"), env=env,
        )  # fmt: skip
        stats = await simulator.stats()
    assert run.code == 0, run.stderr
    records = run.by_line()
    assert {record["status"] for record in records.values()} == {"sent"}
    assert len(records) == 40
    assert (stats["accepted"], stats["requests"]) == (40, 40)
    assert 1 <= proxy.tunnels <= 8
    assert "aiohttp" not in run.stderr


async def test_a_proxy_refusing_its_credentials_stops_the_run_and_never_shows_them(
    tmp_path: Path,
) -> None:
    """The wrong password, and a proxy that quotes what it was given: the run stops (exit 3,
    the row left to the resume), and neither the password nor its token is in the records,
    stderr or the journal."""
    path = write_csv(tmp_path / "c.csv", [("a", number(1)), ("b", number(2))])
    journal = tmp_path / "j.db"
    async with ForwardProxy("ops", "other", Refusal(403, echo=True)) as proxy:
        env = cli_env(HTTPS_PROXY=proxy.url(USERINFO))
        run = await run_cli(
            "send", str(path), "--base-url", "https://sms.test", "--from", "Shop",
            "--text", "hi", "--no-progress", "--journal", str(journal), env=env,
        )  # fmt: skip
    assert run.code == 3, run.stderr
    codes = {record["error"]["code"] for record in run.records}
    assert "proxy_refused" in codes
    shown = run.stdout + run.stderr.encode()
    stored = journal_bytes(tmp_path)
    for secret in (PASSWORD, "p@ss:w", TOKEN, USERINFO):
        assert secret.encode() not in shown + stored, secret
    assert "[redacted]" in run.stderr + run.stdout.decode()


@pytest.mark.parametrize(
    ("value", "shown", "secret"),
    [
        (f"http://{USERINFO}@proxy.internal:31x8", "http://ops:***@proxy.internal:31x8", "p%40ss"),
        # Raw passwords holding what ends an authority (a parser reads a host and port in them).
        ("http://ops:S3cr3t/2026@proxy.corp:3128", "http://ops:***@proxy.corp:3128", "S3cr3t"),
        ("http://ops:hunter2pw#frag@proxy.corp:3128", "http://ops:***@proxy.corp:3128", "hunter2"),
        ("http://ops:pw?q z@proxy.corp:3128", "http://ops:***@proxy.corp:3128", "pw?q"),
    ],
    ids=["bad-port", "slash", "hash", "question-space"],
)
async def test_a_proxy_url_no_tunnel_can_go_through_is_one_error_line_without_its_password(
    tmp_path: Path, value: str, shown: str, secret: str
) -> None:
    """HTTPS_PROXY that cannot be read: exit 2 before anything is sent, one `Error:` line
    naming the variable, the password masked whatever characters it holds."""
    path = write_csv(tmp_path / "c.csv", [("a", number(1))])
    env = cli_env(HTTPS_PROXY=value)
    run = await run_cli(
        "send", str(path), "--from", "Shop", "--text", "hi", "--no-progress", "--no-journal",
        env=env,
    )  # fmt: skip
    lines = run.stderr.strip().splitlines()
    assert run.code == 2, run.stderr
    assert [line for line in lines if line.startswith("Error:")] == [lines[-1]]
    assert f"HTTPS_PROXY={shown}" in lines[-1]
    assert secret not in run.stderr


@pytest.mark.parametrize("no_proxy", [None, "127.0.0.1"])
async def test_http_proxy_is_gone_through_unless_no_proxy_exempts_the_host(
    tmp_path: Path, no_proxy: str | None
) -> None:
    """HTTP_PROXY for the simulator's http:// URL: through the proxy, lean (stderr says nothing
    of aiohttp); NO_PROXY naming the host: straight to it, the proxy never asked."""
    path = write_csv(tmp_path / "c.csv", [("a", number(1)), ("b", number(2))])
    async with await start_simulator(SimulatorConfig()) as simulator, ForwardProxy() as proxy:
        extra = {"HTTP_PROXY": proxy.url()} | ({"NO_PROXY": no_proxy} if no_proxy else {})
        run = await run_cli(
            "send", str(path), "--base-url", simulator.url, "--from", "Shop", "--text", "hi",
            "--no-progress", "--no-journal", env=cli_env(**extra),
        )  # fmt: skip
    assert run.code == 0, run.stderr
    assert [record["status"] for record in run.records] == ["sent", "sent"]
    assert (len(proxy.connects) > 0) is (no_proxy is None)
    assert "aiohttp" not in run.stderr


async def test_a_proxy_variable_without_a_scheme_is_gone_through_as_http(tmp_path: Path) -> None:
    """HTTP_PROXY=127.0.0.1:PORT, as curl reads it: an http:// proxy, every row through it."""
    path = write_csv(tmp_path / "c.csv", [("a", number(1)), ("b", number(2))])
    async with await start_simulator(SimulatorConfig()) as simulator, ForwardProxy() as proxy:
        env = cli_env(HTTP_PROXY=f"127.0.0.1:{proxy.port}")
        run = await run_cli(
            "send", str(path), "--base-url", simulator.url, "--from", "Shop", "--text", "hi",
            "--no-progress", "--no-journal", env=env,
        )  # fmt: skip
        stats = await simulator.stats()
    assert run.code == 0, run.stderr
    assert [record["status"] for record in run.records] == ["sent", "sent"]
    assert proxy.tunnels >= 1
    assert stats["accepted"] == 2


@pytest.mark.parametrize(
    "value", ["socks5://ops:S3cr3tPw@127.0.0.1:1080", "http://u:S3cr3tPw@[::1"]
)
async def test_a_proxy_no_transport_can_go_through_stops_the_run_before_it_starts(
    tmp_path: Path, value: str
) -> None:
    """A SOCKS proxy, or an http:// one whose brackets cannot be read: one `Error:` line naming
    the variable, exit 2, no traceback, nothing sent (not a run that goes direct)."""
    path = write_csv(tmp_path / "c.csv", [("a", number(1))])
    async with await start_simulator(SimulatorConfig()) as simulator:
        run = await run_cli(
            "send", str(path), "--base-url", simulator.url, "--from", "Shop", "--text", "hi",
            "--no-progress", "--no-journal", env=cli_env(ALL_PROXY=value),
        )  # fmt: skip
        stats = await simulator.stats()
    lines = run.stderr.strip().splitlines()
    assert run.code == 2, run.stderr
    assert lines[-1].startswith("Error: ALL_PROXY=")
    assert "Traceback" not in run.stderr
    assert "S3cr3tPw" not in run.stderr
    assert stats["requests"] == 0


@pytest.mark.parametrize("name", list(TransportName))
async def test_a_second_stop_signal_while_tunnels_open_leaves_their_rows_stopped(
    tmp_path: Path, name: TransportName
) -> None:
    """A proxy that never answers CONNECT, then SIGINT and SIGTERM in one breath (the second
    aborts the requests in flight): no request was written, so every row is `stopped`, pending
    for the resume (not `unknown`, never sent and never resent), and the resume through a
    proxy that works sends each once."""
    rows = [(f"r{n}", number(n)) for n in range(1, 7)]
    path = write_csv(tmp_path / "c.csv", rows)
    journal = str(tmp_path / "j.db")
    args = (
        "send", str(path), "--from", "Shop", "--text", "hi", "--no-progress", "--window", "4",
        "--journal", journal, "--transport", name.value,
    )  # fmt: skip
    async with tls_simulator(tmp_path) as (simulator, cert):
        trust = {"SSL_CERT_FILE": str(cert.cert)}
        async with ForwardProxy(refusal=Refusal(0, hang=True)) as hanging:
            process = await start_cli(
                *args, "--base-url", simulator.url, env=cli_env(HTTPS_PROXY=hanging.url(), **trust)
            )
            async with asyncio.timeout(30):
                await hanging.connected.wait()  # a request is waiting for its tunnel
                process.send_signal(signal.SIGINT)
                process.send_signal(signal.SIGTERM)
                stdout, stderr = await process.communicate()
        first = [json.loads(line) for line in stdout.splitlines()]
        async with ForwardProxy() as working:
            resume = await run_cli(
                *args, "--base-url", simulator.url, env=cli_env(HTTPS_PROXY=working.url(), **trust)
            )
        stats = await simulator.stats()
    assert process.returncode == 130, stderr.decode()
    assert sorted(record["line"] for record in first) == list(range(1, 7))
    assert {(r["status"], r["error"]["kind"]) for r in first} == {("failed", "stopped")}
    assert resume.code == 0, resume.stderr
    assert sorted(r["line"] for r in resume.records if r["status"] == "sent") == list(range(1, 7))
    assert (stats["requests"], stats["accepted"]) == (6, 6)


async def test_an_https_proxy_url_to_a_plain_proxy_names_the_proxy_variable() -> None:
    """HTTPS_PROXY=https://… for a proxy that speaks plain HTTP: TLS to the proxy fails; the
    result blames the proxy's variable, not --base-url, and stops the run (nothing written)."""

    async def plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)  # a TLS hello: answered as a plain proxy answers what it cannot read
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(plain, "127.0.0.1", 0)
    async with server:
        url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        transport = open_transport(choose(TransportName.LEAN, URL, {"HTTPS_PROXY": url}), 1, 5.0)
        exchange = await transport.send(vonage(URL), message())
        await transport.close()
    assert outcome(exchange) == (Outcome.FATAL, "proxy_refused"), exchange.result.detail
    assert "give HTTPS_PROXY as http://" in exchange.result.detail
    assert "--base-url" not in exchange.result.detail


def test_a_start_whose_connections_all_close_through_a_proxy_names_the_proxy() -> None:
    """The first requests all lost before an answer, through a proxy: the stop names its
    variable (its tunnels may be what is cut), not only --base-url."""
    silent = SilentStart("HTTPS_PROXY")
    lost = failure_result(Failure.LOST, "the connection closed")
    reasons = [silent.observe(n, lost) for n in range(1, SilentStart.LOST_LIMIT + 1)]
    assert reasons[-1] is not None
    assert "check HTTPS_PROXY" in reasons[-1]
