"""Fleet-wide ``images_per_day`` on the real Redis (fleet/quotas.py): two nodes' images count against
one limit; an image given back no longer counts; the day rolls over at midnight UTC (and a day's
tokens written first do not carry yesterday's images); the keys expire; a node cut off from Redis
holds the limit by itself. Then two in-process apps over the loopback Discord and OpenAI: two
images a day for a user in all, whichever node draws them, and ``!usage`` shows the fleet's count."""

from __future__ import annotations

import logging

import anyio
import pytest
from redis.asyncio import Redis

from orchestrator.config import QuotaSettings
from orchestrator.errors import QuotaExceeded
from orchestrator.fleet.connection import RECHECK, open_redis
from orchestrator.fleet.placement import place
from orchestrator.fleet.quotas import FleetQuotas
from orchestrator.llm.images import ImageBook
from orchestrator.llm.quota import QuotaBook
from orchestrator.llm.spend import SpendBook
from tests.conftest import World
from tests.fleet_helpers import TcpProxy
from tests.test_fleet_app import NODES, nodes, running
from tests.test_fleet_quotas import DAY_MS, MIDNIGHT, Clock, reply, write_fleet
from tests.waiting import until

NONE = QuotaSettings()
TWO = QuotaSettings(images_per_day=2)


def node(redis: Redis, key_prefix: str, clock: Clock) -> FleetQuotas:
    """One node's quotas: its own books (its image book on the same day as Redis), the fleet's Redis."""
    return FleetQuotas(
        redis, key_prefix, QuotaBook(), SpendBook(), ImageBook(wall_clock=lambda: clock.ms / 1000),
        now_ms=lambda: clock.ms, clock=lambda: clock.monotonic,
    )  # fmt: skip


async def refused(quotas: FleetQuotas, user: str, bot: QuotaSettings, per_user: QuotaSettings) -> QuotaExceeded:
    with pytest.raises(QuotaExceeded) as caught:
        await quotas.take_image("openai", "sage", user, bot, per_user)
    return caught.value


async def test_two_nodes_share_a_per_user_limit_of_two_images_a_day(redis: Redis, key_prefix: str) -> None:
    clock = Clock()  # 01:00 UTC
    a, b = node(redis, key_prefix, clock), node(redis, key_prefix, clock)
    await a.take_image("openai", "sage", "u1", NONE, TWO)
    await b.take_image("openai", "sage", "u1", NONE, TWO)
    for quotas in (a, b):
        refusal = await refused(quotas, "u1", NONE, TWO)
        assert (refusal.scope, refusal.limit, refusal.retry_after) == ("user", "images_per_day", 23 * 3600.0)
    await b.take_image("openai", "sage", "u2", NONE, TWO)  # another user has two of their own
    assert await b.images_today("sage", "u1", NONE, TWO) == (2, 3), "the fleet's count, not b's (1, 2)"
    assert await b.local.images_today("sage", "u1", NONE, TWO) == (1, 2), "each node counts what it drew"
    refusal = await refused(a, "u3", TWO, NONE)  # the bot's limit: every user counts
    assert (refusal.scope, refusal.limit) == ("bot", "images_per_day")


async def test_an_image_given_back_no_longer_counts_unless_its_day_is_over(redis: Redis, key_prefix: str) -> None:
    clock = Clock(ms=MIDNIGHT + DAY_MS - 10_000)  # 10 s before the next midnight
    a, b = node(redis, key_prefix, clock), node(redis, key_prefix, clock)
    first = await a.take_image("openai", "sage", "u1", NONE, TWO)
    await b.take_image("openai", "sage", "u1", NONE, TWO)
    await a.give_back_image(first)  # no image came
    late = await b.take_image("openai", "sage", "u1", NONE, TWO)
    await refused(a, "u1", NONE, TWO)
    clock.advance(11)  # a new day
    await a.take_image("openai", "sage", "u1", NONE, TWO)
    await a.take_image("openai", "sage", "u1", NONE, TWO)
    await b.give_back_image(late)  # yesterday's image stays on yesterday: today's two still count
    await refused(b, "u1", NONE, TWO)
    assert await a.images_today("sage", "u1", NONE, TWO) == (2, 2)


