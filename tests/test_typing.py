"""The typing indicator: coalesced per bot and channel, kept by one task per bot.

End to end through the real discord.py client against the loopback servers, then the rules of
:class:`TypingIndicator` alone with a fake sender.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp
import anyio
import pytest

from orchestrator.discord_io.typing_indicator import TypingIndicator
from orchestrator.sandbox.discord_server import RestFault

from .conftest import FAST, World

QUICK_TYPING = replace(FAST, typing_refresh=0.4, typing_min_interval=0.05)


def typing_posts(world: World, channel_id: int, bot: str = "sage") -> int:
    return world.discord.typing.count((world.bot_ids[bot], channel_id))


async def test_many_answers_in_one_channel_share_one_indicator(world: World) -> None:
    world.write([{"name": "sage", "concurrency": 20}])
    users = [world.discord.add_user(f"user{i}") for i in range(20)]  # 20 conversations, so they overlap
    world.openai.latency = 0.3
    async with world.running():
        posted = [await world.discord.post(f"!chat question {i}", author_id=user) for i, user in enumerate(users)]
        replies = await world.discord.wait_for_sent(20, predicate=lambda m: m.author_id == world.bot_ids["sage"])
        await world.idle()
    assert sorted(reply.reference_id for reply in replies) == sorted(int(message["id"]) for message in posted)
    assert world.openai.max_in_flight > 1, "the answers worked at the same time"
    assert 1 <= typing_posts(world, world.discord.channel_id) <= 3


async def test_each_channel_gets_its_own_indicator(world: World) -> None:
    world.write([{"name": "sage"}])
    other = world.discord.add_channel("other")
    world.openai.latency = 0.3
    async with world.running():
        first = await world.discord.post("!chat here")
        second = await world.discord.post("!chat there", channel_id=other)
        asked = {int(first["id"]), int(second["id"])}
        await world.discord.wait_for_sent(2, predicate=lambda m: m.reference_id in asked)
        await world.idle()
    assert typing_posts(world, world.discord.channel_id) == 1
    assert typing_posts(world, other) == 1


async def test_a_long_answer_keeps_the_indicator_up_and_it_stops_after_the_reply(world: World) -> None:
    world.write([{"name": "sage"}])
    general, other = world.discord.channel_id, world.discord.add_channel("other")
    world.openai.latency = 0.6  # longer than the refresh period, not a multiple of it
    async with world.running(options=QUICK_TYPING):
        [reply] = await world.chat("!chat take your time")
        # While a second long answer works elsewhere, the keeper goes through more refresh periods.
        await world.chat("!chat and here", channel_id=other)
    requests = [(method, path) for method, path, _ in world.discord.rest_log]
    replied = requests.index(("POST", f"/api/v10/channels/{general}/messages"))
    typing = ("POST", f"/api/v10/channels/{general}/typing")
    typing_in_general = [i for i, request in enumerate(requests) if request == typing]
    assert reply.channel_id == general
    assert len(typing_in_general) >= 2, "refreshed while the answer worked"
    assert max(typing_in_general) < replied, "nothing after the reply"
    assert typing_posts(world, other) >= 2


@pytest.mark.fault
@pytest.mark.parametrize("status", [403, 500], ids=["refused", "server-error-retried-by-discord.py"])
async def test_a_failing_typing_endpoint_does_not_stop_answers(world: World, status: int) -> None:
    world.write([{"name": "sage"}])
    other = world.discord.add_channel("other")
    world.openai.latency = 0.2
    world.discord.inject_rest(RestFault(status, "POST", "/typing"))
    async with world.running(options=QUICK_TYPING):
        [first] = await world.chat("!chat one")
        [second] = await world.chat("!chat two")
        [elsewhere] = await world.chat("!chat three", channel_id=other)
    assert first.content.endswith("| one") and second.content.endswith("| two")
    assert elsewhere.content.endswith("| three")
    assert not world.discord.faults, "the typing POST met the fault"
    assert typing_posts(world, other) >= 1, "the keeper went on after the failure"


@pytest.mark.fault
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_a_typing_post_in_flight_reaches_discord_before_the_reply(world: World, stream: bool) -> None:
    world.write([{"name": "sage", "stream": stream}])
    world.discord.inject_rest(RestFault(None, "POST", "/typing", delay=0.3))  # slower than the answer
    async with world.running():
        [reply] = await world.chat("!chat quick one")
    requests = [(method, path) for method, path, _ in world.discord.rest_log]
    general = world.discord.channel_id
    assert reply.content.endswith("| quick one")
    assert requests.index(("POST", f"/api/v10/channels/{general}/typing")) < requests.index(
        ("POST", f"/api/v10/channels/{general}/messages")
    ), "a typing POST handled after the reply would show typing under the finished answer"


@pytest.mark.fault
async def test_no_typing_post_while_a_long_answer_is_delivered(world: World) -> None:
    world.write([{"name": "sage"}])
    world.openai.queue_replies(" ".join(["word"] * 1000))  # three messages
    world.openai.latency = 0.2  # shorter than the refresh period
    world.discord.inject_rest(*(RestFault(None, "POST", "/messages", delay=0.15) for _ in range(3)))
    async with world.running(options=QUICK_TYPING):
        replies = await world.chat("!chat tell me everything")
    requests = [(method, path) for method, path, _ in world.discord.rest_log]
    general = world.discord.channel_id
    first_message = requests.index(("POST", f"/api/v10/channels/{general}/messages"))
    assert len(replies) == 3
    assert ("POST", f"/api/v10/channels/{general}/typing") in requests[:first_message]
    assert ("POST", f"/api/v10/channels/{general}/typing") not in requests[first_message:]


# ---------------------------------------------------------------- the rules, with a fake sender


class FakeTyping:
    """Records each POST (channel id, start time); ``hold`` blocks a channel's POSTs, ``fail`` fails them."""

    def __init__(self) -> None:
        self.posts: list[tuple[int, float]] = []
        self.hold: dict[int, anyio.Event] = {}
        self.fail: set[int] = set()
        self._posted = anyio.Event()

    async def send_typing(self, channel_id: int) -> None:
        self.posts.append((channel_id, anyio.current_time()))
        self._posted.set()
        self._posted = anyio.Event()
        if channel_id in self.hold:
            await self.hold[channel_id].wait()
        if channel_id in self.fail:
            raise aiohttp.ClientConnectionError("connection reset")

    def times(self, channel_id: int) -> list[float]:
        return [at for channel, at in self.posts if channel == channel_id]

    async def wait_for(self, n: int, channel_id: int) -> None:
        while len(self.times(channel_id)) < n:
            await self._posted.wait()


