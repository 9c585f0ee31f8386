"""`report JOURNAL` over journals written row by row: every state, two campaigns, bad files."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sms_blaster.errors import JournalError, UsageError
from sms_blaster.journal import schema
from sms_blaster.journal.queries import MinuteCount, load_summaries
from sms_blaster.journal.schema import RowState
from sms_blaster.report import duration_text, last_minutes, run_report
from tests.cli_helpers import receiver_process, run_cli

T0 = 1_714_557_600.0  # 2024-05-01 10:00:00 UTC
PRICE = "0.03330000"

# (line, seconds after T0, segments, price, latency_ms) of the sent rows of "spring":
# three in the first minute, five in the second, none in the third, two in the fourth.
SENT = [
    (1, 5.0, 1, PRICE, 30.0),
    (2, 20.0, 2, "0.06660000", 10.0),
    (3, 40.5, 1, PRICE, 100.0),
    (4, 61.0, 1, PRICE, 20.0),
    (5, 70.0, 1, PRICE, 50.0),
    (6, 80.0, 1, PRICE, 40.0),
    (7, 90.0, 1, PRICE, 90.0),
    (8, 100.0, 1, PRICE, 60.0),
    (9, 185.0, 1, PRICE, 80.0),
    (10, 230.0, 1, PRICE, 70.0),
]


def insert_campaign(
    connection: sqlite3.Connection, name: str, campaign_id: str, created_at_s: float
) -> None:
    connection.execute(
        "INSERT INTO campaigns VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (name, campaign_id, f"/data/{name}.csv", "", "Shop", "vonage-sms", "to", "", created_at_s),
    )


def insert_row(
    connection: sqlite3.Connection,
    campaign: str,
    line: int,
    state: RowState,
    updated_at_s: float,
    *,
    segments: int | None = 1,
    price: str | None = None,
    latency_ms: float | None = None,
    error: tuple[str, str] | None = None,
) -> None:
    kind, code = error if error else (None, None)
    connection.execute(
        "INSERT INTO rows VALUES (?, ?, ?, 0, ?, ?, ?, 'gsm7', 1, '', ?, ?, ?, ?, ?, ?, "
        "NULL, NULL)",
        (
            campaign, line, state.value, f"4479111{line:05d}", f"{campaign}-{line}", segments,
            price, latency_ms, kind, code, None if kind is None else "why", updated_at_s,
        ),
    )  # fmt: skip


def write_journal(path: Path) -> str:
    """Campaign "spring" with every state, and a later campaign "autumn" with two sent rows."""
    with contextlib.closing(schema.connect(str(path))) as connection:
        insert_campaign(connection, "spring", "c7f3", T0 - 60)
        for line, after_s, segments, price, latency_ms in SENT:
            insert_row(connection, "spring", line, RowState.SENT, T0 + after_s,
                       segments=segments, price=price, latency_ms=latency_ms)  # fmt: skip
        for line, error in [
            (11, ("rejected", "15")),
            (12, ("rejected", "15")),
            (13, ("invalid_input", "invalid_number")),
            (14, ("exhausted", "1")),
        ]:
            insert_row(connection, "spring", line, RowState.FAILED, T0 + 50, error=error)
        # Some parts of line 15 were accepted, so it carries a price though it failed.
        insert_row(connection, "spring", 15, RowState.FAILED, T0 + 60, segments=2, price=PRICE,
                   error=("rejected", "partial"))  # fmt: skip
        insert_row(
            connection, "spring", 16, RowState.UNKNOWN, T0 + 70, error=("ambiguous", "timeout")
        )
        insert_row(connection, "spring", 17, RowState.SKIPPED, T0, error=("duplicate", "duplicate"))
        insert_row(connection, "spring", 18, RowState.INFLIGHT, T0 + 240)
        insert_row(connection, "spring", 19, RowState.PENDING, T0 + 240)
        insert_campaign(connection, "autumn", "a1b2", T0 + 3600)
        for line in (1, 2):
            insert_row(connection, "autumn", line, RowState.SENT, T0 + 3600 + line,
                       price=PRICE, latency_ms=5.0)  # fmt: skip
    return str(path)


@pytest.fixture
def journal(tmp_path: Path) -> str:
    return write_journal(tmp_path / "recipients.csv.journal")


def report_json(path: str, campaign: str | None = None) -> dict[str, Any]:
    out = io.StringIO()
    run_report(path, campaign, True, out)
    document: dict[str, Any] = json.loads(out.getvalue())
    return document


def spring_json(path: str) -> dict[str, Any]:
    campaign: dict[str, Any] = report_json(path, "spring")["campaigns"][0]
    return campaign


def report_text(path: str, campaign: str | None = None) -> str:
    out = io.StringIO()
    run_report(path, campaign, False, out)
    return out.getvalue()


def test_json_counts_rows_by_state(journal: str) -> None:
    """Every journal state is counted, and the total is their sum."""
    assert spring_json(journal)["rows"] == {
        "total": 19,
        "sent": 10,
        "failed": 5,
        "unknown": 1,
        "skipped": 1,
        "inflight": 1,
        "pending": 1,
        "stopped": 0,
    }


def test_json_counts_errors_by_kind_and_code_most_frequent_first(journal: str) -> None:
    """Errors are grouped by kind and code, by count and then by name."""
    assert spring_json(journal)["errors"] == [
        {"kind": "rejected", "code": "15", "count": 2},
        {"kind": "ambiguous", "code": "timeout", "count": 1},
        {"kind": "duplicate", "code": "duplicate", "count": 1},
        {"kind": "exhausted", "code": "1", "count": 1},
        {"kind": "invalid_input", "code": "invalid_number", "count": 1},
        {"kind": "rejected", "code": "partial", "count": 1},
    ]


def test_json_counts_segments_of_sent_rows_only(journal: str) -> None:
    """The partly sent failed row's segments are not counted as sent."""
    assert spring_json(journal)["segments_sent"] == 11


