"""Helpers for the fleet tests: a key prefix per test (deleted afterwards), coordinators over the real
Redis driving fake supervisors that record when each bot starts and stops, a TCP proxy that can cut
a node off from Redis or PostgreSQL, and a Redis server of a test's own that it may restart."""

from __future__ import annotations

import contextlib
import secrets
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread
import pytest
from redis.asyncio import Redis

from orchestrator.fleet.connection import open_redis
from orchestrator.fleet.leases import LeaseStore
from orchestrator.fleet.node import FleetCoordinator
from tests.fleet_services import ServiceUnavailable, check_redis
from tests.waiting import until

Event = tuple[float, str, str, str]  # (monotonic time, node, bot, "start" | "stop")


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """A client of the local Redis, as a node opens one (fleet/connection.open_redis)."""
    client = open_redis(redis_url, timeout=2.0)
    yield client
    await client.aclose()


@pytest.fixture
async def key_prefix(tmp_path: Path, redis_url: str) -> AsyncIterator[str]:
    """A key prefix of this test's own (also apart from the same test in another run); its keys are
    deleted afterwards."""
    prefix = f"test-{tmp_path.name}-{secrets.token_hex(3)}"
    yield prefix
    redis = Redis.from_url(redis_url)
    try:
        keys = [key async for key in redis.scan_iter(match=f"fleet:{prefix}:*")]
        if keys:
            await redis.delete(*keys)
    finally:
        await redis.aclose()


@dataclass
class FakeRunner:
    """Stands for a node's supervisor: records each start and stop in the shared ``timeline``."""

    node: str
    bot_names: list[str]
    timeline: list[Event]
    stop_requested: bool = False
    running: dict[str, dict[int, int]] = field(default_factory=dict)  # bot -> the catch-up it started with
    positions: dict[str, dict[int, int]] = field(default_factory=dict)  # bot -> where it would be caught up
    drain: float = 0.0  # how long a graceful stop takes (answers in flight finishing)

    def running_bots(self) -> list[str]:
        return list(self.running)

    def start_bot(self, name: str, catch_up_from: Mapping[int, int] | None = None) -> None:
        assert name not in self.running, f"{name} started twice on {self.node}"
        self.running[name] = dict(catch_up_from or {})
        self.timeline.append((time.monotonic(), self.node, name, "start"))

    async def stop_bot(self, name: str, *, at_once: bool = False) -> dict[int, int]:
        if at_once:
            await anyio.lowlevel.checkpoint()
        else:
            await anyio.sleep(self.drain)  # stands for the answers in flight: other nodes go on meanwhile
        if self.running.pop(name, None) is not None:
            self.timeline.append((time.monotonic(), self.node, name, "stop"))
        return self.catch_up_positions(name)

    def catch_up_positions(self, name: str) -> dict[int, int]:
        return self.positions.get(name, {})


@dataclass
class Node:
    coordinator: FleetCoordinator
    runner: FakeRunner
    scope: anyio.CancelScope
    redis: Redis


@contextlib.asynccontextmanager
async def fleet(url: str, key_prefix: str, ttl: float) -> AsyncIterator[Callable[..., Node]]:
    """Start nodes with ``start(node_id, bots, timeline)``; each runs until the block ends or its
    ``scope`` is cancelled (as if the process died: its fake bots never stop, so it releases no lease)."""
    clients: list[Redis] = []
    try:
        async with anyio.create_task_group() as tg:
            yield partial(_start, tg, clients, url, key_prefix, ttl)
            tg.cancel_scope.cancel()
    finally:
        for client in clients:
            await client.aclose()


def _start(
    tg: anyio.abc.TaskGroup,
    clients: list[Redis],
    url: str,
    key_prefix: str,
    ttl: float,
    node_id: str,
    bots: Collection[str],
    timeline: list[Event],
    *,
    via: str | None = None,
) -> Node:
    redis = open_redis(via or url, timeout=ttl / 6)
    clients.append(redis)
    runner = FakeRunner(node_id, list(bots), timeline)
    coordinator = FleetCoordinator(LeaseStore(redis, key_prefix, node_id, ttl), runner)
    scope = anyio.CancelScope()

    async def run() -> None:
        with scope:
            await coordinator.run()

    tg.start_soon(run)
    return Node(coordinator, runner, scope, redis)


def holders(timeline: list[Event]) -> Iterator[tuple[str, set[str]]]:
    """After each event, the bot it concerns and the nodes running that bot."""
    running: dict[str, set[str]] = {}
    for _at, node, bot, what in sorted(timeline):
        nodes = running.setdefault(bot, set())
        if what == "start":
            nodes.add(node)
        else:
            nodes.discard(node)
        yield bot, set(nodes)


class TcpProxy:
    """A loopback TCP proxy to a local server that can be cut (every connection closed, new ones refused)
    and restored on the same port: a node losing its network to Redis or PostgreSQL, without touching
    the shared servers."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._scope: anyio.CancelScope | None = None

    async def serve(self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=self.port)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        with anyio.CancelScope() as self._scope:
            async with listener, anyio.create_task_group() as tg:
                task_status.started(self.port)
                await listener.serve(self._pipe, task_group=tg)

    def cut(self) -> None:
        assert self._scope is not None
        self._scope.cancel()

    async def _pipe(self, client: anyio.abc.SocketStream) -> None:
        server = await anyio.connect_tcp("127.0.0.1", self.target_port)
        async with client, server, anyio.create_task_group() as tg:
            tg.start_soon(_copy, client, server, tg.cancel_scope)
            await _copy(server, client, tg.cancel_scope)


async def _copy(source: anyio.abc.SocketStream, sink: anyio.abc.SocketStream, done: anyio.CancelScope) -> None:
    with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
        async for chunk in source:
            await sink.send(chunk)
    done.cancel()


class PrivateRedis:
    """A ``redis-server`` of one test's own, on a free loopback port, which the test may stop and start
    again (the shared Redis is never restarted). Without persistence: a restart loses every key."""

    def __init__(self, port: int, password: str | None = None) -> None:
        self.port = port
        self.password = password
        self.url = f"redis://{f':{password}@' if password else ''}127.0.0.1:{port}/0"
        self._process: anyio.abc.Process | None = None

    async def start(self) -> None:
        """Start the server and wait until it answers PING."""
        assert self._process is None, "already running"
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        if self.password:
            command += ["--requirepass", self.password]
        try:
            self._process = await anyio.open_process(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except FileNotFoundError:
            pytest.fail(
                "this test starts a Redis of its own, but redis-server is not on PATH: install Redis "
                "(e.g. apt-get install redis-server)",
                pytrace=False,
            )
        await until(self._answers, within=10)

    async def stop(self) -> None:
        """Stop the server (SIGTERM) and wait until it has exited."""
        if self._process is None:
            return
        process, self._process = self._process, None
        process.terminate()
        with anyio.CancelScope(shield=True):
            await process.wait()
            await process.aclose()

    async def _answers(self) -> bool:
        try:
            await anyio.to_thread.run_sync(check_redis, self.url)
        except ServiceUnavailable:
            return False
        return True


@contextlib.asynccontextmanager
async def running_redis(password: str | None = None) -> AsyncIterator[PrivateRedis]:
    """A started :class:`PrivateRedis` on a free port, stopped at the end."""
    with socket.socket() as probe:  # a port free now; redis-server binds it at once
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = PrivateRedis(port, password)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def private_redis() -> AsyncIterator[PrivateRedis]:
    """A running :class:`PrivateRedis` without a password, stopped after the test."""
    async with running_redis() as server:
        yield server
