"""Resuming campaigns and the campaign guards: the real CLI against the simulator over loopback."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sms_blaster.simulator import RunningSimulator, SimulatorConfig, start_simulator
from tests.cli_helpers import Run, cli_env, run_cli, write_csv

# Holds the journal's lock as another sms-blaster run would: flock, then who holds it.
LOCK_HOLDER = """\
import fcntl, os, sys
handle = open(sys.argv[1], "a+")
fcntl.flock(handle, fcntl.LOCK_EX)
handle.seek(0)
handle.truncate()
handle.write(f"pid {os.getpid()} on testhost since 2026-01-01 00:00:00\\n")
handle.flush()
print("locked", flush=True)
sys.stdin.read()
"""


@pytest.fixture
async def simulator() -> AsyncIterator[RunningSimulator]:
    running = await start_simulator(SimulatorConfig())
    yield running
    await running.close()


def send_args(
    sim: RunningSimulator, path: Path | str, *extra: str, sender: str = "Shop"
) -> list[str]:
    return [
        "send", str(path), "--base-url", sim.url, "--from", sender, "--rate", "500",
        "--no-progress", *extra,
    ]  # fmt: skip


def numbers(count: int, suffix: int = 1) -> list[str]:
    """`count` distinct valid UK mobiles (E.164 digits) ending in the four digits `suffix`."""
    return [f"4474{k:04d}{suffix:04d}" for k in range(count)]


def campaign_csv(path: Path, tos: list[str]) -> Path:
    """A `text,to` CSV: one row per number, text 'm<row index>', numbers with a '+'."""
    return write_csv(path, [(f"m{k}", "+" + to) for k, to in enumerate(tos)], header="text,to")


def errors(run: Run) -> list[str]:
    return [line for line in run.stderr.splitlines() if line.startswith("Error:")]


def files_in(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def per_recipient(stats: dict[str, Any], key: str) -> dict[str, int]:
    """Each recipient's `requests` or `accepted` count."""
    return {to: int(counts[key]) for to, counts in stats["recipients"].items()}


def outcome(record: dict[str, Any]) -> tuple[str, str | None, str | None]:
    """(status, error kind, error code) of a record."""
    error = record["error"]
    return record["status"], error and error["kind"], error and error["code"]


