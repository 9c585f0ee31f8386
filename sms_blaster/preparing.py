"""Rows read and prepared in a second process, handed to the sender in batches.

Reading and preparing a row (its number, text, encoding and parts, the duplicate check, its
fingerprint) costs about a fifth of what sending it does on the event loop; in a process of its
own it runs on the other core. The child is forked once the run is assembled: it inherits the
opened input (its header already read and checked, its buffered bytes, stdin's descriptor) and the
preparer (the opt-out list included), so nothing is reopened or imported again and it starts in
about a millisecond; small runs take the same path.

The child reads the input to its end and writes each batch as one pickled frame to a Unix socket
(`_channel`). It runs at most a few batches ahead: its writes block once the socket's buffers are
full and the reader here holds a bounded buffer. Everything that needs the journal (rows settled
earlier) and every stop stays with the parent, which kills the child as soon as it wants no more
rows: what the child prepared beyond the batches handed out was never read by the run, so it has
no records and is never sent.
The child ignores the stop signals (the parent's to handle) and dies with the parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import copyreg
import dataclasses
import fcntl
import functools
import gc
import io
import operator
import os
import pickle
import signal
import socket
import struct
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import NoReturn, Protocol

from sms_blaster.errors import InputUnreadable, SmsBlasterError
from sms_blaster.inputs import RowSource, read_batches
from sms_blaster.models import ErrorKind, InputRow, Message, Record, RowError
from sms_blaster.stopsignals import STOP_SIGNALS

# A batch is unpickled on the event loop in one go: 256 rows hold it for about half a millisecond.
BATCH_ROWS = 256
# The reader stops reading the socket once it holds twice this: with the socket's own 64 KiB
# each way, the child is then a few batches ahead at most (a batch of 256 rows pickles to about
# 25 KiB).
_READ_LIMIT_BYTES = 64 * 1024
_FRAME = struct.Struct("!I")  # the size of the pickle that follows
_PR_SET_PDEATHSIG = 1


class PreparingFailed(InputUnreadable):
    """The preparing process ended without finishing the input (killed, or out of memory)."""


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    """Consecutive rows prepared: each row's message or record, and its number as given (what a
    `stopped` record of the row shows, as for a row never prepared)."""

    items: Sequence[Message | Record]
    raw_tos: Sequence[str]


class Preparing(Protocol):
    def prepare(self, row: InputRow) -> Message | Record: ...

    def client_ref(self, line: int) -> str: ...

    def raw_to(self, row: InputRow) -> str: ...


def prepare_row(preparer: Preparing, row: InputRow) -> Message | Record:
    """The row's message, or the record of a row that will not be sent (a row that breaks
    preparation is a record with a reason, never a crash); either carries the row's
    fingerprint."""
    try:
        item = preparer.prepare(row)
    except Exception as exc:
        error = RowError(
            ErrorKind.INVALID_INPUT, "unreadable_row", f"cannot prepare the row: {exc!r}"
        )
        return Record.unsendable(row, preparer.raw_to(row), preparer.client_ref(row.line), error)
    return dataclasses.replace(item, fingerprint=row.fingerprint())


def prepare_batch(preparer: Preparing, rows: Sequence[InputRow]) -> PreparedBatch:
    return PreparedBatch(
        [prepare_row(preparer, row) for row in rows], [preparer.raw_to(row) for row in rows]
    )


class PreparedOnLoop:
    """Rows prepared on the event loop as their batches come, with no second process: for rows
    already in memory (a benchmark's, a test's)."""

    __slots__ = ("_batches", "_preparer")

    def __init__(self, batches: AsyncIterator[list[InputRow]], preparer: Preparing) -> None:
        self._batches = batches
        self._preparer = preparer

    def __aiter__(self) -> PreparedOnLoop:
        return self

    async def __anext__(self) -> PreparedBatch:
        return prepare_batch(self._preparer, await anext(self._batches))

    def close(self) -> None:
        return None  # nothing runs ahead


def _channel() -> tuple[socket.socket, int]:
    """The batches' way from the child: a connected pair of Unix stream sockets, the parent's
    end as a socket and the child's as a descriptor.

    Sockets, not a pipe: the event loop's transport closes a socket once, where uvloop closed a
    pipe's descriptor and then the file object holding it, a second close that could take
    the descriptor another thread had just opened (the journal's WAL). Both ends are above
    stderr's descriptor: with stdin closed the pair would take 0, which the event loop (uvloop)
    and the child's clean-up take for the standard stream. Its buffers are a pipe's size, so the
    child runs as far ahead as it did over a pipe."""
    pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ends: list[int] = []
    try:
        for end in pair:
            ends.append(fcntl.fcntl(end.fileno(), fcntl.F_DUPFD_CLOEXEC, 3))
        parent_end = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=ends[0])
    except BaseException:
        for fd in ends:
            os.close(fd)
        raise
    finally:
        for end in pair:
            end.close()
    parent_end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _BUFFER_BYTES)
    child_end = socket.socket(fileno=ends[1])
    child_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _BUFFER_BYTES)
    return parent_end, child_end.detach()


_BUFFER_BYTES = 64 * 1024  # each way, a pipe's size


class PreparingProcess:
    """The child that reads and prepares the rows, as an async iterator of `PreparedBatch`es in
    input order. An exception the child's reading raised is raised here. `close` kills the child
    and may be called at any time, more than once."""

    __slots__ = ("_ended", "_pid", "_reader", "_transport")

    def __init__(self, pid: int, reader: asyncio.StreamReader, transport: asyncio.BaseTransport):
        self._pid = pid
        self._reader = reader
        self._transport = transport
        self._ended = False

    @classmethod
    async def start(
        cls, source: RowSource, preparer: Preparing, batch_rows: int = BATCH_ROWS
    ) -> PreparingProcess:
        """Fork the child; from then on `source` belongs to it (the parent must not read it)."""
        try:
            parent_end, write_fd = _channel()
        except OSError as exc:
            raise PreparingFailed(
                f"cannot start the process preparing rows ({exc.strerror or exc}); "
                "raise the limit on open files (ulimit -n) or free memory"
            ) from None
        parent = os.getpid()
        # A stop signal landing between the fork and the child's own dispositions would run the
        # parent's handler in the child, which writes to the parent's wakeup pipe.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            try:
                pid = os.fork()
            except OSError as exc:
                raise PreparingFailed(
                    f"cannot start the process preparing rows ({exc.strerror or exc}); "
                    "free memory or raise the limit on processes (ulimit -u)"
                ) from None
            if pid == 0:
                _child(source, preparer, batch_rows, write_fd,
                       read_fd=parent_end.fileno(), parent=parent)  # fmt: skip
        except BaseException:
            parent_end.close()
            os.close(write_fd)
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        os.close(write_fd)
        try:
            reader = asyncio.StreamReader(limit=_READ_LIMIT_BYTES)
            loop = asyncio.get_running_loop()
            transport, _ = await loop.connect_accepted_socket(
                lambda: asyncio.StreamReaderProtocol(reader), parent_end
            )
        except BaseException:
            _kill(pid)
            parent_end.close()
            raise
        return cls(pid, reader, transport)

    @property
    def pid(self) -> int:
        """The child's process id; 0 once it has ended and been reaped."""
        return self._pid

    def __aiter__(self) -> PreparingProcess:
        return self

    async def __anext__(self) -> PreparedBatch:
        if self._ended:
            raise StopAsyncIteration
        try:
            (size,) = _FRAME.unpack(await self._reader.readexactly(_FRAME.size))
            item = pickle.loads(await self._reader.readexactly(size))
        except asyncio.IncompleteReadError:
            self._ended = True
            raise PreparingFailed(f"the process preparing rows {self._fate()}") from None
        if isinstance(item, PreparedBatch):
            return item
        self._ended = True
        if item is None:  # the end of the input
            raise StopAsyncIteration
        raise item

    def close(self) -> None:
        """Kill the child at once and reap it; the socket is closed."""
        self._ended = True
        self._transport.close()
        if self._pid:
            _kill(self._pid)
            self._pid = 0

    def _fate(self) -> str:
        with contextlib.suppress(ChildProcessError):
            _, status = os.waitpid(self._pid, 0)
            self._pid = 0
            if os.WIFSIGNALED(status):
                return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
            return f"ended with status {os.waitstatus_to_exitcode(status)} before the input did"
        return "ended before the input did"


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)  # at once: the process was killed


