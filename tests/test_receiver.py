"""The webhook receiver in process: every route and format, signatures, the durable ack, busy 503s,
correlation with campaign rows, and processing after the acknowledgement."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import itertools
import json
import logging
import re
import socket
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import ClientResponse

from sms_blaster.journal import schema
from sms_blaster.journal.queries import load_summaries
from sms_blaster.journal.receipt_journal import ReceiptJournal
from sms_blaster.journal.schema import RowState
from sms_blaster.models import Delivery, ReceiptKind, StoredReceipt
from sms_blaster.receiver import callbacks, http, signatures
from sms_blaster.receiver.app import ReceiverApp
from sms_blaster.receiver.http import Server
from sms_blaster.receiver.metrics import Metrics
from sms_blaster.receiver.refusals import Refusal, RefusalLog
from sms_blaster.receiver.stores.base import StoreBusy
from sms_blaster.receiver.stores.sqlite import SqliteReceiptStore
from sms_blaster.settings import ReceiveSettings

FIXTURES = Path(__file__).parent / "fixtures"
VECTORS = json.loads((FIXTURES / "signature-vectors.json").read_text())
SECRET = "my_secret_key_for_testing"
TOKEN = "twilio-token"
CAMPAIGN_ID = "c0ffee123456"
FOREVER_S = 1e10  # a max age that lets the fixed timestamps of the reference vectors through


@dataclass
class Client:
    """A client session to a receiver listening on loopback, paths relative to it."""

    session: aiohttp.ClientSession
    host: str
    port: int

    async def get(self, path: str, **options: Any) -> ClientResponse:
        return await self.session.get(path, **options)

    async def post(self, path: str, **options: Any) -> ClientResponse:
        return await self.session.post(path, **options)


@dataclass
class Receiver:
    client: Client
    store: SqliteReceiptStore
    path: str
    emitted: list[StoredReceipt]
    hooked: list[StoredReceipt]

    async def dlr(self, method: str = "GET", **fields: str) -> ClientResponse:
        params = dlr_fields(**fields)
        if method == "GET":
            return await self.client.get("/webhooks/dlr", params=params)
        return await self.client.post("/webhooks/dlr", data=params)

    def rows(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        with contextlib.closing(sqlite3.connect(self.path)) as connection:
            return connection.execute(sql, args).fetchall()


def dlr_fields(**fields: str) -> dict[str, str]:
    base = {
        "msisdn": "447700900123",
        "to": "Shop",
        "network-code": "23410",
        "messageId": "0A0000000001",
        "price": "0.03330000",
        "status": "delivered",
        "scts": "2001011400",
        "err-code": "0",
        "api-key": "abcd1234",
        "client-ref": f"{CAMPAIGN_ID}-1",
        "message-timestamp": "2020-01-01 12:00:00",
    }
    base.update({key.replace("_", "-"): value for key, value in fields.items()})
    return base


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path,
    *,
    hook: Callable[[StoredReceipt], Awaitable[None]] | None = None,
    emit: Callable[[Sequence[StoredReceipt]], None] | None = None,
    clock: Callable[[], float] = time.time,
    **settings: Any,
) -> AsyncIterator[Receiver]:
    path = str(tmp_path / "campaign.journal")
    config = ReceiveSettings(store_path=path, **settings)
    emitted: list[StoredReceipt] = []
    hooked: list[StoredReceipt] = []

    async def record_hook(item: StoredReceipt) -> None:
        hooked.append(item)
        if hook is not None:
            await hook(item)

    def record_emit(batch: Sequence[StoredReceipt]) -> None:
        if emit is not None:
            emit(batch)
        emitted.extend(batch)

    metrics = Metrics()
    store = SqliteReceiptStore(
        path,
        queue_size=config.queue_size,
        hook=record_hook,
        emit=record_emit,
        observe_commit=metrics.observe_commit,
        clock=clock,
    )
    await store.start()
    app = ReceiverApp(config, store, metrics, clock=clock)
    server = Server(app.handle, refusals=app.refusals, metrics=metrics)
    await server.listen("127.0.0.1", 0)
    host, port = server.address
    session = aiohttp.ClientSession(base_url=f"http://{host}:{port}")
    try:
        yield Receiver(Client(session, host, port), store, path, emitted, hooked)
    finally:
        await session.close()
        await server.close(grace_s=5)
        await store.close()


async def processed(receiver: Receiver, count: int) -> None:
    """Wait until `count` receipts have been processed (bounded)."""
    async with asyncio.timeout(5):
        await receiver.store.wait_until(lambda: receiver.store.stats.processed >= count)


def add_campaign(path: str, *, provider: str = "vonage") -> None:
    with contextlib.closing(schema.connect(path)) as connection:
        connection.execute(
            "INSERT INTO campaigns VALUES ('spring', ?, '/data/spring.csv', '', 'Shop', ?, 'to', "
            "'', 0)",
            (CAMPAIGN_ID, provider),
        )


def add_row(
    path: str, line: int, state: RowState, message_ids: str = "", segments: int = 1
) -> None:
    with contextlib.closing(schema.connect(path)) as connection:
        connection.execute(
            "INSERT INTO rows VALUES ('spring', ?, ?, 0, ?, ?, ?, 'gsm7', 1, ?, NULL, NULL, "
            "NULL, NULL, NULL, 0, NULL, NULL)",
            (line, state.value, f"4477009{line:05d}", f"{CAMPAIGN_ID}-{line}", segments,
             message_ids),
        )  # fmt: skip


def funnel(path: str) -> dict[str, int]:
    (summary,) = load_summaries(path)
    delivery = summary.delivery
    assert delivery is not None
    return {
        "sent": delivery.sent,
        "delivered": delivery.delivered,
        "failed": delivery.failed,
        "pending": delivery.pending,
    }


# --- routes and formats -------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_delivery_receipt_by_query_or_form_is_stored_then_acknowledged(
    tmp_path: Path, method: str
) -> None:
    """GET query and POST form receipts answer 204 once stored, with every field kept."""
    async with running(tmp_path) as receiver:
        response = await receiver.dlr(method)
        assert response.status == 204
        rows = receiver.rows("SELECT provider, kind, message_id, status, delivery, payload "
                             "FROM receipts")  # fmt: skip
    assert len(rows) == 1
    provider, kind, message_id, status, delivery, payload = rows[0]
    assert (provider, kind, message_id, status, delivery) == (
        "vonage-sms", "dlr", "0A0000000001", "delivered", "delivered",
    )  # fmt: skip
    assert json.loads(payload)["network-code"] == "23410"


async def test_a_delivery_receipt_as_json_is_stored(tmp_path: Path) -> None:
    """The POST-JSON format Vonage recommends."""
    async with running(tmp_path) as receiver:
        fields = dlr_fields(status="failed", err_code="6")
        response = await receiver.client.post("/webhooks/dlr", json=fields)
        assert response.status == 204
        rows = receiver.rows("SELECT status, error_code, delivery FROM receipts")
    assert rows == [("failed", "6", "failed")]


async def test_an_inbound_message_is_stored_and_needs_no_correlation(tmp_path: Path) -> None:
    """Inbound SMS are kept with who wrote and what, and count as applied at once."""
    fields = {"msisdn": "447700900555", "to": "447700900001", "messageId": "IN01", "text": "STOP",
              "type": "text", "keyword": "STOP"}  # fmt: skip
    async with running(tmp_path) as receiver:
        response = await receiver.client.post("/webhooks/inbound", data=fields)
        assert response.status == 204
        await processed(receiver, 1)
        rows = receiver.rows("SELECT kind, sender, to_number, applied FROM receipts")
    assert rows == [("inbound", "447700900555", "447700900001", 1)]


async def test_a_messages_api_status_is_stored_with_its_error_code(tmp_path: Path) -> None:
    """message_uuid, status, client_ref and the error code in `error.title`."""
    body = {"message_uuid": "aaaaaaaa-bbbb-4ccc-8ddd-0123456789ab", "to": "447700900000",
            "from": "Shop", "timestamp": "2025-02-03T12:14:25Z", "status": "rejected",
            "channel": "sms", "client_ref": f"{CAMPAIGN_ID}-4",
            "error": {"type": "https://developer.vonage.com/api-errors/messages#1250",
                      "title": "1250", "detail": "Unroutable"}}  # fmt: skip
    async with running(tmp_path) as receiver:
        response = await receiver.client.post("/webhooks/messages/status", json=body)
        assert response.status == 200
        rows = receiver.rows("SELECT provider, status, delivery, error_code, client_ref "
                             "FROM receipts")  # fmt: skip
    assert rows == [("vonage-messages", "rejected", "failed", "1250", f"{CAMPAIGN_ID}-4")]


async def test_a_twilio_status_callback_takes_its_client_ref_from_the_url(tmp_path: Path) -> None:
    """Twilio echoes no reference, so sms-blaster puts it in the StatusCallback URL."""
    fields = {"MessageSid": "SM0001", "MessageStatus": "undelivered", "ErrorCode": "30003",
              "To": "+447700900000", "From": "+15005550006", "AccountSid": "AC1"}  # fmt: skip
    async with running(tmp_path) as receiver:
        response = await receiver.client.post(
            f"/webhooks/twilio/status?client_ref={CAMPAIGN_ID}-2", data=fields
        )
        assert response.status == 200
        rows = receiver.rows("SELECT provider, delivery, error_code, client_ref FROM receipts")
    assert rows == [("twilio", "failed", "30003", f"{CAMPAIGN_ID}-2")]


@pytest.mark.parametrize(
    ("route", "data"),
    [
        ("/webhooks/dlr", {"status": "delivered"}),
        ("/webhooks/inbound", {"text": "hello"}),
        ("/webhooks/twilio/status", {"MessageStatus": "sent"}),
    ],
)
async def test_a_callback_missing_its_id_is_refused_with_400(
    tmp_path: Path, route: str, data: dict[str, str]
) -> None:
    """Nothing to store: 400 (not retried by the provider), and nothing stored."""
    async with running(tmp_path) as receiver:
        response = await receiver.client.post(route, data=data)
        assert response.status == 400
        assert receiver.rows("SELECT COUNT(*) FROM receipts") == [(0,)]


@pytest.mark.parametrize(
    "body",
    [
        {"messageId": None, "status": "delivered"},
        {"messageId": True, "status": "delivered"},
        {"messageId": "0A1", "status": ["delivered"]},
    ],
)
async def test_a_json_receipt_whose_id_or_status_is_not_text_is_refused_with_400(
    tmp_path: Path, body: dict[str, object]
) -> None:
    """`null`, `true` or a list is no id or status: not stored as the text "null" or "[...]"."""
    async with running(tmp_path) as receiver:
        response = await receiver.client.post("/webhooks/dlr", json=body)
        assert response.status == 400
        assert receiver.rows("SELECT COUNT(*) FROM receipts") == [(0,)]


async def test_a_messages_status_that_is_not_json_is_refused_with_400(tmp_path: Path) -> None:
    """A broken body gets a reason, not a stack trace."""
    async with running(tmp_path) as receiver:
        response = await receiver.client.post(
            "/webhooks/messages/status", data=b"{", headers={"Content-Type": "application/json"}
        )
        assert response.status == 400
        assert await response.text() == (
            "body is not JSON (Expecting property name enclosed in double quotes at line 1 "
            "column 2)\n"
        )


# --- signatures ---------------------------------------------------------------------------------

SMS_VECTORS = [
    vector
    for vector in VECTORS["vonage_sms_signature"]["vectors"]
    if "messageId" in vector["params"]
]


@pytest.mark.parametrize("vector", SMS_VECTORS, ids=lambda vector: vector["method"])
async def test_a_signed_inbound_message_from_the_reference_is_accepted(
    tmp_path: Path, vector: dict[str, Any]
) -> None:
    """Vonage's own signed inbound example passes with each method the dashboard offers."""
    fields = {**vector["params"], "sig": vector["sig"]}
    async with running(tmp_path, vonage_secret=vector["secret"], signature_method=vector["method"],
                       max_age_s=FOREVER_S) as receiver:  # fmt: skip
        response = await receiver.client.post("/webhooks/inbound", data=fields)
        assert response.status == 204


