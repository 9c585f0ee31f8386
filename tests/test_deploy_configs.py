"""The example balancer configs in docs/ work as written, run by Debian's nginx and HAProxy.

Each example is rendered with its receivers' addresses, a free port and a fresh certificate in
place of the example's (nothing else changes), and put in front of three real `sms-blaster
receive` processes on one shared journal: primaries A (weight 3) and B (weight 1) and the standby.
Callbacks go through it over TLS, signed, as a provider sends them. Who served each one is read
from each receiver's own /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import os
import re
import shutil
import signal
import socket
import sqlite3
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from yarl import URL

from sms_blaster.receiver.signatures import sign_vonage_sms, twilio_signature
from tests.cli_helpers import ReceiverProcess, receiver_process

DOCS = Path(__file__).parent.parent / "docs"
HOST_NAME = "hooks.example.com"
PUBLIC_URL = f"https://{HOST_NAME}"
VONAGE_SECRET = "deploy-test-signature-secret"
TWILIO_TOKEN = "deploy-test-twilio-token"
SECRETS = {"VONAGE_SIGNATURE_SECRET": VONAGE_SECRET, "TWILIO_AUTH_TOKEN": TWILIO_TOKEN}
# The receivers' addresses in both examples, and the names the tests give them.
EXAMPLE_ADDRESSES = {"A": "10.0.0.21:8080", "B": "10.0.0.22:8080", "standby": "10.0.0.23:8080"}
CONCURRENCY = 16  # callbacks in flight at once, as a provider sends them
# Above HAProxy's checks (inter 2s, fall 2): it takes a stopping receiver out before it closes.
SHUTDOWN_DELAY_S = 8.0
_RECEIVED = re.compile(r'^sms_blaster_receipts_received_total\{route="(\w+)"\} (\S+)$', re.M)


def render(text: str, replacements: Mapping[str, str]) -> str:
    """The example with each value replaced; a value missing from it fails the test."""
    for old, new in replacements.items():
        assert old in text, f"the example no longer holds {old!r}: update this test with it"
        text = text.replace(old, new)
    return text


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def address(receiver: ReceiverProcess) -> str:
    return urlsplit(receiver.url).netloc


@dataclass(frozen=True, slots=True)
class Certificate:
    cert: Path
    key: Path
    both: Path  # the certificate and its key in one file, as HAProxy takes them
    context: ssl.SSLContext  # a client context that trusts it


def make_certificate(folder: Path) -> Certificate:
    """A self-signed certificate for hooks.example.com and 127.0.0.1, valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST_NAME)])
    now = datetime.datetime.now(datetime.UTC)
    names = [x509.DNSName(HOST_NAME), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert_path, key_path, both_path = folder / "hooks.pem", folder / "hooks.key", folder / "both.pem"
    cert_path.write_bytes(cert_pem)
    key_path.write_bytes(key_pem)
    both_path.write_bytes(cert_pem + key_pem)
    context = ssl.create_default_context(cadata=cert_pem.decode())
    return Certificate(cert_path, key_path, both_path, context)


# --- the balancers ---------------------------------------------------------------------------


def nginx_config(folder: Path, port: int, receivers: Mapping[str, str], cert: Certificate) -> str:
    """docs/nginx/receivers.conf inside a main config of the test's own (foreground, one worker,
    pid, logs and temporary files in `folder`)."""
    snippet = render(
        (DOCS / "nginx" / "receivers.conf").read_text(),
        {EXAMPLE_ADDRESSES[name]: receivers[name] for name in EXAMPLE_ADDRESSES}
        | {
            "listen 443 ssl;": f"listen 127.0.0.1:{port} ssl;",
            "/etc/ssl/certs/hooks.example.com.pem": str(cert.cert),
            "/etc/ssl/private/hooks.example.com.key": str(cert.key),
            "/var/log/nginx/sms-blaster.log": str(folder / "access.log"),
        },
    )
    return nginx_main_config(folder, snippet)


def nginx_main_config(folder: Path, http: str) -> str:
    """A main config around `http` (the http block's body): foreground, one worker, pid, logs
    and temporary files in `folder`."""
    # As root, nginx would run its worker as `nobody`, who cannot use this folder.
    user = "user root;" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"    {kind}_temp_path {folder / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""{user}
daemon off;
worker_processes 1;
pid {folder / "nginx.pid"};
error_log {folder / "error.log"} warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
{temp}
{http}
}}
"""


def haproxy_config(port: int, receivers: Mapping[str, str], cert: Certificate) -> str:
    """docs/haproxy/receivers.cfg as it is, with no global or defaults section."""
    return render(
        (DOCS / "haproxy" / "receivers.cfg").read_text(),
        {EXAMPLE_ADDRESSES[name]: receivers[name] for name in EXAMPLE_ADDRESSES}
        | {
            "bind :443 ssl crt /etc/ssl/private/hooks.example.com.pem": (
                f"bind 127.0.0.1:{port} ssl crt {cert.both}"
            ),
        },
    )


def executable(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        pytest.fail(
            f"{name} is not installed: `make test` installs Debian's nginx and haproxy "
            "(apt-get install nginx haproxy); the tests run their own instances",
            pytrace=False,
        )
    return found


def balancer_argv(
    kind: str, folder: Path, port: int, receivers: Mapping[str, str], cert: Certificate
) -> list[str]:
    """Write the rendered config; the command that runs it in the foreground."""
    config = folder / f"{kind}.conf"
    if kind == "nginx":
        config.write_text(nginx_config(folder, port, receivers, cert))
        return [executable("nginx"), "-p", str(folder), "-c", str(config),
                "-e", str(folder / "error.log")]  # fmt: skip
    config.write_text(haproxy_config(port, receivers, cert))
    return [executable("haproxy"), "-f", str(config), "-db"]


async def accepts(port: int) -> bool:
    """Whether something listens on the loopback port (one try)."""
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


@contextlib.asynccontextmanager
async def balancer(
    kind: str, folder: Path, receivers: Mapping[str, str], cert: Certificate
) -> AsyncIterator[str]:
    """nginx or HAProxy on a free port in front of `receivers`; its https URL; stopped after."""
    port = free_port()
    log = folder / f"{kind}.stderr"
    with log.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            *balancer_argv(kind, folder, port, receivers, cert),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 10
        while not await accepts(port):
            if process.returncode is not None or time.monotonic() > deadline:
                error_log = folder / "error.log"
                logs = log.read_text() + (error_log.read_text() if error_log.exists() else "")
                pytest.fail(f"{kind} did not start:\n{logs}", pytrace=False)
            await asyncio.sleep(0.02)
        yield f"https://127.0.0.1:{port}"
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                async with asyncio.timeout(10):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()


@dataclass
class Deployment:
    url: str  # the balancer
    receivers: dict[str, ReceiverProcess]
    store: Path
    session: aiohttp.ClientSession
    statuses: dict[str, int] = field(default_factory=dict)  # message id -> the answer's status

    async def deliver(
        self, message_ids: Iterable[str], on_answer: Callable[[], None] = lambda: None
    ) -> None:
        """Send a signed Vonage delivery receipt (POST JSON) for each id, CONCURRENCY at once."""
        slots = asyncio.Semaphore(CONCURRENCY)

        async def one(message_id: str) -> None:
            async with slots:
                body = sign_vonage_sms(dlr(message_id), VONAGE_SECRET, "md5hash", now_s=time.time())
                for attempt in range(3):
                    # A provider retries a callback whose connection dropped unanswered (a kept-
                    # alive connection the balancer closed as it was reused): so does this one.
                    try:
                        async with self.session.post(
                            self.url + "/webhooks/dlr", json=body
                        ) as response:
                            await response.read()
                            self.statuses[message_id] = response.status
                        break
                    except aiohttp.ServerDisconnectedError:
                        if attempt == 2:
                            raise
                on_answer()

        async with asyncio.TaskGroup() as group:
            for message_id in message_ids:
                group.create_task(one(message_id))

    async def received(self, name: str) -> int:
        """Vonage delivery receipts the receiver `name` has received, from its /metrics."""
        async with self.session.get(self.receivers[name].url + "/metrics") as response:
            text = await response.text()
        return sum(int(float(count)) for route, count in _RECEIVED.findall(text) if route == "dlr")

    async def received_by_all(self, *names: str) -> dict[str, int]:
        return {name: await self.received(name) for name in names}

    def acknowledged(self) -> set[str]:
        return {message_id for message_id, status in self.statuses.items() if status == 204}

    def stored(self) -> set[str]:
        with contextlib.closing(sqlite3.connect(self.store)) as db:
            return {row[0] for row in db.execute("SELECT message_id FROM receipts")}


def dlr(message_id: str) -> dict[str, str]:
    return {
        "msisdn": "447911123456",
        "to": "Shop",
        "network-code": "23410",
        "messageId": message_id,
        "price": "0.03330000",
        "status": "delivered",
        "scts": "2401011200",
        "err-code": "0",
        "client-ref": f"c0ffee123456-{message_id[1:]}",
        "message-timestamp": "2024-01-01 12:00:00",
    }


@pytest.fixture(params=["nginx", "haproxy"])
async def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Deployment]:
    """The example config of one balancer in front of A, B and the standby, on one journal."""
    kind: str = request.param
    store = tmp_path / "shared.journal"
    options = ("--store", str(store), "--public-url", PUBLIC_URL,
               "--shutdown-delay", str(SHUTDOWN_DELAY_S))  # fmt: skip
    cert = make_certificate(tmp_path)
    async with contextlib.AsyncExitStack() as stack:
        # The first creates the journal's tables; then the other two start together.
        first = await stack.enter_async_context(receiver_process(*options, env=SECRETS))
        others = await asyncio.gather(
            *(stack.enter_async_context(receiver_process(*options, env=SECRETS)) for _ in range(2))
        )
        receivers = dict(zip(EXAMPLE_ADDRESSES, [first, *others], strict=True))
        addresses = {name: address(receiver) for name, receiver in receivers.items()}
        url = await stack.enter_async_context(balancer(kind, tmp_path, addresses, cert))
        connector = aiohttp.TCPConnector(ssl=cert.context, limit=CONCURRENCY)
        session = await stack.enter_async_context(aiohttp.ClientSession(connector=connector))
        yield Deployment(url, receivers, store, session)


@pytest.mark.slow
async def test_callbacks_go_3_to_1_to_the_primaries_past_a_killed_one_then_to_the_standby(
    deployment: Deployment,
) -> None:
    """Weights hold; a primary SIGKILLed under load costs no callback (the balancer passes its
    requests to the next receiver); with both primaries dead the standby takes every one."""
    first = [f"M{n:05d}" for n in range(400)]
    await deployment.deliver(first)
    shares = await deployment.received_by_all("A", "B", "standby")
    assert set(deployment.statuses.values()) == {204}
    assert shares["A"] + shares["B"] == len(first)
    assert 0.65 <= shares["A"] / len(first) <= 0.85, shares
    assert shares["standby"] == 0

    # A dies while callbacks are in flight: each one still gets its 204, from B.
    second = [f"M{n:05d}" for n in range(1000, 1200)]
    answered = 0

    def kill_a_after_40() -> None:
        nonlocal answered
        answered += 1
        if answered == 40:
            deployment.receivers["A"].process.kill()

    await deployment.deliver(second, kill_a_after_40)
    assert deployment.receivers["A"].process.returncode is not None
    assert {deployment.statuses[m] for m in second} == {204}
    after_a = await deployment.received_by_all("B", "standby")
    assert after_a["B"] >= shares["B"] + len(second) - 40 - CONCURRENCY
    assert after_a["standby"] == 0

    # Both primaries dead: the standby answers everything.
    deployment.receivers["B"].process.kill()
    await deployment.receivers["B"].process.wait()
    third = [f"M{n:05d}" for n in range(2000, 2150)]
    await deployment.deliver(third)
    assert {deployment.statuses[m] for m in third} == {204}
    assert await deployment.received("standby") == len(third)

    assert deployment.acknowledged() == set(first + second + third)
    assert deployment.acknowledged() <= deployment.stored()


@pytest.mark.slow
async def test_a_signed_twilio_callback_reaches_a_receiver_with_its_url_intact(
    deployment: Deployment,
) -> None:
    """The balancer passes the request target as sent: Twilio's signature over the public URL,
    query included, still verifies behind it; only /webhooks/ is public."""
    target = "/webhooks/twilio/status?client_ref=c0ffee123456-7&note=a%2Fb"
    form = {"MessageSid": "SM" + "7" * 32, "MessageStatus": "delivered", "To": "+447911123456",
            "From": "+15005550006", "AccountSid": "AC" + "1" * 32}  # fmt: skip
    signature = twilio_signature(PUBLIC_URL + target, form.items(), TWILIO_TOKEN)
    session, url = deployment.session, URL(deployment.url + target, encoded=True)
    async with session.post(
        url, data=form, headers={"Host": HOST_NAME, "X-Twilio-Signature": signature}
    ) as response:
        assert response.status == 200, await response.text()
    forged = {**form, "MessageStatus": "failed"}
    async with session.post(
        url, data=forged, headers={"Host": HOST_NAME, "X-Twilio-Signature": signature}
    ) as response:
        assert response.status == 401
    for private in ("/healthz", "/metrics"):
        async with session.get(deployment.url + private) as response:
            assert response.status == 404
    assert "SM" + "7" * 32 in deployment.stored()


@pytest.mark.slow
@pytest.mark.parametrize("deployment", ["haproxy"], indirect=True)
async def test_haproxy_takes_a_stopping_receiver_out_on_its_healthz_before_it_closes(
    deployment: Deployment,
) -> None:
    """SIGTERM with --shutdown-delay: /healthz answers 503 while callbacks are still taken, so
    HAProxy's checks stop the traffic to it before its port closes; every callback gets its 204."""
    stop, warm = asyncio.Event(), asyncio.Event()

    def count() -> None:
        if len(deployment.statuses) >= 200:
            warm.set()

    async def keep_sending() -> None:
        batch = 0
        while not stop.is_set():
            await deployment.deliver((f"S{batch:04d}-{n}" for n in range(CONCURRENCY)), count)
            batch += 1

    sending = asyncio.create_task(keep_sending())
    try:
        async with asyncio.timeout(10):
            await warm.wait()
        counts = [await deployment.received("A")]
        assert counts[0] > 0, "A was not in the rotation"
        deployment.receivers["A"].process.send_signal(signal.SIGTERM)
        # Until no new callback came for half a second; by the end of the delay A closes, and
        # the /healthz answer below shows it was still listening when its traffic stopped.
        async with asyncio.timeout(SHUTDOWN_DELAY_S):
            while counts[-3:] != [counts[-1]] * 3:
                await asyncio.sleep(0.25)
                counts.append(await deployment.received("A"))  # it is still listening
        async with deployment.session.get(deployment.receivers["A"].url + "/healthz") as response:
            assert response.status == 503
    finally:
        stop.set()
        await sending
    assert deployment.receivers["A"].process.returncode is None
    assert set(deployment.statuses.values()) == {204}
    assert deployment.acknowledged() <= deployment.stored()
