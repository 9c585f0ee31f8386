"""Opt-outs through the real CLI: the simulator's handset writes STOP to a real `receive`, and
`send`, `enqueue` and `worker` skip the number; `optouts` manages the list."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sms_blaster.journal.optouts import OptOutJournal
from sms_blaster.optouts.model import OptOut
from sms_blaster.simulator import RunningSimulator, SimulatorConfig, start_simulator
from tests.cli_helpers import Run, cli_env, receiver_process, run_cli, write_csv

TOKEN = "twilio-token"
SID = "AC" + "1" * 32
OUT, OTHER = "447400123456", "447400123457"


@contextlib.asynccontextmanager
async def simulator(**options: Any) -> AsyncIterator[RunningSimulator]:
    running = await start_simulator(SimulatorConfig(twilio_auth_token=TOKEN, **options))
    try:
        yield running
    finally:
        await running.close()


async def handset_writes(
    sim: RunningSimulator, url: str, text: str, api: str = "twilio", sender: str = OUT
) -> dict[str, Any]:
    """The simulator sends an inbound message to `url`; the receiver's status and answer."""
    asked = {"api": api, "url": url, "from": f"+{sender}", "text": text}
    async with (
        aiohttp.ClientSession() as session,
        session.post(sim.url + "/_simulator/inbound", json=asked) as response,
    ):
        assert response.status == 200, await response.text()
        answer: dict[str, Any] = await response.json()
    return answer


async def next_second() -> None:
    """Wait for the wall clock's next whole second: keywords are ordered by whole seconds."""
    now_s = time.time()
    await asyncio.sleep(int(now_s) + 1.02 - now_s)  # the clock, not another task, is waited for


def campaign(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "c.csv", [("Ann", OUT), ("Bob", OTHER)])


def send_args(path: Path, sim: RunningSimulator | None, *extra: str) -> list[str]:
    url = "http://127.0.0.1:9" if sim is None else sim.url  # None: nothing may be sent
    return ["send", str(path), "--from", "Shop", "--text", "Hi {name}", "--base-url", url,
            "--no-progress", *extra]  # fmt: skip


def kinds(run: Run) -> dict[str, str | None]:
    """The status/kind of each record, by number."""
    return {
        r["to"]: r["status"] + (f"/{r['error']['kind']}" if r["error"] else "") for r in run.records
    }


async def test_a_stop_through_the_receiver_makes_send_skip_the_number(tmp_path: Path) -> None:
    """Twilio's signed inbound webhook, answered with the STOP reply as TwiML; the number is
    skipped as opted_out, the others are sent, and a resume keeps the decision."""
    store = tmp_path / "store.journal"
    path = campaign(tmp_path)
    env = {"TWILIO_AUTH_TOKEN": TOKEN}
    async with (
        receiver_process("--store", str(store), "--reply-stop", "Bye <3", env=env) as receiver,
        simulator() as sim,
    ):
        answer = await handset_writes(sim, receiver.url + "/webhooks/twilio/inbound", "Stop.")
        assert answer["status"] == 200
        assert "<Response><Message>Bye &lt;3</Message></Response>" in answer["body"]
        run = await run_cli(*send_args(path, sim, "--optouts", str(store)))
        assert run.code == 0, run.stderr
        assert kinds(run) == {OUT: "skipped/opted_out", OTHER: "sent"}
        assert set((await sim.stats())["recipients"]) == {OTHER}
        again = await run_cli(*send_args(path, sim, "--optouts", str(store)))
    assert kinds(again) == {OUT: "skipped/already_settled", OTHER: "skipped/already_settled"}