@pytest.mark.parametrize("vector", SMS_VECTORS, ids=lambda vector: vector["method"])
async def test_a_tampered_signed_message_is_refused_with_401(
    tmp_path: Path, vector: dict[str, Any]
) -> None:
    """One changed value and the signature no longer matches: 401, nothing stored."""
    fields = {**vector["params"], "sig": vector["sig"], "text": "Send money"}
    async with running(tmp_path, vonage_secret=vector["secret"], signature_method=vector["method"],
                       max_age_s=FOREVER_S) as receiver:  # fmt: skip
        response = await receiver.client.post("/webhooks/inbound", data=fields)
        assert response.status == 401
        assert await response.text() == "bad signature\n"
        assert receiver.rows("SELECT COUNT(*) FROM receipts") == [(0,)]


@pytest.mark.parametrize("method", signatures.SMS_METHODS)
async def test_a_receipt_signed_now_is_accepted_and_a_wrongly_signed_one_refused_with_401(
    tmp_path: Path, method: str
) -> None:
    """With a secret set, every Vonage SMS callback must carry a valid `sig`."""
    signed = signatures.sign_vonage_sms(dlr_fields(), SECRET, method, now_s=time.time())
    async with running(tmp_path, vonage_secret=SECRET, signature_method=method) as receiver:
        assert (await receiver.client.get("/webhooks/dlr", params=signed)).status == 204
        forged = signatures.sign_vonage_sms(
            dlr_fields(messageId="0A0000000002"), "not-the-secret", method, now_s=time.time()
        )
        refused = await receiver.client.get("/webhooks/dlr", params=forged)
        assert refused.status == 401
        assert await refused.text() == "bad signature\n"
        assert "Retry-After" not in refused.headers


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_an_unsigned_vonage_callback_is_answered_503_so_that_it_comes_again(
    tmp_path: Path, method: str
) -> None:
    """Vonage may send a callback unsigned after an internal error, and retries only 429/5xx."""
    async with running(tmp_path, vonage_secret=SECRET) as receiver:
        unsigned = await receiver.dlr(method)
        assert unsigned.status == 503
        assert unsigned.headers["Retry-After"] == "1"
        assert await unsigned.text() == "missing sig\n"
        assert receiver.rows("SELECT COUNT(*) FROM receipts") == [(0,)]


async def test_a_messages_status_without_authorization_is_answered_503(tmp_path: Path) -> None:
    """No JWT at all is Vonage's unsigned retry case; a wrong JWT stays 401."""
    (vector,) = [v for v in VECTORS["vonage_messages_webhook_jwt"]["vectors"] if "body" in v]
    body = vector["body"].encode()
    json_type = {"Content-Type": "application/json"}
    async with running(tmp_path, vonage_secret=vector["secret"], max_age_s=FOREVER_S) as receiver:
        route = "/webhooks/messages/status"
        unsigned = await receiver.client.post(route, data=body, headers=json_type)
        assert unsigned.status == 503
        assert unsigned.headers["Retry-After"] == "1"
        wrong = {**json_type, "Authorization": f"Bearer {vector['token']}x"}
        assert (await receiver.client.post(route, data=body, headers=wrong)).status == 401


