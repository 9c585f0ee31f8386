"""What a hostile client or a failing disk must not do to the receiver: forged callbacks applied
on routes without a secret, secrets in the log, a loop stalled by a body, memory held by heads
never finished, tracebacks, receipts left unprocessed until a restart."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from sms_blaster.journal.schema import RowState
from sms_blaster.models import StoredReceipt
from sms_blaster.receiver import callbacks, signatures
from sms_blaster.receiver.hook_loop import HookLoop
from sms_blaster.receiver.stores.sqlite import SqliteReceiptStore
from tests.cli_helpers import ReceiverProcess, cli_env, receiver_process, run_cli
from tests.test_receive_cli import dlr_query, exchange, post_request, raw_request
from tests.test_receiver import (
    CAMPAIGN_ID,
    SECRET,
    TOKEN,
    Receiver,
    add_campaign,
    add_row,
    dlr_fields,
    funnel,
    running,
)

ROOT = Path(__file__).resolve().parent.parent
TWILIO_STATUS = {"MessageSid": "SMFORGED1", "MessageStatus": "undelivered", "ErrorCode": "30003"}
TWILIO_DELIVERED = {"MessageSid": "SMFORGED3", "MessageStatus": "delivered"}
TWILIO_START = {"MessageSid": "SMFORGED2", "From": "+447900000001", "To": "+15550001",
                "Body": "START"}  # fmt: skip


# --- a route whose provider has no secret, while another's is set ---------------------------------


async def test_with_only_the_vonage_secret_set_twilio_routes_refuse_unsigned_callbacks(
    tmp_path: Path,
) -> None:
    """A forged Twilio receipt would fail a Vonage row, a forged START opt a number back in."""
    async with running(tmp_path, vonage_secret=SECRET) as receiver:
        status = await receiver.client.post(
            f"/webhooks/twilio/status?client_ref={CAMPAIGN_ID}-1", data=TWILIO_STATUS
        )
        inbound = await receiver.client.post("/webhooks/twilio/inbound", data=TWILIO_START)
        assert (status.status, inbound.status) == (403, 403)
        assert await status.text() == ("unsigned callbacks are refused here (TWILIO_AUTH_TOKEN)\n")
        assert receiver.rows("SELECT COUNT(*) FROM receipts") == [(0,)]
        assert receiver.rows("SELECT COUNT(*) FROM optouts") == [(0,)]


@pytest.mark.parametrize(
    ("route", "options"),
    [
        ("/webhooks/dlr", {"data": {"messageId": "M1", "status": "delivered"}}),
        ("/webhooks/messages/status", {"json": {"message_uuid": "U1", "status": "delivered"}}),
    ],
)
async def test_with_only_the_twilio_token_set_vonage_routes_refuse_every_callback(
    tmp_path: Path, route: str, options: dict[str, object]
) -> None:
    """403, not the 503 a Vonage callback without its signature gets when the secret is set:
    no retry would ever come signed."""
    async with running(tmp_path, twilio_token=TOKEN) as receiver:
        answer = await receiver.client.post(route, **options)
        assert answer.status == 403
        assert "Retry-After" not in answer.headers
        assert receiver.rows("SELECT COUNT(*) FROM receipts") == [(0,)]


async def test_accept_unsigned_takes_that_providers_callbacks_and_still_checks_the_other(
    tmp_path: Path,
) -> None:
    async with running(
        tmp_path, vonage_secret=SECRET, accept_unsigned=frozenset({"twilio"})
    ) as receiver:
        status = await receiver.client.post(
            f"/webhooks/twilio/status?client_ref={CAMPAIGN_ID}-1", data=TWILIO_STATUS
        )
        assert status.status == 200
        unsigned_vonage = await receiver.dlr()
        assert unsigned_vonage.status == 503  # the Vonage routes still want their signature


async def test_an_unsigned_twilio_status_never_changes_a_row_sent_through_vonage(
    tmp_path: Path,
) -> None:
    """`--accept-unsigned twilio` beside a Vonage secret: the forged Twilio status is taken (200)
    and kept, but the Vonage row stays delivered, counted as foreign."""
    async with running(
        tmp_path, vonage_secret=SECRET, accept_unsigned=frozenset({"twilio"})
    ) as receiver:
        add_campaign(receiver.path)  # sent through the Vonage SMS API
        add_row(receiver.path, 1, RowState.SENT, "P1")
        add_row(receiver.path, 2, RowState.UNKNOWN)
        await receiver.store.submit(callbacks.vonage_dlr(dlr_fields(messageId="P1")))
        for line, fields in ((1, TWILIO_STATUS), (2, TWILIO_DELIVERED)):
            forged = await receiver.client.post(
                f"/webhooks/twilio/status?client_ref={CAMPAIGN_ID}-{line}", data=fields
            )
            assert forged.status == 200
        async with asyncio.timeout(15):
            await receiver.store.wait_until(lambda: receiver.store.stats.processed >= 3)
        assert receiver.rows("SELECT line, state FROM rows ORDER BY line") == [
            (1, "sent"), (2, "unknown")
        ]  # fmt: skip
        assert funnel(receiver.path)["failed"] == 0
        assert receiver.rows("SELECT message_id, applied FROM receipts ORDER BY id") == [
            ("P1", 1), ("SMFORGED1", 2), ("SMFORGED3", 2)
        ]  # fmt: skip
        assert receiver.store.stats.foreign == 2
        metrics = await (await receiver.client.get("/metrics")).text()
        assert "sms_blaster_receipts_foreign_total 2" in metrics


async def test_with_no_secret_at_all_every_route_takes_callbacks_unsigned(tmp_path: Path) -> None:
    async with running(tmp_path) as receiver:
        status = await receiver.client.post(
            f"/webhooks/twilio/status?client_ref={CAMPAIGN_ID}-1", data=TWILIO_STATUS
        )
        assert status.status == 200
        assert (await receiver.dlr()).status == 204


async def test_a_signed_twilio_callback_is_taken_when_both_secrets_are_set(tmp_path: Path) -> None:
    path = f"/webhooks/twilio/status?client_ref={CAMPAIGN_ID}-1"
    async with running(tmp_path, vonage_secret=SECRET, twilio_token=TOKEN) as receiver:
        host = f"{receiver.client.host}:{receiver.client.port}"
        signature = signatures.sign_twilio(
            f"http://{host}{path}", list(TWILIO_STATUS.items()), TOKEN
        )
        answer = await receiver.client.post(
            path, data=TWILIO_STATUS, headers={"X-Twilio-Signature": signature}
        )
        assert answer.status == 200


async def test_start_up_says_once_which_routes_refuse_and_how_to_take_them(tmp_path: Path) -> None:
    store = str(tmp_path / "s.journal")
    async with receiver_process(
        "--store", store, env={"VONAGE_SIGNATURE_SECRET": SECRET}
    ) as receiver:
        receiver.process.send_signal(signal.SIGTERM)
        code, _ = await receiver.finish()
    text = "".join(receiver.stderr_lines)
    assert code == 0
    (line,) = [line for line in receiver.stderr_lines if "TWILIO_AUTH_TOKEN" in line]
    assert "/webhooks/twilio/status, /webhooks/twilio/inbound refuse every callback (403)" in line
    assert "--accept-unsigned twilio" in line
    assert "VONAGE_SIGNATURE_SECRET is not set" not in text
    assert SECRET not in text


async def test_accept_unsigned_for_a_provider_whose_secret_is_set_is_exit_2(tmp_path: Path) -> None:
    store = str(tmp_path / "s.journal")
    run = await run_cli(
        "receive", "--store", store, "--port", "0", "--accept-unsigned", "vonage",
        env=cli_env(VONAGE_SIGNATURE_SECRET=SECRET),
    )  # fmt: skip
    assert run.code == 2
    (error,) = [line for line in run.stderr.splitlines() if line.startswith("Error:")]
    assert "--accept-unsigned vonage with VONAGE_SIGNATURE_SECRET set" in error
    assert "listening" not in run.stderr


# --- a hook's exception holding a secret ----------------------------------------------------------

API_SECRET = "apisecretABCDEF"
HOOK = """
import os
import re

