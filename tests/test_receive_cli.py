"""`sms-blaster receive` as a real process: SIGTERM drains, --emit, and usage errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import redis

from sms_blaster.journal import schema
from sms_blaster.receiver import signatures
from tests.cli_helpers import ReceiverProcess, receiver_process, run_cli


def dlr_query(message_id: str) -> dict[str, str]:
    return {
        "messageId": message_id,
        "status": "delivered",
        "msisdn": "447700900123",
        "to": "Shop",
        "err-code": "0",
        "client-ref": f"c0ffee123456-{message_id[1:]}",
    }


async def received(session: aiohttp.ClientSession, receiver: ReceiverProcess, count: int) -> None:
    """Wait until the receiver's handlers have taken `count` callbacks, by its /metrics."""
    async with asyncio.timeout(10):
        while True:
            async with session.get(receiver.url + "/metrics") as response:
                totals = re.findall(
                    r"^sms_blaster_receipts_received_total\{[^}]*\} (\S+)$",
                    await response.text(),
                    re.MULTILINE,
                )
            if sum(map(float, totals)) >= count:
                return
            await asyncio.sleep(0.01)  # another process's counter: polled, no event to wait on


def stored_ids(path: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return {row[0] for row in connection.execute("SELECT message_id FROM receipts")}


async def test_sigterm_drains_every_accepted_receipt_into_the_store_and_exits_0(
    tmp_path: Path,
) -> None:
    """Every callback the receiver had read gets an answer; every acknowledged one is stored.

    A request still in the client's queue, or on a connection the receiver closes before reading
    it, fails on the client's side: HTTP lets that happen, and the provider sends it again.
    """
    store = tmp_path / "store.journal"
    async with receiver_process("--store", str(store)) as receiver:
        acked: set[str] = set()
        answered: list[int] = []
        failed = 0
        first_acks = asyncio.Event()

        async def deliver(session: aiohttp.ClientSession, message_id: str) -> None:
            nonlocal failed
            try:
                async with session.get(
                    receiver.url + "/webhooks/dlr", params=dlr_query(message_id)
                ) as response:
                    answered.append(response.status)
                    if response.status == 204:
                        acked.add(message_id)
                        if len(acked) >= 50:
                            first_acks.set()
            except aiohttp.ClientError:
                failed += 1

        connector = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(connector=connector) as session:
            senders = [asyncio.create_task(deliver(session, f"M{n}")) for n in range(1, 601)]
            async with asyncio.timeout(20):
                await first_acks.wait()
            receiver.process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(20):
                await asyncio.gather(*senders)
        code, _ = await receiver.finish()
    assert code == 0, "".join(receiver.stderr_lines)
    assert len(acked) >= 50
    assert acked <= stored_ids(store)
    (stopped,) = [line for line in receiver.stderr_lines if "stopped:" in line]
    match = re.search(r"stopped: (\d+) callbacks received", stopped)
    assert match is not None, stopped
    received = int(match[1])
    assert len(answered) >= received  # none that the receiver had read was left unanswered
    assert len(answered) + failed == 600


@pytest.mark.slow
async def test_sigterm_stops_a_receiver_on_redis_that_processes_receipts(redis_url: str) -> None:
    """With --redis and --emit, SIGTERM while receipts flow: exit 0, and every acknowledged
    receipt is in the stream. (The stop cancels the processing task; a cancellation redis-py lost
    kept the process running until a second signal.)"""
    async with receiver_process("--redis", redis_url, "--emit") as receiver:
        acked: set[str] = set()
        first_acks = asyncio.Event()

        async def deliver(session: aiohttp.ClientSession, message_id: str) -> None:
            with contextlib.suppress(aiohttp.ClientError):  # refused at the stop: sent again
                async with session.get(
                    receiver.url + "/webhooks/dlr", params=dlr_query(message_id)
                ) as response:
                    if response.status == 204:
                        acked.add(message_id)
                        if len(acked) >= 50:
                            first_acks.set()

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16)) as session:
            senders = [asyncio.create_task(deliver(session, f"M{n}")) for n in range(1, 301)]
            async with asyncio.timeout(20):
                await first_acks.wait()
            receiver.process.send_signal(signal.SIGTERM)
            code, _ = await receiver.finish()
            async with asyncio.timeout(20):
                await asyncio.gather(*senders)
    assert code == 0, "".join(receiver.stderr_lines)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        entries: Any = client.xrange("smsb:receipts")
        stored = {fields["message_id"] for _, fields in entries}
    finally:
        client.close()
    assert len(acked) >= 50
    assert acked <= stored


