"""Opening the store bots.yaml names: SQLite for a file path, PostgreSQL for a postgresql:// URL."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import anyio

from ..config import PostgresURL
from .postgres import PostgresStore
from .sqlite import SQLiteStore
from .store import NoDatabase, Store


@contextlib.asynccontextmanager
async def open_store(database: Path | PostgresURL, *, create: bool = True) -> AsyncIterator[Store]:
    """The store of ``database`` until the block ends, then everything pending is written and it is closed.

    ``create`` (``orchestrator run``) makes the database or its tables if need be, and a PostgreSQL
    that does not answer only means no memory until it does. Without it (the commands that read or
    delete) the database must exist (:class:`NoDatabase`) and answer now (:class:`StoreUnavailable`).
    """
    if isinstance(database, PostgresURL):
        async with PostgresStore.open(database, create=create) as store:
            yield store
        return
    if not create and not await anyio.Path(database).is_file():
        raise NoDatabase(f"no database at {database}: nothing was recorded yet, or 'database' points elsewhere")
    sqlite = SQLiteStore(database)
    try:
        yield sqlite
    finally:
        sqlite.close()
