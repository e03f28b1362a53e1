"""Conversation memory: the store interface, its SQLite implementation, and context fitting.

The bots only see :class:`ConversationStore`; another database can implement it later.
:class:`SQLiteStore` keeps one connection in WAL mode. Writes run in one worker thread (never on
the event loop) and each exchange is committed atomically, *after* the answer was delivered.
Recent histories are cached in a bounded LRU so a warm conversation costs no database read.
It also persists daily token usage for :class:`~orchestrator.llm.quota.QuotaBook`.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import anyio

from .discord_text import replace_lone_surrogates
from .llm.pool import Message, estimate_tokens

SHARED = 0  # the "user" of a channel-wide conversation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConversationKey:
    bot: str
    channel: int
    user: int = SHARED


@dataclass(frozen=True)
class Turn:
    role: str  # "user" | "assistant"
    content: str


class ConversationStore(Protocol):
    async def history(self, key: ConversationKey, limit: int) -> list[Turn]: ...

    async def append_exchange(self, key: ConversationKey, question: str, answer: str) -> None: ...

    async def reset(self, key: ConversationKey) -> int: ...

    async def reset_channel(self, bot: str, channel: int) -> int: ...

    async def prune(self, bot: str, max_age_seconds: float | None, max_turns: int) -> int: ...


def fit_context(persona: str, history: list[Turn], question: str, budget: int) -> list[Message]:
    """System prompt first, the question last, and as many of the newest exchanges as fit ``budget``.

    Whole exchanges are dropped oldest first; the system prompt and the question are always kept.
    """
    used = estimate_tokens(persona) + estimate_tokens(question)
    kept: list[Turn] = []
    index = len(history)
    while index >= 2:
        pair = history[index - 2 : index]
        cost = sum(estimate_tokens(turn.content) for turn in pair)
        if used + cost > budget:
            break
        used += cost
        kept[:0] = pair
        index -= 2
    return [
        {"role": "system", "content": persona},
        *({"role": turn.role, "content": turn.content} for turn in kept),
        {"role": "user", "content": question},
    ]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS turns (
    id INTEGER PRIMARY KEY,
    bot TEXT NOT NULL,
    channel INTEGER NOT NULL,
    user INTEGER NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS turns_by_conversation ON turns (bot, channel, user, id);
CREATE TABLE IF NOT EXISTS daily_usage (
    day TEXT NOT NULL,
    bot TEXT NOT NULL,
    user TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    PRIMARY KEY (day, bot, user)
);
"""


