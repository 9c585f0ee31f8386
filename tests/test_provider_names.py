"""One name a provider: written one way, the Vonage SMS API's older spelling still read."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import redis.asyncio as aioredis

from sms_blaster.campaign_identity import CampaignParams
from sms_blaster.distributed.keys import CampaignKeys
from sms_blaster.distributed.report import load_summary
from sms_blaster.journal.queries import load_summaries
from sms_blaster.journal.store import Journal
from sms_blaster.models import Encoding, InputRow, Message, Record, Status
from sms_blaster.providers.names import OPTION_NAMES, ProviderName, canonical, receipts_per_part


def params(provider: str) -> CampaignParams:
    return CampaignParams(
        name="default",
        campaign_id="c0ffee000000",
        input="/data/c.csv",
        text="Hi",
        sender="Shop",
        provider=provider,
        to_column="to",
        default_region="",
    )


def message(line: int) -> Message:
    fingerprint = InputRow(line, {"to": "+447911100001"}).fingerprint()
    return Message(
        line, "447911100001", "Hi", Encoding.GSM7, 1, f"c0ffee000000-{line}",
        fingerprint=fingerprint,
    )  # fmt: skip


def _ignore(_record: Record) -> None:
    return None


def stored_provider(path: Path) -> str:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        (provider,) = connection.execute("SELECT provider FROM campaigns").fetchone()
    return str(provider)


def test_the_command_line_keeps_its_spellings_and_each_names_one_provider() -> None:
    """`--provider vonage` is the SMS API; every name the option takes reads as a provider."""
    assert OPTION_NAMES == ("vonage", "vonage-messages", "twilio")
    assert [ProviderName(name) for name in OPTION_NAMES] == list(ProviderName)
    assert ProviderName("vonage") is ProviderName("vonage-sms") is ProviderName.VONAGE_SMS


def test_either_spelling_of_the_sms_api_is_read_as_the_one_written() -> None:
    """A stored "vonage" reads as "vonage-sms", with its receipts counted per part."""
    assert canonical("vonage") == canonical("vonage-sms") == "vonage-sms"
    assert receipts_per_part("vonage")
    assert receipts_per_part("vonage-sms")
    assert not receipts_per_part("twilio")
    assert canonical("(no worker yet)") == "(no worker yet)"


async def test_a_new_journal_writes_the_one_spelling(tmp_path: Path) -> None:
    """A run started with `--provider vonage` stores "vonage-sms"."""
    journal = Journal.open(str(tmp_path / "j"), params(ProviderName("vonage")))
    journal.start()
    await journal.close()
    assert stored_provider(tmp_path / "j") == "vonage-sms"


async def test_a_journal_that_stored_the_old_spelling_still_resumes_and_reports(
    tmp_path: Path,
) -> None:
    """A campaign stored as "vonage" resumes (its sent row skipped) and reports as "vonage-sms"."""
    path = tmp_path / "j"
    journal = Journal.open(str(path), params("vonage-sms"))
    journal.start()
    journal.admit(message(1))
    await journal.inflight(message(1), 1)
    journal.settle(Record(1, "447911100001", Status.SENT, "c0ffee000000-1", 1), _ignore)
    await journal.close()
    with contextlib.closing(sqlite3.connect(path)) as connection, connection:
        connection.execute("UPDATE campaigns SET provider = 'vonage'")  # as earlier sends wrote it
    resumed = Journal.open(str(path), params(ProviderName.VONAGE_SMS))
    resumed.start()
    try:
        again = resumed.admit(message(1))
    finally:
        await resumed.close()
    assert again is not None
    assert again.status is Status.SKIPPED
    (summary,) = load_summaries(str(path))
    assert summary.provider == "vonage-sms"


async def test_a_redis_campaign_that_stored_the_old_spelling_reports_as_the_new(
    redis_url: str,
) -> None:
    """A worker of an earlier release wrote "vonage" to the campaign; the report reads it."""
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        keys = CampaignKeys("spring")
        await redis.hset(
            keys.meta,
            mapping={"campaign_id": "c7f3", "provider": "vonage", "created_at": "0", "done": "1"},
        )
        await redis.hset(keys.rows, "1", "s")
        summary = await load_summary(redis, "spring", redis_url)
    finally:
        await redis.aclose()
    assert (summary.provider, summary.rows.sent) == ("vonage-sms", 1)
