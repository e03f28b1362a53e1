"""The PostgreSQL implementation of :class:`~orchestrator.memory.store.Store`: memory that the
processes of a fleet share.

``async with PostgresStore.open(url) as store`` owns an asyncpg pool and the store's writer task.
It behaves as :class:`~orchestrator.memory.sqlite.SQLiteStore` does:

- recent histories are cached (:class:`~orchestrator.memory.recent.HistoryCache`); an exchange is
  in the cache at once;
- writes are behind and grouped: ``append_exchange``, ``add_daily_usage`` and ``add_daily_spend``
  only update memory; the writer writes everything pending ``flush_interval`` (50 ms) after the
  first pending item, in one statement (:data:`_WRITE`: atomic, one round trip). Measured on
  loopback: a batch of 100 exchanges commits in ~5 ms (~20 000 exchanges/s), where one INSERT
  transaction per exchange took 1.2 ms alone and, 500 at once, 134 ms each waiting for a pooled
  connection (~2 000/s). One statement instead of a transaction of two ``executemany`` costs a batch
  of 5 exchanges 0.35 ms of CPU instead of 0.64 ms, and 0.23 ms without the pool's reset query;
- reads, resets, pruning and data requests take the store's lock and write what is pending first,
  so they see (or delete) it.

PostgreSQL down: the store opens anyway and creates or migrates the tables (``schema_version``) on
the first connection that works. Reads fail with :class:`StoreUnavailable` within ``connect_timeout`` (2 s),
so an answer goes on without memory instead of hanging; writes stay in memory and are retried,
waiting up to a second between attempts, with one warning when writing fails and one line when it
works again. A hard kill loses what was pending (at most ~50 ms of exchanges while the database
answers).

The cache holds what this process wrote and read: each conversation must be answered by one process
at a time (a fleet's leases make sure of it), and a process that takes over bots another process ran
calls :meth:`PostgresStore.drop_cached` for them (the supervisor's ``start_bot`` does).

The daily totals are read synchronously (:class:`~orchestrator.llm.quota.QuotaBook`,
:class:`~orchestrator.llm.spend.SpendBook`). From a worker thread ``load_daily_*`` queries the
database (every process's usage). On the event loop's thread a query would deadlock, so there they
answer from what this process knows: the day's totals as last read (today's when the store opened)
plus what it added since.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
import asyncpg
from pydantic import SecretStr

from ..config import PostgresURL
from ..discord_io.text import replace_lone_surrogates
from .recent import HistoryCache, PendingExchange, Totals, UsageKey, add_usage
from .store import (
    ConversationKey,
    DailyUsage,
    Forgotten,
    NoDatabase,
    StoredTurn,
    StoreUnavailable,
    Turn,
    UserData,
)

log = logging.getLogger(__name__)

TIMEOUT = 2.0  # seconds to get a connection (connecting included), and for a history read
COMMAND_TIMEOUT = 60.0  # one statement: a batch of writes, a prune
CLOSE_TIMEOUT = 5.0  # the last write on close, then closing the pool
POOL_SIZE = 4  # the writer, and reads of conversations not in the cache
_FIRST_RETRY_DELAY, _MAX_RETRY_DELAY = 0.1, 1.0
_MIGRATION_LOCK = 7_301_946_412_117_402_711  # pg_advisory_xact_lock key: processes migrate one at a time
_DAYS_KEPT = 2  # daily totals known on the event loop: today's and yesterday's
# What a database that is down, restarting, unreachable or refusing looks like through asyncpg (a
# connection the server closed may also leave asyncpg's protocol in a state it calls internal).
_UNAVAILABLE = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)

# Migration n (1-based) takes the schema from version n-1 to n; a database at version 0 is new.
_MIGRATIONS = (
    """
    CREATE TABLE IF NOT EXISTS turns (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        bot TEXT NOT NULL,
        channel BIGINT NOT NULL,
        user_id BIGINT NOT NULL,
        role TEXT NOT NULL,
        content TEXT NOT NULL,
        created DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX IF NOT EXISTS turns_by_conversation ON turns (bot, channel, user_id, id);
    CREATE INDEX IF NOT EXISTS turns_by_user ON turns (user_id);
    CREATE TABLE IF NOT EXISTS daily_usage (
        day TEXT NOT NULL,
        bot TEXT NOT NULL,
        user_id TEXT NOT NULL,
        tokens BIGINT NOT NULL,
        usd DOUBLE PRECISION NOT NULL DEFAULT 0,
        PRIMARY KEY (day, bot, user_id)
    );
    """,
    # 2: who said each user turn, and the Discord messages of each turn (channel context dedupes by them)
    """
    ALTER TABLE turns ADD COLUMN IF NOT EXISTS speaker TEXT NOT NULL DEFAULT '';
    ALTER TABLE turns ADD COLUMN IF NOT EXISTS message_ids BIGINT[] NOT NULL DEFAULT '{}';
    """,
    # 3: images generated per day (`<prefix>imagine`, images_per_day)
    """
    ALTER TABLE daily_usage ADD COLUMN IF NOT EXISTS images BIGINT NOT NULL DEFAULT 0;
    """,
    # 4: each bot's registered slash command sets, by scope (persona/slash.py)
    """
    CREATE TABLE IF NOT EXISTS command_sets (
        bot TEXT NOT NULL,
        scope TEXT NOT NULL,
        digest TEXT NOT NULL,
        PRIMARY KEY (bot, scope)
    );
    """,
)

# A batch of writes as one statement, so it is atomic without BEGIN and COMMIT (two round trips
# fewer): the turns, in order, from column arrays ($1-$8; message_ids as array literals, since
# unnest cannot take arrays of arrays of different lengths), then the daily totals added ($9-$14).
# A data-modifying WITH always runs to completion.
_WRITE = """
WITH new_turns AS (
    INSERT INTO turns (bot, channel, user_id, role, content, created, speaker, message_ids)
    SELECT bot, channel, user_id, role, content, created, speaker, message_ids::BIGINT[]
    FROM unnest($1::TEXT[], $2::BIGINT[], $3::BIGINT[], $4::TEXT[], $5::TEXT[], $6::FLOAT8[], $7::TEXT[], $8::TEXT[])
        WITH ORDINALITY AS t (bot, channel, user_id, role, content, created, speaker, message_ids, n)
    ORDER BY n
)
INSERT INTO daily_usage (day, bot, user_id, tokens, usd, images)
SELECT * FROM unnest($9::TEXT[], $10::TEXT[], $11::TEXT[], $12::BIGINT[], $13::FLOAT8[], $14::BIGINT[])
ON CONFLICT (day, bot, user_id) DO UPDATE
SET tokens = daily_usage.tokens + excluded.tokens, usd = daily_usage.usd + excluded.usd,
    images = daily_usage.images + excluded.images
"""

_T = TypeVar("_T")
Connection = Any  # asyncpg's pooled connection (asyncpg ships no type annotations)


class SchemaTooNew(StoreUnavailable):
    """The tables were migrated by a newer orchestrator: this one must not write to them."""


def backup_hint(where: str) -> str:
    """What to do instead of ``orchestrator memory backup`` for a PostgreSQL database."""
    return (
        f"the memory is in {where}: back it up with PostgreSQL's own tool, e.g. "
        'pg_dump --format=custom --file=memory.dump "$DATABASE_URL" (consistent while `run` runs; '
        "pg_restore reads it back). `orchestrator memory backup` copies SQLite databases only"
    )


def _text(text: str) -> str:
    """``text`` as PostgreSQL stores it: TEXT holds no NUL character (nor lone surrogates, in UTF-8)."""
    return replace_lone_surrogates(text).replace("\x00", "\ufffd")


def _refused(error: StoreUnavailable) -> bool:
    """Whether the database answered (and refused), rather than not answering at all."""
    cause = error.__cause__
    return isinstance(cause, asyncpg.PostgresError) and not isinstance(cause, asyncpg.PostgresConnectionError)


async def _keep_session(connection: Any) -> None:
    """The pool's reset: nothing to undo (see :meth:`PostgresStore.open`)."""


def _turn_rows(exchanges: list[PendingExchange]) -> list[tuple[Any, ...]]:
    """The turns of ``exchanges`` as rows of :data:`_WRITE`'s first eight columns, in order."""
    return [
        (
            e.key.bot,
            e.key.channel,
            e.key.user,
            turn.role,
            turn.content,
            e.created,
            turn.speaker,
            _array(turn.message_ids),
        )
        for e in exchanges
        for turn in e.turns()
    ]


def _array(numbers: tuple[int, ...]) -> str:
    """A PostgreSQL array literal of ``numbers``, as ``{1,2}``."""
    return "{" + ",".join(map(str, numbers)) + "}"


def _usage_rows(usage: dict[UsageKey, Totals]) -> list[tuple[Any, ...]]:
    return [(*key, *totals) for key, totals in usage.items()]


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """``rows`` as ``width`` column lists (the arrays that unnest takes)."""
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]