# --- resuming -----------------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_rerun_of_the_same_command_sends_nothing_more(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """Every row is recorded skipped/already_settled with its earlier state and client ref, its
    message ids and price (the earlier record again, should it have been lost), and the rerun's
    cost is its own: nothing."""
    tos = numbers(10)
    path = campaign_csv(tmp_path / "c.csv", tos)
    first = await run_cli(*send_args(simulator, path))
    assert first.code == 0, first.stderr
    requests = (await simulator.stats())["requests"]

    rerun = await run_cli(*send_args(simulator, path))

    assert rerun.code == 0, rerun.stderr
    assert (await simulator.stats())["requests"] == requests == 10
    records = rerun.by_line()
    assert {outcome(r) for r in records.values()} == {("skipped", "already_settled", "sent")}
    earlier = first.by_line()
    assert all(records[n]["client_ref"] == earlier[n]["client_ref"] for n in range(1, 11))
    for n in range(1, 11):
        assert records[n]["message_ids"] == earlier[n]["message_ids"] != []
        assert records[n]["price"] == earlier[n]["price"] is not None
    assert "10 rows settled earlier are skipped" in rerun.stderr
    assert "cost 0" in rerun.stderr


@pytest.mark.slow
async def test_a_rerun_with_only_new_prints_no_records_for_settled_rows(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """--only-new: nothing new happened, so stdout is empty; the summary still counts them."""
    path = campaign_csv(tmp_path / "c.csv", numbers(5))
    first = await run_cli(*send_args(simulator, path, "--only-new"))
    assert first.code == 0, first.stderr
    assert len(first.records) == 5

    rerun = await run_cli(*send_args(simulator, path, "--only-new"))

    assert rerun.code == 0, rerun.stderr
    assert rerun.stdout == b""
    assert "5 skipped" in rerun.stderr
    assert (await simulator.stats())["requests"] == 5


@pytest.mark.slow
async def test_rows_that_failed_permanently_are_not_resent_on_a_rerun(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """Barred numbers (9990) are settled as failed: the rerun skips them, and sends nothing."""
    tos = numbers(3) + numbers(3, suffix=9990)
    path = campaign_csv(tmp_path / "c.csv", tos)
    first = await run_cli(*send_args(simulator, path))
    assert first.code == 1, first.stderr
    assert [outcome(first.by_line()[n]) for n in (4, 5, 6)] == [("failed", "rejected", "7")] * 3

    rerun = await run_cli(*send_args(simulator, path))

    assert rerun.code == 0, rerun.stderr
    records = rerun.by_line()
    assert [outcome(records[n]) for n in (4, 5, 6)] == [
        ("skipped", "already_settled", "failed")
    ] * 3
    assert per_recipient(await simulator.stats(), "requests") == dict.fromkeys(tos, 1)


@pytest.mark.slow
async def test_rows_whose_retries_were_exhausted_are_sent_once_on_a_rerun(tmp_path: Path) -> None:
    """Never accepted (HTTP 503 every time, no retries): the rerun sends each row exactly once."""
    tos = numbers(5)
    path = campaign_csv(tmp_path / "c.csv", tos)
    async with await start_simulator(SimulatorConfig(error_5xx_rate=1.0)) as failing:
        first = await run_cli(*send_args(failing, path, "--retries", "0"))
    assert first.code == 1, first.stderr
    assert {outcome(r) for r in first.records} == {("failed", "exhausted", "http_503")}

    async with await start_simulator(SimulatorConfig()) as working:
        rerun = await run_cli(*send_args(working, path, "--retries", "0"))
        stats = await working.stats()

    assert rerun.code == 0, rerun.stderr
    assert {outcome(r) for r in rerun.records} == {("sent", None, None)}
    assert per_recipient(stats, "accepted") == dict.fromkeys(tos, 1)
    assert stats["requests"] == 5


@pytest.mark.slow
async def test_a_row_that_ended_unknown_is_not_resent_on_a_rerun(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """Accepted, then the connection dropped (9997): it may have been sent, so it stays unknown
    and the rerun exits 1 saying so."""
    tos = numbers(2) + numbers(1, suffix=9997)
    path = campaign_csv(tmp_path / "c.csv", tos)
    first = await run_cli(*send_args(simulator, path))
    assert first.code == 1, first.stderr
    assert outcome(first.by_line()[3])[:2] == ("unknown", "ambiguous")

    rerun = await run_cli(*send_args(simulator, path))

    assert rerun.code == 1, rerun.stderr
    assert (
        "  1 rows are unknown from earlier runs (they may have been sent) and were not resent; "
        "--retry-unknown resends them (may send twice)"
    ) in rerun.stderr.splitlines()
    assert outcome(rerun.by_line()[3]) == ("skipped", "already_settled", "unknown")
    assert per_recipient(await simulator.stats(), "requests") == dict.fromkeys(tos, 1)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flag", "kind"), [("--optouts", "opted_out"), ("--suppress", "suppressed")]
)
async def test_a_retried_unknown_row_whose_number_opted_out_since_stays_unknown(
    simulator: RunningSimulator, tmp_path: Path, flag: str, kind: str
) -> None:
    """Accepted, then the connection dropped (9997): unknown. Its number then opts out, and
    --retry-unknown does not resend it, but the earlier request may have sent it: its record
    stays `unknown` (saying why it was not resent), as do the journal, `report` and the next
    resume. Before, it became skipped/opted_out: a row possibly sent counted as not sent."""
    tos = numbers(1) + numbers(1, suffix=9997)
    path = campaign_csv(tmp_path / "c.csv", tos)
    first = await run_cli(*send_args(simulator, path))
    assert first.code == 1, first.stderr
    assert outcome(first.by_line()[2])[:2] == ("unknown", "ambiguous")
    listed = tmp_path / "optouts.txt"
    listed.write_text(f"+{tos[1]}\n")

    retried = await run_cli(*send_args(simulator, path, "--retry-unknown", flag, str(listed)))

    assert retried.code == 1, retried.stderr
    assert outcome(retried.by_line()[2]) == ("unknown", kind, kind)
    assert "an earlier run's request may have sent it" in retried.by_line()[2]["error"]["message"]
    assert per_recipient(await simulator.stats(), "requests") == dict.fromkeys(tos, 1)
    report = await run_cli("report", str(tmp_path / "c.csv.journal"), "--json")
    assert report.code == 0, report.stderr
    [summary] = json.loads(report.stdout)["campaigns"]
    assert (summary["rows"]["sent"], summary["rows"]["unknown"]) == (1, 1), summary["rows"]
    again = await run_cli(*send_args(simulator, path))
    assert outcome(again.by_line()[2]) == ("skipped", "already_settled", "unknown")


# --- refusals: changed input or settings, the lock ----------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("column", "value"), [(1, "+447400990001"), (0, "a different text")], ids=["number", "text"]
)
async def test_a_changed_input_row_is_refused_with_exit_4_and_nothing_sent(
    simulator: RunningSimulator, tmp_path: Path, column: int, value: str
) -> None:
    """One edited row: one error line naming the line and --campaign, and no request."""
    rows = [[f"m{k}", "+" + to] for k, to in enumerate(numbers(5))]
    path = write_csv(tmp_path / "c.csv", [(text, to) for text, to in rows], header="text,to")
    first = await run_cli(*send_args(simulator, path))
    assert first.code == 0, first.stderr
    rows[2][column] = value
    write_csv(path, [(text, to) for text, to in rows], header="text,to")

    rerun = await run_cli(*send_args(simulator, path))

    assert rerun.code == 4, rerun.stderr
    assert len(errors(rerun)) == 1, rerun.stderr
    assert "line 3 of the input differs" in errors(rerun)[0]
    # Not "start a new campaign": that would send the rows already sent again.
    assert "give it only the rows not sent yet" in errors(rerun)[0]
    assert (await simulator.stats())["requests"] == 5


@pytest.mark.slow
async def test_a_changed_row_late_in_the_input_is_refused_before_any_row_is_sent(
    tmp_path: Path,
) -> None:
    """Rows left pending by a first run, the last row edited: the rerun is refused, not begun."""
    rows = [(f"m{k}", "+" + to) for k, to in enumerate(numbers(100))]
    path = write_csv(tmp_path / "c.csv", rows, header="text,to")
    async with await start_simulator(SimulatorConfig(error_5xx_rate=1.0)) as failing:
        first = await run_cli(*send_args(failing, path, "--retries", "0"))
    assert first.code == 1, first.stderr
    rows[-1] = ("a different text", rows[-1][1])
    write_csv(path, rows, header="text,to")

    async with await start_simulator(SimulatorConfig()) as working:
        rerun = await run_cli(*send_args(working, path, "--window", "2"))
        stats = await working.stats()

    assert rerun.code == 4, rerun.stderr
    assert stats["accepted"] == 0


@pytest.mark.slow
async def test_a_latin_1_file_rerun_with_encoding_as_advised_sends_only_the_row_that_failed(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """A latin-1 row fails `malformed_row`, advising --encoding; the rerun with --encoding
    latin-1 reads that row anew at its line (no request was made for it) and sends it alone.
    Before, the rerun was refused as another input, and its advice (a new campaign) sent the
    row already sent twice."""
    tos = numbers(2)
    path = tmp_path / "l1.csv"
    path.write_bytes(b"name,phone\nChlo\xe9,+" + tos[0].encode() + b"\nBen,+" + tos[1].encode())
    first = await run_cli(*send_args(simulator, path, "--text", "Hi {name}"))
    assert first.code == 1, first.stderr
    assert outcome(first.by_line()[1]) == ("failed", "invalid_input", "malformed_row")
    assert "--encoding latin-1" in first.by_line()[1]["error"]["message"]

    rerun = await run_cli(
        *send_args(simulator, path, "--text", "Hi {name}", "--encoding", "latin-1")
    )

    assert rerun.code == 0, rerun.stderr
    assert outcome(rerun.by_line()[1]) == ("sent", None, None)
    assert outcome(rerun.by_line()[2]) == ("skipped", "already_settled", "sent")
    assert "1 rows settled earlier are skipped" in rerun.stderr
    stats = await simulator.stats()
    assert per_recipient(stats, "requests") == dict.fromkeys(tos, 1)
    again = await run_cli(
        *send_args(simulator, path, "--text", "Hi {name}", "--encoding", "latin-1")
    )
    assert again.code == 0, again.stderr
    assert {outcome(r) for r in again.records} == {("skipped", "already_settled", "sent")}


@pytest.mark.slow
async def test_a_row_moved_onto_a_line_that_sent_nothing_is_refused_not_resent(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """An invalid row deleted from a piped input moves the rows after it up a line: the first
    lands on the invalid row's line, which sent nothing, but its number had a request at the
    next line, so the run is refused there (stdin is checked as it is read), not resent."""
    tos = numbers(2)
    journal = str(tmp_path / "piped.journal")
    rows = [("m0", "not a number"), ("m1", "+" + tos[0]), ("m2", "+" + tos[1])]
    piped = "text,to\n" + "".join(f"{text},{to}\n" for text, to in rows)
    first = await run_cli(*send_args(simulator, "-", "--journal", journal), stdin=piped.encode())
    assert first.code == 1, first.stderr
    assert outcome(first.by_line()[1]) == ("failed", "invalid_input", "invalid_number")

    fixed = "text,to\n" + "".join(f"{text},{to}\n" for text, to in rows[1:])
    rerun = await run_cli(*send_args(simulator, "-", "--journal", journal), stdin=fixed.encode())

    assert rerun.code == 4, rerun.stderr
    [error] = errors(rerun)
    assert "line 1 of the input differs" in error
    assert "an earlier run made a request to its number" in error
    assert per_recipient(await simulator.stats(), "requests") == dict.fromkeys(tos, 1)


@pytest.mark.slow
async def test_a_file_shifted_by_a_deleted_invalid_row_is_refused_before_anything_is_sent(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """The same deletion in a file: the row sent at line 2 is now at line 1 and line 2 holds
    another row, so the pass over the file before sending refuses it."""
    tos = numbers(3)
    rows = [("m0", "not a number"), *((f"m{k}", "+" + to) for k, to in enumerate(tos, 1))]
    path = write_csv(tmp_path / "c.csv", rows, header="text,to")
    first = await run_cli(*send_args(simulator, path))
    assert first.code == 1, first.stderr
    write_csv(path, rows[1:], header="text,to")

    rerun = await run_cli(*send_args(simulator, path))

    assert rerun.code == 4, rerun.stderr
    [error] = errors(rerun)
    assert "line 2 of the input differs" in error
    assert (await simulator.stats())["requests"] == 3


@pytest.mark.slow
async def test_a_rerun_with_another_text_is_refused_with_exit_4_before_sending(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """The journal's campaign was started with another --text: the error names it and --campaign."""
    path = write_csv(tmp_path / "c.csv", [(f"N{k}", "+" + to) for k, to in enumerate(numbers(3))])
    first = await run_cli(*send_args(simulator, path, "--text", "Hi {name}"))
    assert first.code == 0, first.stderr

    rerun = await run_cli(*send_args(simulator, path, "--text", "Hello {name}"))

    assert rerun.code == 4, rerun.stderr
    assert rerun.stdout == b""
    [error] = errors(rerun)
    assert "was started with --text 'Hi {name}', this run has 'Hello {name}'" in error
    assert "A new --campaign NAME would send every row of its input again" in error
    assert (await simulator.stats())["requests"] == 3


