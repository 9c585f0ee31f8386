"""The opt-out list: the rule between two entries, what an inbound message changes, the journal's
list, list files, and the screen a run checks."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path
from xml.etree import ElementTree

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sms_blaster.errors import UsageError
from sms_blaster.inputs import InputFormat
from sms_blaster.journal.optouts import OptOutJournal
from sms_blaster.models import Encoding, ErrorKind, Message, Receipt, ReceiptKind, Status
from sms_blaster.optouts.files import read_entries, write_entries
from sms_blaster.optouts.model import OptOut, change_of
from sms_blaster.optouts.screen import JournalSource, OptOutScreen
from sms_blaster.receiver import callbacks
from sms_blaster.receiver.replies import reply_problem, twiml
from sms_blaster.receiver.stores.sqlite import SqliteReceiptStore

NUMBER = "447400123456"


def entry(opted_out: bool, at_s: float, source: str = "manual") -> OptOut:
    return OptOut(NUMBER, opted_out, at_s, source, "STOP" if opted_out else "START")


def inbound(
    provider: str, fields: dict[str, object], sender: str = NUMBER, event_at: str | None = None
) -> Receipt:
    return Receipt(
        provider, ReceiptKind.INBOUND, "m1", "received", None, "447700900000", sender, None, "",
        None, event_at, json.dumps(fields),
    )  # fmt: skip


def message(to: str = NUMBER) -> Message:
    return Message(7, to, "hi", Encoding.GSM7, 1, "abc-7", fingerprint=42)


# --- the rule ----------------------------------------------------------------------------------


def test_a_later_entry_supersedes_an_earlier_one_either_way() -> None:
    """A START after a STOP opts back in; a STOP after a START opts out."""
    assert entry(False, 20).supersedes(entry(True, 10))
    assert entry(True, 20).supersedes(entry(False, 10))
    assert not entry(True, 10).supersedes(entry(False, 20))


def test_at_the_same_time_an_opt_out_wins() -> None:
    """Two messages that cannot be ordered leave the number out."""
    assert entry(True, 10).supersedes(entry(False, 10))
    assert not entry(False, 10).supersedes(entry(True, 10))


# --- what an inbound message changes ------------------------------------------------------------


def test_a_vonage_stop_opts_its_sender_out_at_the_messages_own_time() -> None:
    """The SMS API's message-timestamp (UTC) is the entry's time, not the time received."""
    receipt = callbacks.vonage_inbound(
        {"msisdn": NUMBER, "to": "447700900000", "messageId": "0A1", "text": "Stop please",
         "message-timestamp": "2026-12-07 10:00:00"}
    )  # fmt: skip
    change = change_of(receipt, received_at_s=2_000_000_000.0)
    assert change == OptOut(NUMBER, True, 1796637600.0, "inbound:vonage-sms", "STOP")


def test_a_twilio_start_opts_its_sender_back_in_at_the_time_received() -> None:
    """Twilio's inbound webhook carries no time of its own."""
    receipt = callbacks.twilio_inbound(
        {"MessageSid": "SM1", "From": f"+{NUMBER}", "To": "+447700900000", "Body": "start"}
    )
    assert change_of(receipt, received_at_s=1234.0) == OptOut(
        NUMBER, False, 1234.0, "inbound:twilio", "START"
    )


def test_a_message_stamped_later_than_received_counts_as_received() -> None:
    """A timestamp in the future (2030, 9999) would win over every later STOP; 1970 is none."""
    for stamp in ("2030-01-01 00:00:00", "9999-12-31 23:59:59", "1970-01-01 00:00:00"):
        receipt = callbacks.vonage_inbound(
            {"msisdn": NUMBER, "messageId": "0A1", "text": "START", "message-timestamp": stamp}
        )
        change = change_of(receipt, received_at_s=1_800_000_000.0)
        assert change is not None
        assert change.at_s == 1_800_000_000.0


def test_a_stop_and_a_start_received_in_the_same_second_leave_the_number_out() -> None:
    """Twilio gives no time: the time received, in whole seconds, so the tie goes to the STOP."""
    stop, start = (
        change_of(callbacks.twilio_inbound({"MessageSid": sid, "From": f"+{NUMBER}", "Body": body}),
                  received_at_s=received_s)
        for sid, body, received_s in (("SM1", "STOP", 1000.2), ("SM2", "START", 1000.7))
    )  # fmt: skip
    assert stop is not None
    assert start is not None
    assert not start.supersedes(stop)