@contextlib.asynccontextmanager
async def keeper(
    *, refresh: float = 60.0, min_interval: float = 0.05, settle_timeout: float = 5.0
) -> AsyncIterator[tuple[TypingIndicator, FakeTyping]]:
    fake = FakeTyping()
    typing = TypingIndicator(
        fake.send_typing, refresh=refresh, min_interval=min_interval, settle_timeout=settle_timeout
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(typing.run)
        with anyio.fail_after(5):
            yield typing, fake
        tg.cancel_scope.cancel()


def gaps(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(times)]


async def test_the_first_answer_posts_at_once_and_more_answers_add_nothing() -> None:
    async with keeper() as (typing, fake):
        with typing.working(1), typing.working(1), typing.working(1):
            await fake.wait_for(1, channel_id=1)
            with typing.working(2):  # a later event: the keeper has had its chance to post again in 1
                await fake.wait_for(1, channel_id=2)
    assert [channel for channel, _ in fake.posts] == [1, 2]


async def test_a_message_posted_while_answers_work_brings_the_indicator_back_after_min_interval() -> None:
    async with keeper(min_interval=0.05) as (typing, fake):
        with typing.working(1), typing.working(1):
            for n in range(2, 5):
                await fake.wait_for(n - 1, channel_id=1)
                typing.sent(1)
                typing.sent(1)
            await fake.wait_for(4, channel_id=1)
    assert len(fake.times(1)) == 4
    assert min(gaps(fake.times(1))) >= 0.05 - 1e-3


async def test_the_indicator_is_refreshed_while_an_answer_works() -> None:
    async with keeper(refresh=0.05, min_interval=0.01) as (typing, fake):
        with typing.working(1):
            await fake.wait_for(3, channel_id=1)
    assert min(gaps(fake.times(1))) >= 0.05 - 1e-3


async def test_a_new_answer_right_after_a_post_waits_for_min_interval() -> None:
    async with keeper(min_interval=0.05) as (typing, fake):
        with typing.working(1):
            await fake.wait_for(1, channel_id=1)
        with typing.working(1):
            await fake.wait_for(2, channel_id=1)
    assert min(gaps(fake.times(1))) >= 0.05 - 1e-3


async def test_no_post_without_active_answers_and_idle_channels_are_forgotten() -> None:
    async with keeper(min_interval=0.0) as (typing, fake):
        with typing.working(1):
            pass  # left before the keeper ran
        typing.sent(3)  # a message in a channel where nothing works
        with typing.working(2):
            await fake.wait_for(1, channel_id=2)
        await anyio.wait_all_tasks_blocked()
        assert typing._channels == {}
    assert [channel for channel, _ in fake.posts] == [2]


async def test_a_slow_post_does_not_hold_up_other_channels_and_a_failed_one_is_survived() -> None:
    async with keeper(refresh=0.05, min_interval=0.01) as (typing, fake):
        fake.hold[1] = anyio.Event()
        fake.fail.add(2)
        with typing.working(1), typing.working(2), typing.working(3):
            await fake.wait_for(1, channel_id=1)
            await fake.wait_for(2, channel_id=2)  # failed, then refreshed all the same
            await fake.wait_for(2, channel_id=3)
            assert len(fake.times(1)) == 1, "at most one POST in flight per channel"
            fake.hold[1].set()
            await fake.wait_for(2, channel_id=1)


async def test_settle_waits_for_the_post_in_flight_in_its_channel_only() -> None:
    async with keeper() as (typing, fake):
        await typing.settle(1)  # nothing known about the channel
        fake.hold[1] = anyio.Event()
        with typing.working(1), typing.working(2):
            await fake.wait_for(1, channel_id=1)
            await fake.wait_for(1, channel_id=2)
            await typing.settle(2)  # its POST is done; channel 1's is held
            settled: list[float] = []

            async def settle() -> None:
                await typing.settle(1)
                settled.append(anyio.current_time())

            async with anyio.create_task_group() as tg:
                tg.start_soon(settle)
                await anyio.wait_all_tasks_blocked()
                assert not settled
                released = anyio.current_time()
                fake.hold[1].set()
            assert settled[0] >= released


async def test_settle_gives_up_after_its_timeout() -> None:
    async with keeper(settle_timeout=0.05) as (typing, fake):
        fake.hold[1] = anyio.Event()
        with typing.working(1):
            await fake.wait_for(1, channel_id=1)
            started = anyio.current_time()
            await typing.settle(1)  # the POST never ends
            assert anyio.current_time() - started >= 0.05 - 1e-3
            fake.hold[1].set()


async def test_a_finished_answer_no_longer_keeps_the_indicator_up() -> None:
    async with keeper(refresh=0.01, min_interval=0.01) as (typing, fake):
        with typing.working(1) as work, typing.working(2):
            await fake.wait_for(1, channel_id=1)
            work.finish()
            work.finish()  # idempotent: the other answers' count is untouched
            await fake.wait_for(5, channel_id=2)  # the keeper went through several refresh periods
            posts_in_1 = len(fake.times(1))
        with typing.working(1):  # and the channel counts answers correctly afterwards
            await fake.wait_for(posts_in_1 + 1, channel_id=1)
    assert posts_in_1 <= 2  # at most one that had started before finish()
