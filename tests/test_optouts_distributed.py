"""Opt-outs in distributed mode: the list lives in Redis, `receive --redis` writes it, `enqueue`
and every worker consult it."""

from __future__ import annotations

from pathlib import Path

from sms_blaster.distributed.optouts import RedisOptOuts
from sms_blaster.distributed.redis_client import connect
from sms_blaster.optouts.model import OptOut
from tests.cli_helpers import receiver_process, run_cli, write_csv
from tests.test_optouts_cli import (
    OTHER,
    OUT,
    SID,
    TOKEN,
    handset_writes,
    kinds,
    listed_state,
    next_second,
    simulator,
    twilio_posts,
)

CAMPAIGN = "autumn"


def enqueue_args(redis_url: str, path: Path) -> list[str]:
    return ["enqueue", str(path), "--redis", redis_url, "--campaign", CAMPAIGN,
            "--from", "Shop", "--text", "Hi {name}"]  # fmt: skip


async def test_a_stop_stored_in_redis_keeps_the_number_out_of_the_queue(
    redis_url: str, tmp_path: Path
) -> None:
    """receive --redis writes the list; enqueue records the row opted_out instead of queueing it."""
    async with (
        receiver_process("--redis", redis_url) as receiver,
        simulator() as sim,
    ):
        answer = await handset_writes(sim, receiver.url + "/webhooks/inbound", "STOP", "vonage-sms")
        assert answer["status"] == 204
    listed = await run_cli("optouts", "list", "--redis", redis_url)
    assert listed.stdout.decode().split("\t")[:2] == [OUT, "out"]
    path = write_csv(tmp_path / "c.csv", [("Ann", OUT), ("Bob", OTHER)])
    enqueued = await run_cli(*enqueue_args(redis_url, path))
    assert enqueued.code == 0, enqueued.stderr
    assert kinds(enqueued) == {OUT: "skipped/opted_out"}


async def test_a_worker_skips_a_number_opted_out_after_the_campaign_was_enqueued(
    redis_url: str, tmp_path: Path
) -> None:
    """The worker checks Redis's list at send time; its Twilio 21610 answers go to the list."""
    unsubscribed = "447400129990"
    path = write_csv(tmp_path / "c.csv", [("Ann", OUT), ("Bob", OTHER), ("Cy", unsubscribed)])
    assert (await run_cli(*enqueue_args(redis_url, path))).code == 0
    added = await run_cli("optouts", "add", OUT, "--redis", redis_url)
    assert added.code == 0, added.stderr
    async with simulator() as sim:
        worked = await run_cli(
            "worker", "--redis", redis_url, "--campaign", CAMPAIGN, "--base-url", sim.url,
            "--no-progress", "--provider", "twilio", "--account-sid", SID, "--auth-token", TOKEN,
        )  # fmt: skip
        recipients = set((await sim.stats())["recipients"])
    assert worked.code == 1, worked.stderr  # the 21610 row failed
    assert kinds(worked) == {
        OUT: "skipped/opted_out", OTHER: "sent", unsubscribed: "failed/rejected"
    }  # fmt: skip
    assert OUT not in recipients
    exported = await run_cli("optouts", "export", "--redis", redis_url, "--format", "jsonl")
    assert {(e["number"], e["source"]) for e in exported.records} == {
        (OUT, "manual"), (unsubscribed, "twilio-21610")
    }  # fmt: skip


async def test_redis_keeps_the_same_order_of_entries_as_a_journal(redis_url: str) -> None:
    """A retry changes nothing, an older STOP after a START changes nothing, readers follow."""
    redis = connect(redis_url)
    try:
        lists = RedisOptOuts(redis)
        assert await lists.record([OptOut(OUT, True, 10.0, "manual", "STOP")]) == 1
        seen = await lists.changes_since(0)
        assert seen.out == {int(OUT)}
        assert await lists.record([OptOut(OUT, True, 10.0, "manual", "STOP")]) == 0
        assert await lists.record([OptOut(OUT, False, 20.0, "manual", "START")]) == 1
        assert await lists.record([OptOut(OUT, True, 15.0, "manual", "STOP")]) == 0
        later = await lists.changes_since(seen.last_seq)
        assert later.out == frozenset()
        assert later.back_in == {int(OUT)}
        assert await lists.entries() == [OptOut(OUT, False, 20.0, "manual", "START")]
    finally:
        await redis.aclose(close_connection_pool=True)


async def test_a_replayed_start_does_not_undo_a_later_stop_in_redis(redis_url: str) -> None:
    """STOP, START, STOP, then the START again (a retry or a replay): the number stays out."""
    async with receiver_process("--redis", redis_url) as receiver:
        await twilio_posts(receiver.url, ("SM11a", "STOP"), ("SM11b", "START"), ("SM11c", "STOP"))
        await next_second()  # the replay is later than the STOP: only its id can refuse it
        await twilio_posts(receiver.url, ("SM11b", "START"))
    assert await listed_state("--redis", redis_url) == "out"
