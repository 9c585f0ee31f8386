"""The exceptions that end a run, each with its exit code.

    SmsBlasterError            exit_code
    ├── UsageError             2  bad flag, file or column, found before anything is sent
    │   └── OptionValueError   2  an option's value the run cannot use with the others
    ├── FatalProviderError     3  bad credentials, barred account, no credit: the run was stopped
    ├── JournalError           4  the journal is locked or unreadable
    │   └── RedisUnavailable   4  Redis, the journal of a distributed run, failed or is unreachable
    ├── OutputError            4  the records cannot be written (a closed pipe, a full disk)
    ├── InputUnreadable        4  the input cannot be read to its end (its preparing process died)
    └── Interrupted          130  SIGINT/SIGTERM/SIGHUP after a graceful drain

Per-message failures are never exceptions: they are `Record`s. `cli.main` is the one place that
turns these into a one-line `Error: …` on stderr and an exit code.
"""

from __future__ import annotations


class SmsBlasterError(Exception):
    exit_code = 1


class UsageError(SmsBlasterError):
    exit_code = 2


class OptionValueError(UsageError):
    """An option's value, well formed, that the run cannot use with the others (a --ttl the
    chosen provider cannot take): found once every option is read, so `cli` says whether the
    flag or its environment variable gave it."""

    def __init__(self, option: str, value: str, problem: str, *, line: int | None = None) -> None:
        where = "" if line is None else f":{line}"
        super().__init__(f"{option} {value}{where}: {problem}")
        self.option = option  # the flag: "--ttl"
        # why, and what to give instead; with the line of the file the value names, if any
        self.problem = problem if line is None else f"line {line}: {problem}"


class FatalProviderError(SmsBlasterError):
    exit_code = 3


class JournalError(SmsBlasterError):
    exit_code = 4


class RedisUnavailable(JournalError):
    """A Redis failure, translated from redis-py's errors in `sms_blaster.distributed.redis_client`.

    In a distributed run Redis holds the queue, the row ledger and the shared limit, so losing it
    ends the run as an unusable journal does (every place that stops on a JournalError stops).
    """


class OutputError(SmsBlasterError):
    exit_code = 4


class InputUnreadable(SmsBlasterError):
    exit_code = 4


class Interrupted(SmsBlasterError):
    exit_code = 130