async def raises(record):
    raise RuntimeError(f"hook boom secret={os.environ[os.environ['LEAKED']]}")
"""
PROXY_URL = "http://u:PxPassw0rd9@127.0.0.1:9"


@pytest.mark.parametrize(
    ("leaked", "secret"), [("VONAGE_API_SECRET", API_SECRET), ("HTTPS_PROXY", "PxPassw0rd9")]
)
async def test_a_hook_exception_quoting_a_secret_is_logged_masked(
    tmp_path: Path, leaked: str, secret: str
) -> None:
    """The API secret, or the password of the proxy the receiver's replies would go through."""
    (tmp_path / "leaky_hook.py").write_text(HOOK)
    env = {
        "VONAGE_API_SECRET": API_SECRET,
        "HTTPS_PROXY": PROXY_URL,
        "LEAKED": leaked,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
    }
    store = str(tmp_path / "s.journal")
    async with receiver_process(
        "--store", store, "--hook", "leaky_hook:raises", env=env
    ) as receiver:
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                receiver.url + "/webhooks/dlr", params={"messageId": "M1", "status": "delivered"}
            ) as response,
        ):
            assert response.status == 204
        assert await receiver.wait_for_line("the receipt hook failed for M1")
        receiver.process.send_signal(signal.SIGTERM)
        code, _ = await receiver.finish()
    text = "".join(receiver.stderr_lines)
    assert code == 0
    assert "RuntimeError: hook boom secret=" in text
    assert "Traceback (most recent call last)" in text
    assert secret not in text


