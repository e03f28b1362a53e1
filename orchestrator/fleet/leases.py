"""Bot leases and node heartbeats in Redis: each operation one Lua script, so it is atomic.

Keys, all under ``fleet:<key_prefix>:``:

    lease:<bot>      "<holder>/<token>", expires after lease_ttl unless renewed: who runs the bot; the holder
                     is "<node id>#<instance>", one per process, so two processes given the same node id
                     by mistake still never hold one lease together
    fence:<bot>      the bot's fencing token counter, incremented for every new holder
    holder:<bot>     {node: holder, token, since}: the holder as of its taking the lease; deleted on release, so
                     a holder found here by the next taker never released it (a failover)
    catch_up:<bot>   {channel: message id}: where the next holder reads what the bot may not have answered
    answered:<bot>:<message id>   "<holder>/<token>" of the first holder that answered it (fleet/claims.py),
                     set if absent with each renewal and release, expiring after :data:`ANSWERED_TTL`
    node:<id>        {"bots": [...], "instance": ...}, expires after lease_ttl: a live node and the bots it holds
    nodes            sorted set of node ids by last heartbeat (Redis' clock, ms): how nodes find each other

Times that leave a node are Redis' own (``TIME``), never the node's clock. A node counts on a lease
only for :data:`LOCAL_SHARE` of the TTL from when it asked for it (:class:`Lease`): the rest covers
clock drift and closing the bot's Discord connection before another node may take the lease.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from .connection import ScriptCall, run_scripts

LOCAL_SHARE = 0.9
# How long a message stays marked answered (fleet/claims.py): longer than the catch-up window
# (RuntimeOptions.catch_up_window, 5 minutes), so a message read again by catch-up is still marked.
ANSWERED_TTL = 600.0

# KEYS: lease, fence, holder, catch_up. ARGV: holder, ttl ms.
# Returns {token, previous holder that never released ('' if none), catch_up as a flat list}, or
# {0, current holder, {}} when another node holds the lease.
_ACQUIRE = """
local current = redis.call('GET', KEYS[1])
if current then
  local holder, token = string.match(current, '^(.*)/(%d+)$')
  if holder ~= ARGV[1] then return {0, holder or current, {}} end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {tonumber(token), '', redis.call('HGETALL', KEYS[4])}
end
local t = redis.call('TIME')
local now = t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
if redis.call('EXISTS', KEYS[2]) == 0 then
  -- a Redis that lost its data still hands out tokens above every earlier one
  redis.call('SET', KEYS[2], now)
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '/' .. token, 'PX', ARGV[2])
local previous = redis.call('HGET', KEYS[3], 'node') or ''
redis.call('DEL', KEYS[3])
redis.call('HSET', KEYS[3], 'node', ARGV[1], 'token', token, 'since', now)
return {token, previous, redis.call('HGETALL', KEYS[4])}
"""

# KEYS: lease, catch_up, then the answered marks to set. ARGV: value, ttl ms, marks' ttl ms, then
# channel/message id pairs (none: leave catch_up). The marks are set whoever holds the lease now.
_RENEW = """
for i = 3, #KEYS do redis.call('SET', KEYS[i], ARGV[1], 'NX', 'PX', ARGV[3]) end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if #ARGV > 3 then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[2], unpack(ARGV, 4))
end
return 1
"""

# KEYS: lease, holder, catch_up, then the answered marks to set. ARGV: value, marks' ttl ms, then
# channel/message id pairs (none: leave catch_up). Compare-and-delete: never another holder's lease.
_RELEASE = """
for i = 4, #KEYS do redis.call('SET', KEYS[i], ARGV[1], 'NX', 'PX', ARGV[2]) end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
if #ARGV > 2 then
  redis.call('DEL', KEYS[3])
  redis.call('HSET', KEYS[3], unpack(ARGV, 3))
end
return 1
"""

# KEYS: node, nodes. ARGV: node id, ttl ms, node JSON. Returns {the node's JSON as it was ('' if none),
# the live node ids}.
_HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local previous = redis.call('GET', KEYS[1]) or ''
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], string.format('%d', now), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', string.format('%d', now - tonumber(ARGV[2])))
return {previous, redis.call('ZRANGE', KEYS[2], 0, -1)}
"""

