"""Fleet-wide "taken once" (fleet/claims.py) on the real Redis: the messages a node answered are marked
with its next round and with a release (the first holder's mark stays), with an expiry; a node cut off
from Redis reads no marks and says so once. Then with two in-process apps over the loopback Discord and
OpenAI: a node running a bot without its lease answers nothing it reads (one model request in all);
a node catching up leaves a message another node answered even where the reply lies beyond what it
reads; and Redis cut off (within the lease), every message is still answered."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import anyio
import pytest
from redis.asyncio import Redis

from orchestrator.fleet.claims import FleetClaims
from orchestrator.fleet.connection import RECHECK, open_redis
from orchestrator.fleet.leases import ANSWERED_TTL, Lease, LeaseStore
from orchestrator.persona.catch_up import CATCH_UP_LIMIT
from orchestrator.runtime.supervisor import BotState
from tests.conftest import World
from tests.fleet_helpers import TcpProxy
from tests.test_fleet_app import NODES, answered_once, nodes, running, write_fleet
from tests.waiting import until

MESSAGE = 1234567890


@dataclass
class Clock:
    monotonic: float = 1000.0


async def test_messages_answered_are_marked_with_the_next_round_and_the_first_mark_stays(
    redis: Redis, key_prefix: str
) -> None:
    a, b = LeaseStore(redis, key_prefix, "node-a", 6.0), LeaseStore(redis, key_prefix, "node-b", 6.0)
    claims = FleetClaims(a)
    lease = (await a.acquire(["sage"]))["sage"].lease
    assert lease is not None
    claims.answered("sage", MESSAGE)
    claims.answered("sage", MESSAGE + 1)
    claims.answered("rumi", MESSAGE)  # not held here: waits for a round that renews it
    assert await claims.answered_already("sage", [MESSAGE, MESSAGE + 1, MESSAGE + 2]) == set(), "not sent yet"
    await a.keep_alive([lease], {}, {"sage": claims.take("sage")})
    assert await FleetClaims(b).answered_already("sage", [MESSAGE, MESSAGE + 1, MESSAGE + 2]) == {MESSAGE, MESSAGE + 1}
    assert claims.take("sage") == [] and claims.take("rumi") == [MESSAGE], "handed over once"
    key = a.answered_key("sage", MESSAGE)
    assert await redis.get(key) == lease.value.encode()
    assert 300_000 < await redis.pttl(key) <= ANSWERED_TTL * 1000, "longer than catch-up's window"
    other = Lease("sage", lease.token + 1, "node-b#x/99", 0.0)  # (it cannot happen under the leases)
    assert (await b.keep_alive([other], {}, {"sage": [MESSAGE]})).kept == {"sage": False}
    assert await redis.get(key) == lease.value.encode(), "set if absent: the first answer's mark stays"


async def test_a_release_marks_what_was_answered_since_the_last_round(redis: Redis, key_prefix: str) -> None:
    store = LeaseStore(redis, key_prefix, "node-a", 6.0)
    lease = (await store.acquire(["sage"]))["sage"].lease
    assert lease is not None
    assert await store.release(lease, {7: 70}, [MESSAGE])
    assert await FleetClaims(store).answered_already("sage", [MESSAGE]) == {MESSAGE}


async def test_a_node_cut_off_from_redis_reads_no_marks_and_says_so_once(
    redis: Redis, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    await redis.set(LeaseStore(redis, key_prefix, "node-a", 6.0).answered_key("sage", MESSAGE), "node-b#1/1")
    clock = Clock()
    proxy = TcpProxy(6379)
    async with anyio.create_task_group() as tg:
        port = await tg.start(proxy.serve)
        client = open_redis(f"redis://127.0.0.1:{port}/0", timeout=0.5)
        try:
            claims = FleetClaims(LeaseStore(client, key_prefix, "node-a", 6.0), clock=lambda: clock.monotonic)
            assert await claims.answered_already("sage", [MESSAGE]) == {MESSAGE}
            proxy.cut()
            with caplog.at_level(logging.WARNING):
                assert await claims.answered_already("sage", [MESSAGE]) == set(), "catch-up goes by the replies"
                clock.monotonic += RECHECK  # tried again, still cut off: no second line
                assert await claims.answered_already("sage", [MESSAGE]) == set()
            assert caplog.text.count("cannot reach Redis to read which messages were answered") == 1
            assert claims.redis_error
            await tg.start(proxy.serve)  # Redis answers again on the same port, tried after RECHECK
            clock.monotonic += RECHECK
            assert await claims.answered_already("sage", [MESSAGE]) == {MESSAGE} and claims.redis_error is None
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
async def test_with_redis_cut_off_every_message_is_still_answered(
    world: World, key_prefix: str, postgres_url: str
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
            proxy.cut()  # within the lease (60 s): the node keeps sage, and an answer needs no Redis
            for question in ("!chat while cut off", "!chat still cut off"):
                await answered_once(world, await world.discord.post(question), "sage")
            assert a.supervisor is not None and a.supervisor.children["sage"].state is BotState.RUNNING
        tg.cancel_scope.cancel()