async def test_a_field_name_with_an_ampersand_or_equals_sign_is_refused_with_400(
    tmp_path: Path,
) -> None:
    """`sig` escapes `&` and `=` in values only: two fields merged into one name sign the same."""
    signed = signatures.sign_vonage_sms(dlr_fields(), SECRET, "sha256", now_s=time.time())
    merged = {key: value for key, value in signed.items() if key not in ("msisdn", "network-code")}
    merged[f"msisdn={signed['msisdn']}&network-code"] = signed["network-code"]
    assert signatures.verify_vonage_sms(merged, SECRET, "sha256", now_s=time.time(),
                                        max_age_s=60) is None  # fmt: skip
    async with running(tmp_path, vonage_secret=SECRET, signature_method="sha256") as receiver:
        response = await receiver.client.post("/webhooks/dlr", data=merged)
        assert response.status == 400
        assert await response.text() == "field name with '&' or '='\n"
        assert receiver.rows("SELECT COUNT(*) FROM receipts") == [(0,)]


async def test_a_stale_signed_receipt_is_refused(tmp_path: Path) -> None:
    """A timestamp older than --max-age is refused even with a good signature."""
    signed = signatures.sign_vonage_sms(dlr_fields(), SECRET, "sha256", now_s=time.time() - 600)
    async with running(tmp_path, vonage_secret=SECRET, signature_method="sha256",
                       max_age_s=300) as receiver:  # fmt: skip
        response = await receiver.client.post("/webhooks/dlr", json=signed)
        assert response.status == 401
        assert await response.text() == "stale timestamp\n"


async def test_signatures_and_stored_receipts_follow_the_clock_given(tmp_path: Path) -> None:
    """The clock is a parameter: freshness and `received_at` are checked without the wall clock."""
    now_s = 1_700_000_000.0
    fresh = signatures.sign_vonage_sms(dlr_fields(), SECRET, "sha256", now_s=now_s - 10)
    stale = signatures.sign_vonage_sms(
        dlr_fields(messageId="OLD"), SECRET, "sha256", now_s=now_s - 600
    )
    async with running(tmp_path, clock=lambda: now_s, vonage_secret=SECRET,
                       signature_method="sha256", max_age_s=300) as receiver:  # fmt: skip
        assert (await receiver.client.post("/webhooks/dlr", json=fresh)).status == 204
        assert (await receiver.client.post("/webhooks/dlr", json=stale)).status == 401
        assert receiver.rows("SELECT received_at FROM receipts") == [(now_s,)]


async def test_the_reference_messages_jwt_is_accepted_and_a_changed_body_refused(
    tmp_path: Path,
) -> None:
    """The JWT's payload_hash ties the token to the exact body."""
    (vector,) = [v for v in VECTORS["vonage_messages_webhook_jwt"]["vectors"] if "body" in v]
    headers = {"Authorization": f"Bearer {vector['token']}", "Content-Type": "application/json"}
    body = vector["body"].encode()
    async with running(tmp_path, vonage_secret=vector["secret"], max_age_s=FOREVER_S) as receiver:
        good = await receiver.client.post("/webhooks/messages/status", data=body, headers=headers)
        assert good.status == 200
        changed = body.replace(b"delivered", b"rejected")
        bad = await receiver.client.post("/webhooks/messages/status", data=changed, headers=headers)
        assert bad.status == 401
        assert await bad.text() == "body does not match payload_hash\n"


async def test_a_messages_jwt_without_payload_hash_is_refused_with_401(tmp_path: Path) -> None:
    """A signed token that hashes no body would vouch for any body: the receiver requires it."""
    token = signatures.make_jwt_hs256({"iat": int(time.time())}, SECRET)
    headers = {"Authorization": f"Bearer {token}"}
    body = {"message_uuid": "u1", "status": "delivered"}
    async with running(tmp_path, vonage_secret=SECRET) as receiver:
        response = await receiver.client.post(
            "/webhooks/messages/status", json=body, headers=headers
        )
        assert response.status == 401
        assert await response.text() == "missing payload_hash\n"


async def test_a_twilio_callback_is_checked_against_the_public_url(tmp_path: Path) -> None:
    """Behind a proxy, Twilio signs the URL it called: --public-url's scheme and host."""
    fields = {"MessageSid": "SM0002", "MessageStatus": "delivered", "To": "+447700900000"}
    path = f"/webhooks/twilio/status?client_ref={CAMPAIGN_ID}-3"
    public = "https://hooks.example.com"
    signature = signatures.sign_twilio(public + path, list(fields.items()), TOKEN)
    async with running(tmp_path, twilio_token=TOKEN, public_url=public) as receiver:
        good = await receiver.client.post(
            path, data=fields, headers={"X-Twilio-Signature": signature}
        )
        assert good.status == 200
        tampered = await receiver.client.post(
            path, data={**fields, "MessageStatus": "failed"},
            headers={"X-Twilio-Signature": signature},
        )  # fmt: skip
        assert tampered.status == 401


@pytest.mark.parametrize("public", [None, "https://hooks.example.com"])
async def test_a_twilio_signature_is_checked_against_the_url_as_sent_not_decoded(
    tmp_path: Path, public: str | None
) -> None:
    """Twilio signs the URL byte for byte: escapes stay as they were sent (`%2F`, lowercase)."""
    target = f"/webhooks/twilio/status?client_ref={CAMPAIGN_ID}-3&note=a%2Fb%20c%7e"
    body = "MessageSid=SM0003&MessageStatus=delivered"
    fields = [("MessageSid", "SM0003"), ("MessageStatus", "delivered")]
    async with running(tmp_path, twilio_token=TOKEN, public_url=public) as receiver:
        host = f"{receiver.client.host}:{receiver.client.port}"
        signature = signatures.sign_twilio((public or f"http://{host}") + target, fields, TOKEN)
        # A raw request: aiohttp's client would normalise the target before sending it.
        reader, writer = await asyncio.open_connection(receiver.client.host, receiver.client.port)
        writer.write(
            f"POST {target} HTTP/1.1\r\nHost: {host}\r\nX-Twilio-Signature: {signature}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}".encode()
        )
        async with asyncio.timeout(5):
            status_line = await reader.readline()
            await reader.read()
        writer.close()
        assert status_line.split()[1] == b"200"


async def test_a_twilio_json_callback_is_checked_against_its_raw_body(tmp_path: Path) -> None:
    """With bodySHA256 in the URL, the raw body's hash is what Twilio signed."""
    body = b'{"MessageSid": "SM0004", "MessageStatus": "delivered"}'
    path = f"/webhooks/twilio/status?bodySHA256={hashlib.sha256(body).hexdigest()}"
    public = "https://hooks.example.com"
    signature = signatures.sign_twilio(public + path, [], TOKEN)
    headers = {"X-Twilio-Signature": signature, "Content-Type": "application/json"}
    async with running(tmp_path, twilio_token=TOKEN, public_url=public) as receiver:
        response = await receiver.client.post(path, data=body, headers=headers)
        # Signed and hashed correctly; refused only because Twilio's SMS callbacks are forms.
        assert response.status == 415
        assert await response.text() == (
            "content type not read here (application/json; send "
            "application/x-www-form-urlencoded)\n"
        )


# --- the HTTP layer -----------------------------------------------------------------------------


async def raw_exchange(receiver: Receiver, request: bytes) -> bytes:
    """Send raw bytes on a new connection; everything answered until the receiver closes it."""
    reader, writer = await asyncio.open_connection(receiver.client.host, receiver.client.port)
    try:
        writer.write(request)
        async with asyncio.timeout(5):
            return await reader.read()
    finally:
        writer.close()


def get_request(target: str, *headers: str, close: bool = False) -> bytes:
    lines = [f"GET {target} HTTP/1.1", "Host: receiver", *headers]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_pipelined_requests_on_one_connection_are_answered_in_order(tmp_path: Path) -> None:
    """Three requests in one write: three answers, in the order asked, on the same connection."""
    query = urllib.parse.urlencode(dlr_fields(messageId="P1"))
    raw = (
        get_request(f"/webhooks/dlr?{query}")
        + get_request("/healthz")
        + get_request("/nowhere", close=True)
    )
    async with running(tmp_path) as receiver:
        answer = await raw_exchange(receiver, raw)
        assert receiver.rows("SELECT message_id FROM receipts") == [("P1",)]
    statuses = re.findall(rb"HTTP/1.1 (\d+) ", answer)
    assert statuses == [b"204", b"200", b"404"]
    assert answer.endswith(b"not found\n")