@pytest.mark.slow
async def test_a_rerun_with_another_sender_is_refused_with_exit_4_before_sending(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """--from Store after --from Shop: the error names --from and both senders."""
    path = campaign_csv(tmp_path / "c.csv", numbers(3))
    first = await run_cli(*send_args(simulator, path, sender="Shop"))
    assert first.code == 0, first.stderr

    rerun = await run_cli(*send_args(simulator, path, sender="Store"))

    assert rerun.code == 4, rerun.stderr
    assert rerun.stdout == b""
    [error] = errors(rerun)
    assert "was started with --from 'Shop', this run has 'Store'" in error
    assert (await simulator.stats())["requests"] == 3


@pytest.mark.slow
async def test_a_rerun_with_another_provider_is_refused_with_exit_4_before_sending(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """--provider vonage-messages after the SMS API: the error names --provider and both."""
    path = campaign_csv(tmp_path / "c.csv", numbers(3))
    first = await run_cli(*send_args(simulator, path))
    assert first.code == 0, first.stderr

    rerun = await run_cli(*send_args(simulator, path, "--provider", "vonage-messages"))

    assert rerun.code == 4, rerun.stderr
    assert rerun.stdout == b""
    [error] = errors(rerun)
    assert "was started with --provider 'vonage', this run has 'vonage-messages'" in error
    assert (await simulator.stats())["requests"] == 3


@pytest.mark.slow
async def test_a_rerun_from_another_input_file_is_refused_with_exit_4_before_sending(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """The same rows under another path, into the same --journal: the error names the input."""
    first_path = campaign_csv(tmp_path / "c.csv", numbers(3))
    other_path = campaign_csv(tmp_path / "copy.csv", numbers(3))
    journal = str(tmp_path / "c.journal")
    first = await run_cli(*send_args(simulator, first_path, "--journal", journal))
    assert first.code == 0, first.stderr

    rerun = await run_cli(*send_args(simulator, other_path, "--journal", journal))

    assert rerun.code == 4, rerun.stderr
    assert rerun.stdout == b""
    [error] = errors(rerun)
    assert f"was started with input '{first_path}', this run has '{other_path}'" in error
    assert (await simulator.stats())["requests"] == 3


@pytest.mark.slow
async def test_a_new_campaign_name_sends_everything_again_with_new_client_refs(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """Another --text under --campaign new-name is a new campaign in the same journal."""
    tos = numbers(4)
    path = write_csv(tmp_path / "c.csv", [(f"N{k}", "+" + to) for k, to in enumerate(tos)])
    first = await run_cli(*send_args(simulator, path, "--text", "Hi {name}"))
    assert first.code == 0, first.stderr

    second = await run_cli(
        *send_args(simulator, path, "--text", "Hello {name}", "--campaign", "new-name")
    )

    assert second.code == 0, second.stderr
    assert {outcome(r) for r in second.records} == {("sent", None, None)}
    assert not {r["client_ref"] for r in first.records} & {r["client_ref"] for r in second.records}
    stats = await simulator.stats()
    assert per_recipient(stats, "accepted") == dict.fromkeys(tos, 2)
    assert [m["text"] for m in stats["recipients"][tos[0]]["messages"]] == ["Hi N0", "Hello N0"]


@pytest.mark.slow
async def test_a_second_run_while_another_holds_the_lock_exits_4_naming_its_pid(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """Another process holds the journal's lock: refused before anything is sent."""
    path = campaign_csv(tmp_path / "c.csv", numbers(3))
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        LOCK_HOLDER,
        f"{path}.journal.lock",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert holder.stdin is not None
    assert holder.stdout is not None
    try:
        async with asyncio.timeout(10):
            assert await holder.stdout.readline() == b"locked\n"
        run = await run_cli(*send_args(simulator, path))
        holder.stdin.close()
        async with asyncio.timeout(10):
            await holder.wait()
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()

    assert run.code == 4, run.stderr
    [error] = errors(run)
    assert f"is in use by another sms-blaster run (pid {holder.pid} on testhost" in error
    assert run.stdout == b""
    assert (await simulator.stats())["requests"] == 0


async def test_a_journal_with_a_hard_link_is_refused_with_exit_4_and_nothing_sent(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """A run through a second name of the journal would keep its own WAL and lock: refused,
    with one line that says to remove the extra link."""
    tos = numbers(3)
    path = campaign_csv(tmp_path / "c.csv", tos)
    first = await run_cli(*send_args(simulator, path))
    assert first.code == 0, first.stderr
    (tmp_path / "hard.journal").hardlink_to(tmp_path / "c.csv.journal")

    run = await run_cli(*send_args(simulator, path, "--journal", str(tmp_path / "hard.journal")))

    assert run.code == 4, run.stderr
    [error] = errors(run)
    assert "hard links" in error
    assert "remove the extra links" in error
    assert run.stdout == b""
    assert per_recipient(await simulator.stats(), "requests") == dict.fromkeys(tos, 1)


@pytest.mark.slow
async def test_a_stale_lock_file_of_a_dead_process_is_taken_over(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """The lock file names a process that is gone and nobody holds it: the run goes ahead."""
    tos = numbers(3)
    path = campaign_csv(tmp_path / "c.csv", tos)
    lock = tmp_path / "c.csv.journal.lock"
    lock.write_text("pid 999999 on otherhost since 2026-01-01 00:00:00\n")

    run = await run_cli(*send_args(simulator, path))

    assert run.code == 0, run.stderr
    assert per_recipient(await simulator.stats(), "accepted") == dict.fromkeys(tos, 1)
    assert lock.read_text() == ""  # released: nobody is named as holding it


# --- guards -------------------------------------------------------------------------------------


async def test_suppressed_numbers_are_skipped_and_never_reach_the_provider(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """The opt-out list is national (GB), the input international: the same numbers match."""
    tos = numbers(6)
    path = campaign_csv(tmp_path / "c.csv", tos)
    optout = tmp_path / "optout.txt"
    optout.write_text("".join(f"0{to[2:5]} {to[5:]}\n" for to in (tos[1], tos[4])))

    run = await run_cli(
        *send_args(simulator, path, "--suppress", str(optout), "--default-region", "GB")
    )

    assert run.code == 0, run.stderr
    records = run.by_line()
    assert [records[n]["status"] for n in range(1, 7)] == ["sent", "skipped", "sent"] * 2
    assert outcome(records[2]) == outcome(records[5]) == ("skipped", "suppressed", "suppressed")
    assert sorted(per_recipient(await simulator.stats(), "requests")) == sorted(
        [tos[0], tos[2], tos[3], tos[5]]
    )


async def test_an_invalid_opt_out_entry_exits_2_with_one_line_and_nothing_sent(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """An opt-out that cannot be honoured stops the run before it begins."""
    path = campaign_csv(tmp_path / "c.csv", numbers(3))
    optout = tmp_path / "optout.txt"
    optout.write_text("07400 000001\nnot-a-number\n")

    run = await run_cli(
        *send_args(simulator, path, "--suppress", str(optout), "--default-region", "GB")
    )

    assert run.code == 2
    assert run.stdout == b""
    assert run.stderr.splitlines() == [
        f"Error: --suppress {optout}: line 2: 'not-a-number' is not a valid number; "
        "fix or remove it"
    ]
    assert (await simulator.stats())["requests"] == 0


async def test_a_deadline_in_the_past_exits_2_and_sends_nothing(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """--not-after that has passed is a usage error: one line, no request, no journal."""
    path = campaign_csv(tmp_path / "c.csv", numbers(3))

    run = await run_cli(*send_args(simulator, path, "--not-after", "2020-01-01T00:00"))

    assert run.code == 2
    [line] = run.stderr.splitlines()
    assert line == "Error: --not-after 2020-01-01T00:00: that time has passed; give a later one"
    assert (await simulator.stats())["requests"] == 0
    assert not (tmp_path / "c.csv.journal").exists()


@pytest.mark.slow
async def test_a_deadline_mid_run_stops_sending_and_a_rerun_sends_the_rest_once(
    tmp_path: Path,
) -> None:
    """The deadline comes: exit 1, rows left are stopped/deadline; a rerun sends each once."""
    tos = numbers(200)
    path = campaign_csv(tmp_path / "c.csv", tos)
    # Whole seconds, 5.5 to 6.5 s away: the CLI has started long before, even on a machine so
    # busy that a start takes seconds, and 200 rows at 20/s take 10 s, so the deadline comes
    # mid-run.
    deadline = dt.datetime.now().astimezone() + dt.timedelta(seconds=6.5)
    not_after = deadline.isoformat(timespec="seconds")
    async with await start_simulator(SimulatorConfig(latency_ms=50)) as simulator:
        first = await run_cli(
            *send_args(simulator, path, "--not-after", not_after),
            *["--rate", "20", "--window", "2"],
        )
        rerun = await run_cli(*send_args(simulator, path, "--window", "16"))
        stats = await simulator.stats()

    assert first.code == 1, first.stderr
    outcomes = [outcome(r) for r in first.by_line().values()]
    assert len(outcomes) == 200
    assert set(outcomes) == {("sent", None, None), ("failed", "stopped", "deadline")}
    assert "sms-blaster: --not-after " in first.stderr
    assert "reached: rows not sent are recorded 'stopped'" in first.stderr
    assert rerun.code == 0, rerun.stderr
    assert per_recipient(stats, "accepted") == dict.fromkeys(tos, 1)
    sent_first = outcomes.count(("sent", None, None))
    assert [r["status"] for r in rerun.records].count("sent") == 200 - sent_first


@pytest.mark.slow
async def test_the_error_rate_breaker_stops_the_run_with_exit_3_and_a_rerun_goes_on(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """All rows barred: stopped after 20 sends; the rerun skips the rejected, sends the stopped."""
    tos = numbers(60, suffix=9990)
    path = campaign_csv(tmp_path / "c.csv", tos)

    first = await run_cli(*send_args(simulator, path, "--max-error-rate", "0.5", "--window", "2"))

    assert first.code == 3, first.stderr
    [error] = errors(first)
    assert "error rate 100% over the 20 sends so far is above --max-error-rate 50%" in error
    reached = (await simulator.stats())["requests"]
    assert 20 <= reached <= 20 + 2
    outcomes = [outcome(r) for r in first.by_line().values()]
    assert outcomes.count(("failed", "rejected", "7")) == reached
    assert outcomes.count(("failed", "stopped", "fatal")) == 60 - reached

    rerun = await run_cli(*send_args(simulator, path, "--window", "2"))

    assert rerun.code == 1, rerun.stderr
    assert per_recipient(await simulator.stats(), "requests") == dict.fromkeys(tos, 1)
    records = [outcome(r) for r in rerun.records]
    assert records.count(("skipped", "already_settled", "failed")) == reached
    assert records.count(("failed", "rejected", "7")) == 60 - reached


# --- dry run and stdin --------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_dry_run_prints_an_estimate_and_keeps_no_journal(tmp_path: Path) -> None:
    """--dry-run --price: messages, segments, cost and duration; no credentials, no journal."""
    texts = ["hello", "x" * 200, "Łukasz"]  # 1 + 2 (GSM-7, 153 a part) + 1 (UCS-2) segments
    rows = [(text, "+" + to) for text, to in zip(texts, numbers(3), strict=True)]
    path = write_csv(tmp_path / "c.csv", rows, header="text,to")
    env = {k: v for k, v in cli_env().items() if not k.startswith("VONAGE_")}

    run = await run_cli(
        "send",
        str(path),
        "--from",
        "MyShop",
        "--dry-run",
        "--price",
        "0.05",
        "--rate",
        "1",
        "--no-progress",
        env=env,
    )

    assert run.code == 0, run.stderr
    assert run.stderr.splitlines()[-1] == (
        "  dry run: 3 messages would be sent in 4 segments; cost 0.20 at 0.05 a segment; "
        "about 0m03s at 1/s"
    )
    assert files_in(tmp_path) == ["c.csv"]


@pytest.mark.slow
async def test_a_dry_run_estimates_numbers_ending_in_simulator_magic_suffixes_too(
    tmp_path: Path,
) -> None:
    """Real customers' numbers may end in 9990 or 9992: a dry run counts them like any other."""
    tos = numbers(1) + numbers(1, suffix=9990) + numbers(1, suffix=9992)
    path = campaign_csv(tmp_path / "c.csv", tos)

    run = await run_cli("send", str(path), "--from", "MyShop", "--dry-run", "--no-progress")

    assert run.code == 0, run.stderr
    assert "dry run: 3 messages would be sent" in run.stderr


@pytest.mark.slow
async def test_stdin_without_a_journal_says_in_one_line_that_it_cannot_be_resumed(
    simulator: RunningSimulator,
) -> None:
    """Rows piped in have no file to put a journal next to: a note, and the run goes on."""
    lines = [json.dumps({"to": to, "text": "hi"}) for to in numbers(3)]

    run = await run_cli(*send_args(simulator, "-"), stdin="\n".join(lines).encode())

    assert run.code == 0, run.stderr
    notes = [line for line in run.stderr.splitlines() if "resumed" in line]
    assert notes == [
        "sms-blaster: no journal for stdin input, so this run cannot be resumed; "
        "give --journal PATH to keep one"
    ]
    assert (await simulator.stats())["accepted"] == 3


@pytest.mark.slow
async def test_stdin_with_a_journal_is_resumed_by_a_second_run(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """The same rows piped again with the same --journal: everything is skipped, nothing sent."""
    rows = "\n".join(json.dumps({"to": to, "text": "hi"}) for to in numbers(3)).encode()
    args = send_args(simulator, "-", "--journal", str(tmp_path / "stdin.journal"))
    first = await run_cli(*args, stdin=rows)
    assert first.code == 0, first.stderr
    assert "cannot be resumed" not in first.stderr

    rerun = await run_cli(*args, stdin=rows)

    assert rerun.code == 0, rerun.stderr
    assert {outcome(r) for r in rerun.records} == {("skipped", "already_settled", "sent")}
    assert (await simulator.stats())["requests"] == 3