def test_json_cost_is_the_exact_sum_of_every_priced_row(journal: str) -> None:
    """Nine sends at 0.0333, one at 0.0666 and the partly sent failed row at 0.0333."""
    assert spring_json(journal)["cost"] == "0.39960000"


def test_json_gives_first_and_last_send_duration_and_rate(journal: str) -> None:
    """First and last send come from the sent rows only, in ISO-8601 UTC and unix seconds."""
    campaign = spring_json(journal)
    assert campaign["first_sent_at"] == "2024-05-01T10:00:05Z"
    assert campaign["first_sent_at_s"] == T0 + 5
    assert campaign["last_sent_at"] == "2024-05-01T10:03:50Z"
    assert campaign["last_sent_at_s"] == T0 + 230
    assert campaign["duration_s"] == 225.0
    assert campaign["sent_rate_per_s"] == pytest.approx(10 / 225)


def test_json_buckets_sent_rows_by_minute(journal: str) -> None:
    """Only minutes with sends are listed, oldest first; the busiest is named."""
    campaign = spring_json(journal)
    assert campaign["sent_per_minute"] == [
        {"minute": "2024-05-01T10:00:00Z", "sent": 3},
        {"minute": "2024-05-01T10:01:00Z", "sent": 5},
        {"minute": "2024-05-01T10:03:00Z", "sent": 2},
    ]
    assert campaign["busiest_minute"] == {"minute": "2024-05-01T10:01:00Z", "sent": 5}


def test_json_latency_percentiles_are_exact_nearest_rank(journal: str) -> None:
    """Ten latencies of 10..100 ms give p50 50, p90 90, p99 100 and max 100."""
    assert spring_json(journal)["latency_ms"] == {
        "p50": 50.0,
        "p90": 90.0,
        "p99": 100.0,
        "max": 100.0,
    }


def test_json_has_the_campaign_header_and_a_null_delivery(journal: str) -> None:
    """Name, id, input, sender and creation time, and no delivery funnel before receipts."""
    campaign = spring_json(journal)
    assert {key: campaign[key] for key in ("name", "campaign_id", "input", "sender")} == {
        "name": "spring",
        "campaign_id": "c7f3",
        "input": "/data/spring.csv",
        "sender": "Shop",
    }
    assert campaign["created_at"] == "2024-05-01T09:59:00Z"
    assert campaign["delivery"] is None


def test_json_lists_every_campaign_oldest_first(journal: str) -> None:
    """Without --campaign, the document names the journal and holds all its campaigns."""
    document = report_json(journal)
    assert document["journal"] == journal
    assert [campaign["name"] for campaign in document["campaigns"]] == ["spring", "autumn"]
    assert document["campaigns"][1]["rows"]["sent"] == 2
    assert document["campaigns"][1]["cost"] == "0.06660000"


def test_campaign_option_reports_that_campaign_only(journal: str) -> None:
    """Naming a campaign leaves the others out."""
    campaigns = report_json(journal, "autumn")["campaigns"]
    assert [campaign["name"] for campaign in campaigns] == ["autumn"]


