"""`sms-blaster receive` as a real process: SIGTERM drains, --emit, and usage errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import socket
import sqlite3
from pathlib import Path

import aiohttp
import pytest

from tests.cli_helpers import receiver_process, run_cli


def dlr_query(message_id: str) -> dict[str, str]:
    return {
        "messageId": message_id,
        "status": "delivered",
        "msisdn": "447700900123",
        "to": "Shop",
        "err-code": "0",
        "client-ref": f"c0ffee123456-{message_id[1:]}",
    }


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
                await asyncio.sleep(0.3)
                receiver.process.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.3)
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
            await asyncio.sleep(0.2)
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
