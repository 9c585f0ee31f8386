"""`report JOURNAL --html` end to end: a real campaign against the simulator (throttled, with a
stopped first run, failures, duplicates and delivery receipts through a real receiver), its page
loaded in headless Chromium, and the page's figures checked against `report --json`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest

from sms_blaster.simulator import SimulatorConfig, start_simulator
from tests.browser import artifacts_dir, chromium
from tests.cli_helpers import number, receiver_process, run_cli, write_csv
from tests.test_pool_cli import POOL
from tests.test_quiet_hours_cli import AROUND_NOW, FREE_ZONE, HELD_ZONE, send_args
from tests.test_quiet_hours_cli import campaign as quiet_campaign
from tests.test_report import stored_by_receiver
from tests.test_smart_encoding_cli import CURLY

ROWS = 240
CHARTS = ("c0-rate", "c0-latency", "c0-latency-histogram", "c0-funnel", "c0-time-to-delivery")
PHONE_WIDTH_PX = 390


def _rows() -> list[tuple[str, str]]:
    rows = []
    for n in range(1, ROWS + 1):
        phone = number(n)
        if n % 40 == 0:
            phone = number(9991)  # the simulator refuses it: failed, rejected
        if n % 50 == 0:
            phone = number(n - 1)  # the row before's number again: skipped, duplicate
        rows.append((f"<b>Ann{n}</b>", phone))
    return rows


async def _campaign(directory: Path) -> Path:
    """A journal of two runs: the first stopped at once by bad credentials (exit 3), the
    resume throttled by a 120/s limit, its receipts stored by a receiver."""
    rows = write_csv(directory / "campaign.csv", _rows())
    journal = directory / "campaign.csv.journal"
    send = (
        "send", str(rows), "--from", "Shop", "--text", "<script>alert(1)</script> {name}",
        "--rate", "400", "--no-progress", "--campaign", "spring <sale>",
    )  # fmt: skip
    async with await start_simulator(SimulatorConfig(api_key="someone-else")) as refusing:
        stopped = await run_cli(*send, "--base-url", refusing.url)
    assert stopped.code == 3, stopped.stderr
    async with receiver_process("--store", str(journal)) as receiver:
        config = SimulatorConfig(
            rate_per_s=120, callback_url=receiver.url + "/webhooks/dlr", callback_delay_ms=20,
            dlr_fail_rate=0.1, callback_retry_s=0.2, seed=3,
        )  # fmt: skip
        async with await start_simulator(config) as simulator:
            resumed = await run_cli(*send, "--base-url", simulator.url)
            assert resumed.code == 1, resumed.stderr  # the refused rows
            async with asyncio.timeout(30):
                await simulator.wait_for_callbacks_done()
        receiver.process.send_signal(signal.SIGTERM)  # drains what it stored
        code, _ = await receiver.finish()
    assert code == 0, "".join(receiver.stderr_lines)
    return journal


@pytest.fixture(scope="module")
def campaign_journal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The campaign's journal, made once for the tests of this module."""
    return asyncio.run(_campaign(tmp_path_factory.mktemp("html")))


@pytest.mark.slow
def test_the_campaign_recorded_both_runs_and_its_throttles(campaign_journal: Path) -> None:
    """Two runs (exit 3, then 1) and a timeline with throttled answers in it."""
    with contextlib.closing(sqlite3.connect(campaign_journal)) as connection:
        codes = [code for (code,) in connection.execute("SELECT exit_code FROM runs ORDER BY id")]
        (throttled,) = connection.execute("SELECT SUM(throttled) FROM timeline").fetchone()
    assert codes == [3, 1]
    assert throttled > 0


