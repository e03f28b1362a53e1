"""Conversation memory: multi-turn, restarts, isolation, reset scopes, trimming and retention."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from orchestrator.memory import ConversationKey, SQLiteStore, Turn, fit_context
from orchestrator.sandbox.openai_server import said

from .conftest import World
from .stores import StoreKind
from .waiting import until


def contents(request) -> list[str]:  # type: ignore[no-untyped-def]
    return [said(m) for m in request.body["messages"][1:]]


async def test_third_request_carries_the_first_two_exchanges_across_a_restart(
    world: World, store_kind: StoreKind
) -> None:
    world.database = store_kind.database
    world.write([{"name": "sage"}])
    world.openai.set_reply(lambda body: f"A:{said(body['messages'][-1])}")
    async with world.running():
        await world.chat("!chat one")
        await world.chat("!chat two")
    async with world.running():  # a new process sees the same database
        await world.chat("!chat three")
    assert contents(world.openai.chat_requests[2]) == ["one", "A:one", "two", "A:two", "three"]


async def test_personas_users_and_channels_are_isolated(world: World) -> None:
    world.write([{"name": "sage"}, {"name": "hafez", "prefix": "?"}])
    bob = world.discord.add_user("bob")
    other_channel = world.discord.add_channel("other")
    async with world.running():
        await world.chat("!chat alice to sage")
        await world.chat("?chat alice to hafez")
        await world.chat("!chat bob to sage", author_id=bob)
        await world.chat("!chat alice elsewhere", channel_id=other_channel)
        await world.chat("!chat alice again")
    requests = world.openai.chat_requests
    assert contents(requests[1]) == ["alice to hafez"]
    assert contents(requests[2]) == ["bob to sage"]
    assert contents(requests[3]) == ["alice elsewhere"]
    assert contents(requests[4])[0] == "alice to sage" and len(contents(requests[4])) == 3


async def test_channel_scope_shares_one_conversation(world: World) -> None:
    world.write([{"name": "sage", "memory": {"scope": "channel"}}])
    bob = world.discord.add_user("bob")
    async with world.running():
        await world.chat("!chat from alice")
        await world.chat("!chat from bob", author_id=bob)
    assert contents(world.openai.chat_requests[1])[0] == "from alice"


async def test_reset_clears_only_the_callers_conversation_with_that_persona(world: World) -> None:
    world.write([{"name": "sage"}, {"name": "hafez", "prefix": "?"}])
    bob = world.discord.add_user("bob")
    async with world.running():
        await world.chat("!chat alice 1")
        await world.chat("?chat alice to hafez")
        await world.chat("!chat bob 1", author_id=bob)
        [confirmation] = await world.chat("!reset")
        await world.chat("!chat alice 2")
        await world.chat("?chat alice to hafez 2")
        await world.chat("!chat bob 2", author_id=bob)
    assert "cleared" in confirmation.content
    requests = world.openai.chat_requests
    assert contents(requests[3]) == ["alice 2"]
    assert contents(requests[4])[0] == "alice to hafez"
    assert contents(requests[5])[0] == "bob 1"


async def test_channel_reset_is_for_admins_only(world: World) -> None:
    admin = world.discord.add_user("admin")
    role = world.discord.add_role(world.discord.guild_id, "mods")
    moderator = world.discord.add_user("mod", roles=[role])
    world.write([{"name": "sage", "access": {"admins": [admin], "admin_roles": [role]}}])
    async with world.running():
        await world.chat("!chat remember me")
        [refused] = await world.chat("!reset channel")
        await world.chat("!chat still there?")
        [done] = await world.chat("!reset channel", author_id=admin)
        await world.chat("!chat after admin reset")
        [by_role] = await world.chat("!reset channel", author_id=moderator)
    assert "Only an admin" in refused.content
    assert "cleared" in done.content and "cleared" in by_role.content
    requests = world.openai.chat_requests
    assert contents(requests[1])[0] == "remember me"
    assert contents(requests[2]) == ["after admin reset"]


def test_context_keeps_the_system_prompt_and_the_question_under_a_small_budget() -> None:
    history = [Turn("user" if i % 2 == 0 else "assistant", f"turn {i} " + "x" * 200) for i in range(20)]
    messages = fit_context("You are Sage.", history, "the question", budget=200)
    assert messages[0] == {"role": "system", "content": "You are Sage."}
    assert messages[-1] == {"role": "user", "content": "the question"}
    kept = messages[1:-1]
    assert 0 < len(kept) < 20 and len(kept) % 2 == 0
    assert kept[-1]["content"].startswith("turn 19") and kept[0]["role"] == "user"
    assert fit_context("p", history, "q", budget=1)[1:-1] == [], "nothing but the essentials fits"


async def test_retention_prunes_old_and_excess_turns(store_kind: StoreKind) -> None:
    key = ConversationKey("sage", 1, 2)
    other = ConversationKey("hafez", 1, 2)
    async with store_kind.open() as store:
        for i in range(5):
            await store.append_exchange(key, f"q{i}", f"a{i}")
        await store.append_exchange(other, "old", "old answer")
        await store.flush()
        await store_kind.backdate("hafez", 90 * 86400)
        assert await store.prune("sage", None, 4) == 6
        assert [t.content for t in await store.history(key, 50)] == ["q3", "a3", "q4", "a4"]
        assert await store.prune("hafez", 30 * 86400, 50) == 2
        assert await store.history(other, 50) == []


def turns_on_disk(db: Path) -> list[tuple[str, int, int, str, str]]:
    """Every stored turn, in id order: (bot, channel, user, role, content)."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT bot, channel, user, role, content FROM turns ORDER BY id").fetchall()