async def test_a_callback_asking_for_a_protocol_upgrade_gets_one_400_and_is_not_stored(
    tmp_path: Path,
) -> None:
    """`Upgrade: websocket` is refused before the route runs: one answer, nothing stored."""
    query = urllib.parse.urlencode(dlr_fields(messageId="U1"))
    raw = get_request(f"/webhooks/dlr?{query}", "Connection: Upgrade", "Upgrade: websocket")
    async with running(tmp_path) as receiver:
        answer = await raw_exchange(receiver, raw)
        assert receiver.rows("SELECT message_id FROM receipts") == []
    assert re.findall(rb"HTTP/1.1 (\d+) ", answer) == [b"400"]
    assert answer.endswith(b"protocol upgrade not served here\n")


async def test_connect_gets_one_501_and_the_connection_closes(tmp_path: Path) -> None:
    """CONNECT is no tunnel here: one answer, then the connection closes."""
    raw = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
    async with running(tmp_path) as receiver:
        answer = await raw_exchange(receiver, raw + get_request("/healthz"))
    assert re.findall(rb"HTTP/1.1 (\d+) ", answer) == [b"501"]
    assert answer.endswith(b"CONNECT not served here\n")


async def test_a_request_expecting_100_continue_is_told_to_go_on(tmp_path: Path) -> None:
    """`Expect: 100-continue` gets its interim answer, then the receipt is stored."""
    body = json.dumps(dlr_fields(messageId="E1")).encode()
    head = (
        "POST /webhooks/dlr HTTP/1.1\r\nHost: receiver\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
    ).encode()
    async with running(tmp_path) as receiver:
        reader, writer = await asyncio.open_connection(receiver.client.host, receiver.client.port)
        try:
            writer.write(head)
            async with asyncio.timeout(5):
                interim = await reader.readuntil(b"\r\n\r\n")
                writer.write(body)
                final = await reader.read()
        finally:
            writer.close()
        assert receiver.rows("SELECT message_id FROM receipts") == [("E1",)]
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert final.startswith(b"HTTP/1.1 204 No Content\r\n")


def shorten(monkeypatch: pytest.MonkeyPatch, timeout: str) -> None:
    """Make one of the server's timeouts, and the sweep that enforces it, a fraction of a second."""
    monkeypatch.setattr(http, timeout, 0.2)
    monkeypatch.setattr(http, "_SWEEP_EVERY_S", 0.05)


async def test_a_request_head_never_finished_is_answered_408_and_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A head without its final blank line holds no connection past the head timeout."""
    shorten(monkeypatch, "HEAD_TIMEOUT_S")
    async with running(tmp_path) as receiver:
        answer = await raw_exchange(receiver, b"GET /healthz HTTP/1.1\r\nHost: receiver\r\n")
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"Connection: close\r\n" in answer


async def test_a_keep_alive_connection_idle_between_requests_is_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After its answer, a connection that asks nothing more is closed after the idle time."""
    shorten(monkeypatch, "IDLE_TIMEOUT_S")
    async with running(tmp_path) as receiver:
        answer = await raw_exchange(receiver, get_request("/healthz"))
    assert re.findall(rb"HTTP/1.1 (\d+) ", answer) == [b"200"]


async def test_a_body_announced_too_large_is_answered_413_and_the_answer_ends_the_stream(
    tmp_path: Path,
) -> None:
    """The client sees the end of the answer's stream at once, not when its body times out."""
    head = (
        b"POST /webhooks/dlr HTTP/1.1\r\nHost: receiver\r\nContent-Type: application/json\r\n"
        b"Content-Length: 300000\r\nConnection: close\r\n\r\n"
    )
    async with running(tmp_path) as receiver:
        answer = await raw_exchange(receiver, head)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert answer.endswith(b"body over 256 KiB\n")


async def test_a_request_without_a_body_expecting_100_continue_gets_only_its_answer(
    tmp_path: Path,
) -> None:
    """There is nothing to go on with: no interim answer, just the final one."""
    async with running(tmp_path) as receiver:
        answer = await raw_exchange(
            receiver, get_request("/healthz", "Expect: 100-continue", close=True)
        )
    assert re.findall(rb"HTTP/1.1 (\d+) ", answer) == [b"200"]


def send_until_cut(sock: socket.socket, data: bytes) -> OSError:
    """Write `data` over and over without reading; the error the receiver's reset gives."""
    try:
        while True:
            sock.sendall(data)
    except (ConnectionResetError, BrokenPipeError) as exc:
        return exc


async def test_a_client_that_reads_none_of_its_answers_is_cut_after_the_idle_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pipelining without ever reading holds a connection no longer than an idle one."""
    shorten(monkeypatch, "IDLE_TIMEOUT_S")
    async with running(tmp_path) as receiver:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # answers back up at once
            sock.connect((receiver.client.host, receiver.client.port))
            sock.settimeout(5.0)  # a write waiting this long: the connection was never cut
            cut = await asyncio.to_thread(send_until_cut, sock, get_request("/metrics") * 1000)
    assert isinstance(cut, ConnectionResetError | BrokenPipeError)


async def test_a_gzip_compressed_json_callback_is_stored(tmp_path: Path) -> None:
    """A body sent with Content-Encoding: gzip is read uncompressed."""
    body = gzip.compress(json.dumps(dlr_fields(messageId="G1")).encode())
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    async with running(tmp_path) as receiver:
        response = await receiver.client.post("/webhooks/dlr", data=body, headers=headers)
        assert response.status == 204
        assert receiver.rows("SELECT message_id FROM receipts") == [("G1",)]


async def test_a_multipart_form_callback_is_read_like_an_urlencoded_one(tmp_path: Path) -> None:
    """multipart/form-data fields are the callback's fields; a file part is left out."""
    form = aiohttp.FormData()
    for name, value in dlr_fields(messageId="F1").items():
        form.add_field(name, value)
    form.add_field("attachment", b"bytes", filename="a.bin")
    async with running(tmp_path) as receiver:
        response = await receiver.client.post("/webhooks/dlr", data=form)
        assert response.status == 204
        (payload,) = receiver.rows("SELECT payload FROM receipts")
    assert json.loads(payload[0]) == dlr_fields(messageId="F1")


async def test_a_multipart_form_without_its_closing_boundary_is_refused_with_400(
    tmp_path: Path,
) -> None:
    """A truncated multipart body is refused, not stored with its last field cut short."""
    body = (
        b'--B\r\nContent-Disposition: form-data; name="messageId"\r\n\r\nM1\r\n'
        b'--B\r\nContent-Disposition: form-data; name="status"\r\n\r\ndelivered\r\n-'
    )
    headers = {"Content-Type": "multipart/form-data; boundary=B"}
    async with running(tmp_path) as receiver:
        response = await receiver.client.post("/webhooks/dlr", data=body, headers=headers)
        assert response.status == 400
        assert "closing boundary" in await response.text()
        assert receiver.rows("SELECT message_id FROM receipts") == []


async def test_a_route_asked_with_a_method_it_does_not_take_is_answered_405(
    tmp_path: Path,
) -> None:
    """405 names the methods the route takes; a HEAD of /healthz has the GET's headers only."""
    async with running(tmp_path) as receiver:
        refused = await receiver.client.get("/webhooks/twilio/status")
        head = await raw_exchange(
            receiver, b"HEAD /healthz HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n"
        )
    assert refused.status == 405
    assert refused.headers["Allow"] == "POST"
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: 3\r\n" in head
    assert head.endswith(b"\r\n\r\n")