class SQLiteStore:
    """SQLite-backed :class:`ConversationStore` and quota usage sink."""

    def __init__(self, path: str | Path, *, cache_size: int = 2048, max_cached_turns: int = 200) -> None:
        self.path = str(path)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._thread = anyio.CapacityLimiter(1)
        self._cache: OrderedDict[ConversationKey, list[Turn]] = OrderedDict()
        self._cache_size = cache_size
        self._max_cached_turns = max_cached_turns
        self._pending_usage: dict[tuple[str, str, str], int] = {}  # (day, bot, user) -> tokens not yet written
        self._usage_lock = threading.Lock()
        self._usage_failing = False
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=2000")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._flush_usage()
            self._db.close()

    async def _run(self, fn, *args):  # type: ignore[no-untyped-def]
        def locked():  # type: ignore[no-untyped-def]
            with self._lock:
                self._flush_usage()  # usage recorded on the event loop rides along, off the loop
                return fn(*args)

        return await anyio.to_thread.run_sync(locked, limiter=self._thread)

    # ------------------------------------------------------------ conversations

    async def history(self, key: ConversationKey, limit: int) -> list[Turn]:
        cached = self._cache.get(key)
        if cached is None:
            cached = await self._run(self._load, key, self._max_cached_turns)
            self._remember(key, cached)
        else:
            self._cache.move_to_end(key)
        return cached[-limit:] if limit else []

    def _load(self, key: ConversationKey, limit: int) -> list[Turn]:
        rows = self._db.execute(
            "SELECT role, content FROM turns WHERE bot=? AND channel=? AND user=? ORDER BY id DESC LIMIT ?",
            (key.bot, key.channel, key.user, limit),
        ).fetchall()
        return [Turn(role, content) for role, content in reversed(rows)]

    def _remember(self, key: ConversationKey, turns: list[Turn]) -> None:
        self._cache[key] = turns
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    async def append_exchange(self, key: ConversationKey, question: str, answer: str) -> None:
        question, answer = replace_lone_surrogates(question), replace_lone_surrogates(answer)
        await self._run(self._insert, key, question, answer)
        cached = self._cache.get(key)
        if cached is not None:
            cached.extend((Turn("user", question), Turn("assistant", answer)))
            del cached[: -self._max_cached_turns]

    def _insert(self, key: ConversationKey, question: str, answer: str) -> None:
        now = time.time()
        with self._db:  # one transaction: both turns or neither
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT INTO turns (bot, channel, user, role, content, created) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (key.bot, key.channel, key.user, "user", question, now),
                    (key.bot, key.channel, key.user, "assistant", answer, now),
                ],
            )

    async def reset(self, key: ConversationKey) -> int:
        self._cache.pop(key, None)
        return await self._run(self._delete, "bot=? AND channel=? AND user=?", (key.bot, key.channel, key.user))

    async def reset_channel(self, bot: str, channel: int) -> int:
        for key in [k for k in self._cache if k.bot == bot and k.channel == channel]:
            del self._cache[key]
        return await self._run(self._delete, "bot=? AND channel=?", (bot, channel))

    def _delete(self, where: str, args: tuple[object, ...]) -> int:
        with self._db:
            return self._db.execute(f"DELETE FROM turns WHERE {where}", args).rowcount  # noqa: S608 - fixed clauses

    async def prune(self, bot: str, max_age_seconds: float | None, max_turns: int) -> int:
        """Drop ``bot``'s turns older than ``max_age_seconds`` and beyond its newest ``max_turns`` per conversation."""
        removed = await self._run(self._prune, bot, max_age_seconds, max_turns)
        if removed:
            for key in [k for k in self._cache if k.bot == bot]:
                del self._cache[key]
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

    # ------------------------------------------------------------ quota usage (UsageSink)

    def load_daily_usage(self, day: str) -> dict[tuple[str, str], int]:
        with self._lock:
            rows = self._db.execute("SELECT bot, user, tokens FROM daily_usage WHERE day=?", (day,)).fetchall()
        usage = {(bot, user): tokens for bot, user, tokens in rows}
        with self._usage_lock:
            for (pending_day, bot, user), tokens in self._pending_usage.items():
                if pending_day == day:
                    usage[(bot, user)] = usage.get((bot, user), 0) + tokens
        return usage

    def add_daily_usage(self, day: str, bot: str, user: str, tokens: int) -> None:
        """Record usage. Called on the event loop, so it only remembers the tokens: they are written
        by the worker thread before its next database job (at the latest on close), so a locked,
        read-only or full database only delays persistence and never blocks the bots."""
        with self._usage_lock:
            key = (day, bot, user)
            self._pending_usage[key] = self._pending_usage.get(key, 0) + tokens

    def _flush_usage(self) -> None:
        """Write pending usage in one transaction (caller holds ``_lock``); on failure keep it pending."""
        with self._usage_lock:
            pending, self._pending_usage = self._pending_usage, {}
        if not pending:
            return
        try:
            with self._db:
                self._db.executemany(
                    "INSERT INTO daily_usage (day, bot, user, tokens) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (day, bot, user) DO UPDATE SET tokens = tokens + excluded.tokens",
                    [(day, bot, user, tokens) for (day, bot, user), tokens in pending.items()],
                )
        except sqlite3.Error as exc:
            with self._usage_lock:
                for key, tokens in pending.items():
                    self._pending_usage[key] = self._pending_usage.get(key, 0) + tokens
            if not self._usage_failing:
                log.warning("could not save token usage to %s (%s); keeping it in memory and retrying", self.path, exc)
            self._usage_failing = True
        else:
            self._usage_failing = False
