"""End to end: real discord.py bots and the real openai SDK against the loopback servers."""

from __future__ import annotations

import gc

import anyio
import pytest

from orchestrator.app import App
from orchestrator.persona.replies import BUSY, EMPTY_ANSWER
from orchestrator.runtime.supervisor import BotState
from orchestrator.sandbox.openai_server import Fault, echo_reply, said

from .conftest import FAST, World


async def test_two_bots_answer_with_their_own_persona_model_and_parameters(world: World) -> None:
    world.write(
        [
            {"name": "sage", "persona": "You are Sage, a philosopher.", "params": {"temperature": 0.3, "top_p": 0.5}},
            {
                "name": "hafez",
                "prefix": "?",
                "model": "sandbox-small",
                "persona": "تو حافظ هستی.",
                "params": {"temperature": 1.1, "frequency_penalty": 0.4, "presence_penalty": -0.2, "max_tokens": 77},
            },
        ]
    )
    async with world.running():
        sage_reply = await world.chat("!chat what is virtue?")
        hafez_reply = await world.chat("?chat سلام دوست من")

    first, second = world.openai.chat_requests
    assert first.body["model"] == "gpt-4o-mini"
    assert first.body["messages"][0]["content"].startswith("You are Sage, a philosopher.\n\nYou are in #general")
    assert first.body["messages"][-1] == {"role": "user", "name": "alice", "content": "alice: what is virtue?"}
    assert (first.body["temperature"], first.body["top_p"], first.body["max_tokens"]) == (0.3, 0.5, 200)
    assert second.body["model"] == "sandbox-small"
    assert second.body["messages"][0]["content"].startswith("تو حافظ هستی.\n\n")
    assert (second.body["temperature"], second.body["frequency_penalty"], second.body["presence_penalty"]) == (
        1.1,
        0.4,
        -0.2,
    )
    assert second.body["max_tokens"] == 77
    assert [m.author_id for m in sage_reply] == [world.bot_ids["sage"]]
    assert [m.author_id for m in hafez_reply] == [world.bot_ids["hafez"]]
    assert sage_reply[0].content == echo_reply(first.body)
    assert hafez_reply[0].content == echo_reply(second.body)


async def test_typing_indicator_is_shown_while_answering(world: World) -> None:
    world.write([{"name": "sage"}])
    world.openai.latency = 0.3  # the indicator is sent beside the work, so give the work some time
    async with world.running():
        await world.chat("!chat hello")
    assert (world.bot_ids["sage"], world.discord.channel_id) in world.discord.typing


async def test_answer_is_a_reply_that_pings_nobody(world: World) -> None:
    world.write([{"name": "sage"}])
    world.openai.queue_replies("Sure! @everyone @here <@123456789> <@!42> <@&987654321> look")
    async with world.running():
        posted_before = len(world.discord.sent)
        [reply] = await world.chat("!chat ping everyone please")
    assert posted_before == 0
    assert reply.reference_id is not None
    assert reply.allowed_mentions is not None and reply.allowed_mentions.get("parse") == []
    assert not reply.allowed_mentions.get("users") and not reply.allowed_mentions.get("roles")
    assert reply.allowed_mentions.get("replied_user") is False
    assert "@everyone" not in reply.content and "@here" not in reply.content
    assert "<@123456789>" not in reply.content and "<@&987654321>" not in reply.content


async def test_long_persian_answer_with_code_is_split_under_the_limit(world: World) -> None:
    persian = " ".join(["این یک جملهٔ فارسی نسبتاً طولانی است که می‌خواهیم درست تقسیم شود."] * 60)
    code = "```python\n" + "\n".join(f"print('line {i}')  # توضیح" for i in range(150)) + "\n```"
    answer = persian + "\n\n" + code + "\n\nپایان."
    world.write([{"name": "sage"}])
    world.openai.queue_replies(answer)
    async with world.running():
        chunks = await world.chat("!chat long please")
    assert len(chunks) >= 3
    assert all(len(chunk.content) <= 2000 for chunk in chunks)
    assert chunks[0].reference_id is not None and all(c.reference_id is None for c in chunks[1:])
    for chunk in chunks:
        assert chunk.content.count("```") % 2 == 0, "every message closes the code blocks it opens"
    code_chunks = [c.content for c in chunks if "print(" in c.content]
    assert all(c.lstrip().startswith("```python") or "```python" in c for c in code_chunks)
    words = "\n".join(c.content for c in chunks).replace("```python", "").replace("```", "").split()
    assert words == answer.replace("```python", "").replace("```", "").split()


