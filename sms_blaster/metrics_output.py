"""Where a sending run's metrics go, and when: --metrics-file (node_exporter's textfile
collector) and --pushgateway, at the start, every 10 s and once at exit.

The metrics are the sending part's: they start once `send` or `worker` has its run assembled
and end with its exit code, whatever ended it (a fatal answer, a signal, a journal error). A
command that ends before that sent nothing and is not a run: a usage error (exit 2) or a journal
another run holds (exit 4) leaves the file as the last run wrote it; the other run may be
writing it. Two runs never write one file: while one holds its lock (.NAME.lock beside it),
another is refused at the start (exit 2). A dry run checks the options and writes nothing:
its figures are estimates.

Writing and pushing happen on a thread of their own, newest figures first: a slow disk or a
gateway that does not answer never holds up the loop. Either failing is said once on stderr
and the run goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from typing import IO, TYPE_CHECKING, Any, TextIO
from urllib.parse import unquote, urlsplit, urlunsplit

from sms_blaster import run_parts
from sms_blaster.errors import OptionValueError
from sms_blaster.exit_status import code_of_exception
from sms_blaster.kept_files import kept_as, run_files
from sms_blaster.logs import Level, say
from sms_blaster.settings import RunSettings
from sms_blaster.url_text import http_url_problem, mask_password

if TYPE_CHECKING:
    from sms_blaster.run_metrics import LatestFigures, RunFigures
    from sms_blaster.run_stats import RunSnapshot

INTERVAL_S = 10.0
# A push blocks its thread up to this long; at exit the run waits for the last one no longer.
PUSH_TIMEOUT_S = 5.0
JOB = "sms_blaster"


def check_options(settings: RunSettings) -> None:
    """--metrics-file and --pushgateway, checked before anything is sent (OptionValueError)."""
    path = settings.metrics_file
    if path is not None and (problem := _metrics_file_problem(settings, path)) is not None:
        raise OptionValueError("--metrics-file", path, problem)
    url = settings.pushgateway
    if url is not None and (problem := _pushgateway_problem(url)) is not None:
        raise OptionValueError("--pushgateway", mask_password(url), problem)


def _metrics_file_problem(settings: RunSettings, path: str) -> str | None:
    """Why the run cannot write its metrics at `path`; None when it can. Each write goes to a
    new file beside it, then is renamed over it: the rename would replace whatever `path` is,
    so only a regular file (not a link to one, a device or a FIFO) or no file is taken."""
    if not path:
        return "no file given; give one like /var/lib/node_exporter/textfile/sms_blaster.prom"
    if path.endswith(os.sep) or os.path.isdir(path):
        return "that is a directory; give a file in it, e.g. sms_blaster.prom"
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        return f"no directory {directory}; create it or give a file in another one"
    if (what := _the_runs_own(settings, path)) is not None:
        return f"that is {what}; write the metrics elsewhere"
    with contextlib.suppress(FileNotFoundError):
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode):
            return "that is a symbolic link, which the rename would replace; give its target"
        if not stat.S_ISREG(mode):
            return "that is no regular file (a device, a FIFO or a socket); give a file's path"
    try:  # what each write does: a new file in the directory
        fd, probe = tempfile.mkstemp(prefix=".sms_blaster.", suffix=".tmp", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return (
            f"cannot write in {directory} ({exc.strerror}; the file is written beside itself, "
            "then renamed over); give a directory this user can write"
        )
    return None


def _pushgateway_problem(url: str) -> str | None:
    """Why `url` cannot be a Pushgateway's address; None when it can. A path is a reverse
    proxy's base: the push appends /metrics/job/... to it."""
    problem = http_url_problem(url)
    if problem is not None:
        return f"{problem}; give one like http://pushgateway:9091"
    parts = urlsplit(url)
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        return "a query or a fragment cannot be pushed to; give the address without it"
    if "/metrics/job/" in f"{parts.path}/":
        return (
            "the push adds /metrics/job/sms_blaster/campaign/NAME itself; give the address "
            "before /metrics, e.g. http://pushgateway:9091"
        )
    return None


