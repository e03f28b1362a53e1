"""The SQLite implementation of :class:`~orchestrator.memory.store.ConversationStore`.

:class:`SQLiteStore` keeps one connection in WAL mode. Recent histories are cached in a bounded
LRU so a warm conversation costs no database read, and a set of the conversations that have any
turns (as hashes, one small int each) spares new conversations the read too. It also persists
daily token usage for :class:`~orchestrator.llm.quota.QuotaBook`, daily spend for
:class:`~orchestrator.llm.spend.SpendBook` and daily images for :class:`~orchestrator.llm.images.ImageBook`.

Writes are behind and grouped: ``append_exchange`` (called *after* the answer was delivered),
``add_daily_usage`` and ``add_daily_spend`` only update memory on the event loop; a writer thread commits everything
pending in one transaction, ``flush_interval`` (50 ms) after the first pending item, each exchange
whole. Reads, resets and pruning run in a worker thread and write what is pending first, so they
see it. Durability trade-off: an exchange is in memory at once and on disk within
``flush_interval``; a hard kill can lose the last ~50 ms of exchanges, a clean shutdown
(:meth:`SQLiteStore.close`) loses nothing. A database that refuses writes (locked, read-only,
full) only delays them: they stay in memory and are retried, with backoff up to a second.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import anyio

from ..discord_io.text import replace_lone_surrogates
from .recent import HistoryCache, PendingExchange, Totals, UsageKey, add_usage
from .store import ConversationKey, DailyUsage, Forgotten, StoredTurn, Turn, UserData

log = logging.getLogger(__name__)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS turns (
    id INTEGER PRIMARY KEY,
    bot TEXT NOT NULL,
    channel INTEGER NOT NULL,
    user INTEGER NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    created REAL NOT NULL,
    speaker TEXT NOT NULL DEFAULT '',
    message_ids TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS turns_by_conversation ON turns (bot, channel, user, id);
CREATE TABLE IF NOT EXISTS daily_usage (
    day TEXT NOT NULL,
    bot TEXT NOT NULL,
    user TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    usd REAL NOT NULL DEFAULT 0,
    images INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (day, bot, user)
);
CREATE TABLE IF NOT EXISTS command_sets (
    bot TEXT NOT NULL,
    scope TEXT NOT NULL,
    digest TEXT NOT NULL,
    PRIMARY KEY (bot, scope)
);
"""
# daily_usage columns added since the first schema (databases from before spend, before images)
_ADDED_USAGE_COLUMNS = {
    "usd": "ALTER TABLE daily_usage ADD COLUMN usd REAL NOT NULL DEFAULT 0",
    "images": "ALTER TABLE daily_usage ADD COLUMN images INTEGER NOT NULL DEFAULT 0",
}


# Columns added since the first schema, for databases created before them.
_ADDED_COLUMNS = {
    "speaker": "ALTER TABLE turns ADD COLUMN speaker TEXT NOT NULL DEFAULT ''",
    "message_ids": "ALTER TABLE turns ADD COLUMN message_ids TEXT NOT NULL DEFAULT ''",
}


def _ids_text(ids: tuple[int, ...]) -> str:
    return " ".join(map(str, ids))


def _turn(role: str, content: str, speaker: str, ids: str) -> Turn:
    return Turn(role, content, speaker, tuple(map(int, ids.split())))


_FIRST_RETRY_DELAY, _MAX_RETRY_DELAY = 0.1, 1.0  # seconds between attempts while the database refuses writes
_T = TypeVar("_T")


