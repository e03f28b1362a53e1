"""The Redis client of a fleet node: short timeouts (a node must notice an unreachable Redis well
within its lease), one immediate retry (a pooled connection that died with a restarted Redis)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

# What a node survives as "Redis is unreachable": it keeps its bots until their leases run out.
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, OSError)


def open_redis(url: str, timeout: float) -> Redis:
    """A client for ``url`` whose every attempt (connecting, or one command) gives up after ``timeout`` s."""
    return Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 1)
    )


def describe(exc: BaseException) -> str:
    """What went wrong with Redis, for a log line."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def shown(url: str) -> str:
    """``url`` without its password, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
