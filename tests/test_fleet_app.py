"""Fleet mode with the real app and real discord.py against the loopback Discord: two nodes share the
bots with one gateway connection per bot, a stopping node hands its bots on (what arrives meanwhile
is answered once, by one node or the other), a node whose lease ran out does not post (nor retry a
post that Discord failed), and /healthz,
/metrics and ``orchestrator status`` show the fleet. A node taking a bot back reads what another node
answered meanwhile; a Redis restart (a private server) stops the bots once their leases run out and
brings them back; PostgreSQL cut off (through a proxy) leaves answers without memory, logged."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import anyio
import pytest
from redis.asyncio import Redis

from orchestrator import cli
from orchestrator.app import App
from orchestrator.fleet.leases import Round
from orchestrator.fleet.placement import place
from orchestrator.runtime.supervisor import BotState
from orchestrator.sandbox.discord_server.rest import RestFault
from tests.conftest import FAST, World, token_for
from tests.fleet_helpers import PrivateRedis, TcpProxy, running_redis
from tests.waiting import until

PREFIXES = {"sage": "!", "hafez": "?", "rumi": "$", "khayyam": "%"}  # node-a: sage, hafez; node-b: the others
NODES = ["node-a", "node-b"]


def write_fleet(
    world: World, redis_url: str, key_prefix: str, bots: dict[str, str] = PREFIXES, ttl: float = 1.0
) -> None:
    world.write(
        [{"name": name, "prefix": prefix} for name, prefix in bots.items()],
        fleet={"redis_url": redis_url, "lease_ttl": ttl, "key_prefix": key_prefix},
    )


@pytest.fixture(autouse=True)
def shared_memory(world: World, postgres_url: str) -> None:
    """A fleet's nodes share their memory in PostgreSQL (a schema of its own per test)."""
    world.database = postgres_url


def node_env(world: World, node: str) -> dict[str, str]:
    """What tells one node from another on this machine: its id."""
    return {"ORCHESTRATOR_NODE_ID": node}


@contextlib.asynccontextmanager
async def nodes(world: World, *names: str) -> AsyncIterator[dict[str, App]]:
    """One app per node name, in this process; stopped at the end."""
    apps = {
        name: App(
            world.load(node_env(world, name)),
            options=FAST,
            handle_signals=False,
            watch=False,
            health_port=0,
        )
        for name in names
    }
    async with anyio.create_task_group() as tg:
        for app in apps.values():
            await tg.start(app.run)
        yield apps
        for app in apps.values():
            app.request_stop()


def running(app: App) -> set[str]:
    assert app.supervisor is not None
    return {name for name, child in app.supervisor.children.items() if child.state is BotState.RUNNING}


async def answered_once(world: World, message: dict, bot: str) -> None:
    """Wait for the reply to ``message`` from ``bot``, then check it is the only one, and an answer (the
    sandbox's model echoes the question), not a notice such as "restarting"."""
    message_id = int(message["id"])
    await world.discord.wait_for_sent(predicate=lambda m: m.reference_id == message_id, timeout=15)
    replies = [m for m in world.discord.sent if m.reference_id == message_id]
    assert [m.author_id for m in replies] == [world.bot_ids[bot]], f"{message['content']!r} answered {len(replies)}x"
    question = message["content"].split(" ", 1)[1]
    assert replies[0].content.endswith(f"| {question}"), replies[0].content


async def healthz(app: App) -> dict:
    url = f"http://127.0.0.1:{app.health_port_bound}/healthz"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return json.loads(await response.text())


