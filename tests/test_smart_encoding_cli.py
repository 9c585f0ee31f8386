"""--smart-encoding through the real CLI: what the simulator receives, the records, the dry run's
estimate, the journal and `report`, and distributed mode (enqueue, worker, report --redis)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sms_blaster.simulator import RunningSimulator, SimulatorConfig, start_simulator
from tests.cli_helpers import Run, cli_env, number, run_cli, write_csv

# Two UCS-2 parts as written (the curly apostrophe, the dash, the ellipsis, the curly quotes), one
# GSM-7 part with their plain forms. Escapes: the characters look like the plain ones.
CURLY = (
    "Hi {name}, it\u2019s your table for 2 \u2013 booked for Friday\u2026 Reply STOP to opt "
    "out. See you at the \u201cBlue Door\u201d!"
)
PLAIN = (
    "Hi Ana, it's your table for 2 - booked for Friday... Reply STOP to opt out. "
    'See you at the "Blue Door"!'
)
PRICE = "0.03330000"  # the simulator's price a part


@pytest.fixture
async def simulator() -> AsyncIterator[RunningSimulator]:
    running = await start_simulator(SimulatorConfig(keep_messages=True))
    yield running
    await running.close()


def campaign(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "c.csv", [("Ana", number(1))])


def send_args(sim: RunningSimulator, path: Path, *extra: str) -> list[str]:
    return ["send", str(path), "--base-url", sim.url, "--from", "Shop", "--text", CURLY,
            "--no-progress", *extra]  # fmt: skip


def received(stats: dict[str, Any], to: str) -> dict[str, Any]:
    """The one message the simulator accepted for `to`."""
    (message,) = stats["recipients"][to]["messages"]
    return dict(message)


async def test_auto_sends_the_plain_text_in_fewer_parts_and_the_record_says_so(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """The provider gets GSM-7 text in one part; the record: gsm7, 1 part, changed from 2."""
    run = await run_cli(*send_args(simulator, campaign(tmp_path)))

    assert run.code == 0, run.stderr
    (record,) = run.records
    assert (record["encoding"], record["segments"], record["price"]) == ("gsm7", 1, PRICE)
    assert (record["text_changed"], record["plain_segments"]) == (True, 2)
    message = received(await simulator.stats(), number(1))
    assert (message["text"], message["type"], message["parts"]) == (PLAIN, "text", 1)
    assert "1 segments (1 saved by smart encoding)" in run.stderr


async def test_never_sends_the_text_as_written_and_the_record_is_as_before(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """--smart-encoding never: UCS-2 in two parts, and no smart-encoding key in the record."""
    run = await run_cli(*send_args(simulator, campaign(tmp_path), "--smart-encoding", "never"))

    assert run.code == 0, run.stderr
    (record,) = run.records
    assert (record["encoding"], record["segments"]) == ("ucs2", 2)
    assert "text_changed" not in record
    assert "plain_segments" not in record
    message = received(await simulator.stats(), number(1))
    assert (message["type"], message["parts"]) == ("unicode", 2)


async def test_the_mode_comes_from_the_environment_too(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """SMS_BLASTER_SMART_ENCODING=never is --smart-encoding never."""
    env = cli_env(SMS_BLASTER_SMART_ENCODING="never")
    run = await run_cli(*send_args(simulator, campaign(tmp_path)), env=env)

    assert run.code == 0, run.stderr
    assert run.records[0]["segments"] == 2


async def test_always_changes_a_text_even_when_no_part_is_saved(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """A one-part text with a curly apostrophe goes with a straight one; 1 part before and after."""
    path = campaign(tmp_path)
    run = await run_cli(
        *send_args(simulator, path, "--smart-encoding", "always", "--text", "It\u2019s {name}")
    )

    assert run.code == 0, run.stderr
    (record,) = run.records
    assert (record["segments"], record["text_changed"], record["plain_segments"]) == (1, True, 1)
    assert received(await simulator.stats(), number(1))["text"] == "It's Ana"


async def test_a_bad_mode_is_one_error_line_and_exit_2(tmp_path: Path) -> None:
    """Nothing is sent; the line names the option and the values it takes."""
    env = cli_env(SMS_BLASTER_SMART_ENCODING="sometimes")
    run = await run_cli("send", str(campaign(tmp_path)), "--dry-run", "--text", CURLY, env=env)

    assert run.code == 2
    (line,) = [line for line in run.stderr.splitlines() if line.strip()]
    assert line.startswith("Error: ")
    assert "sometimes" in line
    assert "'auto'" in line
    assert run.stdout == b""


async def test_a_dry_run_shows_the_plain_text_and_the_parts_and_cost_saved(
    tmp_path: Path,
) -> None:
    """The record carries the text that would be sent; the estimate the segments and cost saved."""
    path = write_csv(tmp_path / "c.csv", [("Ana", number(1)), ("Ana", number(2))])
    run = await run_cli(
        "send",
        str(path),
        "--from",
        "MyShop",
        "--dry-run",
        "--text",
        CURLY,
        "--no-progress",
        "--price",
        "0.05",
    )

    assert run.code == 0, run.stderr
    for record in run.records:
        assert (record["text"], record["segments"], record["plain_segments"]) == (PLAIN, 1, 2)
    assert (
        "2 messages would be sent in 2 segments (2 fewer by smart encoding); "
        "cost 0.10 at 0.05 a segment (0.10 saved)"
    ) in run.stderr


async def test_the_journal_keeps_the_plain_parts_and_report_shows_what_was_saved(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """A resume skips the row as settled with the same record keys; `report` counts the save."""
    path = campaign(tmp_path)
    assert (await run_cli(*send_args(simulator, path))).code == 0
    again = await run_cli(*send_args(simulator, path))

    assert again.code == 0, again.stderr
    (record,) = again.records
    assert record["error"]["kind"] == "already_settled"
    assert (record["segments"], record["plain_segments"]) == (1, 2)
    journal = f"{path}.journal"
    with sqlite3.connect(journal) as connection:
        assert connection.execute("SELECT segments, plain_segments FROM rows").fetchall() == [
            (1, 2)
        ]
    report = await run_cli("report", journal, "--json")
    assert json.loads(report.stdout)["campaigns"][0]["smart_encoding"] == {
        "texts_changed": 1,
        "segments_saved": 1,
        "cost_saved": PRICE,
        "segments_added": 0,
        "cost_added": "0",
    }


async def test_twilio_gets_the_plain_text_and_no_smart_encoded_flag(tmp_path: Path) -> None:
    """sms-blaster replaces the look-alikes itself: Twilio's own SmartEncoded is never asked."""
    env = cli_env(TWILIO_ACCOUNT_SID="AC" + "0" * 32, TWILIO_AUTH_TOKEN="token")
    async with await start_simulator(SimulatorConfig(keep_messages=True)) as simulator:
        run = await run_cli(
            *send_args(simulator, campaign(tmp_path), "--provider", "twilio"), env=env
        )
        stats = await simulator.stats()

    assert run.code == 0, run.stderr
    assert run.records[0]["plain_segments"] == 2
    message = received(stats, number(1))
    assert (message["text"], message["parts"]) == (PLAIN, 1)