# --- durable ack, duplicates, busy --------------------------------------------------------------


async def test_an_acknowledged_receipt_is_already_committed(tmp_path: Path) -> None:
    """By the time the 204 arrives, another connection reads the receipt."""
    async with running(tmp_path) as receiver:
        assert (await receiver.dlr()).status == 204
        assert receiver.rows("SELECT message_id FROM receipts") == [("0A0000000001",)]


async def test_a_duplicate_receipt_is_acknowledged_but_stored_and_emitted_once(
    tmp_path: Path,
) -> None:
    """The provider retries for days: the same receipt again is a no-op."""
    async with running(tmp_path) as receiver:
        for _ in range(3):
            assert (await receiver.dlr("POST")).status == 204
        await processed(receiver, 1)
        assert receiver.rows("SELECT COUNT(*) FROM receipts") == [(1,)]
        assert receiver.store.stats.duplicates == 2
    assert [item.receipt.message_id for item in receiver.emitted] == ["0A0000000001"]
    assert len(receiver.hooked) == 1


async def test_a_full_queue_answers_503_and_the_retry_loses_nothing(tmp_path: Path) -> None:
    """While the store is locked the queue fills; the overflow gets 503, the retry lands."""
    async with running(tmp_path, queue_size=1) as receiver:
        blocker = sqlite3.connect(receiver.path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # the writer waits on SQLite's lock
        try:
            store = receiver.store
            first = asyncio.ensure_future(receiver.dlr(messageId="M1"))
            async with asyncio.timeout(5):
                await store.wait_until(lambda: store.committing == 1)  # M1 waits on the lock
                second = asyncio.ensure_future(receiver.dlr(messageId="M2"))
                await store.wait_until(lambda: store.depth == 1)  # M2 fills the queue
            third = await receiver.dlr(messageId="M3")
            assert third.status == 503
            assert third.headers["Retry-After"] == "1"
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert (await first).status == 204
        assert (await second).status == 204
        assert (await receiver.dlr(messageId="M3")).status == 204  # the provider's retry
        ids = receiver.rows("SELECT message_id FROM receipts ORDER BY message_id")
    assert ids == [("M1",), ("M2",), ("M3",)]


# --- correlation --------------------------------------------------------------------------------


async def test_a_message_is_delivered_only_when_every_part_is(tmp_path: Path) -> None:
    """Two parts: one delivered receipt leaves it pending, the second delivers it."""
    async with running(tmp_path) as receiver:
        add_campaign(receiver.path)
        add_row(receiver.path, 1, RowState.SENT, "P1 P2", segments=2)
        await receiver.dlr(messageId="P1")
        await processed(receiver, 1)
        assert funnel(receiver.path) == {"sent": 1, "delivered": 0, "failed": 0, "pending": 1}
        await receiver.dlr(messageId="P2")
        await processed(receiver, 2)
        assert funnel(receiver.path) == {"sent": 1, "delivered": 1, "failed": 0, "pending": 0}


async def test_a_message_fails_when_any_part_fails(tmp_path: Path) -> None:
    """One failed part is enough, and its status and code are counted."""
    async with running(tmp_path) as receiver:
        add_campaign(receiver.path)
        add_row(receiver.path, 1, RowState.SENT, "P1 P2", segments=2)
        await receiver.dlr(messageId="P1")
        await receiver.dlr(messageId="P2", status="failed", err_code="6")
        await processed(receiver, 2)
        (summary,) = load_summaries(receiver.path)
    assert summary.delivery is not None
    assert (summary.delivery.delivered, summary.delivery.failed) == (0, 1)
    assert [(e.kind, e.code, e.count) for e in summary.delivery.errors] == [("failed", "6", 1)]


async def test_a_final_state_is_not_undone_by_a_late_intermediate_receipt(tmp_path: Path) -> None:
    """Receipts arrive out of order: `accepted` after `delivered` changes nothing."""
    async with running(tmp_path) as receiver:
        add_campaign(receiver.path)
        add_row(receiver.path, 1, RowState.SENT, "P1")
        await receiver.dlr(messageId="P1")
        await receiver.dlr(messageId="P1", status="accepted")
        await processed(receiver, 2)
        assert receiver.rows("SELECT status, delivery FROM deliveries") == [
            ("delivered", "delivered")
        ]


async def test_a_receipt_that_arrives_before_its_send_is_recorded_counts_later(
    tmp_path: Path,
) -> None:
    """The provider can call back before its send answer: the row written later still matches."""
    async with running(tmp_path) as receiver:
        add_campaign(receiver.path)
        await receiver.dlr(messageId="P1")
        await processed(receiver, 1)
        add_row(receiver.path, 1, RowState.SENT, "P1")
        assert funnel(receiver.path) == {"sent": 1, "delivered": 1, "failed": 0, "pending": 0}


async def test_a_receipt_proves_an_unknown_row_was_sent(tmp_path: Path) -> None:
    """A row whose answer was lost becomes `sent`: the provider reports on it."""
    async with running(tmp_path) as receiver:
        add_campaign(receiver.path)
        add_row(receiver.path, 1, RowState.UNKNOWN)
        await receiver.dlr(messageId="P1")
        await processed(receiver, 1)
        assert receiver.rows("SELECT state FROM rows") == [("sent",)]
        assert funnel(receiver.path)["delivered"] == 1


async def test_a_receipt_without_client_ref_is_matched_by_the_id_of_a_single_part_message(
    tmp_path: Path,
) -> None:
    """Without a reference the recorded message id ties the receipt to its row."""
    async with running(tmp_path) as receiver:
        add_campaign(receiver.path)
        add_row(receiver.path, 7, RowState.SENT, "P7")
        await receiver.dlr(messageId="P7", client_ref="")
        await processed(receiver, 1)
        assert receiver.rows("SELECT line, delivery FROM deliveries") == [(7, "delivered")]


async def test_without_client_ref_only_the_first_part_of_a_multipart_message_is_matched(
    tmp_path: Path,
) -> None:
    """The documented limit of the fallback: the index finds a row by its first part's id only.

    sms-blaster sends a client ref with every message, so its own receipts never rely on this.
    """
    async with running(tmp_path) as receiver:
        add_campaign(receiver.path)
        add_row(receiver.path, 7, RowState.SENT, "P1 P2", segments=2)
        await receiver.dlr(messageId="P1", client_ref="")
        await receiver.dlr(messageId="P2", client_ref="")
        await processed(receiver, 2)
        assert receiver.rows("SELECT message_id FROM deliveries") == [("P1",)]
        assert receiver.rows("SELECT message_id, applied FROM receipts ORDER BY id") == [
            ("P1", 1), ("P2", 0),
        ]  # fmt: skip


def test_a_batch_of_several_statements_gets_its_ids_in_order_and_tells_duplicates(
    tmp_path: Path,
) -> None:
    """A batch longer than one INSERT statement: each new receipt its id, each retry None."""
    journal = ReceiptJournal.open(str(tmp_path / "campaign.journal"))
    try:
        receipts = [callbacks.vonage_dlr(dlr_fields(messageId=f"B{n:03d}")) for n in range(200)]
        first = journal.insert(receipts[:150], 1.0)
        again = journal.insert(receipts[100:], 2.0)  # 50 retries, then 50 new ones
    finally:
        journal.close()
    assert [item.id if item else None for item in first] == list(range(1, 151))
    assert [item.id if item else None for item in again] == [None] * 50 + list(range(151, 201))
    assert [item.receipt for item in again[50:] if item] == receipts[150:]


def test_a_batch_of_one_statement_tells_its_duplicates_by_their_keys(tmp_path: Path) -> None:
    """A batch written by one statement, its own transaction: a retry of a receipt stored before
    and a second copy within the batch are None, the new ones get the next ids in order."""
    journal = ReceiptJournal.open(str(tmp_path / "campaign.journal"))
    try:
        old, new, other = (callbacks.vonage_dlr(dlr_fields(messageId=m)) for m in "ONX")
        (first,) = journal.insert([old], 1.0)
        again = journal.insert([old, new, new, other], 2.0)
        none_new = journal.insert([old, new], 3.0)
    finally:
        journal.close()
    assert first is not None
    assert first.id == 1
    assert [item.id if item else None for item in again] == [None, 2, None, 3]
    assert [item.receipt if item else None for item in again] == [None, new, None, other]
    assert none_new == [None, None]


async def test_receipts_stored_but_not_processed_are_processed_at_the_next_start(
    tmp_path: Path,
) -> None:
    """A receiver stopped right after its ack leaves work the next one finishes."""
    path = str(tmp_path / "campaign.journal")
    journal = ReceiptJournal.open(path)
    receipt = callbacks.vonage_dlr(dlr_fields(messageId="LEFT1"))
    journal.insert([receipt], time.time())
    journal.close()
    async with running(tmp_path) as receiver:
        await processed(receiver, 1)
        assert [item.receipt.message_id for item in receiver.hooked] == ["LEFT1"]
        assert receiver.rows("SELECT processed, applied FROM receipts") == [(1, 1)]


async def test_a_failing_hook_is_counted_and_does_not_stop_processing(tmp_path: Path) -> None:
    """The user's hook raising is logged; the next receipts are still processed."""

    async def broken(item: StoredReceipt) -> None:
        raise RuntimeError("hook bug")

    async with running(tmp_path, hook=broken) as receiver:
        await receiver.dlr(messageId="H1")
        await receiver.dlr(messageId="H2")
        await processed(receiver, 2)
        async with asyncio.timeout(5):
            await receiver.store.wait_until(lambda: receiver.store.stats.hook_errors == 2)
        assert [item.receipt.message_id for item in receiver.hooked] == ["H1", "H2"]


async def test_a_stalled_emit_consumer_slows_processing_not_acknowledgements(
    tmp_path: Path,
) -> None:
    """--emit writes from a thread: a stdout nobody reads holds up neither acks nor /healthz."""
    release = threading.Event()

    def stalled(batch: Sequence[StoredReceipt]) -> None:
        release.wait(10)  # a `| consumer` that stopped reading

    async with running(tmp_path, emit=stalled) as receiver:
        try:
            async with asyncio.timeout(3):
                for n in range(20):
                    assert (await receiver.dlr(messageId=f"M{n}")).status == 204
                assert (await receiver.client.get("/healthz")).status == 200
            assert receiver.emitted == []
        finally:
            release.set()
        await processed(receiver, 20)
    assert len(receiver.emitted) == 20


# --- health and metrics -------------------------------------------------------------------------


async def test_healthz_and_metrics_report_what_happened(tmp_path: Path) -> None:
    """Counters by route and reason, the queue depth, what was stored and the commit histogram."""
    signed = signatures.sign_vonage_sms(dlr_fields(), SECRET, "md5hash", now_s=time.time())
    async with running(tmp_path, vonage_secret=SECRET) as receiver:
        assert (await receiver.client.get("/healthz")).status == 200
        assert (await receiver.dlr()).status == 503  # unsigned: refused
        assert (await receiver.client.get("/webhooks/dlr", params=signed)).status == 204
        text = await (await receiver.client.get("/metrics")).text()
    assert 'sms_blaster_receipts_received_total{route="dlr"} 2.0\n' in text
    assert 'sms_blaster_receipts_refused_total{reason="unsigned",route="dlr"} 1.0\n' in text
    assert "sms_blaster_receipt_queue_depth 0.0\n" in text
    assert "sms_blaster_receipts_stored_total 1.0\n" in text
    assert "# TYPE sms_blaster_receipts_stored_total counter\n" in text
    assert 'sms_blaster_store_commit_seconds_bucket{le="+Inf"} 1.0\n' in text
    assert "sms_blaster_store_commit_seconds_count 1.0\n" in text


def test_receipt_parsers_map_each_provider_status_to_a_delivery() -> None:
    """The report's states from each provider's vocabulary."""
    cases = {
        "delivered": Delivery.DELIVERED, "expired": Delivery.EXPIRED,
        "rejected": Delivery.FAILED, "buffered": Delivery.PENDING, "unknown": Delivery.PENDING,
    }  # fmt: skip
    for status, delivery in cases.items():
        assert callbacks.vonage_dlr(dlr_fields(status=status)).delivery is delivery
    twilio = callbacks.twilio_status({"MessageSid": "SM1", "MessageStatus": "sent"}, None)
    assert (twilio.kind, twilio.delivery) == (ReceiptKind.STATUS, Delivery.PENDING)


# --- the store's writer -------------------------------------------------------------------------


async def test_a_receipt_the_store_cannot_write_is_refused_busy_and_the_writer_goes_on(
    tmp_path: Path,
) -> None:
    """Any failure of a commit fails that batch with StoreBusy (503); later callbacks are stored."""
    store = SqliteReceiptStore(str(tmp_path / "s.journal"), queue_size=10)
    await store.start()
    try:
        unwritable = callbacks.vonage_dlr(dlr_fields(messageId="\ud800"))  # SQLite cannot encode it
        async with asyncio.timeout(5):
            with pytest.raises(StoreBusy):
                await store.submit(unwritable)
            assert await store.submit(callbacks.vonage_dlr(dlr_fields(messageId="GOOD"))) is True
        assert store.stats.failed_commits == 1
    finally:
        async with asyncio.timeout(5):
            await store.close()


async def test_close_gives_up_on_callbacks_still_queued_after_its_grace(tmp_path: Path) -> None:
    """A store that cannot write for longer than the grace fails what waits, so close() ends."""
    path = str(tmp_path / "s.journal")
    store = SqliteReceiptStore(path, queue_size=10)
    await store.start()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the writer waits on SQLite's lock
    first = store.submit(callbacks.vonage_dlr(dlr_fields(messageId="M1")))
    async with asyncio.timeout(5):
        await store.wait_until(lambda: store.committing == 1)
    second = store.submit(callbacks.vonage_dlr(dlr_fields(messageId="M2")))
    asyncio.get_running_loop().call_later(0.5, blocker.execute, "ROLLBACK")
    async with asyncio.timeout(5):
        await store.close(grace_s=0.1)
    blocker.close()
    assert await first is True  # its commit went through once the lock was free
    with pytest.raises(StoreBusy):
        await second


# --- callbacks no provider sends ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/webhooks/dlr", b'{"messageId": "\\ud800", "status": "delivered"}'),
        ("/webhooks/dlr", b'{"messageId": "M1", "status": "delivered", "\\udfff": "x"}'),
        ("/webhooks/inbound", b'{"messageId": "M1", "msisdn": "4477", "text": ["\\ud800"]}'),
        ("/webhooks/messages/status",
         b'{"message_uuid": "u1", "status": "delivered", "usage": {"price": "\\ud800"}}'),
    ],
)  # fmt: skip
async def test_json_text_that_is_not_utf8_is_refused_with_400(
    tmp_path: Path, route: str, body: bytes
) -> None:
    """A lone surrogate (`\\ud800`) cannot be stored: 400 at once, and the store goes on."""
    async with running(tmp_path, vonage_secret=SECRET) as receiver:
        async with asyncio.timeout(5):
            response = await receiver.client.post(
                route, data=body, headers={"Content-Type": "application/json"}
            )
            assert response.status == 400
            assert await response.text() == "text that is not UTF-8\n"
            good = signatures.sign_vonage_sms(
                dlr_fields(messageId="GOOD"), SECRET, "md5hash", now_s=time.time()
            )
            assert (await receiver.client.get("/webhooks/dlr", params=good)).status == 204
        assert receiver.store.stats.failed_commits == 0