def exchange(key: ConversationKey, question: str, answer: str) -> list[tuple[str, int, int, str, str]]:
    return [(key.bot, key.channel, key.user, "user", question), (key.bot, key.channel, key.user, "assistant", answer)]


async def test_an_exchange_is_written_whole_or_not_at_all(store_kind: StoreKind) -> None:
    key = ConversationKey("sage", 1, 2)
    async with store_kind.open() as store:
        await store_kind.refuse_answers(True)
        await store.append_exchange(key, "question", "answer")
        await store.flush()
        assert await store_kind.turns() == [], "no question without its answer"
        await store_kind.refuse_answers(False)
        await store.flush()
        assert await store_kind.turns() == exchange(key, "question", "answer"), "kept in memory and written whole later"


async def test_many_appends_are_group_committed_in_a_few_transactions_in_append_order(tmp_path: Path) -> None:
    db = tmp_path / "m.sqlite3"
    store = SQLiteStore(db)
    statements: list[str] = []
    with store._lock:
        store._db.set_trace_callback(statements.append)
    keys = [ConversationKey("sage", 1, user) for user in range(20)]
    expected = []
    for i in range(10):
        for key in keys:
            await store.append_exchange(key, f"q{i} of {key.user}", f"a{i} of {key.user}")
            expected += exchange(key, f"q{i} of {key.user}", f"a{i} of {key.user}")
    store.close()
    transactions = [sql for sql in statements if sql.startswith("BEGIN")]
    assert 0 < len(transactions) < 20, f"{len(transactions)} transactions for 200 appends"
    assert turns_on_disk(db) == expected, "all 400 turns, in append order"


async def test_reads_and_resets_right_after_an_append_see_it(store_kind: StoreKind) -> None:
    alice, bob, elsewhere = ConversationKey("sage", 1, 2), ConversationKey("sage", 1, 3), ConversationKey("sage", 9, 2)
    async with store_kind.open(flush_interval=3600) as store:  # the writer never gets there first
        await store.append_exchange(alice, "q", "a")
        await store.append_exchange(bob, "q", "a")
        await store.append_exchange(elsewhere, "q", "a")
        assert await store.history(elsewhere, 10) == [Turn("user", "q"), Turn("assistant", "a")], "read on a cache miss"
        assert await store.reset(alice) == 2
        assert await store.history(alice, 10) == []
        assert await store.reset_channel("sage", 1) == 2
        assert await store.history(bob, 10) == []
    assert await store_kind.turns() == exchange(elsewhere, "q", "a")


async def test_while_writes_fail_history_sees_pending_exchanges_and_reset_forgets_them(store_kind: StoreKind) -> None:
    kept, forgotten = ConversationKey("sage", 1, 2), ConversationKey("sage", 1, 3)
    async with store_kind.open() as store:
        await store_kind.refuse_answers(True)
        await store.append_exchange(kept, "q", "a")
        await store.append_exchange(forgotten, "q", "a")
        await store.flush()  # refused: both stay in memory
        assert await store.history(kept, 10) == [Turn("user", "q"), Turn("assistant", "a")], "read on a cache miss"
        assert await store.reset(forgotten) == 2
        assert await store_kind.turns() == []
        await store_kind.refuse_answers(False)
    assert await store_kind.turns() == exchange(kept, "q", "a")