async def test_empty_chat_gets_a_hint_and_no_provider_call(world: World) -> None:
    world.write([{"name": "sage"}])
    async with world.running():
        [reply] = await world.chat("!chat    ")
    assert "!chat hello" in reply.content
    assert world.openai.chat_requests == []


async def test_empty_model_answer_is_explained(world: World) -> None:
    world.write([{"name": "sage"}])
    world.openai.queue_replies("   ")
    async with world.running():
        [reply] = await world.chat("!chat say nothing")
    assert reply.content == EMPTY_ANSWER


async def test_messages_from_bots_are_ignored(world: World) -> None:
    world.write([{"name": "sage"}, {"name": "echo", "prefix": "?"}])
    other_bot = world.discord.add_user("otherbot", bot=True)
    async with world.running():
        await world.discord.post("!chat are you there?", author_id=other_bot)
        await world.discord.post("!chat from the bot's own account", author_id=world.bot_ids["sage"])
        reply = await world.chat("?chat human here")  # processed after the ignored ones
    assert [m.author_id for m in reply] == [world.bot_ids["echo"]]
    assert len(world.discord.sent) == 1
    assert len(world.openai.chat_requests) == 1


async def test_mention_and_reply_address_one_persona(world: World) -> None:
    world.write([{"name": "sage"}, {"name": "hafez", "prefix": "?"}])
    async with world.running():
        sage_id = world.bot_ids["sage"]
        [first] = await world.chat(f"<@{sage_id}> what is time?", mentions=[sage_id])
        [second] = await world.chat("and space?", reply_to=first.id)
    assert {first.author_id, second.author_id} == {sage_id}
    assert said(world.openai.chat_requests[0].body["messages"][-1]) == "what is time?"
    assert said(world.openai.chat_requests[1].body["messages"][-1]) == "and space?"


async def test_provider_refusing_the_key_is_explained_without_the_key(world: World) -> None:
    world.write([{"name": "sage"}])
    async with world.running(world.load({"OPENAI_API_KEY": "sk-wrong-key-000000"})):
        [reply] = await world.chat("!chat hi")
    assert "API key was refused" in reply.content
    assert "sk-wrong" not in reply.content
    assert len(world.openai.chat_requests) == 1, "a refused key is not retried"


async def test_overloaded_provider_is_retried_then_explained(world: World) -> None:
    world.write(
        [{"name": "sage"}],
        providers={"openai": {"base_url": world.openai.base_url, "api_key_env": "OPENAI_API_KEY", "max_retries": 2}},
    )
    world.openai.inject(*[Fault.server_error(503)] * 3)
    async with world.running():
        [reply] = await world.chat("!chat hi")
    assert "busy" in reply.content
    assert len(world.openai.chat_requests) == 3


async def test_timeout_is_explained(world: World) -> None:
    world.write(
        [{"name": "sage"}],
        providers={
            "openai": {
                "base_url": world.openai.base_url,
                "api_key_env": "OPENAI_API_KEY",
                "timeout": 0.3,
                "max_retries": 0,
            }
        },
    )
    world.openai.inject(Fault.timeout(5))
    async with world.running():
        [reply] = await world.chat("!chat hi")
    assert "took too long" in reply.content


