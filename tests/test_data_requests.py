"""Backups and data requests: `orchestrator memory backup | forget | export`, through the store."""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import datetime
from pathlib import Path

import anyio
import pytest

from orchestrator.memory import ConversationKey, Forgotten, SQLiteStore, Store

from .conftest import World
from .inprocess import run_cli
from .stores import StoreKind

ALICE, BOB = 80351110224678912, 80351110224678913


async def seeded_store(path: Path) -> SQLiteStore:
    store = SQLiteStore(path)
    await seed(store)
    return store


async def seed(store: Store) -> None:
    await store.append_exchange(ConversationKey("sage", 1, ALICE), "alice to sage", "sage to alice")
    await store.append_exchange(ConversationKey("hafez", 2, ALICE), "alice to hafez", "hafez to alice")
    await store.append_exchange(ConversationKey("sage", 1, BOB), "bob to sage", "sage to bob")
    for bot, user, tokens in (("sage", ALICE, 10), ("hafez", ALICE, 20), ("sage", BOB, 30), ("sage", "*", 40)):
        store.add_daily_usage("2025-01-02", bot, str(user), tokens)
    store.add_daily_spend("2025-01-02", "sage", str(ALICE), 0.25)
    await store.flush()


def rows(path: Path, sql: str) -> list[tuple]:
    db = sqlite3.connect(path)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def write_config(tmp_path: Path, database: Path) -> Path:
    path = tmp_path / "bots.yaml"
    path.write_text(
        "providers: {local: {base_url: 'http://127.0.0.1:9/v1', api_key_env: KEY}}\n"
        f"database: {database}\n"
        "bots:\n  - {name: sage, token_env: TOKEN_SAGE, persona: p}\n"
        "  - {name: hafez, token_env: TOKEN_HAFEZ, persona: p}\n",
        encoding="utf-8",
    )
    return path


# ---------------------------------------------------------------- the store


async def test_forget_deletes_one_users_turns_and_usage_and_nothing_else(store_kind: StoreKind) -> None:
    async with store_kind.open() as store:
        await seed(store)
        assert await store.history(ConversationKey("sage", 1, ALICE), 10)  # cached
        assert await store.forget_user(ALICE, "sage") == Forgotten(turns=2, usage_days=1)
        assert await store.history(ConversationKey("sage", 1, ALICE), 10) == []  # not from the cache either
        assert len(await store.history(ConversationKey("hafez", 2, ALICE), 10)) == 2
        assert await store.forget_user(ALICE) == Forgotten(turns=2, usage_days=1)
        assert await store.forget_user(ALICE) == Forgotten(turns=0, usage_days=0)
    assert [(bot, user, content) for bot, _channel, user, _role, content in await store_kind.turns()] == [
        ("sage", BOB, "bob to sage"),
        ("sage", BOB, "sage to bob"),
    ]
    assert [(bot, user, tokens) for _day, bot, user, tokens, _usd in await store_kind.usage()] == [
        ("sage", "*", 40),
        ("sage", str(BOB), 30),
    ]


async def test_forget_also_drops_what_is_not_written_yet(store_kind: StoreKind) -> None:
    async with store_kind.open(flush_interval=3600) as store:  # the writer would wait an hour
        await store.append_exchange(ConversationKey("sage", 1, ALICE), "pending", "pending too")
        store.add_daily_usage("2025-01-02", "sage", str(ALICE), 5)
        assert await store.forget_user(ALICE) == Forgotten(turns=2, usage_days=1)
    assert await store_kind.turns() == [] and await store_kind.usage() == []


async def test_export_has_every_turn_with_bot_channel_role_content_and_time(store_kind: StoreKind) -> None:
    async with store_kind.open() as store:
        await seed(store)
        data = await store.export_user(ALICE)
    assert [(t.bot, t.channel, t.role, t.content) for t in data.turns] == [
        ("sage", 1, "user", "alice to sage"),
        ("sage", 1, "assistant", "sage to alice"),
        ("hafez", 2, "user", "alice to hafez"),
        ("hafez", 2, "assistant", "hafez to alice"),
    ]
    assert all(t.user == ALICE and t.created > 1e9 for t in data.turns)
    assert [(u.bot, u.tokens, u.usd) for u in data.usage] == [("hafez", 20, 0.0), ("sage", 10, 0.25)]


async def test_backup_is_consistent_while_another_connection_writes(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite3"
    store = await seeded_store(path)
    with sqlite3.connect(path) as db:  # some megabytes, so that the copy takes a while
        db.executemany(
            "INSERT INTO turns (bot, channel, user, role, content, created) VALUES ('old', 8, 8, 'user', ?, 0)",
            (("x" * 500,) for _ in range(20_000)),
        )
    db.close()
    writing, stop = threading.Event(), threading.Event()
    committed = [0]

    def writer() -> None:  # another process's connection: each exchange is one transaction of two rows
        db = sqlite3.connect(path, isolation_level=None, timeout=10)
        while not stop.is_set() and committed[0] < 5000:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT INTO turns (bot, channel, user, role, content, created) VALUES ('w', 9, 9, ?, 'x', 0)",
                [("user",), ("assistant",)],
            )
            db.execute("COMMIT")
            committed[0] += 1
            if committed[0] == 50:
                writing.set()
        db.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        await anyio.to_thread.run_sync(writing.wait)
        await store.backup(tmp_path / "backup.sqlite3")
        at_backup_end = committed[0]
    finally:
        stop.set()
        await anyio.to_thread.run_sync(thread.join)
    store.close()
    copy = tmp_path / "backup.sqlite3"
    assert rows(copy, "PRAGMA integrity_check") == [("ok",)]
    [(copied,)] = rows(copy, "SELECT COUNT(*) FROM turns WHERE bot = 'w'")
    assert copied % 2 == 0 and 2 * 50 <= copied <= 2 * at_backup_end  # whole transactions, none from after
    assert rows(copy, "SELECT COUNT(*) FROM turns WHERE bot NOT IN ('w', 'old')") == [(6,)]
    assert not (tmp_path / "backup.sqlite3.partial").exists()


