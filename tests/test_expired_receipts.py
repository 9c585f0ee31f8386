"""Expired receipts: each provider's way of saying a message's validity period ran out is read as
`expired`, a final state of its own, and the report's delivery funnel counts it apart from the
failures."""

from __future__ import annotations

from pathlib import Path

from sms_blaster.models import Delivery
from sms_blaster.receiver import callbacks
from tests.test_report import insert_deliveries, report_text, spring_json, write_journal


def messages_status(status: str, code: str | None) -> Delivery | None:
    body: dict[str, object] = {"message_uuid": "u1", "status": status}
    if code is not None:
        body["error"] = {"type": f"https://developer.vonage.com/api-errors/messages#{code}"}
    return callbacks.vonage_messages_status(body).delivery


def twilio_status(status: str, code: str | None) -> Delivery | None:
    params = {"MessageSid": "SM1", "MessageStatus": status}
    if code is not None:
        params["ErrorCode"] = code
    return callbacks.twilio_status(params, None).delivery


def test_a_vonage_dlr_saying_expired_is_expired_and_final() -> None:
    """The SMS API says it in the status itself."""
    receipt = callbacks.vonage_dlr({"messageId": "M1", "status": "expired", "err-code": "2"})
    assert (receipt.delivery, receipt.final) == (Delivery.EXPIRED, True)


def test_a_messages_api_rejection_with_1360_is_expired() -> None:
    """`rejected` with "TTL activated / expired"; any other code stays a failure."""
    assert messages_status("rejected", "1360") is Delivery.EXPIRED
    assert messages_status("rejected", "1330") is Delivery.FAILED
    assert messages_status("rejected", None) is Delivery.FAILED
    assert messages_status("submitted", "1360") is Delivery.PENDING


def test_a_twilio_failure_with_30036_is_expired() -> None:
    """`failed` (or `undelivered`) with "Validity Period Expired"; other codes stay failures."""
    assert twilio_status("failed", "30036") is Delivery.EXPIRED
    assert twilio_status("undelivered", "30036") is Delivery.EXPIRED
    assert twilio_status("undelivered", "30003") is Delivery.FAILED
    assert twilio_status("sent", None) is Delivery.PENDING


def test_only_pending_is_not_final() -> None:
    """Delivered, failed and expired are where a message ends."""
    assert [state for state in Delivery if not state.final] == [Delivery.PENDING]


def add_deliveries(path: str) -> None:
    """Receipts for "spring": 1 delivered, 3 expired, 4 failed, and of 2's two parts one
    delivered and one expired (expired)."""
    parts = [
        ("P1", 1, "delivered", ""),
        ("P3", 3, "expired", "2"),
        ("P4", 4, "failed", "6"),
        ("P2a", 2, "delivered", ""),
        ("P2b", 2, "expired", "2"),
    ]
    insert_deliveries(path, parts)


def test_the_json_funnel_counts_expired_rows_apart_from_failed_ones(tmp_path: Path) -> None:
    """A row with an expired part and none failed is expired; the failures list stays theirs."""
    journal = write_journal(tmp_path / "recipients.csv.journal")
    add_deliveries(journal)
    delivery = spring_json(journal)["delivery"]
    assert (delivery["delivered"], delivery["failed"], delivery["expired"]) == (1, 1, 2)
    assert delivery["pending"] == delivery["sent"] - 4
    assert delivery["errors"] == [{"status": "failed", "code": "6", "count": 1}]


def test_the_text_funnel_has_an_expired_line_with_its_share(tmp_path: Path) -> None:
    """Between failed and pending, like the other stages."""
    journal = write_journal(tmp_path / "recipients.csv.journal")
    add_deliveries(journal)
    lines = report_text(journal, "spring").splitlines()
    stages = [line.split()[0] for line in lines[lines.index("delivery (receipts)") + 1 :][:5]]
    assert stages == ["sent", "delivered", "failed", "expired", "pending"]
    assert "  expired               2 (20.0%)" in lines