# --- bodies and heads that would hold the loop or memory -----------------------------------------


def multipart(parts: int) -> bytes:
    field = b'--B\r\nContent-Disposition: form-data; name="k"\r\n\r\n\r\n'
    return field * parts + b"--B--\r\n"


def url(receiver: Receiver) -> str:
    return f"http://{receiver.client.host}:{receiver.client.port}"


@pytest.mark.parametrize(
    ("route", "body", "content_type", "answer"),
    [
        (
            "/webhooks/dlr",
            multipart(5000),  # took a second of the event loop to parse
            b"multipart/form-data; boundary=B",
            "multipart form over 64 parts, 1024 lines or 64 KiB",
        ),
        (
            "/webhooks/twilio/status",
            b"&".join(b"k%d=v" % n for n in range(30_000)),
            b"application/x-www-form-urlencoded",
            "form over 256 fields or 16384 escapes",
        ),
        (
            "/webhooks/messages/status",
            b'{"a": [' + b",".join([b"{}"] * 60_000) + b"]}",
            b"application/json",
            "JSON over 4096 objects and arrays",
        ),
    ],
)
async def test_a_body_too_costly_to_parse_is_refused_413_before_it_is_parsed(
    tmp_path: Path, route: str, body: bytes, content_type: bytes, answer: str
) -> None:
    async with running(tmp_path) as receiver:
        refused = await exchange(url(receiver), post_request(route, body, content_type))
        assert refused == (413, answer + "\n")
        fields = b'--B\r\nContent-Disposition: form-data; name="messageId"\r\n\r\nM1\r\n'
        fields += b'--B\r\nContent-Disposition: form-data; name="status"\r\n\r\ndelivered\r\n'
        fine = await exchange(
            url(receiver),
            post_request(
                "/webhooks/dlr", fields + b"--B--\r\n", b"multipart/form-data; boundary=B"
            ),
        )
        assert fine == (204, "")


async def test_a_head_over_64_kib_is_answered_431_and_closed_before_it_ends(tmp_path: Path) -> None:
    """Each header under its own limit, the whole head never finished: refused at 64 KiB, not
    held (up to a megabyte a connection) until the head's 10 s are up."""
    headers = [b"X-Pad-%d: %s" % (n, b"a" * 4000) for n in range(20)]
    unfinished = raw_request(b"/webhooks/dlr", *headers, method=b"GET")[:-2]  # no blank line
    async with running(tmp_path) as receiver:
        answer = await exchange(url(receiver), unfinished)
    assert answer == (431, "request head over 64 KiB\n")


# --- tracebacks --------------------------------------------------------------------------------


async def test_bytes_past_a_refused_bodys_length_are_dropped_without_a_traceback(
    tmp_path: Path,
) -> None:
    """The 413 is written, the body read to its end; what follows it is no request to answer
    (an answer written after the end of the stream was a 30-line traceback)."""
    head = post_request("/webhooks/dlr", b"")
    head = head.replace(b"Content-Length: 0", b"Content-Length: 300000")
    async with receiver_process("--store", str(tmp_path / "s.journal")) as receiver:
        for _ in range(3):
            answer = await exchange(receiver.url, head + b"a" * 327_680)
            assert answer == (413, "body over 256 KiB\n")
        receiver.process.send_signal(signal.SIGTERM)
        code, _ = await receiver.finish()
    log = "".join(receiver.stderr_lines)
    assert code == 0
    assert "Traceback" not in log
    assert "Fatal error" not in log


