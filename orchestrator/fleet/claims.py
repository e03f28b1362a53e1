"""Fleet-wide "taken once": a node claims a user message in Redis before asking the model about it.

Each node remembers the messages it took (runtime/mailbox.py), but another node may take the same
one again: the node that takes a bot over catches up on what its last holder had not finished, and a
stray second connection of the bot delivers every message twice. Nonces keep Discord from showing two
answers (discord_io/delivery.answer_nonce); the claim keeps two nodes from calling the model and
writing memory for one message.

Key, under ``fleet:<key_prefix>:``:

    taken:<bot>:<message id>   the lease holder answering it; expires after :data:`CLAIM_TTL`

A claim (one Lua script, so atomic across nodes) is granted unless another holder has the bot's lease
(that node answers, and a node without the lease could not post anyway). A message answered already
needs no mark of its own: the answer is a reply to it, and catch-up (persona/catch_up.py), the only
way a message reaches a node again, skips the messages the bot has replied to; so an answer costs one
round trip to Redis, not two.
A claim left by a holder that has lost the lease since (its process paused or died mid-answer, or a
graceful stop cut its answer short) is taken over: that node cannot post any more, and the message
would be lost otherwise.

Redis unreachable (or slower than the fleet's timeout): the claim is granted, this node judging alone
as with the leases and quotas (a message is never lost for want of Redis), said once per outage in
the log; Redis is tried again after :data:`~orchestrator.fleet.connection.RECHECK` seconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from redis.asyncio import Redis

from .connection import REDIS_ERRORS, RedisOutage

log = logging.getLogger(__name__)

# Longer than the catch-up window (RuntimeOptions.catch_up_window, 5 minutes): a node catching up
# never reads a message older than that, so one whose claim has expired is never read again.
CLAIM_TTL = 600.0

# KEYS: taken, lease. ARGV: holder, ttl ms. Returns 1 when this holder may answer the message.
_CLAIM = """
local lease = redis.call('GET', KEYS[2])
if lease and string.sub(lease, 1, #ARGV[1] + 1) ~= ARGV[1] .. '/' then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


class FleetClaims:
    """The claims of one node (``holder``: its lease holder, one per process, leases.py)."""

    def __init__(
        self, redis: Redis, key_prefix: str, holder: str, *, ttl: float = CLAIM_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.holder = holder
        self._base = f"fleet:{key_prefix}:"
        self._ttl_ms = int(ttl * 1000)
        self._claim = redis.register_script(_CLAIM)
        self._outage = RedisOutage(
            clock,
            log,
            lost="fleet: cannot reach Redis to claim messages (%s); this node answers every message it takes "
            "until Redis answers again (another node may answer one of them too)",
            back="fleet: Redis answers again; messages are claimed fleet-wide again",
        )

    @property
    def redis_error(self) -> str | None:
        """Why Redis could not be used last; None while it answers."""
        return self._outage.error

    def key(self, bot: str, message_id: int) -> str:
        return f"{self._base}taken:{bot}:{message_id}"

    async def claim(self, bot: str, message_id: int) -> bool:
        """Whether this node answers message ``message_id`` to ``bot``: False when another node does."""
        if self._outage.waiting():
            return True
        try:
            granted = await self._claim([self.key(bot, message_id), f"{self._base}lease:{bot}"],
                                        [self.holder, self._ttl_ms])
        except REDIS_ERRORS as exc:
            self._outage.failed(exc)
            return True
        self._outage.answered()
        return bool(granted)

