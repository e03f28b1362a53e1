"""The two stores behind one interface, for the tests that run against both: how to open each, and
how to look at (or tamper with) what it has on disk, in each database's own SQL."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from orchestrator.memory import PostgresStore, SQLiteStore, Store

Row = tuple[Any, ...]


def with_search_path(dsn: str, schema: str) -> str:
    """``dsn`` with its tables in ``schema`` (asyncpg passes unknown URL parameters as server settings)."""
    parts = urlsplit(dsn)
    query = f"{parts.query}&search_path={schema}" if parts.query else f"search_path={schema}"
    return urlunsplit(parts._replace(query=query))


class StoreKind(Protocol):
    name: str
    database: str  # what bots.yaml says under `database:`

    def open(self, **options: Any) -> contextlib.AbstractAsyncContextManager[Store]: ...

    async def turns(self) -> list[Row]:
        """Every turn on disk in write order: (bot, channel, user, role, content)."""
        ...

    async def usage(self) -> list[Row]:
        """Every daily usage row: (day, bot, user, tokens, usd), sorted."""
        ...

    async def backdate(self, bot: str, seconds: float) -> None:
        """Make ``bot``'s turns on disk ``seconds`` older."""
        ...

    async def refuse_answers(self, refuse: bool) -> None:
        """Make the database refuse (or accept again) every assistant turn, as a failing database would."""
        ...


class SQLiteKind:
    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.database = str(path)

    @contextlib.asynccontextmanager
    async def open(self, **options: Any) -> AsyncIterator[Store]:
        store = SQLiteStore(self.path, **options)
        try:
            yield store
        finally:
            store.close()

    def _query(self, sql: str, *args: object) -> list[Row]:
        with contextlib.closing(sqlite3.connect(self.path)) as db, db:
            return db.execute(sql, args).fetchall()

    async def turns(self) -> list[Row]:
        return self._query("SELECT bot, channel, user, role, content FROM turns ORDER BY id")

    async def usage(self) -> list[Row]:
        return self._query("SELECT day, bot, user, tokens, usd FROM daily_usage ORDER BY day, bot, user")

    async def backdate(self, bot: str, seconds: float) -> None:
        self._query("UPDATE turns SET created = created - ? WHERE bot = ?", seconds, bot)

    async def refuse_answers(self, refuse: bool) -> None:
        self._query(
            "CREATE TRIGGER refuse BEFORE INSERT ON turns WHEN NEW.role = 'assistant' "
            "BEGIN SELECT RAISE(ABORT, 'refused'); END"
            if refuse else "DROP TRIGGER refuse"
        )  # fmt: skip


class PostgresKind:
    name = "postgres"

    def __init__(self, url: str) -> None:
        self.database = url

    def open(self, **options: Any) -> contextlib.AbstractAsyncContextManager[Store]:
        return PostgresStore.open(self.database, **options)

    async def _query(self, sql: str, *args: object) -> list[Row]:
        conn = await asyncpg.connect(self.database)
        try:
            return [tuple(row) for row in await conn.fetch(sql, *args)]
        finally:
            await conn.close()

    async def turns(self) -> list[Row]:
        return await self._query("SELECT bot, channel, user_id, role, content FROM turns ORDER BY id")

    async def usage(self) -> list[Row]:
        return await self._query("SELECT day, bot, user_id, tokens, usd FROM daily_usage ORDER BY day, bot, user_id")

    async def backdate(self, bot: str, seconds: float) -> None:
        await self._query("UPDATE turns SET created = created - $1 WHERE bot = $2", seconds, bot)

    async def refuse_answers(self, refuse: bool) -> None:
        if refuse:
            await self._query(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE 'refused'; END $$"
            )
            await self._query(
                "CREATE TRIGGER refuse BEFORE INSERT ON turns FOR EACH ROW WHEN (NEW.role = 'assistant') "
                "EXECUTE FUNCTION refuse()"
            )
        else:
            await self._query("DROP FUNCTION refuse CASCADE")