@pytest.mark.parametrize(
    ("port_file", "message"),
    [
        ("missing/dir/url", "no such directory"),  # told before anything listens
        ("/dev/full", "cannot write it (No space left on device)"),  # before it says it listens
    ],
)
async def test_a_port_file_that_cannot_be_written_is_one_error_line_and_exit_2(
    tmp_path: Path, port_file: str, message: str
) -> None:
    if port_file == "/dev/full" and not os.path.exists("/dev/full"):  # noqa: ASYNC240
        pytest.skip("no /dev/full here")
    target = port_file if port_file.startswith("/") else str(tmp_path / port_file)
    run = await run_cli(
        "receive", "--store", str(tmp_path / "s.journal"), "--port", "0", "--port-file", target
    )
    assert run.code == 2
    assert "Traceback" not in run.stderr
    assert "listening" not in run.stderr
    (error,) = [line for line in run.stderr.splitlines() if line.startswith("Error:")]
    assert error.startswith(f"Error: --port-file {target}: ")
    assert message in error


# --- a store that fails for a while, then writes again ----------------------------------------

# What a full disk does to the correlation and the processed mark: SQLite undoes the transaction
# itself and the statement fails. A trigger on the real file does the same, on every receipt
# update, until it is dropped ("space again").
DISK_FULL = (
    "CREATE TRIGGER disk_full BEFORE UPDATE ON receipts "
    "BEGIN SELECT RAISE(ROLLBACK, 'database or disk is full'); END"
)


class Seen(logging.Handler):
    """Sets `event` at the first receiver line containing `text` (logged on the loop's thread)."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.ERROR)
        self.text = text
        self.event = asyncio.Event()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        if self.text in record.getMessage():
            self.event.set()


def execute(path: str, sql: str) -> None:
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as connection:
        connection.execute(sql)


async def test_a_receipt_whose_processing_failed_on_a_full_disk_is_processed_once_it_has_space(
    tmp_path: Path,
) -> None:
    """Acknowledged, then neither tied to its row nor marked processed while the disk was full:
    it is marked at the next try and the sweep ties it to its row, without a restart. The log
    names the failure, not the rollback SQLite had already done."""
    receiver_log = logging.getLogger("sms_blaster.receiver")
    seen = Seen("could not mark")
    receiver_log.addHandler(seen)
    try:
        async with running(tmp_path) as receiver:
            add_campaign(receiver.path)
            add_row(receiver.path, 1, RowState.SENT, "P1")
            execute(receiver.path, DISK_FULL)
            assert (await receiver.dlr(messageId="P1")).status == 204
            async with asyncio.timeout(15):
                await seen.event.wait()
            execute(receiver.path, "DROP TRIGGER disk_full")
            async with asyncio.timeout(15):
                await receiver.store.wait_until(
                    lambda: (
                        receiver.store.stats.processed >= 1 and receiver.store.stats.matched >= 1
                    )
                )
            assert receiver.rows("SELECT applied, processed FROM receipts") == [(1, 1)]
            assert funnel(receiver.path)["delivered"] == 1
            assert len(receiver.hooked) == 1  # its hook ran once: the mark alone was tried again
    finally:
        receiver_log.removeHandler(seen)
    failures = [line for line in seen.lines if "database or disk is full" in line]
    assert len(failures) >= 2  # the correlation's and the mark's
    assert not [line for line in seen.lines if "cannot rollback" in line]


# --- --public-url -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("public_url", "message"),
    [
        ("hooks.example.com", "give the scheme and host providers call"),
        ("ftp://hooks.example.com", "give the scheme and host providers call"),
        ("https://hooks.example.com?x=1", "no query or fragment"),
        ("https://hooks.example.com:99999", "Port out of range"),
    ],
)
async def test_a_public_url_every_signed_callback_would_fail_against_is_exit_2(
    tmp_path: Path, public_url: str, message: str
) -> None:
    run = await run_cli(
        "receive", "--store", str(tmp_path / "s.journal"), "--port", "0",
        "--public-url", public_url, env=cli_env(TWILIO_AUTH_TOKEN=TOKEN),
    )  # fmt: skip
    assert run.code == 2
    (error,) = [line for line in run.stderr.splitlines() if line.startswith("Error:")]
    assert error.startswith(f"Error: --public-url {public_url}: ")
    assert message in error
    assert "listening" not in run.stderr


async def test_a_public_url_in_upper_case_is_read_in_lower_case(tmp_path: Path) -> None:
    """The scheme and host as the provider's HTTP client sends and signs them."""
    fields = {"MessageSid": "SM1", "MessageStatus": "delivered", "To": "+447700900000"}
    path = f"/webhooks/twilio/status?client_ref={CAMPAIGN_ID}-1"
    signature = signatures.sign_twilio(
        "https://hooks.example.com" + path, list(fields.items()), TOKEN
    )
    async with (
        receiver_process(
            "--store", str(tmp_path / "s.journal"), "--public-url", "HTTPS://Hooks.Example.COM",
            env={"TWILIO_AUTH_TOKEN": TOKEN},
        ) as receiver,
        aiohttp.ClientSession() as session,
        session.post(
            receiver.url + path, data=fields, headers={"X-Twilio-Signature": signature}
        ) as response,
    ):  # fmt: skip
        assert response.status == 200


