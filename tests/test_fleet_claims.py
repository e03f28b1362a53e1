"""Fleet-wide "taken once" (fleet/claims.py) on the real Redis: of two nodes only the lease holder's claim
of a message is granted, and only until it is answered; a claim left by a node that has lost the lease
is taken over (the message is not lost); every claim expires; a node cut off from Redis claims alone,
saying so once. Then with two in-process apps over the loopback Discord and OpenAI: a message that
a second node reads while the lease holder is answering it (catching up) is answered once, after one
model request; and Redis cut off, every message is still answered."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import anyio
import pytest
from redis.asyncio import Redis

from orchestrator.fleet.claims import FleetClaims
from orchestrator.fleet.connection import RECHECK, open_redis
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


async def hold_lease(redis: Redis, key_prefix: str, holder: str, token: int) -> None:
    """Stands for the lease of bot sage held by ``holder`` (leases.py's value: "<holder>/<token>")."""
    await redis.set(f"fleet:{key_prefix}:lease:sage", f"{holder}/{token}")


async def test_only_the_lease_holder_claims_a_message(
    redis: Redis, key_prefix: str
) -> None:
    a, b = FleetClaims(redis, key_prefix, A), FleetClaims(redis, key_prefix, B)
    await hold_lease(redis, key_prefix, A, 7)
    assert await b.claim("sage", MESSAGE) is False  # node-a runs sage: it answers
    assert await a.claim("sage", MESSAGE) is True
    assert await a.claim("sage", MESSAGE) is True  # its own claim again: a job requeued after a crash
    assert await b.claim("sage", MESSAGE) is False
    assert await a.claim("sage", MESSAGE + 1) is True, "another message"
    assert await a.claim("rumi", MESSAGE) is True, "another bot (no lease: nobody else runs it)"


async def test_a_claim_left_by_a_node_that_lost_the_lease_is_taken_over(redis: Redis, key_prefix: str) -> None:
    a, b = FleetClaims(redis, key_prefix, A), FleetClaims(redis, key_prefix, B)
    await hold_lease(redis, key_prefix, A, 7)
    assert await a.claim("sage", MESSAGE) is True  # node-a takes it, then its lease runs out mid-answer
    await hold_lease(redis, key_prefix, B, 8)
    assert await b.claim("sage", MESSAGE) is True, "node-a cannot post any more: node-b answers"
    assert await a.claim("sage", MESSAGE) is False, "node-a, paused and back, leaves it to node-b"


async def test_every_claim_expires(redis: Redis, key_prefix: str) -> None:
    claims = FleetClaims(redis, key_prefix, A, ttl=0.3)
    assert await claims.claim("sage", MESSAGE) is True
    key = claims.key("sage", MESSAGE)
    assert 0 < await redis.pttl(key) <= 300
    await until(lambda: _gone(redis, key))
    default = FleetClaims(redis, key_prefix, A)
    assert await default.claim("sage", MESSAGE + 2) is True
    assert 300_000 < await redis.pttl(default.key("sage", MESSAGE + 2)) <= 600_000, "longer than catch-up's window"


async def _gone(redis: Redis, key: str) -> bool:
    return not await redis.exists(key)


async def test_a_node_cut_off_from_redis_claims_alone_and_says_so_once(
    redis: Redis, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    proxy = TcpProxy(6379)
    await hold_lease(redis, key_prefix, B, 8)  # node-b runs sage: node-a's claims are refused while Redis answers
    async with anyio.create_task_group() as tg:
        port = await tg.start(proxy.serve)
        client = open_redis(f"redis://127.0.0.1:{port}/0", timeout=0.5)
        try:
            claims = FleetClaims(client, key_prefix, A, clock=lambda: clock.monotonic)
            assert await claims.claim("sage", MESSAGE) is False
            proxy.cut()
            with caplog.at_level(logging.WARNING):
                assert await claims.claim("sage", MESSAGE + 1) is True
                clock.monotonic += RECHECK  # tried again, still cut off: no second line
                assert await claims.claim("sage", MESSAGE + 2) is True
            assert caplog.text.count("cannot reach Redis to claim messages") == 1 and claims.redis_error
            await tg.start(proxy.serve)  # Redis answers again on the same port, tried after RECHECK
            clock.monotonic += RECHECK
            assert await claims.claim("sage", MESSAGE + 3) is False and claims.redis_error is None
        finally:
            await client.aclose()
        tg.cancel_scope.cancel()


# ---------------------------------------------------------------- two apps, one fleet


async def test_a_message_read_again_by_another_node_is_answered_once_after_one_model_request(
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
            assert a.supervisor is not None and a.supervisor.children["sage"].state is BotState.RUNNING
        tg.cancel_scope.cancel()
    assert caplog.text.count("cannot reach Redis to claim messages") == 1, caplog.text

