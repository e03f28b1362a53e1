"""fleet/line.py on real Redis servers: a script called on a connection of its own answers as the
script does; Redis losing its scripts, being restarted, or a call cancelled mid-way (its reply still
coming) leave the line working; its commands are packed as redis-py packs them; a call slower than the
client's timeout fails as a timeout, and a cut-off Redis is an error the quotas know too (REDIS_ERRORS)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
import pytest

from orchestrator.fleet.connection import REDIS_ERRORS, open_redis
from orchestrator.fleet.line import ScriptLine, pack
from tests.fleet_helpers import PrivateRedis, TcpProxy

ECHO = "redis.call('INCR', KEYS[1]); return ARGV[1]"
# Busy for ARGV[2] ms of Redis' clock: a reply that comes after the caller has given up.
SLOW = """
local function ms() local t = redis.call('TIME'); return t[1] * 1000 + t[2] / 1000 end
local until_ms = ms() + tonumber(ARGV[2])
while ms() < until_ms do end
return ARGV[1]
"""


@contextlib.asynccontextmanager
async def script_line(url: str, script: str, *, timeout: float = 2.0) -> AsyncIterator[ScriptLine]:
    """A line for ``script`` on a client of the Redis at ``url``, closed at the end."""
    redis = open_redis(url, timeout=timeout)
    try:
        yield ScriptLine(redis, redis.register_script(script))
    finally:
        await redis.aclose()


async def test_a_line_answers_as_the_script_and_sends_it_again_when_redis_lost_it(private_redis: PrivateRedis) -> None:
    async with script_line(private_redis.url, ECHO) as line:
        assert await line(["n"], ["one"]) == b"one"  # never loaded: sent whole
        assert await line(["n"], ["two"]) == b"two"
        redis = open_redis(private_redis.url, timeout=2.0)
        try:
            await redis.script_flush()  # as a restarted Redis that kept its data (a server of this test's own)
            assert await line(["n"], ["three"]) == b"three"
            assert await redis.get("n") == b"3", "each call ran once"
        finally:
            await redis.aclose()


async def test_a_line_goes_on_after_redis_restarts(private_redis: PrivateRedis) -> None:
    async with script_line(private_redis.url, ECHO) as line:
        assert await line(["n"], ["before"]) == b"before"
        await private_redis.stop()
        await private_redis.start()  # its kept connection is dead now: replaced, the call tried once more
        assert await line(["n"], ["after"]) == b"after"


async def test_a_call_given_up_mid_way_does_not_leave_its_reply_to_the_next(private_redis: PrivateRedis) -> None:
    async with script_line(private_redis.url, SLOW) as line:
        await line([], ["warm", 0])
        with anyio.move_on_after(0.05):
            await line([], ["late", 300])
        assert await line([], ["next", 0]) == b"next"


def test_a_command_is_packed_as_redis_py_packs_it() -> None:
    from redis.asyncio.connection import Connection

    parts = (b"EVALSHA", b"0123abcd", 2, "fleet:p:quota:sage:*:", "fleet:p:quota:sage:42:", "", "t1", 500,
             "100000,,3,0.5", "sage 42 t0 -12 0.0017", "hafez ünïcode 1 2 3", 0.25, -7)  # fmt: skip
    assert pack(*parts) == b"".join(Connection().pack_command(*parts))


async def test_a_call_slower_than_the_clients_timeout_fails_as_redis_failures_do(private_redis: PrivateRedis) -> None:
    async with script_line(private_redis.url, SLOW, timeout=0.1) as line:
        with pytest.raises(REDIS_ERRORS) as failure:
            await line([], ["late", 300])  # tried twice, as the client would: 0.2 s in all
        assert isinstance(failure.value, TimeoutError)


async def test_a_cut_off_redis_is_an_error_of_redis_and_the_line_works_when_it_is_back() -> None:
    proxy = TcpProxy(6379)
    async with anyio.create_task_group() as tg:
        port = await tg.start(proxy.serve)
        async with script_line(f"redis://127.0.0.1:{port}/0", "return ARGV[1]", timeout=0.5) as line:
            assert await line([], ["up"]) == b"up"
            proxy.cut()
            with pytest.raises(REDIS_ERRORS):
                await line([], ["down"])
            await tg.start(proxy.serve)
            assert await line([], ["back"]) == b"back"
        tg.cancel_scope.cancel()