@pytest.mark.parametrize(
    ("api", "route"),
    [("vonage-sms", "/webhooks/inbound"), ("vonage-messages", "/webhooks/messages/inbound")],
)
async def test_a_stop_to_a_vonage_number_reaches_the_list(
    tmp_path: Path, api: str, route: str
) -> None:
    """Both Vonage APIs, signed: the list names the number, its keyword and source."""
    store = tmp_path / "store.journal"
    secret = "vonage-secret"
    env = {"VONAGE_SIGNATURE_SECRET": secret}
    async with (
        receiver_process("--store", str(store), env=env) as receiver,
        simulator(signature_secret=secret) as sim,
    ):
        answer = await handset_writes(sim, receiver.url + route, "unsubscribe me", api)
        assert answer["status"] in (200, 204)
    listed = await run_cli("optouts", "list", "--store", str(store))
    assert listed.code == 0, listed.stderr
    number, state, _, source, keyword = listed.stdout.decode().strip().split("\t")
    assert (number, state, source, keyword) == (OUT, "out", f"inbound:{api}", "UNSUBSCRIBE")


async def test_a_start_after_a_stop_lets_the_next_campaign_send_again(tmp_path: Path) -> None:
    """The help keyword gets the help reply and changes nothing."""
    store = tmp_path / "store.journal"
    path = campaign(tmp_path)
    async with (
        receiver_process("--store", str(store), "--reply-help", "Call 123") as receiver,
        simulator() as sim,
    ):
        url = receiver.url + "/webhooks/twilio/inbound"
        await handset_writes(sim, url, "STOP")
        helped = await handset_writes(sim, url, "help")
        assert "<Message>Call 123</Message>" in helped["body"]
        await next_second()  # at the STOP's own second, the STOP would win
        await handset_writes(sim, url, "START")
        run = await run_cli(*send_args(path, sim, "--optouts", str(store)))
    assert run.code == 0, run.stderr
    assert kinds(run) == {OUT: "sent", OTHER: "sent"}


async def test_configured_keywords_replace_twilios(tmp_path: Path) -> None:
    """With --optout-keywords ARRET, STOP is an ordinary message and ARRET opts out."""
    store = tmp_path / "store.journal"
    async with (
        receiver_process(
            "--store", str(store), env={"SMS_BLASTER_OPTOUT_KEYWORDS": "arret, halte"}
        ) as receiver,
        simulator() as sim,
    ):
        url = receiver.url + "/webhooks/twilio/inbound"
        await handset_writes(sim, url, "STOP")
        await handset_writes(sim, url, "Arret!", sender=OTHER)
    listed = await run_cli("optouts", "list", "--store", str(store))
    assert [line.split("\t")[0] for line in listed.stdout.decode().splitlines()] == [OTHER]


async def test_a_dry_run_shows_rows_to_numbers_on_an_exported_list(tmp_path: Path) -> None:
    """An exported CSV list works as --optouts (env var too); numbers opted back in are sent."""
    listed = tmp_path / "optouts.csv"
    listed.write_text(f"number,opted_out,at,source,reason\n{OUT},1,10,manual,\n{OTHER},0,10,,\n")
    async with simulator() as sim:
        run = await run_cli(
            *send_args(campaign(tmp_path), sim, "--dry-run"),
            env={"SMS_BLASTER_OPTOUTS": str(listed), "VONAGE_API_KEY": "k",
                 "VONAGE_API_SECRET": "s"},
        )  # fmt: skip
    assert run.code == 0, run.stderr
    assert kinds(run) == {OUT: "skipped/opted_out", OTHER: "skipped/dry_run"}


@pytest.mark.slow
async def test_a_stop_stored_while_a_campaign_sends_stops_its_later_sends(tmp_path: Path) -> None:
    """The list is followed while sending: a number opted out once the campaign is under way is
    skipped when its turn comes (seconds later), and was never sent."""
    rows = [(f"N{n}", f"4474001{n:05d}") for n in range(1, 41)]
    path = write_csv(tmp_path / "c.csv", rows)
    store = tmp_path / "store.journal"
    OptOutJournal.open(str(store)).close()
    last = rows[-1][1]
    async with simulator() as sim:
        run_task = asyncio.ensure_future(
            run_cli(*send_args(path, sim, "--optouts", str(store), "--rate", "10"))
        )
        await sim.wait_for_accepted(3)
        writer = OptOutJournal.open(str(store))
        writer.record([OptOut(last, True, 1.0, "manual")])
        writer.close()
        run = await run_task
        recipients = set((await sim.stats())["recipients"])
    assert run.code == 0, run.stderr
    assert kinds(run)[last] == "skipped/opted_out"
    assert last not in recipients


