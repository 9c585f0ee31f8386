"""Sender pools through the real CLI against the simulator over loopback: the sender each row
goes from, named in its record and the journal, kept on a resume; a bad pool file refused."""

from __future__ import annotations

import collections
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sms_blaster.pool import MAX_POOL_BYTES, parse_pool
from sms_blaster.simulator import RunningSimulator, SimulatorConfig, start_simulator
from tests.cli_helpers import Run, cli_env, mock_provider_refusal, number, run_cli, write_csv

UK = [("Ann", "447400123401"), ("Bob", "447400123402"), ("Cy", "447400123403")]
US = ("Dee", "12015550123")
POOL = "sender,rate,country\n447000000001,50,GB\n447000000002,50,GB\n"


@pytest.fixture
async def simulator() -> AsyncIterator[RunningSimulator]:
    running = await start_simulator(SimulatorConfig())
    yield running
    await running.close()


def pool_file(folder: Path, text: str = POOL) -> Path:
    pool = folder / "pool.csv"
    pool.write_text(text)
    return pool


def send(sim: RunningSimulator, path: Path, pool: Path, *extra: str) -> list[str]:
    return [
        "send", str(path), "--base-url", sim.url, "--from-pool", str(pool), "--text", "Hi {name}",
        "--no-progress", *extra,
    ]  # fmt: skip


def error_lines(run: Run) -> list[str]:
    return [line for line in run.stderr.splitlines() if line.startswith("Error:")]