@pytest.mark.slow
async def test_the_page_renders_every_chart_in_a_browser(
    campaign_journal: Path, tmp_path: Path
) -> None:
    """Each chart's SVG is there and has a size, on a laptop and a phone, with no console error;
    a screenshot of each is kept."""
    page_path = tmp_path / "report.html"
    made = await run_cli("report", str(campaign_journal), "--html", str(page_path))
    assert made.code == 0, made.stderr
    async with chromium(tmp_path) as page:
        await page.load(page_path.as_uri())
        for width_px, name in ((1280, "laptop"), (PHONE_WIDTH_PX, "phone")):
            await page.send(
                "Emulation.setDeviceMetricsOverride",
                width=width_px, height=900, deviceScaleFactor=1, mobile=width_px < 600,
            )  # fmt: skip
            sizes = await page.evaluate(
                "Object.fromEntries([...document.querySelectorAll('svg.chart')].map(svg => "
                "[svg.id, [svg.getBoundingClientRect().width, svg.getBoundingClientRect().height]"
                "]))"
            )
            for chart in CHARTS:
                width, height = sizes[chart]
                assert width > 0.8 * min(width_px, 560) / 2, (name, chart, width)
                assert height > 50, (name, chart, height)
            overflow = await page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, f"the page is wider than a {name}'s screen by {overflow}px"
            overflowing = await page.evaluate(
                "[...document.querySelectorAll('.scroll')].filter(div => div.scrollWidth > "
                "div.clientWidth).map(div => div.closest('.card').querySelector('h2').textContent)"
            )
            assert overflowing == [], f"tables wider than their card on a {name}"
            smallest_tick_px = await page.evaluate(
                "Math.min(...[...document.querySelectorAll('svg.chart text.tick')]"
                ".filter(text => text.getBoundingClientRect().height > 0)"
                ".map(text => text.getBoundingClientRect().height))"
            )
            assert smallest_tick_px >= 9, f"chart labels {smallest_tick_px}px high on a {name}"
            await page.screenshot(artifacts_dir() / f"report-html-{name}.png")
        assert await page.evaluate("document.querySelectorAll('script').length") == 0
        assert page.errors == []


def _figures(page: str) -> dict[str, str]:
    return dict(re.findall(r'data-key="([^"]+)" data-value="([^"]+)"', page))


def _at(document: dict[str, Any], key: str) -> Any:
    value: Any = document
    for part in key.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


@pytest.mark.slow
async def test_the_figures_in_the_page_are_those_of_the_text_report(
    campaign_journal: Path,
) -> None:
    """Every figure the page shows with a `report --json` key equals the value there."""
    html = await run_cli("report", str(campaign_journal), "--html", "-")
    text = await run_cli("report", str(campaign_journal), "--json")
    assert html.code == 0, html.stderr
    (campaign,) = json.loads(text.stdout)["campaigns"]
    page = html.stdout.decode()
    figures = _figures(page)
    expected = {
        "rows.total", "rows.sent", "rows.failed", "rows.unknown", "rows.skipped",
        "segments_sent", "cost", "latency_ms.p50", "latency_ms.p99", "delivery.sent",
        "delivery.delivered", "delivery.failed", "delivery.expired", "delivery.pending",
    }  # fmt: skip
    assert expected <= set(figures)
    for key, value in figures.items():
        assert str(_at(campaign, key)) == value, key
    failed_by_kind = {
        kind: int(value)
        for kind, value in re.findall(
            r'<td>· ([^<]+)</td><td class="n" data-part-of="rows.failed" data-value="(\d+)"', page
        )
    }
    assert sum(failed_by_kind.values()) == campaign["rows"]["failed"]
    assert failed_by_kind == {"rejected": campaign["rows"]["failed"]}


@pytest.mark.slow
async def test_every_data_key_is_a_path_of_report_json(campaign_journal: Path) -> None:
    """No `data-key` names what `report --json` does not have, with a value or without."""
    html = await run_cli("report", str(campaign_journal), "--html", "-")
    text = await run_cli("report", str(campaign_journal), "--json")
    (campaign,) = json.loads(text.stdout)["campaigns"]
    keys = set(re.findall(r'data-key="([^"]+)"', html.stdout.decode()))
    assert keys
    missing = set()
    for key in keys:
        try:
            _at(campaign, key)
        except (KeyError, TypeError):
            missing.add(key)
    assert missing == set()


@pytest.mark.slow
async def test_markup_from_the_input_is_shown_as_text(campaign_journal: Path) -> None:
    """The campaign's name and its template (a setting), with markup in them, are escaped."""
    html = (await run_cli("report", str(campaign_journal), "--html", "-")).stdout.decode()
    assert "<script>" not in html
    assert "Campaign <bdi>spring &lt;sale&gt;</bdi>" in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