def test_a_messages_api_stop_of_either_version_opts_out() -> None:
    """v1 carries `text`; v0.1 `message.content.text` and `from` as an object."""
    v1 = callbacks.vonage_messages_inbound(
        {"message_uuid": "u1", "from": NUMBER, "text": "END", "timestamp": "2026-12-07T10:00:00Z"}
    )
    v01 = callbacks.vonage_messages_inbound(
        {"message_uuid": "u2", "from": {"type": "sms", "number": NUMBER},
         "message": {"content": {"type": "text", "text": "quit"}}}
    )  # fmt: skip
    for receipt in (v1, v01):
        change = change_of(receipt, received_at_s=1.0)
        assert change is not None
        assert change.opted_out


@pytest.mark.parametrize(
    ("provider", "fields", "sender"),
    [
        ("vonage-sms", {"text": "HELP"}, NUMBER),  # help changes nothing
        ("vonage-sms", {"text": "hello"}, NUMBER),
        ("vonage-sms", {"text": "STOP", "concat": "true", "concat-part": "2"}, NUMBER),
        ("twilio", {"Body": "STOP"}, "Shop"),  # no phone number: no campaign can message it
    ],
)
def test_other_inbound_messages_change_nothing(
    provider: str, fields: dict[str, object], sender: str
) -> None:
    """Help, plain text, a later part of a long message, a sender that is no number."""
    assert change_of(inbound(provider, fields, sender), received_at_s=1.0) is None


# --- the journal's list ------------------------------------------------------------------------


def test_a_change_recorded_twice_changes_the_list_once(tmp_path: Path) -> None:
    """A provider retrying the callback adds nothing: no new change to follow either."""
    journal = OptOutJournal.open(str(tmp_path / "j.db"))
    assert journal.record([entry(True, 10)]) == 1
    first = journal.changes_since(0)
    assert journal.record([entry(True, 10)]) == 0
    assert journal.changes_since(first.last_seq).out == frozenset()
    assert journal.entries() == [entry(True, 10)]
    journal.close()


def test_an_older_stop_processed_after_a_start_leaves_the_number_in(tmp_path: Path) -> None:
    """The latest by the message's time wins, whatever order they are processed in."""
    journal = OptOutJournal.open(str(tmp_path / "j.db"))
    journal.record([entry(False, 20)])
    assert journal.record([entry(True, 10)]) == 0
    assert journal.entries(opted_out_only=True) == []
    journal.close()


def test_a_reader_follows_the_changes_after_the_last_it_saw(tmp_path: Path) -> None:
    """Out, then back in: each look reports only what changed since."""
    path = str(tmp_path / "j.db")
    writer = OptOutJournal.open(path)
    reader = OptOutJournal.open_read_only(path)
    writer.record([entry(True, 10)])
    seen = reader.changes_since(0)
    assert seen.out == {int(NUMBER)}
    writer.record([entry(False, 20)])
    later = reader.changes_since(seen.last_seq)
    assert later.out == frozenset()
    assert later.back_in == {int(NUMBER)}
    reader.close()
    writer.close()


# --- files -------------------------------------------------------------------------------------


def test_an_exported_list_is_read_back_as_written(tmp_path: Path) -> None:
    """CSV and JSONL: number, opted_out, at, source, reason."""
    entries = [entry(True, 10.5, "inbound:twilio"), OptOut("447400123457", False, 11, "manual")]
    for fmt, name in ((InputFormat.CSV, "list.csv"), (InputFormat.JSONL, "list.jsonl")):
        path = tmp_path / name
        with path.open("w") as out:
            write_entries(entries, out, fmt)
        assert read_entries(str(path), None, source="import", now_s=99.0) == entries


_NOW_S = 1_800_000_000.0
_TEXT = st.text(st.characters(codec="utf-8"), max_size=12).map(str.strip)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.builds(
            OptOut,
            number=st.integers(0, 99_999).map(lambda n: f"4474001{n:05}"),
            opted_out=st.booleans(),
            at_s=st.floats(0, 1e15, allow_nan=False) | st.sampled_from([253402300799.0, 1e11]),
            source=_TEXT.filter(bool),
            reason=_TEXT,
        ),
        max_size=5,
    ),
    st.sampled_from([InputFormat.CSV, InputFormat.JSONL]),
)
def test_whatever_export_writes_import_reads_back(
    tmp_path: Path, entries: list[OptOut], fmt: InputFormat
) -> None:
    """Any entry, any format; a time after now (a stamp in the future) is read as now."""
    path = tmp_path / f"list.{fmt.value}"
    with path.open("w", encoding="utf-8") as out:
        write_entries(entries, out, fmt)
    expected = [replace(e, at_s=min(round(e.at_s, 3), _NOW_S)) for e in entries]
    assert read_entries(str(path), None, source="import", now_s=_NOW_S) == expected