async def test_a_store_failing_every_commit_logs_a_line_per_interval_and_the_stop_counts_503s(
    tmp_path: Path,
) -> None:
    """A full disk: each callback is answered 503 (the provider retries), the log gets one line
    and a count, not a line a commit, and the stop's summary counts the 503s."""
    store = str(tmp_path / "s.journal")
    async with receiver_process("--store", store) as receiver:
        execute(store, DISK_FULL.replace("BEFORE UPDATE", "BEFORE INSERT"))
        async with aiohttp.ClientSession() as session:
            for number in range(20):
                async with session.get(
                    receiver.url + "/webhooks/dlr",
                    params={"messageId": f"M{number}", "status": "delivered"},
                ) as response:
                    assert response.status == 503
        receiver.process.send_signal(signal.SIGTERM)
        code, _ = await receiver.finish()
    assert code == 0
    failures = [line for line in receiver.stderr_lines if "could not store" in line]
    assert "database or disk is full" in failures[0]
    logged = [line for line in failures if "answering 503" in line]
    held = [int(n) for line in failures for n in re.findall(r"(\d+) more", line)]
    assert len(logged) + sum(held) == 20  # each told, most as a count
    assert len(failures) <= 4  # a line in 10 s, and the stop's count (20 requests take < 1 s)
    (summary,) = [line for line in receiver.stderr_lines if "stopped:" in line]
    assert "20 refused busy" in summary


async def test_a_store_that_is_no_regular_file_is_refused_before_anything_is_made_beside_it(
    tmp_path: Path,
) -> None:
    """`--store` a FIFO (or /dev/null): exit 4 naming it, and no `-journal` left beside it (the
    store's SQLite used to make `/dev/null-journal`). A store with a second name (a hard link)
    is refused the same way, as a sending run's journal is."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    linked = tmp_path / "s.journal"
    linked.touch()
    os.link(linked, tmp_path / "other.journal")
    for store, why in ((fifo, "not a regular file"), (linked, "hard links")):
        run = await run_cli("receive", "--store", str(store), "--port", "0")
        assert run.code == 4, run.stderr
        assert "Traceback" not in run.stderr
        (error,) = [line for line in run.stderr.splitlines() if line.startswith("Error:")]
        assert error.startswith(f"Error: {store}: "), error
        assert why in error, error
    assert sorted(os.listdir(tmp_path)) == [
        "other.journal",
        "pipe",
        "s.journal",
    ]


# --- a hook that blocks its event loop ------------------------------------------------------------

# A hook doing synchronous I/O inside an `async def`: for the receipt BLOCK it opens a FIFO and
# reads it to its end, blocking whatever loop it runs on until the test writes and closes it.
BLOCKING_HOOK = """
import os

async def on_receipt(receipt):
    with open(os.environ["HOOK_LOG"], "a") as log:
        log.write(receipt["message_id"] + "\\n")
    if receipt["message_id"].startswith("BLOCK"):
        with open(os.environ["HOOK_FIFO"]) as fifo:
            fifo.read()