async def test_close_writes_everything_pending_and_a_reopened_store_sees_it(store_kind: StoreKind) -> None:
    key = ConversationKey("sage", 1, 2)
    async with store_kind.open(flush_interval=3600) as store:
        await store.append_exchange(key, "q1", "a1")
        await store.append_exchange(key, "q2", "a2")
        store.add_daily_usage("2024-01-01", "sage", "2", 42)
    async with store_kind.open() as reopened:
        assert [t.content for t in await reopened.history(key, 10)] == ["q1", "a1", "q2", "a2"]
        # read in a worker thread, as QuotaBook does (PostgreSQL's is read on the event loop through it)
        assert await anyio.to_thread.run_sync(reopened.load_daily_usage, "2024-01-01") == {("sage", "2"): 42}


async def test_todays_usage_and_spend_are_known_on_the_event_loop_after_a_restart(store_kind: StoreKind) -> None:
    """SpendBook reads the day's spend on the event loop, where PostgreSQL cannot be waited for."""
    today = time.strftime("%Y-%m-%d", time.gmtime())
    async with store_kind.open(flush_interval=3600) as store:
        store.add_daily_usage(today, "sage", "2", 42)
        store.add_daily_spend(today, "sage", "2", 0.5)
        assert store.load_daily_usage(today) == {("sage", "2"): 42}, "what is pending counts"
    async with store_kind.open() as reopened:
        reopened.add_daily_spend(today, "sage", "2", 0.25)
        assert reopened.load_daily_spend(today) == {("sage", "2"): 0.75}
        assert reopened.load_daily_usage(today) == {("sage", "2"): 42}


async def test_close_stops_the_writer_thread_and_a_second_close_is_harmless(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "m.sqlite3")
    writer = store._writer
    store.close()
    store.close()
    assert writer.name == "sqlite-writer" and writer.daemon and not writer.is_alive()


async def test_a_locked_database_keeps_exchanges_in_memory_and_writes_them_once_released(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="orchestrator.memory.sqlite")
    db = tmp_path / "m.sqlite3"
    store = SQLiteStore(db)
    with store._lock:
        store._db.execute("PRAGMA busy_timeout=20")  # the production 2 s, shortened so the test stays quick
    key = ConversationKey("sage", 1, 2)
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    expected = []
    for i in range(3):
        await store.append_exchange(key, f"q{i}", f"a{i}")
        expected += exchange(key, f"q{i}", f"a{i}")
        await store.flush()  # fails: the exchanges stay in memory
    assert blocker.execute("SELECT count(*) FROM turns").fetchone() == (0,)
    assert [t.content for t in await store.history(key, 10)] == ["q0", "a0", "q1", "a1", "q2", "a2"]
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "orchestrator.memory.sqlite" and r.levelno >= logging.WARNING
    ]
    assert len(warnings) == 1 and str(db) in warnings[0] and "in memory and retrying" in warnings[0], warnings
    blocker.rollback()
    blocker.close()
    await until(lambda: turns_on_disk(db) == expected, within=30)  # the writer thread retries on its own timer
    await store.flush()  # the writer has finished its attempt, log line included
    assert any(r.levelno == logging.INFO and "works again" in r.getMessage() for r in caplog.records)
    store.close()
    errors = [
        r.getMessage() for r in caplog.records if r.name == "orchestrator.memory.sqlite" and r.levelno >= logging.ERROR
    ]
    assert not errors


class _LockedAtBegin:
    """A store's connection whose next ``BEGIN IMMEDIATE`` first runs ``meanwhile``, then is refused
    as a locked database would refuse it."""

    def __init__(self, db: sqlite3.Connection, meanwhile: Callable[[], None]) -> None:
        self._db = db
        self._meanwhile = meanwhile

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)

    def __enter__(self) -> sqlite3.Connection:
        return self._db.__enter__()

    def __exit__(self, *exc: object) -> None:
        self._db.__exit__(*exc)  # type: ignore[arg-type]

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "BEGIN IMMEDIATE":
            self._meanwhile()
            raise sqlite3.OperationalError("database is locked")
        return self._db.execute(sql, *args)


def _wait_until_asleep(condition: threading.Condition) -> None:
    """Until a thread waits on ``condition`` (threading offers no event for it; CPython lists its waiters)."""
    deadline = time.monotonic() + 10
    while not condition._waiters:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the writer thread never went back to waiting"
        time.sleep(0.001)


