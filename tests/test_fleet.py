"""Fleet coordination on the real Redis, with fake supervisors: bots split between nodes, each held by
one; a dead node's bots move on once its leases run out; fencing tokens grow with each new holder; a
joining node takes its share without two nodes ever running one bot; a node cut off from Redis stops
its bots when their leases would have run out and starts them again when Redis is back."""

from __future__ import annotations

import time

import anyio
import pytest

from orchestrator.fleet.connection import open_redis, run_scripts
from orchestrator.fleet.leases import LOCAL_SHARE, Acquired, LeaseStore, Round, node_of
from orchestrator.fleet.placement import owner, place
from tests.fleet_helpers import Event, PrivateRedis, TcpProxy, fleet, holders
from tests.waiting import until

TTL = 1.0
FOUR = ["sage", "hafez", "rumi", "khayyam"]  # node-a runs sage and hafez, node-b rumi and khayyam


def never_two_at_once(timeline: list[Event]) -> None:
    for bot, nodes in holders(timeline):
        assert len(nodes) <= 1, f"{bot} ran on {sorted(nodes)} at once"


# ---------------------------------------------------------------- placement


def test_rendezvous_placement_moves_only_the_bots_of_the_node_that_joins_or_leaves() -> None:
    bots = [f"bot{i}" for i in range(200)]
    two = place(bots, ["a", "b"])
    three = place(bots, ["a", "b", "c"])
    moved = [bot for bot in bots if two[bot] != three[bot]]
    assert moved and all(three[bot] == "c" for bot in moved), "a joining node takes bots only for itself"
    assert 40 < len(moved) < 95, "about a third of the bots move to the third node"
    assert place(bots, ["b", "a"]) == two, "the order the nodes are listed in does not matter"
    back = place(bots, ["a", "b"])
    assert all(back[bot] == three[bot] for bot in bots if three[bot] != "c"), "a leaving node's bots only move"
    with pytest.raises(ValueError, match="no live node"):
        owner("bot0", [])


# ---------------------------------------------------------------- the lease operations


async def test_a_lease_is_taken_once_renewed_only_by_its_holder_and_released_only_if_still_held(
    redis_url: str, key_prefix: str
) -> None:
    redis = open_redis(redis_url, timeout=1.0)
    try:
        a, b = (LeaseStore(redis, key_prefix, node, 0.3) for node in ("node-a", "node-b"))
        first = (await a.acquire(["sage"]))["sage"]
        assert first.lease is not None and first.holder == ""
        refused = (await b.acquire(["sage"]))["sage"]
        assert refused.lease is None and node_of(refused.holder) == "node-a"
        assert (await a.keep_alive([first.lease], {"sage": {7: 70}}, {})).kept == {"sage": True}
        tries: list[Acquired] = []

        async def taken_by_b() -> bool:  # node-a stops renewing: its lease runs out in Redis
            tries.append((await b.acquire(["sage"]))["sage"])
            return tries[-1].lease is not None

        await until(taken_by_b, within=5)
        taken = tries[-1]
        assert taken.lease is not None and taken.lease.token > first.lease.token
        assert taken.holder == a.holder, "a holder that never released is named: a failover"
        assert taken.catch_up == {7: 70}
        assert (await a.keep_alive([first.lease], {}, {})).kept == {"sage": False}, "a lost lease is not renewed"
        assert not await a.release(first.lease, {7: 71}), "nor released: it is node-b's now"
        assert (await a.acquire(["sage"]))["sage"].holder == b.holder
        assert await b.release(taken.lease, {7: 72})
        again = (await a.acquire(["sage"]))["sage"]
        assert again.lease is not None and again.holder == "" and again.catch_up == {7: 72}
        assert again.lease.token > taken.lease.token
    finally:
        await redis.aclose()


async def test_scripts_go_in_one_round_trip_and_again_after_redis_lost_them(private_redis: PrivateRedis) -> None:
    redis = open_redis(private_redis.url, timeout=1.0)
    try:
        add = redis.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
        name = redis.register_script("return ARGV[1]")
        await redis.script_load(add.script)
        calls = [(add, ["n"], [2]), (name, [], ["x"]), (add, ["n"], [3])]
        # name was never loaded: all go again, so the adds that ran the first time run twice (the fleet's
        # scripts allow it: each checks before it writes)
        assert await run_scripts(redis, calls) == [7, b"x", 10]
        assert await run_scripts(redis, calls) == [12, b"x", 15], "loaded now: once"
        await redis.script_flush()  # as a restarted Redis: no scripts (a server of this test's own)
        assert await run_scripts(redis, calls[:1]) == [17]
    finally:
        await redis.aclose()


# ---------------------------------------------------------------- leases between nodes


async def test_two_nodes_split_the_bots_and_a_dead_nodes_bots_move_to_the_other(
    redis_url: str, key_prefix: str
) -> None:
    timeline: list[Event] = []
    async with fleet(redis_url, key_prefix, TTL) as start:
        a = start("node-a", FOUR, timeline)
        b = start("node-b", FOUR, timeline)
        await until(lambda: set(a.runner.running) == {"sage", "hafez"} and set(b.runner.running) == {"rumi", "khayyam"})
        tokens = {bot: lease.token for node in (a, b) for bot, lease in node.coordinator.leases.items()}
        assert set(a.coordinator.leases) == {"sage", "hafez"} and set(b.coordinator.leases) == {"rumi", "khayyam"}

        a.scope.cancel()  # node-a dies holding its leases (its fake bots are never stopped)
        killed = time.monotonic()
        await until(lambda: set(b.runner.running) == set(FOUR))
        moved = time.monotonic() - killed
        assert {bot for bot, count in b.coordinator.failovers.items() if count} == {"sage", "hafez"}
        for bot in ("sage", "hafez"):
            assert b.coordinator.leases[bot].token > tokens[bot], "a new holder gets a higher fencing token"
        assert b.coordinator.leases["rumi"].token == tokens["rumi"], "a kept lease keeps its token"
    assert moved >= TTL * LOCAL_SHARE, "nobody takes a lease before it runs out"