@pytest.mark.parametrize("route", ["/webhooks/dlr", "/webhooks/messages/status"])
@pytest.mark.parametrize(
    ("brackets", "answer"),
    [
        (4000, (400, "body nested too deep\n")),
        (100_000, (413, "JSON over 4096 objects and arrays\n")),  # refused before parsing
    ],
)
async def test_json_nested_too_deep_is_refused_with_400(
    tmp_path: Path, route: str, brackets: int, answer: tuple[int, str]
) -> None:
    """A body of thousands of `[` is a reason, not a RecursionError and a 500."""
    async with running(tmp_path) as receiver:
        response = await receiver.client.post(
            route, data=b"[" * brackets, headers={"Content-Type": "application/json"}
        )
        assert (response.status, await response.text()) == answer


async def test_a_form_that_is_not_utf8_is_refused_with_400(tmp_path: Path) -> None:
    """Raw bytes that do not decode are a reason, not a 500."""
    async with running(tmp_path) as receiver:
        for route in ("/webhooks/dlr", "/webhooks/twilio/status"):
            response = await receiver.client.post(
                route,
                data=b"messageId=\xff&status=delivered",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
            assert response.status == 400
            assert await response.text() == "form data that is not UTF-8\n"


async def test_a_percent_escape_that_is_not_utf8_is_refused_with_400_in_a_query_or_form(
    tmp_path: Path,
) -> None:
    """`status=%ff` is refused, not stored as a replacement character."""
    query = urllib.parse.urlencode(dlr_fields(messageId="Q1")).replace("delivered", "%ff")
    form = urllib.parse.urlencode(dlr_fields(messageId="F1")).replace("delivered", "%ff")
    async with running(tmp_path) as receiver:
        by_query = await receiver.client.get(f"/webhooks/dlr?{query}")
        by_form = await receiver.client.post(
            "/webhooks/dlr",
            data=form.encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert receiver.rows("SELECT message_id FROM receipts") == []
    assert (by_query.status, await by_query.text()) == (400, "query that is not UTF-8\n")
    assert (by_form.status, await by_form.text()) == (400, "form data that is not UTF-8\n")


@pytest.mark.parametrize("charset", ["utf-7", "idna"])
async def test_a_form_in_a_charset_no_provider_sends_is_refused_with_400(
    tmp_path: Path, charset: str
) -> None:
    """Only UTF-8, US-ASCII and ISO-8859-1 (and their aliases) are read."""
    form = urllib.parse.urlencode(dlr_fields(messageId="C1")).encode()
    async with running(tmp_path) as receiver:
        response = await receiver.client.post(
            "/webhooks/dlr",
            data=form,
            headers={"Content-Type": f"application/x-www-form-urlencoded; charset={charset}"},
        )
        assert receiver.rows("SELECT message_id FROM receipts") == []
    assert response.status == 400
    assert await response.text() == f"form in an unknown charset ({charset})\n"


async def test_a_form_in_latin_1_is_read(tmp_path: Path) -> None:
    """A form that names ISO-8859-1 is decoded with it."""
    form = urllib.parse.urlencode(dlr_fields(messageId="L1", to="Caf\xe9"), encoding="latin-1")
    async with running(tmp_path) as receiver:
        response = await receiver.client.post(
            "/webhooks/dlr",
            data=form.encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded; charset=ISO-8859-1"},
        )
        assert response.status == 204
        (payload,) = receiver.rows("SELECT payload FROM receipts")
    assert json.loads(payload[0])["to"] == "Caf\xe9"


# --- processing: at least once, not twice -------------------------------------------------------


def processed_flags(path: str) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return dict(connection.execute("SELECT message_id, processed FROM receipts"))


async def test_a_receipt_is_marked_processed_only_once_its_hook_has_ended(tmp_path: Path) -> None:
    """While the hook runs, a stop would leave it to run again: processed stays 0 until it ends."""
    release = asyncio.Event()

    async def waiting(item: StoredReceipt) -> None:
        if item.receipt.message_id == "H1":
            await release.wait()

    async with running(tmp_path, hook=waiting) as receiver:
        await receiver.dlr(messageId="H1")
        async with asyncio.timeout(5):
            await receiver.store.wait_until(lambda: len(receiver.hooked) == 1)
        await receiver.dlr(messageId="H2")  # its hook ends at once: a marking pass follows
        await processed(receiver, 1)
        assert processed_flags(receiver.path) == {"H1": 0, "H2": 1}
        release.set()
        await processed(receiver, 2)
        assert processed_flags(receiver.path) == {"H1": 1, "H2": 1}


async def test_a_hook_cut_short_by_close_runs_again_at_the_next_start(tmp_path: Path) -> None:
    """At least once: a stop in the middle of a hook leaves the receipt for the next receiver."""
    path = str(tmp_path / "s.journal")
    started = asyncio.Event()

    async def endless(item: StoredReceipt) -> None:
        started.set()
        await asyncio.sleep(60)

    store = SqliteReceiptStore(path, queue_size=10, hook=endless)
    await store.start()
    await store.submit(callbacks.vonage_dlr(dlr_fields(messageId="H1")))
    async with asyncio.timeout(5):
        await started.wait()
        await store.close(grace_s=0.1)
    assert processed_flags(path) == {"H1": 0}

    finished: list[str] = []

    async def quick(item: StoredReceipt) -> None:
        finished.append(item.receipt.message_id)

    again = SqliteReceiptStore(path, queue_size=10, hook=quick)
    await again.start()
    async with asyncio.timeout(5):
        await again.wait_until(lambda: again.stats.processed == 1)
        await again.close()
    assert finished == ["H1"]
    assert processed_flags(path) == {"H1": 1}


async def test_leftovers_are_not_processed_twice_while_live_callbacks_arrive(
    tmp_path: Path,
) -> None:
    """The pass at start covers what was stored before it; live receipts are processed once."""
    path = str(tmp_path / "s.journal")
    journal = ReceiptJournal.open(path)  # a backlog left by a receiver stopped before processing
    old = [callbacks.vonage_dlr(dlr_fields(messageId=f"OLD{n}")) for n in range(2000)]
    journal.insert(old, time.time())
    journal.close()
    emitted: list[StoredReceipt] = []
    store = SqliteReceiptStore(path, queue_size=1000, emit=emitted.extend)
    await store.start()
    async with asyncio.timeout(10):
        for n in range(200):
            await store.submit(callbacks.vonage_dlr(dlr_fields(messageId=f"NEW{n}")))
        await store.wait_until(lambda: store.stats.processed == 2200)
        await store.close()
    ids = [item.receipt.message_id for item in emitted]
    assert len(ids) == len(set(ids)) == 2200


# --- the sweep of receipts waiting for their row ------------------------------------------------


async def test_receipts_that_never_match_do_not_starve_a_newer_one_while_callbacks_flow(
    tmp_path: Path,
) -> None:
    """The sweep pages on from where it stopped, on its own timer, busy or not."""
    path = str(tmp_path / "s.journal")
    add_campaign(path)
    journal = ReceiptJournal.open(path)  # other applications' receipts: never ours
    foreign = [
        callbacks.vonage_dlr(dlr_fields(messageId=f"X{n}", client_ref="")) for n in range(1500)
    ]
    stored = [item for item in journal.insert(foreign, time.time()) if item is not None]
    journal.mark_processed([item.id for item in stored])
    journal.close()
    store = SqliteReceiptStore(path, queue_size=100, sweep_every_s=0.05)
    await store.start()

    async def traffic() -> None:
        for n in itertools.count():
            await store.submit(callbacks.vonage_dlr(dlr_fields(messageId=f"T{n}")))
            await asyncio.sleep(0.01)

    flowing = asyncio.create_task(traffic())
    try:
        late = callbacks.vonage_dlr(dlr_fields(messageId="LATE", client_ref=""))
        await store.submit(late)  # before its send is recorded: no row to match yet
        async with asyncio.timeout(5):
            await store.wait_until(lambda: store.stats.processed >= 1)
        add_row(path, 9, RowState.SENT, "LATE")
        with contextlib.closing(sqlite3.connect(path)) as reader:
            query = "SELECT COUNT(*) FROM deliveries WHERE message_id = 'LATE'"
            async with asyncio.timeout(5):
                await store.wait_until(lambda: reader.execute(query).fetchone() == (1,))
        assert not flowing.done(), "the callbacks kept flowing"
    finally:
        flowing.cancel()
        await store.close()


async def test_stored_batches_beyond_the_processing_queue_are_read_back_once(
    tmp_path: Path,
) -> None:
    """A slow hook cannot make memory grow: the overflow stays in the store and is read back."""
    release = asyncio.Event()
    seen: list[str] = []

    async def gated(item: StoredReceipt) -> None:
        seen.append(item.receipt.message_id)
        await release.wait()

    path = str(tmp_path / "s.journal")
    store = SqliteReceiptStore(
        path, queue_size=100, hook=gated, hook_concurrency=1, processing_queue=2
    )
    await store.start()
    async with asyncio.timeout(10):
        for n in range(40):
            assert await store.submit(callbacks.vonage_dlr(dlr_fields(messageId=f"M{n}")))
            assert store.processing_depth <= 2
        release.set()
        await store.wait_until(lambda: store.stats.processed == 40)
        await store.close()
    assert seen == [f"M{n}" for n in range(40)]


def stored_ids(path: str) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return dict(db.execute("SELECT message_id, id FROM receipts").fetchall())


def test_a_batch_holding_duplicates_stores_each_new_receipt_once_with_its_id(
    tmp_path: Path,
) -> None:
    """A stored receipt and a repeat within the batch come back None; the new ones, their ids."""
    path = str(tmp_path / "s.journal")
    journal = ReceiptJournal.open(path)
    old, new, other = (callbacks.vonage_dlr(dlr_fields(messageId=m)) for m in ("A", "B", "C"))
    (first,) = journal.insert([old], time.time())
    stored = journal.insert([new, old, new, other], time.time())
    journal.close()
    ids = stored_ids(path)
    assert first is not None
    assert first.id == ids["A"]
    assert [item and (item.receipt.message_id, item.id) for item in stored] == [
        ("B", ids["B"]), None, None, ("C", ids["C"]),
    ]  # fmt: skip


def test_a_batch_of_new_receipts_gets_the_ids_the_store_gave_them(tmp_path: Path) -> None:
    """One statement for the whole batch; each receipt still learns its own id."""
    path = str(tmp_path / "s.journal")
    journal = ReceiptJournal.open(path)
    journal.insert([callbacks.vonage_dlr(dlr_fields(messageId="FIRST"))], time.time())
    batch = [callbacks.vonage_dlr(dlr_fields(messageId=f"M{n}")) for n in range(5)]
    stored = journal.insert(batch, time.time())
    journal.close()
    ids = stored_ids(path)
    assert [(item.receipt.message_id, item.id) for item in stored if item] == [
        (f"M{n}", ids[f"M{n}"]) for n in range(5)
    ]


def test_only_the_commits_acknowledgements_wait_for_are_fsynced(tmp_path: Path) -> None:
    """Inserts commit on a connection set to synchronous=FULL; apply and mark_processed on one
    left at NORMAL (no fsync in WAL); no transaction changes a connection's level."""
    path = str(tmp_path / "s.journal")
    durable, after = schema.connect(path), schema.connect(path)
    durable.execute("PRAGMA synchronous = FULL")
    statements: dict[str, list[str]] = {"durable": [], "after": []}
    durable.set_trace_callback(statements["durable"].append)
    after.set_trace_callback(statements["after"].append)
    journal = ReceiptJournal(durable, after, path)
    (first,) = journal.insert([callbacks.vonage_dlr(dlr_fields(messageId="M1"))], time.time())
    assert first is not None
    journal.apply([first], time.time())
    journal.mark_processed([first.id])
    journal.insert([callbacks.vonage_dlr(dlr_fields(messageId="M2"))], time.time())
    journal.close()
    shown = ("PRAGMA synchronous =", "BEGIN", "INSERT OR IGNORE INTO receipts", "UPDATE receipts")
    begun = {
        name: [s.split()[0] for s in done if s.startswith(shown)]
        for name, done in statements.items()
    }
    assert begun == {
        "durable": ["INSERT", "INSERT"],  # the two inserts, each its own transaction
        "after": ["BEGIN", "UPDATE", "BEGIN", "UPDATE"],  # apply, mark_processed
    }


# --- refusals: a log no client can flood --------------------------------------------------------


def test_the_refusal_log_writes_one_line_per_cause_per_interval_and_counts_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Held-back refusals are counted on the cause's next line; other causes log on their own."""
    now_s = [100.0]
    refusals = RefusalLog(logging.getLogger("test.refusals"), every_s=10, clock=lambda: now_s[0])
    not_json = Refusal(400, "invalid", "body is not JSON", "at line 1")
    too_big = Refusal(413, "too_large", "body over 256 KiB")
    with caplog.at_level(logging.WARNING, logger="test.refusals"):
        logged = [refusals.refused("dlr", not_json, "192.0.2.7") for _ in range(500)]
        logged.append(refusals.refused("dlr", too_big, "192.0.2.7"))
        now_s[0] += 10
        logged.append(refusals.refused("dlr", not_json, "192.0.2.8"))
    assert logged.count(True) == 3
    assert [record.getMessage() for record in caplog.records] == [
        "refused dlr from 192.0.2.7 with 400: body is not JSON (at line 1)",
        "refused dlr from 192.0.2.7 with 413: body over 256 KiB",
        "refused dlr from 192.0.2.8 with 400: body is not JSON (at line 1); 499 more like it "
        "since the last line, 10 s ago",
    ]


def test_the_refusal_log_reports_what_it_held_back_when_flushed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """At the stop, each cause's count since its last line is logged, so none goes unreported."""
    refusals = RefusalLog(logging.getLogger("test.refusals"), every_s=10, clock=lambda: 0.0)
    with caplog.at_level(logging.WARNING, logger="test.refusals"):
        for _ in range(3):
            refusals.refused("request", Refusal(414, "too_long", "URL over 32768 bytes"), None)
        refusals.flush()
        refusals.flush()
    assert [record.getMessage() for record in caplog.records] == [
        "refused request from None with 414: URL over 32768 bytes",
        "refused request: URL over 32768 bytes: 2 more like it since the last line",
    ]


def test_a_refusal_quoting_the_client_is_one_short_printable_line() -> None:
    """A content type with control bytes or of any length cannot break or flood the log line."""
    refusal = Refusal(415, "unsupported_type", "content type not read here", "a\nb\x1b" + "x" * 500)
    assert refusal.text == "content type not read here (a\\nb\\x1b" + "x" * 116 + "...)"


async def test_callbacks_that_come_while_a_commit_is_under_way_share_the_next_commit(
    tmp_path: Path,
) -> None:
    """No timer: the next commit starts when one ends, holding all that came meanwhile."""
    path = str(tmp_path / "s.journal")
    groups: list[int] = []
    store = SqliteReceiptStore(
        path, queue_size=8, observe_commit=lambda _s, receipts: groups.append(receipts)
    )
    await store.start()
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # the first commit waits on SQLite's lock
        first = store.submit(callbacks.vonage_dlr(dlr_fields(messageId="M1")))
        async with asyncio.timeout(5):
            await store.wait_until(lambda: store.committing == 1)
        later = [store.submit(callbacks.vonage_dlr(dlr_fields(messageId=f"M{n}"))) for n in (2, 3)]
        blocker.execute("ROLLBACK")
        stored = await asyncio.wait_for(asyncio.gather(first, *later), 5)
        assert list(stored) == [True, True, True]
    finally:
        blocker.close()
        await store.close()
    assert groups == [1, 2]
