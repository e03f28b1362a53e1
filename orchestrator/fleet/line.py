"""A Lua script called on a connection of its own: the fleet-wide quota reserve, made on every answer.

Through the client, such a call costs a node about as much CPU as the rest of its fleet work per
answer, and most of it is redis-py's own path rather than the round trip: ``Script.__call__`` →
``execute_command`` → retry → the pool's lock both ways; a command packed argument by argument; and
with the client's ``socket_timeout``, every send in a task of its own (``asyncio.wait_for``: two more
turns of the event loop). A :class:`ScriptLine` keeps one connection of the client's pool for its
script, packs the command in one go, and bounds each call by the client's timeout itself (one cancel
scope) with the connection's own per-send timeout off while it holds it. With a settle it carries, a
reserve went from 521 K to 415 K instructions and from ~0.30 to ~0.24 ms of CPU (docs/benchmarks.md).

It uses redis-py's public API only (``ConnectionPool.get_connection``, ``release`` and
``connection_kwargs``; ``Connection.send_packed_command``, ``send_command``, ``read_response``,
``disconnect`` and its ``socket_timeout`` setting), checked with redis-py 8.1.0 and tested at both ends
of the pinned range (scripts/compat). It does what the client would do: calls go one at a time; a
failed, timed-out or cancelled call disconnects (a reply may still be on its way); a kept connection
found dead is replaced and the call tried once more (the client's one retry: a restarted Redis); a
script Redis no longer has is sent whole (EVAL), which loads it again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError, NoScriptError


class ScriptLine:
    """``await line(keys, args)``: the reply of ``script``, as ``await script(keys, args)`` gives it.
    Keys and arguments are text or numbers (as the fleet's scripts take)."""

    def __init__(self, redis: Redis, script: AsyncScript) -> None:
        self._pool = redis.connection_pool
        self._timeout: float | None = self._pool.connection_kwargs.get("socket_timeout")
        self._script = script
        self._sha = script.sha.encode()
        self._connection: AbstractConnection | None = None
        self._lock = anyio.Lock(fast_acquire=True)  # the call that follows yields; no extra loop turn before it

    async def __call__(self, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        async with self._lock:
            kept = self._connection is not None
            try:
                return await self._call(keys, args)
            except (ConnectionError, OSError):  # TimeoutError is an OSError
                await self._drop()
                if not kept:
                    raise
            except BaseException:
                await self._drop()
                raise
            try:  # the kept connection had died (a restarted Redis): once more on a new one
                return await self._call(keys, args)
            except BaseException:
                await self._drop()
                raise

    async def _call(self, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        with anyio.fail_after(self._timeout):
            connection = self._connection
            if connection is None:
                connection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
                connection.socket_timeout = None  # bounded here, per call, while this line holds it
                self._connection = connection
            command = pack(b"EVALSHA", self._sha, len(keys), *keys, *args)
            await connection.send_packed_command(command, check_health=False)
            try:
                return await connection.read_response()
            except NoScriptError:
                await connection.send_command("EVAL", self._script.script, len(keys), *keys, *args)
                return await connection.read_response()

    async def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with anyio.CancelScope(shield=True):
                await connection.disconnect()
                connection.socket_timeout = self._timeout  # the pool's again, as the client made it
                await self._pool.release(connection)


def pack(*parts: bytes | str | int | float) -> bytes:
    """A command in Redis' wire format (RESP): an array of bulk strings, text as UTF-8, numbers as
    Python writes them (as redis-py's encoder does)."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part if isinstance(part, bytes) else str(part).encode()
        out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)