async def enqueue_and_work(
    simulator: RunningSimulator, redis_url: str, name: str, path: Path, *extra: str
) -> Run:
    """`enqueue` the campaign `name` from `path` (with `extra`), then one worker's run of it."""
    enqueue = await run_cli(
        "enqueue", str(path), "--redis", redis_url, "--campaign", name, "--from", "Shop", *extra
    )
    assert enqueue.code == 0, enqueue.stderr
    return await run_cli(
        "worker", "--redis", redis_url, "--campaign", name, "--base-url", simulator.url,
        "--no-progress",
    )  # fmt: skip


async def test_a_worker_sends_the_text_enqueue_prepared_and_its_record_says_so(
    simulator: RunningSimulator, redis_url: str, tmp_path: Path
) -> None:
    """enqueue stores the plain text and its plain parts; the worker's record and the report
    --redis show the save."""
    worker = await enqueue_and_work(
        simulator, redis_url, "spring", campaign(tmp_path), "--text", CURLY
    )

    assert worker.code == 0, worker.stderr
    (record,) = worker.records
    assert (record["segments"], record["text_changed"], record["plain_segments"]) == (1, True, 2)
    assert received(await simulator.stats(), number(1))["text"] == PLAIN
    report = await run_cli("report", "--redis", redis_url, "--campaign", "spring", "--json")
    saved = json.loads(report.stdout)["campaigns"][0]["smart_encoding"]
    assert saved == {
        "texts_changed": 1,
        "segments_saved": 1,
        "cost_saved": "0.0333",
        "segments_added": 0,
        "cost_added": "0",
    }


