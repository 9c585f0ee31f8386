"""Where the engine's work comes from: rows prepared into messages and records."""

from __future__ import annotations

from sms_blaster.engine import Claim, RunControl, StopReason
from sms_blaster.models import Encoding, ErrorKind, InputRow, Message, Record
from sms_blaster.prepare import Preparer, compile_template
from sms_blaster.preparing import prepare_row
from sms_blaster.work import PlainClaims


def preparer() -> Preparer:
    return Preparer(to_column="to", template=compile_template("Hi {name}"), campaign="camp")


def test_a_prepared_message_and_a_refused_rows_record_carry_the_rows_fingerprint() -> None:
    """The journal writes the fingerprint what it is given carries: both kinds must have it."""
    good = InputRow(1, {"to": "+447911120001", "name": "Ann"})
    bad = InputRow(2, {"to": "nope", "name": "Bob"})
    message, record = prepare_row(preparer(), good), prepare_row(preparer(), bad)
    assert isinstance(message, Message)
    assert isinstance(record, Record)
    assert (message.fingerprint, record.fingerprint) == (good.fingerprint(), bad.fingerprint())


def test_a_row_that_breaks_preparation_is_an_invalid_record_with_its_fingerprint() -> None:
    """An unexpected error is the row's record (invalid input), never a crash."""

    class Fragile(Preparer):
        def prepare(self, row: InputRow) -> Message | Record:
            raise ValueError("boom")

    row = InputRow(3, {"to": "+447911120003", "name": "Cy"})
    fragile = Fragile(to_column="to", template=compile_template("Hi {name}"), campaign="camp")
    record = prepare_row(fragile, row)
    assert isinstance(record, Record)
    assert record.error is not None
    assert (record.error.kind, record.error.code) == (ErrorKind.INVALID_INPUT, "unreadable_row")
    assert record.fingerprint == row.fingerprint()


async def test_plain_claims_hand_out_messages_that_pay_their_rate_slot_when_sent() -> None:
    """No slot taken before the claim (a pool holds the message for its sender first): nothing
    prepaid, nothing to wait for; once the run stops, no more claims."""
    message = Message(1, "447911123456", "hi", Encoding.GSM7, 1, "c-1")

    class OneMessage:
        async def claim(self) -> Message | Record | None:
            return message

    control = RunControl()
    claims = PlainClaims(OneMessage(), control)
    assert await claims.claim() == Claim(message)
    control.stop(StopReason.INTERRUPTED)
    assert await claims.claim() is None