"""


def _opened_for_writing(path: Path) -> int:
    """Blocks until the hook opens the FIFO for reading: it is then blocked in its read."""
    return os.open(path, os.O_WRONLY)


@contextlib.asynccontextmanager
async def _receiver_with_a_blocked_hook(
    tmp_path: Path,
) -> AsyncIterator[tuple[ReceiverProcess, aiohttp.ClientSession, int]]:
    """A receiver whose hook blocks in a read of a FIFO on the first receipt ("BLOCK"): yields
    the receiver, a session, and the FIFO's write end (closing it ends the hook's read)."""
    (tmp_path / "blocking_hook.py").write_text(BLOCKING_HOOK)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    env = {"PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}", "HOOK_FIFO": str(fifo),
           "HOOK_LOG": str(tmp_path / "hooked.txt")}  # fmt: skip
    async with (
        receiver_process("--store", str(tmp_path / "s.journal"), "--hook",
                         "blocking_hook:on_receipt", env=env) as receiver,
        aiohttp.ClientSession() as session,
    ):  # fmt: skip
        async with session.get(receiver.url + "/webhooks/dlr", params=dlr_query("BLOCK")) as got:
            assert got.status == 204
        async with asyncio.timeout(20):
            writer = await asyncio.to_thread(_opened_for_writing, fifo)  # the hook is blocked
        yield receiver, session, writer


async def test_a_hook_that_blocks_holds_up_no_acknowledgement_and_each_receipt_is_hooked_once(
    tmp_path: Path,
) -> None:
    """Before, hooks ran on the loop that answers: one blocked in synchronous I/O froze every
    acknowledgement (and /healthz) until it returned. Now they are answered while it blocks;
    once it returns, every receipt's hook has run once and each is processed."""
    hook_log, store = tmp_path / "hooked.txt", tmp_path / "s.journal"
    async with _receiver_with_a_blocked_hook(tmp_path) as (receiver, session, writer):
        try:
            # A bound for the freeze this test is about, never reached when it passes.
            async with asyncio.timeout(20):
                for n in range(20):
                    async with session.get(
                        receiver.url + "/webhooks/dlr", params=dlr_query(f"M{n}")
                    ) as answer:
                        assert answer.status == 204
                async with session.get(receiver.url + "/healthz") as health:
                    assert health.status == 200
        finally:
            os.close(writer)  # the hook's read ends
        receiver.process.send_signal(signal.SIGTERM)  # its stop lets processing finish
        code, _ = await receiver.finish()
    assert code == 0, "".join(receiver.stderr_lines)
    hooked = hook_log.read_text().split()
    assert sorted(hooked) == sorted(["BLOCK", *(f"M{n}" for n in range(20))])  # each once
    with contextlib.closing(sqlite3.connect(store)) as connection:
        assert connection.execute("SELECT COUNT(*), SUM(processed) FROM receipts").fetchone() == (
            21,
            21,
        )


async def test_a_stop_while_a_hook_blocks_is_bounded_and_its_receipt_is_hooked_again(
    tmp_path: Path,
) -> None:
    """SIGTERM while a hook blocks for ever: the receiver exits 0 after its drain bound (10 s)
    and a second more, saying so, instead of never; the receipt stays unprocessed, so the next
    start hands it to the hook again."""
    store = tmp_path / "s.journal"
    async with _receiver_with_a_blocked_hook(tmp_path) as (receiver, _, writer):
        try:
            receiver.process.send_signal(signal.SIGTERM)
            code, _ = await receiver.finish(timeout_s=40)
        finally:
            os.close(writer)
    assert code == 0, "".join(receiver.stderr_lines)
    assert "still blocks its event loop" in "".join(receiver.stderr_lines)
    with contextlib.closing(sqlite3.connect(store)) as connection:
        assert connection.execute("SELECT processed FROM receipts").fetchall() == [(0,)]


async def test_a_hook_calling_sys_exit_on_its_own_loop_is_a_failed_hook_and_the_loop_goes_on(
    tmp_path: Path,
) -> None:
    """Raised out of a task, SystemExit would stop the hooks' loop and every hook after it: it
    is the hook's failure, counted, and the next receipt's hook still runs."""
    hooks = HookLoop()
    hooks.start()
    ran: list[str] = []

    async def hook(item: StoredReceipt) -> None:
        if item.receipt.message_id == "EXIT":
            sys.exit(3)
        ran.append(item.receipt.message_id)

    store = SqliteReceiptStore(str(tmp_path / "s.journal"), queue_size=10, hook=hooks.apart(hook))
    await store.start()
    try:
        await store.submit(callbacks.vonage_dlr(dlr_fields(messageId="EXIT")))
        await store.submit(callbacks.vonage_dlr(dlr_fields(messageId="AFTER")))
        async with asyncio.timeout(15):
            await store.wait_until(lambda: store.stats.processed >= 2)
    finally:
        await store.close()
        assert await hooks.stop(5)
    assert (store.stats.hook_errors, ran) == (1, ["AFTER"])