def test_an_unknown_campaign_is_a_usage_error_naming_the_known_ones(journal: str) -> None:
    """The message lists the campaigns the journal has."""
    with pytest.raises(UsageError, match=r"no campaign 'winter'.*it has: spring, autumn"):
        load_summaries(journal, "winter")


def test_a_missing_journal_is_a_usage_error(tmp_path: Path) -> None:
    """The message says where journals are written."""
    path = str(tmp_path / "nope.journal")
    with pytest.raises(UsageError, match=r"no such journal.*<input>\.journal"):
        run_report(path, None, False, io.StringIO())


def test_a_sqlite_file_without_the_tables_is_not_a_journal(tmp_path: Path) -> None:
    """Another program's database is refused with exit code 4."""
    path = str(tmp_path / "other.db")
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute("CREATE TABLE things (id INTEGER)")
        connection.commit()
    with pytest.raises(JournalError, match=r"not an sms-blaster journal \(no such table"):
        load_summaries(path)


def test_a_file_of_random_bytes_is_not_a_journal(tmp_path: Path) -> None:
    """A file that is not SQLite at all is refused the same way."""
    path = tmp_path / "noise.journal"
    path.write_bytes(os.urandom(8192))
    with pytest.raises(JournalError, match="not an sms-blaster journal"):
        load_summaries(str(path))


def test_a_journal_from_a_newer_sms_blaster_is_refused(tmp_path: Path) -> None:
    """A schema version this code does not know is a journal error, not a wrong report."""
    path = write_journal(tmp_path / "new.journal")
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION + 1}")
    with pytest.raises(JournalError, match="newer than this sms-blaster"):
        load_summaries(path)


def test_an_empty_journal_reports_no_campaigns(tmp_path: Path) -> None:
    """A journal with its tables and nothing else is a report of nothing, not an error."""
    path = str(tmp_path / "empty.journal")
    schema.connect(path).close()
    assert report_json(path) == {
        "journal": path,
        "campaigns": [],
        "receipts": {
            "total": 0,
            "by_delivery": {},
            "first_received_at": None,
            "last_received_at": None,
        },
    }
    assert "no campaigns yet" in report_text(path)


def test_a_campaign_without_rows_reports_zeros_and_nulls(tmp_path: Path) -> None:
    """Before any row is written, counts are zero and times and latency are null."""
    path = str(tmp_path / "new.journal")
    with contextlib.closing(schema.connect(path)) as connection:
        insert_campaign(connection, "spring", "c7f3", T0)
    campaign = report_json(path)["campaigns"][0]
    assert campaign["rows"]["total"] == 0
    assert campaign["cost"] == "0"
    assert campaign["errors"] == campaign["sent_per_minute"] == []
    assert campaign["first_sent_at"] is campaign["latency_ms"] is campaign["duration_s"] is None
    assert "nothing sent" in report_text(path)


def test_a_journal_is_read_while_a_run_is_writing_it(journal: str) -> None:
    """A writer inside a transaction does not block the report, which sees what was committed."""
    with contextlib.closing(schema.connect(journal)) as writer:
        writer.execute("BEGIN IMMEDIATE")
        insert_row(writer, "autumn", 3, RowState.SENT, T0 + 3603, price=PRICE)
        assert report_json(journal, "autumn")["campaigns"][0]["rows"]["sent"] == 2
        writer.execute("COMMIT")
    assert report_json(journal, "autumn")["campaigns"][0]["rows"]["sent"] == 3


def test_text_shows_counts_with_percentages(journal: str) -> None:
    """Each state has its count and its share of the rows."""
    text = report_text(journal, "spring")
    assert "campaign spring (id c7f3), from Shop via vonage-sms" in text
    assert "input /data/spring.csv" in text
    assert "  sent                 10   52.6%" in text
    assert "  pending               1    5.3%" in text


def test_text_shows_errors_cost_timing_and_latency(journal: str) -> None:
    """The key figures of the JSON appear in the table."""
    text = report_text(journal, "spring")
    rows = [line.split() for line in text.splitlines()]
    assert ["rejected/15", "2"] in rows
    assert ["invalid_input/invalid_number", "1"] in rows
    for figure in (
        "segments sent   11",
        "cost            0.39960000",
        "first send      2024-05-01 10:00:05 UTC",
        "last send       2024-05-01 10:03:50 UTC",
        "duration        3m45s",
        "average rate    0.04 sent/s (2.7/min)",
        "busiest minute  2024-05-01 10:01 UTC, 5 sent",
        "p50 50.0 ms   p90 90.0 ms   p99 100.0 ms   max 100.0 ms",
    ):
        assert figure in text


