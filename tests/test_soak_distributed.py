"""The distributed checker's pure parts: its invariants and its schedules."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.soak.distributed_invariants import DistributedObservation, check_distributed
from tests.soak.distributed_schedule import make_distributed_schedule
from tests.test_soak import REF, accepted, kinds, record, report, run


def clean() -> DistributedObservation:
    """Two rows, one sent by each of two workers, all agreeing."""
    return DistributedObservation(
        seed=1,
        rows=2,
        enqueue=run(),
        workers=[run(record(1, "sent")), run(record(2, "sent"))],
        row_states={1: "s", 2: "s"},
        refs={f"{REF}-1": 1, f"{REF}-2": 2},
        accepted=[accepted(1), accepted(2)],
        report=report(sent=2),
        secrets=("topsecret",),
    )


def test_a_distributed_campaign_that_kept_every_invariant_has_no_violations() -> None:
    """Two workers, one row each, sent once, recorded and reported alike: nothing to report."""
    assert check_distributed(clean()) == []


def test_a_row_accepted_twice_across_workers_is_sent_twice() -> None:
    """Two workers sending one row is the worst violation, whoever sent it."""
    observation = replace(clean(), accepted=[accepted(1), accepted(2), accepted(1)])
    assert kinds(check_distributed(observation)) == {"sent_twice"}


def test_a_row_taken_over_as_unknown_after_its_record_said_sent_is_allowed() -> None:
    """A worker that could not write a row's end to Redis has printed its record; the takeover
    records it unknown, and Redis keeps unknown."""
    lost = run(record(1, "sent"), code=4, stop="redis_long")
    takeover = run(record(1, "unknown", "ambiguous", "worker_lost"), record(2, "sent"), code=1)
    observation = replace(
        clean(),
        workers=[lost, takeover],
        row_states={1: "u", 2: "s"},
        report=report(sent=1, unknown=1),
    )
    assert check_distributed(observation) == []


def test_a_worker_exiting_4_without_a_long_redis_outage_is_exit_code() -> None:
    """Exit 4 is for a Redis lost past --redis-grace; a short outage must be ridden out."""
    short = run(record(1, "sent"), code=4, stop="redis_short")
    observation = replace(clean(), workers=[short, run(record(2, "sent"))])
    assert kinds(check_distributed(observation)) == {"exit_code"}


def test_a_row_left_queued_in_redis_is_not_final() -> None:
    """After the clean rounds no row may be queued, in flight or pending."""
    observation = replace(
        clean(),
        workers=[run(record(1, "sent"))],
        row_states={1: "s", 2: "q"},
        accepted=[accepted(1)],
        report=report(sent=1, pending=1),
    )
    assert "not_final" in kinds(check_distributed(observation))


def test_a_secret_in_redis_append_only_file_is_a_credential_leak() -> None:
    """Credentials never reach Redis."""
    observation = replace(clean(), redis_bytes=b"*3\r\n$4\r\nHSET\r\ntopsecret")
    assert kinds(check_distributed(observation)) == {"credential_leak"}


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=0, max_value=2**32))
def test_every_distributed_schedule_has_one_to_three_workers_a_round_and_at_most_200_rows(
    seed: int,
) -> None:
    """Any seed gives 1-200 rows, never --retry-unknown, and 1-2 faulted rounds of 1-3 workers."""
    schedule = make_distributed_schedule(seed)
    assert 1 <= schedule.rows <= 200
    assert not schedule.campaign.retry_unknown
    assert 1 <= len(schedule.faulted_rounds) <= 2
    assert all(1 <= plan.workers <= 3 for plan in schedule.faulted_rounds)
    assert all(0 <= plan.target < plan.workers for plan in schedule.faulted_rounds)
