"""The invariants of a distributed campaign: pure functions from what was observed (enqueue's and
each worker's records and exit code, the rows' states in Redis, what the simulator accepted,
`report --redis --json`) to violations. The kinds are the send checker's (invariants.py), read
for workers:

    sent_twice          a client ref accepted more than once (--retry-unknown is never given)
    accepted_not_sent   an accepted row whose final state in Redis is not sent/unknown
    sent_not_accepted   a row sent in Redis that the provider never accepted
    not_final           a row absent from Redis, or left queued/in flight/pending
    failed_not_row      a row failed for a reason that is not about the row itself
    record_twice        one process gave a row more than one record
    record_missing      a row no process recorded, or a failed row without its failed record
    last_word           a row's state in Redis is none of the statuses its records gave, or its
                        records disagree (but a row taken over after its worker could not write
                        its end to Redis is sent or failed there, and unknown in Redis)
    report_disagrees    `report --redis --json` counts differ from the rows in Redis
    exit_code           a worker's exit code that what happened to it does not allow
    exit_zero           a worker that exits 0 though it recorded a row failed or unknown
    credential_leak     a secret in any output, stderr or Redis's append-only file
    traceback, torn_record, memory, hung   as for `send`
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from tests.soak.invariants import (
    ACCOUNT_CODES,
    ROW_KINDS,
    SILENT_START,
    RunObservation,
    Violation,
    effective_status,
    parse_records,
    process_violations,
)

STATE_NAMES: Final = {"s": "sent", "f": "failed", "u": "unknown", "k": "skipped"}
# Exit codes a worker may end with, by what happened to it (beyond 0 and 1 when it ended first).
STOP_CODES: Final = {
    "none": set(),
    "worker_sigkill": {-9},
    "worker_sigterm": {130},
    "worker_sigint2": {130},
    "redis_short": set(),  # within --redis-grace: ridden out
    "redis_long": {4},  # past it
}


@dataclass(frozen=True, slots=True)
class DistributedObservation:
    seed: int
    rows: int
    enqueue: RunObservation
    # Each worker process, in the order started; `stop` is what happened to it ("none" when a
    # stop of its round was aimed at another worker).
    workers: Sequence[RunObservation]
    row_states: Mapping[int, str]  # line -> state code in Redis (s, s<n>, f, u, k, q, i:, p:)
    refs: Mapping[str, int]  # client ref -> line
    accepted: Sequence[Mapping[str, Any]]  # every message the simulator accepted
    report: Mapping[str, Any] | None
    redis_bytes: bytes = b""  # Redis's append-only file
    secrets: Sequence[str] = field(default_factory=tuple)


def check_distributed(observation: DistributedObservation) -> list[Violation]:
    """Every violation of the invariants in one observed distributed schedule."""
    processes = [("enqueue", observation.enqueue)] + [
        (f"worker {index + 1} ({run.stop})", run) for index, run in enumerate(observation.workers)
    ]
    records = [(name, run, *parse_records(run)) for name, run in processes]
    violations: list[Violation] = []
    for name, run, run_records, bad in records:
        violations += process_violations(name, run, bad)
        if not run.hung and name != "enqueue":
            violations += _exit_code_violations(name, run, run_records)
        counts = Counter(int(record["line"]) for record in run_records)
        twice = sorted(line for line, count in counts.items() if count > 1)
        if twice:
            violations.append(Violation("record_twice", f"{name}: lines {twice[:5]} twice"))
    by_line: dict[int, list[Mapping[str, Any]]] = {}
    for _, _, run_records, _ in records:
        for record in run_records:
            by_line.setdefault(int(record["line"]), []).append(record)
    refs = dict(observation.refs)
    for line, line_records in by_line.items():
        refs.update((str(record.get("client_ref")), line) for record in line_records)
    violations += _acceptance_violations(observation, refs)
    violations += _state_violations(observation, by_line)
    violations += _report_violations(observation)
    violations += _leaks(observation, [run for _, run in processes])
    return violations


def _exit_code_violations(
    name: str, run: RunObservation, records: Sequence[Mapping[str, Any]]
) -> Iterable[Violation]:
    allowed = {0, 1} | (STOP_CODES[run.stop] if run.stop_fired else set())
    if run.fatal_possible or SILENT_START in run.stderr:
        allowed.add(3)  # a fatal answer, or none to its first requests (retry.SilentStart)
    if run.code not in allowed:
        error = next((ln for ln in run.stderr.splitlines() if ln.startswith("Error:")), "")
        yield Violation(
            "exit_code", f"{name}: exit {run.code}, expected one of {sorted(allowed)} {error}"
        )
        return
    mine = Counter(str(record.get("status")) for record in records)
    if run.code == 0 and (mine["failed"] or mine["unknown"]):
        yield Violation(
            "exit_zero", f"{name}: exit 0 with {mine['failed']} failed, {mine['unknown']} unknown"
        )


def _acceptance_violations(
    observation: DistributedObservation, refs: Mapping[str, int]
) -> Iterable[Violation]:
    times = Counter(str(message.get("client_ref")) for message in observation.accepted)
    for ref, count in sorted(times.items()):
        line = refs.get(ref)
        state = observation.row_states.get(line, "absent") if line is not None else "absent"
        if count > 1:
            yield Violation("sent_twice", f"line {line} ({ref}) accepted {count} times")
        if state[:1] not in ("s", "u"):
            yield Violation("accepted_not_sent", f"line {line} ({ref}) accepted, Redis: {state}")
    accepted_lines = {refs.get(ref) for ref in times}
    for line, state in sorted(observation.row_states.items()):
        if state.startswith("s") and line not in accepted_lines:
            yield Violation("sent_not_accepted", f"line {line} sent, never accepted")


def _state_violations(
    observation: DistributedObservation, by_line: Mapping[int, Sequence[Mapping[str, Any]]]
) -> Iterable[Violation]:
    missing = set(range(1, observation.rows + 1)) - set(observation.row_states)
    if missing:
        yield Violation("not_final", f"{len(missing)} rows not in Redis, e.g. {min(missing)}")
    never = set(range(1, observation.rows + 1)) - set(by_line)
    if never:
        yield Violation("record_missing", f"no process recorded lines {sorted(never)[:5]}")
    for line, code in sorted(observation.row_states.items()):
        state = STATE_NAMES.get(code[:1])
        if state is None:
            yield Violation("not_final", f"line {line} left {code}")
            continue
        records = by_line.get(line, [])
        said = {effective_status(record) for record in records}
        # A worker that could not write a row's end to Redis has recorded it already; the worker
        # that takes it over records it unknown (worker_lost), which Redis keeps.
        taken_over = state == "unknown" and said <= {"sent", "failed", "unknown"}
        if records and (state not in said or not (said <= {state} or taken_over)):
            yield Violation("last_word", f"line {line}: records {sorted(said)}, Redis {state}")
        if state == "failed":
            failed = [record for record in records if record.get("status") == "failed"]
            if not failed:
                yield Violation("record_missing", f"line {line} failed without a failed record")
            for record in failed:
                error = record.get("error") or {}
                kind, code_ = error.get("kind"), str(error.get("code"))
                if kind not in ROW_KINDS or (kind == "rejected" and code_ in ACCOUNT_CODES):
                    yield Violation("failed_not_row", f"line {line} failed {kind}/{code_}")


def _report_violations(observation: DistributedObservation) -> Iterable[Violation]:
    if observation.report is None:
        yield Violation("report_disagrees", "report --redis --json gave no document")
        return
    campaigns = observation.report.get("campaigns") or []
    if len(campaigns) != 1:
        yield Violation("report_disagrees", f"report --json has {len(campaigns)} campaigns")
        return
    reported = campaigns[0].get("rows", {})
    states = Counter(STATE_NAMES.get(code[:1], "open") for code in observation.row_states.values())
    for state in ("sent", "failed", "unknown", "skipped"):
        if int(reported.get(state, 0)) != states[state]:
            yield Violation(
                "report_disagrees", f"report {state} {reported.get(state)}, Redis {states[state]}"
            )
    still = int(reported.get("pending", 0)) + int(reported.get("inflight", 0))
    if still:
        yield Violation("report_disagrees", f"report shows {still} rows pending or in flight")


def _leaks(
    observation: DistributedObservation, runs: Sequence[RunObservation]
) -> Iterable[Violation]:
    places = [("Redis's append-only file", observation.redis_bytes)]
    for index, run in enumerate(runs):
        name = "enqueue" if index == 0 else f"worker {index}"
        places += [(f"{name} stdout", run.stdout), (f"{name} stderr", run.stderr.encode())]
    for secret in observation.secrets:
        for name, data in places:
            if secret.encode() in data:
                yield Violation("credential_leak", f"{name} holds a credential ({secret[:4]}…)")