async def test_backup_does_not_wait_for_nor_copy_an_uncommitted_transaction(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite3"
    store = await seeded_store(path)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO turns (bot, channel, user, role, content, created) VALUES ('w', 9, 9, 'user', 'x', 0)")
    with anyio.fail_after(10):
        await store.backup(tmp_path / "backup.sqlite3")
    other.execute("COMMIT")
    other.close()
    store.close()
    assert rows(tmp_path / "backup.sqlite3", "SELECT COUNT(*) FROM turns") == [(6,)]


# ---------------------------------------------------------------- the command line


async def test_backup_export_and_forget_while_run_is_running(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    world.write([{"name": "sage"}, {"name": "hafez", "prefix": "?"}])
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # these commands need no secrets
    user = str(world.discord.default_user_id)
    async with world.running() as app:
        await world.chat("!chat remember me")
        await world.chat("?chat and me")
        assert app.supervisor is not None
        await app.supervisor.services.store.flush()  # run writes within 50 ms: do not wait for it
        backup = world.tmp_path / "backup.sqlite3"
        assert await anyio.to_thread.run_sync(lambda: run_cli("memory", "backup", str(backup), str(world.path))) == 0
        assert f"to {backup}" in capsys.readouterr().out
        assert [r[0] for r in rows(backup, "SELECT content FROM turns ORDER BY id")][::2] == ["remember me", "and me"]

        assert await anyio.to_thread.run_sync(lambda: run_cli("memory", "export", "--user", user, str(world.path))) == 0
        exported = json.loads(capsys.readouterr().out)
        assert exported["user"] == user
        assert [(t["bot"], t["role"], t["content"]) for t in exported["turns"]][::2] == [
            ("sage", "user", "remember me"),
            ("hafez", "user", "and me"),
        ]
        turn = exported["turns"][0]
        assert turn["channel"] == str(world.discord.channel_id)
        assert datetime.fromisoformat(turn["time"]).utcoffset() is not None
        assert {u["bot"] for u in exported["usage"]} == {"sage", "hafez"}

        code = await anyio.to_thread.run_sync(
            lambda: run_cli("memory", "forget", "--user", user, "--bot", "sage", str(world.path))
        )
        assert code == 0
        out, err = capsys.readouterr()
        assert f"forgot user {user} (bot 'sage'): 2 turn(s), 1 daily usage record(s)" in out
        assert "until it restarts" in err

    database = world.tmp_path / "memory.sqlite3"
    assert rows(database, f"SELECT bot FROM turns WHERE user = {user}") == [("hafez",), ("hafez",)]
    assert rows(database, f"SELECT bot FROM daily_usage WHERE user = '{user}'") == [("hafez",)]


@pytest.mark.bad_input
@pytest.mark.parametrize("user", ["abc", "-5", "0", "12 34", ""])
def test_a_user_id_must_be_a_discord_id(user: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        run_cli("memory", "forget", "--user", user)
    assert exited.value.code == 2
    assert "--user: must be a Discord user id" in capsys.readouterr().err


@pytest.mark.bad_input
def test_a_missing_database_is_reported_and_not_created(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, tmp_path / "nope.sqlite3")
    for command in (
        ["export", "--user", str(ALICE)],
        ["forget", "--user", str(ALICE)],
        ["backup", str(tmp_path / "b")],
    ):
        assert run_cli("memory", *command[:1], *command[1:], str(config)) == 1
        assert f"no database at {tmp_path / 'nope.sqlite3'}" in capsys.readouterr().err
    assert not (tmp_path / "nope.sqlite3").exists() and not (tmp_path / "b").exists()


@pytest.mark.bad_input
def test_backup_never_overwrites_by_accident(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    database = tmp_path / "m.sqlite3"

    async def seed() -> None:
        (await seeded_store(database)).close()

    anyio.run(seed)
    config = write_config(tmp_path, database)
    (tmp_path / "old-backup").write_text("keep me")
    assert run_cli("memory", "backup", str(tmp_path / "old-backup"), str(config)) == 1
    assert "exists; name a new file, or add --force" in capsys.readouterr().err
    assert (tmp_path / "old-backup").read_text() == "keep me"
    assert run_cli("memory", "backup", str(database), str(config)) == 2
    assert "is the database itself" in capsys.readouterr().err
    assert run_cli("memory", "backup", str(tmp_path / "old-backup"), str(config), "--force") == 0
    assert rows(tmp_path / "old-backup", "SELECT COUNT(*) FROM turns") == [(6,)]
    assert run_cli("memory", "backup", str(tmp_path / "no-such-dir" / "b"), str(config)) == 1
    assert "cannot write the backup to" in capsys.readouterr().err
