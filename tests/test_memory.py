"""Conversation memory: multi-turn, restarts, isolation, reset scopes, trimming and retention."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from orchestrator.memory import ConversationKey, SQLiteStore, Turn, fit_context

from .conftest import World


def contents(request) -> list[str]:  # type: ignore[no-untyped-def]
    return [m["content"] for m in request.body["messages"][1:]]


async def test_third_request_carries_the_first_two_exchanges_across_a_restart(world: World) -> None:
    world.write([{"name": "sage"}])
    world.openai.set_reply(lambda body: f"A:{body['messages'][-1]['content']}")
    async with world.running():
        await world.chat("!chat one")
        await world.chat("!chat two")
    async with world.running():  # a new process would see the same SQLite file
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


async def test_retention_prunes_old_and_excess_turns(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "m.sqlite3")
    key = ConversationKey("sage", 1, 2)
    other = ConversationKey("hafez", 1, 2)
    for i in range(5):
        await store.append_exchange(key, f"q{i}", f"a{i}")
    await store.append_exchange(other, "old", "old answer")
    with sqlite3.connect(tmp_path / "m.sqlite3") as db:
        db.execute("UPDATE turns SET created = ? WHERE bot = 'hafez'", (time.time() - 90 * 86400,))
    assert await store.prune("sage", None, 4) == 6
    assert [t.content for t in await store.history(key, 50)] == ["q3", "a3", "q4", "a4"]
    assert await store.prune("hafez", 30 * 86400, 50) == 2
    assert await store.history(other, 50) == []
    store.close()


async def test_an_exchange_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "m.sqlite3")
    key = ConversationKey("sage", 1, 2)
    with sqlite3.connect(tmp_path / "m.sqlite3") as db:
        db.execute("CREATE TRIGGER fail BEFORE INSERT ON turns WHEN NEW.role = 'assistant' BEGIN SELECT RAISE(ABORT, 'boom'); END")
    try:
        await store.append_exchange(key, "question", "answer")
    except sqlite3.DatabaseError:
        pass
    else:  # pragma: no cover
        raise AssertionError("the trigger should have failed the insert")
    fresh = SQLiteStore(tmp_path / "m.sqlite3")
    assert await fresh.history(key, 10) == []
    store.close()
    fresh.close()