class SQLiteStore:
    """SQLite-backed :class:`ConversationStore` and quota usage sink."""

    def __init__(
        self,
        path: str | Path,
        *,
        cache_size: int = 2048,
        max_cached_turns: int = 200,
        flush_interval: float = 0.05,
    ) -> None:
        self.path = str(path)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()  # owns the connection
        self._thread = anyio.CapacityLimiter(1)
        self._cache = HistoryCache(cache_size, max_cached_turns)
        self._flush_interval = flush_interval
        self._pending_cv = threading.Condition()  # guards the pending writes below; wakes the writer
        self._pending: list[PendingExchange] = []  # appended, not yet written, in append order
        self._pending_usage: dict[UsageKey, Totals] = {}  # not yet written
        self._failing = False
        self._closing = False
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=2000")
            self._db.executescript(_SCHEMA)
            usage_columns = {row[1] for row in self._db.execute("PRAGMA table_info(daily_usage)")}
            for column, statement in _ADDED_USAGE_COLUMNS.items():
                if column not in usage_columns:
                    self._db.execute(statement)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(turns)")}
            for column, statement in _ADDED_COLUMNS.items():
                if column not in columns:
                    self._db.execute(statement)
            # Which conversations have turns at all, as hashes: a new conversation (the first message of
            # every user) then costs no thread hand-off and no query. A collision only costs a query.
            self._known = {
                hash(ConversationKey(*row)) for row in self._db.execute("SELECT DISTINCT bot, channel, user FROM turns")
            }
        self._writer = threading.Thread(target=self._write_behind, name="sqlite-writer", daemon=True)
        self._writer.start()

    def close(self) -> None:
        """Stop the writer thread, write what is pending and close the connection; later calls do nothing."""
        with self._pending_cv:
            if self._closing:
                return
            self._closing = True
            self._pending_cv.notify()
        self._writer.join()
        with self._lock:
            error = self._flush()
            if error is not None:
                log.error(
                    "could not write to %s on close (%s): %d exchange(s) and the unsaved token usage are lost",
                    self.path,
                    error,
                    len(self._pending),
                )
            self._db.close()

    async def flush(self) -> None:
        """Write everything pending now (on failure it stays pending, see :meth:`_flush`)."""
        await self._run(lambda: None)

    async def _run(self, fn: Callable[..., _T], *args: object) -> _T:
        """Run ``fn`` in the worker thread, after the pending writes, so it sees (or deletes) them."""

        def locked() -> _T:
            with self._lock:
                self._flush()
                return fn(*args)

        return await anyio.to_thread.run_sync(locked, limiter=self._thread)

    # ------------------------------------------------------------ write-behind

    def _write_behind(self) -> None:
        """The writer thread: once something is pending, let more gather for ``flush_interval``, then
        commit it all in one transaction; after a failure wait longer (up to a second) before retrying."""
        delay = self._flush_interval
        while self._wait_for_pending(delay):
            with self._lock:
                error = self._flush()
            retry_delay = min(max(2 * delay, _FIRST_RETRY_DELAY), _MAX_RETRY_DELAY)
            delay = self._flush_interval if error is None else retry_delay

    def _wait_for_pending(self, delay: float) -> bool:
        """Sleep until something is pending, then ``delay`` more; False as soon as the store closes."""
        with self._pending_cv:
            self._pending_cv.wait_for(lambda: self._closing or bool(self._pending or self._pending_usage))
            return not self._pending_cv.wait_for(lambda: self._closing, timeout=delay)

    def _flush(self) -> sqlite3.Error | None:
        """Write pending exchanges and usage in one transaction (caller holds ``_lock``).

        On failure everything stays pending, in order, for the next attempt; returns the error."""
        with self._pending_cv:
            exchanges, self._pending = self._pending, []
            usage, self._pending_usage = self._pending_usage, {}
        if not exchanges and not usage:
            return None
        try:
            with self._db:  # one transaction: every exchange whole, or nothing
                self._db.execute("BEGIN IMMEDIATE")
                if exchanges:
                    self._insert(exchanges)
                if usage:
                    self._db.executemany(
                        "INSERT INTO daily_usage (day, bot, user, tokens, usd, images) VALUES (?, ?, ?, ?, ?, ?) "
                        "ON CONFLICT (day, bot, user) DO UPDATE SET tokens = tokens + excluded.tokens, "
                        "usd = usd + excluded.usd, images = images + excluded.images",
                        [(*key, *totals) for key, totals in usage.items()],
                    )
        except sqlite3.Error as exc:
            with self._pending_cv:
                self._pending[:0] = exchanges
                for key, totals in usage.items():
                    add_usage(self._pending_usage, key, *totals)
                # Woken by the append, the writer thread may have looked while they were out (a read
                # flushing first), found nothing and gone back to sleep: wake it to retry them.
                self._pending_cv.notify()
            if not self._failing:
                log.warning(
                    "could not write conversations and token usage to %s (%s); keeping them in memory and retrying",
                    self.path,
                    exc,
                )
            self._failing = True
            return exc
        if self._failing:
            log.info("writing to %s works again; what was kept in memory is saved", self.path)
        self._failing = False
        return None

    def _insert(self, exchanges: list[PendingExchange]) -> None:
        self._db.executemany(
            "INSERT INTO turns (bot, channel, user, role, content, created, speaker, message_ids) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                (
                    e.key.bot,
                    e.key.channel,
                    e.key.user,
                    t.role,
                    t.content,
                    e.created,
                    t.speaker,
                    _ids_text(t.message_ids),
                )
                for e in exchanges
                for t in (e.question, e.answer)
            ),
        )

    # ------------------------------------------------------------ conversations

    async def history(self, key: ConversationKey, limit: int) -> list[Turn]:
        cached = self._cache.get(key)
        if cached is None:
            cached = await self._run(self._load, key, self._cache.max_turns) if hash(key) in self._known else []
            self._cache.put(key, cached)
        return cached[-limit:] if limit else []

    def _load(self, key: ConversationKey, limit: int) -> list[Turn]:
        """The newest ``limit`` turns, including any still pending because the database refuses writes."""
        rows = self._db.execute(
            "SELECT role, content, speaker, message_ids FROM turns WHERE bot=? AND channel=? AND user=? "
            "ORDER BY id DESC LIMIT ?",
            (key.bot, key.channel, key.user, limit),
        ).fetchall()
        turns = [_turn(*row) for row in reversed(rows)]
        with self._pending_cv:
            for e in self._pending:
                if e.key == key:
                    turns += e.turns()
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
        """Remember an exchange at once (cache) and queue it for the writer thread; never waits for SQLite."""
        exchange = PendingExchange.of(
            key,
            replace_lone_surrogates(question),
            replace_lone_surrogates(answer),
            replace_lone_surrogates(speaker),
            question_id,
            answer_ids,
            time.time(),
        )
        self._cache.extend(key, exchange)
        self._known.add(hash(key))
        self._enqueue(lambda: self._pending.append(exchange))

    def _enqueue(self, add: Callable[[], None]) -> None:
        """Add a pending write; wake the writer if it was idle."""
        with self._pending_cv:
            idle = not (self._pending or self._pending_usage)
            add()
            if idle:
                self._pending_cv.notify()

    async def reset(self, key: ConversationKey) -> int:
        self._cache.drop(lambda k: k == key)
        return await self._run(
            self._delete, "bot=? AND channel=? AND user=?", (key.bot, key.channel, key.user), lambda k: k == key
        )

    async def reset_channel(self, bot: str, channel: int) -> int:
        self._cache.drop(lambda k: k.bot == bot and k.channel == channel)
        return await self._run(
            self._delete, "bot=? AND channel=?", (bot, channel), lambda k: k.bot == bot and k.channel == channel
        )

    def drop_cached(self, bot: str) -> None:
        """Forget the cached histories of ``bot`` (one process owns a SQLite file: only for the interface)."""
        self._cache.drop(lambda k: k.bot == bot)

    def _delete(self, where: str, args: tuple[object, ...], doomed: Callable[[ConversationKey], bool]) -> int:
        """Delete the matching turns, and the matching exchanges still pending (a failing database)."""
        with self._db:
            removed = self._db.execute(f"DELETE FROM turns WHERE {where}", args).rowcount
        with self._pending_cv:
            kept = [e for e in self._pending if not doomed(e.key)]
            removed += 2 * (len(self._pending) - len(kept))
            self._pending = kept
        return removed

    async def command_sets(self, bot: str) -> dict[str, str]:
        def read() -> list[tuple[str, str]]:
            return self._db.execute("SELECT scope, digest FROM command_sets WHERE bot=?", (bot,)).fetchall()

        return dict(await self._run(read))

    async def save_command_set(self, bot: str, scope: str, digest: str) -> None:
        def save() -> None:
            with self._db:
                self._db.execute(
                    "INSERT INTO command_sets (bot, scope, digest) VALUES (?, ?, ?) "
                    "ON CONFLICT (bot, scope) DO UPDATE SET digest = excluded.digest",
                    (bot, scope, digest),
                )

        await self._run(save)

    async def prune(self, bot: str, max_age_seconds: float | None, max_turns: int) -> int:
        """Drop ``bot``'s turns older than ``max_age_seconds`` and beyond its newest ``max_turns`` per conversation."""
        removed = await self._run(self._prune, bot, max_age_seconds, max_turns)
        if removed:
            self._cache.drop(lambda k: k.bot == bot)
        return removed

    def _prune(self, bot: str, max_age_seconds: float | None, max_turns: int) -> int:
        removed = 0
        with self._db:
            if max_age_seconds is not None:
                removed += self._db.execute(
                    "DELETE FROM turns WHERE bot = ? AND created < ?", (bot, time.time() - max_age_seconds)
                ).rowcount
            removed += self._db.execute(
                """DELETE FROM turns WHERE id IN (
                       SELECT id FROM (
                           SELECT id, ROW_NUMBER() OVER (PARTITION BY channel, user ORDER BY id DESC) AS n
                           FROM turns WHERE bot = ?)
                       WHERE n > ?)""",
                (bot, max_turns),
            ).rowcount
        return removed

    # ------------------------------------------------------------ backup and data requests

    async def backup(self, target: Path) -> None:
        """Copy the database to ``target`` with SQLite's online backup API: one read transaction, so
        the copy is consistent while other connections (a running ``orchestrator run``) keep writing.
        It is written beside ``target`` first and renamed, so ``target`` is never a partial copy."""
        await self._run(self._backup, target)

    def _backup(self, target: Path) -> None:
        partial = target.with_name(target.name + ".partial")
        partial.unlink(missing_ok=True)
        copy = sqlite3.connect(partial)
        try:
            self._db.backup(copy)
        finally:
            copy.close()
        os.replace(partial, target)

    async def export_user(self, user: int) -> UserData:
        return await self._run(self._export, user)

    def _export(self, user: int) -> UserData:
        turns = self._db.execute(
            "SELECT bot, channel, user, role, content, created FROM turns WHERE user = ? ORDER BY id", (user,)
        ).fetchall()
        usage = self._db.execute(
            "SELECT day, bot, tokens, usd, images FROM daily_usage WHERE user = ? ORDER BY day, bot", (str(user),)
        ).fetchall()
        return UserData([StoredTurn(*row) for row in turns], [DailyUsage(*row) for row in usage])

    async def forget_user(self, user: int, bot: str | None = None) -> Forgotten:
        """Delete ``user``'s turns and daily usage (a bot's totals keep their share, without the id)."""
        self._cache.drop(lambda k: k.user == user and bot in (None, k.bot))
        return await self._run(self._forget, user, bot)

    def _forget(self, user: int, bot: str | None) -> Forgotten:
        match, extra = ("user = ?", ()) if bot is None else ("user = ? AND bot = ?", (bot,))
        turns = self._delete(match, (user, *extra), lambda k: k.user == user and bot in (None, k.bot))
        with self._db:
            usage = self._db.execute(f"DELETE FROM daily_usage WHERE {match}", (str(user), *extra)).rowcount
        with self._pending_cv:
            for key in [k for k in self._pending_usage if k[2] == str(user) and bot in (None, k[1])]:
                del self._pending_usage[key]
        return Forgotten(turns, usage)

    # ------------------------------------------------------------ quota usage and spend (UsageSink, SpendSink)

    def _load_daily(self, day: str) -> dict[tuple[str, str], Totals]:
        """(tokens, usd, images) of ``day`` per (bot, user): what is on disk plus what is still pending."""
        with self._lock:  # held throughout: no flush moves usage from pending to disk between the reads
            rows = self._db.execute(
                "SELECT bot, user, tokens, usd, images FROM daily_usage WHERE day=?", (day,)
            ).fetchall()
            usage: dict[tuple[str, str], Totals] = {(bot, user): totals for bot, user, *totals in rows}
            with self._pending_cv:
                for (pending_day, bot, user), totals in self._pending_usage.items():
                    if pending_day == day:
                        add_usage(usage, (bot, user), *totals)
        return usage

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
        """Record usage. Called on the event loop, so it only remembers the tokens for the writer
        thread: a locked, read-only or full database only delays persistence, never the bots."""
        self._enqueue(lambda: add_usage(self._pending_usage, (day, bot, user), tokens, 0.0))

    def add_daily_spend(self, day: str, bot: str, user: str, usd: float) -> None:
        """Record spend, as :meth:`add_daily_usage` records tokens."""
        self._enqueue(lambda: add_usage(self._pending_usage, (day, bot, user), 0, usd))

    def add_daily_images(self, day: str, bot: str, user: str, images: int) -> None:
        """Record generated images, as :meth:`add_daily_usage` records tokens."""
        self._enqueue(lambda: add_usage(self._pending_usage, (day, bot, user), 0, 0.0, images))