async def test_each_row_goes_from_the_sender_the_pool_chose_and_its_record_names_it(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """The request carries the sender; the record's `from` says which; the summary counts
    each sender's sends."""
    pool = pool_file(tmp_path)
    run = await run_cli(*send(simulator, write_csv(tmp_path / "c.csv", UK), pool))
    assert run.code == 0, run.stderr
    chosen = parse_pool(POOL.splitlines(), "pool")
    stats = await simulator.stats()
    sent_from = collections.Counter(record["from"] for record in run.records)
    expected = ", ".join(f"{sender} {count}" for sender, count in sent_from.most_common())
    assert f"  sent per sender: {expected}\n" in run.stderr
    for record in run.records:
        assert record["from"] == chosen.choose(record["to"])
        assert stats["recipients"][record["to"]]["messages"][0]["from"] == record["from"]


async def test_a_row_no_sender_serves_fails_with_no_sender_and_the_others_are_sent(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """A US number and a pool of UK senders: invalid input, code no_sender; exit 1."""
    pool = pool_file(tmp_path)
    run = await run_cli(*send(simulator, write_csv(tmp_path / "c.csv", [*UK, US]), pool))
    assert run.code == 1, run.stderr
    failed = run.by_line()[4]
    assert (failed["status"], failed["error"]["code"]) == ("failed", "no_sender")
    assert "from" not in failed
    assert [run.by_line()[line]["status"] for line in (1, 2, 3)] == ["sent"] * 3


async def test_a_bad_pool_file_exits_2_naming_its_line_before_anything_is_sent(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """One Error: line with the file and line; the provider sees nothing."""
    pool = tmp_path / "pool.csv"
    pool.write_text("sender,rate\n447000000001,1\n447000000002,slow\n")
    run = await run_cli(*send(simulator, write_csv(tmp_path / "c.csv", UK), pool))
    assert run.code == 2
    assert error_lines(run) == [
        f"Error: --from-pool {pool}:3: rate 'slow': give a positive number of messages a "
        "second (1, 1/s) or of message parts (3seg/s)"
    ]
    assert (await simulator.stats())["requests"] == 0


async def test_from_and_from_pool_together_exit_2(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """A pool names every sender: --from beside it is a mistake."""
    pool = pool_file(tmp_path)
    path = write_csv(tmp_path / "c.csv", UK)
    run = await run_cli(*send(simulator, path, pool, "--from", "Shop"))
    assert run.code == 2
    assert error_lines(run)[0].startswith("Error: --from and --from-pool both given")


async def test_the_pool_file_may_come_from_the_environment(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """SMS_BLASTER_FROM_POOL, as every option's variable."""
    pool = pool_file(tmp_path)
    path = write_csv(tmp_path / "c.csv", UK)
    argv = ["send", str(path), "--base-url", simulator.url, "--text", "Hi", "--no-progress"]
    run = await run_cli(*argv, env=cli_env(SMS_BLASTER_FROM_POOL=str(pool)))
    assert run.code == 0, run.stderr
    assert {record["from"] for record in run.records} <= {"447000000001", "447000000002"}


async def test_a_dry_run_names_the_sender_each_row_would_go_from(tmp_path: Path) -> None:
    """The choice is made in preparation: a dry run shows it."""
    pool = pool_file(tmp_path)
    path = write_csv(tmp_path / "c.csv", UK)
    run = await run_cli("send", str(path), "--dry-run", "--from-pool", str(pool), "--text", "Hi")
    assert run.code == 0, run.stderr
    chosen = parse_pool(POOL.splitlines(), "pool")
    assert [record["from"] for record in run.records] == [chosen.choose(to) for _, to in UK]


async def test_a_resume_resends_a_row_from_the_sender_recorded_for_it_though_the_pool_changed(
    tmp_path: Path,
) -> None:
    """Stopped by a fatal answer, the rows keep their senders in the journal; the resume uses
    them even though a sender added since would win some of those recipients."""
    config = SimulatorConfig(api_key="the-real-key")
    simulator = await start_simulator(config)
    try:
        pool = pool_file(tmp_path)
        path = write_csv(tmp_path / "c.csv", UK)
        first = await run_cli(*send(simulator, path, pool))  # refused: bad credentials
        assert first.code == 3, first.stderr
        journal = sqlite3.connect(tmp_path / "c.csv.journal")
        recorded = dict(journal.execute("SELECT line, sender FROM rows WHERE sender IS NOT NULL"))
        journal.close()
        assert recorded
        grown = POOL + "".join(f"44700000001{n},50,GB\n" for n in range(8))
        pool.write_text(grown)
        moved = parse_pool(grown.splitlines(), "pool")
        assert any(moved.choose(UK[line - 1][1]) != sender for line, sender in recorded.items())
        env = cli_env(VONAGE_API_KEY="the-real-key")
        second = await run_cli(*send(simulator, path, pool), env=env)
        assert second.code == 0, second.stderr
        by_line = second.by_line()
        assert {line: by_line[line]["from"] for line in recorded} == recorded
    finally:
        await simulator.close()


async def test_a_resume_names_the_sender_each_settled_row_went_from(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """A row an earlier run sent is `already_settled` with the sender it went from, even after
    the pool changed so that the hash would choose another."""
    pool = pool_file(tmp_path)
    path = write_csv(tmp_path / "c.csv", UK)
    first = await run_cli(*send(simulator, path, pool))
    assert first.code == 0, first.stderr
    sent_from = {record["line"]: record["from"] for record in first.records}
    grown = POOL + "".join(f"44700000001{n},50,GB\n" for n in range(8))
    pool.write_text(grown)
    moved = parse_pool(grown.splitlines(), "pool")
    assert any(moved.choose(UK[line - 1][1]) != sender for line, sender in sent_from.items())
    second = await run_cli(*send(simulator, path, pool))
    assert second.code == 0, second.stderr
    assert {record["error"]["kind"] for record in second.records} == {"already_settled"}
    assert {record["line"]: record["from"] for record in second.records} == sent_from


async def test_report_counts_the_sends_of_each_sender_of_the_pool(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """From the journal's sender column: JSON `senders`, and a block of the text report."""
    pool = pool_file(tmp_path)
    path = write_csv(tmp_path / "c.csv", UK)
    sent = await run_cli(*send(simulator, path, pool))
    assert sent.code == 0, sent.stderr
    report = await run_cli("report", str(tmp_path / "c.csv.journal"), "--json")
    assert report.code == 0, report.stderr
    (campaign,) = json.loads(report.stdout)["campaigns"]
    expected = collections.Counter(record["from"] for record in sent.records)
    assert {count["sender"]: count["sent"] for count in campaign["senders"]} == expected
    text = await run_cli("report", str(tmp_path / "c.csv.journal"))
    assert "sent per sender (--from-pool)" in text.stdout.decode()


async def test_report_of_a_campaign_sent_with_from_has_no_senders(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    """Without a pool the report is what it was."""
    path = write_csv(tmp_path / "c.csv", UK)
    argv = ["send", str(path), "--base-url", simulator.url, "--from", "Shop", "--text", "Hi"]
    assert (await run_cli(*argv, "--no-progress")).code == 0
    report = await run_cli("report", str(tmp_path / "c.csv.journal"), "--json")
    (campaign,) = json.loads(report.stdout)["campaigns"]
    assert "senders" not in campaign


async def test_a_sender_the_provider_throttles_on_its_own_is_slowed_and_every_row_sent(
    tmp_path: Path,
) -> None:
    """The simulator holds each sender to one a second; a pool that claims 50/s for its one
    sender is throttled, slows that sender, and sends every row once."""
    simulator = await start_simulator(SimulatorConfig(sender_limiter="sliding:1"))
    try:
        pool = tmp_path / "pool.csv"
        pool.write_text("sender,rate\n447000000001,50\n")
        run = await run_cli(*send(simulator, write_csv(tmp_path / "c.csv", UK), pool))
        stats = await simulator.stats()
    finally:
        await simulator.close()
    assert run.code == 0, run.stderr
    assert [record["status"] for record in run.records] == ["sent"] * 3
    assert stats["throttled"] >= 1
    assert stats["senders"]["447000000001"]["count"] == 3
    assert stats["senders"]["447000000001"]["peak_1s"] == 1


@pytest.mark.slow
async def test_a_sender_held_under_its_rate_sends_every_row_and_its_retries_without_a_stop(
    tmp_path: Path,
) -> None:
    """Declared 6/s, let by at 2/s (a sliding window each sender), with --unreachable-timeout
    1: the provider accepts a request of the sender every half second, so the run must not stop
    as throttled every request. Each throttled row's retry gets its turn; every row is sent, and
    accepted once. (Before, a retry waiting at the send for its sender's turn was dated from
    before its wait, which the first throttle counted as the streak's start: exit 3.)"""
    simulator = await start_simulator(SimulatorConfig(sender_limiter="sliding:2"))
    rows = [(f"n{k}", number(k)) for k in range(20)]
    try:
        pool = tmp_path / "pool.csv"
        pool.write_text("sender,rate\n447000000001,6\n")
        run = await run_cli(
            *send(simulator, write_csv(tmp_path / "c.csv", rows), pool),
            "--unreachable-timeout", "1", "--no-journal",
        )  # fmt: skip
        stats = await simulator.stats()
    finally:
        await simulator.close()
    assert run.code == 0, run.stderr
    assert [record["status"] for record in run.records] == ["sent"] * len(rows)
    assert stats["throttled"] >= 1
    assert stats["accepted"] == len(rows)


def test_mock_provider_refuses_a_sender_limiter_it_cannot_read(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One Error: line naming the option, exit 2."""
    line = mock_provider_refusal(capsys, ["--sender-limiter", "sliding:x"])
    assert line.startswith("Error: --sender-limiter sliding:x:")


@pytest.mark.parametrize("endless", [False, True])
async def test_a_pool_file_over_the_size_bound_exits_2_in_one_line(
    simulator: RunningSimulator, tmp_path: Path, endless: bool
) -> None:
    """A file past MAX_POOL_BYTES, or one that never ends (/dev/zero), is refused unread."""
    pool = Path("/dev/zero") if endless else tmp_path / "pool.csv"
    if not endless:
        pool.write_text("sender,rate\n" + "447000000001,1\n" * (MAX_POOL_BYTES // 14))
    run = await run_cli(*send(simulator, write_csv(tmp_path / "c.csv", UK), pool))
    assert run.code == 2
    assert error_lines(run) == [
        f"Error: --from-pool {pool}: more than 10 MB; a pool file lists senders, one "
        "sender,rate[,country] a line"
    ]
    assert "Traceback" not in run.stderr
    assert (await simulator.stats())["requests"] == 0