# Texts of only invisible characters (and spaces): smart encoding would send them empty or blank.
INVISIBLE_TEXTS = ("\u200b" * 100, "\u00ad" * 80, "\u200b" * 71 + " ", "\u2060\ufeff\u200b")


def invisible_campaign(tmp_path: Path) -> Path:
    path = tmp_path / "invisible.jsonl"
    rows = [{"to": number(n), "text": text} for n, text in enumerate(INVISIBLE_TEXTS, 1)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def assert_empty_text(records: list[dict[str, Any]]) -> None:
    assert len(records) == len(INVISIBLE_TEXTS)
    for record in records:
        assert record["status"] == "failed", record
        assert (record["error"]["kind"], record["error"]["code"]) == ("invalid_input", "empty_text")
        assert "only invisible characters" in record["error"]["message"]
        assert "text_changed" not in record


async def test_a_text_of_only_invisible_characters_fails_as_empty_text_and_is_never_sent(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """In auto and always, a text smart encoding would leave blank is invalid_input/empty_text."""
    for mode in ("auto", "always"):
        run = await run_cli(
            "send", str(invisible_campaign(tmp_path)), "--base-url", simulator.url, "--from",
            "Shop", "--no-progress", "--no-journal", "--smart-encoding", mode,
        )  # fmt: skip

        assert run.code == 1, run.stderr
        assert_empty_text(run.records)
    assert (await simulator.stats())["requests"] == 0


async def test_never_sends_a_text_of_invisible_characters_as_written(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """--smart-encoding never changes nothing, so the provider gets the characters as given."""
    run = await run_cli(
        "send", str(invisible_campaign(tmp_path)), "--base-url", simulator.url, "--from", "Shop",
        "--no-progress", "--smart-encoding", "never",
    )  # fmt: skip

    assert run.code == 0, run.stderr
    assert [record["status"] for record in run.records] == ["sent"] * len(INVISIBLE_TEXTS)
    assert received(await simulator.stats(), number(1))["text"] == INVISIBLE_TEXTS[0]


async def test_a_dry_run_and_enqueue_refuse_a_text_of_only_invisible_characters(
    redis_url: str, tmp_path: Path
) -> None:
    """Every path that prepares rows decides the same: the dry run's records and enqueue's."""
    dry = await run_cli(
        "send", str(invisible_campaign(tmp_path)), "--from", "MyShop", "--dry-run", "--no-progress"
    )
    assert dry.code == 1, dry.stderr
    assert_empty_text(dry.records)

    enqueue = await run_cli(
        "enqueue", str(invisible_campaign(tmp_path)), "--redis", redis_url, "--campaign",
        "blank", "--from", "Shop",
    )  # fmt: skip
    assert enqueue.code == 1, enqueue.stderr
    assert_empty_text(enqueue.records)


async def test_a_placeholder_of_only_a_zero_width_space_is_empty_text(tmp_path: Path) -> None:
    """--text '{name}' with a name of one zero-width space would send an empty message."""
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"to": number(1), "name": "\u200b"}) + "\n")
    run = await run_cli(
        "send", str(path), "--from", "MyShop", "--dry-run", "--no-progress", "--text", "{name}"
    )

    assert run.code == 1, run.stderr
    (record,) = run.records
    assert (record["error"]["code"], record["status"]) == ("empty_text", "failed")


