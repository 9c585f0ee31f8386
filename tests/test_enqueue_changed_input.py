"""`enqueue` of a changed input, with a real redis-server: rows are matched by line, so a row
inserted, sorted in or edited is refused (exit 4) before anything is queued, and rows appended
at the end are added once."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis

from sms_blaster.distributed import campaign_meta
from sms_blaster.distributed.keys import CampaignKeys
from sms_blaster.distributed.redis_client import connect
from sms_blaster.distributed.row_prints import RowPrints, runs
from sms_blaster.errors import JournalError
from sms_blaster.inputs import open_input, stream_rows
from sms_blaster.models import InputRow
from sms_blaster.settings import RunSettings
from tests.cli_helpers import Run, number, run_cli, write_csv
from tests.redis_helpers import redis_contents
from tests.test_distributed import CAMPAIGN, enqueue_args, row_states, simulator_with, worker_args

KEYS = CampaignKeys(CAMPAIGN)


def people(numbers: list[int]) -> list[tuple[str, str]]:
    return [(f"Ann{n}", number(n)) for n in numbers]


def the_error(run: Run) -> str:
    [error] = [line for line in run.stderr.splitlines() if line.startswith("Error:")]
    return error


async def enqueued(redis_url: str, path: Path) -> Run:
    run = await run_cli(*enqueue_args(redis_url, path))
    assert run.code == 0, run.stderr
    return run


@pytest.mark.slow
async def test_a_row_inserted_at_the_top_is_refused_and_redis_is_left_as_it_was(
    redis_url: str, tmp_path: Path
) -> None:
    """Every row would move one line down and take the state of the row above it: exit 4 naming
    line 1 and the fix, and not one key of Redis changed."""
    path = write_csv(tmp_path / "list.csv", people([1, 2, 3, 4, 5]))
    await enqueued(redis_url, path)
    before = await redis_contents(redis_url)
    write_csv(path, people([9, 1, 2, 3, 4, 5]))
    run = await run_cli(*enqueue_args(redis_url, path))
    assert run.code == 4, run.stderr
    error = the_error(run)
    assert f"line 1 of {path} differs from the row an earlier enqueue" in error
    assert "new ones only appended at the end). A new --campaign NAME would send every row" in error
    assert run.stdout == b""
    assert await redis_contents(redis_url) == before


@pytest.mark.slow
async def test_rows_sorted_in_among_those_sent_are_refused_and_nothing_is_sent_again(
    redis_url: str, tmp_path: Path
) -> None:
    """The export regenerated the next day with new numbers sorted in: refused at the first line
    that moved; a worker then finds the campaign drained and sends nothing (before, the old rows
    shifted onto new lines were sent twice and the new ones never)."""
    path = write_csv(tmp_path / "export.csv", people(list(range(2, 42, 2))))
    await enqueued(redis_url, path)
    async with simulator_with() as simulator:
        first = await run_cli(*worker_args(redis_url, simulator, "--rate", "200"))
        assert first.code == 0, first.stderr
        assert len(first.records) == 20
        write_csv(path, people(sorted([*range(2, 42, 2), 5, 17, 33])))
        run = await run_cli(*enqueue_args(redis_url, path))
        assert run.code == 4, run.stderr
        assert f"line 3 of {path} differs" in the_error(run)
        again = await run_cli(*worker_args(redis_url, simulator, "--rate", "200"))
        assert again.code == 0, again.stderr
        assert again.records == []
        stats = await simulator.stats()
    assert stats["accepted"] == 20
    assert await row_states(redis_url) == {line: "s" for line in range(1, 21)}


@pytest.mark.slow
async def test_an_edited_row_is_refused(redis_url: str, tmp_path: Path) -> None:
    """The same line with other values is another row: exit 4 naming it, nothing queued."""
    path = write_csv(tmp_path / "list.csv", people([1, 2, 3, 4]))
    await enqueued(redis_url, path)
    before = await redis_contents(redis_url)
    path.write_text(path.read_text().replace("Ann3,", "Bob3,"))
    run = await run_cli(*enqueue_args(redis_url, path))
    assert run.code == 4, run.stderr
    assert f"line 3 of {path} differs" in the_error(run)
    assert await redis_contents(redis_url) == before


@pytest.mark.slow
async def test_a_refused_row_corrected_in_place_is_refused_too(
    redis_url: str, tmp_path: Path
) -> None:
    """A row refused the first time (a bad number) holds its line as a queued one does: its
    correction in place is another row, which would never be queued (give a new campaign)."""
    path = write_csv(tmp_path / "list.csv", [*people([1, 2]), ("Bad", "12345")])
    first = await run_cli(*enqueue_args(redis_url, path))
    assert first.code == 1, first.stderr
    assert [record["line"] for record in first.records] == [3]
    write_csv(path, people([1, 2, 3]))
    run = await run_cli(*enqueue_args(redis_url, path))
    assert run.code == 4, run.stderr
    assert f"line 3 of {path} differs" in the_error(run)
    assert await row_states(redis_url) == {1: "q", 2: "q", 3: "f"}


@pytest.mark.slow
async def test_rows_appended_at_the_end_are_added_once(redis_url: str, tmp_path: Path) -> None:
    """New rows after the last line read are new lines: queued by the next enqueue, and only by
    it."""
    path = write_csv(tmp_path / "list.csv", people([1, 2, 3]))
    await enqueued(redis_url, path)
    write_csv(path, people([1, 2, 3, 4, 5]))
    more = await enqueued(redis_url, path)
    assert "2 messages queued, 3 queued by an earlier enqueue" in more.stderr
    again = await enqueued(redis_url, path)
    assert "0 messages queued, 5 queued by an earlier enqueue" in again.stderr
    assert await row_states(redis_url) == {line: "q" for line in range(1, 6)}
    client = aioredis.from_url(redis_url)
    try:
        assert await client.xlen(KEYS.queue) == 5
    finally:
        await client.aclose()


@pytest.mark.slow
async def test_a_changed_input_on_stdin_is_refused_before_its_batch_is_queued(
    redis_url: str, tmp_path: Path
) -> None:
    """Stdin is read once, so each batch is checked as it comes: a row sorted in is refused at
    its line, and neither it nor the rows after it are queued."""
    args = enqueue_args(redis_url, Path("-"))
    csv = "name,phone\n" + "".join(f"{name},{phone}\n" for name, phone in people([1, 3, 5]))
    assert (await run_cli(*args, stdin=csv.encode())).code == 0
    changed = csv.replace("Ann3", "Ann2," + number(2) + "\nAnn3") + f"Ann7,{number(7)}\n"
    run = await run_cli(*args, stdin=changed.encode())
    assert run.code == 4, run.stderr
    assert "line 2 of <stdin> differs" in the_error(run)
    assert await row_states(redis_url) == {1: "q", 2: "q", 3: "q"}


def stdin_csv(numbers: list[int]) -> str:
    return "name,phone\n" + "".join(f"{name},{phone}\n" for name, phone in people(numbers))


# The settings of the re-run refused below: other ones than the first enqueue's.
OTHER_SETTINGS = ("--ttl", "1h", "--quiet-hours", "21:00-08:00")


async def settings_of(redis_url: str) -> dict[str, str | None]:
    """The campaign's "enqueue finished" marker, --ttl and --quiet-hours, as its workers read
    them."""
    client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        meta = await campaign_meta.read(client, KEYS)
    finally:
        await client.aclose()
    return {name: meta.get(name) for name in ("done", "ttl_s", "quiet_hours")}


@pytest.mark.slow
async def test_a_change_in_the_first_batch_on_stdin_leaves_redis_as_it_was(
    redis_url: str,
) -> None:
    """The re-run gives other settings: refused at its first batch, it wrote none of them, nor
    cleared the "enqueue finished" marker (workers without --follow would wait for ever)."""
    args = enqueue_args(redis_url, Path("-"))
    assert (await run_cli(*args, "--ttl", "12h", stdin=stdin_csv([1, 2, 3]).encode())).code == 0
    before = await redis_contents(redis_url)
    assert await settings_of(redis_url) == {"done": "1", "ttl_s": "43200", "quiet_hours": ""}
    changed = stdin_csv([1, 2, 3]).replace("Ann1,", "Bob1,")
    run = await run_cli(*args, *OTHER_SETTINGS, stdin=changed.encode())
    assert run.code == 4, run.stderr
    assert "line 1 of <stdin> differs" in the_error(run)
    assert await redis_contents(redis_url) == before


@pytest.mark.slow
async def test_a_change_in_a_later_batch_on_stdin_keeps_the_campaigns_settings(
    redis_url: str,
) -> None:
    """600 rows, line 500 changed (past the first batch of 256 rows at most): refused there,
    after the rows before it were read and found queued already; the campaign's settings and
    its "enqueue finished" marker are as the first enqueue left them, and so is every key."""
    args = enqueue_args(redis_url, Path("-"))
    numbers = list(range(1, 601))
    first = await run_cli(*args, "--ttl", "12h", stdin=stdin_csv(numbers).encode())
    assert first.code == 0, first.stderr
    before = await redis_contents(redis_url)
    changed = stdin_csv(numbers).replace("Ann500,", "Bob500,")
    run = await run_cli(*args, *OTHER_SETTINGS, stdin=changed.encode())
    assert run.code == 4, run.stderr
    assert "line 500 of <stdin> differs" in the_error(run)
    assert await settings_of(redis_url) == {"done": "1", "ttl_s": "43200", "quiet_hours": ""}
    assert await redis_contents(redis_url) == before


@pytest.mark.slow
async def test_an_unchanged_input_on_stdin_takes_the_new_settings(redis_url: str) -> None:
    """The same rows and more, with other settings: the settings are written once the rows read
    before have passed, and the new rows queued."""
    args = enqueue_args(redis_url, Path("-"))
    numbers = list(range(1, 301))
    assert (await run_cli(*args, "--ttl", "12h", stdin=stdin_csv(numbers).encode())).code == 0
    more = stdin_csv([*numbers, 301, 302]).encode()
    run = await run_cli(*args, *OTHER_SETTINGS, stdin=more)
    assert run.code == 0, run.stderr
    assert "2 messages queued, 300 queued by an earlier enqueue" in run.stderr
    assert await settings_of(redis_url) == {
        "done": "1",
        "ttl_s": "3600",
        "quiet_hours": "21:00-08:00",
    }
    assert len(await row_states(redis_url)) == 302


@pytest.mark.slow
async def test_a_campaign_enqueued_without_prints_is_checked_from_its_next_enqueue(
    redis_url: str, tmp_path: Path
) -> None:
    """A campaign queued by an sms-blaster that kept no prints: the next enqueue cannot tell a
    change, so it keeps the prints of what it reads, and the one after it is checked."""
    path = write_csv(tmp_path / "list.csv", people([1, 2, 3]))
    await enqueued(redis_url, path)
    client = aioredis.from_url(redis_url)
    try:
        await client.delete(KEYS.prints)
        await enqueued(redis_url, path)
        assert await client.strlen(KEYS.prints) == 8 * 3
    finally:
        await client.aclose()
    path.write_text(path.read_text().replace("Ann2,", "Bob2,"))
    run = await run_cli(*enqueue_args(redis_url, path))
    assert run.code == 4, run.stderr
    assert f"line 2 of {path} differs" in the_error(run)


def test_rows_are_cut_where_a_line_does_not_follow() -> None:
    rows = [InputRow(line, {}) for line in (1, 2, 3, 7, 8, 10)]
    assert [[row.line for row in run] for run in runs(rows)] == [[1, 2, 3], [7, 8], [10]]


@pytest.mark.slow
async def test_the_check_ahead_finds_a_change_past_its_first_round_trip(
    redis_url: str, tmp_path: Path
) -> None:
    """40,000 rows: more than one pipeline of comparisons (32,768 lines). The same file and one
    with rows appended pass; one row changed near the end is named."""
    path = write_csv(tmp_path / "big.csv", [(f"n{n}", f"4479{n:08d}") for n in range(40_000)])
    redis = connect(redis_url)
    try:
        prints = RowPrints(redis, KEYS, str(path))
        with open_input(str(path)) as source:
            async for batch in stream_rows(source):
                await prints.keep(batch)
        settings = RunSettings(input_path=str(path))
        await prints.check_file(settings)
        with path.open("a") as handle:
            handle.write("appended,447900099999\n")
        await prints.check_file(settings)
        path.write_text(path.read_text().replace("n39000,", "changed,"))
        with pytest.raises(JournalError, match=f"line 39001 of {path} differs"):
            await prints.check_file(settings)
    finally:
        await redis.aclose(close_connection_pool=True)
