"""Fleet-wide "taken once" (fleet/claims.py) on the real Redis: a message answered is marked once
(the first holder stays) with an expiry, in batches, the last ones as the node stops; a node cut off
from Redis marks nothing and says so once. Then with two in-process apps over the loopback Discord and
OpenAI: a node running a bot without its lease answers nothing it reads (one model request in all);
a node catching up leaves a message another node answered even where the reply lies beyond what it
reads; and Redis cut off, every message is still answered."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import anyio
import pytest
from redis.asyncio import Redis

from orchestrator.fleet.claims import FleetClaims
from orchestrator.fleet.connection import RECHECK, open_redis
from orchestrator.persona.catch_up import CATCH_UP_LIMIT
from orchestrator.runtime.supervisor import BotState
from tests.conftest import World
from tests.fleet_helpers import TcpProxy
from tests.test_fleet_app import NODES, answered_once, nodes, running, write_fleet
from tests.waiting import until

A, B = "node-a#1", "node-b#2"  # two nodes' lease holders
MESSAGE = 1234567890


@dataclass
class Clock:
    monotonic: float = 1000.0


async def test_an_answered_message_is_marked_once_with_an_expiry(redis: Redis, key_prefix: str) -> None:
    a, b = FleetClaims(redis, key_prefix, A, ttl=60.0), FleetClaims(redis, key_prefix, B)
    assert await b.answered_already("sage", [MESSAGE, MESSAGE + 1]) == set()
    await a.answered("sage", MESSAGE)  # not batching: at once
    assert await b.answered_already("sage", [MESSAGE, MESSAGE + 1]) == {MESSAGE}
    await b.answered("sage", MESSAGE)  # a second answer (it cannot happen under the leases) keeps the first mark
    assert await redis.get(a.key("sage", MESSAGE)) == A.encode()
    assert 0 < await redis.pttl(a.key("sage", MESSAGE)) <= 60_000
    assert await a.answered_already("rumi", [MESSAGE]) == set(), "another bot"
    await b.answered("sage", MESSAGE + 2)
    assert 300_000 < await redis.pttl(b.key("sage", MESSAGE + 2)) <= 600_000, "longer than catch-up's window"


async def test_marks_go_in_batches_and_the_last_ones_as_the_node_stops(redis: Redis, key_prefix: str) -> None:
    claims = FleetClaims(redis, key_prefix, A, every=3600.0)  # no batch goes by time in this test
    async with claims.marking():
        for offset in range(3):
            await claims.answered("sage", MESSAGE + offset)
        assert not await redis.exists(claims.key("sage", MESSAGE)), "queued, not sent yet"
        assert await claims.answered_already("sage", [MESSAGE + 2]) == {MESSAGE + 2}, "a read sends what is queued"
        assert await redis.exists(claims.key("sage", MESSAGE))
        await claims.answered("sage", MESSAGE + 3)
    assert await redis.exists(claims.key("sage", MESSAGE + 3)), "sent as the node stopped"
    fast = FleetClaims(redis, key_prefix, B)
    async with fast.marking():
        await fast.answered("rumi", MESSAGE)
        await until(lambda: _exists(redis, fast.key("rumi", MESSAGE)))  # within MARK_EVERY, without a read


async def _exists(redis: Redis, key: str) -> bool:
    return bool(await redis.exists(key))


async def test_a_node_cut_off_from_redis_marks_nothing_and_says_so_once(
    redis: Redis, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    proxy = TcpProxy(6379)
    async with anyio.create_task_group() as tg:
        port = await tg.start(proxy.serve)
        client = open_redis(f"redis://127.0.0.1:{port}/0", timeout=0.5)
        try:
            claims = FleetClaims(client, key_prefix, A, clock=lambda: clock.monotonic)
            await claims.answered("sage", MESSAGE)
            proxy.cut()
            with caplog.at_level(logging.WARNING):
                await claims.answered("sage", MESSAGE + 1)  # lost, not raised
                assert await claims.answered_already("sage", [MESSAGE]) == set(), "catch-up goes by the replies"
                clock.monotonic += RECHECK  # tried again, still cut off: no second line
                assert await claims.answered_already("sage", [MESSAGE]) == set()
            assert caplog.text.count("cannot reach Redis to mark answered messages") == 1 and claims.redis_error
            await tg.start(proxy.serve)  # Redis answers again on the same port, tried after RECHECK
            clock.monotonic += RECHECK
            assert await claims.answered_already("sage", [MESSAGE, MESSAGE + 1]) == {MESSAGE}
            assert claims.redis_error is None
        finally:
            await client.aclose()
        tg.cancel_scope.cancel()


# ---------------------------------------------------------------- two apps, one fleet


async def test_a_node_running_a_bot_without_its_lease_answers_nothing_it_reads(
    world: World, redis_url: str, key_prefix: str, postgres_url: str
) -> None:
    world.database = postgres_url
    world.openai.latency = 1.0  # node-a is still asking the model when node-b reads the message
    write_fleet(world, redis_url, key_prefix, {"sage": "!"}, ttl=60.0)  # sage's place is node-a
    async with nodes(world, *NODES) as apps:
        a, b = apps["node-a"], apps["node-b"]
        await until(lambda: running(a) == {"sage"} and not running(b))
        question = await world.discord.post("!chat just once, please")
        await world.openai.wait_for_requests(1)
        assert b.supervisor is not None
        b.supervisor.start_bot("sage")  # a second process running sage without its lease ...
        await until(lambda: running(b) == {"sage"})
        actor = b.supervisor.children["sage"].actor
        assert actor is not None  # ... catches up from before the question, unanswered yet
        await actor._catch_up({world.discord.channel_id: int(question["id"]) - 1})
        await until(lambda: actor.counters.claimed_elsewhere == 1)
        await answered_once(world, question, "sage")
        assert len(world.openai.chat_requests) == 1, "node-b asked the model too"
        metrics = b.metrics.exposition().decode()
        assert 'orchestrator_fleet_messages_claimed_elsewhere_total{bot="sage"} 1.0' in metrics


async def test_a_node_catching_up_leaves_a_message_another_node_answered_though_the_reply_is_beyond_its_read(
    world: World, redis_url: str, key_prefix: str, postgres_url: str
) -> None:
    world.database = postgres_url
    world.openai.latency = 0.5  # the channel goes on while node-a is answering
    write_fleet(world, redis_url, key_prefix, {"sage": "!"}, ttl=60.0)
    async with nodes(world, "node-a") as apps:
        await until(lambda: running(apps["node-a"]) == {"sage"})
        question = await world.discord.post("!chat answered once")
        await world.openai.wait_for_requests(1)
        for index in range(CATCH_UP_LIMIT):  # chatter: the answer lands beyond a catch-up read from the question
            await world.discord.post(f"chatter {index}")
        await answered_once(world, question, "sage")
    async with nodes(world, "node-b") as apps:  # sage's lease, released by node-a, is node-b's
        b = apps["node-b"]
        await until(lambda: running(b) == {"sage"})
        assert b.supervisor is not None
        actor = b.supervisor.children["sage"].actor
        assert actor is not None  # a catch-up from before the question (a position saved before it was answered)
        await actor._catch_up({world.discord.channel_id: int(question["id"]) - 1})
        await actor.wait_idle()
    assert len([m for m in world.discord.sent if m.reference_id == int(question["id"])]) == 1, "answered again"
    assert len(world.openai.chat_requests) == 1


@pytest.mark.fault
async def test_with_redis_cut_off_every_message_is_still_answered_and_the_log_says_so_once(
    world: World, key_prefix: str, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    world.database = postgres_url
    proxy = TcpProxy(6379)
    async with anyio.create_task_group() as tg:
        port = await tg.start(proxy.serve)
        write_fleet(world, f"redis://127.0.0.1:{port}/0", key_prefix, {"sage": "!"}, ttl=60.0)
        async with nodes(world, "node-a") as apps:
            a = apps["node-a"]
            await until(lambda: running(a) == {"sage"})
            await answered_once(world, await world.discord.post("!chat before"), "sage")
            proxy.cut()
            with caplog.at_level(logging.WARNING, logger="orchestrator.fleet.claims"):
                for question in ("!chat while cut off", "!chat still cut off"):
                    await answered_once(world, await world.discord.post(question), "sage")
                await until(lambda: "cannot reach Redis to mark answered messages" in caplog.text)
            assert a.supervisor is not None and a.supervisor.children["sage"].state is BotState.RUNNING
        tg.cancel_scope.cancel()
    assert caplog.text.count("cannot reach Redis to mark answered messages") == 1, caplog.text

