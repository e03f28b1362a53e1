"""A Lua script called on a connection of its own: the fleet-wide quota reserve, made on every answer.

redis-py's command path (``Script.__call__`` → ``execute_command`` → retry → the pool's lock, both
ways) costs about a third of such a call: 448 K instructions against 314 K when the command is sent
on a connection kept for it (callgrind, redis-py 8.1; docs/benchmarks.md). A :class:`ScriptLine`
keeps one connection of the client's pool and uses only public redis-py methods
(``ConnectionPool.get_connection`` and ``release``, ``Connection.send_command``, ``read_response``
and ``disconnect``), checked with redis-py 8.1.0. It does what the client would do: calls go one at
a time; a failed or cancelled call disconnects the connection (a reply may still be on its way); a
kept connection found dead is replaced and the call tried once more (the client's one retry: a
restarted Redis); a script Redis no longer has is sent whole (EVAL), which loads it again.
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
    """``await line(keys, args)``: the reply of ``script``, as ``await script(keys, args)`` gives it."""

    def __init__(self, redis: Redis, script: AsyncScript) -> None:
        self._pool = redis.connection_pool
        self._script = script
        self._connection: AbstractConnection | None = None
        self._lock = anyio.Lock()

    async def __call__(self, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        async with self._lock:
            kept = self._connection is not None
            try:
                return await self._call(keys, args)
            except (ConnectionError, OSError):
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
        connection = self._connection
        if connection is None:
            connection = self._connection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        await connection.send_command("EVALSHA", self._script.sha, len(keys), *keys, *args)
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
                await self._pool.release(connection)
