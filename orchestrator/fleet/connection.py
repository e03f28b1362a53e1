"""The Redis client of a fleet node: short timeouts (a node must notice an unreachable Redis well
within its lease), one immediate retry (a pooled connection that died with a restarted Redis)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError

# What a node survives as "Redis is unreachable": it keeps its bots until their leases run out.
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, OSError)
RECHECK = 2.0  # seconds between tries of an unreachable Redis; each try may wait the client's timeout


def open_redis(url: str, timeout: float) -> Redis:
    """A client for ``url`` whose every attempt (connecting, or one command) gives up after ``timeout`` s."""
    return Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 1))


ScriptCall = tuple[AsyncScript, Sequence[Any], Sequence[Any]]  # a script, its keys, its arguments


async def run_scripts(redis: Redis, calls: Sequence[ScriptCall]) -> list[Any]:
    """Lua script calls in one round trip, their replies in order. redis-py's own pipelining of scripts
    asks Redis ``SCRIPT EXISTS`` first, a second round trip every time; here each goes as EVALSHA. A
    Redis that has lost its scripts (restarted) gets them loaded and the calls again: a call whose
    script was there then runs twice, which the fleet's scripts allow (each checks before it writes)."""
    try:
        return await _evalsha(redis, calls)
    except NoScriptError:
        for script in {id(call[0]): call[0] for call in calls}.values():
            await redis.script_load(script.script)
        return await _evalsha(redis, calls)


async def _evalsha(redis: Redis, calls: Sequence[ScriptCall]) -> list[Any]:
    pipe = redis.pipeline(transaction=False)
    for script, keys, args in calls:
        pipe.evalsha(script.sha, len(keys), *keys, *args)
    return list(await pipe.execute())


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


class RedisOutage:
    """For a part of a node that carries on by itself while Redis does not answer (quotas, claims):
    whether to try Redis now (again :data:`RECHECK` seconds after a failure, so an outage does not
    cost every answer the client's timeout), and one log line when an outage begins and one when it ends."""

    def __init__(self, clock: Callable[[], float], log: logging.Logger, *, lost: str, back: str) -> None:
        self._clock = clock  # monotonic
        self._log = log
        self._lost = lost  # "... (%s) ...": what the node does meanwhile, with the error
        self._back = back
        self._retry_at = 0.0
        self.error: str | None = None  # why Redis could not be used last, None while it answers

    def waiting(self) -> bool:
        """True while Redis failed less than :data:`RECHECK` seconds ago: do not try it yet."""
        return self._clock() < self._retry_at

    def failed(self, exc: BaseException) -> None:
        self._retry_at = self._clock() + RECHECK
        if self.error is None:
            self._log.warning(self._lost, describe(exc))
        self.error = describe(exc)

    def answered(self) -> None:
        if self.error is not None:
            self._log.info(self._back)
            self.error = None
