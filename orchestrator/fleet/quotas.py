"""Fleet-wide quotas: the per-bot and per-user limits of bots.yaml (requests and tokens per minute,
tokens per day, ``usd_per_day``, ``images_per_day``) counted in Redis for every node, with the
semantics of the single-process books (llm/quota.py, llm/spend.py, llm/images.py): reserve the
estimate before the call, settle to the real usage after it, 0 tokens refunding a failed call; take
an image before asking for it, give it back when none came; minutes are sliding 60 s windows, days
UTC calendar days. Each reserve, settle, take and give-back is one Lua script, so it is atomic across
nodes: two nodes never both take the last request of a minute or the last image of a day.

Why Lua scripts and not a limiter library: the Python Redis limiters (redis-rate-limiters and its
forks: token buckets and semaphores of one unit per call; token-throttle: GCRA that waits for
capacity) neither refuse with the wait of a sliding window nor settle a variable token amount and
keep UTC-day budgets and money caps; and the project adds no dependency for it. The scripts are
short and every limit's rule matches the book's line for line.

Settles are batched: while :meth:`FleetQuotas.settling` runs (the fleet node's lifetime), a settle
is counted in this node's books at once and queued for Redis; the node's next reserve carries what
has queued (the script applies it first), and one script call applies what no reserve took within
:data:`SETTLE_EVERY` seconds (or as soon as :data:`SETTLE_BATCH` have queued), the rest on the way
out. One Redis round trip per answer instead of two: a round trip costs a node about as much CPU as
the rest of its fleet work per answer. Until its settle is applied a reservation counts at its
estimate (prompt + max_tokens, never below the real usage): the fleet over-counts for that time
(until this node's next request, a second at most), never under. Settles that could under-count go
at once: real usage above the estimate, and any reservation under a ``usd_per_day`` cap (its money
is counted only when settled).
Outside :meth:`~FleetQuotas.settling` (before the node starts, after it stopped) every settle goes at once.

Keys, under ``fleet:<key_prefix>:quota:<bot>:<user>:`` (user ``*``: the whole bot):

    w    sorted set: the reservations of the last 60 s by time (Redis' clock, ms); its size is the
         requests of the minute
    t    hash: each reservation's tokens, and ``_total`` their sum
    d    hash: ``day`` (days since 1970, UTC), that day's ``tokens``, ``usd`` and ``images``; another
         day reads as 0, and every write writes all four

``w`` and ``t`` expire 60 s after their last reservation (everything in them is older by then), ``d``
two days after its last use: nothing grows with the number of users seen. Times are Redis' (``TIME``),
so nodes whose clocks differ still agree on the window and on midnight; tests pass their own.

A call whose bot and user have no limit at all does not go to Redis (its usage is counted in this
node's books, as in one process), and likewise an image without an ``images_per_day``. So a limit
added by a live reload counts fleet-wide from then on.

Redis unreachable (or slower than the fleet's timeout): the node keeps answering with its own books'
limits, as if it were alone (the bots it holds keep running until their leases run out, and this is
their quota meanwhile), says so once per outage in the log, and tries Redis again after
:data:`RECHECK` seconds. A reservation Redis took but could not settle stays counted at its estimate
until its minute and day pass, an image it took but could not give back until its day passes:
over-counting, never under-counting.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

import anyio
from redis.asyncio import Redis

from ..config import ModelPrice, QuotaSettings
from ..errors import QuotaExceeded
from ..llm.admission import LocalQuotas
from ..llm.images import ImageBook, ImageTicket
from ..llm.quota import QuotaBook, Reservation, UsageReport
from ..llm.spend import SpendBook, SpendCapReached
from .batch import WriteBehind
from .connection import REDIS_ERRORS, RedisOutage
from .line import ScriptLine

log = logging.getLogger(__name__)

SETTLE_EVERY = 1.0  # seconds a settle may wait in this node's queue for a reserve (or others) to carry it
SETTLE_BATCH = 100  # settles in one call at most: a full queue goes without waiting the rest of SETTLE_EVERY
SPEND_CAPPED = "$"  # first character of a ticket under a usd_per_day cap: its settle is never queued
SCOPES = ("bot", "user")
NO_LIMIT = QuotaSettings()

_COMMON = """
local WINDOW, DAY = 60000, 86400000
local now
if ARGV[1] ~= '' then now = tonumber(ARGV[1]) else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local today = math.floor(now / DAY)