async def test_emit_writes_each_stored_receipt_once_as_a_json_line(tmp_path: Path) -> None:
    """Other tools read the receipt flow from stdout; duplicates are not repeated."""
    store = tmp_path / "store.journal"
    async with receiver_process("--store", str(store), "--emit") as receiver:
        async with aiohttp.ClientSession() as session:
            for message_id in ("M1", "M2", "M1"):
                async with session.post(
                    receiver.url + "/webhooks/dlr", json=dlr_query(message_id)
                ) as response:
                    assert response.status == 204
            async with session.get(receiver.url + "/healthz") as response:
                assert response.status == 200
        receiver.process.send_signal(signal.SIGTERM)
        code, stdout = await receiver.finish()
    assert code == 0
    lines = [json.loads(line) for line in stdout.decode().splitlines()]
    assert [line["message_id"] for line in lines] == ["M1", "M2"]
    for line in lines:
        assert {"provider", "message_id", "status", "to", "client_ref"} <= line.keys()
        assert line["provider"] == "vonage-sms"
        assert line["to"] == "447700900123"


async def test_the_receiver_warns_at_start_when_no_secret_is_set(tmp_path: Path) -> None:
    """Unsigned callbacks are accepted, and the log says so once, without any secret."""
    async with receiver_process("--store", str(tmp_path / "s.journal")) as receiver:
        receiver.process.send_signal(signal.SIGTERM)
        code, _ = await receiver.finish()
    text = "".join(receiver.stderr_lines)
    assert code == 0
    assert text.count("VONAGE_SIGNATURE_SECRET is not set") == 1
    assert text.count("TWILIO_AUTH_TOKEN is not set") == 1


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--hook", "nocolon"], 2, "give it as module:function"),
        (["--hook", "no_such_module_xyz:run"], 2, "cannot import no_such_module_xyz"),
        (["--signature-method", "crc32"], 2, "'crc32' is not one of"),
    ],
)
async def test_a_bad_option_is_one_line_on_stderr(
    tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    """Usage errors name the problem and the fix, before anything listens."""
    run = await run_cli("receive", "--store", str(tmp_path / "s.journal"), "--port", "0", *args)
    assert run.code == code
    errors = [line for line in run.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1
    assert message in errors[0]


async def test_a_store_that_cannot_be_opened_is_exit_4(tmp_path: Path) -> None:
    """A store in a missing directory: one line naming the file."""
    missing = tmp_path / "no" / "such" / "dir" / "s.journal"
    run = await run_cli("receive", "--store", str(missing), "--port", "0")
    assert run.code == 4
    assert run.stderr.strip().splitlines()[-1].startswith(f"Error: {missing}")


@pytest.mark.slow
async def test_a_second_signal_during_the_drain_exits_at_once_with_130(tmp_path: Path) -> None:
    """The first SIGTERM drains; a second one does not wait for it: 'forced stop', exit 130."""
    store = tmp_path / "store.journal"
    async with receiver_process("--store", str(store)) as receiver:
        blocker = sqlite3.connect(store, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # the commit waits: the drain cannot finish soon
        try:
            async with aiohttp.ClientSession() as session:
                waiting = asyncio.ensure_future(
                    session.get(receiver.url + "/webhooks/dlr", params=dlr_query("M1"))
                )
                await received(session, receiver, 1)  # its commit now waits on the blocker
                receiver.process.send_signal(signal.SIGTERM)
                assert await receiver.wait_for_line("stopping: no new connections")
                receiver.process.send_signal(signal.SIGTERM)
                code, _ = await receiver.finish(timeout_s=2)
                with contextlib.suppress(aiohttp.ClientError):
                    (await waiting).close()  # not acknowledged: the provider sends it again
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
    assert code == 130
    assert any("forced stop" in line for line in receiver.stderr_lines)


@pytest.mark.slow
async def test_with_a_shutdown_delay_healthz_fails_first_and_callbacks_are_still_taken(
    tmp_path: Path,
) -> None:
    """A load balancer sees /healthz 503 and stops sending before the listener closes."""
    store = tmp_path / "store.journal"
    async with receiver_process("--store", str(store), "--shutdown-delay", "1") as receiver:
        async with aiohttp.ClientSession() as session:
            receiver.process.send_signal(signal.SIGTERM)
            assert await receiver.wait_for_line("stopping: /healthz answers 503")
            async with session.get(receiver.url + "/healthz") as response:
                assert response.status == 503
            async with session.get(
                receiver.url + "/webhooks/dlr", params=dlr_query("M1")
            ) as response:
                assert response.status == 204
        code, _ = await receiver.finish()
    assert code == 0
    assert stored_ids(store) == {"M1"}


async def test_a_port_in_use_is_one_error_line_and_exit_2(tmp_path: Path) -> None:
    """No traceback: the address, and what to do."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = await run_cli("receive", "--store", str(tmp_path / "s.journal"), "--port", str(port))
    assert run.code == 2
    assert "Traceback" not in run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1
    assert f"127.0.0.1:{port}" in errors[0]
    assert "address already in use" in errors[0]


async def test_a_host_that_is_not_an_address_of_this_machine_is_exit_2(tmp_path: Path) -> None:
    """An unusable --host is a usage error too."""
    run = await run_cli(
        "receive", "--store", str(tmp_path / "s.journal"), "--port", "0", "--host", "192.0.2.1"
    )
    assert run.code == 2
    assert "Traceback" not in run.stderr
    (error,) = [line for line in run.stderr.splitlines() if line.startswith("Error:")]
    assert "192.0.2.1:0" in error


# --- what any client can send: answered with its cause, logged at a bounded rate -----------------


def raw_request(
    target: bytes, *headers: bytes, body: bytes = b"", method: bytes = b"POST"
) -> bytes:
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: receiver", b"Connection: close"]
    return b"\r\n".join([*lines, *headers, b"", b""]) + body


def post_request(route: str, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return raw_request(
        route.encode(),
        b"Content-Type: " + content_type,
        b"Content-Length: %d" % len(body),
        body=body,
    )


async def exchange(url: str, request: bytes) -> tuple[int, str]:
    """Send raw bytes on a new connection; the answer's status and body."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(request)
        with contextlib.suppress(ConnectionError):  # the answer may come before the rest is read
            await writer.drain()
        async with asyncio.timeout(30):
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"\r\nContent-Length: (\d+)\r\n", head, re.IGNORECASE)
            body = await reader.readexactly(int(length[1]) if length else 0)
    finally:
        writer.close()
    return int(head.split()[1]), body.decode()


def refusal_lines(receiver: ReceiverProcess) -> list[str]:
    return [line for line in receiver.stderr_lines if "WARNING refused " in line]


def refusals_counted(lines: list[str]) -> int:
    """Refusals logged one a line, plus those counted on a later line as held back."""
    logged = sum(" with " in line for line in lines)
    return logged + sum(int(n) for line in lines for n in re.findall(r"(\d+) more like it", line))


async def stopped(receiver: ReceiverProcess) -> str:
    """Stop the receiver; everything it wrote to stderr."""
    receiver.process.send_signal(signal.SIGTERM)
    code, _ = await receiver.finish()
    assert code == 0
    return "".join(receiver.stderr_lines)


async def test_requests_the_http_parser_refuses_are_answered_with_their_cause_not_a_traceback(
    tmp_path: Path,
) -> None:
    """Too long is 414 or 431, malformed is 400: a short body naming why, one log line each."""
    cases = {
        "long URL": (
            raw_request(b"/webhooks/dlr?" + b"a" * 40_000, method=b"GET"),
            414,
            "URL over 32768 bytes\n",
        ),
        "long header": (
            raw_request(b"/webhooks/dlr", b"X-Big: " + b"a" * 9000, method=b"GET"),
            431,
            "header over 8190 bytes\n",
        ),
        "many headers": (
            raw_request(b"/webhooks/dlr", *(b"X-%d: 1" % n for n in range(200)), method=b"GET"),
            431,
            "more than 128 headers\n",
        ),
        "TLS": (
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
            400,
            "not HTTP, or an unknown method (TLS to a plain port?)\n",
        ),
        "raw byte in URL": (
            raw_request(b"/webhooks/dlr?messageId=\xff", method=b"GET"),
            400,
            "invalid URL (Invalid char in url query)\n",
        ),
        "IPv6 host left open": (
            raw_request(b"http://[::1/webhooks/dlr", method=b"GET"),
            400,
            "invalid URL (Invalid IPv6 URL)\n",
        ),
        "port out of range": (
            raw_request(b"http://receiver:99999/webhooks/dlr", method=b"GET"),
            400,
            "invalid URL (Port out of range 0-65535)\n",
        ),
        "bad chunk": (
            raw_request(b"/webhooks/dlr", b"Transfer-Encoding: chunked", body=b"zz\r\n"),
            400,
            "malformed request (Invalid character in chunk size)\n",
        ),
    }
    async with receiver_process("--store", str(tmp_path / "s.journal")) as receiver:
        answers = {name: await exchange(receiver.url, raw) for name, (raw, _, _) in cases.items()}
        log = await stopped(receiver)
    assert answers == {name: (status, text) for name, (_, status, text) in cases.items()}
    assert "Traceback" not in log
    assert refusals_counted(refusal_lines(receiver)) == len(cases)


async def test_a_body_that_cannot_be_read_is_answered_400_naming_the_cause(tmp_path: Path) -> None:
    """Not UTF-8, not JSON, broken compression or form: 400 with the cause, never a 500."""
    gzip = b"Content-Encoding: gzip"
    cases = [
        (post_request("/webhooks/dlr", b"\xff\xfe{}"), "body is not UTF-8 (byte 0xff at offset 0)"),
        (post_request("/webhooks/dlr", b"[1]"), "body is not a JSON object (a JSON array)"),
        (
            post_request("/webhooks/messages/status", b'{"a": }'),
            "body is not JSON (Expecting value at line 1 column 7)",
        ),
        (
            post_request("/webhooks/dlr", b'{"a": %s}' % (b"1" * 5000)),
            "body is not JSON (a number too long)",
        ),
        (
            raw_request(b"/webhooks/dlr", gzip, b"Content-Length: 4", body=b"abcd"),
            "body that cannot be read (Can not decode content-encoding: gzip)",
        ),
        (
            post_request("/webhooks/dlr", b"a=b", b"application/x-www-form-urlencoded; charset=xx"),
            "form in an unknown charset (xx)",
        ),
        (
            post_request("/webhooks/twilio/status", b"--b\r\n", b"multipart/form-data"),
            "form that cannot be read (boundary missed for Content-Type: multipart/form-data)",
        ),
    ]
    async with receiver_process("--store", str(tmp_path / "s.journal")) as receiver:
        answers = [await exchange(receiver.url, raw) for raw, _ in cases]
        log = await stopped(receiver)
    assert answers == [(400, text + "\n") for _, text in cases]
    assert "Traceback" not in log


async def test_a_content_type_the_route_does_not_read_is_answered_415(tmp_path: Path) -> None:
    """415 names the type sent and the ones to send; the provider does not retry a 4xx."""
    either = "application/json or application/x-www-form-urlencoded)"
    cases = [
        (post_request("/webhooks/dlr", b"<a/>", b"text/xml"), either),
        (post_request("/webhooks/dlr", b"hello", b"text/plain"), either),
        (post_request("/webhooks/messages/status", b"a=b", b"application/x-www-form-urlencoded"),
         "application/json)"),
        (post_request("/webhooks/twilio/status", b"{}"), "application/x-www-form-urlencoded)"),
    ]  # fmt: skip
    async with receiver_process("--store", str(tmp_path / "s.journal")) as receiver:
        answers = [await exchange(receiver.url, raw) for raw, _ in cases]
        await stopped(receiver)
    for (status, text), (_, accepted) in zip(answers, cases, strict=True):
        assert status == 415
        assert text.startswith("content type not read here (")
        assert text.endswith(accepted + "\n")


async def test_a_signed_json_callback_sent_as_text_plain_is_read_as_json_and_stored(
    tmp_path: Path,
) -> None:
    """The body is what was signed, whatever its label: stored, not answered 'missing sig'."""
    secret = "text-plain-secret"
    fields = signatures.sign_vonage_sms(dlr_query("M7"), secret, "md5hash", now_s=time.time())
    store = tmp_path / "s.journal"
    env = {"VONAGE_SIGNATURE_SECRET": secret, "TWILIO_AUTH_TOKEN": "unused"}
    async with receiver_process("--store", str(store), env=env) as receiver:
        answer = await exchange(
            receiver.url, post_request("/webhooks/dlr", json.dumps(fields).encode(), b"text/plain")
        )
        await stopped(receiver)
    assert answer == (204, "")
    assert stored_ids(store) == {"M7"}


async def test_a_body_over_the_limit_is_answered_413_naming_the_limit(tmp_path: Path) -> None:
    """A short cause, not aiohttp's sentence, and the receiver goes on."""
    async with receiver_process("--store", str(tmp_path / "s.journal")) as receiver:
        answer = await exchange(receiver.url, post_request("/webhooks/dlr", b"{" + b" " * 300_000))
        log = await stopped(receiver)
    assert answer == (413, "body over 256 KiB\n")
    assert "Traceback" not in log


@pytest.mark.slow
async def test_a_flood_of_bad_requests_logs_a_few_lines_per_cause_and_no_traceback(
    tmp_path: Path,
) -> None:
    """1,000 refusals of each of two causes: a line per cause per 10 s, not one per request."""
    too_long = raw_request(b"/webhooks/dlr?" + b"a" * 40_000, method=b"GET")
    not_utf8 = post_request("/webhooks/dlr", b"\xff")
    gate = asyncio.Semaphore(20)

    async def send(raw: bytes) -> int:
        async with gate:
            status, _ = await exchange(receiver.url, raw)
            return status

    async with receiver_process("--store", str(tmp_path / "s.journal")) as receiver:
        statuses = await asyncio.gather(*(send(raw) for raw in [too_long, not_utf8] * 1000))
        log = await stopped(receiver)
    assert sorted(set(statuses)) == [400, 414]
    assert "Traceback" not in log
    lines = refusal_lines(receiver)
    for cause in ("URL over", "body is not UTF-8"):
        of_cause = [line for line in lines if cause in line]
        # One line per 10 s, and one at the stop: more than 10 would take the flood over 80 s.
        assert 1 <= len(of_cause) <= 10, lines
        # Each refusal is on a line of its own or counted on a later one: none goes missing.
        assert refusals_counted(of_cause) == 1000, of_cause


@pytest.mark.slow
async def test_a_body_that_never_ends_is_answered_408_and_the_receiver_goes_on(
    tmp_path: Path,
) -> None:
    """A chunked body whose last chunk never comes holds a handler for 10 s, not forever."""
    endless = raw_request(
        b"/webhooks/dlr",
        b"Content-Type: application/json",
        b"Transfer-Encoding: chunked",
        body=b'2\r\n{"\r\n',
    )
    async with receiver_process("--store", str(tmp_path / "s.journal")) as receiver:
        answer = await exchange(receiver.url, endless)
        log = await stopped(receiver)
    assert answer == (408, "body not received within 10 s\n")
    assert "Traceback" not in log


async def test_header_bytes_that_are_not_utf8_fail_a_twilio_signature_with_401_not_500(
    tmp_path: Path,
) -> None:
    """A signature or Host header of raw bytes is a wrong signature, not a crash."""
    form = b"MessageSid=SM1&MessageStatus=delivered"
    cases = [
        raw_request(b"/webhooks/twilio/status", b"X-Twilio-Signature: \xff\xfe"),
        b"POST /webhooks/twilio/status HTTP/1.1\r\nHost: \xff\xfe\r\nConnection: close\r\n"
        b"X-Twilio-Signature: abc\r\n\r\n",
    ]
    form_headers = b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n"
    env = {"TWILIO_AUTH_TOKEN": "token", "VONAGE_SIGNATURE_SECRET": "unused"}
    async with receiver_process("--store", str(tmp_path / "s.journal"), env=env) as receiver:
        answers = [
            await exchange(receiver.url, raw[:-2] + form_headers % len(form) + form)
            for raw in cases
        ]
        log = await stopped(receiver)
    assert answers == [(401, "bad signature\n")] * 2
    assert "Traceback" not in log


@pytest.mark.slow
async def test_a_client_that_hangs_up_mid_body_leaves_no_traceback(tmp_path: Path) -> None:
    """The connection is gone, so is the answer; the log gets a line, not a stack."""
    async with receiver_process("--store", str(tmp_path / "s.journal")) as receiver:
        parts = urlsplit(receiver.url)
        _, writer = await asyncio.open_connection(parts.hostname, parts.port)
        writer.write(raw_request(b"/webhooks/dlr", b"Content-Length: 100", body=b'{"messageId"'))
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        assert await exchange(receiver.url, raw_request(b"/healthz", method=b"GET")) == (
            200,
            "ok\n",
        )
        log = await stopped(receiver)
    assert "Traceback" not in log


@pytest.mark.slow
async def test_a_client_ref_with_a_line_out_of_range_does_not_stop_other_receipts_matching(
    tmp_path: Path,
) -> None:
    """A client ref with a line SQLite cannot hold is no match, not a failed batch."""
    store = tmp_path / "campaign.journal"
    with contextlib.closing(schema.connect(str(store))) as connection:
        connection.execute(
            "INSERT INTO campaigns VALUES ('spring', 'c0ffee123456', 'in.csv', '', 'Shop', "
            "'vonage', 'to', '', 0)"
        )
        connection.execute(
            "INSERT INTO rows VALUES ('spring', 5, 'sent', 0, '447700900123', 'c0ffee123456-5', "
            "1, 'gsm7', 1, 'M5', NULL, NULL, NULL, NULL, NULL, 0, NULL, NULL)"
        )
    huge = {**dlr_query("M9"), "client-ref": "c0ffee123456-" + "9" * 30}
    async with receiver_process("--store", str(store)) as receiver:
        async with aiohttp.ClientSession() as session:
            for fields in (huge, dlr_query("M5")):
                async with session.get(receiver.url + "/webhooks/dlr", params=fields) as response:
                    assert response.status == 204
        log = await stopped(receiver)
    assert "Traceback" not in log
    with contextlib.closing(sqlite3.connect(store)) as connection:
        applied = connection.execute("SELECT message_id FROM deliveries").fetchall()
    assert applied == [("M5",)]


@pytest.mark.slow
async def test_a_long_url_that_arrives_in_two_reads_is_answered_414(tmp_path: Path) -> None:
    """The parser measures each read of the request line, not the whole: 414 all the same."""
    async with receiver_process("--store", str(tmp_path / "s.journal")) as receiver:
        host_port = receiver.url.split("//", 1)[1].split("/", 1)[0]
        host, port = host_port.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        line = b"GET /webhooks/dlr?" + b"a" * 40_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        writer.write(line[:20_000])
        await writer.drain()
        # Not a wait for anything: a pause so the two halves reach the receiver as two reads.
        # Were they read as one, the answer must be the same.
        await asyncio.sleep(0.2)
        writer.write(line[20_000:])
        await writer.drain()
        status_line = await reader.readline()
        writer.close()
        await stopped(receiver)
    assert status_line.split()[1] == b"414"


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        (line,) = [line for line in status if line.startswith("VmRSS:")]
    return int(line.split()[1]) * 1024


def send_until_stalled(sock: socket.socket, data: bytes) -> int:
    """Write `data` without reading an answer until done or a write times out (the receiver
    stopped reading); the bytes written."""
    sent = 0
    with contextlib.suppress(TimeoutError):
        while sent < len(data):
            sent += sock.send(data[sent : sent + 65536])
    return sent


async def test_a_client_that_pipelines_requests_and_never_reads_holds_bounded_memory(
    tmp_path: Path,
) -> None:
    """8 MB of pipelined requests never read: the receiver stops reading, its memory stays put."""
    async with receiver_process("--store", str(tmp_path / "s.journal")) as receiver:
        address = urlsplit(receiver.url)
        assert address.hostname is not None
        assert address.port is not None
        pid = receiver.process.pid
        before = rss_bytes(pid)
        flood = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * (8 * 1024 * 1024 // 35)
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # answers back up at once
            sock.connect((address.hostname, address.port))
            sock.settimeout(2.0)  # a write waiting this long: the receiver stopped reading
            await asyncio.to_thread(send_until_stalled, sock, flood)
            async with (
                aiohttp.ClientSession() as session,
                session.get(receiver.url + "/healthz") as response,
            ):
                assert response.status == 200
            grown = rss_bytes(pid) - before
    assert grown < 50 * 1024 * 1024