def _the_runs_own(settings: RunSettings, path: str) -> str | None:
    """What `path` is of the files the run reads or writes; None: none of them."""
    input_path = settings.input_path if settings.input_path != "-" else None
    kept = run_files(settings, input_path, run_parts.kept_journal_path(settings))
    if settings.output_path:
        kept.append(("--output", settings.output_path))
    found = kept_as(path, kept)
    return None if found is None else f"{found[0]} ({found[1]})"


def open_output(settings: RunSettings, stderr: TextIO) -> MetricsOutput | None:
    """The run's metrics output; None when it has neither option, or is a dry run."""
    check_options(settings)
    if settings.dry_run or (settings.metrics_file is None and settings.pushgateway is None):
        return None
    path = settings.metrics_file
    lock = None if path is None else _file_lock(path)
    return MetricsOutput(path, settings.pushgateway, stderr, lock)


def _file_lock(path: str) -> IO[str]:
    """An exclusive flock on .NAME.lock beside the file, held until the run ends: two runs
    writing one file would replace each other's figures. The OS releases it however the run
    dies; node_exporter reads only *.prom files, so the lock file is never collected."""
    directory, name = os.path.split(os.path.realpath(path))
    lock_path = os.path.join(directory, f".{name}.lock")
    try:
        handle = open(lock_path, "a+")  # noqa: SIM115 (closed by MetricsOutput.release)
    except OSError as exc:
        raise OptionValueError(
            "--metrics-file", path, f"cannot create {lock_path} ({exc.strerror})"
        ) from exc
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another run"
        handle.close()
        raise OptionValueError(
            "--metrics-file",
            path,
            f"another run writes its metrics there ({holder}); give each run a file of its own",
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    return handle


async def published(output: MetricsOutput | None, run: Awaitable[int]) -> int:
    """`run`'s exit code; the metrics' last write carries it, or the code of what ended it."""
    if output is None:
        return await run
    try:
        code = await run
    except BaseException as exc:
        output.finish(code_of_exception(exc))
        raise
    output.finish(code)
    return code


class MetricsOutput:
    """The metrics of one run: `start` once it is assembled, `finish` with its exit code."""

    __slots__ = (
        "_file_closed",
        "_file_lock",
        "_labels",
        "_last_success_s",
        "_latest",
        "_lock",
        "_path",
        "_push_url",
        "_snapshot",
        "_start_s",
        "_stderr",
        "_task",
        "_thread",
        "_wake",
        "_warned",
    )

    def __init__(
        self,
        path: str | None,
        push_url: str | None,
        stderr: TextIO,
        lock: IO[str] | None = None,
    ) -> None:
        self._path = path
        self._lock = lock  # held from the start check to the last write
        self._push_url = push_url
        self._stderr = stderr
        self._labels: tuple[tuple[str, str], ...] = ()
        self._snapshot: Callable[[], RunSnapshot] | None = None
        self._start_s = 0.0
        self._last_success_s: float | None = None
        self._latest: LatestFigures | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._file_lock = threading.Lock()
        self._file_closed = False
        self._warned: set[str] = set()  # "file", "push": each failure is said once

    def start(self, snapshot: Callable[[], RunSnapshot], labels: dict[str, str]) -> None:
        """Begin: the first write now, then one every INTERVAL_S (on the loop)."""
        from sms_blaster.run_metrics import LatestFigures

        self._snapshot = snapshot
        self._labels = tuple(labels.items())
        self._start_s = time.time()
        self._last_success_s = self._earlier_success(labels.get("campaign", ""))
        self._latest = LatestFigures(self._figures(None))
        self._thread = threading.Thread(
            target=self._publish_forever, name="sms-blaster-metrics", daemon=True
        )
        self._thread.start()
        self._wake.set()
        self._task = asyncio.get_running_loop().create_task(self._every_interval())

    def finish(self, exit_code: int) -> None:
        """The last write, with `exit_code`, and the last push (waited for PUSH_TIMEOUT_S at
        most), then the file's lock let go. No write when the run never started: it sent
        nothing."""
        try:
            self._last_round(exit_code)
        finally:
            if self._lock is not None:
                self._lock.close()  # closing releases the flock
                self._lock = None

    def _last_round(self, exit_code: int) -> None:
        latest, thread = self._latest, self._thread
        if latest is None or thread is None:
            return
        if self._task is not None:
            self._task.cancel()
        if exit_code == 0:
            self._last_success_s = time.time()
        latest.figures = self._figures(exit_code)
        if self._path is not None:
            with self._file_lock:  # no write of the thread's lands after this one
                self._write_file(latest)
                self._file_closed = True
        self._latest = None  # the thread's next round is its last
        self._wake.set()
        thread.join(PUSH_TIMEOUT_S)

    async def _every_interval(self) -> None:
        while True:
            await asyncio.sleep(INTERVAL_S)
            if self._latest is not None:
                self._latest.figures = self._figures(None)
                self._wake.set()

    def _figures(self, exit_code: int | None) -> RunFigures:
        from sms_blaster.run_metrics import RunFigures, latency_shape

        assert self._snapshot is not None
        snapshot = self._snapshot()
        return RunFigures(
            labels=self._labels,
            snapshot=snapshot,
            latency=latency_shape(snapshot.latency),
            start_s=self._start_s,
            exit_code=exit_code,
            last_success_s=self._last_success_s,
        )

    def _earlier_success(self, campaign: str) -> float | None:
        """The last success the file holds from an earlier run: a failed run keeps it."""
        if self._path is None:
            return None  # a gateway keeps it itself: a failed run's push leaves the name out
        from sms_blaster.run_metrics import last_success_in

        try:
            with open(self._path, encoding="utf-8", errors="replace") as previous:
                return last_success_in(previous.read(), campaign)
        except OSError:
            return None

    def _publish_forever(self) -> None:
        """The thread: at each wake, the file then the gateway, with the newest figures."""
        latest = self._latest
        assert latest is not None
        while True:
            self._wake.wait()
            self._wake.clear()
            last = self._latest is None  # finish() has written the file and set the figures
            if self._path is not None:
                with self._file_lock:
                    if not self._file_closed:
                        self._write_file(latest)
            if self._push_url is not None:
                self._push(latest)
            if last:
                return

    def _write_file(self, latest: LatestFigures) -> None:
        from prometheus_client import write_to_textfile

        assert self._path is not None
        try:
            write_to_textfile(self._path, latest.registry())
        except Exception as exc:  # any failure: the file is tried again at the next round
            self._warn_once("file", f"cannot write --metrics-file {self._path} ({exc})")

    def _push(self, latest: LatestFigures) -> None:
        from prometheus_client import pushadd_to_gateway

        assert self._push_url is not None
        address, handler = _gateway_and_handler(self._push_url)
        grouping = {name: value for name, value in self._labels}
        try:
            # POST: replaces the names pushed, so a failed run, which pushes no last success,
            # leaves an earlier run's in the gateway.
            pushadd_to_gateway(
                address,
                JOB,
                latest.registry(grouped=True),
                grouping,
                timeout=PUSH_TIMEOUT_S,
                handler=handler,
            )
        except Exception as exc:  # any failure of a push leaves the run going
            self._warn_once(
                "push",
                f"cannot push metrics to --pushgateway {mask_password(self._push_url)} ({exc})",
            )

    def _warn_once(self, what: str, text: str) -> None:
        if what in self._warned:
            return
        self._warned.add(what)
        with contextlib.suppress(OSError, ValueError):
            say(self._stderr, f"sms-blaster: {text}; the run goes on", Level.WARNING, flush=True)


def _gateway_and_handler(url: str) -> tuple[str, Callable[..., Callable[[], None]]]:
    """`url` without its user and password, and the handler that sends them as Basic auth
    (prometheus_client would take them for part of the host)."""
    from prometheus_client.exposition import basic_auth_handler, default_handler

    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, default_handler
    username, password = unquote(parts.username or ""), unquote(parts.password or "")
    address = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))

    def handler(**request: Any) -> Callable[[], None]:
        return basic_auth_handler(username=username, password=password, **request)

    return address, handler