-- Drop what is 60 s old or older from a window, and its tokens from the total.
local function prune(w, t)
  local old = redis.call('ZRANGEBYSCORE', w, '-inf', now - WINDOW)
  for i = 1, #old, 500 do
    local ids = {unpack(old, i, math.min(i + 499, #old))}
    local gone = 0
    for _, amount in ipairs(redis.call('HMGET', t, unpack(ids))) do gone = gone + (tonumber(amount) or 0) end
    if gone ~= 0 then redis.call('HINCRBY', t, '_total', -gone) end  -- (t gone already: nothing to count out)
    redis.call('HDEL', t, unpack(ids))
  end
  redis.call('ZREMRANGEBYSCORE', w, '-inf', now - WINDOW)
end

-- Today's tokens, USD and images of a day hash (another day's count as none).
local function daily(d)
  local got = redis.call('HMGET', d, 'day', 'tokens', 'usd', 'images')
  if tonumber(got[1]) ~= today then return 0, 0, 0 end
  return tonumber(got[2]) or 0, tonumber(got[3]) or 0, tonumber(got[4]) or 0
end

-- Today's counts into a day hash (all of them: none of another day's is left behind).
local function set_day(d, tokens, usd, images)
  redis.call('HSET', d, 'day', today, 'tokens', tokens, 'usd', string.format('%.17g', usd), 'images', images)
  redis.call('PEXPIRE', d, 2 * DAY)
end

-- Settles, one in each ARGV from ARGV[a] on: "<bot> <user> <reservation id> <real tokens - estimate>
-- <USD>", their keys under the prefix `base`. A reservation already out of its window was counted
-- out at its estimate; the day is today's. Each window is pruned once.
local function settle_all(base, a)
  local pruned = {}
  for i = a, #ARGV do
    local bot, user, ticket, delta, cost = string.match(ARGV[i], '^(%S+) (%S+) (%S+) (%S+) (%S+)$')
    delta, cost = tonumber(delta), tonumber(cost)
    for _, who in ipairs({'*', user}) do
      local scope = base .. bot .. ':' .. who .. ':'
      local w, t, d = scope .. 'w', scope .. 't', scope .. 'd'
      if not pruned[w] then prune(w, t); pruned[w] = true end
      if redis.call('ZSCORE', w, ticket) and redis.call('HEXISTS', t, ticket) == 1 then  -- never a key without expiry
        redis.call('HINCRBY', t, ticket, delta)
        redis.call('HINCRBY', t, '_total', delta)
      end
      local tokens, usd, images = daily(d)
      set_day(d, math.max(0, tokens + delta), usd + cost, images)
    end
  end
end
"""

# KEYS: the prefixes of the bot's keys and of the user's (their w, t and d). ARGV: now ms ('' = Redis'
# clock), reservation id, estimate, the limits (comma-separated, '' = none: for the bot and for the
# user, requests/min, tokens/min, tokens/day, usd/day), the quota keys' prefix, then the settles it
# carries (as _SETTLE's), applied first. Few arguments: each costs the node's client about as much
# as a line of Lua. Returns {1} when reserved, else {0, scope (1 bot, 2 user), limit, ms until it fits}.
_RESERVE = (
    _COMMON
    + """
settle_all(ARGV[5], 6)
local K = {}  -- w, t, d of the bot, then of the user
for scope = 1, 2 do
  K[3 * scope - 2], K[3 * scope - 1], K[3 * scope] = KEYS[scope] .. 'w', KEYS[scope] .. 't', KEYS[scope] .. 'd'
end
local estimate = tonumber(ARGV[3])
local limits, n = {}, 0
for value in (ARGV[4] .. ','):gmatch('([^,]*),') do n = n + 1; limits[n] = tonumber(value) end

-- ms until `needed` more fits under `limit` in a window: until enough of its oldest have left it
local function wait(w, t, total, needed, limit, requests)
  local excess = total + needed - limit
  local events = redis.call('ZRANGE', w, 0, -1, 'WITHSCORES')
  for i = 1, #events, 2 do
    excess = excess - (requests and 1 or (tonumber(redis.call('HGET', t, events[i])) or 0))
    if excess <= 0 then return math.max(0, tonumber(events[i + 1]) + WINDOW - now) end
  end
  return WINDOW
end

local function limit(scope, index) return limits[4 * (scope - 1) + index] end

for scope = 1, 2 do prune(K[3 * scope - 2], K[3 * scope - 1]) end
for scope = 1, 2 do  -- the spend caps first, as the single-process pool checks them first
  local cap = limit(scope, 4)
  if cap then
    local _, usd = daily(K[3 * scope])
    if usd >= cap then return {0, scope, 'usd_per_day', DAY - now % DAY} end
  end
end
for scope = 1, 2 do
  local w, t, d = K[3 * scope - 2], K[3 * scope - 1], K[3 * scope]
  local rpm, tpm, tpd = limit(scope, 1), limit(scope, 2), limit(scope, 3)
  if rpm then
    local count = redis.call('ZCARD', w)
    if count + 1 > rpm then return {0, scope, 'requests_per_minute', wait(w, t, count, 1, rpm, true)} end
  end
  if tpm then
    local total = tonumber(redis.call('HGET', t, '_total')) or 0
    if total + estimate > tpm then return {0, scope, 'tokens_per_minute', wait(w, t, total, estimate, tpm, false)} end
  end
  if tpd then
    local tokens = daily(d)
    if tokens + estimate > tpd then return {0, scope, 'tokens_per_day', DAY - now % DAY} end
  end
end
for scope = 1, 2 do
  local w, t, d = K[3 * scope - 2], K[3 * scope - 1], K[3 * scope]
  redis.call('ZADD', w, now, ARGV[2])
  redis.call('HSET', t, ARGV[2], estimate)
  redis.call('HINCRBY', t, '_total', estimate)
  redis.call('PEXPIRE', w, WINDOW)
  redis.call('PEXPIRE', t, WINDOW)
  local tokens, usd, images = daily(d)
  set_day(d, tokens + estimate, usd, images)
end
return {1}
"""
)

# ARGV: now ms ('' = Redis' clock), the quota keys' prefix, then one settle in each:
# "<bot> <user> <reservation id> <real tokens - estimate> <USD>" (names and ids have no spaces).
_SETTLE = (
    _COMMON
    + """
settle_all(ARGV[2], 3)
return 1
"""
)

# KEYS: w, t, d of one scope. ARGV: now ms ('' = Redis' clock).
# Returns {requests this minute, tokens this minute, tokens today, USD today as text}.
_USAGE = (
    _COMMON
    + """
prune(KEYS[1], KEYS[2])
local tokens, usd = daily(KEYS[3])
return {redis.call('ZCARD', KEYS[1]), tonumber(redis.call('HGET', KEYS[2], '_total')) or 0, tokens,
        string.format('%.17g', usd)}
"""
)


# KEYS: d of the bot, then of the user. ARGV: now ms ('' = Redis' clock), images/day of the bot and
# of the user ('' = none). Returns {1, today} when taken, else {0, scope (1 bot, 2 user), ms until midnight}.
_TAKE_IMAGE = (
    _COMMON
    + """
for scope = 1, 2 do
  local cap = tonumber(ARGV[1 + scope])
  if cap then
    local _, _, images = daily(KEYS[scope])
    if images >= cap then return {0, scope, DAY - now % DAY} end
  end
end
for scope = 1, 2 do
  local tokens, usd, images = daily(KEYS[scope])
  set_day(KEYS[scope], tokens, usd, images + 1)
end
return {1, today}
"""
)

# KEYS: as _TAKE_IMAGE. ARGV: now ms ('' = Redis' clock), the day the image was taken on: another
# day's image stays counted on it (as the single-process book does).
_GIVE_BACK_IMAGE = (
    _COMMON
    + """
if tonumber(ARGV[2]) ~= today then return 0 end
for scope = 1, 2 do
  local tokens, usd, images = daily(KEYS[scope])
  set_day(KEYS[scope], tokens, usd, math.max(0, images - 1))
end
return 1
"""
)

# KEYS: as _TAKE_IMAGE. ARGV: now ms ('' = Redis' clock). Returns {the bot's images today, the user's}.
_IMAGES_TODAY = (
    _COMMON
    + """
local _, _, everyone = daily(KEYS[1])
local _, _, mine = daily(KEYS[2])
return {everyone, mine}
"""
)


def _settle_arg(reservation: Reservation, ticket: str, delta: int, usd: float) -> str:
    """A settle on its way to Redis: its ARGV in :data:`_SETTLE`."""
    return f"{reservation.bot} {reservation.user} {ticket} {delta} {usd!r}"


def limited(quota: QuotaSettings) -> bool:
    return any(
        value is not None
        for value in (quota.requests_per_minute, quota.tokens_per_minute, quota.tokens_per_day, quota.usd_per_day)
    )


class FleetQuotas:
    """The :class:`~orchestrator.llm.admission.Quotas` of a fleet node. This node's books still count
    what it does (its metrics, ``!usage``, the usage persisted in the store) and hold the limits
    while Redis is unreachable."""

    def __init__(
        self,
        redis: Redis,
        key_prefix: str,
        book: QuotaBook,
        spend: SpendBook,
        images: ImageBook | None = None,
        *,
        now_ms: Callable[[], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.local = LocalQuotas(book, spend, images or ImageBook())
        self._base = f"fleet:{key_prefix}:quota:"
        self._now_ms = now_ms  # None: Redis' own clock
        self._instance = secrets.token_hex(4)  # reservation ids: this client's, then a count
        self._tickets = itertools.count()
        self._reserve = ScriptLine(redis, redis.register_script(_RESERVE))  # on every answer: a connection of its own
        self._settle = redis.register_script(_SETTLE)
        self._usage = redis.register_script(_USAGE)
        self._take_image = redis.register_script(_TAKE_IMAGE)
        self._give_back_image = redis.register_script(_GIVE_BACK_IMAGE)
        self._images_today = redis.register_script(_IMAGES_TODAY)
        self._outage = RedisOutage(
            clock,
            log,
            lost="fleet: cannot reach Redis for the quotas (%s); this node holds the limits of bots.yaml by "
            "itself, counting only what it answers, until Redis answers again",
            back="fleet: Redis answers again; the quotas are fleet-wide again",
        )
        self._settles = WriteBehind[str](self._apply_batch, every=SETTLE_EVERY, size=SETTLE_BATCH)

    @property
    def redis_error(self) -> str | None:
        """Why Redis could not be used last; None while it answers."""
        return self._outage.error

    def _scopes(self, bot: str, user: str) -> list[str]:
        """The prefixes of the bot's keys and of the user's."""
        return [f"{self._base}{bot}:{QuotaBook.ALL_USERS}:", f"{self._base}{bot}:{user}:"]

    def _keys(self, bot: str, user: str) -> list[str]:
        return [f"{scope}{kind}" for scope in self._scopes(bot, user) for kind in "wtd"]

    def _now(self) -> str:
        return "" if self._now_ms is None else str(self._now_ms())

    def settling(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Batch the settles to Redis for as long as this runs (see the module's docstring); on the way
        out, what is queued is applied and later settles go to Redis one by one again."""
        return self._settles.running()

    async def flush(self) -> None:
        """Apply the settles queued so far."""
        await self._settles.flush()

    async def _apply_batch(self, settles: list[str]) -> None:
        if self._outage.waiting():
            return  # an unreachable Redis keeps the estimates: their minute and day pass
        try:
            await self._settle([], [self._now(), self._base, *settles])  # the client's timeout bounds the wait
        except REDIS_ERRORS as exc:
            self._outage.failed(exc)
        else:
            self._outage.answered()

    async def reserve(
        self, provider: str, bot: str, user: str, estimate: int, bot_quota: QuotaSettings, user_quota: QuotaSettings
    ) -> Reservation:
        if not (limited(bot_quota) or limited(user_quota)) or self._outage.waiting():
            return self.local.take(provider, bot, user, estimate, bot_quota, user_quota)
        ticket = f"{self._instance}{next(self._tickets)}"
        if bot_quota.usd_per_day is not None or user_quota.usd_per_day is not None:
            ticket = SPEND_CAPPED + ticket
        limits = ",".join(
            _arg(value)
            for quota in (bot_quota, user_quota)
            for value in (quota.requests_per_minute, quota.tokens_per_minute, quota.tokens_per_day, quota.usd_per_day)
        )
        # Queued settles ride along: no call of their own.
        args: list[Any] = [self._now(), ticket, estimate, limits, self._base, *self._settles.take(SETTLE_BATCH)]
        try:
            reply: list[Any] = await self._reserve(self._scopes(bot, user), args)
        except REDIS_ERRORS as exc:
            self._outage.failed(exc)
            return self.local.take(provider, bot, user, estimate, bot_quota, user_quota)
        self._outage.answered()
        if not reply[0]:
            _, scope_index, limit, wait_ms = reply
            scope = SCOPES[int(scope_index) - 1]
            limit = limit.decode() if isinstance(limit, bytes) else str(limit)
            wait = int(wait_ms) / 1000
            if limit == "usd_per_day":
                cap = (bot_quota if scope == "bot" else user_quota).usd_per_day
                assert cap is not None
                raise self.local.spend.refused(bot, SpendCapReached(provider, scope, cap, wait))
            raise self.local.book.refused(bot, QuotaExceeded(provider, scope, limit, wait))
        # Counted here too, without limits (Redis held them): this node's metrics, usage and fallback.
        reservation = self.local.book.reserve(provider, bot, user, estimate, NO_LIMIT, NO_LIMIT)
        reservation.ticket = ticket
        return reservation

    async def settle(
        self, reservation: Reservation, price: ModelPrice | None, prompt_tokens: int, completion_tokens: int
    ) -> None:
        if reservation.settled:
            return
        delta = prompt_tokens + completion_tokens - reservation.estimate
        usd = self.local.count(reservation, price, prompt_tokens, completion_tokens)
        ticket = reservation.ticket
        if not ticket or self._outage.waiting():
            return  # an unreachable Redis keeps the estimate: its minute and day pass
        settle = _settle_arg(reservation, ticket, delta, usd)
        if delta > 0 or ticket.startswith(SPEND_CAPPED) or not self._settles.add(settle):
            # Shielded: a refund on the way out of a cancelled call must still reach Redis.
            with anyio.CancelScope(shield=True):
                await self._settles.apply([settle])

    async def usage(self, bot: str, user: str, bot_quota: QuotaSettings, user_quota: QuotaSettings) -> UsageReport:
        """The fleet's count when the bot has a limit (else, or while Redis is unreachable, this node's)."""
        if not (limited(bot_quota) or limited(user_quota)) or self._outage.waiting():
            return self.local.report(bot, user)
        await self.flush()  # this node's own answers count in what it shows
        keys = self._keys(bot, user)[3:] if user != QuotaBook.ALL_USERS else self._keys(bot, user)[:3]
        try:
            requests, tokens, today, usd = await self._usage(keys, [self._now()])
        except REDIS_ERRORS as exc:
            self._outage.failed(exc)
            return self.local.report(bot, user)
        self._outage.answered()
        limits = bot_quota if user == QuotaBook.ALL_USERS else user_quota
        return UsageReport(bot, user, int(requests), int(tokens), int(today), limits, float(usd))

    async def take_image(
        self, provider: str, bot: str, user: str, bot_quota: QuotaSettings, user_quota: QuotaSettings
    ) -> ImageTicket:
        images = self.local.images
        if not _draws_limited(bot_quota, user_quota) or self._outage.waiting():
            return images.take(provider, bot, user, bot_quota, user_quota)
        limits = [_arg(quota.images_per_day) for quota in (bot_quota, user_quota)]
        try:
            reply: list[Any] = await self._take_image(self._day_keys(bot, user), [self._now(), *limits])
        except REDIS_ERRORS as exc:
            self._outage.failed(exc)
            return images.take(provider, bot, user, bot_quota, user_quota)
        self._outage.answered()
        if not reply[0]:
            _, scope_index, wait_ms = reply
            raise QuotaExceeded(provider, SCOPES[int(scope_index) - 1], "images_per_day", int(wait_ms) / 1000)
        # Counted here too, without limits (Redis held them): this node's usage and fallback.
        ticket = images.take(provider, bot, user, NO_LIMIT, NO_LIMIT)
        return dataclasses.replace(ticket, fleet_day=int(reply[1]))

    async def give_back_image(self, ticket: ImageTicket) -> None:
        self.local.images.give_back(ticket)
        if ticket.fleet_day is None or self._outage.waiting():
            return  # an unreachable Redis keeps the image counted: its day passes
        try:
            with anyio.CancelScope(shield=True):  # as in settle: the give-back of a cancelled image counts
                await self._give_back_image(self._day_keys(ticket.bot, ticket.user), [self._now(), ticket.fleet_day])
        except REDIS_ERRORS as exc:
            self._outage.failed(exc)
        else:
            self._outage.answered()

    async def images_today(
        self, bot: str, user: str, bot_quota: QuotaSettings, user_quota: QuotaSettings
    ) -> tuple[int, int]:
        """The fleet's count when the bot or its users have ``images_per_day`` (else, or while Redis is
        unreachable, this node's)."""
        if not _draws_limited(bot_quota, user_quota) or self._outage.waiting():
            return await self.local.images_today(bot, user, bot_quota, user_quota)
        try:
            everyone, mine = await self._images_today(self._day_keys(bot, user), [self._now()])
        except REDIS_ERRORS as exc:
            self._outage.failed(exc)
            return await self.local.images_today(bot, user, bot_quota, user_quota)
        self._outage.answered()
        return int(mine), int(everyone)

    def _day_keys(self, bot: str, user: str) -> list[str]:
        """The day hashes (``d``) of the bot and of the user."""
        keys = self._keys(bot, user)
        return [keys[2], keys[5]]


def _draws_limited(bot_quota: QuotaSettings, user_quota: QuotaSettings) -> bool:
    return bot_quota.images_per_day is not None or user_quota.images_per_day is not None


def _arg(value: float | None) -> str:
    return "" if value is None else repr(value)
