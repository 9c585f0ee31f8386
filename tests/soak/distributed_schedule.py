"""A distributed schedule, drawn from one seed: the send checker's campaign and simulator faults,
enqueued into Redis and sent by 1-3 workers a round, with a stop a round.

Pure: the same seed gives the same schedule.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Final

from tests.soak.schedule import Schedule, Trigger, make_schedule

MAX_ROWS: Final = 200
# How a faulted round is stopped, at a point of progress: one worker killed or signalled, or
# redis-server SIGKILLed and started again within --redis-grace (short) or past it (long).
DISTRIBUTED_STOPS: Final = (
    "none",
    "worker_sigkill",
    "worker_sigterm",
    "worker_sigint2",
    "redis_short",
    "redis_long",
)
REDIS_GRACE_S: Final = 4.0
LEASE_S: Final = 2.0


@dataclass(frozen=True, slots=True)
class Round:
    """Workers started together, and the stop fired once their progress reaches `stop.at`."""

    workers: int
    stop: Trigger
    target: int  # the worker a worker stop is sent to
    outage_s: float  # redis_short: how long Redis stays away (the scenario, under the grace)
    events: tuple[Trigger, ...]  # simulator events, as the send checker draws them


@dataclass(frozen=True, slots=True)
class DistributedSchedule:
    seed: int
    campaign: Schedule  # the input, provider, texts and static faults; never --retry-unknown
    rate_per_s: float  # --rate, for all workers together
    window: int  # --window, each worker's
    faulted_rounds: tuple[Round, ...]  # then rounds without faults until the campaign is done

    @property
    def rows(self) -> int:
        return self.campaign.rows


def make_distributed_schedule(seed: int, max_rows: int = MAX_ROWS) -> DistributedSchedule:
    """The distributed schedule of `seed`: at most `max_rows` rows (at least 1)."""
    campaign = dataclasses.replace(make_schedule(seed, max_rows), retry_unknown=False)
    rng = random.Random(f"distributed-{seed}")
    sendable = max(campaign.rows, 1)
    rounds = []
    for faulted in campaign.faulted_runs[:2]:
        workers = rng.randint(1, 3)
        kind = rng.choice(DISTRIBUTED_STOPS)
        at = rng.randint(0, max(sendable * 3 // 4, 1))  # mostly before the round ends
        lasts = rng.randint(0, 5) if kind == "worker_sigint2" else 0
        rounds.append(
            Round(
                workers=workers,
                stop=Trigger(kind, at, lasts=lasts),
                target=rng.randrange(workers),
                outage_s=rng.uniform(0.2, REDIS_GRACE_S / 2),
                events=faulted.events,
            )
        )
    return DistributedSchedule(
        seed=seed,
        campaign=campaign,
        rate_per_s=rng.choice((50.0, 100.0, 200.0)),
        window=rng.choice((2, 4, 8, 16)),
        faulted_rounds=tuple(rounds),
    )