async def test_a_new_day_begins_at_midnight_utc_even_when_tokens_are_counted_first(
    redis: Redis, key_prefix: str
) -> None:
    clock = Clock(ms=MIDNIGHT + DAY_MS - 10_000)
    quotas = node(redis, key_prefix, clock)
    tokens = QuotaSettings(tokens_per_day=1000, images_per_day=2)
    for _ in range(2):
        await quotas.take_image("openai", "sage", "u1", NONE, tokens)
    refusal = await refused(quotas, "u1", NONE, tokens)
    assert refusal.retry_after == 10.0
    clock.advance(11)
    # Today's first write to the day hash is a chat call's: it must not carry yesterday's images over.
    await quotas.settle(await quotas.reserve("openai", "sage", "u1", 10, NONE, tokens), None, 5, 5)
    assert await quotas.images_today("sage", "u1", NONE, tokens) == (0, 0)
    for _ in range(2):
        await quotas.take_image("openai", "sage", "u1", NONE, tokens)
    await refused(quotas, "u1", NONE, tokens)
    usage = await quotas.usage("sage", "u1", NONE, tokens)
    assert usage.tokens_today == 10, "the images left the tokens as they were"


async def test_image_keys_expire_and_images_without_a_limit_leave_none(redis: Redis, key_prefix: str) -> None:
    clock = Clock()
    quotas = node(redis, key_prefix, clock)
    await quotas.give_back_image(await quotas.take_image("openai", "rumi", "u1", NONE, NONE))
    assert not [key async for key in redis.scan_iter(match=f"fleet:{key_prefix}:*")]
    await quotas.take_image("openai", "sage", "u1", NONE, TWO)
    keys = sorted([key.decode() async for key in redis.scan_iter(match=f"fleet:{key_prefix}:*")])
    assert keys == [f"fleet:{key_prefix}:quota:sage:{who}:d" for who in ("*", "u1")]
    for key in keys:
        assert DAY_MS < await redis.pttl(key) <= 2 * DAY_MS, key


async def test_a_node_cut_off_from_redis_holds_the_image_limit_by_itself_until_redis_answers(
    redis_url: str, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    proxy = TcpProxy(6379)
    async with anyio.create_task_group() as tg:
        port = await tg.start(proxy.serve)
        client = open_redis(f"redis://127.0.0.1:{port}/0", timeout=0.5)
        try:
            quotas = node(client, key_prefix, clock)
            counted = await quotas.take_image("openai", "sage", "u1", NONE, TWO)  # in Redis and here
            proxy.cut()
            with caplog.at_level(logging.WARNING):
                await quotas.give_back_image(counted)  # given back here; Redis keeps it until it answers
                await quotas.take_image("openai", "sage", "u1", NONE, TWO)  # Redis is gone: counted here
                await quotas.take_image("openai", "sage", "u1", NONE, TWO)
                refusal = await refused(quotas, "u1", NONE, TWO)  # this node's own count says no
                assert await quotas.images_today("sage", "u1", NONE, TWO) == (2, 2)
            assert refusal.limit == "images_per_day" and quotas.redis_error is not None
            assert caplog.text.count("cannot reach Redis for the quotas") == 1
            await tg.start(proxy.serve)  # Redis answers again, and is tried again after RECHECK
            clock.advance(RECHECK)
            await quotas.take_image("openai", "sage", "u1", NONE, TWO)  # Redis had counted one
            assert quotas.redis_error is None
            await refused(quotas, "u1", NONE, TWO)
        finally:
            await client.aclose()
        tg.cancel_scope.cancel()


# ---------------------------------------------------------------- two apps, one fleet


async def test_two_images_a_day_in_all_whichever_nodes_draw_them_and_usage_shows_the_fleets_count(
    world: World, redis_url: str, key_prefix: str, postgres_url: str
) -> None:
    world.database = postgres_url
    bot = {"name": "sage", "prefix": "!", "image_model": "gpt-image-1", "image_size": "16x16",
           "user_quota": {"images_per_day": 2}}  # fmt: skip
    write_fleet(world, redis_url, key_prefix, bot)
    first = place(["sage"], NODES)["sage"]
    [second] = [name for name in NODES if name != first]
    async with nodes(world, *NODES) as apps:
        await until(lambda: running(apps[first]) == {"sage"})
        # The second node has read its day's counts from the store already (none yet), as a node
        # that drew earlier today would have: only the fleet's count can stop it now.
        assert apps[second].pool is not None and apps[second].pool.images.today("sage", "*") == 0
        [drawn] = [await reply(world, "!imagine a fox")]
        apps[first].request_stop()  # sage moves to the other node
        await until(lambda: running(apps[second]) == {"sage"})
        asked = ("!imagine a hare", "!imagine an owl", "!usage")
        [again, refusal, usage] = [await reply(world, text) for text in asked]
    assert drawn == "> a fox" and again == "> a hare", (drawn, again)
    assert refusal.startswith("You have reached the limit of images per day"), refusal
    assert "- images today: 2/2 · 2/∞" in usage, usage
    assert len(world.openai.image_requests) == 2
