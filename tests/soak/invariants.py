"""The invariants a campaign must keep, whatever the faults and stops: pure functions from what was
observed (each run's records and exit code, the journal rows, the simulator's accepted messages,
`report --json`) to violations.

An SMS is never sent twice, and every input row ends with exactly one final record:

    sent_twice          a row accepted more than once (with --retry-unknown: accepted again by a
                        run after the one that recorded it sent)
    accepted_not_sent   a row the provider accepted whose final journal state is not sent/unknown
    sent_not_accepted   a row recorded `sent` that the provider never accepted, or with other ids
    not_final           a row whose final journal state is not sent/failed/unknown/skipped
    failed_not_row      a row `failed` for a reason that is not about the row itself
    record_twice        a run gave a row more than one record
    sent_then_more      a row a run recorded `sent` got a record of a later run that is not
                        `already_settled` (a SIGKILLed run's row found in flight by the next
                        excepted: records on stdout cannot be read back)
    record_missing      a run that finished gave a row no record, or no run gave it one
    last_word           the last record of a row disagrees with the journal
    report_disagrees    `report --json` counts differ from the journal's
    credential_leak     a secret (or its Basic/base64 form) in stdout, stderr, records or journal
    memory              a run's peak RSS over the limit
    exit_code           an exit code the way the run was stopped does not allow
    exit_zero           exit 0 with a row failed by this run, or any row unknown
    exit_one            exit 1 from a finished run whose rows were all sent or skipped
    traceback           a traceback on stderr
    torn_record         stdout holds a line that is not a JSON record (a SIGKILLed run's last
                        line excepted)
    hung                a run that did not end within its deadline
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

FINAL_STATES: Final = frozenset({"sent", "failed", "unknown", "skipped"})
ROW_KINDS: Final = frozenset({"invalid_input", "rejected"})
# Rejection codes that speak of the account, not the row: Vonage SMS API statuses, Messages API
# HTTP statuses, Twilio's authentication error.
ACCOUNT_CODES: Final = frozenset({"4", "8", "9", "14", "32", "401", "402", "403", "20003"})
MAX_RSS_KB: Final = 300 * 1024
# Exit codes a run may end with, by how it was stopped (beyond 0 and 1 when it ended first).
STOP_CODES: Final = {
    "none": {0, 1},
    "sigkill": {-9},
    "sigterm": {130},
    "sigint2": {130},
    "sighup": {130},
    "not_after": {1},
    "error_rate": {3},
    "output_full": {4},
    "journal_full": {4},  # or 0 and 1: a run that ended before its files reached the size
}


@dataclass(frozen=True, slots=True)
class Violation:
    kind: str
    detail: str


@dataclass(frozen=True, slots=True)
class RunObservation:
    """One `send` run: how it was stopped, what it printed and how it ended."""

    stop: str  # the planned stop's kind
    stop_fired: bool  # whether the stop was triggered (or the option given) before the run ended
    fatal_possible: bool  # a revoke or an unreachable provider was in this run
    code: int  # negative: killed by that signal
    stdout: bytes
    stderr: str
    peak_rss_kb: int
    hung: bool = False
    records_readable: bool = True  # False when the records went to a failing output


@dataclass(frozen=True, slots=True)
class Observation:
    seed: int
    rows: int
    retry_unknown: bool
    runs: Sequence[RunObservation]
    journal_rows: Sequence[Mapping[str, Any]]  # line, state, client_ref, message_ids, error_*
    journal_bytes: bytes  # the journal and its WAL and lock files
    # The simulator's accepted messages during each run (across its restarts), by run.
    accepted: Sequence[Sequence[Mapping[str, Any]]]
    report: Mapping[str, Any] | None
    secrets: Sequence[str] = field(default_factory=tuple)


def check(observation: Observation) -> list[Violation]:
    """Every violation of the invariants in one observed schedule."""
    records = [parse_records(run) for run in observation.runs]
    violations = [
        *_run_violations(observation, records),
        *_acceptance_violations(observation, records),
        *_journal_violations(observation),
        *_record_violations(observation, records),
        *_report_violations(observation),
        *_leaks(observation),
    ]
    return violations


def parse_records(run: RunObservation) -> tuple[list[dict[str, Any]], list[str]]:
    """A run's records, and the stdout lines that are not records (a killed run's last excepted)."""
    if not run.records_readable:
        return [], []
    lines = run.stdout.decode("utf-8", "replace").split("\n")
    last = lines.pop()  # "" after a final newline; a torn line otherwise
    bad = []
    if last and run.code != -9:
        bad.append(last)
    records = []
    for line in lines:
        try:
            value = json.loads(line)
        except ValueError:
            bad.append(line)
            continue
        if isinstance(value, dict) and isinstance(value.get("line"), int):
            records.append(value)
        else:
            bad.append(line)
    return records, bad


def effective_status(record: Mapping[str, Any]) -> str:
    """A record's word on its row: an `already_settled` skip speaks for the earlier state."""
    error = record.get("error") or {}
    if record.get("status") == "skipped" and error.get("kind") == "already_settled":
        return str(error.get("code"))
    return str(record.get("status"))