async def test_a_path_that_cannot_be_written_is_one_error_line(tmp_path: Path) -> None:
    """--html into a missing directory: exit 2, one `Error:` line, before the journal is read."""
    journal = tmp_path / "none.journal"
    journal.write_bytes(b"")
    run = await run_cli("report", str(journal), "--html", str(tmp_path / "no" / "r.html"))
    assert run.code == 2
    (line,) = run.stderr.splitlines()
    assert line.startswith("Error: --html ")
    assert "no such directory" in line


async def test_json_and_html_together_are_refused(tmp_path: Path) -> None:
    """One report at a time: exit 2."""
    run = await run_cli("report", str(tmp_path / "j"), "--json", "--html", "-")
    assert run.code == 2
    assert run.stderr.startswith("Error: report: give --json or --html FILE, not both")


async def test_a_dry_run_adds_no_run_to_the_journal(tmp_path: Path) -> None:
    """A dry run reads the journal of an earlier run and records no run of its own in it."""
    rows = write_csv(tmp_path / "in.csv", [("a", number(1)), ("b", number(2))])
    async with await start_simulator(SimulatorConfig()) as simulator:
        sent = await run_cli(
            "send", str(rows), "--from", "Shop", "--text", "Hi", "--base-url", simulator.url
        )
        assert sent.code == 0, sent.stderr
        dry = await run_cli("send", str(rows), "--from", "Shop", "--text", "Hi", "--dry-run")
        assert dry.code == 0, dry.stderr
    with contextlib.closing(sqlite3.connect(tmp_path / "in.csv.journal")) as connection:
        runs = connection.execute("SELECT exit_code, ended_at IS NOT NULL FROM runs").fetchall()
    assert runs == [(0, 1)]


@pytest.mark.parametrize("suffix", ["", "-wal", "-shm", ".lock"])
async def test_the_journal_and_its_side_files_are_never_written_over(
    tmp_path: Path, suffix: str
) -> None:
    """--html naming the journal or a file SQLite keeps beside it: exit 2, one `Error:` line,
    the file as it was."""
    journal = tmp_path / "in.csv.journal"
    target = tmp_path / f"in.csv.journal{suffix}"
    target.write_bytes(b"kept")
    journal.touch()
    run = await run_cli("report", str(journal), "--html", str(target))
    assert run.code == 2
    (line,) = run.stderr.splitlines()
    assert line.startswith(f"Error: --html {target}: that is the journal")
    assert target.read_bytes() == b"kept"


async def test_the_input_a_journal_is_named_after_is_never_written_over(tmp_path: Path) -> None:
    """--html in.csv for in.csv.journal, through a symlink: refused, the input as it was."""
    rows = write_csv(tmp_path / "in.csv", [("a", number(1))])
    (tmp_path / "in.csv.journal").touch()
    (tmp_path / "link.html").symlink_to(rows)
    run = await run_cli(
        "report", str(tmp_path / "in.csv.journal"), "--html", str(tmp_path / "link.html")
    )
    assert run.code == 2
    assert "that is the campaign's input" in run.stderr
    assert rows.read_text().startswith("name,phone")


async def _sent_journal(directory: Path) -> Path:
    rows = write_csv(directory / "in.csv", [("a", number(1))])
    async with await start_simulator(SimulatorConfig()) as simulator:
        sent = await run_cli(
            "send", str(rows), "--from", "Shop", "--text", "Hi", "--base-url", simulator.url
        )
    assert sent.code == 0, sent.stderr
    return directory / "in.csv.journal"


async def test_a_fifo_is_written_in_place_and_stays_a_fifo(tmp_path: Path) -> None:
    """--html into a FIFO: the page comes out of it, and it is a FIFO still (not renamed over)."""
    journal = await _sent_journal(tmp_path)
    fifo = tmp_path / "page.fifo"
    os.mkfifo(fifo)
    # Open for reading and writing, so neither this open nor the CLI's waits for the other.
    fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    chunks: list[bytes] = []
    loop = asyncio.get_running_loop()
    loop.add_reader(fd, lambda: chunks.append(os.read(fd, 1 << 16)))
    try:
        run = await run_cli("report", str(journal), "--html", str(fifo))
        with contextlib.suppress(BlockingIOError):
            while True:
                chunks.append(os.read(fd, 1 << 16))
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    assert run.code == 0, run.stderr
    assert b"".join(chunks).startswith(b"<!DOCTYPE html>")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