async def test_a_twilio_unsubscribed_answer_adds_the_number_to_the_list(tmp_path: Path) -> None:
    """21610 (the simulator's 9990): the row is rejected, and the next campaign skips it."""
    store = tmp_path / "store.journal"
    OptOutJournal.open(str(store)).close()
    unsubscribed = "447400129990"
    path = write_csv(tmp_path / "c.csv", [("Ann", unsubscribed), ("Bob", OTHER)])
    twilio = ["--provider", "twilio", "--account-sid", SID, "--auth-token", TOKEN,
              "--from", "+447400000001"]  # fmt: skip
    async with simulator() as sim:
        args = ["--optouts", str(store), *twilio]
        first = await run_cli(*send_args(path, sim, *args))
        assert kinds(first)[unsubscribed] == "failed/rejected"
        second = await run_cli(*send_args(path, sim, *args, "--campaign", "next"))
    assert kinds(second) == {unsubscribed: "skipped/opted_out", OTHER: "sent"}
    exported = await run_cli("optouts", "export", "--store", str(store), "--format", "jsonl")
    (entry,) = exported.records
    assert (entry["number"], entry["source"]) == (unsubscribed, "twilio-21610")


async def test_optouts_add_remove_import_and_export_manage_the_list(tmp_path: Path) -> None:
    """Numbers normalised as a campaign's (national ones by --default-region); stdin and stdout."""
    store = str(tmp_path / "store.journal")
    OptOutJournal.open(store).close()
    added = await run_cli("optouts", "add", "07400 123456", "--default-region", "gb",
                          "--store", store, "--reason", "asked by phone")  # fmt: skip
    assert added.code == 0, added.stderr
    imported = await run_cli(
        "optouts", "import", "-", "--store", store, stdin=f"+{OTHER}\n".encode()
    )
    assert imported.code == 0, imported.stderr
    removed = await run_cli("optouts", "remove", OUT, "--store", store)
    assert removed.code == 0, removed.stderr
    exported = await run_cli("optouts", "export", "-", "--store", store)
    lines = exported.stdout.decode().splitlines()
    assert lines[0] == "number,opted_out,at,source,reason"
    assert [line.split(",")[:2] + line.split(",")[3:4] for line in lines[1:]] == [
        [OUT, "0", "manual"],
        [OTHER, "1", "import"],
    ]


