"""Fleet-wide "taken once": a message answered by one node is not answered again by another.

A user message reaches a node in one of two ways, and each gets the check it needs:

- **Live**, from the bot's gateway session. The leases give each bot one session in the fleet (a node
  connects it only once it holds the bot's lease, and closes it before letting go), so a live
  message reaches the one node that may answer it. The only other node that could still see it is
  one that has lost the lease without noticing in time (paused, or cut off from Redis, with a
  stray session). That node's own lease deadline already refuses it: the deadline is local and
  conservative (leases.LOCAL_SHARE), so no node ever thinks it holds a lease that another holds.
  The bot checks it (``Services.may_post``) before it asks the model; this needs no I/O.
- **Caught up**, read back from the channel by the node that takes a bot over. This is where two
  nodes meet: the last holder may have answered messages after the catch-up position it last saved.
  Catch-up skips a message the bot has replied to (persona/catch_up.py) and a message marked in
  Redis as answered (:meth:`FleetClaims.answered_already`), which also covers a reply that lies
  beyond catch-up's read.

Every message a node answers is marked, in batches (batch.py: one round trip every
:data:`MARK_EVERY` seconds at most, not one per answer):

    answered:<bot>:<message id>   under ``fleet:<key_prefix>:``: the holder that answered it first
                                  (SET NX), expiring after :data:`MARK_TTL`

Redis unreachable (or slower than the fleet's timeout): marks are dropped and catch-up goes by the
replies alone (a message is never lost for want of Redis), said once per outage in the log; Redis is
tried again after :data:`~orchestrator.fleet.connection.RECHECK` seconds.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

from redis.asyncio import Redis

from .batch import WriteBehind
from .connection import REDIS_ERRORS, RedisOutage

log = logging.getLogger(__name__)

# Longer than the catch-up window (RuntimeOptions.catch_up_window, 5 minutes): a node catching up
# never reads a message older than that, so one whose mark has expired is never read again.
MARK_TTL = 600.0
MARK_EVERY = 0.05  # seconds a mark may wait for others to share its Redis call
MARK_BATCH = 200


class _Mark(NamedTuple):
    bot: str
    message_id: int


class FleetClaims:
    """The marks of one node (``holder``: its lease holder, one per process, leases.py)."""

    def __init__(
        self, redis: Redis, key_prefix: str, holder: str, *, ttl: float = MARK_TTL, every: float = MARK_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.holder = holder
        self._redis = redis
        self._base = f"fleet:{key_prefix}:"
        self._ttl_ms = int(ttl * 1000)
        self._marks = WriteBehind(self._write, every=every, size=MARK_BATCH)
        self._outage = RedisOutage(
            clock,
            log,
            lost="fleet: cannot reach Redis to mark answered messages (%s); a node catching up goes by the bots' "
            "replies alone until Redis answers again",
            back="fleet: Redis answers again; answered messages are marked fleet-wide again",
        )

    @property
    def redis_error(self) -> str | None:
        """Why Redis could not be used last; None while it answers."""
        return self._outage.error

    def key(self, bot: str, message_id: int) -> str:
        return f"{self._base}answered:{bot}:{message_id}"

    def marking(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Send the marks in batches for as long as this runs (the node's lifetime); outside it, each
        mark goes at once."""
        return self._marks.running()

    async def answered(self, bot: str, message_id: int) -> None:
        """Mark message ``message_id`` as answered by ``bot`` on this node."""
        mark = _Mark(bot, message_id)
        if not self._marks.add(mark):
            await self._marks.apply([mark])

    async def answered_already(self, bot: str, message_ids: Sequence[int]) -> set[int]:
        """Which of ``message_ids`` some node has answered as ``bot`` (marked; queued here counts too)."""
        if not message_ids or self._outage.waiting():
            return set()
        await self._marks.flush()
        try:
            holders = await self._redis.mget([self.key(bot, message_id) for message_id in message_ids])
        except REDIS_ERRORS as exc:
            self._outage.failed(exc)
            return set()
        self._outage.answered()
        return {message_id for message_id, holder in zip(message_ids, holders, strict=True) if holder is not None}

    async def _write(self, marks: list[_Mark]) -> None:
        if self._outage.waiting():
            return  # catch-up goes by the replies meanwhile
        pipe = self._redis.pipeline(transaction=False)
        for mark in marks:
            pipe.set(self.key(*mark), self.holder, nx=True, px=self._ttl_ms)
        try:
            await pipe.execute()
        except REDIS_ERRORS as exc:
            self._outage.failed(exc)
        else:
            self._outage.answered()
