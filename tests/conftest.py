"""Fixtures shared by every test module."""

import asyncio
from collections.abc import Mapping

import pytest
import uvloop
from pytest_asyncio.plugin import LoopFactory

from tests.redis_helpers import redis_url, restartable_redis

__all__ = ["redis_url", "restartable_redis"]

# Runs use uvloop; the transports' tests run on it as well as on asyncio's own loop.
_BOTH_LOOPS: Mapping[str, LoopFactory] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}
_ASYNCIO_LOOP: Mapping[str, LoopFactory] = {"asyncio": asyncio.new_event_loop}


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, LoopFactory]:
    """The event loops an async test runs on."""
    return _BOTH_LOOPS if item.path.name == "test_transport_conformance.py" else _ASYNCIO_LOOP