async def test_a_bad_number_in_an_import_is_exit_2_naming_its_line(tmp_path: Path) -> None:
    """Nothing is written: one Error line."""
    store = str(tmp_path / "store.journal")
    OptOutJournal.open(store).close()
    listed = tmp_path / "in.csv"
    listed.write_text(f"number\n{OUT}\nnot-a-number\n")
    run = await run_cli("optouts", "import", str(listed), "--store", store)
    assert run.code == 2
    assert run.stderr.strip().splitlines() == [
        f"Error: {listed}: row 2: 'not-a-number' is not a valid number (a national number "
        "needs --default-region); fix or remove it"
    ]
    assert OptOutJournal.open_read_only(store).entries() == []


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["receive", "--store", "{tmp}/x.journal", "--optout-keywords", " , "], {},
         "--optout-keywords: give at least one keyword"),
        (["receive", "--store", "{tmp}/x.journal"], {"SMS_BLASTER_HELP_KEYWORDS": "need help"},
         "SMS_BLASTER_HELP_KEYWORDS=need help: "),
        (["send", "{tmp}/c.csv", "--from", "Shop", "--text", "x", "--optouts", "{tmp}/no.csv"],
         {}, "/no.csv: cannot read it"),
        (["optouts", "list"], {}, "optouts: give --store JOURNAL"),
        (["receive", "--store", "{tmp}/x.journal", "--reply-stop", "bye\x1b[0m"], {},
         "'--reply-stop': holds the control character U+001B"),
        (["receive", "--store", "{tmp}/x.journal"], {"SMS_BLASTER_REPLY_HELP": "a\x0bb"},
         "SMS_BLASTER_REPLY_HELP=a\\x0bb: holds the control character U+000B"),
        (["receive", "--store", "{tmp}/x.journal", "--reply-stop", os.fsdecode(b"\xff\xfebye")],
         {}, "'--reply-stop': is not UTF-8 text"),
        (["receive", "--store", "{tmp}/x.journal", "--reply-help", "x" * 100_000], {},
         "'--reply-help': takes 654 SMS parts; a reply takes at most 10"),
    ],
)  # fmt: skip
async def test_bad_opt_out_options_are_one_error_line_and_exit_2(
    tmp_path: Path, args: list[str], env: dict[str, str], expected: str
) -> None:
    """Before anything is sent, received or written."""
    write_csv(tmp_path / "c.csv", [("Ann", OUT)])
    run = await run_cli(*(arg.format(tmp=tmp_path) for arg in args), env=cli_env(**env))
    assert run.code == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("Error: ")
    assert expected in lines[0]


async def test_a_dry_run_reads_the_receivers_store_and_creates_nothing_beside_it(
    tmp_path: Path,
) -> None:
    """The store is only read: no WAL files appear next to it."""
    store = tmp_path / "optouts" / "store.journal"
    store.parent.mkdir()
    writer = OptOutJournal.open(str(store))
    writer.record([OptOut(OUT, True, 1.0, "manual")])
    writer.close()
    async with simulator() as sim:
        run = await run_cli(
            *send_args(campaign(tmp_path), sim, "--dry-run", "--optouts", str(store))
        )
    assert run.code == 0, run.stderr
    assert kinds(run) == {OUT: "skipped/opted_out", OTHER: "skipped/dry_run"}
    assert [path.name for path in store.parent.iterdir()] == ["store.journal"]


async def twilio_posts(url: str, *keywords: tuple[str, str]) -> None:
    """Twilio's inbound webhook, unsigned (no token configured), a (MessageSid, Body) each."""
    async with aiohttp.ClientSession() as session:
        for sid, body in keywords:
            fields = {"From": f"+{OUT}", "To": "+447700900000", "Body": body, "MessageSid": sid}
            async with session.post(url + "/webhooks/twilio/inbound", data=fields) as response:
                assert response.status == 200, await response.text()


async def listed_state(*store: str) -> str:
    listed = await run_cli("optouts", "list", "--all", *store)
    assert listed.code == 0, listed.stderr
    return listed.stdout.decode().split("\t")[1]


async def test_a_replayed_start_does_not_undo_a_later_stop(tmp_path: Path) -> None:
    """STOP, START, STOP, then the START again (a retry or a replay): the number stays out."""
    store = tmp_path / "store.journal"
    async with receiver_process("--store", str(store)) as receiver:
        await twilio_posts(receiver.url, ("SM11a", "STOP"), ("SM11b", "START"), ("SM11c", "STOP"))
        await next_second()  # the replay is later than the STOP: only its id can refuse it
        await twilio_posts(receiver.url, ("SM11b", "START"))
    assert await listed_state("--store", str(store)) == "out"