def _count(status: str) -> int:
    """The row count of a command status such as ``DELETE 12``."""
    return int(status.rsplit(" ", 1)[-1])


class PostgresStore:
    """PostgreSQL-backed :class:`~orchestrator.memory.store.Store`; open it with :meth:`open`."""

    def __init__(
        self,
        pool: Any,
        where: str,
        *,
        create: bool,
        cache_size: int,
        max_cached_turns: int,
        flush_interval: float,
        timeout: float,
    ) -> None:
        self.where = where  # "PostgreSQL at host:port/database", for messages: never the password
        self._pool = pool
        self._create = create
        self._timeout = timeout
        self._flush_interval = flush_interval
        self._cache = HistoryCache(cache_size, max_cached_turns)
        self._lock = anyio.Lock()  # held by whatever must see the database and the pending writes as one
        self._pending: list[PendingExchange] = []  # appended, not yet written, in append order
        self._pending_usage: dict[UsageKey, Totals] = {}  # not yet written
        self._wakeup = anyio.Event()  # set while something is pending
        self._days: dict[str, dict[tuple[str, str], Totals]] = {}  # known daily totals, by day
        self._migrated = False
        self._failing = False
        self._loop_thread = threading.get_ident()
        self._loop = anyio.lowlevel.current_token()

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        url: PostgresURL | str,
        *,
        create: bool = True,
        cache_size: int = 2048,
        max_cached_turns: int = 200,
        flush_interval: float = 0.05,
        connect_timeout: float = TIMEOUT,
    ) -> AsyncIterator[PostgresStore]:
        """The store of ``url``, its writer running until the block ends, then everything pending written.

        ``create`` (``orchestrator run``): create or migrate the tables, and go on without the
        database while it does not answer. Without it (the commands that only read or delete):
        connect now and raise :class:`StoreUnavailable`, or :class:`NoDatabase` when it has no tables.
        """
        if isinstance(url, str):
            url = PostgresURL(SecretStr(url))
        # min_size=0: nothing connects yet, so a database that is down cannot stop the start.
        # reset: the store keeps no session state (no LISTEN, SET, cursors or session locks), so a
        # connection goes back to the pool without asyncpg's reset query, a round trip per use;
        # asyncpg still rolls back a transaction left open.
        pool = await asyncpg.create_pool(
            url.url,
            min_size=0,
            max_size=POOL_SIZE,
            timeout=connect_timeout,
            command_timeout=COMMAND_TIMEOUT,
            reset=_keep_session,
        )
        store = cls(
            pool, f"PostgreSQL at {url.place}", create=create, cache_size=cache_size,
            max_cached_turns=max_cached_turns, flush_interval=flush_interval, timeout=connect_timeout,
        )  # fmt: skip
        try:
            await store._start()
            failure: Exception | None = None
            async with anyio.create_task_group() as tg:
                tg.start_soon(store._write_behind)
                try:
                    yield store
                except Exception as exc:  # noqa: BLE001 - re-raised below as itself, not in an ExceptionGroup
                    failure = exc
                finally:
                    tg.cancel_scope.cancel()  # a write under way ends first: _flush shields it
            if failure is not None:
                raise failure
        finally:
            with anyio.CancelScope(shield=True):
                await store._close()

    async def _start(self) -> None:
        """Migrate the tables and read today's usage; in ``create`` mode a database that does not
        answer is only logged (the writer connects later)."""
        try:
            await self._read_daily(time.strftime("%Y-%m-%d", time.gmtime()))
        except StoreUnavailable as exc:
            if not self._create or isinstance(exc, SchemaTooNew):
                raise
            log.warning("%s; answering without memory until it does (each write tries again)", exc)
            self._failing = True

    async def _close(self) -> None:
        """Write what is pending (bounded by ``CLOSE_TIMEOUT``), then close the pool."""
        async with self._lock:  # free: the writer and the store's users are done
            error = await self._flush(within=CLOSE_TIMEOUT)
        if error is not None and (self._pending or self._pending_usage):
            log.error(
                "could not write on close (%s): %d exchange(s) and the unsaved token usage are lost",
                error, len(self._pending),
            )  # fmt: skip
        with anyio.move_on_after(CLOSE_TIMEOUT) as waited:
            await self._pool.close()
        if waited.cancelled_caught:
            self._pool.terminate()

    # ------------------------------------------------------------ connections and migrations

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        """A pooled connection to a database with the current tables; any failure as :class:`StoreUnavailable`."""
        try:
            async with self._pool.acquire(timeout=self._timeout) as conn:
                if not self._migrated:
                    await self._migrate(conn)
                    self._migrated = True
                yield conn
        except _UNAVAILABLE as exc:
            reason = f"no answer within {self._timeout:g} s" if isinstance(exc, TimeoutError) else str(exc)
            raise StoreUnavailable(f"{self.where} failed: {reason or type(exc).__name__}") from exc

    async def _migrate(self, conn: Connection) -> None:
        """Bring the tables to the current version, one process at a time (an advisory lock)."""
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            if not self._create and not await conn.fetchval("SELECT to_regclass('schema_version') IS NOT NULL"):
                raise NoDatabase(
                    f"no orchestrator memory in {self.where} (no schema_version table): nothing was recorded "
                    "yet, or 'database' points to another database or schema"
                )
            await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            version = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
            if version > len(_MIGRATIONS):
                raise SchemaTooNew(
                    f"{self.where} holds memory of schema version {version}, newer than this orchestrator's "
                    f"{len(_MIGRATIONS)}: upgrade this orchestrator to the version the other processes run"
                )
            for migration in _MIGRATIONS[version:]:
                await conn.execute(migration)
            if version < len(_MIGRATIONS):
                await conn.execute("DELETE FROM schema_version")
                await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", len(_MIGRATIONS))
                log.info("%s: memory tables at schema version %d", self.where, len(_MIGRATIONS))

    async def _after_pending(self, work: Callable[[Connection], Awaitable[_T]]) -> _T:
        """Run ``work`` under the lock after writing what is pending, so it sees or deletes it. When the
        database answers but refuses the writes, ``work`` still runs (see :meth:`_drop_pending`)."""
        async with self._lock:
            error = await self._flush()
            if error is not None and not _refused(error):
                raise error  # no answer at all: ``work`` would only wait as long again
            async with self._connection() as conn:
                return await work(conn)

    def _drop_pending(self, doomed: Callable[[ConversationKey], bool]) -> int:
        """Delete the pending exchanges of the ``doomed`` conversations (left pending when the database
        refused them); the number of turns deleted. Called with the lock held, once the database's are gone."""
        kept = [e for e in self._pending if not doomed(e.key)]
        removed = 2 * (len(self._pending) - len(kept))
        self._pending = kept
        return removed

    # ------------------------------------------------------------ write-behind

    async def _write_behind(self) -> None:
        """Once something is pending, let more gather for ``flush_interval``, then commit it all in one
        transaction; after a failure wait longer (up to a second) before trying again."""
        delay = self._flush_interval
        while True:
            await self._wakeup.wait()
            await anyio.sleep(delay)
            async with self._lock:
                error = await self._flush()
            delay = self._flush_interval if error is None else min(max(2 * delay, _FIRST_RETRY_DELAY), _MAX_RETRY_DELAY)

    async def flush(self) -> None:
        """Write everything pending now (on failure it stays pending, see :meth:`_flush`)."""
        async with self._lock:
            await self._flush()

    async def _flush(self, within: float = math.inf) -> StoreUnavailable | None:
        """Write pending exchanges and usage in one statement (the caller holds ``_lock``).

        On failure everything stays pending, in order, for the next attempt; returns the error.
        Cancelling the caller does not cut the write short: a batch whose answer was on its way when
        the writer stopped (or a read waiting for the write was given up) may well be committed, and
        putting it back would write it again on close, counting the day's tokens and spend twice.
        The write ends within its own timeouts (connecting, each statement), or ``within`` seconds."""
        exchanges, self._pending = self._pending, []
        usage, self._pending_usage = self._pending_usage, {}
        if self._wakeup.is_set():  # an unset one may be what the writer waits on: keep it
            self._wakeup = anyio.Event()
        if not exchanges and not usage:
            return None

        def keep_pending() -> None:
            self._pending[:0] = exchanges
            for key, totals in usage.items():
                add_usage(self._pending_usage, key, *totals)
            self._wakeup.set()

        try:
            with anyio.CancelScope(shield=True, deadline=anyio.current_time() + within) as write:
                async with self._connection() as conn:
                    await conn.execute(_WRITE, *_columns(_turn_rows(exchanges), 8), *_columns(_usage_rows(usage), 6))
            if write.cancelled_caught:  # no answer in time: as a statement timing out
                raise StoreUnavailable(f"{self.where} failed: no answer within {within:g} s")
        except StoreUnavailable as exc:
            keep_pending()
            if not self._failing:
                log.warning("could not write conversations and token usage (%s); keeping them in memory, retrying", exc)
            self._failing = True
            return exc
        except BaseException:  # e.g. KeyboardInterrupt: the close writes them
            keep_pending()
            raise
        if self._failing:
            log.info("writing to %s works again; what was kept in memory is saved", self.where)
        self._failing = False
        return None

    # ------------------------------------------------------------ conversations

    async def history(self, key: ConversationKey, limit: int) -> list[Turn]:
        cached = self._cache.get(key)
        if cached is None:
            cached = await self._load(key)
            self._cache.put(key, cached)
        return cached[-limit:] if limit else []

    async def _load(self, key: ConversationKey) -> list[Turn]:
        """The newest turns of ``key``, pending ones included; :class:`StoreUnavailable` within ``timeout``."""
        limit = self._cache.max_turns
        try:
            with anyio.fail_after(self._timeout):
                async with self._lock, self._connection() as conn:
                    rows = await conn.fetch(
                        "SELECT role, content, speaker, message_ids FROM turns "
                        "WHERE bot = $1 AND channel = $2 AND user_id = $3 ORDER BY id DESC LIMIT $4",
                        key.bot, key.channel, key.user, limit,
                    )  # fmt: skip
                    turns = [Turn(role, content, speaker, tuple(ids)) for role, content, speaker, ids in reversed(rows)]
                    for e in self._pending:  # the database refused them so far
                        if e.key == key:
                            turns += e.turns()
        except TimeoutError as exc:
            raise StoreUnavailable(f"{self.where} failed: no answer within {self._timeout:g} s") from exc
        return turns[-limit:]

    async def append_exchange(
        self,
        key: ConversationKey,
        question: str,
        answer: str,
        *,
        speaker: str = "",
        question_id: int = 0,
        answer_ids: tuple[int, ...] = (),
    ) -> None:
        """Remember an exchange at once (cache) and queue it for the writer; never waits for PostgreSQL."""
        exchange = PendingExchange.of(
            key, _text(question), _text(answer), _text(speaker), question_id, answer_ids, time.time()
        )
        self._cache.extend(key, exchange)
        self._pending.append(exchange)
        self._wakeup.set()

    def drop_cached(self, bot: str) -> None:
        """Forget the cached histories of ``bot``: another process may have answered it meanwhile."""
        self._cache.drop(lambda k: k.bot == bot)

    async def reset(self, key: ConversationKey) -> int:
        self._cache.drop(lambda k: k == key)

        async def delete(conn: Connection) -> int:
            return _count(await conn.execute(
                "DELETE FROM turns WHERE bot = $1 AND channel = $2 AND user_id = $3", key.bot, key.channel, key.user
            )) + self._drop_pending(lambda k: k == key)  # fmt: skip

        return await self._after_pending(delete)

    async def reset_channel(self, bot: str, channel: int) -> int:
        self._cache.drop(lambda k: k.bot == bot and k.channel == channel)

        async def delete(conn: Connection) -> int:
            deleted = _count(await conn.execute("DELETE FROM turns WHERE bot = $1 AND channel = $2", bot, channel))
            return deleted + self._drop_pending(lambda k: k.bot == bot and k.channel == channel)

        return await self._after_pending(delete)

    async def command_sets(self, bot: str) -> dict[str, str]:
        async with self._connection() as conn:
            rows = await conn.fetch("SELECT scope, digest FROM command_sets WHERE bot = $1", bot)
        return {scope: digest for scope, digest in rows}

    async def save_command_set(self, bot: str, scope: str, digest: str) -> None:
        async with self._connection() as conn:
            await conn.execute(
                "INSERT INTO command_sets (bot, scope, digest) VALUES ($1, $2, $3) "
                "ON CONFLICT (bot, scope) DO UPDATE SET digest = excluded.digest",
                bot, scope, digest,
            )  # fmt: skip

    async def prune(self, bot: str, max_age_seconds: float | None, max_turns: int) -> int:
        """Drop ``bot``'s turns older than ``max_age_seconds`` and beyond its newest ``max_turns`` per conversation."""

        async def delete(conn: Connection) -> int:
            removed = 0
            async with conn.transaction():
                if max_age_seconds is not None:
                    removed += _count(await conn.execute(
                        "DELETE FROM turns WHERE bot = $1 AND created < $2", bot, time.time() - max_age_seconds
                    ))  # fmt: skip
                removed += _count(await conn.execute(
                    """DELETE FROM turns WHERE id IN (
                           SELECT id FROM (
                               SELECT id, ROW_NUMBER() OVER (PARTITION BY channel, user_id ORDER BY id DESC) AS n
                               FROM turns WHERE bot = $1) AS ranked
                           WHERE n > $2)""",
                    bot, max_turns,
                ))  # fmt: skip
            return removed

        removed = await self._after_pending(delete)
        if removed:
            self._cache.drop(lambda k: k.bot == bot)
        return removed

    # ------------------------------------------------------------ backup and data requests

    async def backup(self, target: Path) -> None:
        """Not this store's job: ``pg_dump`` makes a consistent copy of a PostgreSQL database."""
        raise NotImplementedError(backup_hint(self.where))

    async def export_user(self, user: int) -> UserData:
        async def read(conn: Connection) -> UserData:
            async with conn.transaction(isolation="repeatable_read", readonly=True):  # turns and usage of one moment
                turns = await conn.fetch(
                    "SELECT bot, channel, user_id, role, content, created FROM turns WHERE user_id = $1 ORDER BY id",
                    user,
                )
                usage = await conn.fetch(
                    "SELECT day, bot, tokens, usd, images FROM daily_usage WHERE user_id = $1 ORDER BY day, bot",
                    str(user),
                )
            return UserData([StoredTurn(*row) for row in turns], [DailyUsage(*row) for row in usage])

        return await self._after_pending(read)

    async def forget_user(self, user: int, bot: str | None = None) -> Forgotten:
        """Delete ``user``'s turns and daily usage (a bot's totals keep their share, without the id)."""

        def doomed(key: ConversationKey) -> bool:
            return key.user == user and bot in (None, key.bot)

        self._cache.drop(doomed)
        match, extra = ("user_id = $1", ()) if bot is None else ("user_id = $1 AND bot = $2", (bot,))

        async def delete(conn: Connection) -> Forgotten:
            async with conn.transaction():
                turns = _count(await conn.execute(f"DELETE FROM turns WHERE {match}", user, *extra))
                usage = _count(await conn.execute(f"DELETE FROM daily_usage WHERE {match}", str(user), *extra))
            for pending in [k for k in self._pending_usage if k[2] == str(user) and bot in (None, k[1])]:
                del self._pending_usage[pending]
            for totals in self._days.values():
                for known in [k for k in totals if k[1] == str(user) and bot in (None, k[0])]:
                    del totals[known]
            return Forgotten(turns + self._drop_pending(doomed), usage)

        return await self._after_pending(delete)

    # ------------------------------------------------------------ quota usage and spend (UsageSink, SpendSink)

    async def _read_daily(self, day: str) -> dict[tuple[str, str], Totals]:
        """(tokens, usd, images) of ``day`` per (bot, user) in the database, plus what is still pending."""
        async with self._lock, self._connection() as conn:
            rows = await conn.fetch("SELECT bot, user_id, tokens, usd, images FROM daily_usage WHERE day = $1", day)
            totals: dict[tuple[str, str], Totals] = {
                (bot, user): (tokens, usd, images) for bot, user, tokens, usd, images in rows
            }
            for (pending_day, bot, user), pending in self._pending_usage.items():
                if pending_day == day:
                    add_usage(totals, (bot, user), *pending)
            self._known_day(day).update(totals)
        return totals

    def _known_day(self, day: str) -> dict[tuple[str, str], Totals]:
        """The totals of ``day`` this process knows; only the latest days are kept."""
        totals = self._days.setdefault(day, {})
        while len(self._days) > _DAYS_KEPT:
            del self._days[min(self._days)]
        return totals

    def _load_daily(self, day: str) -> dict[tuple[str, str], Totals]:
        if threading.get_ident() == self._loop_thread:  # waiting here for the loop would deadlock
            return dict(self._days.get(day, {}))
        return anyio.from_thread.run(self._read_daily, day, token=self._loop)

    def load_daily_usage(self, day: str) -> dict[tuple[str, str], int]:
        """Tokens of ``day`` per (bot, user)."""
        return {key: tokens for key, (tokens, _usd, _images) in self._load_daily(day).items()}

    def load_daily_spend(self, day: str) -> dict[tuple[str, str], float]:
        """USD of ``day`` per (bot, user)."""
        return {key: usd for key, (_tokens, usd, _images) in self._load_daily(day).items() if usd}

    def load_daily_images(self, day: str) -> dict[tuple[str, str], int]:
        """Images generated on ``day`` per (bot, user)."""
        return {key: images for key, (_tokens, _usd, images) in self._load_daily(day).items() if images}

    def add_daily_usage(self, day: str, bot: str, user: str, tokens: int) -> None:
        """Record usage, in memory only (on the event loop): the writer commits it."""
        self._add_usage(day, bot, user, tokens, 0.0)

    def add_daily_spend(self, day: str, bot: str, user: str, usd: float) -> None:
        """Record spend, as :meth:`add_daily_usage` records tokens."""
        self._add_usage(day, bot, user, 0, usd)

    def add_daily_images(self, day: str, bot: str, user: str, images: int) -> None:
        """Record generated images, as :meth:`add_daily_usage` records tokens."""
        self._add_usage(day, bot, user, 0, 0.0, images)

    def _add_usage(self, day: str, bot: str, user: str, tokens: int, usd: float, images: int = 0) -> None:
        add_usage(self._pending_usage, (day, bot, user), tokens, usd, images)
        add_usage(self._known_day(day), (bot, user), tokens, usd, images)
        self._wakeup.set()
