"""Fixtures shared by every test module."""

from tests.redis_helpers import redis_url, restartable_redis

__all__ = ["redis_url", "restartable_redis"]