async def test_writes_a_read_could_not_make_are_retried_by_the_writer_thread(tmp_path: Path) -> None:
    """A read writes what is pending first. When the database refuses, the writes go back to pending;
    the writer thread, woken by the append, may have looked while they were out and gone back to sleep.
    It must be woken again, or they would wait in memory until the next read or the close."""
    db = tmp_path / "m.sqlite3"
    store = SQLiteStore(db, flush_interval=0)
    key = ConversationKey("sage", 1, 2)
    pending = store._pending_cv
    await until(lambda: bool(pending._waiters))  # type: ignore[attr-defined]  # the writer waits for work
    pending.acquire()  # the writer, once woken, must take this lock before it looks
    await store.append_exchange(key, "q", "a")  # wakes the writer

    def let_the_writer_look() -> None:  # the exchange is out of pending, being written
        pending.release()
        _wait_until_asleep(pending)  # it found nothing to write

    with store._lock:  # what a read does first, on a database that refuses
        connection, store._db = store._db, _LockedAtBegin(store._db, let_the_writer_look)  # type: ignore[assignment]
        assert store._flush() is not None
        store._db = connection
    await until(lambda: turns_on_disk(db) == exchange(key, "q", "a"))  # written by the writer thread alone
    store.close()


async def test_appends_never_hand_work_to_a_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "m.sqlite3"
    store = SQLiteStore(db)
    key = ConversationKey("sage", 1, 2)
    assert await store.history(key, 10) == []  # now cached

    def no_thread(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("append_exchange handed work to a worker thread")

    with monkeypatch.context() as patch:
        patch.setattr(anyio.to_thread, "run_sync", no_thread)
        for i in range(3):
            await store.append_exchange(key, f"q{i}", f"a{i}")
        assert [t.content for t in await store.history(key, 10)] == ["q0", "a0", "q1", "a1", "q2", "a2"]
    store.close()
    assert turns_on_disk(db) == [*exchange(key, "q0", "a0"), *exchange(key, "q1", "a1"), *exchange(key, "q2", "a2")]


async def test_a_new_conversation_costs_no_read_and_a_known_one_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "m.sqlite3"
    store = SQLiteStore(db)
    old = ConversationKey("sage", 1, 2)
    await store.append_exchange(old, "q", "a")
    store.close()

    store = SQLiteStore(db)  # a restart: nothing cached
    reads: list[object] = []
    real_run_sync = anyio.to_thread.run_sync

    async def counting_run_sync(fn: Any, *args: Any, **kwargs: Any) -> Any:
        reads.append(fn)
        return await real_run_sync(fn, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting_run_sync)
    assert await store.history(ConversationKey("sage", 1, 3), 10) == []  # a new user
    assert await store.history(ConversationKey("hafez", 1, 2), 10) == []  # another bot, same user
    assert reads == [], "new conversations were looked up in the database"
    assert [t.content for t in await store.history(old, 10)] == ["q", "a"]
    assert len(reads) == 1
    store.close()


async def test_a_sqlite_database_from_before_speakers_is_migrated(tmp_path: Path) -> None:
    db = tmp_path / "old.sqlite3"
    old = sqlite3.connect(db)
    old.executescript(
        "CREATE TABLE turns (id INTEGER PRIMARY KEY, bot TEXT NOT NULL, channel INTEGER NOT NULL,"
        " user INTEGER NOT NULL, role TEXT NOT NULL, content TEXT NOT NULL, created REAL NOT NULL);"
        "INSERT INTO turns (bot, channel, user, role, content, created) VALUES ('sage', 1, 2, 'user', 'old q', 0),"
        " ('sage', 1, 2, 'assistant', 'old a', 0);"
    )
    old.commit()
    old.close()
    key = ConversationKey("sage", 1, 2)
    store = SQLiteStore(db)
    await store.append_exchange(key, "new q", "new a", speaker="Alice", question_id=5, answer_ids=(6,))
    await store.flush()
    store.close()
    reopened = SQLiteStore(db)
    assert await reopened.history(key, 10) == [
        Turn("user", "old q"),
        Turn("assistant", "old a"),
        Turn("user", "new q", "Alice", (5,)),
        Turn("assistant", "new a", "", (6,)),
    ]
    reopened.close()


async def test_command_set_digests_are_kept_per_bot_and_scope_across_a_reopen(store_kind: StoreKind) -> None:
    async with store_kind.open() as store:
        assert await store.command_sets("sage") == {}
        await store.save_command_set("sage", "1/global", "a" * 64)
        await store.save_command_set("sage", "1/guild/2", "b" * 64)
        await store.save_command_set("sage", "1/global", "c" * 64)  # overwritten, not added
        await store.save_command_set("hafez", "3/global", "d" * 64)
    async with store_kind.open() as store:
        assert await store.command_sets("sage") == {"1/global": "c" * 64, "1/guild/2": "b" * 64}
        assert await store.command_sets("hafez") == {"3/global": "d" * 64}