def test_text_charts_sends_per_minute_with_quiet_minutes(journal: str) -> None:
    """A minute without sends gets an empty bar; the busiest minute the longest."""
    lines = report_text(journal, "spring").splitlines()
    chart = lines[
        lines.index("sent per minute, UTC (last 4 minutes, from 2024-05-01 10:00)") + 1 :
    ][:4]
    assert [line.split("|")[0].strip() for line in chart] == ["10:00", "10:01", "10:02", "10:03"]
    assert chart[1] == "  10:01 |" + "#" * 50 + "         5"
    assert chart[2].endswith("|" + " " * 50 + "         0")


def test_text_ends_each_campaign_with_the_delivery_line(journal: str) -> None:
    """Receipts are not journalled yet, and the report says so."""
    assert report_text(journal).count("delivery: no receipts yet") == 2


def test_text_fits_100_columns_with_a_long_input_path(tmp_path: Path) -> None:
    """A long path is cut at its start, keeping the file name."""
    path = write_journal(tmp_path / "j.journal")
    with contextlib.closing(schema.connect(path)) as connection:
        connection.execute(
            "UPDATE campaigns SET input = ?", ("/very/long" * 20 + "/recipients.csv",)
        )
    lines = report_text(path).splitlines()
    assert max(len(line) for line in lines) <= 100
    assert any(line.startswith("input ...") and line.endswith("/recipients.csv") for line in lines)


def test_the_chart_keeps_the_last_fifteen_minutes_up_to_the_last_send() -> None:
    """Older minutes drop off; missing minutes in the window are zeros."""
    minutes = (MinuteCount(0, 1), MinuteCount(60 * 20, 4), MinuteCount(60 * 30, 2))
    window = last_minutes(minutes, 15)
    assert [minute.minute_s for minute in window] == [60 * m for m in range(16, 31)]
    assert [minute.sent for minute in window if minute.sent] == [4, 2]


@pytest.mark.parametrize(
    ("duration_s", "text"),
    [(0.0, "0.0s"), (45.24, "45.2s"), (125.0, "2m05s"), (3723.0, "1h02m03s")],
)
def test_durations_read_in_hours_minutes_and_seconds(duration_s: float, text: str) -> None:
    """Under a minute to a tenth of a second, longer ones to the second."""
    assert duration_text(duration_s) == text


def add_deliveries(path: str) -> None:
    """Receipts for "spring": 1 and 3 delivered, one of 2's two parts, 4 failed, 16 (unknown)
    delivered: a receipt proves it was sent."""
    parts = [
        ("P1", 1, "delivered", ""),
        ("P3", 3, "delivered", ""),
        ("P2a", 2, "delivered", ""),
        ("P4", 4, "failed", "6"),
        ("P16", 16, "delivered", ""),
    ]
    insert_deliveries(path, parts)


def insert_deliveries(path: str, parts: list[tuple[str, int, str, str]]) -> None:
    """(message id, line, delivery, error code) of "spring"'s parts, each final."""
    with contextlib.closing(schema.connect(path)) as connection:
        for message_id, line, delivery, code in parts:
            connection.execute(
                "INSERT INTO deliveries VALUES (?, 'c7f3', ?, 'vonage-sms', ?, 1, ?, ?, NULL, 0)",
                (message_id, line, delivery, delivery, code),
            )


def test_json_has_the_delivery_funnel_once_receipts_arrive(journal: str) -> None:
    """Sent rows (and an unknown one a receipt proves) split into delivered, failed, pending."""
    add_deliveries(journal)
    assert spring_json(journal)["delivery"] == {
        "sent": 11,
        "delivered": 3,
        "failed": 1,
        "expired": 0,
        "pending": 7,
        "with_receipts": 5,
        "errors": [{"status": "failed", "code": "6", "count": 1}],
    }
    autumn = report_json(journal, "autumn")["campaigns"][0]
    assert autumn["delivery"] is None


def test_text_shows_the_delivery_funnel_with_shares_and_error_codes(journal: str) -> None:
    """One line per stage with its share of the sent rows, then the failures by status/code."""
    add_deliveries(journal)
    text = report_text(journal, "spring")
    assert "delivery (receipts)" in text
    assert "  delivered             3 (27.3%)" in text
    assert "  pending               7 (63.6%)" in text
    assert "  failed/6              1" in text


# --- a receiver's store: receipts, no campaign --------------------------------------------------