def _run_violations(
    observation: Observation, records: Sequence[tuple[list[dict[str, Any]], list[str]]]
) -> Iterable[Violation]:
    for index, (run, (run_records, bad)) in enumerate(zip(observation.runs, records, strict=True)):
        name = f"run {index + 1} ({run.stop})"
        yield from process_violations(name, run, bad)
        if not run.hung:
            yield from _exit_code_violations(name, run, run_records)


def process_violations(name: str, run: RunObservation, bad: Sequence[str]) -> Iterable[Violation]:
    """What any sms-blaster process must keep, however it was stopped: it ends, prints no
    traceback and nothing but records on its output, and stays under the memory limit."""
    if run.hung:
        yield Violation("hung", f"{name} did not end within its deadline")
        return
    if "Traceback (most recent call last)" in run.stderr:
        tail = run.stderr.strip().splitlines()[-1]
        yield Violation("traceback", f"{name} exit {run.code}: {tail}")
    if bad:
        yield Violation("torn_record", f"{name}: stdout line not a record: {bad[0][:80]!r}")
    if run.peak_rss_kb > MAX_RSS_KB:
        yield Violation("memory", f"{name}: peak RSS {run.peak_rss_kb // 1024} MB")


# What a run says when its provider answered none of its first requests (retry.SilentStart).
SILENT_START = "requests without an answer: check --base-url"


def _exit_code_violations(
    name: str, run: RunObservation, records: Sequence[Mapping[str, Any]]
) -> Iterable[Violation]:
    allowed = {0, 1} | (STOP_CODES[run.stop] if run.stop_fired else set())
    if run.stop == "not_after" and "that time has passed" in run.stderr:
        allowed.add(2)  # the deadline passed while the process started: refused, nothing sent
    if run.fatal_possible:
        allowed.add(3)
    if SILENT_START in run.stderr:
        allowed.add(3)  # its first requests all lost their connection (a reset, the provider
        # going away): a designed stop, resumable (retry.SilentStart)
    if run.code not in allowed:
        error = next((ln for ln in run.stderr.splitlines() if ln.startswith("Error:")), "")
        yield Violation(
            "exit_code", f"{name}: exit {run.code}, expected one of {sorted(allowed)} {error}"
        )
        return
    statuses = Counter(effective_status(record) for record in records)
    # A row this run failed, or any row left unknown (earlier runs' too), is not "as intended".
    fresh_failed = sum(1 for record in records if record.get("status") == "failed")
    if run.code == 0 and (fresh_failed or statuses["unknown"]):
        fresh_unknown = sum(1 for record in records if record.get("status") == "unknown")
        yield Violation(
            "exit_zero",
            f"{name}: exit 0 with {fresh_failed} failed, {statuses['unknown']} unknown "
            f"({fresh_unknown} by this run)",
        )
    finished = run.code in (0, 1) and run.stop not in ("not_after",)
    settled_well = not (statuses["failed"] or statuses["unknown"])
    if run.code == 1 and finished and run.records_readable and records and settled_well:
        yield Violation("exit_one", f"{name}: exit 1, but every row sent or skipped")


def _acceptance_violations(
    observation: Observation, records: Sequence[tuple[list[dict[str, Any]], list[str]]]
) -> Iterable[Violation]:
    journal = {str(row["client_ref"]): row for row in observation.journal_rows}
    # run index -> the client refs it accepted, in order
    accepted: dict[str, list[tuple[int, Mapping[str, Any]]]] = {}
    for index, run_accepted in enumerate(observation.accepted):
        for message in run_accepted:
            accepted.setdefault(str(message.get("client_ref")), []).append((index, message))
    # With --retry-unknown a row may be resent until it is recorded sent, not after.
    sent_in: dict[str, int] = {}
    for index, (run_records, _) in enumerate(records):
        for record in run_records:
            if record.get("status") == "sent":
                sent_in.setdefault(str(record.get("client_ref")), index)
    for ref, messages in sorted(accepted.items()):
        row = journal.get(ref)
        line = row["line"] if row else "?"
        if len(messages) > 1:
            runs = [index + 1 for index, _ in messages]
            after_sent = [index for index, _ in messages if index > sent_in.get(ref, len(records))]
            if not observation.retry_unknown or after_sent:
                yield Violation(
                    "sent_twice", f"line {line} ({ref}) accepted {len(messages)} times, runs {runs}"
                )
        if row is None or row["state"] not in ("sent", "unknown"):
            state = row["state"] if row else "absent"
            yield Violation("accepted_not_sent", f"line {line} ({ref}) accepted, journal: {state}")
    for ref, row in journal.items():
        if row["state"] != "sent":
            continue
        ids = {str(message.get("id")) for _, message in accepted.get(ref, [])}
        journal_ids = str(row.get("message_ids") or "").split()
        if not ids:
            yield Violation("sent_not_accepted", f"line {row['line']} sent, never accepted")
        elif journal_ids and journal_ids[0] not in ids:
            yield Violation("sent_not_accepted", f"line {row['line']} sent with ids {journal_ids}")


