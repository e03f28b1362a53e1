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

The messages a node answers are marked with its next round (node.py, every ``lease_ttl / 3``) or
with the release of the bot's lease, in the round trip that renews or releases the lease
(leases.py: ``answered:<bot>:<message id>``, set if absent, expiring after ``ANSWERED_TTL``): an
answer costs no round trip of its own. Marks not sent yet when a node dies are lost with it; its
answers are replies, which catch-up skips.

Redis unreachable (or slower than the fleet's timeout): catch-up goes by the replies alone (a
message is never lost for want of Redis), said once per outage in the log; Redis is tried again
after :data:`~orchestrator.fleet.connection.RECHECK` seconds.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence

from .connection import REDIS_ERRORS, RedisOutage
from .leases import LeaseStore

log = logging.getLogger(__name__)

PENDING = 10_000  # marks kept per bot between two rounds at most (the oldest go first)


class FleetClaims:
    """The marks of one node: those waiting for the next round, and the fleet's, read for catch-up."""

    def __init__(self, store: LeaseStore, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self._pending: dict[str, deque[int]] = {}
        self._outage = RedisOutage(
            clock,
            log,
            lost="fleet: cannot reach Redis to read which messages were answered (%s); catching up goes by "
            "the bots' replies alone until Redis answers again",
            back="fleet: Redis answers again; catching up leaves the messages the fleet answered again",
        )

    @property
    def redis_error(self) -> str | None:
        """Why Redis could not be used last; None while it answers."""
        return self._outage.error

    def answered(self, bot: str, message_id: int) -> None:
        """Message ``message_id`` was answered here as ``bot``: marked with the next round."""
        pending = self._pending.get(bot)
        if pending is None:
            pending = self._pending[bot] = deque(maxlen=PENDING)
        pending.append(message_id)

    def take(self, bot: str) -> list[int]:
        """The marks of ``bot`` waiting for a round, handed over to it."""
        pending = self._pending.pop(bot, None)
        return list(pending) if pending else []

    async def answered_already(self, bot: str, message_ids: Sequence[int]) -> set[int]:
        """Which of ``message_ids`` some node has marked answered as ``bot``."""
        if not message_ids or self._outage.waiting():
            return set()
        keys = [self.store.answered_key(bot, message_id) for message_id in message_ids]
        try:
            holders = await self.store.redis.mget(keys)
        except REDIS_ERRORS as exc:
            self._outage.failed(exc)
            return set()
        self._outage.answered()
        return {message_id for message_id, holder in zip(message_ids, holders, strict=True) if holder is not None}