async def test_two_nodes_share_the_bots_one_connection_each_and_a_stopping_node_hands_its_bots_on(
    world: World, redis_url: str, key_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    write_fleet(world, redis_url, key_prefix)
    desired = place(PREFIXES, NODES)
    async with nodes(world, *NODES) as apps:
        a, b = apps["node-a"], apps["node-b"]
        await until(lambda: running(a) == {"sage", "hafez"} and running(b) == {"rumi", "khayyam"})
        for bot, prefix in PREFIXES.items():
            await answered_once(world, await world.discord.post(f"{prefix}chat hello {bot}"), bot)
        assert {bot: node for node, app in apps.items() for bot in running(app)} == desired

        report = await healthz(a)
        assert report["status"] == "ok" and report["node"] == "node-a"
        assert report["fleet"]["nodes"] == NODES and set(report["fleet"]["leases"]) == {"sage", "hafez"}
        metrics = a.metrics.exposition().decode()
        assert 'orchestrator_node_info{node="node-a"} 1.0' in metrics
        assert 'orchestrator_fleet_lease_acquisitions_total{bot="sage"} 1.0' in metrics
        args = cli.build_parser().parse_args(["status", "--health-port", str(a.health_port_bound), str(world.path)])
        assert await anyio.to_thread.run_sync(args.func, args) == 0
        out = capsys.readouterr().out
        assert "(node node-a)" in out and f"fleet {key_prefix!r} at {redis_url}: 2 live node(s)" in out
        assert any(line.split()[:2] == ["sage", "node-a"] for line in out.splitlines()), out

        a.request_stop()  # node-a leaves: its bots move to node-b
        meanwhile = [await world.discord.post(f"{PREFIXES[bot]}chat while moving, {bot}") for bot in ("sage", "hafez")]
        await until(lambda: running(b) == set(PREFIXES))
        for message, bot in zip(meanwhile, ("sage", "hafez"), strict=True):
            await answered_once(world, message, bot)
        assert b.fleet is not None and not any(b.fleet.failovers.values()), "node-a released its leases"
        await answered_once(world, await world.discord.post("!chat and now?"), "sage")
    assert all(world.discord.peak_connections[token_for(bot)] == 1 for bot in PREFIXES), dict(
        world.discord.peak_connections
    )


async def test_a_node_whose_lease_ran_out_does_not_post(
    world: World, redis_url: str, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    write_fleet(world, redis_url, key_prefix, {"sage": "!"}, ttl=60.0)  # the watchdog stays out of the way
    world.openai.latency = 0.5
    async with nodes(world, "node-a") as apps:
        a = apps["node-a"]
        await until(lambda: running(a) == {"sage"})
        assert a.fleet is not None

        async def paused(*args: object) -> Round:  # as if the process stopped running for a while
            await anyio.sleep_forever()
            raise AssertionError

        a.fleet.store.keep_alive = paused  # type: ignore[method-assign]
        question = await world.discord.post("!chat are you still the one?")
        await world.openai.wait_for_requests(1)
        a.fleet.leases["sage"].valid_until = 0.0  # ... long enough for the lease to run out
        assert a.supervisor is not None and a.supervisor.children["sage"].actor is not None
        with caplog.at_level(logging.WARNING):
            await a.supervisor.children["sage"].actor.wait_idle()
    assert not [m for m in world.discord.sent if m.reference_id == int(question["id"])]
    assert f"bot 'sage': this node's lease on the bot has expired; not posting: message {question['id']}" in caplog.text


async def test_a_bot_taken_over_catches_up_where_its_last_holder_left_off_skipping_what_it_answered(
    world: World, redis_url: str, key_prefix: str
) -> None:
    write_fleet(world, redis_url, key_prefix, {"sage": "!"})
    sage = world.bot_ids["sage"]
    answered = await world.discord.post("!chat answered by the node before")
    await world.discord.post("an answer", author_id=sage, reply_to=int(answered["id"]))
    unanswered = await world.discord.post("!chat sent while no node ran sage")
    redis = Redis.from_url(redis_url)
    try:  # what the node that ran sage before saved: every message up to the one before these was done
        await redis.hset(f"fleet:{key_prefix}:catch_up:sage", str(world.discord.channel_id), int(answered["id"]) - 1)
    finally:
        await redis.aclose()
    async with nodes(world, "node-a") as apps:
        await until(lambda: running(apps["node-a"]) == {"sage"})
        await answered_once(world, unanswered, "sage")
    assert not [m for m in world.discord.sent if m.reference_id == int(answered["id"])], "answered once before"


async def test_a_node_that_takes_a_bot_back_reads_what_another_node_answered_meanwhile(
    world: World, redis_url: str, key_prefix: str
) -> None:
    write_fleet(world, redis_url, key_prefix, {"rumi": "$"})  # rumi's place is node-b while it is up
    async with nodes(world, "node-a") as first:
        a = first["node-a"]
        await until(lambda: running(a) == {"rumi"})
        await answered_once(world, await world.discord.post("$chat one"), "rumi")  # node-a caches the conversation
        async with nodes(world, "node-b") as second:
            await until(lambda: running(second["node-b"]) == {"rumi"} and not running(a))
            await answered_once(world, await world.discord.post("$chat two"), "rumi")
        await until(lambda: running(a) == {"rumi"})  # node-b has left: rumi is back on node-a
        await answered_once(world, await world.discord.post("$chat three"), "rumi")
    history = [m["content"] for m in world.openai.chat_requests[-1].body["messages"] if m["role"] == "user"]
    assert history == ["alice: one", "alice: two", "alice: three"], "node-a forgot what it had cached of rumi"


@pytest.mark.fault
async def test_a_redis_restart_stops_the_bots_once_their_leases_run_out_and_they_come_back_with_it(
    world: World, private_redis: PrivateRedis, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    write_fleet(world, private_redis.url, key_prefix)
    caplog.set_level(logging.INFO, logger="orchestrator.fleet")
    async with nodes(world, *NODES) as apps:
        a, b = apps["node-a"], apps["node-b"]
        assert a.fleet is not None and b.fleet is not None
        await until(lambda: running(a) == {"sage", "hafez"} and running(b) == {"rumi", "khayyam"})
        tokens = {bot: lease.token for app in (a, b) for bot, lease in app.fleet.leases.items()}  # type: ignore[union-attr]
        for bot, prefix in PREFIXES.items():
            await answered_once(world, await world.discord.post(f"{prefix}chat before, {bot}"), bot)

        await private_redis.stop()  # without persistence: it comes back empty
        await until(lambda: not running(a) and not running(b))
        log = caplog.text
        for bot in PREFIXES:  # each node kept its bots until their leases ran out
            stopped = log.index(f"bot {bot} stops at once on this node: its lease could not be renewed in time")
            assert log.index("cannot reach Redis") < stopped, log
        assert dict(a.fleet.losses) == {"sage": 1, "hafez": 1} and dict(b.fleet.losses) == {"rumi": 1, "khayyam": 1}
        meanwhile = [
            (await world.discord.post(f"{prefix}chat while down, {bot}"), bot) for bot, prefix in PREFIXES.items()
        ]

        await private_redis.start()
        await until(lambda: running(a) == {"sage", "hafez"} and running(b) == {"rumi", "khayyam"})
        for message, bot in meanwhile:  # Redis lost where to catch up from: each node remembers it
            await answered_once(world, message, bot)
        assert a.fleet.redis_error is None and b.fleet.redis_error is None
        for app in (a, b):
            for bot, lease in app.fleet.leases.items():
                assert lease.token > tokens[bot], "an emptied Redis still hands out higher fencing tokens"
        for bot, prefix in PREFIXES.items():
            await answered_once(world, await world.discord.post(f"{prefix}chat back again, {bot}?"), bot)
    assert "Redis answers again" in caplog.text
    assert all(world.discord.peak_connections[token_for(bot)] == 1 for bot in PREFIXES)


@pytest.mark.fault
async def test_postgresql_cut_off_the_node_answers_without_memory_says_so_and_saves_once_it_is_back(
    world: World, redis_url: str, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="orchestrator.memory")
    parts = urlsplit(world.database)
    proxy = TcpProxy(parts.port or 5432)  # the shared PostgreSQL is never stopped: the way to it is cut
    async with anyio.create_task_group() as tg:
        port = await tg.start(proxy.serve)
        world.database = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{port}"))
        write_fleet(world, redis_url, key_prefix, {"sage": "!"})
        async with nodes(world, "node-a") as apps:
            await until(lambda: running(apps["node-a"]) == {"sage"})
            await answered_once(world, await world.discord.post("!chat remember seven"), "sage")
            proxy.cut()
            bob = world.discord.add_user("bob")  # a conversation the node has not cached: it must read PostgreSQL
            await answered_once(world, await world.discord.post("!chat do you know me?", author_id=bob), "sage")
            assert "bot sage: could not read conversation memory; answering without it" in caplog.text
            await until(lambda: "keeping them in memory, retrying" in caplog.text)
            await tg.start(proxy.serve)  # PostgreSQL is reachable again, on the same port
            await until(lambda: "works again" in caplog.text)
            await answered_once(world, await world.discord.post("!chat and now?", author_id=bob), "sage")
        tg.cancel_scope.cancel()
    history = [m["content"] for m in world.openai.chat_requests[-1].body["messages"] if m["role"] == "user"]
    assert history == ["bob: do you know me?", "bob: and now?"], "the exchange made while cut off was kept"


async def test_the_password_of_the_redis_url_never_shows_in_the_log_or_the_status(
    world: World,
    key_prefix: str,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    password = "redis-pw-5ecret"
    async with running_redis(password) as redis:
        world.write([{"name": "sage", "prefix": "!"}], fleet={"redis_url_env": "REDIS_URL", "key_prefix": key_prefix})
        monkeypatch.setenv("REDIS_URL", redis.url)  # what `orchestrator status` reads
        caplog.set_level(logging.INFO)
        app = App(
            world.load({"REDIS_URL": redis.url, "ORCHESTRATOR_NODE_ID": "node-a"}),
            options=FAST,
            handle_signals=False,
            watch=False,
            health_port=0,
        )
        async with anyio.create_task_group() as tg:
            await tg.start(app.run)
            await until(lambda: running(app) == {"sage"})
            args = cli.build_parser().parse_args(["status", "--fleet", str(world.path)])
            assert await anyio.to_thread.run_sync(args.func, args) == 0
            app.request_stop()
    out = capsys.readouterr().out
    shown = f"redis://:***@127.0.0.1:{redis.port}/0"
    assert f"joins fleet {key_prefix!r} at {shown}" in caplog.text and f"at {shown}: 1 live node(s)" in out, out
    assert password not in caplog.text + out


@pytest.mark.fault
async def test_a_post_retried_after_a_discord_error_is_dropped_once_the_lease_has_run_out(
    world: World, redis_url: str, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    write_fleet(world, redis_url, key_prefix, {"sage": "!"}, ttl=60.0)  # the watchdog stays out of the way
    async with nodes(world, "node-a") as apps:
        a = apps["node-a"]
        await until(lambda: running(a) == {"sage"})
        assert a.fleet is not None
        fleet = a.fleet

        async def paused(*args: object) -> Round:  # renewals stop coming through
            await anyio.sleep_forever()
            raise AssertionError

        fleet.store.keep_alive = paused  # type: ignore[method-assign]

        class LeaseRunsOut(logging.Handler):  # while the retry waits, the lease runs out
            def emit(self, record: logging.LogRecord) -> None:
                if record.getMessage().startswith("Discord send failed (503)"):
                    fleet.leases["sage"].valid_until = 0.0

        handler = LeaseRunsOut()
        logging.getLogger("orchestrator.discord_io.delivery").addHandler(handler)
        try:
            world.discord.inject_rest(RestFault(503, method="POST", path_contains="/messages"))
            question = await world.discord.post("!chat still yours?")
            assert a.supervisor is not None and a.supervisor.children["sage"].actor is not None
            await until(lambda: "not posting" in caplog.text or bool(world.discord.sent))
            await a.supervisor.children["sage"].actor.wait_idle()
        finally:
            logging.getLogger("orchestrator.discord_io.delivery").removeHandler(handler)
    assert not [m for m in world.discord.sent if m.reference_id == int(question["id"])], "posted with the lease gone"
    assert f"this node's lease on the bot has expired; not posting: message {question['id']}" in caplog.text