def test_a_plain_list_opts_out_each_number_now(tmp_path: Path) -> None:
    """One number a line, comments and blank lines skipped, national ones by region."""
    path = tmp_path / "list.txt"
    path.write_text("# from the old tool\n+447400123456\n\n07400 123457\n")
    assert read_entries(str(path), "GB", source="import", now_s=99.0) == [
        OptOut(NUMBER, True, 99.0, "import"),
        OptOut("447400123457", True, 99.0, "import"),
    ]


def test_a_list_on_stdin_is_read_like_a_file() -> None:
    """`optouts import -`: a plain list too."""
    stdin = io.BytesIO(b"447400123456\n447400123457\n")
    entries = read_entries("-", None, source="import", now_s=1.0, stdin=stdin)
    assert [e.number for e in entries] == [NUMBER, "447400123457"]


def test_a_bad_number_in_a_list_names_its_line(tmp_path: Path) -> None:
    """An opt-out that cannot be honoured stops the read."""
    path = tmp_path / "list.csv"
    path.write_text("number,reason\n447400123456,x\n12345,y\n")
    with pytest.raises(UsageError, match=r"list\.csv: row 2: '12345' is not a valid number"):
        read_entries(str(path), None, source="import", now_s=1.0)


def test_a_bad_opted_out_value_is_refused(tmp_path: Path) -> None:
    """Neither 1 nor 0: the line is named."""
    path = tmp_path / "list.csv"
    path.write_text("number,opted_out\n447400123456,maybe\n")
    with pytest.raises(UsageError, match="row 1: opted_out 'maybe'"):
        read_entries(str(path), None, source="import", now_s=1.0)


# --- the screen --------------------------------------------------------------------------------


def test_a_message_to_a_number_on_the_list_is_skipped_as_opted_out() -> None:
    """The record keeps the message's line, ref, parts and fingerprint."""
    screen = OptOutScreen({int(NUMBER)})
    record = screen(message())
    assert record is not None
    assert (record.line, record.to, record.status, record.client_ref) == (
        7, NUMBER, Status.SKIPPED, "abc-7"
    )  # fmt: skip
    assert record.error is not None
    assert record.error.kind is ErrorKind.OPTED_OUT
    assert record.fingerprint == 42
    assert screen(message("447400123457")) is None


async def test_the_screen_takes_in_what_the_journal_changed(tmp_path: Path) -> None:
    """A STOP stored after the run started is seen at the next refresh; a START lets it go."""
    path = str(tmp_path / "j.db")
    writer = OptOutJournal.open(path)
    source = JournalSource(path)
    screen = OptOutScreen(set(), [source])
    await screen.refresh()
    assert screen(message()) is None
    writer.record([entry(True, 10)])
    await screen.refresh()
    assert screen(message()) is not None
    writer.record([entry(False, 20)])
    await screen.refresh()
    assert screen(message()) is None
    source.close()
    writer.close()


async def test_an_unsubscribed_answer_adds_the_number_to_the_list(tmp_path: Path) -> None:
    """Twilio's 21610: on the screen at once, and written to the journal's list."""
    path = str(tmp_path / "j.db")
    OptOutJournal.open(path).close()
    source = JournalSource(path)
    screen = OptOutScreen(set(), [source])
    screen.unsubscribed(NUMBER, 5.0)
    await screen.written()
    assert int(NUMBER) in screen
    source.close()
    reader = OptOutJournal.open_read_only(path)
    assert reader.entries() == [OptOut(NUMBER, True, 5.0, "twilio-21610", "21610")]
    reader.close()


async def test_a_stop_is_on_the_list_once_the_receiver_acknowledges_it(tmp_path: Path) -> None:
    """The store writes the change before the receipt: an acknowledged STOP is never lost."""
    path = str(tmp_path / "store.journal")
    store = SqliteReceiptStore(path, queue_size=10)
    await store.start()
    try:
        stop = callbacks.vonage_inbound({"msisdn": NUMBER, "messageId": "0A1", "text": "STOP"})
        assert await store.submit(stop) is True
        reader = OptOutJournal.open_read_only(path)
        assert [e.number for e in reader.entries(opted_out_only=True)] == [NUMBER]
        reader.close()
        assert await store.submit(stop) is False  # the provider's retry: a duplicate
    finally:
        await store.close()


def test_a_reply_on_several_lines_is_a_valid_twiml_message() -> None:
    """Newlines and tabs are text; only the controls XML cannot carry are refused."""
    reply = "Shop Ltd:\tno more messages.\r\nReply START to resubscribe."
    assert reply_problem(reply) is None
    assert ElementTree.fromstring(twiml(reply)).findtext("Message") == reply.replace("\r\n", "\n")