async def stored_by_receiver(path: Path) -> None:
    """Three delivery receipts (two delivered, one failed) and one inbound message."""
    async with receiver_process("--store", str(path)) as receiver:
        async with aiohttp.ClientSession() as session:
            for route, fields in [
                ("dlr", {"messageId": "M1", "status": "delivered", "msisdn": "4479111", "to": "S"}),
                ("dlr", {"messageId": "M2", "status": "delivered", "msisdn": "4479112", "to": "S"}),
                ("dlr", {"messageId": "M3", "status": "failed", "msisdn": "4479113", "to": "S"}),
                ("inbound", {"messageId": "M4", "msisdn": "4479114", "to": "S", "text": "hi"}),
            ]:
                url = f"{receiver.url}/webhooks/{route}"
                async with session.get(url, params=fields) as response:
                    assert response.status == 204
        receiver.process.send_signal(signal.SIGTERM)
        code, _ = await receiver.finish()
    assert code == 0


@pytest.mark.slow
async def test_a_receivers_store_reports_its_receipts_and_where_the_campaign_report_is(
    tmp_path: Path,
) -> None:
    """Not "no campaigns yet": the receipts by state, and the file to report instead; exit 0."""
    store = tmp_path / "receipts.journal"
    await stored_by_receiver(store)
    run = await run_cli("report", str(store))
    assert run.code == 0
    lines = run.stdout.decode().splitlines()
    assert lines[1] == (
        "receipts only: 4 receipts (2 delivered, 1 failed, 1 inbound), not yet tied to a campaign"
    )
    assert lines[2].startswith("received 20")
    assert "report the campaign's journal" in lines[3]


@pytest.mark.slow
async def test_a_receivers_store_reports_its_receipt_counts_as_json(tmp_path: Path) -> None:
    """No campaign, and the receipts by delivery state with when they arrived."""
    store = tmp_path / "receipts.journal"
    await stored_by_receiver(store)
    run = await run_cli("report", "--json", str(store))
    assert run.code == 0
    document = json.loads(run.stdout)
    assert document["campaigns"] == []
    receipts = document["receipts"]
    assert receipts["total"] == 4
    assert receipts["by_delivery"] == {"delivered": 2, "failed": 1, "inbound": 1}
    assert receipts["first_received_at"] <= receipts["last_received_at"]


def save_parts(path: str, plain_segments: dict[int, int]) -> None:
    """Mark rows of "spring" as sent with a text smart encoding changed, by line."""
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.executemany(
            "UPDATE rows SET plain_segments = ? WHERE campaign = 'spring' AND line = ?",
            [(plain, line) for line, plain in plain_segments.items()],
        )
        connection.commit()


def test_the_report_shows_the_parts_and_cost_smart_encoding_saved(journal: str) -> None:
    """Sent rows only, each priced at its own price a part: line 1 (1 part for 0.0333 instead
    of 3) and line 2 (2 for 0.0666 instead of 4) saved 4 parts, 0.1332; the failed line 15
    saved nothing."""
    save_parts(journal, {1: 3, 2: 4, 15: 5})

    assert spring_json(journal)["smart_encoding"] == {
        "texts_changed": 2,
        "segments_saved": 4,
        "cost_saved": "0.13320000",
        "segments_added": 0,
        "cost_added": "0",
    }
    assert "smart encoding  2 texts changed; saved 4 segments, cost 0.13320000" in report_text(
        journal, "spring"
    )


def test_a_campaign_with_no_text_changed_shows_no_smart_encoding_line(journal: str) -> None:
    """The text report says nothing of smart encoding; the JSON has zeros."""
    assert "smart encoding" not in report_text(journal, "spring")
    assert spring_json(journal)["smart_encoding"] == {
        "texts_changed": 0,
        "segments_saved": 0,
        "cost_saved": "0",
        "segments_added": 0,
        "cost_added": "0",
    }


def test_a_journal_older_than_the_plain_segments_column_reports_nothing_saved(
    tmp_path: Path,
) -> None:
    """A schema 2 journal, read as it is (a report writes nothing): no savings, no error."""
    path = write_journal(tmp_path / "old.journal")
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute("ALTER TABLE rows DROP COLUMN plain_segments")
        connection.execute("PRAGMA user_version = 2")
    campaign = spring_json(path)
    assert campaign["smart_encoding"] == {
        "texts_changed": 0,
        "segments_saved": 0,
        "cost_saved": "0",
        "segments_added": 0,
        "cost_added": "0",
    }
    assert campaign["rows"]["sent"] == 10
    with contextlib.closing(sqlite3.connect(path)) as connection:
        assert "plain_segments" not in schema.row_columns(connection)