async def test_a_paused_holder_loses_its_lease_refuses_to_post_and_the_next_holder_has_a_higher_token(
    redis_url: str, key_prefix: str
) -> None:
    timeline: list[Event] = []
    async with fleet(redis_url, key_prefix, TTL) as start:
        a = start("node-a", ["sage"], timeline)
        await until(lambda: "sage" in a.runner.running)
        first = a.coordinator.leases["sage"].token
        assert a.coordinator.may_post("sage")

        paused = anyio.Event()

        async def no_renewal(*args: object) -> Round:
            paused.set()
            await anyio.sleep_forever()
            raise AssertionError

        a.coordinator.store.keep_alive = no_renewal  # type: ignore[method-assign]
        await paused.wait()
        b = start("node-b", ["sage"], timeline)
        await until(lambda: not a.coordinator.may_post("sage"))
        await until(lambda: "sage" not in a.runner.running)  # the watchdog stopped it at once
        assert a.coordinator.losses["sage"] == 1
        await until(lambda: "sage" in b.runner.running)
        assert b.coordinator.leases["sage"].token > first
        assert b.coordinator.may_post("sage") and not a.coordinator.may_post("sage")
    never_two_at_once(timeline)


async def test_a_joining_node_takes_its_share_without_two_nodes_ever_running_a_bot(
    redis_url: str, key_prefix: str
) -> None:
    bots = ["sage", "hafez", "rumi", "khayyam", "attar", "saadi"]
    timeline: list[Event] = []
    async with fleet(redis_url, key_prefix, TTL) as start:
        a = start("node-a", bots, timeline)
        await until(lambda: set(a.runner.running) == set(bots))
        a.runner.drain = TTL  # several of node-b's rounds happen while node-a's bots drain
        for bot in bots:  # where each bot's next holder catches up from (the channel, the last message done)
            a.runner.positions[bot] = {100: 1000 + len(bot)}
        b = start("node-b", bots, timeline)
        mine = {bot for bot, node in place(bots, ["node-a", "node-b"]).items() if node == "node-b"}
        await until(lambda: set(b.runner.running) == mine and set(a.runner.running) == set(bots) - mine)
        assert all(b.runner.running[bot] == {100: 1000 + len(bot)} for bot in mine), "the catch-up point moved along"
        assert not any(b.coordinator.failovers.values()), "a drained bot's lease is released, not left to expire"
        assert not any(a.coordinator.losses.values())
    stops = [(node, bot) for _at, node, bot, what in timeline if what == "stop"]
    assert sorted(stops) == sorted(("node-a", bot) for bot in mine)
    never_two_at_once(timeline)


async def test_a_node_cut_off_from_redis_stops_its_bots_when_the_leases_run_out_and_restarts_them(
    redis_url: str, key_prefix: str
) -> None:
    proxy = TcpProxy(6379)
    timeline: list[Event] = []
    async with anyio.create_task_group() as tg:
        port = await tg.start(proxy.serve)
        async with fleet(redis_url, key_prefix, TTL) as start:
            a = start("node-a", ["sage", "hafez"], timeline, via=f"redis://127.0.0.1:{port}/0")
            await until(lambda: set(a.runner.running) == {"sage", "hafez"})
            proxy.cut()
            await until(lambda: a.coordinator.redis_error is not None)
            assert set(a.runner.running) == {"sage", "hafez"}, "the bots keep running while their leases last"
            await until(lambda: not a.runner.running)
            assert dict(a.coordinator.losses) == {"sage": 1, "hafez": 1}
            await tg.start(proxy.serve)  # Redis is reachable again, on the same port
            await until(lambda: set(a.runner.running) == {"sage", "hafez"})
            assert a.coordinator.redis_error is None
            assert dict(a.coordinator.acquisitions) == {"sage": 2, "hafez": 2}
        tg.cancel_scope.cancel()
    never_two_at_once(timeline)


async def test_a_stopping_node_hands_its_bots_on_at_once(redis_url: str, key_prefix: str) -> None:
    timeline: list[Event] = []
    async with fleet(redis_url, key_prefix, TTL) as start:
        a = start("node-a", FOUR, timeline)
        b = start("node-b", FOUR, timeline)
        await until(lambda: set(a.runner.running) == {"sage", "hafez"} and set(b.runner.running) == {"rumi", "khayyam"})
        a.runner.stop_requested = True  # what a graceful stop does: the bots stop, then the node leaves
        for bot in list(a.runner.running):
            await a.runner.stop_bot(bot)
        a.scope.cancel()
        await until(lambda: set(b.runner.running) == set(FOUR))
        assert not any(b.coordinator.failovers.values()), "released, not expired"
    never_two_at_once(timeline)


async def test_two_processes_given_one_node_id_by_mistake_never_run_one_bot_and_say_so(
    redis_url: str, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    timeline: list[Event] = []
    async with fleet(redis_url, key_prefix, TTL) as start:
        first = start("box-1", FOUR, timeline)
        await until(lambda: set(first.runner.running) == set(FOUR))
        second = start("box-1", FOUR, timeline)  # the same node_id, copied into every node's bots.yaml
        await until(lambda: "another process also uses node id box-1" in caplog.text)
        assert not second.runner.running and set(first.runner.running) == set(FOUR)
    never_two_at_once(timeline)
