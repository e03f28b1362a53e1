"""Fleet-wide quotas on the real Redis (fleet/quotas.py): two nodes' reservations count against one
limit; settling replaces the estimate, a refund gives it back; the day rolls over at midnight UTC;
the spend cap holds across nodes; every key expires; a node cut off from Redis holds the limits by
itself; settles reach Redis in batches or with the node's next reserve, over-counting meanwhile, and the
last ones as the node stops.
And a provider's max_concurrency is divided among the live nodes. Then the same with two
in-process apps over the loopback Discord and OpenAI: three answers a minute in all, whichever
nodes give them; the concurrency share shrinking as a node joins and growing back as it leaves."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from orchestrator.app import App
from orchestrator.config import ModelPrice, ProviderSettings, ProviderSpec, QuotaSettings
from orchestrator.errors import QuotaExceeded
from orchestrator.fleet import quotas as fleet_quotas
from orchestrator.fleet.connection import RECHECK, open_redis
from orchestrator.fleet.placement import place
from orchestrator.fleet.quotas import FleetQuotas
from orchestrator.llm.pool import LLMPool
from orchestrator.llm.quota import QuotaBook
from orchestrator.llm.spend import SpendBook, SpendCapReached
from tests.conftest import World
from tests.fleet_helpers import TcpProxy
from tests.test_fleet_app import NODES, answered_once, nodes, running
from tests.waiting import until

NONE = QuotaSettings()
DAY_MS = 86_400_000
MIDNIGHT = 20_000 * DAY_MS  # a UTC midnight, in ms since 1970


@dataclass
class Clock:
    """Redis' time as the scripts see it (ms) and the nodes' monotonic time, both moved by the test."""

    ms: int = MIDNIGHT + 3_600_000
    monotonic: float = 1000.0

    def advance(self, seconds: float) -> None:
        self.ms += round(seconds * 1000)
        self.monotonic += seconds


def node(redis: Redis, key_prefix: str, clock: Clock) -> FleetQuotas:
    """One node's quotas: its own books, the fleet's Redis."""
    return FleetQuotas(
        redis, key_prefix, QuotaBook(), SpendBook(), now_ms=lambda: clock.ms, clock=lambda: clock.monotonic
    )


async def refused(
    quotas: FleetQuotas, user: str, estimate: int, bot: QuotaSettings, per_user: QuotaSettings
) -> QuotaExceeded:
    with pytest.raises(QuotaExceeded) as caught:
        await quotas.reserve("openai", "sage", user, estimate, bot, per_user)
    return caught.value


async def test_a_per_user_request_limit_counts_the_requests_of_every_node(redis: Redis, key_prefix: str) -> None:
    clock = Clock()
    a, b = node(redis, key_prefix, clock), node(redis, key_prefix, clock)
    three = QuotaSettings(requests_per_minute=3)
    for quotas in (a, b, a):
        await quotas.reserve("openai", "sage", "u1", 10, NONE, three)
        clock.advance(1)
    clock.advance(7)  # 10 s after the first
    refusal = await refused(b, "u1", 10, NONE, three)
    assert (refusal.scope, refusal.limit, refusal.retry_after) == ("user", "requests_per_minute", 50.0)
    assert (await b.usage("sage", "u1", NONE, three)).requests_last_minute == 3, "the fleet's count, not b's 1"
    assert b.local.book.rejections == {("sage", "user", "requests_per_minute"): 1}
    await b.reserve("openai", "sage", "u2", 10, NONE, three)  # another user has a limit of their own
    clock.advance(50)  # the first request leaves the window
    await b.reserve("openai", "sage", "u1", 10, NONE, three)
    await refused(a, "u1", 10, NONE, three)


async def test_tokens_are_settled_to_the_real_usage_and_a_failed_call_refunds_them(
    redis: Redis, key_prefix: str
) -> None:
    clock = Clock()
    a, b = node(redis, key_prefix, clock), node(redis, key_prefix, clock)
    thousand = QuotaSettings(tokens_per_minute=1000)
    first = await a.reserve("openai", "sage", "u1", 600, thousand, NONE)
    refusal = await refused(b, "u2", 600, thousand, NONE)  # the bot's limit: every user counts
    assert (refusal.scope, refusal.limit, refusal.retry_after) == ("bot", "tokens_per_minute", 60.0)
    await a.settle(first, None, 60, 40)  # the answer was 100 tokens, not 600
    await a.settle(first, None, 0, 0)  # settling again (the pool's refund on the way out) changes nothing
    second = await b.reserve("openai", "sage", "u2", 600, thousand, NONE)
    await b.settle(second, None, 0, 0)  # the call failed: its 600 come back
    await b.reserve("openai", "sage", "u3", 900, thousand, NONE)  # 100 + 900: exactly the limit
    await refused(a, "u1", 1, thousand, NONE)
    assert a.local.book.tokens_used == {("sage", "openai"): 100}, "each node counts what it answered"


async def test_tokens_per_day_count_across_nodes_and_a_new_day_begins_at_midnight_utc(
    redis: Redis, key_prefix: str
) -> None:
    clock = Clock(ms=MIDNIGHT + DAY_MS - 10_000)  # 10 s before the next midnight
    a, b = node(redis, key_prefix, clock), node(redis, key_prefix, clock)
    day = QuotaSettings(tokens_per_day=1000)
    await a.settle(await a.reserve("openai", "sage", "u1", 700, NONE, day), None, 800, 100)
    refusal = await refused(b, "u1", 200, NONE, day)
    assert (refusal.limit, refusal.retry_after) == ("tokens_per_day", 10.0)
    late = await b.reserve("openai", "sage", "u1", 100, NONE, day)  # 900 + 100: the whole budget
    clock.advance(11)  # a new day
    await a.reserve("openai", "sage", "u1", 1000, NONE, day)
    await b.settle(late, None, 30, 20)  # settled after midnight: yesterday's 50 unused come off today
    await a.reserve("openai", "sage", "u1", 50, NONE, day)
    await refused(b, "u1", 1, NONE, day)


async def test_the_daily_spend_cap_holds_across_nodes(redis: Redis, key_prefix: str) -> None:
    clock = Clock()
    a, b = node(redis, key_prefix, clock), node(redis, key_prefix, clock)
    cap = QuotaSettings(usd_per_day=0.001)
    price = ModelPrice(input=10, output=10)  # $0.00001 per token
    await a.settle(await a.reserve("openai", "sage", "u1", 50, cap, NONE), price, 60, 40)  # $0.001
    usage = await b.usage("sage", "*", cap, NONE)
    assert (usage.tokens_last_minute, usage.tokens_today, usage.usd_today) == (100, 100, pytest.approx(0.001))
    with pytest.raises(SpendCapReached) as caught:
        await b.reserve("openai", "sage", "u2", 50, cap, NONE)
    assert caught.value.user_message.startswith("This persona has reached today's spending limit ($0.0010).")
    assert b.local.spend.rejections == {("sage", "bot"): 1}
    clock.advance(23 * 3600)  # 01:00 plus 23 h: the next day
    await b.reserve("openai", "sage", "u2", 50, cap, NONE)


async def test_every_key_expires_and_calls_without_limits_leave_none(redis: Redis, key_prefix: str) -> None:
    clock = Clock()
    quotas = node(redis, key_prefix, clock)
    await quotas.settle(await quotas.reserve("openai", "rumi", "u1", 10, NONE, NONE), None, 5, 5)
    assert not [key async for key in redis.scan_iter(match=f"fleet:{key_prefix}:*")]
    limit = QuotaSettings(requests_per_minute=5)
    await quotas.settle(await quotas.reserve("openai", "sage", "u1", 10, limit, NONE), None, 5, 5)
    keys = sorted([key.decode() async for key in redis.scan_iter(match=f"fleet:{key_prefix}:*")])
    assert keys == [f"fleet:{key_prefix}:quota:sage:{who}:{kind}" for who in ("*", "u1") for kind in "dtw"]
    for key in keys:
        ttl = await redis.pttl(key)
        assert (DAY_MS < ttl <= 2 * DAY_MS) if key.endswith(":d") else (0 < ttl <= 60_000), (key, ttl)


async def test_a_node_cut_off_from_redis_holds_the_limits_by_itself_until_redis_answers(
    redis_url: str, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    proxy = TcpProxy(6379)
    two = QuotaSettings(requests_per_minute=2)
    async with anyio.create_task_group() as tg:
        port = await tg.start(proxy.serve)
        client = open_redis(f"redis://127.0.0.1:{port}/0", timeout=0.5)
        try:
            quotas = node(client, key_prefix, clock)
            await quotas.reserve("openai", "sage", "u1", 10, NONE, two)  # counted in Redis and here
            proxy.cut()
            with caplog.at_level(logging.WARNING):
                await quotas.reserve("openai", "sage", "u1", 10, NONE, two)  # Redis is gone: counted here
                refusal = await refused(quotas, "u1", 10, NONE, two)  # this node's own count says no
            assert refusal.limit == "requests_per_minute" and quotas.redis_error is not None
            assert caplog.text.count("cannot reach Redis for the quotas") == 1
            await tg.start(proxy.serve)  # Redis answers again on the same port ...
            await refused(quotas, "u1", 10, NONE, two)  # ... but is tried again only after RECHECK
            clock.advance(RECHECK)
            await quotas.reserve("openai", "sage", "u1", 10, NONE, two)  # Redis had counted one of the three
            assert quotas.redis_error is None
            await refused(quotas, "u1", 10, NONE, two)
        finally:
            await client.aclose()
        tg.cancel_scope.cancel()


class CountingRedis(Redis):
    """A client that records how many settles each of its settle calls carries (the arguments after
    the first two); reserves go on a connection of their own (fleet/line.py)."""

    calls: list[int]

    async def evalsha(self, sha: str, numkeys: int, *args: Any) -> Any:  # type: ignore[override]
        self.calls.append(len(args) - numkeys - 2)
        return await super().evalsha(sha, numkeys, *args)


async def test_settles_reach_redis_in_batches_or_with_the_next_reserve_and_the_last_ones_when_the_node_stops(
    redis: Redis, redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fleet_quotas, "SETTLE_EVERY", 3600.0)  # batches go when full, or as the node stops
    monkeypatch.setattr(fleet_quotas, "SETTLE_BATCH", 4)
    clock = Clock()
    client = CountingRedis.from_url(redis_url)
    client.calls = []
    a, b = node(client, key_prefix, clock), node(redis, key_prefix, clock)
    limit, cap = QuotaSettings(tokens_per_minute=10_000), QuotaSettings(usd_per_day=1.0)

    async def tokens() -> int:  # as the other node sees them
        return (await b.usage("sage", "*", limit, NONE)).tokens_last_minute

    try:
        async with a.settling():
            reservations = [await a.reserve("openai", "sage", f"u{n}", 100, limit, NONE) for n in range(10)]
            client.calls.clear()
            for batch in (1, 2):  # a full batch goes without waiting
                for reservation in reservations[4 * batch - 4 : 4 * batch]:
                    await a.settle(reservation, None, 6, 4)  # 10 tokens each
                await until(lambda: len(client.calls) == batch)  # noqa: B023 (awaited here)
            for reservation in reservations[8:]:
                await a.settle(reservation, None, 6, 4)
            assert client.calls == [4, 4]
            assert await tokens() == 8 * 10 + 2 * 100, "the two queued still count at their estimate"
            assert a.local.book.tokens_used == {("sage", "openai"): 100}, "this node counted all ten at once"
            capped = await a.reserve("openai", "sage", "u1", 100, cap, NONE)  # it carries the two queued
            assert await tokens() == 10 * 10 + 100 and client.calls == [4, 4], "no call of their own"
            await a.settle(capped, ModelPrice(input=10, output=10), 6, 4)  # under a spend cap: at once
            assert client.calls[-1] == 1 and (await b.usage("sage", "*", cap, NONE)).usd_today > 0
            assert await tokens() == 10 * 10 + 10
            last = await a.reserve("openai", "sage", "u2", 100, limit, NONE)
            await a.settle(last, None, 6, 4)  # queued
            assert await tokens() == 10 * 10 + 10 + 100
        assert await tokens() == 10 * 10 + 10 + 10, "the node stopping settled the one queued"
        assert client.calls[-1] == 1
        late = await a.reserve("openai", "sage", "u1", 100, limit, NONE)
        await a.settle(late, None, 6, 4)  # no batching once stopped: at once
        assert await tokens() == 10 * 10 + 10 + 10 + 10
    finally:
        await client.aclose()


async def test_a_batch_of_settles_redis_cannot_take_stays_counted_at_its_estimates(
    redis: Redis, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    proxy = TcpProxy(6379)
    limit = QuotaSettings(tokens_per_minute=10_000)
    async with anyio.create_task_group() as tg:
        port = await tg.start(proxy.serve)
        client = open_redis(f"redis://127.0.0.1:{port}/0", timeout=0.5)
        try:
            a, b = node(client, key_prefix, clock), node(redis, key_prefix, clock)
            async with a.settling():
                reservation = await a.reserve("openai", "sage", "u1", 100, limit, NONE)
                proxy.cut()
                await a.settle(reservation, None, 6, 4)  # queued
                with caplog.at_level(logging.WARNING):
                    await a.flush()  # Redis is gone: the batch is lost, not raised
                assert a.redis_error is not None and "cannot reach Redis for the quotas" in caplog.text
            assert (await b.usage("sage", "*", limit, NONE)).tokens_last_minute == 100, "over, never under"
        finally:
            await client.aclose()
        tg.cancel_scope.cancel()


def provider(max_concurrency: int | None) -> ProviderSpec:
    settings = ProviderSettings(base_url="http://127.0.0.1:9/v1", max_concurrency=max_concurrency)
    return ProviderSpec("p", settings.base_url, SecretStr(""), settings)


async def test_max_concurrency_is_divided_among_the_live_nodes() -> None:
    async with LLMPool({"capped": provider(3), "free": provider(None)}) as pool:
        shares = []
        for nodes in (2, 3, 10, 1):
            pool.share_concurrency(nodes)
            shares.append((pool.concurrency("capped").capacity, pool.concurrency("free").capacity))
        assert shares == [(2, 16), (1, 16), (1, 16), (3, 16)]
        pool.share_concurrency(2)
        await pool.update_providers({"capped": provider(5), "free": provider(None)})  # a reload keeps the share
        assert pool.concurrency("capped").capacity == 3


# ---------------------------------------------------------------- two apps, one fleet


async def reply(world: World, text: str) -> str:
    message = await world.discord.post(text)
    [sent] = await world.discord.wait_for_sent(predicate=lambda m: m.reference_id == int(message["id"]), timeout=15)
    return sent.content


def write_fleet(world: World, redis_url: str, key_prefix: str, bot: dict, **top: object) -> None:
    world.write([bot], fleet={"redis_url": redis_url, "lease_ttl": 1.0, "key_prefix": key_prefix}, **top)


async def test_a_per_user_limit_of_three_a_minute_allows_three_answers_whichever_nodes_answer(
    world: World, redis_url: str, key_prefix: str, postgres_url: str
) -> None:
    world.database = postgres_url
    write_fleet(world, redis_url, key_prefix, {"name": "sage", "prefix": "!", "user_quota": {"requests_per_minute": 3}})
    first = place(["sage"], NODES)["sage"]
    [second] = [name for name in NODES if name != first]
    async with nodes(world, *NODES) as apps:
        await until(lambda: running(apps[first]) == {"sage"})
        for n in (1, 2):
            await answered_once(world, await world.discord.post(f"!chat question {n}"), "sage")
        apps[first].request_stop()  # sage moves to the other node, whose own count would start at 0
        await until(lambda: running(apps[second]) == {"sage"})
        await answered_once(world, await world.discord.post("!chat question 3"), "sage")
        [refusal, usage] = [await reply(world, text) for text in ("!chat question 4", "!usage")]
    assert refusal.startswith("You have reached the limit of requests per minute"), refusal
    assert "- requests this minute: 3/3 · 3/∞" in usage, usage
    assert len(world.openai.chat_requests) == 3


async def test_the_concurrency_share_shrinks_when_a_node_joins_and_grows_back_when_it_leaves(
    world: World, redis_url: str, key_prefix: str, postgres_url: str
) -> None:
    world.database = postgres_url
    provider = {"base_url": world.openai.base_url, "api_key_env": "OPENAI_API_KEY", "timeout": 10, "max_concurrency": 3}
    write_fleet(world, redis_url, key_prefix, {"name": "sage", "prefix": "!"}, providers={"openai": provider})

    def share(app: App) -> int:
        assert app.pool is not None
        return app.pool.concurrency("openai").capacity

    async with nodes(world, "node-a") as alone:
        a = alone["node-a"]
        await until(lambda: a.fleet is not None and a.fleet.live_nodes == ["node-a"])
        assert share(a) == 3
        async with nodes(world, "node-b") as joined:
            b = joined["node-b"]
            await until(lambda: share(a) == 2 and share(b) == 2)  # ceil(3 / 2) each
        await until(lambda: share(a) == 3)  # node-b left the fleet
