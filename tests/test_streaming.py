"""Streamed answers: first words at once, edits within Discord's rate limit, exact final text."""

from __future__ import annotations

from orchestrator.discord_io.streaming import CUT_NOTE, EditBudget
from orchestrator.sandbox.openai_server import Fault, said

from .conftest import World


def writes_per_window(world: World, channel_id: int, window: float = 5.0) -> int:
    """The most message sends + edits in ``channel_id`` within any ``window`` seconds."""
    times = sorted(
        t
        for (method, path, status), t in zip(world.discord.rest_log, world.discord.rest_times, strict=True)
        if method in ("POST", "PATCH")
        and path.endswith(("/messages", "/messages/" + path.rsplit("/", 1)[-1]))
        and f"/channels/{channel_id}/" in path
        and status < 300
    )
    return max((sum(1 for u in times if t <= u < t + window) for t in times), default=0)


async def test_streamed_answer_is_edited_in_place_and_ends_exact(world: World) -> None:
    answer = " ".join(f"word{i}" for i in range(40))
    world.write([{"name": "sage", "stream": True}])
    world.openai.queue_replies(answer)
    world.openai.tokens_per_second = 40
    async with world.running():
        [message] = await world.chat("!chat tell me a story")
    assert message.edits, "the first words were sent before the answer was complete, then edited"
    assert message.content == answer
    assert world.openai.chat_requests[0].body["stream"] is True
    first_text = message.payload.get("content", "")
    assert first_text and len(first_text) < len(answer)


async def test_five_streams_in_one_channel_share_the_edit_budget(world: World) -> None:
    world.write([{"name": "sage", "stream": True, "concurrency": 8}])
    world.openai.set_reply(lambda body: " ".join(["token"] * 60))
    world.openai.tokens_per_second = 30  # each stream lasts ~2 s
    users = [world.discord.add_user(f"user{i}") for i in range(5)]
    async with world.running():
        for user in users:
            await world.discord.post("!chat go", author_id=user)
        await world.discord.wait_for_sent(5)
        await world.idle()
    assert [m.content for m in world.discord.sent] == [" ".join(["token"] * 60)] * 5
    assert writes_per_window(world, world.discord.channel_id) <= 5


async def test_long_streamed_answer_continues_in_new_messages(world: World) -> None:
    answer = "\n\n".join("paragraph " + " ".join(["lorem"] * 60) for _ in range(12))  # ~4.4k characters
    world.write([{"name": "sage", "stream": True}])
    world.openai.queue_replies(answer)
    async with world.running():
        messages = await world.chat("!chat write a lot")
    assert len(messages) >= 3
    assert all(len(m.content) <= 2000 for m in messages)
    assert "\n\n".join(m.content for m in messages).split() == answer.split()


async def test_cut_stream_keeps_the_partial_answer_marked_and_remembers_nothing(world: World) -> None:
    world.write([{"name": "sage", "stream": True}])
    world.openai.queue_replies("one two three four five six seven eight")
    world.openai.inject(Fault.cut(after=3))
    async with world.running():
        [message] = await world.chat("!chat go on")
        world.openai.queue_replies("fresh")
        await world.chat("!chat again")
    assert message.content.endswith(CUT_NOTE)
    assert message.content.startswith("one two")
    second = world.openai.chat_requests[1].body["messages"]
    assert [said(m) for m in second[1:]] == ["again"], "a cut answer is not remembered"


async def test_stream_failing_before_any_text_gives_the_plain_error(world: World) -> None:
    world.write(
        [{"name": "sage", "stream": True}],
        providers={"openai": {"base_url": world.openai.base_url, "api_key_env": "OPENAI_API_KEY", "max_retries": 0}},
    )
    world.openai.inject(Fault.server_error(503))
    async with world.running():
        [message] = await world.chat("!chat hi")
    assert "busy" in message.content


def test_edit_budget_is_a_sliding_window() -> None:
    now = [100.0]
    budget = EditBudget(rate=5, per=5.0, clock=lambda: now[0])
    stamps = [budget.try_take() for _ in range(5)]
    assert all(stamps) and budget.try_take() is None
    assert budget.wait_time() == 5.0
    now[0] += 4.9
    assert budget.try_take() is None
    now[0] += 0.1
    assert all(budget.try_take() for _ in range(5)) and budget.try_take() is None


def test_a_slow_write_counts_from_when_it_finished() -> None:
    now = [0.0]
    budget = EditBudget(rate=1, per=5.0, clock=lambda: now[0])
    stamp = budget.try_take()
    assert stamp is not None
    now[0] = 2.0  # the request took two seconds
    budget.done(stamp)
    now[0] = 5.5
    assert budget.try_take() is None and budget.wait_time() == 1.5
