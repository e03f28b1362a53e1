"""Two real ``orchestrator run`` processes as one fleet against the loopback Discord and the real Redis:
every bot has one gateway connection; SIGKILL one node and its bots are back on the other within
10 s, answering what was sent meanwhile, and nothing is answered twice; a bot added to bots.yaml
starts on one node, a bot removed stops wherever it ran; a joining node takes its share with never
two sessions for one bot; a node paused (SIGSTOP) past its leases posts nothing for the bots it lost,
and an answer it had on its way makes no second reply beside the next node's."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process
from redis.asyncio import Redis

from orchestrator.fleet.leases import LeaseStore
from orchestrator.fleet.placement import place
from orchestrator.sandbox.discord_server.rest import RestFault
from tests.conftest import World, token_for
from tests.processes import base_env, orchestrator_run
from tests.test_fleet_app import (
    NODES,
    PREFIXES,
    answered_once,
    node_env,
    shared_memory,  # noqa: F401 - autouse: the nodes share PostgreSQL
    write_fleet,
)
from tests.waiting import until

TTL = 2.0
FAILOVER_LIMIT = 10.0


@contextlib.asynccontextmanager
async def node_process(world: World, node: str, *, watch: bool = False) -> AsyncIterator[Process]:
    env = base_env() | world.env(node_env(world, node))
    async with orchestrator_run(world.path, world.tmp_path / f"{node}.log", env, watch=watch) as process:
        yield process


async def settled(world: World, store: LeaseStore, desired: dict[str, str]) -> bool:
    """Whether Redis shows every bot held by its desired node, and every bot is online."""
    view = await store.view(list(desired))
    online = all((session := world.discord.sessions.get(token_for(bot))) and session.ready for bot in desired)
    return online and {bot.bot: bot.holder for bot in view.bots} == desired


def logs(world: World) -> str:
    return "\n".join(path.read_text(errors="replace") for path in sorted(Path(world.tmp_path).glob("node-*.log")))


@pytest.mark.fault
async def test_sigkill_of_a_node_moves_its_bots_to_the_other_within_ten_seconds_answering_each_message_once(
    world: World, redis_url: str, key_prefix: str
) -> None:
    write_fleet(world, redis_url, key_prefix, ttl=TTL)
    desired = place(PREFIXES, NODES)
    victims = [bot for bot, node in desired.items() if node == "node-a"]
    redis = Redis.from_url(redis_url)
    store = LeaseStore(redis, key_prefix, "test", TTL)
    try:
        async with node_process(world, "node-a") as a, node_process(world, "node-b") as b:
            await until(partial(settled, world, store, desired), within=30)
            before = [(await world.discord.post(f"{PREFIXES[bot]}chat before, {bot}"), bot) for bot in PREFIXES]
            for message, bot in before:
                await answered_once(world, message, bot)
            channel = str(world.discord.channel_id).encode()

            async def saved() -> bool:  # where each of node-a's bots would be caught up from
                return all([channel in await redis.hgetall(store.key("catch_up", bot)) for bot in victims])

            await until(saved, within=10)
            identified = {bot: world.discord.identify_count[token_for(bot)] for bot in victims}

            a.kill()
            killed = time.monotonic()
            meanwhile = [(await world.discord.post(f"{PREFIXES[bot]}chat meanwhile, {bot}"), bot) for bot in victims]

            def back() -> bool:  # a new session for each of node-a's bots
                return all(
                    world.discord.identify_count[token_for(bot)] > identified[bot]
                    and world.discord.sessions[token_for(bot)].ready
                    for bot in victims
                )

            await until(back, within=FAILOVER_LIMIT)
            failover = time.monotonic() - killed
            for message, bot in meanwhile:
                await answered_once(world, message, bot)
            for message, bot in before:
                await answered_once(world, message, bot)
            view = await store.view(list(PREFIXES))
            b.send_signal(signal.SIGTERM)
            with anyio.fail_after(30):
                assert await b.wait() == 0, logs(world)
    finally:
        await redis.aclose()
    print(f"\nfailover after SIGKILL with lease_ttl {TTL}s: {failover:.2f}s for {len(victims)} bots")
    assert {bot.bot: bot.holder for bot in view.bots} == dict.fromkeys(PREFIXES, "node-b")
    assert all(world.discord.peak_connections[token_for(bot)] == 1 for bot in PREFIXES), logs(world)
    assert "taken over from node node-a, whose lease ran out" in logs(world)


async def test_a_bot_added_to_bots_yaml_starts_on_one_node_and_a_removed_one_stops_wherever_it_ran(
    world: World, redis_url: str, key_prefix: str
) -> None:
    added = {"attar": "&"}
    write_fleet(world, redis_url, key_prefix, PREFIXES | added, ttl=TTL)  # the nodes' environment gets attar's token
    write_fleet(world, redis_url, key_prefix, ttl=TTL)
    desired = place(PREFIXES, NODES)
    removed = ["hafez", "khayyam"]
    assert {desired[bot] for bot in removed} == set(NODES), "one removed bot runs on each node"
    kept = {bot: prefix for bot, prefix in PREFIXES.items() if bot not in removed} | added
    redis = Redis.from_url(redis_url)
    store = LeaseStore(redis, key_prefix, "test", TTL)
    try:
        async with node_process(world, "node-a", watch=True), node_process(world, "node-b", watch=True):
            await until(partial(settled, world, store, desired), within=30)
            write_fleet(world, redis_url, key_prefix, kept, ttl=TTL)  # each node sees the file change

            def applied() -> bool:
                attar = world.discord.sessions.get(token_for("attar"))
                return (
                    attar is not None
                    and attar.ready
                    and all(world.discord.open_connections(token_for(bot)) == 0 for bot in removed)
                )

            await until(applied, within=30)
            await answered_once(world, await world.discord.post("&chat hello, new one"), "attar")
            view = await store.view([*PREFIXES, *added])
    finally:
        await redis.aclose()
    holders = {bot.bot: bot.holder for bot in view.bots}
    assert holders["attar"] in NODES and holders["hafez"] is None and holders["khayyam"] is None, holders
    assert world.discord.peak_connections[token_for("attar")] == 1, logs(world)
    assert world.discord.identify_count[token_for("attar")] == 1, "started by exactly one node"
    assert all(world.discord.peak_connections[token_for(bot)] == 1 for bot in PREFIXES), logs(world)


def replies_per_question(world: World) -> Counter[int]:
    """How many times each message was answered (the sandbox records every post)."""
    return Counter(m.reference_id for m in world.discord.sent if m.reference_id is not None)


@pytest.mark.fault
async def test_a_joining_node_takes_its_share_with_one_session_per_bot_and_a_paused_node_posts_nothing_for_bots_it_lost(
    world: World, redis_url: str, key_prefix: str
) -> None:
    write_fleet(world, redis_url, key_prefix, ttl=TTL)
    desired = place(PREFIXES, NODES)
    moved = [bot for bot, node in desired.items() if node == "node-b"]
    redis = Redis.from_url(redis_url)
    store = LeaseStore(redis, key_prefix, "test", TTL)
    try:
        async with node_process(world, "node-a"):
            await until(partial(settled, world, store, dict.fromkeys(PREFIXES, "node-a")), within=30)
            async with node_process(world, "node-b") as b:
                # node-b joins: its share moves to it only once node-a has stopped them
                during = [(await world.discord.post(f"{PREFIXES[bot]}chat while joining, {bot}"), bot) for bot in moved]
                await until(partial(settled, world, store, desired), within=30)
                for message, bot in during:
                    await answered_once(world, message, bot)
                assert all(world.discord.peak_connections[token_for(bot)] == 1 for bot in PREFIXES), logs(world)

                # node-b is paused with an answer in flight, for longer than its leases
                bot = moved[0]
                identified = world.discord.identify_count[token_for(bot)]
                world.openai.latency = 1.0
                asked = len(world.openai.chat_requests)
                in_flight = await world.discord.post(f"{PREFIXES[bot]}chat in flight, {bot}")
                await world.openai.wait_for_requests(asked + 1)
                b.send_signal(signal.SIGSTOP)
                world.openai.latency = 0.0

                def taken_over() -> bool:
                    session = world.discord.sessions[token_for(bot)]
                    return world.discord.identify_count[token_for(bot)] > identified and session.ready

                await until(taken_over, within=FAILOVER_LIMIT)
                await answered_once(world, in_flight, bot)  # node-a caught up on it
                b.send_signal(signal.SIGCONT)
                why = "its lease could not be renewed in time (Redis answered too slowly, or this process was paused)"
                await until(lambda: all(f"bot {bot} stops at once on this node: {why}" in logs(world) for bot in moved))
                await until(partial(settled, world, store, desired), within=30)  # node-b runs its share again
                after = [(await world.discord.post(f"{PREFIXES[bot]}chat after, {bot}"), bot) for bot in PREFIXES]
                for message, bot in after:
                    await answered_once(world, message, bot)
    finally:
        await redis.aclose()
    assert set(replies_per_question(world).values()) == {1}, "a question was answered twice"


@pytest.mark.fault
async def test_an_answer_on_its_way_when_its_node_was_paused_is_not_posted_beside_the_next_nodes_answer(
    world: World, redis_url: str, key_prefix: str
) -> None:
    write_fleet(world, redis_url, key_prefix, {"sage": "!"}, ttl=TTL)
    redis = Redis.from_url(redis_url)
    store = LeaseStore(redis, key_prefix, "test", TTL)
    try:
        async with node_process(world, "node-a") as a:
            await until(partial(settled, world, store, {"sage": "node-a"}), within=30)
            await answered_once(world, await world.discord.post("!chat before"), "sage")
            async with node_process(world, "node-b"):
                await until(lambda: "2 live node(s)" in logs(world), within=30)
                on_its_way = asyncio.Event()
                world.discord.inject_rest(RestFault(None, method="POST", path_contains="/messages", hold=on_its_way))
                question = await world.discord.post("!chat who answers this?")
                await until(lambda: not world.discord.faults)  # node-a's answer is on its way
                identified = world.discord.identify_count[token_for("sage")]
                a.send_signal(signal.SIGSTOP)  # ... and node-a is paused past its lease
                try:
                    await until(lambda: world.discord.identify_count[token_for("sage")] > identified, within=15)
                    [reply] = await world.discord.wait_for_sent(
                        predicate=lambda m: m.reference_id == int(question["id"]), timeout=15
                    )  # node-b caught up on the question
                    logged = len(world.discord.rest_log)
                    on_its_way.set()  # node-a's answer arrives after node-b's
                    await until(lambda: len(world.discord.rest_log) > logged)
                finally:
                    a.send_signal(signal.SIGCONT)
    finally:
        await redis.aclose()
    replies = [m for m in world.discord.sent if m.reference_id == int(question["id"])]
    assert [m.id for m in replies] == [reply.id], "answered by both nodes"