# --- the child -------------------------------------------------------------------------------


def _child(
    source: RowSource,
    preparer: Preparing,
    batch_rows: int,
    write_fd: int,
    *,
    read_fd: int,
    parent: int,
) -> NoReturn:
    """Read and prepare `source` into `write_fd`; never returns. The exit skips every handler
    and buffer flush inherited from the parent (its records, its stdout)."""
    code = 0
    try:
        os.close(read_fd)
        _leave_signals_to(parent)
        _keep_only(source.fileno(), write_fd)
        gc.freeze()  # the inherited objects: collections then neither scan nor copy them
        send = functools.partial(_send, write_fd, preparer, source.name)
        read_batches(source, batch_rows, send)
    except BaseException:  # the parent gone (a broken pipe), or a pickling failure
        code = 1
    finally:
        os._exit(code)


def _leave_signals_to(parent: int) -> None:
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.set_wakeup_fd(-1)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    # Killed with the parent, even while blocked reading stdin, which no broken pipe would wake.
    import ctypes

    with contextlib.suppress(AttributeError, OSError):  # not Linux: the broken pipe must do
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


def _keep_only(*fds: int) -> None:
    """Close every descriptor but `fds` and stdin: a socket or output file the child held open
    would keep its peer or reader waiting after the parent closed it."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    low = 3
    for fd in sorted({fd for fd in fds if fd >= low}):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))


_MESSAGE_FIELDS = operator.attrgetter(*(field.name for field in dataclasses.fields(Message)))


def _message_by_fields(message: Message) -> tuple[type[Message], tuple[object, ...]]:
    # Unpickled as one call of the class: a frozen dataclass's own unpickling sets each field
    # through a loop in Python, twice as slow, and it runs on the sender's event loop.
    return Message, _MESSAGE_FIELDS(message)


_DISPATCH = {**copyreg.dispatch_table, Message: _message_by_fields}


def _pickled(payload: PreparedBatch | BaseException | None) -> bytes:
    buffer = io.BytesIO()
    buffer.write(bytes(_FRAME.size))  # the frame's size, filled in below
    pickler = pickle.Pickler(buffer, pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = _DISPATCH
    pickler.dump(payload)
    data = buffer.getbuffer()
    _FRAME.pack_into(data, 0, len(data) - _FRAME.size)
    return bytes(data)


def _send(
    write_fd: int, preparer: Preparing, name: str, item: list[InputRow] | BaseException | None
) -> None:
    payload: PreparedBatch | BaseException | None
    if isinstance(item, list):
        payload = prepare_batch(preparer, item)
    elif isinstance(item, OSError):
        payload = PreparingFailed(f"{name}: cannot read on ({item.strerror or item})")
    elif isinstance(item, Exception) and not isinstance(item, SmsBlasterError):
        payload = PreparingFailed(f"{name}: reading the rows failed ({item!r})")
    else:
        payload = item
    try:
        frame = _pickled(payload)
    except Exception:  # an exception that does not pickle: its text must do
        frame = _pickled(PreparingFailed(f"{name}: reading the rows failed ({payload!r})"))
    view = memoryview(frame)
    while view:
        view = view[os.write(write_fd, view) :]