async def test_a_symlink_to_a_page_stays_a_symlink(tmp_path: Path) -> None:
    """--html through a symlink writes the file it leads to and leaves the link in place."""
    journal = await _sent_journal(tmp_path)
    page = tmp_path / "page.html"
    page.write_text("old")
    link = tmp_path / "latest.html"
    link.symlink_to(page)
    run = await run_cli("report", str(journal), "--html", str(link))
    assert run.code == 0, run.stderr
    assert link.is_symlink()
    assert page.read_text().startswith("<!DOCTYPE html>")


@pytest.mark.slow
async def test_a_receivers_store_shows_its_receipts_as_the_text_report_does(
    tmp_path: Path,
) -> None:
    """No campaign: the receipts by delivery state, as `report --json` counts them, and where
    the campaign's report is."""
    store = tmp_path / "receipts.journal"
    await stored_by_receiver(store)
    html = await run_cli("report", str(store), "--html", "-")
    text = await run_cli("report", str(store), "--json")
    assert html.code == 0, html.stderr
    page = html.stdout.decode()
    receipts = json.loads(text.stdout)["receipts"]
    figures = _figures(page)
    assert figures["receipts.total"] == str(receipts["total"]) == "4"
    for state, count in receipts["by_delivery"].items():
        assert figures[f"receipts.by_delivery.{state}"] == str(count)
    assert "Report the campaign's journal" in page


async def test_rows_held_by_quiet_hours_show_the_zone_holding_them(tmp_path: Path) -> None:
    """Rows pending for --quiet-hours are listed under not final as quiet_hours/<zone>, as
    the text report lists them."""
    path = quiet_campaign(tmp_path / "c.csv", [HELD_ZONE, FREE_ZONE, HELD_ZONE])
    async with await start_simulator(SimulatorConfig()) as simulator:
        sent = await run_cli(*send_args(simulator, path, "--quiet-hours", AROUND_NOW))
    assert sent.code == 0, sent.stderr
    text = (await run_cli("report", str(path) + ".journal")).stdout.decode()
    page = (await run_cli("report", str(path) + ".journal", "--html", "-")).stdout.decode()
    assert f"quiet_hours/{HELD_ZONE}" in text
    held = re.search(r"<tr><td>· quiet_hours/UTC</td><td [^>]*>([^<]*)</td></tr>", page)
    assert held is not None
    assert held.group(1) == "2"


async def _pool_campaign(directory: Path) -> tuple[str, dict[str, Any]]:
    """A --from-pool campaign whose text smart encoding sends in fewer parts: its page and its
    `report --json`."""
    rows = write_csv(directory / "c.csv", [(f"Ann{n}", f"4474001234{n:02d}") for n in range(1, 7)])
    pool = directory / "pool.csv"
    pool.write_text(POOL)
    async with await start_simulator(SimulatorConfig()) as simulator:
        sent = await run_cli(
            "send", str(rows), "--base-url", simulator.url, "--from-pool", str(pool),
            "--text", CURLY, "--smart-encoding", "auto", "--no-progress",
        )  # fmt: skip
    assert sent.code == 0, sent.stderr
    journal = str(rows) + ".journal"
    page = (await run_cli("report", journal, "--html", "-")).stdout.decode()
    (campaign,) = json.loads((await run_cli("report", journal, "--json")).stdout)["campaigns"]
    return page, campaign


async def test_what_smart_encoding_saved_is_shown_as_report_json_gives_it(tmp_path: Path) -> None:
    """Texts changed, segments and cost saved: on the page, equal to `smart_encoding.*`."""
    page, campaign = await _pool_campaign(tmp_path)
    figures = _figures(page)
    smart = campaign["smart_encoding"]
    assert smart["texts_changed"] == 6
    for key in ("texts_changed", "segments_saved", "cost_saved"):
        assert figures[f"smart_encoding.{key}"] == str(smart[key]), key


async def test_a_pools_sends_per_sender_are_shown_as_report_json_gives_them(
    tmp_path: Path,
) -> None:
    """Each sender of the pool with what it sent, equal to `senders.N.*`."""
    page, campaign = await _pool_campaign(tmp_path)
    figures = _figures(page)
    assert len(campaign["senders"]) == 2
    for index, sender in enumerate(campaign["senders"]):
        assert f"<td>{sender['sender']}</td>" in page
        assert figures[f"senders.{index}.sent"] == str(sender["sent"])
        assert figures[f"senders.{index}.segments"] == str(sender["segments"])