async def test_full_mailbox_answers_busy(world: World) -> None:
    world.write([{"name": "sage", "mailbox_size": 1, "concurrency": 1}])
    world.openai.latency = 0.5
    async with world.running():
        for i in range(4):
            await world.discord.post(f"!chat flood {i}")
        busy = await world.discord.wait_for_sent(2, predicate=lambda m: m.content == BUSY)
        await world.idle()
    assert len(busy) == 2
    answers = [m for m in world.discord.sent if m.content != BUSY]
    assert len(answers) == 2


async def test_same_user_is_answered_in_order_seeing_the_previous_exchange(world: World) -> None:
    world.write([{"name": "sage", "concurrency": 4}])
    world.openai.set_reply(lambda body: f"answer to {said(body['messages'][-1])}")
    async with world.running():
        await world.discord.post("!chat one")
        await world.discord.post("!chat two")
        await world.discord.wait_for_sent(2)
        await world.idle()
    first, second = world.openai.chat_requests
    assert said(first.body["messages"][-1]) == "one"
    assert [said(m) for m in second.body["messages"][1:]] == ["one", "answer to one", "two"]
    assert [m.content for m in world.discord.sent] == ["answer to one", "answer to two"]


async def test_one_flooding_user_cannot_fill_the_mailbox_for_everyone(world: World) -> None:
    world.write([{"name": "sage", "mailbox_size": 6, "concurrency": 2}])  # 8 places, at most 2 per user
    world.openai.latency = 0.3
    flooder, other = world.discord.add_user("flooder"), world.discord.add_user("other")
    async with world.running():
        for i in range(6):
            await world.discord.post(f"!chat flood {i}", author_id=flooder)
        chain = await world.chat("!chat my turn", author_id=other, timeout=20)
        await world.idle()
    assert any(m.content.endswith("| my turn") for m in chain)
    assert sum(1 for m in world.discord.sent if m.content == BUSY) == 4


async def test_messages_for_nobody_are_dropped_before_discord_py_parses_them(world: World) -> None:
    world.write([{"name": "sage"}, {"name": "hafez", "prefix": "?", "access": {"allow_bots": True}}])
    async with world.running() as app:
        assert app.supervisor is not None
        sage = app.supervisor.children["sage"].actor
        hafez = app.supervisor.children["hafez"].actor
        assert sage is not None and hafez is not None
        me = str(world.bot_ids["sage"])
        guild = {"guild_id": "1", "channel_id": "2", "id": "3", "author": {"id": "5", "bot": False}}
        assert sage._addressed({**guild, "content": "!chat hi"})
        assert not sage._addressed({**guild, "content": "?chat hi"})
        assert not sage._addressed({**guild, "content": "just talking"})
        assert sage._addressed({**guild, "content": "hey", "mentions": [{"id": me}]})
        assert sage._addressed({**guild, "content": "and?", "referenced_message": {"author": {"id": me}}})
        assert sage._addressed({"author": {"id": "5"}, "content": "a DM"})
        assert not sage._addressed({**guild, "author": {"id": "6", "bot": True}, "content": "!chat from a bot"})
        assert hafez._addressed({**guild, "author": {"id": "6", "bot": True}, "content": "?chat from a bot"})
        [reply] = await world.chat("?chat still parsed when addressed")
    assert reply.author_id == world.bot_ids["hafez"]


async def test_start_up_objects_leave_the_cyclic_gc_once_every_bot_has_started(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full GC over start-up objects paused the loop ~30 ms; they are frozen once the bots run."""
    frozen = anyio.Event()
    states_when_frozen: list[list[BotState]] = []
    world.write([{"name": "sage"}, {"name": "hafez", "prefix": "?"}])
    app = App(world.load(), options=FAST, handle_signals=False, watch=False)

    def freeze() -> None:
        assert app.supervisor is not None
        states_when_frozen.append([child.state for child in app.supervisor.children.values()])
        frozen.set()

    monkeypatch.setattr(gc, "freeze", freeze)  # also leaves the test process's own GC as it is
    async with anyio.create_task_group() as tg:
        await tg.start(app.run)
        with anyio.fail_after(10):
            await frozen.wait()
        app.request_stop()
    assert states_when_frozen == [[BotState.RUNNING, BotState.RUNNING]]