ELLIPSES = "\u2026" * 60  # one UCS-2 part as written; 180 dots, two GSM-7 parts, once replaced


def ellipses_campaign(tmp_path: Path) -> Path:
    path = tmp_path / "ellipses.jsonl"
    path.write_text(json.dumps({"to": number(1), "text": ELLIPSES}) + "\n")
    return path


async def test_always_sends_as_written_when_the_replacement_would_pass_max_segments(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """The text as written fits --max-segments 1 and its plain form does not: it goes as written."""
    run = await run_cli(
        "send", str(ellipses_campaign(tmp_path)), "--base-url", simulator.url, "--from", "Shop",
        "--no-progress", "--smart-encoding", "always", "--max-segments", "1",
    )  # fmt: skip

    assert run.code == 0, run.stderr
    (record,) = run.records
    assert (record["status"], record["encoding"], record["segments"]) == ("sent", "ucs2", 1)
    assert "text_changed" not in record
    assert received(await simulator.stats(), number(1))["text"] == ELLIPSES


def saving_and_adding_campaign(tmp_path: Path) -> Path:
    """Under always: line 1 saves a part (two UCS-2, one GSM-7), line 2 adds one (one, two)."""
    path = tmp_path / "both.jsonl"
    rows = [{"to": number(1), "text": CURLY.replace("{name}", "Ana")},
            {"to": number(2), "text": ELLIPSES}]  # fmt: skip
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


BOTH_COUNTED = {
    "texts_changed": 2,
    "segments_saved": 1,
    "cost_saved": PRICE,
    "segments_added": 1,
    "cost_added": PRICE,
}


async def test_the_summary_and_report_count_parts_saved_and_added_apart(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """One part saved and one added are not "nothing saved": each is counted on its own."""
    path = saving_and_adding_campaign(tmp_path)
    run = await run_cli(
        "send", str(path), "--base-url", simulator.url, "--from", "Shop", "--no-progress",
        "--smart-encoding", "always",
    )  # fmt: skip

    assert run.code == 0, run.stderr
    assert [record["segments"] for record in run.records] == [1, 2]
    assert "3 segments (1 saved, 1 added by smart encoding)" in run.stderr
    report = await run_cli("report", f"{path}.journal", "--json")
    assert json.loads(report.stdout)["campaigns"][0]["smart_encoding"] == BOTH_COUNTED
    text = await run_cli("report", f"{path}.journal")
    assert (
        "smart encoding  2 texts changed; saved 1 segments, cost 0.03330000\n"
        "                added 1 segments, cost 0.03330000 (always)\n"
    ) in text.stdout.decode()


async def test_a_dry_run_estimates_parts_saved_and_added_apart(tmp_path: Path) -> None:
    """The estimate: one fewer and one more part, and the cost of each at --price."""
    run = await run_cli(
        "send", str(saving_and_adding_campaign(tmp_path)), "--from", "MyShop", "--dry-run",
        "--no-progress",
        "--smart-encoding", "always", "--price", "0.05",
    )  # fmt: skip

    assert run.code == 0, run.stderr
    assert (
        "2 messages would be sent in 3 segments (1 fewer, 1 more by smart encoding); "
        "cost 0.15 at 0.05 a segment (0.05 saved, 0.05 added)"
    ) in run.stderr


async def test_the_distributed_report_counts_parts_saved_and_added_apart(
    simulator: RunningSimulator, redis_url: str, tmp_path: Path
) -> None:
    """report --redis counts as the journal's report does."""
    path = saving_and_adding_campaign(tmp_path)
    worker = await enqueue_and_work(
        simulator, redis_url, "both", path, "--smart-encoding", "always"
    )
    assert worker.code == 0, worker.stderr

    report = await run_cli("report", "--redis", redis_url, "--campaign", "both", "--json")
    saved = json.loads(report.stdout)["campaigns"][0]["smart_encoding"]
    assert saved == {**BOTH_COUNTED, "cost_saved": "0.0333", "cost_added": "0.0333"}