def _journal_violations(observation: Observation) -> Iterable[Violation]:
    lines = {int(row["line"]) for row in observation.journal_rows}
    missing = set(range(1, observation.rows + 1)) - lines
    if missing:
        yield Violation("not_final", f"{len(missing)} rows not in the journal, e.g. {min(missing)}")
    for row in observation.journal_rows:
        state = row["state"]
        if state not in FINAL_STATES:
            yield Violation("not_final", f"line {row['line']} left {state}")
        elif state == "failed":
            kind, code = row.get("error_kind"), str(row.get("error_code"))
            if kind not in ROW_KINDS or (kind == "rejected" and code in ACCOUNT_CODES):
                yield Violation("failed_not_row", f"line {row['line']} failed {kind}/{code}")


def _record_violations(
    observation: Observation, records: Sequence[tuple[list[dict[str, Any]], list[str]]]
) -> Iterable[Violation]:
    last_word: dict[int, str] = {}
    for index, (run, (run_records, _)) in enumerate(zip(observation.runs, records, strict=True)):
        counts = Counter(int(record["line"]) for record in run_records)
        twice = sorted(line for line, count in counts.items() if count > 1)
        if twice:
            yield Violation("record_twice", f"run {index + 1}: lines {twice[:5]} twice")
        complete = run.code in (0, 1) and run.stop != "not_after" and run.records_readable
        absent = set(range(1, observation.rows + 1)) - set(counts)
        if complete and absent:
            yield Violation(
                "record_missing",
                f"run {index + 1} exit {run.code}: no record for {sorted(absent)[:5]}",
            )
        for record in run_records:
            last_word[int(record["line"])] = effective_status(record)
    yield from _sent_then_more(observation, records)
    never = set(range(1, observation.rows + 1)) - set(last_word)
    if never:
        yield Violation("record_missing", f"no run recorded lines {sorted(never)[:5]}")
    for row in observation.journal_rows:
        said = last_word.get(int(row["line"]))
        if said is not None and said != row["state"]:
            yield Violation(
                "last_word", f"line {row['line']}: last record {said}, journal {row['state']}"
            )


def _sent_then_more(
    observation: Observation, records: Sequence[tuple[list[dict[str, Any]], list[str]]]
) -> Iterable[Violation]:
    """A row sent has its one final record: later runs only restate it (`already_settled`).
    The gap a kill leaves on stdout (the record written, its commit never made) is the one
    exception: the next run records the row `unknown`, found in flight (no attempt of its own)."""
    sent_by: dict[int, int] = {}  # line -> the run that recorded it sent
    for index, (run_records, _) in enumerate(records):
        for record in run_records:
            line = int(record["line"])
            error = record.get("error") or {}
            earlier = sent_by.get(line)
            later = earlier is not None and earlier < index  # within a run: record_twice
            if later and error.get("kind") != "already_settled":
                assert earlier is not None
                killed = observation.runs[earlier].code == -9
                found = record.get("status") == "unknown" and not record.get("attempts")
                if not (killed and found and index == earlier + 1):
                    yield Violation(
                        "sent_then_more",
                        f"line {line}: sent by run {earlier + 1}, then {record.get('status')} "
                        f"({error.get('kind')}) by run {index + 1}",
                    )
            if record.get("status") == "sent" and earlier is None:
                sent_by[line] = index


def _report_violations(observation: Observation) -> Iterable[Violation]:
    if observation.report is None:
        yield Violation("report_disagrees", "report --json gave no document")
        return
    campaigns = observation.report.get("campaigns") or []
    if len(campaigns) != 1:
        yield Violation("report_disagrees", f"report --json has {len(campaigns)} campaigns")
        return
    reported = campaigns[0].get("rows", {})
    states = Counter(str(row["state"]) for row in observation.journal_rows)
    for state in ("sent", "failed", "unknown", "skipped", "inflight", "pending"):
        if int(reported.get(state, 0)) != states[state]:
            yield Violation(
                "report_disagrees", f"report {state} {reported.get(state)}, journal {states[state]}"
            )
    if int(reported.get("total", -1)) != len(observation.journal_rows):
        yield Violation("report_disagrees", f"report total {reported.get('total')}")


def secret_forms(secrets: Iterable[tuple[str, str]]) -> list[str]:
    """What a leak of (user, secret) looks like: the secret, and user:secret in Basic form."""
    forms = []
    for user, secret in secrets:
        forms.append(secret)
        forms.append(base64.b64encode(f"{user}:{secret}".encode()).decode())
    return forms


def _leaks(observation: Observation) -> Iterable[Violation]:
    places = [("journal", observation.journal_bytes)]
    for index, run in enumerate(observation.runs):
        places.append((f"run {index + 1} stdout", run.stdout))
        places.append((f"run {index + 1} stderr", run.stderr.encode()))
    for secret in observation.secrets:
        for name, data in places:
            if secret.encode() in data:
                yield Violation("credential_leak", f"{name} holds a credential ({secret[:4]}…)")