async def test_a_start_stamped_in_the_future_loses_to_a_later_stop(tmp_path: Path) -> None:
    """A Vonage START stamped 2030 counts as received now: the STOP after it opts out."""
    store = tmp_path / "store.journal"
    async with (
        receiver_process("--store", str(store)) as receiver,
        aiohttp.ClientSession() as session,
    ):
        # Once the receiver listens: a start-up longer than 1 s would put the START after it.
        now = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(time.time() + 1))
        for message_id, text, stamp in (("0A1", "START", "2030-01-01 00:00:00"),
                                        ("0A2", "STOP", now)):  # fmt: skip
            fields = {"msisdn": OUT, "to": "447700900000", "messageId": message_id,
                      "text": text, "type": "text", "message-timestamp": stamp}  # fmt: skip
            async with session.post(receiver.url + "/webhooks/inbound", data=fields) as answer:
                assert answer.status in (200, 204), await answer.text()
    assert await listed_state("--store", str(store)) == "out"


def other_database(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute("CREATE TABLE t (x)")
        connection.commit()


def garbage(path: Path) -> None:
    path.write_bytes(b"SQLite format 3\x00garbage")


def cut_journal(path: Path) -> None:
    writer = OptOutJournal.open(str(path))
    writer.record([OptOut(f"4474001{n:05}", True, 1.0, "manual") for n in range(2000)])
    writer.close()
    with path.open("r+b") as handle:
        handle.truncate(8192)


@pytest.mark.parametrize(
    ("make", "expected"),
    [(other_database, "not a journal or an opt-out list"), (garbage, "cannot read it as a journal"),
     (cut_journal, "cannot read it as a journal")],
)  # fmt: skip
async def test_an_optouts_file_that_is_no_readable_journal_is_exit_2(
    tmp_path: Path, make: Callable[[Path], None], expected: str
) -> None:
    """Another SQLite database, garbage after the header, a journal cut short: one Error: line."""
    make(tmp_path / "list.db")
    run = await run_cli(
        *send_args(campaign(tmp_path), None, "--optouts", str(tmp_path / "list.db"))
    )
    assert run.code == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"Error: {tmp_path / 'list.db'}: {expected}")
    assert run.records == []


async def test_a_journal_without_opt_outs_yet_is_an_empty_list(tmp_path: Path) -> None:
    """A campaign's journal, written before any opt-out: every row is sent."""
    journal = tmp_path / "c.journal"
    path = campaign(tmp_path)
    async with simulator() as sim:
        first = await run_cli(*send_args(path, sim, "--journal", str(journal)))
        assert first.code == 0, first.stderr
        other = write_csv(tmp_path / "d.csv", [("Cy", OUT)])
        run = await run_cli(*send_args(other, sim, "--optouts", str(journal)))
    assert run.code == 0, run.stderr
    assert kinds(run) == {OUT: "sent"}


async def test_optouts_list_escapes_a_reason_holding_a_tab_or_a_newline(tmp_path: Path) -> None:
    """One entry, one line of five tab-separated fields, whatever the --reason holds."""
    store = str(tmp_path / "store.journal")
    OptOutJournal.open(store).close()
    added = await run_cli("optouts", "add", OUT, "--store", store, "--reason", "a\tb\nc\x1bd")
    assert added.code == 0, added.stderr
    listed = await run_cli("optouts", "list", "--store", store)
    (line,) = listed.stdout.decode().splitlines()
    assert line.split("\t")[3:] == ["manual", "a\\tb\\nc\\x1bd"]


@pytest.mark.parametrize(
    ("content", "name"), [(b"number,reason\n447400123456,caf\xe9\n", "list.csv"),
                          (b"447400123456 caf\xe9\n", "list.txt")],
)  # fmt: skip
async def test_an_optouts_list_that_is_not_utf8_asks_for_utf8(
    tmp_path: Path, content: bytes, name: str
) -> None:
    """--encoding is the campaign input's option: the list's error does not point to it."""
    (tmp_path / name).write_bytes(content)
    run = await run_cli(*send_args(campaign(tmp_path), None, "--optouts", str(tmp_path / name)))
    assert run.code == 2, run.stderr
    (line,) = run.stderr.strip().splitlines()
    assert "--encoding" not in line
    assert line.endswith("save the opt-out list as UTF-8")
