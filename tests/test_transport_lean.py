"""The lean transport's connection between taking a request and writing it: the request waits
for the next turn of the loop, and whatever ends the connection meanwhile leaves it unwritten
(safe to send again), never ambiguous."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from sms_blaster.transport.connection import NOT_WRITTEN, Connection

REQUEST = b"POST /sms/json HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"


@dataclass
class Pair:
    connection: Connection
    server: socket.socket  # the other end, blocking


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    """A connection over a real socket pair, its other end held by the test."""
    ours, theirs = socket.socketpair()
    connection = Connection(lambda c: None, lambda c: None, lambda: 0.0, 4.0)
    await asyncio.get_running_loop().connect_accepted_socket(lambda: connection, ours)
    yield Pair(connection, theirs)
    connection.abort()
    theirs.close()


def waiting(server: socket.socket) -> bytes:
    """What has reached the other end so far (a write to a socket pair arrives at once)."""
    server.setblocking(False)
    try:
        return server.recv(65536)
    except (BlockingIOError, ConnectionResetError):
        return b""


async def test_a_request_is_written_only_when_its_turn_comes(pair: Pair) -> None:
    """Taken, the request is not on the wire; written, it is, whole."""
    waiter = pair.connection.start(REQUEST, deadline=1e9)
    assert waiter is not None
    taken = waiting(pair.server)
    pair.connection.write()
    assert (taken, waiting(pair.server)) == (b"", REQUEST)


async def test_a_close_before_the_write_leaves_the_request_unwritten(pair: Pair) -> None:
    """The server closes between the take and the write: the answer is NOT_WRITTEN, and no byte
    of the request reaches the server."""
    waiter = pair.connection.start(REQUEST, deadline=1e9)
    assert waiter is not None
    pair.server.shutdown(socket.SHUT_WR)
    assert await waiter is NOT_WRITTEN
    pair.connection.write()  # its turn comes after all: nothing to write
    assert waiting(pair.server) == b""


async def test_bytes_before_the_write_leave_the_request_unwritten(pair: Pair) -> None:
    """An answer nobody asked for arrives before the write: the request is NOT_WRITTEN, the
    connection dropped, and no byte of the request reaches the server."""
    waiter = pair.connection.start(REQUEST, deadline=1e9)
    assert waiter is not None
    pair.server.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert await waiter is NOT_WRITTEN
    assert pair.connection.closed
    assert waiting(pair.server) == b""


async def test_a_timeout_before_the_write_leaves_the_request_unwritten(pair: Pair) -> None:
    """The sweep expires a request whose write has not come yet: NOT_WRITTEN, not a timeout."""
    waiter = pair.connection.start(REQUEST, deadline=0.0)
    assert waiter is not None
    pair.connection.expire()
    assert await waiter is NOT_WRITTEN
    assert waiting(pair.server) == b""
