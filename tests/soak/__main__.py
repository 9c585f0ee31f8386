"""`python -m tests.soak`: run schedules and print a table; a failing one prints its replay command.

python -m tests.soak --seed 1234                  replay one schedule (verbose)
python -m tests.soak --schedules 300 --jobs 2     seeds 0..299, two at a time
python -m tests.soak --distributed --schedules 50 --jobs 1    enqueue and workers on Redis
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.soak.distributed_driver import (
    replay_distributed,
    run_distributed_in,
    run_distributed_seed,
)
from tests.soak.distributed_schedule import DISTRIBUTED_STOPS, MAX_ROWS, make_distributed_schedule
from tests.soak.driver import Outcome, replay_command, run_seed, run_seed_in
from tests.soak.schedule import EVENTS, JOURNAL_FULL, STATIC_FAULTS, STOPS, Schedule, make_schedule


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__)
    parser.add_argument("--seed", type=int, help="Replay this one schedule, verbosely.")
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="Schedules of `enqueue` into redis-server and workers (at most 200 rows).",
    )
    parser.add_argument("--schedules", type=int, default=300)
    parser.add_argument("--seed-start", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2, choices=(1, 2))
    parser.add_argument("--max-rows", type=int, default=400)
    parser.add_argument(
        "--repeat", type=int, default=1, help="Run --seed up to this many times, until it fails."
    )
    parser.add_argument("--keep", type=Path, help="Keep the files of --seed here.")
    parser.add_argument(
        "--keep-failing", type=Path, help="Keep the files of each failing schedule in DIR/seed-N."
    )
    args = parser.parse_args(argv)
    mode = _DISTRIBUTED if args.distributed else _SEND
    if args.distributed:
        args.max_rows = min(args.max_rows, MAX_ROWS)
    if args.seed is not None:
        print(mode.describe(args.seed, args.max_rows), file=sys.stderr)
        if args.keep is not None:
            outcome = mode.run_in(args.seed, args.keep, args.max_rows)
        else:
            # Timing is not in the seed: a stop may land elsewhere, so a replay may take tries.
            for _ in range(args.repeat):
                outcome = mode.run(args.seed, args.max_rows, args.keep_failing)
                if outcome.violations:
                    break
        shown: Counter[str] = Counter()
        for violation in outcome.violations:
            shown[violation.kind] += 1
            if shown[violation.kind] <= 3:
                print(f"  {violation.kind}: {violation.detail}")
        for kind, count in shown.items():
            if count > 3:
                print(f"  {kind}: {count - 3} more")
        print(_table([outcome], mode))
        return 1 if outcome.violations else 0
    seeds = range(args.seed_start, args.seed_start + args.schedules)
    outcomes = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        keep = [args.keep_failing] * len(seeds)
        for outcome in pool.map(mode.run, seeds, [args.max_rows] * len(seeds), keep):
            outcomes.append(outcome)
            if outcome.violations:
                first: dict[str, str] = {}
                for violation in outcome.violations:
                    first.setdefault(violation.kind, violation.detail)
                details = "; ".join(f"{kind}: {detail}" for kind, detail in sorted(first.items()))
                print(f"seed {outcome.seed}: {details}  replay: {mode.replay(outcome.seed)}",
                      flush=True)  # fmt: skip
    print(_table(outcomes, mode))
    return 1 if any(outcome.violations for outcome in outcomes) else 0


@dataclass(frozen=True, slots=True)
class _Mode:
    """What differs between the send checker and the distributed one."""

    run: Callable[[int, int, Path | None], Outcome]
    run_in: Callable[[int, Path, int], Outcome]
    replay: Callable[[int], str]
    describe: Callable[[int, int], str]
    stops: tuple[str, ...]


def _describe(schedule: Schedule) -> str:
    fields = asdict(schedule)
    fields.pop("input_text")
    return "schedule " + " ".join(f"{key}={value}" for key, value in fields.items())


def _describe_distributed(seed: int, max_rows: int) -> str:
    schedule = make_distributed_schedule(seed, max_rows)
    rounds = " ".join(repr(plan) for plan in schedule.faulted_rounds)
    return (
        f"{_describe(schedule.campaign)}\nrate_per_s={schedule.rate_per_s} "
        f"window={schedule.window} rounds: {rounds}"
    )


_SEND = _Mode(
    run_seed, run_seed_in, replay_command, lambda seed, rows: _describe(make_schedule(seed, rows)),
    (*STOPS, JOURNAL_FULL),
)  # fmt: skip
_DISTRIBUTED = _Mode(
    run_distributed_seed, run_distributed_in, replay_distributed, _describe_distributed,
    DISTRIBUTED_STOPS,
)  # fmt: skip


def _table(outcomes: Iterable[Outcome], mode: _Mode = _SEND) -> str:
    outcomes = list(outcomes)
    stops: Counter[str] = Counter()
    faults: Counter[str] = Counter()
    violations: Counter[str] = Counter()
    first_seed: dict[str, int] = {}
    for outcome in outcomes:
        stops.update(outcome.stops)
        faults.update(outcome.faults)
        for kind in {violation.kind for violation in outcome.violations}:
            violations[kind] += 1
            first_seed.setdefault(kind, outcome.seed)
    peak_mb = max((outcome.peak_rss_kb for outcome in outcomes), default=0) / 1024
    lines = [
        f"schedules  {len(outcomes)}",
        f"rows       {sum(outcome.rows for outcome in outcomes)}",
        f"runs       {sum(outcome.runs for outcome in outcomes)}",
        "stops      " + _counts(stops, [s for s in mode.stops if s != "none"]),
        "faults     " + _counts(faults, [*STATIC_FAULTS, *EVENTS]),
        f"peak RSS   {peak_mb:.1f} MB (the most any run took)",
        f"violations {sum(1 for outcome in outcomes if outcome.violations)} schedules",
    ]
    for kind, count in violations.most_common():
        lines.append(f"  {kind:<18} {count:>4}  e.g. {mode.replay(first_seed[kind])}")
    return "\n".join(lines)


def _counts(counter: Counter[str], names: list[str]) -> str:
    return ", ".join(f"{name} {counter[name]}" for name in names)


if __name__ == "__main__":
    sys.exit(main())