# KEYS: node, nodes. ARGV: node id. A node leaving on a clean stop.
_LEAVE = """
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""


@dataclass
class Lease:
    """A lease this node holds: the fencing token and until when (monotonic) it may act on it."""

    bot: str
    token: int
    value: str  # what the lease key holds while it is ours
    valid_until: float
    draining: bool = False  # the bot is stopping to move to another node; the lease goes once it is down

    def valid(self, now: float) -> bool:
        return now < self.valid_until


@dataclass(frozen=True)
class Acquired:
    """The outcome of trying to take a lease."""

    lease: Lease | None  # None: another node holds it
    holder: str  # the other holder (when refused), or the previous one that never released ('' if none)
    catch_up: dict[int, int]  # where to read missed messages from, per channel


@dataclass(frozen=True)
class Round:
    """What a node's round found."""

    nodes: list[str]  # the live node ids, this one too
    twin: str | None  # another process that heartbeat as this node before (its instance), if any
    kept: dict[str, bool]  # by bot: the lease is still ours (False: lost)


@dataclass(frozen=True)
class NodeView:
    node: str
    last_heartbeat_ms: int  # Redis' clock
    bots: list[str]  # held, as the node last said; empty when its heartbeat has expired


@dataclass(frozen=True)
class BotView:
    bot: str
    holder: str | None  # None: no node holds it
    token: int | None
    since_ms: int | None  # Redis' clock, when the holder took it
    expires_in_ms: int | None


@dataclass(frozen=True)
class FleetView:
    """The fleet as Redis sees it now (for ``orchestrator status``)."""

    now_ms: int
    nodes: list[NodeView]
    bots: list[BotView]


class LeaseStore:
    """The fleet's Redis keys and scripts. Every call is one round trip (a pipeline for many bots)."""

    def __init__(
        self, redis: Redis, key_prefix: str, node_id: str, lease_ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.redis = redis
        self.node_id = node_id
        self.instance = secrets.token_hex(4)
        self.holder = f"{node_id}#{self.instance}"
        self.key_prefix = key_prefix
        self.lease_ttl = lease_ttl
        self._ttl_ms = max(1, round(lease_ttl * 1000))
        self._answered_ttl_ms = round(ANSWERED_TTL * 1000)
        self._base = f"fleet:{key_prefix}:"
        self.clock = clock  # monotonic: the local deadlines of leases
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self._heartbeat = redis.register_script(_HEARTBEAT)
        self._leave = redis.register_script(_LEAVE)

    def key(self, kind: str, name: str = "") -> str:
        return f"{self._base}{kind}:{name}" if name else f"{self._base}{kind}"

    def _bot_keys(self, bot: str) -> list[str]:
        return [self.key("lease", bot), self.key("fence", bot), self.key("holder", bot), self.key("catch_up", bot)]

    def _valid_from(self, asked: float) -> float:
        return asked + self.lease_ttl * LOCAL_SHARE

    def answered_key(self, bot: str, message_id: int) -> str:
        return self.key("answered", f"{bot}:{message_id}")

    async def acquire(self, bots: Sequence[str]) -> dict[str, Acquired]:
        """Try to take each bot's lease (or confirm it is ours)."""
        calls = [(self._acquire, self._bot_keys(bot), [self.holder, self._ttl_ms]) for bot in bots]
        asked = self.clock()
        replies = await run_scripts(self.redis, calls)
        results = {}
        for bot, (token, holder, flat) in zip(bots, replies, strict=True):
            holder = _text(holder)
            catch_up = {int(_text(k)): int(_text(v)) for k, v in zip(flat[::2], flat[1::2], strict=True)}
            lease = None
            if token:
                lease = Lease(bot, int(token), f"{self.holder}/{int(token)}", self._valid_from(asked))
            results[bot] = Acquired(lease, holder, catch_up)
        return results

    async def keep_alive(
        self,
        leases: Sequence[Lease],
        catch_up: Mapping[str, Mapping[int, int]],
        answered: Mapping[str, Sequence[int]],
    ) -> Round:
        """A node's round trip every ``lease_ttl / 3``: say this node is alive and which bots it holds,
        and extend each lease that is still ours (moving its ``valid_until`` on). ``catch_up`` (by bot)
        replaces where the next holder will catch up from; ``answered`` (by bot) are the messages
        answered here since the last round, to mark."""
        document = json.dumps({"bots": sorted(lease.bot for lease in leases), "instance": self.instance})
        calls: list[ScriptCall] = [
            (self._heartbeat, [self.key("node", self.node_id), self.key("nodes")],
             [self.node_id, self._ttl_ms, document])
        ]  # fmt: skip
        for lease in leases:
            marks = (self.answered_key(lease.bot, message_id) for message_id in answered.get(lease.bot, ()))
            keys = [self.key("lease", lease.bot), self.key("catch_up", lease.bot), *marks]
            args = [lease.value, self._ttl_ms, self._answered_ttl_ms, *_flat(catch_up.get(lease.bot, {}))]
            calls.append((self._renew, keys, args))
        asked = self.clock()
        (previous, live), *renewed = await run_scripts(self.redis, calls)
        kept = {}
        for lease, ok in zip(leases, renewed, strict=True):
            kept[lease.bot] = bool(ok)
            if ok:
                lease.valid_until = max(lease.valid_until, self._valid_from(asked))
        instance = json.loads(previous).get("instance") if previous else None
        return Round([_text(node) for node in live], instance if instance != self.instance else None, kept)

    async def release(self, lease: Lease, catch_up: Mapping[int, int], answered: Sequence[int] = ()) -> bool:
        """Give the lease up if it is still ours, saying where the next holder catches up from and
        marking what was answered since the last round; False: it was not ours (any more)."""
        keys = [self.key("lease", lease.bot), self.key("holder", lease.bot), self.key("catch_up", lease.bot),
                *(self.answered_key(lease.bot, message_id) for message_id in answered)]  # fmt: skip
        return bool(await self._release(keys, [lease.value, self._answered_ttl_ms, *_flat(catch_up)]))

    async def leave(self) -> None:
        await self._leave([self.key("node", self.node_id), self.key("nodes")], [self.node_id])

    async def view(self, bots: Sequence[str]) -> FleetView:
        """Nodes (id, last heartbeat, bots held) and, for each bot, its holder and lease age."""
        scored: list[Any] = await self.redis.zrange(self.key("nodes"), 0, -1, withscores=True)  # [(id, score)]
        nodes = [(_text(node), int(score)) for node, score in scored]
        pipe = self.redis.pipeline(transaction=False)
        pipe.time()
        for node, _score in nodes:
            pipe.get(self.key("node", node))
        for bot in bots:
            pipe.get(self.key("lease", bot))
            pipe.pttl(self.key("lease", bot))
            pipe.hgetall(self.key("holder", bot))
        replies = await pipe.execute()
        seconds, micros = replies[0]
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        node_views = []
        for (node, score), document in zip(nodes, replies[1 : 1 + len(nodes)], strict=True):
            held = json.loads(document)["bots"] if document else []
            node_views.append(NodeView(node, score, held))
        rest = replies[1 + len(nodes) :]
        bot_views = []
        for index, bot in enumerate(bots):
            value, ttl, holder = rest[3 * index : 3 * index + 3]
            if not value:
                bot_views.append(BotView(bot, None, None, None, None))
                continue
            holding, _, token = _text(value).rpartition("/")
            since = holder.get(b"since") if holder and _text(holder.get(b"node", b"")) == holding else None
            expires = ttl if ttl >= 0 else None
            bot_views.append(BotView(bot, node_of(holding), int(token), int(since) if since else None, expires))
        return FleetView(now_ms, node_views, bot_views)


def node_of(holder: str) -> str:
    """The node id of a lease holder (``<node id>#<instance>``)."""
    return holder.partition("#")[0]


def _flat(positions: Mapping[int, int]) -> list[str]:
    return [str(part) for item in positions.items() for part in item]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
